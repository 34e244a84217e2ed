"""Live (online) training: one process per expert, fed over queues, gated by champion/challenger.

Engine side (``TrainingManager``, called from the engine thread):
  feed(batch)   the FeatureBatch row(s) the decision path just built (+ the position held). Rows sit
                in a small buffer until their label MATURES (h later bars arrived, contiguous); then
                they are sent to the running trainers.
  poll()        non-blocking: drains status queues, restarts crashed trainers (back-off 1 s doubling,
                capped), turns the trainers' verdicts into Swaps (promotions, rollbacks) to apply
                between two decisions.
Trainer side (``trainer_main``, a spawned process, SCHED_IDLE): never opens the DuckDB file. It receives
the live weights, candles for its replay history (it builds those features itself with the same
FeatureBuilder) and matured samples. The newest ``val_bars`` matured samples are its validation
window and are never trained on (nor anything within ``horizon`` bars before them). Every
``cadence_s`` it trains on the fresh samples plus as many replayed ones, at least ``replay_steps``
mini-batches (learning rate ``online.lr``, mini-batches of ``batch_size``; the DQN trains on chronological chunks and also learns from the
realised paper-trading positions), publishes a checkpoint atomically (Expert.save: temp file +
os.replace), scores it and the live weights on the validation window (off the engine process) and
reports path + scores; the manager applies the promotion rule (NN/training/promotion.py).
TensorBoard scalars go to runs/online/<expert>/<timestamp>. ``submit_checkpoint`` judges any other
checkpoint file on an engine-side background thread with the manager's own validation window.
"""

from __future__ import annotations

import copy
import logging
import multiprocessing as mp
import os
import queue
import signal
import threading
import time
import traceback
from collections import deque
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.multiprocessing as tmp

from core.config import ExpertConfig, FeaturesConfig, ModelsConfig, OnlineTrainingConfig
from core.labels import UNKNOWN, make_labels
from core.types import (
    FeatureBatch,
    FeatureSpec,
    SeriesKey,
    Swap,
    TrainerStatus,
    TrainingPoint,
    Verdict,
    timeframe_ms,
)
from NN.experts.base import save_atomic
from NN.training.datasets import build_dataset
from NN.training.promotion import (
    ChampionHistory,
    apply_swap,
    evaluate,
    judge,
    state_from_bytes,
    state_to_bytes,
)

log = logging.getLogger(__name__)

_CAN_FREEZE = hasattr(signal, "SIGSTOP")  # POSIX: trainers can be frozen while the engine decides
MIN_VAL_SAMPLES = 30  # fewer matured validation samples than this: no verdict yet
HISTORY_POINTS = 500  # training rounds kept per expert for the live loss curve (oldest dropped)
LIVE_FILE = "live.pt"  # models/<expert>/online/live.pt: the online-trained weights left live at exit
_CTX = tmp.get_context("spawn")


# ---------------------------------------------------------------- contracts


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


# ---------------------------------------------------------------- engine-side sample buffer


class FeedBuffer:
    """Recent fed feature rows (ring with amortised compaction; views never escape)."""

    def __init__(self, spec: FeatureSpec, bar_ms: int, capacity: int) -> None:
        self.spec, self.bar_ms, self.cap = spec, int(bar_ms), int(capacity)
        T, L, F = len(spec.timeframes), spec.window, len(spec.bar_features)
        n = 2 * self.cap
        self.ts = np.zeros(n, np.int64)
        self.close = np.zeros(n, np.float64)
        self.windows = np.zeros((n, T, L, F), np.float32)
        self.flat = np.zeros((n, len(spec.flat_features)), np.float32)
        self.regime = np.zeros((n, len(spec.regime_features)), np.float32)
        self.position = np.full(n, np.nan)
        self.n = 0
        self.symbol = ""

    def append(self, batch: FeatureBatch, position: np.ndarray) -> int:
        keep = np.ones(len(batch), dtype=bool)
        if self.n:
            keep &= batch.ts > self.ts[self.n - 1]  # a replayed bar is fed once
        idx = np.flatnonzero(keep)
        for i in idx:
            if self.n == 2 * self.cap:
                self._compact()
            j = self.n
            self.ts[j], self.close[j] = batch.ts[i], batch.close[i]
            self.windows[j], self.flat[j], self.regime[j] = batch.windows[i], batch.flat[i], batch.regime[i]
            self.position[j] = position[i]
            self.n += 1
        self.symbol = batch.symbol or self.symbol
        return len(idx)

    def _compact(self) -> None:
        k = self.cap
        for a in (self.ts, self.close, self.windows, self.flat, self.regime, self.position):
            a[:k] = a[self.n - k : self.n]
        self.n = k

    def first_ts(self) -> int | None:
        return int(self.ts[0]) if self.n else None

    def matured(self, horizon: int, dead_zone: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(row indices, labels, forward log returns) of rows whose horizon-h label is known within
        the buffer and spans no gap (same rule as datasets.build_dataset)."""
        n, h = self.n, int(horizon)
        if n <= h:
            return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0)
        close, ts = self.close[:n], self.ts[:n]
        y = make_labels(close, h, dead_zone)
        ok = y != UNKNOWN
        ok[: n - h] &= (ts[h:] - ts[:-h]) == h * self.bar_ms
        idx = np.flatnonzero(ok)
        fwd = np.log(close[idx + h] / close[idx])
        return idx, y[idx], fwd

    def rows(self, idx: np.ndarray) -> dict[str, np.ndarray]:
        """Copies of the rows ``idx`` (safe to hand to a queue or another thread)."""
        return {"ts": self.ts[idx].copy(), "close": self.close[idx].copy(),
                "windows": self.windows[idx].copy(), "flat": self.flat[idx].copy(),
                "regime": self.regime[idx].copy(), "position": self.position[idx].copy()}


def batch_from_rows(rows: Mapping[str, np.ndarray], spec: FeatureSpec, symbol: str = "") -> FeatureBatch:
    return FeatureBatch(symbol=symbol, timeframe=spec.timeframes[0], ts=rows["ts"], close=rows["close"],
                        windows=rows["windows"], flat=rows["flat"], regime=rows["regime"], spec=spec)


def split_release(ts: np.ndarray, matured_idx: np.ndarray, horizon: int, bar_ms: int, val_bars: int,
                  released_until: int) -> tuple[np.ndarray, np.ndarray]:
    """Pure: (indices to send to the trainer, validation indices). Validation = the newest
    ``val_bars`` matured samples; trainers get matured samples at least ``horizon`` bars before the
    first validation sample (their label spans end before it starts) and newer than what they got."""
    if len(matured_idx) == 0:
        return matured_idx, matured_idx
    val = matured_idx[-val_bars:]
    cutoff = int(ts[val[0]]) - int(horizon) * int(bar_ms)
    t = ts[matured_idx]
    send = matured_idx[(t <= cutoff) & (t > released_until)]
    return send, val


# ---------------------------------------------------------------- trainer process


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


def _drain(inbox: Any, timeout: float | None) -> list[Any]:
    """Wait up to ``timeout`` s (None: for ever) for one item of a queue, then take what else is queued."""
    msgs = []
    try:
        if timeout is None:
            msgs.append(inbox.get())
        else:
            msgs.append(inbox.get(timeout=timeout) if timeout > 0 else inbox.get_nowait())
        while True:
            msgs.append(inbox.get_nowait())
    except queue.Empty:
        pass
    return msgs


def _writer(run_dir: str | None) -> Any:
    if run_dir is None:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter

        return SummaryWriter(log_dir=run_dir)
    except Exception:  # TensorBoard is optional: training goes on without it
        log.exception("no TensorBoard writer for %s", run_dir)
        return None


def _train_round(expert: Any, data: _TrainData, n_train: int, spec: TrainerSpec, fspec: FeatureSpec,
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
    """Entry point of a trainer process (spawned). Messages in: ("init", state_bytes),
    ("load", state_bytes), ("candles", DataFrame), ("samples", rows dict), ("stop",).
    Messages out: ("status", dict), ("published", dict), ("error", str)."""
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
    builder = FeatureBuilder(spec.features, spec.base_timeframe)
    cfg = spec.expert_cfg.model_copy(update={"device": "cpu"}) if spec.expert_cfg.device == "auto" else spec.expert_cfg
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
        for msg in _drain(inbox, min(wait, 0.5)):
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


# ---------------------------------------------------------------- live weights across restarts


def live_path(models_dir: str | Path, name: str) -> Path:
    return Path(models_dir) / name / "online" / LIVE_FILE


def resume_live(expert: Any, models_dir: str | Path) -> tuple[str, dict[str, Any]] | None:
    """Put the online-trained weights an earlier run left live (``live_path``) into ``expert`` when
    they descend from the weights it holds now (the registered best it loaded, or "untrained"): a newer
    offline checkpoint wins over them. Returns (version, exact state) of those base weights - where a
    rollback goes - or None when nothing was resumed. An incompatible file (features or architecture
    changed) raises ValueError and leaves the expert as it was."""
    path = live_path(models_dir, expert.name)
    if not path.exists():
        return None
    rec = torch.load(path, map_location="cpu", weights_only=False)
    base_version = str(expert.version)
    if rec.get("base") != base_version:
        log.info("%s: %s descends from %s, not the live %s: not resumed", expert.name, path, rec.get("base"),
                 base_version)
        return None
    base = copy.deepcopy(expert.state_dict())
    try:
        expert.load_state_dict(rec["state"])  # loaded just now: nothing else holds it
    except Exception as exc:
        expert.load_state_dict(base)
        expert.version = base_version
        raise ValueError(f"{expert.name}: cannot resume online weights {path}: {exc}") from exc
    expert.version = str(rec["version"])
    return base_version, base


class _LiveWriter:
    """Writes the live weights of online-trained experts on a background thread (never on the
    decision thread): the newest record per file wins; ``close`` drains it."""

    def __init__(self) -> None:
        self._q: queue.Queue = queue.Queue()
        self._t: threading.Thread | None = None

    def put(self, path: Path, record: dict[str, Any] | None) -> None:
        """Save ``record`` atomically to ``path`` (None: delete the file)."""
        self._q.put((path, record))
        if self._t is None or not self._t.is_alive():
            self._t = threading.Thread(target=self._run, name="live-weights-writer", daemon=True)
            self._t.start()

    def _run(self) -> None:
        while True:
            items = _drain(self._q, None)
            newest = {it[0]: it[1] for it in items if it is not None}  # later records replace earlier
            self._write(newest)
            if any(it is None for it in items):  # close(): everything queued before it is written
                return

    @staticmethod
    def _write(newest: dict) -> None:
        for path, record in newest.items():
            try:
                if record is None:
                    path.unlink(missing_ok=True)
                    continue
                save_atomic(record, path)
            except Exception:  # a full disk must not stop training or trading
                log.exception("cannot write live weights %s", path)

    def close(self, timeout: float = 10.0) -> None:
        if self._t is not None and self._t.is_alive():
            self._q.put(None)
            self._t.join(timeout)


# ---------------------------------------------------------------- engine-side manager


def _point(ts_ms: int, body: Mapping[str, Any]) -> TrainingPoint:
    """The loss-curve point of a trainer's "published" message (validation scores when it judged)."""
    def opt(k: str) -> float | None:
        v = body.get(k)
        return float(v) if v is not None and np.isfinite(v) else None

    return TrainingPoint(ts_ms=ts_ms, steps=int(body["steps"]), loss=float(body.get("loss", float("nan"))),
                         samples_per_s=float(body.get("samples_per_s", 0.0)),
                         val_challenger=opt("challenger_logloss"), val_champion=opt("champion_logloss"),
                         version=str(body.get("version", "")))


@dataclass
class _Trainer:
    spec: TrainerSpec
    proc: Any = None
    inbox: Any = None
    outbox: Any = None
    wanted: bool = False  # start() asked for it and stop() did not
    released_until: int = int(np.iinfo(np.int64).min)
    restarts: int = 0
    backoff: float = 1.0
    restart_at: float | None = None
    started_at: float = 0.0
    held: bool = False  # hold(): kept frozen (SIGSTOP) until released
    status: TrainerStatus = field(default_factory=lambda: TrainerStatus(running=False))
    # every published round since the manager first started this expert (survives restarts/toggles)
    history: deque[TrainingPoint] = field(default_factory=lambda: deque(maxlen=HISTORY_POINTS))


@dataclass
class _Retiring:
    """A trainer process told to stop that has not exited yet (``stop(wait=False)``)."""

    trainer: _Trainer
    proc: Any
    inbox: Any
    outbox: Any
    deadline: float  # monotonic time after which it is terminated (then killed)
    signalled: bool = False


def _end_process(p: Any, inbox: Any, outbox: Any, timeout: float) -> None:
    """Ask a trainer process to stop, wait ``timeout`` s, then terminate / kill; close its queues."""
    if p.is_alive():
        try:
            inbox.put(("stop",))
        except Exception:
            pass
        p.join(timeout)
        if p.is_alive():
            p.terminate()
            p.join(2.0)
        if p.is_alive():
            p.kill()
            p.join(2.0)
    for q in (inbox, outbox):
        if q is not None:
            q.cancel_join_thread()  # never block interpreter exit on a dead reader
            q.close()


class TrainingManager:
    """Starts/stops trainer processes, feeds them matured samples, judges their checkpoints.

    Thread rules: ``feed``, ``poll`` and applying swaps run on the engine thread between decisions;
    ``start``/``stop``/``rollback``/``status`` may be called from any thread (UI commands). No lock
    held here is ever waited on by the decision path for longer than a dict update."""

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
        self.freeze_while_deciding = bool(freeze_while_deciding) and _CAN_FREEZE
        self.bar_ms = timeframe_ms(self.spec.timeframes[0])
        trainable = {n: e for n, e in experts.items() if getattr(e, "input_kind", "features") == "features"}
        self._trainable = trainable
        max_h = max((e.horizon for e in trainable.values()), default=1)
        val = max((models_cfg.experts[n].online.val_bars for n in trainable if n in models_cfg.experts),
                  default=240)
        self.buffer = FeedBuffer(self.spec, self.bar_ms, val + 2 * max_h + 64)
        self._buf_lock = threading.Lock()
        self._trainers: dict[str, _Trainer] = {}
        self._lock = threading.Lock()  # guards _trainers' fields touched by UI commands
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
        self._live_writer = _LiveWriter()
        self._pending_swaps: list[Swap] = []
        self._promoted: dict[str, deque[Path]] = {}  # files of recent promotions, oldest first
        self._retiring: list[_Retiring] = []
        self._jobs: queue.Queue = queue.Queue()
        self._results: queue.Queue = queue.Queue()
        self._evaluator: threading.Thread | None = None
        self._scratch: dict[tuple[str, str], Any] = {}
        self._scores: dict[str, dict[str, Any]] = {}  # last verdict / promotions per expert
        self._closed = False

    # ---------------------------------------------------------------- commands

    def start(self, name: str) -> None:
        """Start (or keep running) the trainer of expert ``name``."""
        if name not in self._trainable:
            known = ", ".join(self._trainable) or "none"
            raise KeyError(f"no trainable expert {name!r} (trainable: {known}; candle experts train offline)")
        cfg = self.models_cfg.experts[name]
        self._seed_buffer()  # outside the lock: feature building takes a moment
        with self._lock:
            t = self._trainers.get(name)
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
                cpus=self.cpus)
            t = self._trainers[name] = t or _Trainer(spec=spec)
            t.spec = spec
            t.wanted = True
            t.backoff = self.backoff_initial_s
            t.restart_at = None
            self._spawn(t)

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
                           base_timeframe=self.spec.timeframes[0], dead_zone=self.dead_zone, online=cfg.online,
                           checkpoint_dir=str(Path(path).parent), run_dir=None)
        self._submit(spec, {"path": str(path), "version": version or Path(path).stem})

    def stop(self, name: str, timeout: float = 5.0, wait: bool = True) -> None:
        """Stop the trainer of ``name``: it finishes its round and exits, killed after ``timeout`` s.
        ``wait=False`` (the engine thread) returns at once; ``poll`` reaps the process later and still
        judges a checkpoint it published while stopping."""
        with self._lock:
            t = self._trainers.get(name)
            if t is None:
                return
            t.wanted = False
            t.restart_at = None
            if wait:
                self._halt(t, timeout)
            elif t.proc is not None:
                self._unhold(t)
                try:
                    t.inbox.put(("stop",))
                except Exception:
                    pass
                self._retiring.append(_Retiring(t, t.proc, t.inbox, t.outbox, time.monotonic() + timeout))
                t.proc = t.inbox = t.outbox = None
            t.status = replace(t.status, running=False, pid=None)

    def rollback(self, name: str) -> Swap:
        """Queue the previous live version of ``name`` (exact weights) for the next ``poll``."""
        hist = self._history.get(name)
        prev = hist.pop() if hist is not None else None
        if prev is None:
            raise ValueError(f"rollback {name}: no previous version to restore")
        version, state = prev
        swap = Swap(expert=name, version=version, state=state, kind="rollback")
        with self._lock:
            self._pending_swaps.append(swap)
        return swap

    def status(self) -> dict[str, TrainerStatus]:
        with self._lock:
            out = {}
            for n in self._trainable:
                t = self._trainers.get(n)
                st = t.status if t is not None else TrainerStatus(running=False)
                out[n] = replace(st, live_version=str(self.experts[n].version),
                                 history=tuple(t.history) if t is not None else (), **self._scores.get(n, {}))
            return out

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
        if not self._trainers or not self._lock.acquire(blocking=False):
            return []
        try:  # _signal skips processes that have exited
            procs = [t.proc for t in self._trainers.values() if t.wanted and not t.held and t.proc is not None]
        finally:
            self._lock.release()
        return self._signal(procs, signal.SIGSTOP)

    def thaw(self, procs: list[Any]) -> None:
        self._signal(procs, signal.SIGCONT)

    @staticmethod
    def _signal(procs: list[Any], sig: int) -> list[Any]:
        """Signal our own child processes; one that has exited is skipped (``exitcode`` reaps it, so its
        pid can never have been reused by another process)."""
        done = []
        for p in procs:
            if p.exitcode is None:
                try:
                    os.kill(p.pid, sig)
                    done.append(p)
                except ProcessLookupError:
                    pass
        return done

    def hold(self, name: str, on: bool = True) -> None:
        """Keep the trainer of ``name`` frozen (its process, samples and optimiser state stay) until
        released with ``on=False``; ``deciding`` leaves held trainers alone. For measurements."""
        with self._lock:
            t = self._trainers.get(name)
            if t is None or t.proc is None:
                raise ValueError(f"hold {name}: no trainer process running")
            t.held = bool(on)
            self._signal([t.proc], signal.SIGSTOP if on else signal.SIGCONT)

    def shutdown(self, timeout: float = 5.0) -> None:
        for name in list(self._trainers):
            self.stop(name, timeout)
        with self._lock:
            retiring, self._retiring = self._retiring, []
        for r in retiring:
            _end_process(r.proc, r.inbox, r.outbox, max(0.0, r.deadline - time.monotonic()))
        self._closed = True
        self._live_writer.close()
        if self._evaluator is not None:
            self._jobs.put(None)
            self._evaluator.join(timeout)
            self._evaluator = None

    # ---------------------------------------------------------------- feed

    def feed(self, batch: FeatureBatch, position: float | np.ndarray | None = None) -> int:
        """New feature rows (normally the one the decision path built) and the position held after
        that bar's decision (sign matters; None = unknown). Sends newly releasable matured samples to
        the running trainers; returns the number of sample rows sent."""
        pos = np.full(len(batch), np.nan) if position is None else np.broadcast_to(
            np.asarray(position, dtype=np.float64), (len(batch),))
        with self._buf_lock:
            self.buffer.append(batch, pos)
        return self._release()

    def feed_frames(self, frames: dict[str, pd.DataFrame], position: float | None = None,
                    ref: pd.DataFrame | None = None) -> int:
        """Fallback when the decision path's FeatureBatch is not at hand: builds the row itself
        (FeatureBuilder.build_one on the provider's frames: one more feature build per bar)."""
        symbol = self.key.symbol if self.key is not None else ""
        return self.feed(self.builder.build_one(frames, ref, symbol=symbol), position)

    def _release(self) -> int:
        sent = 0
        for t in list(self._trainers.values()):
            if not t.wanted or t.proc is None or not t.proc.is_alive() or t.inbox is None:
                continue
            h = t.spec.expert_cfg.horizon
            with self._buf_lock:
                idx, y, r = self.buffer.matured(h, self.dead_zone)
                # every matured row goes out; the trainer keeps the newest val_bars for judging only
                send = idx[self.buffer.ts[idx] > t.released_until]
                if len(send) == 0:
                    continue
                pos = np.searchsorted(idx, send)
                rows = self.buffer.rows(send)
            rows["labels"], rows["fwd"] = y[pos], r[pos]
            t.inbox.put(("samples", rows))
            t.released_until = int(rows["ts"][-1])
            sent += len(send)
        return sent

    def validation_window(self, name: str) -> tuple[FeatureBatch, np.ndarray]:
        """The current validation samples of expert ``name`` (copies) and their labels."""
        h = self.experts[name].horizon
        val_bars = self.models_cfg.experts[name].online.val_bars
        with self._buf_lock:
            idx, y, _ = self.buffer.matured(h, self.dead_zone)
            _, val = split_release(self.buffer.ts[: self.buffer.n], idx, h, self.bar_ms, val_bars,
                                   np.iinfo(np.int64).min)
            rows = self.buffer.rows(val)
            labels = y[np.searchsorted(idx, val)]
        return batch_from_rows(rows, self.spec, self.buffer.symbol), labels

    def _seed_buffer(self) -> None:
        """Empty buffer + a store: build the newest validation window's rows from stored candles,
        so challengers can be judged without waiting val_bars bars."""
        if self.store is None or self.key is None or self.buffer.n:
            return
        want = self.buffer.cap - 64
        warm = self.builder.min_history + self.models_cfg.features.norm_window
        candles = self.store.last_candles(self.key, want + warm)
        if len(candles) <= self.builder.min_history:
            return
        first = max(self.builder.min_history - 1, len(candles) - want)
        b = self.builder.build_many(candles, symbol=self.key.symbol, rows=slice(first, None))
        with self._buf_lock:
            self.buffer.append(b, np.full(len(b), np.nan))

    def _replay_candles(self, t: _Trainer) -> pd.DataFrame | None:
        """Stored candles the trainer builds its replay samples from: everything before the buffer
        (whose rows reach it as matured samples), ``replay_bars`` + warm-up long."""
        if self.store is None or self.key is None or t.spec.online.replay_bars == 0:
            return None
        end = self.buffer.first_ts()
        warm = self.builder.min_history + self.models_cfg.features.norm_window
        n = t.spec.online.replay_bars + warm + t.spec.expert_cfg.horizon
        if end is None:
            return self.store.last_candles(self.key, n)
        df = self.store.query_df(
            "SELECT ts, open, high, low, close, volume FROM candles WHERE exchange = ? AND symbol = ? "
            "AND timeframe = ? AND ts < ? ORDER BY ts DESC LIMIT ?",
            [self.key.exchange, self.key.symbol, self.key.timeframe, int(end), int(n)])
        return df.iloc[::-1].reset_index(drop=True)

    # ---------------------------------------------------------------- processes

    def _spawn(self, t: _Trainer) -> None:
        t.inbox, t.outbox = _CTX.Queue(), _CTX.Queue()
        t.proc = _CTX.Process(target=trainer_main, args=(t.spec, t.inbox, t.outbox),
                              name=f"trainer-{t.spec.name}", daemon=True)
        t.proc.start()
        t.started_at = time.monotonic()
        t.released_until = int(np.iinfo(np.int64).min)
        version, state = self._champion[t.spec.name]
        t.inbox.put(("init", state_to_bytes(state), version))
        replay = self._replay_candles(t)
        if replay is not None and len(replay):
            t.inbox.put(("candles", replay))
        t.status = replace(t.status, running=True, pid=t.proc.pid, restarts=t.restarts)
        self._release()

    def _unhold(self, t: _Trainer) -> None:
        if t.held and t.proc is not None:
            self._signal([t.proc], signal.SIGCONT)  # a frozen process cannot take the stop message
        t.held = False

    def _halt(self, t: _Trainer, timeout: float) -> None:
        self._unhold(t)
        if t.proc is not None:
            _end_process(t.proc, t.inbox, t.outbox, timeout)
        t.proc = t.inbox = t.outbox = None

    def _reap(self, now: float) -> None:
        """Trainers stopped without waiting: take what they still publish, close them once they
        have exited, terminate those past their deadline. Called with ``_lock`` held."""
        keep = []
        for r in self._retiring:
            self._drain(r.trainer, r.outbox, live=False)
            if not r.proc.is_alive():
                _end_process(r.proc, r.inbox, r.outbox, 0.0)  # closes its queues; joins at once
                continue
            if now >= r.deadline:  # overdue: SIGTERM, then SIGKILL two seconds later, never waiting here
                (r.proc.kill if r.signalled else r.proc.terminate)()
                r.signalled, r.deadline = True, now + 2.0
            keep.append(r)
        self._retiring = keep

    # ---------------------------------------------------------------- poll

    def poll(self, apply: bool = False) -> list[Swap]:
        """Non-blocking housekeeping; returns the Swaps to apply (and applies them when ``apply`` -
        only on the decision thread between two decisions)."""
        now = time.monotonic()
        swaps: list[Swap] = []
        # never wait: a UI command (start/stop) holding the lock just defers housekeeping a bar
        if self._lock.acquire(blocking=False):
            try:
                for t in self._trainers.values():
                    self._drain(t, t.outbox)
                    self._supervise(t, now)
                self._reap(now)
                swaps, self._pending_swaps = self._pending_swaps, []
            finally:
                self._lock.release()
        swaps += self._collect_verdicts()
        if apply:
            for s in swaps:
                self.apply(s)
        return swaps

    def _drain(self, t: _Trainer, outbox: Any, live: bool = True) -> None:
        """Handle what a trainer process sent. From a stopping process (``live=False``) only its
        published checkpoints count: its status and errors no longer describe the trainer."""
        if outbox is None:
            return
        while True:
            try:
                kind, body = outbox.get_nowait()
            except (queue.Empty, OSError, EOFError, ValueError):
                return
            if not live and kind != "published":
                continue
            if kind == "status":
                t.status = replace(t.status, steps=int(body["steps"]), loss=float(body["loss"]),
                                   samples_per_s=float(body["samples_per_s"]), pid=int(body["pid"]))
            elif kind == "published":
                now_ms = int(time.time() * 1000)
                t.status = replace(t.status, steps=int(body["steps"]), last_publish=now_ms)
                t.history.append(_point(now_ms, body))
                self._judged(t.spec, body)
            elif kind == "error":
                t.status = replace(t.status, error=str(body).strip().splitlines()[-1])
                log.warning("trainer %s failed:\n%s", t.spec.name, body)

    def _supervise(self, t: _Trainer, now: float) -> None:
        if not t.wanted:
            return
        if t.proc is not None and not t.proc.is_alive():
            code = t.proc.exitcode
            self._halt(t, 0.0)
            t.restarts += 1
            if now - t.started_at > self.backoff_max_s:  # it had been healthy: start over
                t.backoff = self.backoff_initial_s
            t.restart_at = now + t.backoff
            # the cause without any earlier "(restart ...)" suffix, so the message does not grow
            err = (t.status.error or "").split(" (restart ")[0] or f"trainer process exited with code {code}"
            t.status = replace(t.status, running=False, pid=None, restarts=t.restarts,
                               error=f"{err} (restart {t.restarts} in {t.backoff:.0f} s)")
            log.warning("trainer %s died (exit code %s); restart %d in %.1f s", t.spec.name, code,
                        t.restarts, t.backoff)
            t.backoff = min(t.backoff * 2.0, self.backoff_max_s)
        elif t.proc is None and t.restart_at is not None and now >= t.restart_at:
            t.restart_at = None
            self._spawn(t)

    # ---------------------------------------------------------------- evaluation (background thread)

    def _submit(self, spec: TrainerSpec, body: dict) -> None:
        if self._closed:
            return
        batch, labels = self.validation_window(spec.name)
        version, state = self._champion[spec.name]
        self._jobs.put((spec, body, batch, labels, version, state))
        if self._evaluator is None or not self._evaluator.is_alive():
            self._evaluator = threading.Thread(target=self._evaluate_loop, name="challenger-eval", daemon=True)
            self._evaluator.start()

    def _judged(self, spec: TrainerSpec, body: dict) -> None:
        """A trainer's checkpoint with the validation scores it computed on its withheld window."""
        margin = spec.online.promote_margin
        if "challenger_logloss" in body:
            verdict = judge(float(body["champion_logloss"]), float(body["challenger_logloss"]), margin,
                            int(body["n_val"]), MIN_VAL_SAMPLES, gain_se=float(body.get("gain_se", 0.0)),
                            z=spec.online.promote_z)
        else:
            verdict = judge(float("nan"), float("nan"), margin, int(body["n_val"]), MIN_VAL_SAMPLES)
        self._results.put((spec.name, body["version"], Path(body["path"]), None, verdict,
                           str(body["champion_version"])))

    def _scratch_expert(self, name: str, role: str) -> Any:
        ex = self._scratch.get((name, role))
        if ex is None:
            from NN.experts.registry import build_expert

            cfg = self.models_cfg.experts[name].model_copy(update={"device": "cpu"})
            ex = self._scratch[(name, role)] = build_expert(name, cfg, self.spec)
            ex.version = ""
        return ex

    def _next_jobs(self) -> list[tuple] | None:
        """Block for one job, then take whatever else is queued; per expert only the NEWEST
        checkpoint is judged (older ones are superseded: their files are removed). None = stop."""
        jobs = _drain(self._jobs, None)
        if any(j is None for j in jobs):
            return None
        newest: dict[str, tuple] = {}
        for j in jobs:
            old = newest.get(j[0].name)
            if old is not None:
                Path(old[1]["path"]).unlink(missing_ok=True)
            newest[j[0].name] = j
        return list(newest.values())

    def _evaluate_loop(self) -> None:
        while True:
            jobs = self._next_jobs()
            if jobs is None:
                return
            for job in jobs:
                self._evaluate_one(*job)

    def _evaluate_one(self, spec: TrainerSpec, body: dict, batch: FeatureBatch, labels: np.ndarray,
                      champ_version: str, champ_state: dict[str, Any]) -> None:
        path = Path(body["path"])
        try:
            champ = self._scratch_expert(spec.name, "champion")
            if champ.version != champ_version:
                champ.load_state_dict(copy.deepcopy(champ_state))
                champ.version = champ_version
            chall = self._scratch_expert(spec.name, "challenger")
            state = torch.load(path, map_location="cpu", weights_only=False)
            chall.load_state_dict(state)
            verdict = evaluate(champ, chall, batch, labels, spec.online.promote_margin, MIN_VAL_SAMPLES,
                               z=spec.online.promote_z)
            self._results.put((spec.name, body["version"], path, state, verdict, champ_version))
        except Exception as exc:  # a broken checkpoint is reported, never applied
            self._results.put((spec.name, body["version"], path, None,
                               Verdict(False, float("nan"), float("nan"), spec.online.promote_margin, 0,
                                       f"evaluation failed: {type(exc).__name__}: {exc}"), champ_version))

    def _collect_verdicts(self) -> list[Swap]:
        swaps = []
        while True:
            try:
                name, version, path, state, verdict, champ_version = self._results.get_nowait()
            except queue.Empty:
                return swaps
            self._scores[name] = {**self._scores.get(name, {}), "challenger_score": verdict.challenger_logloss,
                                  "champion_score": verdict.champion_logloss, "last_verdict": verdict.reason}
            if verdict.promote and champ_version == self._champion[name][0]:
                try:
                    if state is None:  # judged by its trainer: load the winner only (small file)
                        state = torch.load(path, map_location="cpu", weights_only=False)
                    swaps.append(Swap(expert=name, version=version, state=state, kind="promote", verdict=verdict,
                                      path=str(path)))
                    continue
                except Exception as exc:
                    self._scores[name]["last_verdict"] = f"cannot load {path.name}: {exc}"
            path.unlink(missing_ok=True)  # rejected (or superseded) challengers leave no files behind

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
        sc = self._scores.setdefault(swap.expert, {})
        if swap.kind == "promote":
            sc["promotions"] = sc.get("promotions", 0) + 1
            self._prune_promoted(swap)
        base = self._base.setdefault(swap.expert, old_version)
        # back at the base weights nothing needs resuming; else the next start resumes these
        self._live_writer.put(live_path(self.models_dir, swap.expert), None if swap.version == base else
                              {"version": swap.version, "base": base, "state": swap.state})
        t = self._trainers.get(swap.expert)  # no lock: the decision thread never waits on UI commands
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
                log.exception("registering promoted %s %s failed (weights stay live)", swap.expert, swap.version)
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

    def has_history(self, name: str) -> bool:
        return len(self._history.get(name, ())) > 0
