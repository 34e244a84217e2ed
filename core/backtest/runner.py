"""The one way to run a backtest: ``run_backtest(RunRequest(...), ...) -> Report``.

``main_backtest.py run`` (core/backtest/cli.py) and the dashboard's Backtest page (web/pages/backtest.py)
both call it: it loads the candles, builds the experts through the injected ``ComponentsFactory`` (the
composition root's ``compose.backtest_components``: core never imports NN), runs the ``Backtester`` in
fast or event mode (or trades a signals CSV), computes the metrics, writes the report (JSON + HTML +
``backtest_runs`` row) and returns it.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from core.backtest.engine import Backtester, ComponentsFactory, Progress, spec_from_config
from core.backtest.report import Report, ReportSpec, result_report, save_report
from core.backtest.signals import run_signals
from core.config import AppConfig, ModelsConfig, is_ticker
from core.data.store import MarketStore
from core.market import market_for
from core.types import SeriesKey, Thresholds, timeframe_ms

MODES = ("fast", "event")


@dataclass(frozen=True)
class RunRequest:
    """What to backtest; every None takes its default from config.yaml / models.yml."""

    symbol: str  # ccxt form, e.g. BTC/USDT
    exchange: str | None = None  # data.exchange
    timeframe: str | None = None  # data.base_timeframe
    start_ms: int | None = None  # inclusive; None: from the first stored bar
    end_ms: int | None = None  # exclusive; None: to the last stored bar
    experts: tuple[str, ...] | None = None  # None: enabled experts with a checkpoint
    thresholds: Thresholds | None = None  # orchestrator.buy_threshold / sell_threshold / min_confidence
    mode: str | None = None  # "fast" | "event"; backtest.mode
    fees_bps: float | None = None  # taker (and maker) fee; execution.taker_fee_bps
    slippage_bps: float | None = None  # execution.slippage_bps
    signals: Path | None = None  # a CSV of target positions to trade instead of the experts
    run_id: str | None = None  # None: a new time-stamped id
    source: str | None = None  # recorded in the report's spec (e.g. "dashboard")

    def __post_init__(self) -> None:
        if not self.symbol:
            raise ValueError("RunRequest.symbol is required (e.g. BTC/USDT)")
        if self.mode is not None and self.mode not in MODES:
            raise ValueError(f"RunRequest.mode={self.mode!r}: allowed {', '.join(MODES)}")
        if self.timeframe is not None:
            timeframe_ms(self.timeframe)
        if self.start_ms is not None and self.end_ms is not None and self.start_ms >= self.end_ms:
            raise ValueError(f"RunRequest: start_ms {self.start_ms} must be before end_ms {self.end_ms}")
        if self.experts is not None and (isinstance(self.experts, str) or not self.experts):
            raise ValueError(f"RunRequest.experts={self.experts!r}: a non-empty tuple of expert names, or None")


class NoCandlesError(ValueError):
    """The store holds no candles for the requested series and range."""


def new_run_id() -> str:
    """Sortable and unique: UTC time to the second plus 6 random hex digits."""
    return datetime.now(UTC).strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]


def default_thresholds(cfg: AppConfig, buy: float | None = None, sell: float | None = None,
                       min_confidence: float | None = None) -> Thresholds:
    """The orchestrator's thresholds from config, each overridden where given."""
    o = cfg.orchestrator
    return Thresholds(buy=o.buy_threshold if buy is None else buy,
                      sell=o.sell_threshold if sell is None else sell,
                      min_confidence=o.min_confidence if min_confidence is None else min_confidence)


def with_costs(cfg: AppConfig, fees_bps: float | None, slippage_bps: float | None) -> AppConfig:
    """``cfg`` with the fee (taker and maker) and slippage overridden, validated like the file (ranges),
    so a bad override fails the same way a bad config.yaml does."""
    ex: dict[str, float] = {}
    if fees_bps is not None:
        ex["taker_fee_bps"] = fees_bps
        ex["maker_fee_bps"] = fees_bps
    if slippage_bps is not None:
        ex["slippage_bps"] = slippage_bps
    if not ex:
        return cfg
    return cfg.model_copy(update={"execution": cfg.execution.model_validate({**cfg.execution.model_dump(), **ex})})


def run_backtest(request: RunRequest, *, cfg: AppConfig, models: ModelsConfig, store: MarketStore,
                 components: ComponentsFactory, reports_dir: Path, progress: Progress | None = None) -> Report:
    """Backtest ``request`` over the candles in ``store`` and save its report to ``reports_dir`` (and
    the store's ``backtest_runs``); returns the saved report (``json_path`` / ``html_path`` set).
    ``progress(stage, done, total)`` hears from the experts' inference, the gate and the replay.

    Raises NoCandlesError when the store has no candles for the series in range, ValueError for
    experts that cannot run (components' messages), pydantic's ValidationError for bad cost overrides."""
    cfg = with_costs(cfg, request.fees_bps, request.slippage_bps)
    venue = request.exchange or (market_for(cfg, request.symbol).exchange if is_ticker(request.symbol)
                                 else cfg.data.exchange)  # a stock's default venue is its market's (alpaca)
    key = SeriesKey(venue, request.symbol, request.timeframe or cfg.data.base_timeframe)
    timeframe_ms(key.timeframe)
    mode = request.mode or cfg.backtest.mode
    thresholds = request.thresholds or default_thresholds(cfg)
    run_id = request.run_id or new_run_id()
    candles = store.candles(key, request.start_ms, request.end_ms)
    if len(candles) == 0:
        have = ", ".join(f"{k.exchange} {k.symbol} {k.timeframe}" for k in store.series()) or "nothing"
        raise NoCandlesError(f"no candles for {key.exchange} {key.symbol} {key.timeframe} in {store.path} "
                             f"(the store holds: {have}); import first: main_backtest.py data import ...")
    e = cfg.execution
    spec = ReportSpec(exchange=key.exchange, symbol=key.symbol, timeframe=key.timeframe, mode=mode,
                      thresholds=thresholds, fees_bps=e.taker_fee_bps, slippage_bps=e.slippage_bps,
                      fill_at=e.fill_at, db=store.path, source=request.source)
    if request.signals is not None:
        report = run_signals(Path(request.signals), cfg, candles, run_id, spec)
    else:
        names = None if request.experts is None else list(request.experts)
        bspec = spec_from_config(cfg, models, exchange=key.exchange, symbol=key.symbol, timeframe=key.timeframe,
                                 thresholds=thresholds, mode=mode)
        comps = components(models, key.timeframe, names, store=store,
                           models_dir=cfg.resolve(cfg.training.models_dir), calendar=bspec.calendar)
        res = Backtester(comps, bspec, cfg.execution, cfg.risk, store=store, run_id=run_id, progress=progress,
                         keep_decisions=False).run(candles)
        report = result_report(res, spec)
    return save_report(store, report, reports_dir)
