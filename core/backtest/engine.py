"""The backtester: the live decision code replayed over history, in two modes that must agree.

* event mode drives the SAME Orchestrator and Executor bar by bar: a ReplaySource feeds a DataProvider
  (simulated clock: the candles' own times), each closed candle becomes a Decision, and the paper
  Executor (the execution kernel's per-bar ``step``) trades it.
* fast mode builds every feature sample at once, runs the frozen experts in batches
  (``predict_many``), walks the gate bar by bar with the same ``GateRunner`` (the online Hedge update
  must only see matured outcomes), applies ``decide_codes`` and runs the compiled ``simulate`` loop.

Both modes start the gate from the same state and use the same sizing/kernel params, so decisions,
fills and equity are identical (tests/test_backtest_modes.py). Slow experts (Kronos) forecast every
``kronos_every`` bars at bar times ``ts // tf % k == 0`` in both modes, through a DuckDB cache.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import math
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd

from core.audit import frames_from_arrays, write_frames
from core.backtest.forecast_cache import ForecastCache
from core.config import AppConfig, ExecutionConfig, FeaturesConfig, ModelsConfig, RiskConfig
from core.conformal import BandTracker
from core.data.store import MarketStore
from core.execution import kernel as K
from core.labels import dead_zone
from core.market import Calendar, market_for, session_candles, session_flat
from core.orchestrator import (
    BUY,
    CODE_TO_ACTION,
    HOLD,
    SELL,
    GateRunner,
    Orchestrator,
    decide_codes,
    decision_weights,
    explain,
)
from core.types import (
    CANDLE_COLUMNS,
    Decision,
    ExpertOutput,
    FeatureBatch,
    SeriesKey,
    Thresholds,
    timeframe_ms,
)

log = logging.getLogger(__name__)

CHUNK = 2048  # samples per predict_many call (bounds memory)

Progress = Callable[[str, int, int], None]  # (stage, done, total)


@dataclass(frozen=True)
class BacktestSpec:
    exchange: str
    symbol: str
    timeframe: str
    thresholds: Thresholds = field(default_factory=Thresholds)
    mode: str = "fast"  # "fast" | "event"
    horizon: int = 5  # bars; matured outcomes feed the gate after this many bars
    dead_zone: float = 0.002  # |log return| below this counts as "flat"
    kronos_every: int = 15
    initial_cash: float = 10_000.0
    sizing: str = "fixed_fraction"
    fraction: float = 0.5
    max_position_fraction: float = 1.0
    allow_short: bool = False
    vol_window: int = 60
    bars_per_year: float = 525_600.0  # the venue's: 1m crypto 525,600; 1m NYSE RTH ~ 97,750 (session bars)
    calendar: Calendar | None = None  # the market's sessions (stocks); None = 24x7
    flat_at_session_end: bool = False  # execution.flat_at_session_end (session markets only)

    def __post_init__(self) -> None:
        if self.mode not in ("fast", "event"):
            raise ValueError(f"mode={self.mode!r}: allowed fast, event")


@dataclass
class Components:
    """What a run needs besides candles; ``info`` says per expert whether it is trained."""

    experts: dict[str, Any]
    gate: Any
    builder: Any
    info: dict[str, dict[str, Any]]
    cache: ForecastCache | None = None


@dataclass
class BacktestResult:
    run_id: str
    spec: BacktestSpec
    candles: pd.DataFrame  # the replayed bars
    names: list[str]
    decided: np.ndarray  # bool [N]: a decision was made at this bar (after warm-up)
    codes: np.ndarray  # int8 [N] BUY 1 / SELL -1 / HOLD 0
    fused: np.ndarray  # [N, 3]
    weights: np.ndarray  # [N, E]
    confidence: np.ndarray  # [N]
    signal: np.ndarray  # [N] what the kernel got (NaN = hold)
    equity: np.ndarray  # [N]
    position: np.ndarray  # [N] base units
    fills: pd.DataFrame
    state: np.ndarray  # final kernel state
    decisions: list[Decision]
    info: dict[str, dict[str, Any]]
    errors: list[tuple[int, str, str]] = field(default_factory=list)
    elapsed_s: float = 0.0
    stats: dict[str, Any] = field(default_factory=dict)
    expert_probs: np.ndarray | None = None  # [N, E, 3] each expert's probabilities (fast mode; 1/3 when off)
    expert_mask: np.ndarray | None = None  # bool [N, E] the expert answered at this bar (fast mode)


# ---------------------------------------------------------------- shared helpers


def kernel_params(spec: BacktestSpec, execution: ExecutionConfig, risk: RiskConfig) -> np.ndarray:
    """Kernel params from the (already overridden) config sections; the spec must agree with them."""
    params = K.params_from_config(execution, risk)
    if bool(params[K.P_ALLOW_SHORT]) != spec.allow_short:
        raise ValueError("spec.allow_short disagrees with execution.allow_short")
    return params


def spec_from_config(cfg: AppConfig, models: ModelsConfig, *, exchange: str, symbol: str, timeframe: str,
                     thresholds: Thresholds, mode: str) -> BacktestSpec:
    """Everything a run needs from config.yaml / models.yml in one frozen object."""
    cal = market_for(cfg, symbol, exchange).calendar
    session = None if cal.always_open else cal
    return BacktestSpec(
        exchange=exchange, symbol=symbol, timeframe=timeframe, thresholds=thresholds, mode=mode,
        horizon=cfg.orchestrator.decision_horizon, dead_zone=dead_zone(cfg.execution, models.labels),
        kronos_every=cfg.backtest.kronos_every_bars, initial_cash=cfg.execution.initial_cash,
        sizing=cfg.risk.sizing, fraction=cfg.risk.fraction,
        max_position_fraction=cfg.risk.max_position_fraction, allow_short=cfg.execution.allow_short,
        vol_window=cfg.risk.vol_window,
        bars_per_year=K.bars_per_year(timeframe) if session is None else session.bars_per_year(timeframe),
        calendar=session, flat_at_session_end=cfg.execution.flat_at_session_end)


class ComponentsFactory(Protocol):
    """Builds a run's experts, gate and feature builder (compose.backtest_components)."""

    def __call__(self, models: ModelsConfig, base_timeframe: str, names: list[str] | None, *,
                 store: MarketStore | None = None, models_dir: Path | None = None,
                 features: FeaturesConfig | None = None, calendar: Calendar | None = None) -> Components: ...


def signal_of(code: int) -> float:
    """Decision -> kernel signal: BUY +1, SELL -1 (flat when shorting is off), HOLD NaN (no order)."""
    return 1.0 if code == BUY else (-1.0 if code == SELL else math.nan)


def nominal_size(spec: BacktestSpec) -> float:
    """Decision.target_position for BUY; the kernel may scale it (volatility target) or refuse it
    (kill switch, cooldown)."""
    return min(spec.fraction, spec.max_position_fraction)


FILL_COLUMNS = ["ts", "side", "amount", "price", "fee", "reason"]
FILL_DTYPES = {"ts": "int64", "side": object, "amount": "float64", "price": "float64", "fee": "float64",
               "reason": object}


def fills_frame(fills: np.ndarray) -> pd.DataFrame:
    """Kernel fill rows -> the ccxt-like columns both modes report."""
    return pd.DataFrame({
        "ts": fills[:, K.F_TS].astype(np.int64),
        "side": np.where(fills[:, K.F_SIDE] > 0, "buy", "sell").astype(object),
        "amount": fills[:, K.F_QTY], "price": fills[:, K.F_PRICE], "fee": fills[:, K.F_FEE],
        "reason": np.array([K.REASONS.get(int(r), "?") for r in fills[:, K.F_REASON]], dtype=object),
    }, columns=FILL_COLUMNS).astype(FILL_DTYPES)


def vol_series(close: np.ndarray, spec: BacktestSpec) -> np.ndarray:
    if spec.sizing != "volatility_target":
        return np.full(close.shape[0], np.nan)
    return K.realised_vol(close, spec.vol_window, spec.bars_per_year)


def check_candles(candles: pd.DataFrame, timeframe: str) -> pd.DataFrame:
    missing = [c for c in CANDLE_COLUMNS if c not in candles.columns]
    if missing:
        raise ValueError(f"backtest candles lack columns {missing}")
    if len(candles) == 0:
        raise ValueError("backtest range holds no candles: import data first (main_backtest.py data import)")
    df = candles[list(CANDLE_COLUMNS)].reset_index(drop=True)
    ts = df["ts"].to_numpy(np.int64)
    if len(ts) > 1 and not (np.diff(ts) > 0).all():
        raise ValueError("backtest candles must have strictly increasing ts")
    if (ts % timeframe_ms(timeframe)).any():
        raise ValueError(f"backtest candles are not aligned to the {timeframe} grid")
    return df


def align_start(candles: pd.DataFrame, timeframes: tuple[str, ...] | list[str],
                calendar: Calendar | None = None) -> pd.DataFrame:
    """Drop leading bars before the first bucket boundary of the longest feature timeframe. A live
    DataProvider never publishes a higher-timeframe bar whose first base bars it did not see (its open
    would be wrong), while resampling history would include it: starting on a boundary makes both
    modes (and live) see the same higher-timeframe bars. Sessions: the first bar that opens a bucket of
    the longest timeframe (a session open for 1d)."""
    longest = max(timeframe_ms(tf) for tf in timeframes)
    ts = candles["ts"].to_numpy(np.int64)
    if calendar is not None and not calendar.always_open:
        first = calendar.buckets(ts, max(timeframes, key=timeframe_ms))[0] == ts
        k = int(np.argmax(first)) if first.any() else len(ts)
    else:
        start = -(-int(ts[0]) // longest) * longest  # first boundary at or after the first bar
        k = int(np.searchsorted(ts, start))
    if k >= len(ts):
        raise ValueError(f"backtest range is shorter than one {max(timeframes, key=timeframe_ms)} bucket "
                         "after aligning to it; widen --from/--to or drop that feature timeframe")
    return candles.iloc[k:].reset_index(drop=True)


# ---------------------------------------------------------------- the backtester


class Backtester:
    def __init__(self, comps: Components, spec: BacktestSpec, execution: ExecutionConfig, risk: RiskConfig, *,
                 store: Any | None = None, run_id: str | None = None,
                 progress: Progress | None = None, keep_decisions: bool = True) -> None:
        self.c = comps
        self.keep_decisions = keep_decisions  # Decision objects in the result (the audit rows are always written)
        self.spec = spec
        # the config sections (overrides already applied): fast mode's kernel params and event mode's
        # Executor are both built from them
        self.execution, self.risk = execution, risk
        self.params = kernel_params(spec, execution, risk)
        self.store = store  # audit rows + forecast cache; None = memory only
        self.run_id = run_id or uuid.uuid4().hex[:12]
        self.progress = progress or (lambda stage, done, total: None)
        self.names = list(comps.experts)
        for ex in comps.experts.values():
            ex.calendar = comps.builder.calendar  # this market's sessions (future bars of forecasts)
        self._gate0 = copy.deepcopy(comps.gate.state_dict())  # both modes start from this
        self._flat = session_flat(spec.calendar, spec.timeframe, execution.fill_at, spec.flat_at_session_end)

    def run(self, candles: pd.DataFrame, mode: str | None = None) -> BacktestResult:
        mode = mode or self.spec.mode
        candles = check_candles(candles, self.spec.timeframe)
        if self.spec.calendar is not None:  # a session market: only its session's bars trade
            candles = session_candles(candles, self.spec.calendar, self.spec.timeframe)
        candles = align_start(candles, self.c.builder.timeframes, self.spec.calendar)
        self.c.gate.load_state_dict(copy.deepcopy(self._gate0))
        t0 = time.perf_counter()
        res = self._fast(candles) if mode == "fast" else self._event(candles)
        res.elapsed_s = time.perf_counter() - t0
        return res

    # ---- fast: batch everything, then one compiled loop
    def _fast(self, candles: pd.DataFrame) -> BacktestResult:
        spec, names, E = self.spec, self.names, len(self.names)
        n = len(candles)
        t_feat = time.perf_counter()
        batch = self.c.builder.build_many(candles, symbol=spec.symbol)
        first = self.c.builder.min_history - 1  # same warm-up rule as the orchestrator
        rows = np.arange(max(first, 0), n)
        sub = batch.take(rows)
        m = len(rows)
        stats: dict[str, Any] = {"features_s": time.perf_counter() - t_feat}
        probs = np.tile(np.full(3, 1 / 3), (m, E, 1))
        conf = np.zeros((m, E))
        er = np.zeros((m, E))
        mask = np.zeros((m, E), dtype=bool)
        extras: list[dict[str, np.ndarray]] = [{} for _ in range(E)]
        versions = [str(self.c.experts[nm].version) for nm in names]
        horizons = [int(self.c.experts[nm].horizon) for nm in names]
        errors: list[tuple[int, str, str]] = []
        t_inf = time.perf_counter()
        for e, nm in enumerate(names):
            ex = self.c.experts[nm]
            try:
                if ex.input_kind == "candles":
                    self._fast_slow(e, ex, sub, candles, probs, conf, er, mask, extras)
                    continue
                for s in range(0, m, CHUNK):
                    out = ex.predict_many(sub.take(slice(s, min(m, s + CHUNK))))
                    sl = slice(s, s + len(out.ts))
                    probs[sl, e], conf[sl, e], er[sl, e] = out.probs, out.confidence, out.expected_return
                    for k, v in out.extras.items():
                        extras[e].setdefault(k, np.empty((m, *np.shape(v)[1:]), dtype=np.asarray(v).dtype))
                        extras[e][k][sl] = v
                    self.progress(f"inference {nm}", min(m, s + CHUNK), m)
                bad = ~np.isfinite(probs[:, e]).all(axis=1)
                mask[:, e] = ~bad
                probs[bad, e] = 1 / 3
            except Exception as exc:  # skipped and reported, like the orchestrator does per bar
                mask[:, e] = False
                probs[:, e] = 1 / 3
                errors.append((int(time.time() * 1000), f"expert:{nm}", f"{type(exc).__name__}: {exc}"))
        stats["inference_s"] = time.perf_counter() - t_inf

        # gate, bar by bar (matured-only online updates), then the pure decision rule
        t_gate = time.perf_counter()
        runner = GateRunner(self.c.gate, spec.horizon, spec.dead_zone)
        ood = np.stack([np.asarray(extras[e].get("ood", np.full(m, np.nan)), dtype=np.float64)
                        for e in range(E)], axis=1)
        W, F = runner.run_many(sub.close.astype(np.float64), probs, np.asarray(sub.regime, dtype=np.float64),
                               mask, lambda j, total: self.progress("gate", j, total), ood=ood)
        clim_w = runner.climatology_weights
        confidence = np.einsum("ne,ne->n", W, conf)
        codes = decide_codes(F, confidence, spec.thresholds)
        codes[~mask.any(axis=1)] = HOLD
        stats["gate_s"] = time.perf_counter() - t_gate

        # audit rows (the same rows the orchestrator writes, built column-wise) + Decision objects
        t_dec = time.perf_counter()
        size = nominal_size(spec)
        exp_ret = np.einsum("ne,ne->n", W, er)
        raw = np.where(codes == BUY, size, np.where(codes == SELL, -size if spec.allow_short else 0.0, np.nan))
        target = pd.Series(raw).ffill().fillna(0.0).to_numpy()  # HOLD keeps the previous target
        actions = np.array(["SELL", "HOLD", "BUY"], dtype=object)[codes.astype(np.int64) + 1]
        reasons = [explain(CODE_TO_ACTION[int(c)], F[j], float(confidence[j]), spec.thresholds, int(mask[j].sum()))
                   for j, c in enumerate(codes)]
        if self.store is not None:
            t = spec.thresholds
            write_frames(self.store, *frames_from_arrays(
                self.run_id, spec.symbol, names, sub.ts, actions, F, W, confidence, exp_ret,
                (t.buy, t.sell, t.min_confidence), target, reasons, probs, conf, er, mask, versions, horizons,
                extras, clim_w))
        decisions: list[Decision] = []
        if self.keep_decisions:
            sym = spec.symbol
            for j in range(m):
                ts = int(sub.ts[j])
                outs = tuple(
                    ExpertOutput(expert=nm, model_version=versions[e], symbol=sym, ts=ts, horizon=horizons[e],
                                 probs=(float(probs[j, e, 0]), float(probs[j, e, 1]), float(probs[j, e, 2])),
                                 expected_return=float(er[j, e]), confidence=float(conf[j, e]), latency_ms=0.0,
                                 extras={k: _item(v[j]) for k, v in extras[e].items()})
                    for e, nm in enumerate(names) if mask[j, e])
                decisions.append(Decision(
                    id=f"{self.run_id}:{ts}", ts=ts, symbol=sym, action=CODE_TO_ACTION[int(codes[j])],
                    probs=(float(F[j, 0]), float(F[j, 1]), float(F[j, 2])), expected_return=float(exp_ret[j]),
                    weights=decision_weights(names, W[j], mask[j], float(clim_w[j]) if len(clim_w) else 0.0),
                    thresholds=spec.thresholds, target_position=float(target[j]), reason=reasons[j],
                    outputs=outs))
        stats["decisions_s"] = time.perf_counter() - t_dec

        # execution: the compiled loop over every bar (warm-up bars hold)
        t_ex = time.perf_counter()
        full_codes = np.zeros(n, dtype=np.int8)
        full_codes[rows] = codes
        signal = np.full(n, np.nan)
        signal[rows] = np.where(codes == BUY, 1.0, np.where(codes == SELL, -1.0, np.nan))
        if self._flat is not None:  # execution.flat_at_session_end: also on warm-up bars, as the executor does
            signal[self._flat.mask(candles["ts"].to_numpy(np.int64))] = 0.0
        arr = {c: candles[c].to_numpy(np.float64) for c in CANDLE_COLUMNS}
        equity, position, fills, state = K.run(arr["ts"], arr["open"], arr["high"], arr["low"], arr["close"],
                                               signal, vol_series(arr["close"], spec), params=self.params,
                                               initial_cash=spec.initial_cash)
        stats["execution_s"] = time.perf_counter() - t_ex
        decided = np.zeros(n, dtype=bool)
        decided[rows] = True
        return BacktestResult(
            run_id=self.run_id, spec=spec, candles=candles, names=names, decided=decided, codes=full_codes,
            fused=_spread(F, rows, n, 1 / 3), weights=_spread(W, rows, n, 0.0),
            confidence=_spread(confidence, rows, n, 0.0), signal=signal, equity=equity, position=position,
            fills=fills_frame(fills), state=state, decisions=decisions, info=self.c.info, errors=errors,
            stats=stats, expert_probs=_spread(probs, rows, n, 1 / 3), expert_mask=_spread(mask, rows, n, 0.0) > 0)

    def _fast_slow(self, e: int, ex: Any, sub: FeatureBatch, candles: pd.DataFrame, probs: np.ndarray,
                   conf: np.ndarray, er: np.ndarray, mask: np.ndarray, extras: list[dict]) -> None:
        """A slow expert forecasts at bars with (ts // tf) % k == 0; later bars reuse the freshest."""
        tf = timeframe_ms(self.spec.timeframe)
        due = np.flatnonzero((sub.ts // tf) % self.spec.kronos_every == 0)
        if len(due) == 0:
            return
        b = sub.take(due)
        out = (self.c.cache.predict_many(ex, b, candles) if self.c.cache is not None
               else ex.predict_many(b, candles))
        # index of the freshest forecast at or before each row (-1: none yet)
        last = np.full(len(sub), -1)
        last[due] = np.arange(len(due))
        last = np.maximum.accumulate(last)
        have = last >= 0
        probs[have, e] = out.probs[last[have]]
        conf[have, e] = out.confidence[last[have]]
        er[have, e] = out.expected_return[last[have]]
        mask[:, e] = have
        ex_out = _conformal_extras(out.extras, due, sub, ex.horizon)
        for k, v in ex_out.items():
            arr = np.asarray(v)
            full = np.zeros((len(sub), *arr.shape[1:]), dtype=arr.dtype)
            full[have] = arr[last[have]]
            extras[e][k] = full

    # ---- event: the live orchestrator over a replay
    def _event(self, candles: pd.DataFrame) -> BacktestResult:
        from core.data.provider import DataProvider  # imported here: fast mode needs no data layer
        from core.data.sources import ReplaySource
        from core.data.store import MarketStore

        spec, n = self.spec, len(candles)
        key = SeriesKey(spec.exchange, spec.symbol, spec.timeframe)
        replay_store = MarketStore(":memory:")
        replay_store.upsert_candles(key, candles)
        builder = self.c.builder
        # the cache holds the whole replay so build_one sees the history build_many sees
        provider = DataProvider(None, spec.timeframe, list(builder.timeframes), cache_bars=max(n + 1, 10),
                                exchange=spec.exchange, calendar=spec.calendar)
        orch = Orchestrator(
            self.c.experts, self.c.gate, builder, spec.thresholds, self.store, None, spec.symbol,
            spec.timeframe, horizon=spec.horizon, dead_zone=spec.dead_zone, slow_every_bars=spec.kronos_every,
            slow_async=False, slow_cache=self.c.cache, sizer=lambda _b: nominal_size(spec),
            allow_short=spec.allow_short, run_id=self.run_id, audit_flush_every=10_000)
        from core.execution.executor import Executor

        # the live executor (paper: kernel step per bar), no ledger: a backtest books nothing for real
        executor = Executor(self.execution, self.risk, spec.symbol, spec.timeframe, session_flat=self._flat,
                            bars_per_year=spec.bars_per_year)
        if not np.array_equal(executor.params, self.params, equal_nan=True):
            raise RuntimeError("event backtest: the executor's params differ from the fast mode's")
        equity = np.full(n, np.nan)
        position = np.full(n, np.nan)
        signal = np.full(n, np.nan)
        fill_rows: list[dict[str, Any]] = []
        decisions: list[Decision] = []
        W = np.zeros((n, len(self.names)))
        F = np.tile(np.full(3, 1 / 3), (n, 1))
        confidence = np.zeros(n)
        codes = np.zeros(n, dtype=np.int8)
        decided = np.zeros(n, dtype=bool)
        tfs = list(builder.timeframes)
        ts_index = {int(t): i for i, t in enumerate(candles["ts"].to_numpy(np.int64))}

        failure: list[BaseException] = []

        def on_event(ev: Any) -> None:
            # the provider isolates subscriber errors; a backtest must stop on them instead
            if failure:
                return
            try:
                _on_event(ev)
            except BaseException as exc:
                failure.append(exc)
                stop.set()

        def _on_event(ev: Any) -> None:
            i = ts_index[int(ev.ts)]
            # one DataFrame constructor per timeframe (cheaper than snapshot's column-by-column build)
            frames = {tf: pd.DataFrame(provider.arrays(spec.symbol, tf), copy=False) for tf in tfs}
            d = orch.on_candle(ev, frames)
            sig = math.nan
            if d is not None:
                decisions.append(d)
                decided[i] = True
                c = {BUY: 1, SELL: -1}.get(_code(d), 0)
                codes[i] = c
                sig = signal_of(c)
                F[i] = d.probs
                W[i] = [d.weights.get(nm, 0.0) for nm in self.names]
                confidence[i] = float(sum(d.weights.get(o.expert, 0.0) * o.confidence for o in d.outputs))
            signal[i] = sig
            for f in executor.on_bar(ev, d):
                fill_rows.append({"ts": f.ts, "side": f.side, "amount": f.amount, "price": f.price,
                                  "fee": f.fee, "reason": executor.paper.fetch_order(f.order_id).reason})
            equity[i] = executor.state[K.S_EQUITY]
            position[i] = executor.state[K.S_POS]
            if i % 256 == 0:
                self.progress("replay", i, n)

        stop = asyncio.Event()
        provider.subscribe(on_event, symbols=[spec.symbol], timeframes=[spec.timeframe])
        source = ReplaySource(replay_store, [key], speed=None)

        def emit(k: SeriesKey, df: pd.DataFrame, closed: bool) -> None:
            provider.ingest(k, df, closed)

        try:
            asyncio.run(source.run(emit, stop))
        finally:
            orch.close()
            replay_store.close()
        if failure:
            raise failure[0]
        if not decided.any() and n >= builder.min_history:
            raise RuntimeError("event replay made no decision: the replay did not reach the orchestrator")
        if len(decisions) != int(decided.sum()):
            raise RuntimeError("event replay: decision bookkeeping is inconsistent")
        errors = orch.errors
        return BacktestResult(
            run_id=self.run_id, spec=spec, candles=candles, names=self.names, decided=decided, codes=codes,
            fused=F, weights=W, confidence=confidence, signal=signal, equity=equity,
            position=position, fills=pd.DataFrame(fill_rows, columns=FILL_COLUMNS).astype(FILL_DTYPES),
            state=executor.state.copy(),
            decisions=decisions, info=self.c.info, errors=errors)


def _code(d: Decision) -> int:
    return {"BUY": BUY, "SELL": SELL}.get(str(d.action), HOLD)


def _spread(a: np.ndarray, rows: np.ndarray, n: int, fill: float) -> np.ndarray:
    out = np.full((n, *a.shape[1:]), fill, dtype=np.float64)
    out[rows] = a
    return out


def _item(v: Any) -> Any:
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, np.generic):
        return v.item()
    return v


def _conformal_extras(extras: dict[str, np.ndarray], due: np.ndarray, sub: FeatureBatch, horizon: int
                      ) -> dict[str, np.ndarray]:
    """The candle expert's forecasts (made at rows ``due``) with ACI-scaled bands, walked through the
    same BandTracker as the orchestrator, with the bars known at each forecast (fast == event)."""
    if "q50" not in extras or not len(due):
        return extras
    tracker = BandTracker(horizon)
    ts = np.asarray(sub.ts, dtype=np.int64)
    close = np.asarray(sub.close, dtype=np.float64)
    rows = [tracker.adjust(int(ts[j]), {k: _item(v[i]) for k, v in extras.items()}, ts[: j + 1], close[: j + 1])
            for i, j in enumerate(due)]
    out = dict(extras)
    for k in set().union(*rows):
        if k not in extras or k.startswith(("q1", "q2", "q7", "q9", "aci_")):
            out[k] = np.array([r.get(k, np.nan) for r in rows], dtype=np.float64)
    return out
