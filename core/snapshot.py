"""The engine's snapshot: everything the UI and the API read, frozen at one instant.

The engine thread gathers its state into ``SnapshotParts`` and ``build_snapshot`` (pure) turns it into
an immutable ``EngineSnapshot`` whose reference readers swap under a lock. web/ reads only these
dataclasses; it never touches the engine's mutable objects.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import numpy as np
import pandas as pd

from core.data.source_base import SourceStatus
from core.market.calendar import Calendar
from core.outcomes import RollingMetrics
from core.types import Decision, ExpertOutput, Fill, Order, Position, Thresholds, TrainerStatus, timeframe_ms

_EMPTY: Mapping[str, Any] = MappingProxyType({})
BANDS = ("q10", "q25", "q50", "q75", "q90")
APP_VERSION = "0.1.0"


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
    finished_ms: int = 0  # wall clock when the snapshot summarised it


@dataclass(frozen=True, slots=True)
class ExpertState:
    """What the Models page shows per expert."""

    name: str
    enabled: bool
    training: bool
    version: str  # "untrained" when no checkpoint was loaded
    trained: bool
    input_kind: str  # "features" | "candles" ("unknown" for an expert that could not be built)
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
class MarketStatus:
    """Where the active symbol trades and whether its market is open at the snapshot's clock (live: the
    wall clock; replay: the close of the newest replayed bar)."""

    exchange: str = ""
    kind: str = "crypto"  # "crypto" | "stock"
    session: str = "24x7"  # "rth" | "extended" | "24x7"
    calendar: str = "24x7"  # "XNYS" | "24x7"
    tz: str = "UTC"
    is_open: bool = True
    clock_ms: int | None = None
    session_open_ms: int | None = None  # the session in progress (None while closed / 24x7)
    session_close_ms: int | None = None
    next_open_ms: int | None = None  # while closed


def market_status(exchange: str, kind: str, cal: Calendar | None, clock_ms: int | None) -> MarketStatus:
    """The MarketStatus of a market at ``clock_ms`` (pure)."""
    if cal is None or cal.always_open:
        return MarketStatus(exchange=exchange, kind=kind, clock_ms=clock_ms)
    if clock_ms is None:
        return MarketStatus(exchange, kind, cal.mode, cal.name, cal.tz, False)
    cur = cal.session_at(clock_ms)
    if cur is not None:
        return MarketStatus(exchange, kind, cal.mode, cal.name, cal.tz, True, clock_ms, cur[0], cur[1])
    return MarketStatus(exchange, kind, cal.mode, cal.name, cal.tz, False, clock_ms,
                        next_open_ms=cal.next_open(clock_ms))


@dataclass(frozen=True, slots=True)
class TradingView:
    """The account the engine trades and its agreement with the exchange (exchange accounts)."""

    mode: str = "paper"  # paper | testnet | live | replay
    broker: str = "paper"  # paper | ccxt | alpaca
    account: str = ""  # the ledger account, e.g. testnet:BTC/USDT
    unresolved_intents: int = 0  # orders the exchange has not confirmed yet (new orders wait)
    stale_bars: int = 0  # backfilled bars recorded but not traded (execution.max_bar_age_s)
    halted: str = ""  # "reconcile": orders held until acknowledged (reset the kill switch)
    reconcile_ok: bool | None = None  # None: not compared yet (paper accounts never are)
    reconcile_ts_ms: int | None = None
    reconcile_summary: str = ""
    differences: tuple[str, ...] = ()
    protection: str = "off"  # stop-loss / take-profit: exchange (resting orders) | engine | off
    protective_orders: int = 0  # protective legs resting on the exchange now


def trading_view(mode: str, broker: str, executor: Any | None) -> TradingView:
    """From the executor (core/execution/executor.Executor) when one runs."""
    if executor is None:
        return TradingView(mode, broker)
    s = executor.snapshot()
    r = s.reconcile
    return TradingView(mode, broker, executor.account, s.unresolved, s.stale_bars, s.halt_reason,
                       None if r is None or r.error else r.ok, None if r is None else r.ts_ms,
                       "" if r is None else r.summary(), tuple(d.detail for d in r.differences) if r else (),
                       s.protection, s.protective_orders)


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
    sources: Mapping[str, SourceStatus]  # {source name: status}
    inference_latency_ms: Mapping[str, float]  # per expert + "total" for the last decision
    errors: tuple[EngineError, ...]  # newest last, bounded
    experts: Mapping[str, ExpertState]
    versions: Mapping[str, str]  # {"app": ..., expert name: model version, "gate": ...}
    # live training: trainer status per trainable expert, recent swaps, and rolling outcome metrics
    # per expert ("moe" = the fused decision) - in memory since the stream started (live_metrics) and
    # from the stored outcomes table (stored_metrics)
    training_enabled: bool = False
    trainers: Mapping[str, TrainerStatus] = field(default_factory=lambda: _EMPTY)
    swaps: tuple[SwapEvent, ...] = ()  # newest last, bounded
    live_metrics: Mapping[str, RollingMetrics] = field(default_factory=lambda: _EMPTY)
    stored_metrics: Mapping[str, RollingMetrics] = field(default_factory=lambda: _EMPTY)
    market: MarketStatus = field(default_factory=MarketStatus)  # venue, session, open / next open
    # first run: where the candles come from ("replay of bundled sample", ...), the enabled experts still
    # untrained, how many decisions were shown but not traded because of them, and offline training
    source_label: str = ""
    untrained: tuple[str, ...] = ()
    allow_untrained: bool = False
    not_traded: int = 0
    offline_training: Mapping[str, Any] = field(default_factory=lambda: _EMPTY)
    trading: TradingView = field(default_factory=TradingView)  # the account traded and its reconciliation

    @staticmethod
    def empty(symbol: str = "", timeframe: str = "", mode: str = "paper",
              thresholds: Thresholds | None = None) -> EngineSnapshot:
        """The snapshot before the engine has seen any candle."""
        return EngineSnapshot(
            ts_ms=int(time.time() * 1000), mode=mode, running=False, streaming=False, symbol=symbol,
            timeframe=timeframe, candles=_EMPTY, decision=None, recent_decisions=(), expert_outputs=_EMPTY,
            gate_weights=_EMPTY, thresholds=thresholds or Thresholds(), kronos=None, positions=(),
            open_orders=(), trades=(), equity=equity_frame(()), kill_switch=KillSwitchState(),
            sources=_EMPTY, inference_latency_ms=_EMPTY, errors=(), experts=_EMPTY, versions=_EMPTY)


# ---------------------------------------------------------------- assembling a snapshot (pure)


@dataclass(frozen=True, slots=True)
class ExpertInfo:
    """The engine's view of one expert when the snapshot is taken."""

    version: str
    input_kind: str
    trained: bool
    enabled: bool
    trainable: bool = False
    training: bool = False
    can_rollback: bool = False


@dataclass(frozen=True, slots=True)
class ExecutionView:
    """The executor's state for the snapshot (core/execution/executor.ExecutionSnapshot + orders)."""

    position: float
    avg_price: float
    realised_pnl: float
    unrealised_pnl: float
    kill_switch: bool
    ts: int | None
    open_orders: tuple[Order, ...] = ()
    halt_reason: str = ""  # "reconcile": the kill switch holds orders after a difference with the exchange
    halt_detail: str = ""


@dataclass(frozen=True, slots=True)
class SnapshotParts:
    """What the engine thread gathers for one snapshot; ``build_snapshot`` does the rest."""

    ts_ms: int
    mode: str
    running: bool
    streaming: bool
    symbol: str
    timeframe: str
    thresholds: Thresholds
    candles: Mapping[str, pd.DataFrame]
    decision: Decision | None
    decisions: Sequence[Decision]
    outputs: Mapping[str, ExpertOutput]
    weights: Mapping[str, float]
    latency_ms: Mapping[str, float]
    experts: Mapping[str, ExpertInfo]
    unavailable: Mapping[str, str]  # experts that could not be built: name -> error
    gate_version: str
    errors: Sequence[EngineError]  # engine and orchestrator errors, any order
    trades: Sequence[Fill]
    equity: Sequence[tuple[int, float, float]]  # (ts, equity, cash)
    execution: ExecutionView | None
    sources: Mapping[str, SourceStatus]
    training_enabled: bool
    trainers: Mapping[str, TrainerStatus]
    swaps: Sequence[SwapEvent]
    live_metrics: Mapping[tuple[str, int], RollingMetrics]
    stored_metrics: Mapping[tuple[str, int], RollingMetrics]
    keep_errors: int = 100
    market: MarketStatus = field(default_factory=MarketStatus)
    calendar: Calendar | None = None  # the stream's sessions: forecast bars follow it
    source_label: str = ""
    allow_untrained: bool = False
    not_traded: int = 0
    offline_training: Mapping[str, Any] = field(default_factory=dict)
    trading: TradingView = field(default_factory=TradingView)


def build_snapshot(p: SnapshotParts) -> EngineSnapshot:
    """The immutable snapshot of ``p`` (pure: no engine object is touched)."""
    errors = sorted(p.errors, key=lambda e: e.ts_ms)
    last_err = {e.where.split(":", 1)[1]: e.message for e in errors if e.where.startswith("expert:")}
    experts = {n: ExpertState(name=n, enabled=i.enabled, training=i.training, version=i.version,
                              trained=i.trained, input_kind=i.input_kind, last_error=last_err.get(n),
                              trainable=i.trainable, can_rollback=i.can_rollback)
               for n, i in p.experts.items()}
    for n, msg in p.unavailable.items():
        experts[n] = ExpertState(n, False, False, "unavailable", False, "unknown", msg)  # never built
    positions: tuple[Position, ...] = ()
    kill = KillSwitchState()
    orders: tuple[Order, ...] = ()
    x = p.execution
    if x is not None:
        if x.position:
            positions = (Position(p.symbol, x.position, x.avg_price, x.realised_pnl, x.unrealised_pnl),)
        kill = KillSwitchState(active=x.kill_switch, reason="daily loss limit" if x.kill_switch else "",
                               since_ms=x.ts if x.kill_switch else None)
        if x.halt_reason and not x.kill_switch:
            kill = KillSwitchState(active=True, reason=x.halt_reason, since_ms=x.ts)  # detail: snapshot.trading
        orders = x.open_orders
    versions = {"app": APP_VERSION, "gate": p.gate_version, **{n: e.version for n, e in experts.items()}}
    return EngineSnapshot(
        ts_ms=p.ts_ms, mode=p.mode, running=p.running, streaming=p.streaming, symbol=p.symbol,
        timeframe=p.timeframe, candles=MappingProxyType(dict(p.candles)), decision=p.decision,
        recent_decisions=tuple(p.decisions), expert_outputs=MappingProxyType(dict(p.outputs)),
        gate_weights=MappingProxyType(dict(p.weights)), thresholds=p.thresholds,
        kronos=kronos_summary(p.outputs, p.experts, p.candles.get(p.timeframe), p.timeframe, p.ts_ms,
                              p.calendar),
        positions=positions, open_orders=orders, trades=tuple(p.trades), equity=equity_frame(p.equity),
        kill_switch=kill, sources=MappingProxyType(dict(p.sources)),
        inference_latency_ms=MappingProxyType(dict(p.latency_ms)), errors=tuple(errors[-p.keep_errors:]),
        experts=MappingProxyType(experts), versions=MappingProxyType(versions),
        training_enabled=p.training_enabled, trainers=MappingProxyType(dict(p.trainers)),
        swaps=tuple(p.swaps), live_metrics=by_expert(p.live_metrics), stored_metrics=by_expert(p.stored_metrics),
        market=p.market, source_label=p.source_label,
        untrained=tuple(n for n, i in p.experts.items() if i.enabled and not i.trained),
        allow_untrained=p.allow_untrained, not_traded=p.not_traded,
        offline_training=MappingProxyType(dict(p.offline_training)), trading=p.trading)


def equity_frame(rows: Sequence[tuple[int, float, float]]) -> pd.DataFrame:
    """(ts, equity, cash) rows -> columns ts, equity, cash, drawdown (from the running peak)."""
    eq = np.array(rows, dtype=np.float64).reshape(-1, 3)
    peak = np.maximum.accumulate(eq[:, 1]) if len(eq) else eq[:, 1]
    return pd.DataFrame({"ts": eq[:, 0].astype(np.int64), "equity": eq[:, 1], "cash": eq[:, 2],
                         "drawdown": eq[:, 1] / peak - 1.0 if len(eq) else eq[:, 1]})


def kronos_summary(outputs: Mapping[str, ExpertOutput], experts: Mapping[str, ExpertInfo],
                   base: pd.DataFrame | None, timeframe: str, now_ms: int,
                   calendar: Calendar | None = None) -> KronosSummary | None:
    """From the freshest candle-expert (Kronos) output: its extras hold log-return quantiles AT the
    horizon (no per-step paths are kept), so each band runs from the known close to its quantile. The
    horizon bar follows the market's calendar (a stock's 5 bars after 15:58 end at the next 09:33)."""
    o = next((x for n, x in outputs.items() if n in experts and experts[n].input_kind == "candles"), None)
    if o is None or not o.extras.get("valid", 0) or base is None or not len(base):
        return None
    ts = base["ts"].to_numpy(np.int64)
    idx = int(np.searchsorted(ts, o.ts))
    if idx >= len(ts) or ts[idx] != o.ts:
        return None
    close = float(base["close"].iloc[idx])
    # two points per band: the known close the forecast starts from, and the quantile at the horizon
    end = o.ts + o.horizon * timeframe_ms(timeframe) if calendar is None or calendar.always_open else \
        int(calendar.next_bars(o.ts, o.horizon, timeframe)[-1])
    fut = np.array([o.ts, end], dtype=np.int64)
    bands = {k: np.array([close, close * math.exp(float(o.extras[k]))])
             for k in BANDS if k in o.extras and o.extras[k] == o.extras[k]}
    return KronosSummary(ts=o.ts, model_version=o.model_version, horizon=o.horizon,
                         samples=int(o.extras.get("samples", 0) or 0), p_up=float(o.probs[2]),
                         expected_return=float(o.expected_return), future_ts=fut,
                         median=bands.get("q50", np.array([close, close])), bands=MappingProxyType(bands),
                         latency_ms=float(o.latency_ms), finished_ms=now_ms)


def by_expert(metrics: Mapping[tuple[str, int], RollingMetrics]) -> Mapping[str, RollingMetrics]:
    """{(expert, horizon): RollingMetrics} -> {expert: the metrics of its horizon with most outcomes}
    (an expert predicts at one horizon; "moe" at the smallest of its experts')."""
    out: dict[str, RollingMetrics] = {}
    for (expert, _h), m in metrics.items():
        if expert not in out or m.n > out[expert].n:
            out[expert] = m
    return MappingProxyType(out)
