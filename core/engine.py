"""The live / paper / replay composition the dashboard drives.

The engine thread owns every mutable object (provider, orchestrator, executor). Readers (Dash/Flask
threads) only ever see an immutable ``EngineSnapshot`` whose reference is swapped under a lock; they
send commands through a queue that the engine thread drains between candles, so no UI click can
interleave with a decision half-way.
"""

from __future__ import annotations

import logging
import math
import queue
import threading
import time
import uuid
from collections import deque
from collections.abc import Mapping
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
import pandas as pd

from core.config import AppConfig, ModelsConfig
from core.types import (
    CandleEvent,
    Decision,
    ExpertOutput,
    Fill,
    Order,
    Position,
    SeriesKey,
    Thresholds,
    timeframe_ms,
)

log = logging.getLogger(__name__)

_EMPTY: Mapping[str, Any] = MappingProxyType({})


# ---------------------------------------------------------------- snapshot contract (read by web/)


@dataclass(frozen=True, slots=True)
class KronosSummary:
    """The freshest finished Kronos forecast, summarised for display.

    ``bands`` maps a quantile label ("q10", "q25", "q50", "q75", "q90") to prices at ``future_ts``. The
    Kronos expert reports log-return quantiles AT its horizon only, so each band has two points: the
    close of the forecast bar (known) and the quantile price at the horizon bar; ``median`` is q50."""

    ts: int  # base bar the forecast was made at (its close is the last bar used)
    model_version: str
    horizon: int
    samples: int
    p_up: float
    expected_return: float
    future_ts: np.ndarray  # int64 [H]
    median: np.ndarray  # float64 [H]
    bands: Mapping[str, np.ndarray] = field(default_factory=lambda: _EMPTY)
    latency_ms: float = 0.0
    finished_ms: int = 0  # wall clock when the worker finished it


@dataclass(frozen=True, slots=True)
class ExpertState:
    """What the Models page shows per expert."""

    name: str
    enabled: bool
    training: bool
    version: str  # "untrained" when no checkpoint was loaded
    trained: bool
    input_kind: str  # "features" | "candles"
    last_error: str | None = None
    trainable: bool = False  # can train online (features experts, when the engine allows training)
    can_rollback: bool = False  # a previous live version is kept (Engine.rollback)


@dataclass(frozen=True, slots=True)
class SwapEvent:
    """One hot-swap of live weights applied by the engine between two decisions."""

    ts_ms: int  # wall clock
    bar_ts: int | None  # ts of the last decided bar before the swap (later decisions use `version`)
    expert: str
    kind: str  # "promote" | "rollback"
    version: str
    previous: str
    champion_score: float | None = None  # validation log losses behind a promotion
    challenger_score: float | None = None


@dataclass(frozen=True, slots=True)
class KillSwitchState:
    active: bool = False
    reason: str = ""
    since_ms: int | None = None


@dataclass(frozen=True, slots=True)
class EngineError:
    ts_ms: int
    where: str  # e.g. "expert:cnn", "source:ccxt", "executor", "command:set_thresholds"
    message: str


@dataclass(frozen=True, slots=True)
class EngineSnapshot:
    """Everything the UI/API reads, frozen at one instant. Never mutate the DataFrames/arrays inside
    (they are private copies, but shared between readers of the same snapshot)."""

    ts_ms: int  # wall clock when this snapshot was published
    mode: str  # "live" | "paper" | "replay"
    running: bool
    streaming: bool
    symbol: str
    timeframe: str  # base timeframe of the active stream
    candles: Mapping[str, pd.DataFrame]  # {timeframe: CANDLE_COLUMNS DataFrame} for `symbol`
    decision: Decision | None  # latest
    recent_decisions: tuple[Decision, ...]  # newest last, bounded
    expert_outputs: Mapping[str, ExpertOutput]  # latest per expert
    gate_weights: Mapping[str, float]  # latest
    thresholds: Thresholds
    kronos: KronosSummary | None
    positions: tuple[Position, ...]
    open_orders: tuple[Order, ...]
    trades: tuple[Fill, ...]  # newest last, bounded
    equity: pd.DataFrame  # columns ts, equity, cash, drawdown
    kill_switch: KillSwitchState
    sources: Mapping[str, Any]  # {source name: SourceStatus from core/data/sources.py}
    inference_latency_ms: Mapping[str, float]  # per expert + "total" for the last decision
    errors: tuple[EngineError, ...]  # newest last, bounded
    experts: Mapping[str, ExpertState]
    versions: Mapping[str, str]  # {"app": ..., expert name: model version, "gate": ...}
    # live training (NN/training/online.py): trainer status per trainable expert, recent swaps, and
    # rolling outcome metrics per expert ("moe" = the fused decision) - in memory since the stream
    # started (live_metrics) and from the stored outcomes table (stored_metrics)
    training_enabled: bool = False
    trainers: Mapping[str, Any] = field(default_factory=lambda: _EMPTY)  # {expert: TrainerStatus}
    swaps: tuple[SwapEvent, ...] = ()  # newest last, bounded
    live_metrics: Mapping[str, Any] = field(default_factory=lambda: _EMPTY)  # {expert: RollingMetrics}
    stored_metrics: Mapping[str, Any] = field(default_factory=lambda: _EMPTY)  # {expert: RollingMetrics}

    @staticmethod
    def empty(symbol: str = "", timeframe: str = "", mode: str = "paper",
              thresholds: Thresholds | None = None) -> EngineSnapshot:
        """The snapshot before the engine has seen any candle."""
        return EngineSnapshot(
            ts_ms=int(time.time() * 1000),
            mode=mode,
            running=False,
            streaming=False,
            symbol=symbol,
            timeframe=timeframe,
            candles=_EMPTY,
            decision=None,
            recent_decisions=(),
            expert_outputs=_EMPTY,
            gate_weights=_EMPTY,
            thresholds=thresholds or Thresholds(),
            kronos=None,
            positions=(),
            open_orders=(),
            trades=(),
            equity=pd.DataFrame({"ts": pd.Series(dtype="int64"), "equity": pd.Series(dtype="float64"),
                                 "cash": pd.Series(dtype="float64"),
                                 "drawdown": pd.Series(dtype="float64")}),
            kill_switch=KillSwitchState(),
            sources=_EMPTY,
            inference_latency_ms=_EMPTY,
            errors=(),
            experts=_EMPTY,
            versions=_EMPTY,
        )


# ---------------------------------------------------------------- the engine


@dataclass(frozen=True, slots=True)
class ReplayConfig:
    """Replay stored candles instead of live data. ``path``: a candle file imported into the store
    first (idempotent upsert; symbol and timeframe from its name, e.g. BTC_USDT-1m.csv)."""

    path: Path | None = None
    speed: float | None = 60.0  # N x real time; None = as fast as possible
    start_ms: int | None = None
    end_ms: int | None = None


KEEP_DECISIONS = 200
KEEP_TRADES = 500
KEEP_EQUITY = 20_000
KEEP_ERRORS = 100
KEEP_SWAPS = 50
OUTCOMES_EVERY = 50  # bars between audit flush + stored outcome maturing
IDLE_POLL_S = 1.0  # trainer housekeeping when no candle arrives (swaps, restarts, status)
SNAPSHOT_BARS = 500  # candles per timeframe in a snapshot


class Engine:
    """Owns store, provider, orchestrator and executor; one engine thread applies candles and
    commands in arrival order and publishes an immutable EngineSnapshot after each."""

    def __init__(self, cfg: AppConfig, models: ModelsConfig, *, replay: ReplayConfig | None = None,
                 training: bool = True, store: Any | None = None) -> None:
        from core.data.store import MarketStore

        self.cfg = cfg
        self.models = models
        self.replay = replay
        # online training: main_dashboard --no-training or config training.enabled=false -> no trainer starts
        self.training = bool(training) and bool(cfg.training.enabled)
        self.mode = "replay" if replay is not None else ("live" if cfg.execution.live else "paper")
        self.store = store if store is not None else MarketStore(cfg.resolve(cfg.data.db_path))
        self._owns_store = store is None
        self.exchange = cfg.data.exchange
        self.symbol = cfg.data.symbols[0]
        self.timeframe = cfg.data.base_timeframe
        if replay is not None and replay.path is not None:
            self.symbol, self.timeframe = self._import(Path(replay.path))
        self._q: queue.Queue[tuple[str, Any]] = queue.Queue()
        self._lock = threading.Lock()
        self._errors: deque[EngineError] = deque(maxlen=KEEP_ERRORS)
        self._decisions: deque[Decision] = deque(maxlen=KEEP_DECISIONS)
        self._trades: deque[Fill] = deque(maxlen=KEEP_TRADES)
        self._equity: deque[tuple[int, float, float]] = deque(maxlen=KEEP_EQUITY)
        self._thread: threading.Thread | None = None
        self._running = False
        self._streaming = False
        self._snap = EngineSnapshot.empty(self.symbol, self.timeframe, self.mode, self._cfg_thresholds())
        self._provider: Any = None
        self._orch: Any = None
        self._executor: Any = None
        self._expert_errors: dict[str, str] = {}
        self.trainer: Any = None  # TrainingManager of the current stream (built with the pipeline)
        self.live_outcomes: Any = None
        self.outcomes: Any = None
        self._want_training: set[str] = set()  # experts the user switched training on for
        # experts whose weights online training ever governed in this engine: the orchestrator's
        # registry poll leaves them alone (a new stream's poll would otherwise revert a promotion)
        self._managed: set[str] = set()
        self._fed = False  # trainers may start: live/paper at once, a replay after its first fed decision
        self._swaps: deque[SwapEvent] = deque(maxlen=KEEP_SWAPS)
        self._bars = 0
        self._build_models()
        self._publish()  # the experts (and whether they can train) are readable before start()

    # ---- construction
    def _cfg_thresholds(self) -> Thresholds:
        o = self.cfg.orchestrator
        return Thresholds(o.buy_threshold, o.sell_threshold, o.min_confidence)

    def _import(self, path: Path) -> tuple[str, str]:
        from core.data.files import load_file, parse_series_name

        if not path.exists():
            raise ValueError(f"replay file not found: {path}")
        sym, tf = parse_series_name(path)
        if sym is None or tf is None:
            raise ValueError(f"cannot tell symbol and timeframe from {path.name!r} (expected e.g. BTC_USDT-1m.csv)")
        self.store.upsert_candles(SeriesKey(self.exchange, sym, tf), load_file(path))
        return sym, tf

    def _build_models(self) -> None:
        """Enabled experts with their best checkpoints (untrained ones run, flagged untrained); an
        expert that cannot even be built is reported and left out."""
        from core.features import FeatureBuilder
        from NN.experts.registry import build_expert
        from NN.moe import MoEGate
        from NN.training.checkpoints import CheckpointRegistry

        self.builder = FeatureBuilder(self.models.features, self.timeframe)
        self.registry = CheckpointRegistry(self.store, self.cfg.resolve(self.cfg.training.models_dir))
        self.experts: dict[str, Any] = {}
        self.trained: dict[str, bool] = {}
        self._lineage: dict[str, tuple[str, Any]] = {}  # online training's base weights per expert
        for name, ecfg in self.models.enabled().items():
            try:
                ex = build_expert(name, ecfg, self.builder.spec, self.registry.models_dir)
                self.trained[name] = bool(self.registry.load_into(ex))
                self.experts[name] = ex
            except Exception as exc:
                self._error(f"expert:{name}", exc)
                self._expert_errors[name] = f"{type(exc).__name__}: {exc}"
                continue
            self._resume_online(name, ex)
        if not self.experts:
            raise ValueError("no expert could be built; check models.yml")
        self.gate = MoEGate(list(self.experts), self.models.moe, len(self.builder.spec.regime_features))
        try:
            self.registry.load_into(self.gate)
        except ValueError as exc:  # trained for another expert set: online Hedge instead
            self._error("gate", exc)

    def _resume_online(self, name: str, ex: Any) -> None:
        """Live/paper trading with training allowed: an expert goes on from the online-trained weights
        an earlier run left live (NN/training/online.resume_live) when they descend from its registered
        best. Never in a replay: weights that learned from the replayed history would see its future."""
        from NN.training.online import resume_live

        self._lineage[name] = (str(ex.version), None)
        tc = self.cfg.training
        if (self.mode == "replay" or not self.training or not tc.resume_online
                or getattr(ex, "input_kind", "features") != "features"):
            return
        try:
            base = resume_live(ex, self.cfg.resolve(tc.models_dir))
        except ValueError as exc:  # features or architecture changed since: the registered weights stay
            self._error(f"resume:{name}", exc)
            return
        if base is not None:
            self._lineage[name] = base
            self._managed.add(name)  # the registry poll must not revert them; the manager judges
            self.trained[name] = True
            log.info("%s resumes its online-trained weights %s (base %s)", name, ex.version, base[0])

    def _build_pipeline(self) -> None:
        from core.data.provider import DataProvider
        from core.execution.executor import Executor
        from core.execution.ledger import Ledger
        from core.orchestrator import Orchestrator

        cfg = self.cfg
        tfs = list(dict.fromkeys([*cfg.data.timeframes, *self.builder.timeframes]))
        # the features need their whole warm-up in the cache (EMAs, normalisation windows)
        cache = max(cfg.data.cache_bars, self.builder.min_history + 1, SNAPSHOT_BARS)
        prov = DataProvider(self.store, self.timeframe, tfs, cache_bars=cache, exchange=self.exchange,
                            max_future_ms=cfg.data.max_future_ms)
        # replays start from a fresh paper account each time; paper/live trading persists its ledger
        ledger = None if self.mode == "replay" else Ledger(self.store, account=f"{self.mode}:{self.symbol}",
                                                           initial_cash=cfg.execution.initial_cash,
                                                           symbol=self.symbol)
        executor = Executor(cfg.execution, cfg.risk, self.symbol, self.timeframe, ledger=ledger)
        dz = self.models.labels.dead_zone_bps
        dz = (2.0 * cfg.execution.taker_fee_bps if dz is None else dz) / 1e4
        thresholds = self._orch.thresholds if self._orch is not None else \
            getattr(self, "_pending_thresholds", self._cfg_thresholds())
        enabled = self._orch.enabled if self._orch is not None else \
            dict(getattr(self, "_pending_enabled", {}))
        if self._orch is not None:
            self._orch.close()
        self._close_training()
        orch = Orchestrator(self.experts, self.gate, self.builder, thresholds, self.store, executor, self.symbol,
                            self.timeframe, horizon=cfg.orchestrator.decision_horizon, dead_zone=dz,
                            slow_every_bars=cfg.orchestrator.kronos_every_bars, slow_async=True,
                            allow_short=cfg.execution.allow_short, registry=self.registry,
                            run_id=f"{self.mode}-{uuid.uuid4().hex[:8]}", enabled=enabled,
                            sizer=lambda _b: self._size(prov, executor))
        # tagged with their provider: after a stream restart, candles still queued from the old one
        # (same symbol included) must not reach the new pipeline
        prov.subscribe(lambda ev, p=prov: self._q.put(("candle", (p, ev))), symbols=[self.symbol],
                       timeframes=[self.timeframe])
        if self.replay is not None:
            from core.data.replay import ReplaySource

            key = SeriesKey(self.exchange, self.symbol, self.timeframe)
            if not len(self.store.last_candles(key, 1)):
                raise ValueError(f"nothing to replay: the store has no {self.exchange} {self.symbol} "
                                 f"{self.timeframe} candles")
            prov.add_source(ReplaySource(self.store, [key], self.replay.start_ms, self.replay.end_ms,
                                         self.replay.speed))
        else:
            from core.data.ccxt_source import CcxtSource

            d = cfg.data
            prov.warm(self.symbol)
            prov.add_source(CcxtSource(self.exchange, [self.symbol], self.timeframe, websocket=d.websocket,
                                       poll_interval_s=d.poll_interval_s,
                                       reconnect_initial_s=d.reconnect_initial_s,
                                       reconnect_max_s=d.reconnect_max_s, backfill_bars=d.backfill_bars))
        self._provider, self._orch, self._executor = prov, orch, executor
        self._build_training(orch, dz)
        self._decisions.clear()
        self._trades.clear()
        self._equity.clear()

    def trainable(self) -> list[str]:
        """Experts that can train online (features experts; candle experts like Kronos train offline)."""
        return [n for n, e in self.experts.items() if getattr(e, "input_kind", "features") == "features"]

    def _build_training(self, orch: Any, dz: float) -> None:
        """A TrainingManager, LiveOutcomes and OutcomeTracker for the current stream. The manager is
        the ONE authority over the trainable experts' weights once their training was switched on
        (orch.managed: the orchestrator's registry poll skips them), its swaps are applied on the
        engine thread between decisions, and the version string lands in the audit trail through
        ExpertOutput.model_version."""
        from NN.training.online import TrainingManager
        from NN.training.outcomes import LiveOutcomes, OutcomeTracker

        cfg = self.cfg
        key = SeriesKey(self.exchange, self.symbol, self.timeframe)
        h = cfg.orchestrator.decision_horizon
        # no registry: promotions stay in models/<expert>/online; the orchestrator's registry poll
        # must not fight them (see orch.managed)
        tc = cfg.training
        self.trainer = TrainingManager(self.store, self.models, self.builder, self.experts, key=key,
                                       dead_zone=dz, models_dir=cfg.resolve(tc.models_dir),
                                       runs_dir=cfg.resolve(tc.runs_dir), threads=tc.trainer_threads,
                                       nice=tc.trainer_nice, sched_idle=tc.trainer_idle,
                                       reserve_cpus=tc.reserve_cpus,
                                       freeze_while_deciding=tc.freeze_while_deciding, lineage=self._lineage)
        self.live_outcomes = LiveOutcomes(self.timeframe, dz, default_horizon=h)
        self.outcomes = OutcomeTracker(self.store, key, dz, default_horizon=h)
        # the manager seeds an empty buffer from the NEWEST stored candles: live that is the past, in
        # a replay it is the replay's future, so a replay's trainers wait for its first decision
        self._fed = self.mode != "replay"
        self._bars = 0
        orch.managed = set(self._managed)
        orch.checkpoint_sink = self._judge_registered
        self._start_wanted_trainers()

    def _judge_registered(self, name: str, info: Any) -> None:
        """A newly registered best checkpoint of an expert under online training: judged by the
        manager like a trainer's challenger (it goes live only if it wins on the validation window).
        The manager deletes a losing file, so it judges a copy and the registry's file stays."""
        import shutil

        if self.trainer is None:
            return
        dst = self.cfg.resolve(self.cfg.training.models_dir) / name / "online" / f"registry-{info.version}.pt"
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(info.path, dst)
        self.trainer.submit_checkpoint(name, dst, version=str(info.version))
        log.info("registered %s %s submitted to the champion/challenger judge", name, info.version)

    def _close_training(self) -> None:
        if self.trainer is not None:
            try:
                self.trainer.shutdown()
            except Exception as exc:
                self._error("training", exc)
            self.trainer = None

    def _start_wanted_trainers(self) -> None:
        """Start the trainers switched on (in a replay only once a decision's features were fed)."""
        if self.trainer is None or not self._fed or not self.training:
            return
        for name in sorted(self._want_training):
            try:
                self.trainer.start(name)
            except Exception as exc:
                self._error(f"training:{name}", exc)

    def _size(self, prov: Any, executor: Any) -> float:
        """Decision.target_position for a BUY: the executor's RiskManager sizing (volatility target
        from the same past-only realised volatility the kernel uses)."""
        from core.execution import kernel as K

        vol = math.nan
        w = self.cfg.risk.vol_window
        if self.cfg.risk.sizing == "volatility_target":
            c = prov.arrays(self.symbol, self.timeframe, w + 1)["close"]
            if len(c) > w:
                vol = float(K.realised_vol(np.asarray(c, dtype=np.float64), w, K.bars_per_year(self.timeframe))[-1])
        return float(executor.risk.size(1.0, vol))

    # ---- lifecycle
    def start(self) -> None:
        if self._running:
            return
        self._running = True
        self._build_pipeline()
        self._thread = threading.Thread(target=self._loop, name="engine", daemon=True)
        self._thread.start()
        self._provider.start()
        self._streaming = True
        self._publish()

    def stop(self) -> None:
        if not self._running:
            return
        self._running = False
        self._q.put(("stop", None))
        if self._provider is not None:
            self._provider.stop()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._streaming = False
        self._close_training()
        if self._orch is not None:
            self._orch.close()  # flushes the audit trail
            self._update_outcomes()
        if self._executor is not None and self._executor.ledger is not None:
            self._executor.ledger.close()
        self._publish()
        if self._owns_store:
            self.store.close()

    def wait_idle(self, timeout: float = 30.0) -> bool:
        """Block until the replay has finished and every queued item is processed (tests, demos)."""
        end = time.monotonic() + timeout
        if self._provider is not None:
            self._provider.wait(timeout)
        while time.monotonic() < end:
            if self._q.unfinished_tasks == 0:
                return True
            time.sleep(0.01)
        return False

    # ---- reading
    def snapshot(self) -> EngineSnapshot:
        return self._snap

    # ---- commands (any thread): validated here, applied on the engine thread in order
    def set_thresholds(self, t: Thresholds) -> None:
        if not isinstance(t, Thresholds):
            raise ValueError(f"set_thresholds expects Thresholds, got {type(t).__name__}")
        self._command("set_thresholds", t)

    def set_expert_enabled(self, name: str, enabled: bool) -> None:
        if name not in self.experts:
            raise ValueError(f"unknown expert {name!r}; running: {', '.join(self.experts)}")
        self._command("set_expert_enabled", (name, bool(enabled)))

    def reset_kill_switch(self) -> None:
        self._command("reset_kill_switch", None)

    def start_stream(self, symbol: str, timeframe: str) -> None:
        if "/" not in symbol:
            raise ValueError(f"symbol {symbol!r} must be a ccxt symbol like BTC/USDT")
        timeframe_ms(timeframe)
        if timeframe != self.timeframe:
            raise ValueError(f"timeframe {timeframe!r}: the engine streams its base timeframe {self.timeframe} "
                             "(higher timeframes are resampled from it)")
        self._command("start_stream", symbol)

    def stop_stream(self) -> None:
        self._command("stop_stream", None)

    def generate_prediction(self) -> dict[str, Any]:
        """An on-demand prediction at the newest closed candle (no trade, no gate update)."""
        done: queue.Queue[Any] = queue.Queue()
        self._q.put(("predict", done))
        if not self._running:
            self._drain_now()
        res = done.get(timeout=60)
        if isinstance(res, BaseException):
            raise res
        return res

    def set_training(self, name: str, on: bool) -> None:
        """Start/stop online training of expert ``name`` (a trainer process; promotions hot-swap the
        live weights between decisions). ValueError when the expert is unknown, cannot train online
        (candle experts such as Kronos), or training is disabled for this engine."""
        self._check_trainable(name, "set_training")
        self._command("set_training", (name, bool(on)))

    def rollback(self, name: str) -> None:
        """Put the previous live version of ``name`` back (exact weights), between two decisions.
        ValueError when there is no previous version (nothing was promoted)."""
        self._check_trainable(name, "rollback")
        tr = self.trainer
        if tr is None or not tr.has_history(name):
            raise ValueError(f"rollback {name}: no previous version to restore")
        self._command("rollback", name)

    def _check_trainable(self, name: str, what: str) -> None:
        if name not in self.experts:
            raise ValueError(f"{what}: unknown expert {name!r}; running: {', '.join(self.experts)}")
        if name not in self.trainable():
            raise ValueError(f"{what}: expert {name!r} cannot train online (candle experts train offline)")
        if not self.training:
            raise ValueError(f"{what} {name!r}: online training is disabled for this engine "
                             "(--no-training or training.enabled: false)")

    def _command(self, name: str, arg: Any) -> None:
        self._q.put((name, arg))
        if not self._running:  # before start(): apply at once so the snapshot reflects it
            self._drain_now()

    def _drain_now(self) -> None:
        while True:
            try:
                item = self._q.get_nowait()
            except queue.Empty:
                return
            self._handle(*item)
            self._q.task_done()

    # ---- the engine thread
    def _loop(self) -> None:
        while True:
            try:
                kind, arg = self._q.get(timeout=IDLE_POLL_S)
            except queue.Empty:  # no candle for a while: trainer housekeeping between decisions
                try:
                    if self._poll_training():
                        self._publish()
                except Exception as exc:
                    self._error("training", exc)
                continue
            try:
                if kind == "stop":
                    return
                self._handle(kind, arg)
            except Exception as exc:  # the engine thread never dies on one bad item
                self._error(f"engine:{kind}", exc)
                self._publish()
            finally:
                self._q.task_done()

    def _handle(self, kind: str, arg: Any) -> None:
        if kind == "candle":
            prov, ev = arg
            if prov is self._provider:
                self._on_candle(ev)
            return
        if kind == "predict":
            try:
                arg.put(self._predict_now())
            except Exception as exc:
                arg.put(RuntimeError(str(exc)) if not isinstance(exc, ValueError | RuntimeError) else exc)
            return
        if kind == "set_thresholds":
            if self._orch is not None:
                self._orch.set_thresholds(arg)
            self._pending_thresholds = arg
        elif kind == "set_expert_enabled":
            if self._orch is not None:
                self._orch.set_expert_enabled(*arg)
            self._pending_enabled = {**getattr(self, "_pending_enabled", {}), arg[0]: arg[1]}
        elif kind == "set_training":
            name, on = arg
            if on:
                self._want_training.add(name)
                self._managed.add(name)
                if self._orch is not None:
                    self._orch.managed.add(name)
                self._start_wanted_trainers()
            else:
                self._want_training.discard(name)
                if self.trainer is not None:
                    self.trainer.stop(name, timeout=5.0, wait=False)  # never block decisions
        elif kind == "rollback":
            if self.trainer is not None:
                self.trainer.rollback(arg)
                self._poll_training()
        elif kind == "reset_kill_switch":
            if self._executor is not None:
                self._executor.reset_kill_switch()
        elif kind == "start_stream":
            self._restart(arg)
        elif kind == "stop_stream":
            if self._provider is not None:
                self._provider.stop()
            self._streaming = False
        self._publish()

    def _restart(self, symbol: str) -> None:
        if self._provider is not None:
            self._provider.stop()
        self.symbol = symbol
        if self._running:
            self._build_pipeline()
            self._provider.start()
            self._streaming = True

    def _on_candle(self, ev: CandleEvent) -> None:
        if self._orch is None or ev.key.symbol != self.symbol:
            return  # a late event of a stream that was switched away from
        # trainer processes are frozen for the decision's few milliseconds (TrainingManager.deciding)
        with self.trainer.deciding() if self.trainer is not None else nullcontext():
            frames = self._frames(ev.ts)
            try:
                d = self._orch.on_candle(ev, frames)
            except Exception as exc:  # a decision failed: no trade this bar, the executor still books it
                self._error("orchestrator", exc)
                d = None
        if d is not None:
            self._decisions.append(d)
        self._train_step(ev, d)
        fills = self._executor.on_candle(ev)
        self._trades.extend(fills)
        s = self._executor.snapshot()
        self._equity.append((int(ev.ts), float(s.equity), float(s.cash)))
        self._publish()

    def _train_step(self, ev: CandleEvent, d: Decision | None) -> None:
        """Outcomes and training after a bar's decision (never fails the bar: errors are reported)."""
        try:
            self.live_outcomes.on_close(ev.ts, ev.close)  # before this bar's decision is added
            if d is not None:
                self.live_outcomes.add(d)
                batch = self._orch.last_batch
                if batch is not None and int(batch.ts[-1]) == d.ts:
                    self.trainer.feed(batch, position=d.target_position)
                    if not self._fed:
                        self._fed = True
                        self._start_wanted_trainers()
            self._poll_training()
        except Exception as exc:
            self._error("training", exc)
        self._bars += 1
        if self._bars % OUTCOMES_EVERY == 0:
            self._update_outcomes()

    def _poll_training(self) -> bool:
        """Trainer housekeeping on the engine thread; applies promotions/rollbacks (the orchestrator's
        experts ARE the manager's, so the next decision predicts with the new weights and version)."""
        tr = self.trainer
        if tr is None:
            return False
        before = {n: str(self.experts[n].version) for n in self.trainable()}
        swaps = tr.poll(apply=True)
        last = self._decisions[-1].ts if self._decisions else None
        for s in swaps:
            v = s.verdict
            self._swaps.append(SwapEvent(int(time.time() * 1000), last, s.expert, s.kind, s.version,
                                         before.get(s.expert, "?"),
                                         v.champion_logloss if v is not None else None,
                                         v.challenger_logloss if v is not None else None))
            log.info("live %s of %s: %s -> %s", s.kind, s.expert, before.get(s.expert), s.version)
            before[s.expert] = s.version  # two swaps of one expert in one poll chain their versions
            self.trained[s.expert] = s.version != "untrained"  # promoted weights are trained weights
        return True

    def _update_outcomes(self) -> None:
        if self.outcomes is None or self._orch is None:
            return
        try:
            self._orch.audit.flush()
            self.outcomes.update()
        except Exception as exc:
            self._error("outcomes", exc)

    def _frames(self, ts: int) -> dict[str, Any]:
        """Provider caches cut at ``ts``: the engine thread may lag behind the source, and a decision
        at ts must never see later bars (higher timeframes: build_one ignores unclosed rows). The base
        timeframe is a DataFrame (candle experts read it); higher ones stay the provider's arrays,
        which build_one reads directly, so no DataFrame is built for them on the decision path."""
        out: dict[str, Any] = {}
        for tf in self.builder.timeframes:
            arrays = self._provider.arrays(self.symbol, tf)
            if tf != self.timeframe:
                out[tf] = arrays
                continue
            df = pd.DataFrame(arrays, copy=False)
            if len(df) and int(df["ts"].iloc[-1]) > ts:
                df = df[df["ts"] <= ts]
            out[tf] = df
        return out

    def _predict_now(self) -> dict[str, Any]:
        from core.orchestrator import decide

        if self._provider is None:
            raise RuntimeError("the engine is not streaming")
        base = pd.DataFrame(self._provider.arrays(self.symbol, self.timeframe), copy=False)
        if len(base) < self.builder.min_history:
            raise RuntimeError(f"not enough history yet: {len(base)} of {self.builder.min_history} bars")
        ts = int(base["ts"].iloc[-1])
        batch = self.builder.build_one(self._frames(ts), symbol=self.symbol)
        enabled = self._orch.enabled
        names = list(self.experts)
        probs = np.tile(np.full(3, 1 / 3), (len(names), 1))
        mask = np.zeros(len(names), dtype=bool)
        outputs: dict[str, Any] = {}
        for i, n in enumerate(names):
            if not enabled.get(n, True):
                continue
            try:
                o = self.experts[n].predict(batch, base)
            except Exception as exc:
                self._error(f"expert:{n}", exc)
                continue
            probs[i], mask[i], outputs[n] = o.probs, True, o
        if not mask.any():
            raise RuntimeError("no expert produced an output")
        w, fused = self.gate.fuse(probs[None], np.asarray(batch.regime[-1:], dtype=np.float64), mask)
        conf = float(sum(w[0][i] * outputs[n].confidence for i, n in enumerate(names) if mask[i]))
        t = self._orch.thresholds
        return {
            "ts": ts, "symbol": self.symbol, "timeframe": self.timeframe,
            "action": str(decide(fused[0], t, conf)), "probs": [float(x) for x in fused[0]],
            "confidence": conf, "weights": {n: float(w[0][i]) for i, n in enumerate(names) if mask[i]},
            "thresholds": {"buy": t.buy, "sell": t.sell, "min_confidence": t.min_confidence},
            "outputs": {n: {"probs": list(o.probs), "expected_return": o.expected_return,
                            "confidence": o.confidence, "model_version": o.model_version,
                            "latency_ms": o.latency_ms} for n, o in outputs.items()},
        }

    # ---- snapshot
    def _error(self, where: str, exc: BaseException | str) -> None:
        msg = exc if isinstance(exc, str) else f"{type(exc).__name__}: {exc}"
        log.warning("%s: %s", where, msg)
        self._errors.append(EngineError(int(time.time() * 1000), where, msg))

    def _publish(self) -> None:
        orch, ex, prov = self._orch, self._executor, self._provider
        osnap = orch.snapshot() if orch is not None else None
        candles: dict[str, pd.DataFrame] = {}
        if prov is not None:
            for tf in prov.timeframes:
                candles[tf] = pd.DataFrame(prov.arrays(self.symbol, tf, SNAPSHOT_BARS))
        errors = list(self._errors)
        if osnap is not None:
            errors += [EngineError(t, w, m) for t, w, m in osnap.errors]
            errors.sort(key=lambda e: e.ts_ms)
        last_err = {e.where.split(":", 1)[1]: e.message for e in errors if e.where.startswith("expert:")}
        enabled = orch.enabled if orch is not None else {n: getattr(self, "_pending_enabled", {}).get(n, True)
                                                          for n in self.experts}
        tr = self.trainer
        trainers = dict(tr.status()) if tr is not None else {}
        trainable = set(self.trainable()) if self.training else set()
        experts = {n: ExpertState(name=n, enabled=bool(enabled.get(n, True)),
                                  training=bool(trainers[n].running) if n in trainers else False,
                                  version=str(getattr(e, "version", "?")), trained=self.trained.get(n, False),
                                  input_kind=getattr(e, "input_kind", "features"), last_error=last_err.get(n),
                                  trainable=n in trainable,
                                  can_rollback=bool(tr is not None and n in trainable and tr.has_history(n)))
                   for n, e in self.experts.items()}
        for n, msg in self._expert_errors.items():
            experts[n] = ExpertState(n, False, False, "unavailable", False, "?", msg)
        positions: tuple[Position, ...] = ()
        kill = KillSwitchState()
        orders: tuple[Order, ...] = ()
        if ex is not None:
            s = ex.snapshot()
            if s.position:
                positions = (Position(self.symbol, s.position, s.avg_price, s.realised_pnl, s.unrealised_pnl),)
            kill = KillSwitchState(active=s.kill_switch, reason="daily loss limit" if s.kill_switch else "",
                                   since_ms=s.ts if s.kill_switch else None)
            orders = tuple(ex.paper.fetch_open_orders(self.symbol))
        eq = np.array(self._equity, dtype=np.float64).reshape(-1, 3)
        peak = np.maximum.accumulate(eq[:, 1]) if len(eq) else eq[:, 1]
        equity = pd.DataFrame({"ts": eq[:, 0].astype(np.int64), "equity": eq[:, 1], "cash": eq[:, 2],
                               "drawdown": eq[:, 1] / peak - 1.0 if len(eq) else eq[:, 1]})
        versions = {"app": "0.1.0", "gate": str(getattr(self.gate, "version", "?")),
                    **{n: e.version for n, e in experts.items()}}
        snap = EngineSnapshot(
            ts_ms=int(time.time() * 1000), mode=self.mode, running=self._running, streaming=self._streaming,
            symbol=self.symbol, timeframe=self.timeframe, candles=MappingProxyType(candles),
            decision=osnap.decision if osnap is not None else None,
            recent_decisions=tuple(self._decisions),
            expert_outputs=osnap.outputs if osnap is not None else _EMPTY,
            gate_weights=osnap.weights if osnap is not None else _EMPTY,
            thresholds=orch.thresholds if orch is not None else getattr(self, "_pending_thresholds",
                                                                       self._cfg_thresholds()),
            kronos=self._kronos_summary(osnap), positions=positions, open_orders=orders,
            trades=tuple(self._trades), equity=equity, kill_switch=kill,
            sources=MappingProxyType(dict(prov.status())) if prov is not None else _EMPTY,
            inference_latency_ms=osnap.latency_ms if osnap is not None else _EMPTY,
            errors=tuple(errors[-KEEP_ERRORS:]), experts=MappingProxyType(experts),
            versions=MappingProxyType(versions), training_enabled=self.training,
            trainers=MappingProxyType(trainers), swaps=tuple(self._swaps),
            live_metrics=_by_expert(self.live_outcomes.metrics() if self.live_outcomes is not None else {}),
            stored_metrics=_by_expert(self.outcomes.metrics() if self.outcomes is not None else {}))
        with self._lock:
            self._snap = snap

    def _kronos_summary(self, osnap: Any) -> KronosSummary | None:
        """From the freshest Kronos output: its extras hold log-return quantiles AT the horizon (no
        per-step paths are kept), so each band runs from the known close to its horizon quantile."""
        if osnap is None:
            return None
        o = next((x for x in osnap.outputs.values()
                  if getattr(self.experts.get(x.expert), "input_kind", "") == "candles"), None)
        if o is None or not o.extras.get("valid", 0):
            return None
        base = self._provider.arrays(self.symbol, self.timeframe)
        idx = np.searchsorted(base["ts"], o.ts)
        if idx >= len(base["ts"]) or base["ts"][idx] != o.ts:
            return None
        close = float(base["close"][idx])
        # two points per band: the known close the forecast starts from, and the quantile at the horizon
        fut = np.array([o.ts, o.ts + o.horizon * timeframe_ms(self.timeframe)], dtype=np.int64)
        bands = {k: np.array([close, close * math.exp(float(o.extras[k]))])
                 for k in ("q10", "q25", "q50", "q75", "q90") if k in o.extras and o.extras[k] == o.extras[k]}
        return KronosSummary(ts=o.ts, model_version=o.model_version, horizon=o.horizon,
                             samples=int(getattr(getattr(self.experts.get(o.expert), "params", None), "samples", 0)),
                             p_up=float(o.probs[2]), expected_return=float(o.expected_return), future_ts=fut,
                             median=bands.get("q50", np.array([close, close])), bands=MappingProxyType(bands),
                             latency_ms=float(o.latency_ms), finished_ms=int(time.time() * 1000))


def _by_expert(metrics: Mapping[tuple[str, int], Any]) -> Mapping[str, Any]:
    """{(expert, horizon): RollingMetrics} -> {expert: the metrics of its horizon with most outcomes}
    (an expert predicts at one horizon; "moe" at the smallest of its experts')."""
    out: dict[str, Any] = {}
    for (expert, _h), m in metrics.items():
        if expert not in out or m.n > out[expert].n:
            out[expert] = m
    return MappingProxyType(out)
