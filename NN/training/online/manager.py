"""``TrainingManager``: the engine's one object for live training (core.types.LiveTraining), composed
of the feed buffer (feed.py), the trainer processes (supervisor.py, worker.py), the verdicts (judge.py)
and the live weights file (live_weights.py).

  feed(batch)   the FeatureBatch row(s) the decision path just built (+ the position held). Rows sit
                in a small buffer until their label MATURES (h later bars arrived, contiguous); then
                they are sent to the running trainers.
  poll()        non-blocking: drains status queues, restarts crashed trainers, turns verdicts into
                Swaps (promotions, rollbacks) to apply between two decisions.
  apply(swap)   puts a Swap into the live expert and keeps what it replaced for ``rollback``.

Thread rules: ``feed``, ``poll``, ``deciding`` and ``apply`` run on the engine thread between
decisions; ``start``/``stop``/``rollback``/``status``/``submit_checkpoint`` may be called from any
thread (UI commands). No lock held here is ever waited on by the decision path for longer than a dict
update.
"""

from __future__ import annotations

import copy
import logging
import time
from collections import deque
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from core.config import ModelsConfig
from core.types import FeatureBatch, FeatureSpec, SeriesKey, Swap, TrainerStatus, timeframe_ms
from NN.training.online.feed import Feeder
from NN.training.online.judge import Judge
from NN.training.online.live_weights import LiveWriter, live_path
from NN.training.online.supervisor import CAN_FREEZE, Retiring, Supervisor, TrainerSlot
from NN.training.online.worker import TrainerSpec, trainer_cpus
from NN.training.promotion import ChampionHistory, apply_swap, state_to_bytes

log = logging.getLogger(__name__)


class TrainingManager:
    """Starts/stops trainer processes, feeds them matured samples, judges their checkpoints."""

    def __init__(self, store: Any | None, models_cfg: ModelsConfig, builder: Any, experts: dict[str, Any],
                 registry: Any | None = None, *, key: SeriesKey | None = None, dead_zone: float,
                 models_dir: str | Path = "models", runs_dir: str | Path = "runs",
                 backoff_initial_s: float = 1.0, backoff_max_s: float = 60.0, threads: int = 1,
                 keep_history: int = 3, min_steps_per_round: int = 0, nice: int = 10,
                 sched_idle: bool = True, reserve_cpus: int = 0, freeze_while_deciding: bool = True,
                 lineage: Mapping[str, tuple[str, dict[str, Any] | None]] | None = None) -> None:
        if not dead_zone >= 0:
            raise ValueError(f"dead_zone must be >= 0, got {dead_zone!r}")
        self.store = store
        self.models_cfg = models_cfg
        self.builder = builder
        self.spec: FeatureSpec = builder.spec
        self.experts = experts
        self.registry = registry
        self.key = key
        self.dead_zone = float(dead_zone)
        self.models_dir = Path(models_dir)
        self.runs_dir = Path(runs_dir)
        self.backoff_initial_s = float(backoff_initial_s)
        self.backoff_max_s = float(backoff_max_s)
        self.threads = int(threads)
        self.min_steps_per_round = int(min_steps_per_round)
        self.nice = int(nice)
        self.sched_idle = bool(sched_idle)
        self.cpus = trainer_cpus(int(reserve_cpus))
        self.freeze_while_deciding = bool(freeze_while_deciding) and CAN_FREEZE
        self.bar_ms = timeframe_ms(self.spec.timeframes[0])
        trainable = {n: e for n, e in experts.items() if e.input_kind == "features"}
        self._trainable = trainable
        max_h = max((e.horizon for e in trainable.values()), default=1)
        val = max((models_cfg.experts[n].online.val_bars for n in trainable if n in models_cfg.experts),
                  default=240)
        self._feeder = Feeder(builder, models_cfg, store, key, self.dead_zone, self.bar_ms,
                              capacity=val + 2 * max_h + 64)
        self._judge = Judge(models_cfg, self.spec)
        self._procs = Supervisor(backoff_initial_s=self.backoff_initial_s, backoff_max_s=self.backoff_max_s,
                                 prime=self._prime, release=self._release, published=self._judge.judged)
        self._champion: dict[str, tuple[str, dict[str, Any]]] = {}
        self._history: dict[str, ChampionHistory] = {n: ChampionHistory(keep_history) for n in trainable}
        # the version an expert's online lineage started from (its registered best, or "untrained"):
        # live.pt records it so a restart resumes only weights that descend from what it loads
        self._base: dict[str, str] = {}
        for n, (version, state) in (lineage or {}).items():
            if n in trainable:
                self._base[n] = str(version)
                if state is not None and str(experts[n].version) != str(version):
                    self._history[n].push(str(version), state)  # a resumed run can roll back to its base
        self._live_writer = LiveWriter()
        self._pending_swaps: list[Swap] = []  # rollbacks queued for the next poll (under the procs lock)
        self._promoted: dict[str, deque[Path]] = {}  # files of recent promotions, oldest first

    # ---------------------------------------------------------------- commands

    def start(self, name: str) -> None:
        """Start (or keep running) the trainer of expert ``name``."""
        if name not in self._trainable:
            known = ", ".join(self._trainable) or "none"
            raise KeyError(f"no trainable expert {name!r} (trainable: {known}; candle experts train offline)")
        cfg = self.models_cfg.experts[name]
        self._feeder.seed()  # outside the lock: feature building takes a moment
        with self._procs.lock:
            t = self._procs.trainers.get(name)
            if t is not None and t.wanted:
                return
            self._ensure_champion(name)
            stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
            spec = TrainerSpec(
                name=name, expert_cfg=cfg, features=self.models_cfg.features,
                base_timeframe=self.spec.timeframes[0], dead_zone=self.dead_zone, online=cfg.online,
                checkpoint_dir=str((self.models_dir / name / "online").resolve()),
                run_dir=str((self.runs_dir / "online" / name / stamp).resolve()), threads=self.threads,
                min_steps_per_round=max(self.min_steps_per_round, cfg.online.replay_steps), nice=self.nice,
                sched_idle=self.sched_idle,
                cpus=self.cpus, calendar=getattr(self.builder, "calendar", None))
            t = self._procs.trainers[name] = t or TrainerSlot(spec=spec)
            t.spec = spec
            t.wanted = True
            t.backoff = self.backoff_initial_s
            t.restart_at = None
            self._procs.spawn(t)

    def _ensure_champion(self, name: str) -> None:
        self._base.setdefault(name, str(self.experts[name].version))
        if name not in self._champion:
            live = self.experts[name]
            self._champion[name] = (str(live.version), copy.deepcopy(live.state_dict()))

    def submit_checkpoint(self, name: str, path: str | Path, version: str | None = None) -> None:
        """Judge any checkpoint file of ``name`` (e.g. an offline run) against the live weights on
        the current validation window, exactly like a trainer's; a later ``poll`` returns the Swap
        if it wins. The file is deleted when it loses."""
        if name not in self._trainable:
            raise KeyError(f"no trainable expert {name!r}")
        self._ensure_champion(name)
        cfg = self.models_cfg.experts[name]
        spec = TrainerSpec(name=name, expert_cfg=cfg, features=self.models_cfg.features,
                           base_timeframe=self.spec.timeframes[0], dead_zone=self.dead_zone,
                           online=cfg.online, checkpoint_dir=str(Path(path).parent), run_dir=None)
        if self._judge.closed:
            return
        batch, labels = self.validation_window(name)
        self._judge.submit(spec, {"path": str(path), "version": version or Path(path).stem}, batch, labels,
                           *self._champion[name])

    def stop(self, name: str, timeout: float = 5.0, wait: bool = True) -> None:
        """Stop the trainer of ``name``: it finishes its round and exits, killed after ``timeout`` s.
        ``wait=False`` (the engine thread) returns at once; ``poll`` reaps the process later and still
        judges a checkpoint it published while stopping."""
        self._procs.stop(name, timeout, wait)

    def rollback(self, name: str) -> Swap:
        """Queue the previous live version of ``name`` (exact weights) for the next ``poll``."""
        hist = self._history.get(name)
        prev = hist.pop() if hist is not None else None
        if prev is None:
            raise ValueError(f"rollback {name}: no previous version to restore")
        version, state = prev
        swap = Swap(expert=name, version=version, state=state, kind="rollback")
        with self._procs.lock:
            self._pending_swaps.append(swap)
        return swap

    def status(self) -> dict[str, TrainerStatus]:
        with self._procs.lock:
            out = {}
            for n in self._trainable:
                t = self._procs.trainers.get(n)
                st = t.status if t is not None else TrainerStatus(running=False)
                out[n] = replace(st, live_version=str(self.experts[n].version),
                                 history=tuple(t.history) if t is not None else (),
                                 **self._judge.scores.get(n, {}))
            return out

    def has_history(self, name: str) -> bool:
        return len(self._history.get(name, ())) > 0

    @property
    def _retiring(self) -> list[Retiring]:
        """Trainer processes told to stop that have not exited yet."""
        return self._procs.retiring

    # ---------------------------------------------------------------- freezing (decision path)

    @contextmanager
    def deciding(self) -> Iterator[None]:
        """Wrap one decision: running trainer processes are frozen (SIGSTOP) for its few milliseconds
        and resumed (SIGCONT) after. SCHED_IDLE keeps a trainer off the decision's CPU, but on a small
        machine a trainer busy on the other core still slows the decision through what the cores share
        (caches, memory bandwidth, clock): bench/bench_training.py measured back-to-back p99 ratios up
        to 2.0-2.7 unfrozen, at most 1.6 frozen. Costs two signals per trainer per decision; never waits
        for a lock (a busy UI command skips the freeze for that decision)."""
        frozen = self.freeze() if self.freeze_while_deciding else []
        try:
            yield
        finally:
            if frozen:
                self.thaw(frozen)

    def freeze(self) -> list[Any]:
        """SIGSTOP every running, not held trainer process; returns them for ``thaw``."""
        return self._procs.freeze()

    def thaw(self, procs: list[Any]) -> None:
        self._procs.thaw(procs)

    def hold(self, name: str, on: bool = True) -> None:
        """Keep the trainer of ``name`` frozen (its process, samples and optimiser state stay) until
        released with ``on=False``; ``deciding`` leaves held trainers alone. For measurements."""
        self._procs.hold(name, on)

    def shutdown(self, timeout: float = 5.0) -> None:
        for name in list(self._procs.trainers):
            self.stop(name, timeout)
        self._procs.end_retiring()
        self._judge.close()
        self._live_writer.close()
        self._judge.join(timeout)

    # ---------------------------------------------------------------- feed

    def feed(self, batch: FeatureBatch, position: float | np.ndarray | None = None) -> int:
        """New feature rows (normally the one the decision path built) and the position held after
        that bar's decision (sign matters; None = unknown). Sends newly releasable matured samples to
        the running trainers; returns the number of sample rows sent."""
        pos = np.full(len(batch), np.nan) if position is None else np.broadcast_to(
            np.asarray(position, dtype=np.float64), (len(batch),))
        self._feeder.append(batch, pos)
        return self._release()

    def feed_frames(self, frames: dict[str, pd.DataFrame], position: float | None = None,
                    ref: pd.DataFrame | None = None) -> int:
        """Fallback when the decision path's FeatureBatch is not at hand: builds the row itself
        (FeatureBuilder.build_one on the provider's frames: one more feature build per bar)."""
        symbol = self.key.symbol if self.key is not None else ""
        return self.feed(self.builder.build_one(frames, ref, symbol=symbol), position)

    def _release(self) -> int:
        """Send each running trainer the matured samples it has not had yet; returns the rows sent."""
        sent = 0
        for t in list(self._procs.trainers.values()):
            if not t.wanted or t.proc is None or not t.proc.is_alive() or t.inbox is None:
                continue
            rows = self._feeder.matured_after(t.spec.expert_cfg.horizon, t.released_until)
            if rows is None:
                continue
            t.inbox.put(("samples", rows))
            t.released_until = int(rows["ts"][-1])
            sent += len(rows["ts"])
        return sent

    def validation_window(self, name: str) -> tuple[FeatureBatch, np.ndarray]:
        """The current validation samples of expert ``name`` (copies) and their labels."""
        return self._feeder.validation_window(self.experts[name].horizon,
                                              self.models_cfg.experts[name].online.val_bars)

    def _prime(self, t: TrainerSlot) -> None:
        """A new trainer process's first messages: the live weights, then its replay candles."""
        version, state = self._champion[t.spec.name]
        t.inbox.put(("init", state_to_bytes(state), version))
        replay = self._feeder.replay_candles(t.spec.online.replay_bars, t.spec.expert_cfg.horizon)
        if replay is not None and len(replay):
            t.inbox.put(("candles", replay))

    # ---------------------------------------------------------------- poll

    def poll(self, apply: bool = False) -> list[Swap]:
        """Non-blocking housekeeping; returns the Swaps to apply (and applies them when ``apply`` -
        only on the decision thread between two decisions)."""
        now = time.monotonic()
        swaps: list[Swap] = []
        # never wait: a UI command (start/stop) holding the lock just defers housekeeping a bar
        if self._procs.lock.acquire(blocking=False):
            try:
                self._procs.housekeep(now)
                swaps, self._pending_swaps = self._pending_swaps, []
            finally:
                self._procs.lock.release()
        swaps += self._judge.collect(self._champion)
        if apply:
            for s in swaps:
                self.apply(s)
        return swaps

    # ---------------------------------------------------------------- swaps

    def apply(self, swap: Swap) -> None:
        """Put ``swap`` into the live expert (decision thread, between decisions) and remember the
        state it replaced for ``rollback``."""
        live = self.experts[swap.expert]
        old_version = str(live.version)
        previous = apply_swap(swap, live)
        if swap.kind == "promote":
            self._history[swap.expert].push(old_version, previous)
        self._champion[swap.expert] = (swap.version, copy.deepcopy(swap.state))
        if swap.kind == "promote":
            self._judge.promoted(swap.expert)
            self._prune_promoted(swap)
        base = self._base.setdefault(swap.expert, old_version)
        # back at the base weights nothing needs resuming; else the next start resumes these
        self._live_writer.put(live_path(self.models_dir, swap.expert), None if swap.version == base else
                              {"version": swap.version, "base": base, "state": swap.state})
        t = self._procs.trainers.get(swap.expert)  # no lock: the decision thread never waits on UI commands
        if t is not None and t.inbox is not None:
            data = state_to_bytes(swap.state)
            if swap.kind == "rollback":
                t.inbox.put(("load", data))  # the trainer continues from the restored weights
            t.inbox.put(("champion", data, swap.version))  # later challengers are judged against it
        if swap.kind == "promote" and self.registry is not None and swap.verdict is not None:
            policy = self.models_cfg.experts[swap.expert].checkpoints
            try:
                self.registry.register(swap.expert, swap.state, swap.verdict.challenger_logloss, policy,
                                       {"source": "online", "online_version": swap.version})
            except Exception:
                log.exception("registering promoted %s %s failed (weights stay live)", swap.expert,
                              swap.version)
        log.info("%s %s -> %s", swap.kind, swap.expert, swap.version)

    def _prune_promoted(self, swap: Swap) -> None:
        """Keep the files of the newest ``keep_history`` + 1 promoted checkpoints per expert (the live
        one and those a rollback may return to) and delete older ones: a trainer promoting every round
        would otherwise fill the disk. Rollback restores from memory; the registry keeps its own copies."""
        if swap.path is None:
            return
        kept = self._promoted.setdefault(swap.expert, deque())
        kept.append(Path(swap.path))
        while len(kept) > self._history[swap.expert].keep + 1:
            kept.popleft().unlink(missing_ok=True)
