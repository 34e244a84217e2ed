"""The live / paper / replay engine the dashboard drives: lifecycle and the candle path.

The engine thread owns every mutable object (provider, orchestrator, executor). Readers (Dash/Flask
threads) only ever see an immutable ``EngineSnapshot`` (core/snapshot.py) whose reference is swapped
under a lock; they send commands (core/engine/commands.py) through a queue that the engine thread
drains between candles, so no UI click can interleave with a decision half-way.

Order of work for one closed candle (``_on_candle``): cut the provider's caches at the candle's ts ->
the orchestrator decides (trainers frozen meanwhile) -> outcomes and online training see the decision
-> the executor books the bar -> a new snapshot is published.

The experts, the gate, the checkpoint registry and the live-training factory come from the composition
root (compose.py) as ``EngineParts``; this module never builds a model.
"""

from __future__ import annotations

import logging
import math
import queue
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from core.config import AppConfig, ModelsConfig, is_ticker
from core.data.provider import DataProvider
from core.data.store import MarketStore
from core.engine.alerting import snapshot_alerts
from core.engine.commands import EngineCommands
from core.engine.offline import OfflineTrainer
from core.engine.training import TrainingFactory, TrainingHook
from core.execution import kernel as K
from core.execution.executor import Executor
from core.execution.ledger import Ledger
from core.features import FeatureBuilder
from core.labels import dead_zone
from core.market import Market, market_for, session_flat
from core.orchestrator import Orchestrator
from core.snapshot import (
    EngineError,
    EngineSnapshot,
    ExecutionView,
    ExpertInfo,
    MarketStatus,
    SnapshotParts,
    build_snapshot,
    market_status,
    trading_view,
)
from core.types import (
    Broker,
    CandleEvent,
    CheckpointCatalog,
    Decision,
    ExpertLike,
    Fill,
    Gate,
    SeriesKey,
    Thresholds,
    timeframe_ms,
)

log = logging.getLogger(__name__)

KEEP_DECISIONS = 200
KEEP_TRADES = 500
KEEP_EQUITY = 20_000
KEEP_ERRORS = 100
IDLE_POLL_S = 1.0  # trainer housekeeping when no candle arrives (swaps, restarts, status)
SNAPSHOT_BARS = 500  # candles per timeframe in a snapshot


@dataclass(frozen=True, slots=True)
class ReplayConfig:
    """Replay stored candles instead of live data (the composition root imports a file first)."""

    speed: float | None = 60.0  # N x real time; None = as fast as possible
    start_ms: int | None = None
    end_ms: int | None = None


@dataclass(frozen=True)
class Trading:
    """The account the engine trades (core/execution/modes.py), built by the composition root: the
    mode and broker name, the broker of a symbol (None: the in-process paper account) and where
    trading events go (alerts)."""

    mode: str = "paper"  # paper | testnet | live
    broker: str = "paper"  # paper | ccxt | alpaca
    make_broker: Callable[[str], Broker | None] | None = None
    notify: Callable[[str, dict[str, Any]], None] | None = None


@dataclass
class EngineParts:
    """What the composition root (compose.py) builds for the engine, typed by core/types' protocols."""

    builder: FeatureBuilder
    experts: dict[str, ExpertLike]  # the enabled experts that could be built, models.yml order
    trained: dict[str, bool]  # a registered (or resumed online) checkpoint was loaded
    gate: Gate
    registry: CheckpointCatalog | None
    make_training: TrainingFactory | None = None  # None: no online training in this engine
    unavailable: dict[str, str] = field(default_factory=dict)  # experts that could not be built
    resumed: set[str] = field(default_factory=set)  # experts that resumed online-trained weights
    problems: list[tuple[str, str]] = field(default_factory=list)  # (where, message) met while building
    offline: OfflineTrainer | None = None  # Train now (offline training in a background process)
    trading: Trading = field(default_factory=Trading)  # paper unless compose built an exchange broker


class Engine(EngineCommands):
    """Owns provider, orchestrator and executor; one engine thread applies candles and commands in
    arrival order and publishes an immutable EngineSnapshot after each."""

    def __init__(self, cfg: AppConfig, models: ModelsConfig, parts: EngineParts, *, store: MarketStore,
                 symbol: str, timeframe: str, replay: ReplayConfig | None = None, training: bool = True,
                 owns_store: bool = False) -> None:
        self.cfg = cfg
        self.models = models
        self.replay = replay
        # the TRUE mode: execution.live alone never makes it live (compose.py decides, core/execution/modes.py)
        self.trading = parts.trading
        self.mode = "replay" if replay is not None else parts.trading.mode
        self.broker_name = "paper" if replay is not None else parts.trading.broker
        self._alert_seen: dict[str, Any] = {}
        self.store = store
        self._owns_store = owns_store
        self.symbol = symbol
        self.market: Market = market_for(cfg, symbol, None if is_ticker(symbol) else cfg.data.exchange)
        self.exchange = self.market.exchange  # a stock's venue (alpaca), else data.exchange
        self.timeframe = timeframe
        self.builder = parts.builder
        self.experts = parts.experts
        self.trained = parts.trained
        self.gate = parts.gate
        self.registry = parts.registry
        self._unavailable = dict(parts.unavailable)
        self.dead_zone = dead_zone(cfg.execution, models.labels)
        self.offline = parts.offline
        self.source_label = ""  # shown on the Live page, e.g. "replay of bundled sample"
        # online training: main_dashboard --no-training or config training.enabled=false -> no trainer starts
        self.training = bool(training) and bool(cfg.training.enabled) and parts.make_training is not None
        self.hook = TrainingHook(self.experts, self.trained, store, parts.make_training, enabled=self.training,
                                 replay=replay is not None, models_dir=cfg.resolve(cfg.training.models_dir),
                                 resumed=parts.resumed, default_horizon=cfg.orchestrator.decision_horizon,
                                 on_error=self._error)
        # settings commands leave for the next pipeline (applied at once when one is running)
        o = cfg.orchestrator
        self._thresholds = Thresholds(o.buy_threshold, o.sell_threshold, o.min_confidence)
        # an expert built without weights (Kronos "not available") stays off until Train now brings them
        self._enabled: dict[str, bool] = {n: n not in self._unavailable for n in self.experts}
        self._q: queue.Queue[tuple[str, Any]] = queue.Queue()
        self._lock = threading.Lock()
        self._errors: deque[EngineError] = deque(maxlen=KEEP_ERRORS)
        self._decisions: deque[Decision] = deque(maxlen=KEEP_DECISIONS)
        self._trades: deque[Fill] = deque(maxlen=KEEP_TRADES)
        self._equity: deque[tuple[int, float, float]] = deque(maxlen=KEEP_EQUITY)
        self._thread: threading.Thread | None = None
        self._running = False
        self._streaming = False
        self._provider: DataProvider | None = None
        self._orch: Orchestrator | None = None
        self._executor: Executor | None = None
        self._handlers = self.command_table()
        for where, msg in parts.problems:
            self._error(where, msg)
        self._snap = EngineSnapshot.empty(self.symbol, self.timeframe, self.mode, self._thresholds)
        self._publish()  # the experts (and whether they can train) are readable before start()

    def trainable(self) -> list[str]:
        return self.hook.trainable()

    # ---- the pipeline of one stream
    def _build_pipeline(self) -> None:
        cfg = self.cfg
        tfs = list(dict.fromkeys([*cfg.data.timeframes, *self.builder.timeframes]))
        # the features need their whole warm-up in the cache (EMAs, normalisation windows)
        cache = max(cfg.data.cache_bars, self.builder.min_history + 1, SNAPSHOT_BARS)
        # the stream's market: its venue and sessions (stocks: NYSE; crypto: 24x7, calendar None)
        self.market = market_for(cfg, self.symbol, None if is_ticker(self.symbol) else cfg.data.exchange)
        self.exchange = self.market.exchange
        cal = None if self.market.always_open else self.market.calendar
        self.builder.calendar = cal  # features, labels and forecasts of this stream count session bars
        prov = DataProvider(self.store, self.timeframe, tfs, cache_bars=cache, exchange=self.exchange,
                            max_future_ms=cfg.data.max_future_ms, calendar=cal)
        if self._executor is not None and self._executor.ledger is not None:
            self._executor.ledger.close()  # a stream restart: the previous account's intent journal is let go
        # replays start from a fresh paper account each time; paper/live trading persists its ledger
        ledger = None if self.mode == "replay" else Ledger(self.store, account=f"{self.mode}:{self.symbol}",
                                                           initial_cash=cfg.execution.initial_cash,
                                                           symbol=self.symbol)
        live = self.mode != "replay"
        make = self.trading.make_broker
        broker = make(self.symbol) if live and make is not None else None
        ex_cfg = cfg.execution
        executor = Executor(ex_cfg, cfg.risk, self.symbol, self.timeframe, ledger=ledger, broker=broker,
                            session_flat=session_flat(cal, self.timeframe, ex_cfg.fill_at, ex_cfg.flat_at_session_end),
                            bars_per_year=self._bars_per_year(), max_bar_age_s=ex_cfg.max_bar_age_s if live else 0.0,
                            on_event=self.trading.notify if live else None,
                            reconcile_every_bars=ex_cfg.reconcile_every_bars if broker is not None else 0,
                            reconcile_tolerance=ex_cfg.reconcile_tolerance)
        if self._orch is not None:
            self._orch.close()
        orch = Orchestrator(self.experts, self.gate, self.builder, self._thresholds, self.store, executor,
                            self.symbol, self.timeframe, horizon=cfg.orchestrator.decision_horizon,
                            dead_zone=self.dead_zone, slow_every_bars=cfg.orchestrator.kronos_every_bars,
                            slow_async=True, allow_short=cfg.execution.allow_short, registry=self.registry,
                            # live/paper: decision ids from (account, timeframe, bar ts) only, the same after a
                            # restart; replays: a run id of their own
                            run_id=f"replay-{uuid.uuid4().hex[:8]}" if not live else f"{self.mode}:{self.symbol}:{self.timeframe}",
                            enabled=self._enabled,
                            sizer=self._sizer(prov, executor))
        # tagged with their provider: after a stream restart, candles still queued from the old one
        # (same symbol included) must not reach the new pipeline
        def enqueue(ev: CandleEvent, p: DataProvider = prov) -> None:
            self._q.put(("candle", (p, ev)))

        prov.subscribe(enqueue, symbols=[self.symbol], timeframes=[self.timeframe])
        if broker is not None:  # exchange accounts: stops and the kill switch also act on intrabar prices
            def tick(ev: CandleEvent, p: DataProvider = prov) -> None:
                if not ev.closed:
                    self._q.put(("tick", (p, ev)))

            prov.subscribe(tick, symbols=[self.symbol], timeframes=[self.timeframe], in_progress=True)
        key = SeriesKey(self.exchange, self.symbol, self.timeframe)
        if self.replay is not None:
            from core.data.replay import ReplaySource

            if not len(self.store.last_candles(key, 1)):
                raise ValueError(f"nothing to replay: the store has no {self.exchange} {self.symbol} "
                                 f"{self.timeframe} candles")
            prov.add_source(ReplaySource(self.store, [key], self.replay.start_ms, self.replay.end_ms,
                                         self.replay.speed, calendar=cal))
        else:
            from core.data.sources import source_for

            prov.warm(self.symbol)
            prov.add_source(source_for(cfg, self.market, self.timeframe, websocket=cfg.data.websocket))
        self._provider, self._orch, self._executor = prov, orch, executor
        self.hook.attach(orch, key, self.timeframe, self.dead_zone)
        self._decisions.clear()
        self._trades.clear()
        self._equity.clear()

    def _sizer(self, prov: DataProvider, executor: Executor) -> Callable[[Any], float]:
        """Decision.target_position for a BUY: the executor's RiskManager sizing (volatility target
        from the same past-only realised volatility the kernel uses)."""
        risk = self.cfg.risk

        def size(_batch: Any) -> float:
            vol = math.nan
            if risk.sizing == "volatility_target":
                c = prov.arrays(self.symbol, self.timeframe, risk.vol_window + 1)["close"]
                if len(c) > risk.vol_window:
                    vol = float(K.realised_vol(np.asarray(c, dtype=np.float64), risk.vol_window,
                                               self._bars_per_year())[-1])
            return float(executor.risk.size(1.0, vol))

        return size

    def _bars_per_year(self) -> float:
        """The venue's bars per year: session bars for stocks, 365 days of bars for crypto."""
        if self.market.always_open:
            return K.bars_per_year(self.timeframe)
        return self.market.calendar.bars_per_year(self.timeframe)

    def _restart(self, symbol: str) -> None:
        if self._provider is not None:
            self._provider.stop()
        self.symbol = symbol
        if self._running:
            self._build_pipeline()
            assert self._provider is not None
            self._provider.start()
            self._streaming = True

    # ---- lifecycle
    def start(self) -> None:
        if self._running:
            return
        self._running = True
        self._build_pipeline()
        self._thread = threading.Thread(target=self._loop, name="engine", daemon=True)
        self._thread.start()
        assert self._provider is not None
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
        self.hook.close()
        if self.offline is not None:
            self.offline.cancel()
        if self._orch is not None:
            self._orch.close()  # flushes the audit trail
            self.hook.update_outcomes(self._orch)
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

    def snapshot(self) -> EngineSnapshot:
        return self._snap

    # ---- the engine thread
    def _loop(self) -> None:
        while True:
            try:
                kind, arg = self._q.get(timeout=IDLE_POLL_S)
            except queue.Empty:  # no candle for a while: trainer housekeeping between decisions
                try:
                    if self.hook.poll() | self._poll_offline():
                        self._publish()
                except Exception as exc:
                    self._error("training", exc)
                continue
            try:
                if kind == "stop":
                    return
                self._dispatch(kind, arg)
            except Exception as exc:  # the engine thread never dies on one bad item
                self._error(f"engine:{kind}", exc)
                self._publish()
            finally:
                self._q.task_done()

    def _dispatch(self, kind: str, arg: Any) -> None:
        if kind == "candle":
            prov, ev = arg
            if prov is self._provider:
                self._on_candle(ev)
            return
        if kind == "tick":
            prov, ev = arg
            if prov is self._provider and self._executor is not None and ev.key.symbol == self.symbol:
                # the update's price now, keyed to its (open) bar: exits the engine enforces and the kill
                # switch act before the close
                fills = self._executor.on_tick(float(ev.close), int(time.time() * 1000), int(ev.ts))
                if fills:
                    self._trades.extend(fills)
                    self._publish()
            return
        self._handlers[kind](arg)

    def _on_candle(self, ev: CandleEvent) -> None:
        orch, executor = self._orch, self._executor
        if orch is None or executor is None or ev.key.symbol != self.symbol:
            return  # a late event of a stream that was switched away from
        with self.hook.deciding():
            frames = self._frames(ev.ts)
            try:
                d = orch.on_candle(ev, frames)
            except Exception as exc:  # a decision failed: no trade this bar, the executor still books it
                self._error("orchestrator", exc)
                d = None
        if d is not None:
            self._decisions.append(d)
        self.hook.after_decision(ev, d, orch)
        try:
            self._poll_offline()
        except Exception as exc:
            self._error("train-now", exc)
        fills = executor.on_candle(ev)
        self._trades.extend(fills)
        s = executor.snapshot()
        self._equity.append((int(ev.ts), float(s.equity), float(s.cash)))
        self._publish()

    def _frames(self, ts: int) -> dict[str, Any]:
        """Provider caches cut at ``ts``: the engine thread may lag behind the source, and a decision
        at ts must never see later bars (higher timeframes: build_one ignores unclosed rows). The base
        timeframe is a DataFrame (candle experts read it); higher ones stay the provider's arrays,
        which build_one reads directly, so no DataFrame is built for them on the decision path."""
        assert self._provider is not None
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

    def _poll_offline(self) -> bool:
        """Train now: adopt a finished job's checkpoints (already loaded into the running experts by
        the job; here they are marked trained). True when something changed."""
        job = self.offline
        if job is None:
            return False
        was = job.running
        adopted = job.poll()
        for name in adopted:
            if name in self.trained:
                self.trained[name] = True
            if name in self._unavailable and name in self.experts:  # e.g. Kronos: now it has weights
                del self._unavailable[name]
                self._apply_enabled((name, True))
        st = job.status()
        if st.get("state") == "failed" and was:
            self._error("train-now", str(st.get("error")))
        return bool(adopted) or job.running or was

    def train_cutoff_ms(self) -> int | None:
        """Exclusive end of what Train now may learn from: just after the engine's newest bar in a
        replay (its future is not learnt), None (everything stored) live."""
        if self.replay is None:
            return None
        prov = self._provider
        last = prov.arrays(self.symbol, self.timeframe, 1)["ts"] if prov is not None else np.empty(0)
        if len(last):
            return int(last[-1]) + 1
        return self.replay.start_ms if self.replay.start_ms is not None else 0  # nothing seen: nothing

    def _market_status(self, prov: DataProvider | None) -> MarketStatus:
        """Open / closed at the engine's clock: the wall clock live, the newest replayed bar's close in a
        replay (so a replay passes through its own nights)."""
        clock: int | None = int(time.time() * 1000)
        if self.replay is not None:
            last = prov.arrays(self.symbol, self.timeframe, 1)["ts"] if prov is not None else np.empty(0)
            clock = int(last[-1]) + timeframe_ms(self.timeframe) if len(last) else None
        return market_status(self.exchange, self.market.kind, self.market.calendar, clock)

    def market_closed(self) -> bool:
        """The market of the stream is closed now (the engine then makes no decision: no bar arrives)."""
        return not self._snap.market.is_open

    # ---- errors and the snapshot
    def _error(self, where: str, exc: BaseException | str) -> None:
        msg = exc if isinstance(exc, str) else f"{type(exc).__name__}: {exc}"
        log.warning("%s: %s", where, msg)
        self._errors.append(EngineError(int(time.time() * 1000), where, msg))

    def _publish(self) -> None:
        orch, ex, prov = self._orch, self._executor, self._provider
        osnap = orch.snapshot() if orch is not None else None
        candles = ({tf: pd.DataFrame(prov.arrays(self.symbol, tf, SNAPSHOT_BARS)) for tf in prov.timeframes}
                   if prov is not None else {})
        errors = list(self._errors)
        if osnap is not None:
            errors += [EngineError(t, w, m) for t, w, m in osnap.errors]
        trainers = self.hook.status()
        trainable = set(self.trainable()) if self.training else set()
        enabled = orch.enabled if orch is not None else self._enabled
        experts = {n: ExpertInfo(version=str(e.version), input_kind=e.input_kind, trained=self.trained.get(n, False),
                                 enabled=bool(enabled.get(n, True)), trainable=n in trainable,
                                 training=bool(trainers[n].running) if n in trainers else False,
                                 can_rollback=n in trainable and self.hook.has_history(n))
                   for n, e in self.experts.items()}
        execution = None
        trading = trading_view(self.mode, self.broker_name, None)
        if ex is not None:
            s = ex.snapshot()
            execution = ExecutionView(s.position, s.avg_price, s.realised_pnl, s.unrealised_pnl, s.kill_switch,
                                      s.ts, tuple(ex.open_orders()),
                                      halt_reason=s.halt_reason,
                                      halt_detail=s.reconcile.summary() if s.reconcile is not None else "")
        trading = trading_view(self.mode, self.broker_name, ex)
        live, stored = self.hook.metrics()
        snap = build_snapshot(SnapshotParts(
            ts_ms=int(time.time() * 1000), mode=self.mode, running=self._running, streaming=self._streaming,
            symbol=self.symbol, timeframe=self.timeframe,
            thresholds=orch.thresholds if orch is not None else self._thresholds, candles=candles,
            decision=osnap.decision if osnap is not None else None, decisions=tuple(self._decisions),
            outputs=osnap.outputs if osnap is not None else {}, weights=osnap.weights if osnap is not None else {},
            latency_ms=osnap.latency_ms if osnap is not None else {}, experts=experts,
            unavailable=self._unavailable, gate_version=str(self.gate.version), errors=errors,
            trades=tuple(self._trades), equity=tuple(self._equity), execution=execution,
            sources=prov.status() if prov is not None else {}, training_enabled=self.training,
            trainers=trainers, swaps=tuple(self.hook.swaps), live_metrics=live, stored_metrics=stored,
            keep_errors=KEEP_ERRORS, market=self._market_status(prov), calendar=self.builder.calendar,
            source_label=self.source_label, allow_untrained=self.cfg.execution.allow_untrained,
            not_traded=ex.refused_untrained if ex is not None else 0,
            offline_training=self.offline.status() if self.offline is not None else {},
            trading=trading))
        with self._lock:
            self._snap = snap
        if self.trading.notify is not None and self.mode != "replay":
            self._alert_changes(snap)

    def _alert_changes(self, snap: EngineSnapshot) -> None:
        """Stream lost / restored, promotions, trainer crashes and engine errors since the last snapshot
        (core/engine/alerting.py decides; the notifier delivers off this thread)."""
        notify = self.trading.notify
        assert notify is not None
        for kind, details in snapshot_alerts(snap, self._alert_seen):
            notify(kind, details)
