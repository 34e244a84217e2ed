"""The trainer process: everything here runs INSIDE a spawned trainer (one per expert), except
``TrainerSpec`` (built by the manager, pickled to the process) and ``trainer_cpus`` (the manager's pick
of CPUs).

Process rules: a trainer never opens the DuckDB file; it runs SCHED_IDLE (else niced) off the CPUs
reserved for the engine, ignores Ctrl-C (the engine stops it: "stop", then terminate) and exits when
its parent is gone. Messages in (inbox): ("init", state_bytes, version), ("load", state_bytes),
("champion", state_bytes, version), ("candles", DataFrame), ("samples", rows dict), ("stop",).
Messages out (outbox): ("status", dict), ("published", dict), ("error", str).

It builds its replay samples from the candles with the same FeatureBuilder and keeps the matured
samples it is sent. The newest ``val_bars`` are its validation window, never trained on (nor anything
within ``horizon`` bars before them). Every ``cadence_s`` it runs one round of the expert's own
``train_online`` on the fresh samples plus replayed ones (at least ``replay_steps`` replayed
mini-batches or DQN chunks; learning rate ``online.lr``), publishes a checkpoint atomically
(Expert.save: temp file + os.replace), scores it and the live weights on the validation window and
reports path + scores; the engine side (judge.py) applies the promotion rule (NN/training/promotion.py).
TensorBoard scalars go to runs/online/<expert>/<timestamp>.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import signal
import time
import traceback
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from core.config import ExpertConfig, FeaturesConfig, OnlineTrainingConfig
from core.market.calendar import Calendar
from core.types import FeatureBatch, FeatureSpec, timeframe_ms
from NN.experts.base import Expert
from NN.training.datasets import build_dataset
from NN.training.online.feed import drain, split_release
from NN.training.promotion import MIN_VAL_SAMPLES, evaluate, state_from_bytes

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainerSpec:
    """Everything a trainer process needs (picklable: spawn)."""

    name: str
    expert_cfg: ExpertConfig
    features: FeaturesConfig
    base_timeframe: str
    dead_zone: float
    online: OnlineTrainingConfig
    checkpoint_dir: str
    run_dir: str | None
    threads: int = 1
    max_steps_per_round: int = 200
    min_steps_per_round: int = 0  # > 0: at least this many replay mini-batches/chunks per round (saturates)
    nice: int = 10  # trainers run at a lower CPU priority: the decision path wins contended cores
    sched_idle: bool = True  # Linux SCHED_IDLE: runs only on CPU time no normal-priority thread wants
    cpus: tuple[int, ...] | None = None  # CPU affinity (None: any); see trainer_cpus
    calendar: Calendar | None = None  # the stream's sessions (stocks): features within sessions


class _TrainData:
    """The trainer's samples, ts-ascending, unique ts, at most ``cap`` (newest kept)."""

    def __init__(self, cap: int) -> None:
        self.cap = max(1, int(cap))
        self.d: dict[str, np.ndarray] | None = None
        self.trained_until = np.iinfo(np.int64).min  # newest ts already trained on

    def __len__(self) -> int:
        return 0 if self.d is None else len(self.d["ts"])

    def add(self, rows: Mapping[str, np.ndarray]) -> None:
        if len(rows["ts"]) == 0:
            return
        rows = {k: np.asarray(v) for k, v in rows.items()}
        if self.d is None:
            merged = rows
        else:
            merged = {k: np.concatenate([self.d[k], rows[k]]) for k in self.d}
        ts = merged["ts"]
        # keep the LAST copy of a duplicated ts, then sort by time
        _, first_of_rev = np.unique(ts[::-1], return_index=True)
        keep = np.sort(len(ts) - 1 - first_of_rev)
        keep = keep[np.argsort(ts[keep], kind="stable")][-self.cap :]
        self.d = {k: v[keep] for k, v in merged.items()}

    def split(self, horizon: int, bar_ms: int, val_bars: int) -> tuple[int, np.ndarray]:
        """(n_train, validation row indices): every row here has a matured label; the newest
        ``val_bars`` are the validation window, never trained on, and only rows at least ``horizon``
        bars before it are trainable (a prefix, rows being ts-sorted)."""
        if self.d is None:
            return 0, np.zeros(0, np.int64)
        ts = self.d["ts"]
        send, val = split_release(ts, np.arange(len(ts)), horizon, bar_ms, val_bars, np.iinfo(np.int64).min)
        return len(send), val

    def fresh(self, n_train: int) -> np.ndarray:
        if self.d is None:
            return np.zeros(0, np.int64)
        return np.flatnonzero(self.d["ts"][:n_train] > self.trained_until)


def _writer(run_dir: str | None) -> Any:
    if run_dir is None:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter

        return SummaryWriter(log_dir=run_dir)
    except Exception:  # TensorBoard is optional: training goes on without it
        log.exception("no TensorBoard writer for %s", run_dir)
        return None


def _train_round(expert: Expert, data: _TrainData, n_train: int, spec: TrainerSpec, fspec: FeatureSpec,
                 rng: np.random.Generator) -> tuple[int, int, list[float]]:
    """One cadence round over the trainable prefix (validation rows excluded); returns (steps,
    samples, losses). How the expert learns from it is its own ``train_online``."""
    assert data.d is not None
    d = {k: v[:n_train] for k, v in data.d.items()}
    fresh = data.fresh(n_train)
    batch = FeatureBatch("", spec.base_timeframe, d["ts"], d["close"], d["windows"], d["flat"], d["regime"],
                         fspec)
    r = expert.train_online(batch, d["labels"], d["fwd"], d["position"], fresh, rng,
                            batch_size=spec.online.batch_size, min_steps=spec.min_steps_per_round,
                            max_steps=spec.max_steps_per_round)
    data.trained_until = int(d["ts"][-1])
    return r.steps, r.samples, list(r.losses)


def trainer_main(spec: TrainerSpec, inbox: Any, outbox: Any) -> None:
    """Entry point of a trainer process (spawned); the messages it takes and sends are listed in the
    module docstring. An error is reported on ``outbox`` before the process dies of it."""
    if mp.parent_process() is not None:
        # Ctrl-C in a terminal reaches the whole process group: the engine stops its trainers in
        # order ("stop", then terminate), so a trainer must not die first and be "restarted"
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        _trainer_loop(spec, inbox, outbox)
    except Exception:
        outbox.put(("error", traceback.format_exc(limit=8)))
        raise


def trainer_cpus(reserve: int, available: set[int] | None = None) -> tuple[int, ...] | None:
    """Pure: the CPUs trainers may use when the ``reserve`` lowest-numbered ones are kept for the
    engine (decisions, Dash); None (no pinning) when reserving would leave trainers no CPU."""
    if available is None:
        if not hasattr(os, "sched_getaffinity"):
            return None
        available = os.sched_getaffinity(0)
    cpus = sorted(available)
    if reserve <= 0 or len(cpus) <= reserve:
        return None
    return tuple(cpus[reserve:])


def lower_priority(spec: TrainerSpec) -> None:
    """Make this trainer process yield to the decision path: SCHED_IDLE where Linux allows it
    (a woken decision thread preempts it at once, unlike a niced process that keeps a time share),
    else ``nice``; and pin it to ``spec.cpus`` so the reserved CPUs stay free for the engine."""
    if spec.cpus and hasattr(os, "sched_setaffinity"):
        try:
            os.sched_setaffinity(0, spec.cpus)
        except OSError as exc:  # e.g. a container that hides those CPUs: run unpinned
            log.warning("trainer %s: cannot pin to CPUs %s: %s", spec.name, spec.cpus, exc)
    if spec.nice > 0 and hasattr(os, "nice"):
        os.nice(spec.nice)
    if spec.sched_idle and hasattr(os, "sched_setscheduler") and hasattr(os, "SCHED_IDLE"):
        try:
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
        except OSError as exc:
            log.warning("trainer %s: SCHED_IDLE refused (%s); running niced", spec.name, exc)


def _trainer_loop(spec: TrainerSpec, inbox: Any, outbox: Any) -> None:
    from core.features import FeatureBuilder
    from NN.experts.registry import build_expert

    lower_priority(spec)
    torch.set_num_threads(max(1, spec.threads))
    builder = FeatureBuilder(spec.features, spec.base_timeframe, calendar=spec.calendar)
    cfg = spec.expert_cfg
    if cfg.device == "auto":
        cfg = cfg.model_copy(update={"device": "cpu"})
    expert = build_expert(spec.name, cfg, builder.spec)
    h = int(spec.expert_cfg.horizon)
    bar_ms = timeframe_ms(spec.base_timeframe)
    val_bars = spec.online.val_bars
    data = _TrainData(max(spec.online.replay_bars, spec.online.batch_size) + val_bars + 2 * h)
    champion = build_expert(spec.name, cfg, builder.spec)  # the live weights, to judge challengers
    champion_version = ""
    rng = np.random.default_rng(os.getpid())
    writer = _writer(spec.run_dir)
    ckpt_dir = Path(spec.checkpoint_dir)
    steps, seq, samples_per_s, loss = 0, 0, 0.0, float("nan")
    next_round = 0.0
    ready = False
    pid, parent = os.getpid(), os.getppid()

    def set_lr() -> None:  # online fine-tuning runs at its own (smaller) learning rate
        opt = getattr(expert, "opt", None)
        for g in opt.param_groups if opt is not None else []:
            g["lr"] = spec.online.lr

    def status() -> None:
        outbox.put(("status", {"steps": steps, "loss": loss, "samples_per_s": samples_per_s, "pid": pid,
                               "samples": len(data)}))

    status()
    while True:
        if os.getppid() != parent:  # the engine died without stopping us: nobody reads our results
            if writer is not None:
                writer.close()
            return
        wait = max(0.0, next_round - time.monotonic()) if ready and len(data) else 0.5
        for msg in drain(inbox, min(wait, 0.5)):
            kind = msg[0]
            if kind == "stop":
                if writer is not None:
                    writer.close()
                return
            if kind in ("init", "load"):
                expert.load_state_dict(state_from_bytes(msg[1]))
                set_lr()
                ready = True
            if kind in ("init", "champion"):
                champion.load_state_dict(state_from_bytes(msg[1]))
                champion_version = str(msg[2])
            if kind in ("init", "load", "champion"):
                continue
            if kind == "candles":
                b, y, r = build_dataset(builder, msg[1], expert.horizon, spec.dead_zone)
                data.add({"ts": b.ts, "close": b.close, "windows": b.windows, "flat": b.flat,
                          "regime": b.regime, "labels": y, "fwd": r, "position": np.full(len(b), np.nan)})
            elif kind == "samples":
                data.add(msg[1])
            else:
                raise ValueError(f"trainer {spec.name}: unknown message {kind!r}")
        if not ready or len(data) == 0 or time.monotonic() < next_round:
            continue
        n_train, val = data.split(h, bar_ms, val_bars)
        if len(data.fresh(n_train)) == 0:
            continue
        t0 = time.perf_counter()
        n_steps, n_samples, losses = _train_round(expert, data, n_train, spec, builder.spec, rng)
        dt = time.perf_counter() - t0
        next_round = time.monotonic() + spec.online.cadence_s
        if n_steps == 0:
            continue
        steps += n_steps
        samples_per_s = n_samples / dt if dt > 0 else 0.0
        loss = float(np.mean(losses)) if losses else float("nan")
        seq += 1
        version = f"online-{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{pid}-{seq}"
        expert.version = version
        path = ckpt_dir / f"{version}.pt"
        expert.save(path)  # atomic: temp file + os.replace
        if writer is not None:
            writer.add_scalar("online/loss", loss, steps)
            writer.add_scalar("online/samples_per_s", samples_per_s, steps)
            writer.add_scalar("online/train_samples", len(data), steps)
        body = {"path": str(path), "version": version, "steps": steps, "trained_until": data.trained_until,
                "n_val": int(len(val)), "champion_version": champion_version, "loss": loss,
                "samples_per_s": samples_per_s}
        if len(val) >= MIN_VAL_SAMPLES:  # judged here, off the engine process: both on the same window
            d = data.d
            assert d is not None  # a validation window implies rows
            vb = FeatureBatch("", spec.base_timeframe, d["ts"][val], d["close"][val], d["windows"][val],
                              d["flat"][val], d["regime"][val], builder.spec)
            v = evaluate(champion, expert, vb, d["labels"][val], spec.online.promote_margin, MIN_VAL_SAMPLES,
                         z=spec.online.promote_z)
            body.update(champion_logloss=v.champion_logloss, challenger_logloss=v.challenger_logloss,
                        gain_se=v.gain_se)
            if writer is not None:
                writer.add_scalar("online/val_logloss_challenger", v.challenger_logloss, steps)
                writer.add_scalar("online/val_logloss_champion", v.champion_logloss, steps)
        outbox.put(("published", body))
        status()
