"""The contracts every part of MoE Trader speaks (see DESIGN.md). Dataclasses and constants only.

Candles travel as numpy arrays or DataFrames with the columns of ``CANDLE_COLUMNS``; ``ts`` is the
candle's OPEN time in int64 milliseconds UTC.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import numpy as np

CANDLE_COLUMNS: tuple[str, ...] = ("ts", "open", "high", "low", "close", "volume")
PRICE_COLUMNS: tuple[str, ...] = ("open", "high", "low", "close")
PROB_CLASSES: tuple[str, ...] = ("down", "flat", "up")

# ccxt timeframe strings -> milliseconds
TIMEFRAME_MS: dict[str, int] = {
    "1s": 1_000,
    "1m": 60_000,
    "3m": 180_000,
    "5m": 300_000,
    "15m": 900_000,
    "30m": 1_800_000,
    "1h": 3_600_000,
    "2h": 7_200_000,
    "4h": 14_400_000,
    "6h": 21_600_000,
    "12h": 43_200_000,
    "1d": 86_400_000,
    "1w": 604_800_000,
}


def timeframe_ms(timeframe: str) -> int:
    """Milliseconds of a ccxt timeframe string; a clear error for anything else."""
    try:
        return TIMEFRAME_MS[timeframe]
    except KeyError:
        raise ValueError(
            f"unknown timeframe {timeframe!r}; allowed: {', '.join(TIMEFRAME_MS)}"
        ) from None


@dataclass(frozen=True, slots=True)
class SeriesKey:
    """Identifies one candle series in the store and the cache."""

    exchange: str
    symbol: str
    timeframe: str


@dataclass(frozen=True, slots=True)
class CandleEvent:
    """One candle delivered to subscribers. ``closed`` is False for in-progress updates."""

    key: SeriesKey
    ts: int
    open: float
    high: float
    low: float
    close: float
    volume: float
    closed: bool = True

    def as_row(self) -> tuple[int, float, float, float, float, float]:
        return (self.ts, self.open, self.high, self.low, self.close, self.volume)


class Action(StrEnum):
    BUY = "BUY"
    SELL = "SELL"
    HOLD = "HOLD"


@dataclass(frozen=True, slots=True)
class ExpertOutput:
    """One expert's opinion about ``symbol`` at candle ``ts`` for ``horizon`` bars ahead."""

    expert: str
    model_version: str
    symbol: str
    ts: int
    horizon: int
    probs: tuple[float, float, float]  # (down, flat, up), sums to 1
    expected_return: float
    confidence: float
    latency_ms: float
    extras: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ExpertBatchOutput:
    """Vectorised outputs of ``predict_many`` over N samples (backtests, training, evaluation)."""

    expert: str
    model_version: str
    horizon: int
    ts: np.ndarray  # int64 [N]
    probs: np.ndarray  # float [N, 3]
    expected_return: np.ndarray  # float [N]
    confidence: np.ndarray  # float [N]
    extras: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Thresholds:
    """Decision thresholds the user moves live: BUY when fused P(up) >= buy and confidence >=
    min_confidence; SELL when fused P(down) >= sell and confidence >= min_confidence."""

    buy: float = 0.6
    sell: float = 0.6
    min_confidence: float = 0.0

    def __post_init__(self) -> None:
        for name in ("buy", "sell", "min_confidence"):
            v = getattr(self, name)
            if not (0.0 <= v <= 1.0) or v != v:
                raise ValueError(f"threshold {name}={v!r} must be within [0, 1]")


@dataclass(frozen=True, slots=True)
class Decision:
    id: str
    ts: int
    symbol: str
    action: Action
    probs: tuple[float, float, float]
    expected_return: float
    weights: dict[str, float]
    thresholds: Thresholds
    target_position: float  # fraction of equity, -1..1 (spot: 0..1)
    reason: str
    outputs: tuple[ExpertOutput, ...] = ()


# ccxt-shaped execution records, so the paper and live brokers are interchangeable.


@dataclass(frozen=True, slots=True)
class Order:
    id: str
    clientOrderId: str
    symbol: str
    side: str  # "buy" | "sell"
    type: str  # "market" | "limit"
    amount: float
    price: float | None
    status: str  # "open" | "closed" | "canceled" | "rejected"
    filled: float
    fee: float
    ts: int
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Fill:
    id: str
    order_id: str
    clientOrderId: str
    symbol: str
    side: str
    amount: float
    price: float
    fee: float
    ts: int


@dataclass(frozen=True, slots=True)
class Position:
    symbol: str
    amount: float
    avg_price: float
    realised_pnl: float
    unrealised_pnl: float


# ---------------------------------------------------------------- features (FeatureBuilder -> experts)


@dataclass(frozen=True, slots=True)
class FeatureSpec:
    """Dimensions of a FeatureBatch, so experts can size their networks before seeing data."""

    timeframes: tuple[str, ...]  # T, in order; timeframes[0] is the base timeframe
    window: int  # L bars per timeframe window
    bar_features: tuple[str, ...]  # F names of the per-bar features
    flat_features: tuple[str, ...]  # D names of the summary vector
    regime_features: tuple[str, ...]  # R names of the gate's regime inputs


@dataclass(frozen=True, slots=True)
class FeatureBatch:
    """N samples; sample i describes the market at the CLOSE of the bar opening at ts[i], built from
    bars up to and including that one only (no look-ahead)."""

    symbol: str
    timeframe: str  # the base timeframe
    ts: np.ndarray  # int64 [N]
    close: np.ndarray  # float64 [N] close of bar ts[i]
    windows: np.ndarray  # float32 [N, T, L, F] past-only normalised windows per timeframe
    flat: np.ndarray  # float32 [N, D]
    regime: np.ndarray  # float32 [N, R] (e.g. realised volatility, trend)
    spec: FeatureSpec

    def __len__(self) -> int:
        return int(self.ts.shape[0])

    def take(self, idx: np.ndarray | slice) -> FeatureBatch:
        """Rows ``idx`` as a new batch (views where numpy allows)."""
        return FeatureBatch(
            symbol=self.symbol,
            timeframe=self.timeframe,
            ts=self.ts[idx],
            close=self.close[idx],
            windows=self.windows[idx],
            flat=self.flat[idx],
            regime=self.regime[idx],
            spec=self.spec,
        )
