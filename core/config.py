"""Configuration: config.yaml (engine) and models.yml (expert registry) as validated pydantic models.

An unknown key or a bad value raises ``ConfigError`` whose message is ONE line naming the file, the
key path, the bad value and what is allowed. Secrets never live in these files: they come from the
environment through ``Secrets`` and are never printed (their repr is masked).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from core.types import TIMEFRAME_MS

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = PROJECT_ROOT / "config.yaml"
DEFAULT_MODELS = PROJECT_ROOT / "models.yml"


class ConfigError(ValueError):
    """A configuration problem, described in one line."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def _check_timeframe(v: str) -> str:
    if v not in TIMEFRAME_MS:
        raise ValueError(f"must be one of {', '.join(TIMEFRAME_MS)}")
    return v


_TICKER = re.compile(r"^[A-Z][A-Z0-9.]{0,9}$")


def is_ticker(symbol: str) -> bool:
    """A stock ticker (AMZN, BRK.B) rather than a ccxt pair (BTC/USDT)."""
    return bool(_TICKER.match(symbol))


def _check_symbol(v: str) -> str:
    if is_ticker(v):
        return v
    if "/" not in v or v.startswith("/") or v.endswith("/"):
        raise ValueError("must be a ccxt symbol like BTC/USDT or a stock ticker like AMZN")
    return v


# ---------------------------------------------------------------- config.yaml


class DataConfig(_Strict):
    db_path: str = "data/moe.duckdb"
    exchange: str = "binanceus"
    symbols: list[str] = Field(default_factory=lambda: ["BTC/USDT"], min_length=1)
    base_timeframe: str = "1m"
    timeframes: list[str] = Field(default_factory=lambda: ["1m", "5m", "1h", "1d"], min_length=1)
    cache_bars: int = Field(1500, ge=10, le=1_000_000)
    backfill_bars: int = Field(1500, ge=0, le=1_000_000)
    websocket: bool = True
    poll_interval_s: float = Field(5.0, gt=0)
    reconnect_initial_s: float = Field(1.0, gt=0)
    reconnect_max_s: float = Field(60.0, gt=0)
    max_future_ms: int = Field(5_000, ge=0)

    @field_validator("base_timeframe")
    @classmethod
    def _tf(cls, v: str) -> str:
        return _check_timeframe(v)

    @field_validator("timeframes")
    @classmethod
    def _tfs(cls, v: list[str]) -> list[str]:
        for tf in v:
            _check_timeframe(tf)
        return v

    @field_validator("symbols")
    @classmethod
    def _syms(cls, v: list[str]) -> list[str]:
        for s in v:
            _check_symbol(s)
        return v

    @model_validator(mode="after")
    def _base_first(self) -> DataConfig:
        base = TIMEFRAME_MS[self.base_timeframe]
        for tf in self.timeframes:
            if TIMEFRAME_MS[tf] % base:
                raise ValueError(
                    f"timeframe {tf} is not a multiple of base_timeframe {self.base_timeframe}"
                )
        return self


class OrchestratorConfig(_Strict):
    buy_threshold: float = Field(0.6, ge=0, le=1)
    sell_threshold: float = Field(0.6, ge=0, le=1)
    min_confidence: float = Field(0.0, ge=0, le=1)
    kronos_every_bars: int = Field(5, ge=1)
    decision_horizon: int = Field(5, ge=1)


class ExecutionConfig(_Strict):
    live: bool = False
    # paper: the kernel's paper account (the backtester's arithmetic); paper_exchange: a simulated exchange account
    # behind the live order path (intent -> order -> fill, reconciled); alpaca: Alpaca's paper account unless live
    broker: Literal["paper", "paper_exchange", "ccxt", "alpaca"] = "paper"
    sandbox: bool = True
    initial_cash: float = Field(10_000.0, gt=0)
    maker_fee_bps: float = Field(10.0, ge=0, le=1000)
    taker_fee_bps: float = Field(10.0, ge=0, le=1000)
    slippage_bps: float = Field(2.0, ge=0, le=1000)
    fill_at: Literal["next_open", "last_price"] = "next_open"
    allow_short: bool = False  # spot is long-only; True lets signals go to -1 (margin/futures)
    min_trade_fraction: float = Field(0.01, ge=0, le=1)  # skip rebalances smaller than this of equity
    flat_at_session_end: bool = False  # markets with sessions (stocks): hold nothing over the overnight gap
    allow_untrained: bool = False  # trade decisions that rest on untrained experts (random weights)
    # bars that closed longer ago than this (backfilled after downtime) are recorded, never traded; 0 = off
    max_bar_age_s: float = Field(90.0, ge=0)
    reconcile_every_bars: int = Field(15, ge=1)  # exchange accounts: compare with the exchange every N bars
    reconcile_tolerance: float = Field(1e-6, ge=0)  # base units / quote fraction beyond which orders halt
    time_in_force: Literal["GTC", "IOC", "FOK"] = "GTC"  # limit orders on the exchange
    # stop-loss / take-profit of an exchange long: resting orders on the exchange where it supports them
    # (Binance spot: OCO / STOP_LOSS_LIMIT), else the engine enforces them on every price it sees
    protective_orders: Literal["exchange", "engine"] = "exchange"
    stop_limit_offset_bps: float = Field(50.0, ge=0, le=2000)  # a stop-limit's limit this far under its trigger


class RiskConfig(_Strict):
    sizing: Literal["fixed_fraction", "volatility_target"] = "fixed_fraction"
    fraction: float = Field(0.5, gt=0, le=1)
    target_vol_annual: float = Field(0.5, gt=0)
    max_position_fraction: float = Field(1.0, gt=0, le=1)
    stop_loss_pct: float = Field(0.02, ge=0, lt=1)
    take_profit_pct: float = Field(0.04, ge=0)
    max_daily_loss_pct: float = Field(0.05, gt=0, lt=1)
    cooldown_bars: int = Field(15, ge=0)
    kill_switch_reset: Literal["manual", "next_day"] = "manual"
    vol_window: int = Field(60, ge=2)  # bars of log returns for volatility_target sizing


class BacktestConfig(_Strict):
    kronos_every_bars: int = Field(15, ge=1)
    reports_dir: str = "reports"
    mode: Literal["fast", "event"] = "fast"


class DashboardConfig(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(8050, ge=1, le=65535)
    update_interval_ms: int = Field(1000, ge=100)
    tensorboard_url: str = "http://127.0.0.1:6006"
    replay_speed: float = Field(60.0, gt=0)
    # security (web/auth.py): extra Host names the server answers besides the bind address and loopback
    allowed_hosts: list[str] = Field(default_factory=list)
    session_hours: float = Field(12.0, gt=0, le=24 * 30)  # a login's lifetime
    login_attempts_per_min: int = Field(10, ge=1, le=1000)  # failed logins per client before 429
    threshold_floor: float = Field(0.5, ge=0, le=1)  # buy/sell below it need force: true
    server_threads: int = Field(8, ge=1, le=256)  # waitress worker threads


class TrainingConfig(_Strict):
    enabled: bool = True
    runs_dir: str = "runs"
    models_dir: str = "models"
    # live trainer processes (NN/training/online/) yield to the decision path:
    trainer_threads: int = Field(1, ge=1)  # torch threads per trainer process
    trainer_idle: bool = True  # Linux SCHED_IDLE (else only niced by trainer_nice)
    trainer_nice: int = Field(10, ge=0, le=19)
    reserve_cpus: int = Field(0, ge=0)  # lowest-numbered CPUs kept free of trainers (0: no pinning)
    freeze_while_deciding: bool = True  # SIGSTOP trainers for the milliseconds of each decision
    resume_online: bool = True  # live/paper: start from the online-trained weights a run left live


class MarketConfig(_Strict):
    """Where one symbol trades and which of its hours count (markets.<SYMBOL>)."""

    exchange: str | None = None  # venue id; default: alpaca for a ticker, data.exchange for a pair
    session: Literal["rth", "extended", "24x7"] | None = None  # default: rth for stocks, 24x7 for crypto


class AlpacaConfig(_Strict):
    """Alpaca market data and trading (keys only from APCA_API_KEY_ID / APCA_API_SECRET_KEY)."""

    feed: Literal["iex", "sip"] = "iex"  # stock data feed: iex (free plan) | sip (all US exchanges, paid)
    data_url: str = "https://data.alpaca.markets"  # REST market data
    stream_url: str = "wss://stream.data.alpaca.markets"  # websocket market data
    paper_url: str = "https://paper-api.alpaca.markets"  # paper-trading account
    live_url: str = "https://api.alpaca.markets"  # real money (execution.live + --live + keys)
    page_limit: int = Field(10_000, ge=1, le=10_000)  # bars per REST page (Alpaca's maximum)
    requests_per_min: int = Field(200, ge=1)  # REST rate limit (free plan: 200/min)
    trades_1s: bool = False  # also stream trades and build 1s candles from them


class OrderbookConfig(_Strict):
    """Consolidated order book (core/data/book_*.py): venues merged into price buckets."""

    venues: list[str] = Field(default_factory=lambda: ["binance", "binanceusdm", "binancecoinm"], min_length=1)
    symbol: str = "BTC/USDT"  # the coin's symbol on spot venues; futures venues use their own (BTC/USDT:USDT ...)
    bucket_size: dict[str, float] = Field(default_factory=lambda: {"BTC": 10.0, "ETH": 1.0})  # by base coin, quote units
    default_bucket_bps: float = Field(5.0, gt=0)  # other coins: bucket = this many bps of the first mid
    n_buckets: int = Field(20, ge=1, le=500)  # buckets either side of the mid's bucket
    wall_multiple: float = Field(10.0, gt=1)  # a level >= this x the venue's median level size is a wall
    usd_equivalent: bool = False  # merge USD, USDT and USDC books as one quote currency
    batch_seconds: int = Field(60, ge=1)  # 1 s snapshots per DuckDB write
    retention_days: float = Field(7.0, ge=0)  # book_buckets/book_summary rows kept (0 = forever)
    record_dir: str = "data/books"  # raw captures (Parquet) of book record
    history_s: int = Field(900, ge=60, le=86_400)  # seconds of heatmap history held in memory

    @field_validator("venues")
    @classmethod
    def _venues(cls, v: list[str]) -> list[str]:
        known = {"binance", "binanceusdm", "binancecoinm", "kraken", "okx", "bybit", "coinbase", "gemini", "bitstamp"}
        bad = [x for x in v if x not in known]
        if bad:
            raise ValueError(f"unknown venue(s) {bad}; allowed: {sorted(known)}")
        return v

    @field_validator("bucket_size")
    @classmethod
    def _sizes(cls, v: dict[str, float]) -> dict[str, float]:
        bad = {k: x for k, x in v.items() if not x > 0}
        if bad:
            raise ValueError(f"bucket sizes must be > 0, got {bad}")
        return v


_ALERT_EVENTS = Literal["entry", "exit", "fill", "rejected", "kill_switch", "reconcile", "acknowledged",
                        "recovered_fill", "stream_lost", "stream_restored", "trainer_crash", "promotion", "error"]


_WEBHOOK_DEFAULT: tuple[_ALERT_EVENTS, ...] = (
    "entry", "exit", "fill", "rejected", "kill_switch", "reconcile", "acknowledged", "recovered_fill",
    "stream_lost", "stream_restored", "trainer_crash", "promotion", "error")
_TELEGRAM_DEFAULT: tuple[_ALERT_EVENTS, ...] = (
    "entry", "exit", "kill_switch", "reconcile", "stream_lost", "trainer_crash", "error")


class AlertsConfig(_Strict):
    """Which trading events go where (core/alerts.py). The destinations are secrets, from the environment:
    MOE_ALERT_WEBHOOK_URL, MOE_TELEGRAM_BOT_TOKEN + MOE_TELEGRAM_CHAT_ID; errors to MOE_ALERT_ERROR_WEBHOOK_URL /
    MOE_TELEGRAM_ERROR_CHAT_ID when set, else to the main channel with ``error_prefix``."""

    enabled: bool = True
    webhook_events: list[_ALERT_EVENTS] = Field(default_factory=lambda: list(_WEBHOOK_DEFAULT))
    telegram_events: list[_ALERT_EVENTS] = Field(default_factory=lambda: list(_TELEGRAM_DEFAULT))
    error_prefix: str = "[ERROR]"
    retries: int = Field(4, ge=1, le=10)
    backoff_s: float = Field(0.5, ge=0)
    timeout_s: float = Field(5.0, gt=0)
    telegram_api_url: str = "https://api.telegram.org"


class AppConfig(_Strict):
    data: DataConfig = Field(default_factory=DataConfig)
    markets: dict[str, MarketConfig] = Field(default_factory=dict)
    alpaca: AlpacaConfig = Field(default_factory=AlpacaConfig)
    orchestrator: OrchestratorConfig = Field(default_factory=OrchestratorConfig)
    execution: ExecutionConfig = Field(default_factory=ExecutionConfig)
    risk: RiskConfig = Field(default_factory=RiskConfig)
    backtest: BacktestConfig = Field(default_factory=BacktestConfig)
    dashboard: DashboardConfig = Field(default_factory=DashboardConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    orderbook: OrderbookConfig = Field(default_factory=OrderbookConfig)
    alerts: AlertsConfig = Field(default_factory=AlertsConfig)

    @field_validator("markets")
    @classmethod
    def _market_symbols(cls, v: dict[str, MarketConfig]) -> dict[str, MarketConfig]:
        for sym in v:
            _check_symbol(sym)
        return v

    def symbol_choices(self) -> list[str]:
        """Every symbol the dashboard offers: data.symbols, then the symbols of ``markets``."""
        return list(dict.fromkeys([*self.data.symbols, *self.markets]))

    def resolve(self, relative: str) -> Path:
        """A path from the config, relative to the project root unless absolute."""
        p = Path(relative)
        return p if p.is_absolute() else PROJECT_ROOT / p


# ---------------------------------------------------------------- models.yml


class CheckpointPolicy(_Strict):
    keep_best: int = Field(3, ge=1)
    metric: str = "val_logloss"
    mode: Literal["min", "max"] = "min"


class OnlineTrainingConfig(_Strict):
    cadence_s: float = Field(30.0, gt=0)
    lr: float = Field(1e-4, gt=0)
    batch_size: int = Field(64, ge=1)
    replay_bars: int = Field(5000, ge=0)
    promote_margin: float = Field(0.002, ge=0)
    # ... and by this many standard errors of the paired per-sample log-loss differences (0: off)
    promote_z: float = Field(1.0, ge=0)
    val_bars: int = Field(240, ge=10)  # newest matured samples withheld from training: champion/challenger window
    # at least this many replayed mini-batches (DQN: chunks) per round, so a trainer keeps learning
    # between bars (a 1m stream brings ~1 fresh sample per 30 s round)
    replay_steps: int = Field(8, ge=0)


class ExpertConfig(_Strict):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    class_: str = Field(alias="class")
    enabled: bool = True
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    horizon: int = Field(5, ge=1)
    params: dict[str, Any] = Field(default_factory=dict)  # validated by the expert class itself
    checkpoints: CheckpointPolicy = Field(default_factory=CheckpointPolicy)
    online: OnlineTrainingConfig = Field(default_factory=OnlineTrainingConfig)


class FeaturesConfig(_Strict):
    window: int = Field(64, ge=8, le=4096)
    timeframes: list[str] = Field(default_factory=lambda: ["1m", "5m", "1h", "1d"], min_length=1)
    norm_window: int = Field(500, ge=10)
    pivot_levels: int = Field(3, ge=1, le=5)
    pivot_strength: int = Field(2, ge=1, le=20)  # bars each side of a level-1 swing point
    orderbook: bool = False  # add the order-book block (needs recorded books: main_backtest.py book record)

    @field_validator("timeframes")
    @classmethod
    def _tfs(cls, v: list[str]) -> list[str]:
        for tf in v:
            _check_timeframe(tf)
        return v


class LabelsConfig(_Strict):
    horizons: list[int] = Field(default_factory=lambda: [1, 5, 15, 60], min_length=1)
    dead_zone_bps: float | None = None  # None -> the round-trip taker fee from config.yaml
    # markets with sessions (stocks): may a label's horizon span the overnight gap? false: "5 bars ahead"
    # of 15:57 has no label (24x7 markets have no sessions to span)
    cross_sessions: bool = False

    @field_validator("horizons")
    @classmethod
    def _pos(cls, v: list[int]) -> list[int]:
        if any(h < 1 for h in v):
            raise ValueError("every horizon must be >= 1 bar")
        return v


class RobustConfig(_Strict):
    """core/fusion.py: the base-rate expert, fixed-share mixture, online recalibration, OOD discount."""

    enabled: bool = True
    share: float = Field(5e-4, ge=0, lt=1)  # fixed-share alpha (per-bar regret cost ~ alpha)
    climatology_window: int = Field(2000, ge=10)  # matured outcomes the base rate counts
    recal_lr: float = Field(0.01, gt=0, le=1)  # SGD step of the online recalibration (forgetting)
    ood_threshold: float = Field(3.0, gt=0)  # OOD score above which the gate discounts an expert


class MoEConfig(_Strict):
    hedge_eta: float = Field(0.5, gt=0)
    hedge_window: int = Field(200, ge=1)
    # a trained gate's MLP weights are also multiplied by the Hedge weights of the recent matured
    # outcomes (renormalised): it keeps adapting online (uniform Hedge before any outcome = no change)
    adapt_trained: bool = True
    hidden: int = Field(32, ge=1)
    calibrate: bool = True
    calibration: Literal["temperature", "vector"] = "vector"  # fused-probability calibrator
    holdout: float = Field(0.3, gt=0, lt=1)  # last part of the val split: early stopping + calibration
    epochs: int = Field(300, ge=1)  # gate training (full-batch Adam steps)
    lr: float = Field(1e-2, gt=0)
    weight_decay: float = Field(1e-3, ge=0)
    robust: RobustConfig = Field(default_factory=RobustConfig)


class SplitConfig(_Strict):
    train: float = Field(0.7, gt=0, lt=1)
    val: float = Field(0.15, gt=0, lt=1)
    gap_bars: int = Field(60, ge=0)

    @model_validator(mode="after")
    def _sum(self) -> SplitConfig:
        if self.train + self.val >= 1:
            raise ValueError("train + val must leave room for the test split (< 1)")
        return self


class ModelsConfig(_Strict):
    features: FeaturesConfig = Field(default_factory=FeaturesConfig)
    labels: LabelsConfig = Field(default_factory=LabelsConfig)
    split: SplitConfig = Field(default_factory=SplitConfig)
    moe: MoEConfig = Field(default_factory=MoEConfig)
    experts: dict[str, ExpertConfig] = Field(default_factory=dict)

    def enabled(self) -> dict[str, ExpertConfig]:
        return {k: v for k, v in self.experts.items() if v.enabled}


# ---------------------------------------------------------------- loading


# keys earlier versions read and this one does not: a file that still has one gets told so plainly
NO_LONGER_USED: dict[str, str] = {
    "data.reference_symbol": "no feature read it; the reference-return features stay zero",
    "execution.quote_currency": "the quote currency is the symbol's own (BTC/USDT -> USDT)",
}


def _format_error(source: str, err: ValidationError, raw: Any) -> str:
    """One line: file, key path, bad value, what is allowed."""
    e = err.errors()[0]
    loc = [str(p) for p in e["loc"]]
    path = ".".join(loc) or "(root)"
    if e["type"] == "extra_forbidden" and path in NO_LONGER_USED:
        return f"{source}: '{path}' is no longer used ({NO_LONGER_USED[path]}); remove it"
    if e["type"] == "extra_forbidden":
        allowed = _allowed_keys(err, loc)
        hint = f"; allowed: {', '.join(allowed)}" if allowed else ""
        return f"{source}: unknown key '{path}'{hint}"
    value = e.get("input")
    msg = e["msg"]
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
    if e["type"] == "missing":
        return f"{source}: missing key '{path}'"
    return f"{source}: bad value for '{path}': {value!r} ({msg})"


def _allowed_keys(err: ValidationError, loc: list[str]) -> list[str]:
    model = err.title
    root = {"AppConfig": AppConfig, "ModelsConfig": ModelsConfig}.get(model)
    cls: Any = root
    for part in loc[:-1]:
        if cls is None:
            return []
        f = cls.model_fields.get(part)
        if f is None:
            # dict[str, Model]: the key is a free name
            if getattr(cls, "__origin__", None) is dict:
                continue
            return []
        ann = f.annotation
        args: tuple[Any, ...] = getattr(ann, "__args__", ())
        cls = args[-1] if getattr(ann, "__origin__", None) is dict and args else ann
    if cls is None or not hasattr(cls, "model_fields"):
        return []
    return [f.alias or k for k, f in cls.model_fields.items()]


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.exists():
        raise ConfigError(f"{path}: file not found")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}:{where} not valid YAML ({getattr(exc, 'problem', exc)})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(raw).__name__}")
    return raw


def load_config(path: str | Path | None = None) -> AppConfig:
    p = Path(path) if path else DEFAULT_CONFIG
    raw = _read_yaml(p)
    try:
        return AppConfig.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_format_error(str(p), err, raw)) from None


def load_models(path: str | Path | None = None) -> ModelsConfig:
    p = Path(path) if path else DEFAULT_MODELS
    raw = _read_yaml(p)
    try:
        return ModelsConfig.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_format_error(str(p), err, raw)) from None


def validate_params(model: type[BaseModel], params: dict[str, Any], where: str) -> Any:
    """Validate an expert's ``params`` block with the expert's own pydantic model (extra=forbid),
    raising ConfigError with the same one-line format (``where`` e.g. 'models.yml: experts.cnn.params')."""
    try:
        return model.model_validate(params)
    except ValidationError as err:
        e = err.errors()[0]
        path = ".".join(str(p) for p in e["loc"])
        if e["type"] == "extra_forbidden":
            allowed = ", ".join(model.model_fields)
            raise ConfigError(f"{where}: unknown key '{path}'; allowed: {allowed}") from None
        raise ConfigError(f"{where}: bad value for '{path}': {e.get('input')!r} ({e['msg']})") from None


# ---------------------------------------------------------------- secrets


@dataclass(frozen=True)
class Secrets:
    """Secrets from the environment only. repr/str never show values."""

    exchange_api_key: str | None = field(default=None, repr=False)
    exchange_secret: str | None = field(default=None, repr=False)
    exchange_password: str | None = field(default=None, repr=False)
    dashboard_token: str | None = field(default=None, repr=False)
    alpaca_key_id: str | None = field(default=None, repr=False)
    alpaca_secret_key: str | None = field(default=None, repr=False)
    alert_webhook_url: str | None = field(default=None, repr=False)
    alert_error_webhook_url: str | None = field(default=None, repr=False)
    telegram_bot_token: str | None = field(default=None, repr=False)
    telegram_chat_id: str | None = field(default=None, repr=False)
    telegram_error_chat_id: str | None = field(default=None, repr=False)

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Secrets:
        e = os.environ if env is None else env
        return cls(
            exchange_api_key=e.get("MOE_EXCHANGE_API_KEY") or None,
            exchange_secret=e.get("MOE_EXCHANGE_SECRET") or None,
            exchange_password=e.get("MOE_EXCHANGE_PASSWORD") or None,
            dashboard_token=e.get("DASHBOARD_TOKEN") or None,
            alpaca_key_id=e.get("APCA_API_KEY_ID") or None,
            alpaca_secret_key=e.get("APCA_API_SECRET_KEY") or None,
            alert_webhook_url=e.get("MOE_ALERT_WEBHOOK_URL") or None,
            alert_error_webhook_url=e.get("MOE_ALERT_ERROR_WEBHOOK_URL") or None,
            telegram_bot_token=e.get("MOE_TELEGRAM_BOT_TOKEN") or None,
            telegram_chat_id=e.get("MOE_TELEGRAM_CHAT_ID") or None,
            telegram_error_chat_id=e.get("MOE_TELEGRAM_ERROR_CHAT_ID") or None,
        )

    @property
    def has_alpaca_keys(self) -> bool:
        return bool(self.alpaca_key_id and self.alpaca_secret_key)

    @property
    def has_exchange_keys(self) -> bool:
        return bool(self.exchange_api_key and self.exchange_secret)

    def __repr__(self) -> str:
        flags = {k: ("set" if getattr(self, k) else "unset") for k in self.__dataclass_fields__}
        return f"Secrets({', '.join(f'{k}={v}' for k, v in flags.items())})"

    __str__ = __repr__
