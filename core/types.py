"""The contracts every part of MoE Trader speaks (see DESIGN.md): dataclasses, constants and the
Protocols that the composition root (compose.py) satisfies with objects from ``NN`` — ``core`` never
imports ``NN``; it only knows these shapes.

Candles travel as numpy arrays or DataFrames with the columns of ``CANDLE_COLUMNS``; ``ts`` is the
candle's OPEN time in int64 milliseconds UTC.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

if TYPE_CHECKING:
    import pandas as pd

    from core.config import RobustConfig
    from core.market.calendar import Calendar

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
    fee_base: float = 0.0  # the part of ``fee`` charged in the BASE asset, in base units (Binance buys)


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


# ---------------------------------------------------------------- checkpoints (registry rows)


@dataclass(frozen=True, slots=True)
class CheckpointInfo:
    """One registered checkpoint: weights file + its validation metric and metadata."""

    expert: str
    version: str
    path: Path
    metric: float
    created_at: datetime
    meta: dict[str, Any]


# ---------------------------------------------------------------- live training (NN -> engine, web)


@dataclass(frozen=True, slots=True)
class TrainingPoint:
    """One published training round of an online trainer (a point of the live loss curve)."""

    ts_ms: int  # wall clock when the engine received it
    steps: int  # the trainer process's cumulative optimiser steps (restart at 0 with a new process)
    loss: float  # mean training loss of the round
    samples_per_s: float
    val_challenger: float | None = None  # validation log loss of the round's checkpoint (None: window too short)
    val_champion: float | None = None  # the live weights' on the same window
    version: str = ""  # the round's checkpoint version (promoted or not)


@dataclass(frozen=True, slots=True)
class TrainerStatus:
    running: bool
    steps: int = 0
    loss: float = float("nan")
    samples_per_s: float = 0.0
    last_publish: int | None = None  # ms UTC of the last published checkpoint
    live_version: str = ""
    challenger_score: float | None = None  # validation log loss of the last judged challenger
    champion_score: float | None = None
    restarts: int = 0
    error: str | None = None
    pid: int | None = None
    promotions: int = 0
    last_verdict: str = ""
    history: tuple[TrainingPoint, ...] = ()  # newest last, bounded


@dataclass(frozen=True, slots=True)
class Verdict:
    """The champion/challenger judgement behind a promotion (validation log losses, paired test)."""

    promote: bool
    champion_logloss: float
    challenger_logloss: float
    margin: float
    n: int
    reason: str
    gain_se: float = float("nan")  # standard error of the paired per-sample log-loss differences


@dataclass(frozen=True, slots=True)
class Swap:
    """Weights to put into the live expert ``expert`` between two decisions."""

    expert: str
    version: str
    state: dict[str, Any] = field(repr=False)
    kind: str  # "promote" | "rollback"
    verdict: Verdict | None = None
    path: str | None = None  # the checkpoint file a promotion came from (None: a rollback)


# ---------------------------------------------------------------- protocols (implemented in NN/)


class ExpertLike(Protocol):
    """An expert as the orchestrator, backtester and engine use it (NN/experts/base.Expert)."""

    name: str
    version: str
    horizon: int
    input_kind: str  # "features" (FeatureBatch only) | "candles" (also the base candles: Kronos)
    calendar: Calendar | None  # the market's sessions, set by the runner (Kronos stamps future bars); None = 24x7

    def predict(self, batch: FeatureBatch, candles: pd.DataFrame | None = None) -> ExpertOutput: ...
    def predict_many(self, batch: FeatureBatch, candles: pd.DataFrame | None = None) -> ExpertBatchOutput: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class Gate(Protocol):
    """The mixture's gate (NN/moe.MoEGate): fuses [N, E, 3] expert probabilities into [N, 3]."""

    name: str
    version: str
    trained: bool

    @property
    def adapts(self) -> bool: ...  # weights depend on matured outcomes (walk bar by bar)
    @property
    def robust(self) -> RobustConfig | None: ...  # the robust layer above this gate (moe.robust), None = off
    # discount [E] or [N, E]: OOD multipliers of the experts' weights (core/fusion.ood_discount)
    def fuse(self, probs: np.ndarray, regime: np.ndarray, enabled: np.ndarray | None = None,
             discount: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]: ...
    def observe(self, probs: np.ndarray, realised: int) -> None: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class CheckpointCatalog(Protocol):
    """Read side of the checkpoint registry (NN/training/checkpoints.CheckpointRegistry)."""

    models_dir: Path

    def list(self, expert: str) -> list[CheckpointInfo]: ...  # oldest first
    def best(self, expert: str) -> CheckpointInfo | None: ...
    def latest_version(self, expert: str) -> str | None: ...
    # training curves (columns step, name, value) of the newest checkpoint that recorded any; empty if none
    def metrics(self, expert: str) -> pd.DataFrame: ...
    def load_into(self, target: ExpertLike | Gate, version: str | None = None) -> bool: ...


class LiveTraining(Protocol):
    """Online training of the live experts (NN/training/online.TrainingManager). ``feed``, ``poll`` and
    ``deciding`` run on the engine thread between decisions; the rest may be called from any thread."""

    def start(self, name: str) -> None: ...
    def stop(self, name: str, timeout: float = 5.0, wait: bool = True) -> None: ...
    def rollback(self, name: str) -> Swap: ...
    def has_history(self, name: str) -> bool: ...
    def status(self) -> Mapping[str, TrainerStatus]: ...
    def deciding(self) -> AbstractContextManager[None]: ...
    def feed(self, batch: FeatureBatch, position: float | np.ndarray | None = None) -> int: ...
    def poll(self, apply: bool = False) -> list[Swap]: ...
    def submit_checkpoint(self, name: str, path: str | Path, version: str | None = None) -> None: ...
    def shutdown(self, timeout: float = 5.0) -> None: ...


class Broker(Protocol):
    """A ccxt-shaped exchange account (core/execution: PaperBroker, CcxtBroker)."""

    def create_order(self, symbol: str, type: str, side: str, amount: float, price: float | None = None,
                     params: dict[str, Any] | None = None) -> Order: ...
    def cancel_order(self, id: str, symbol: str | None = None) -> Order: ...
    def fetch_order(self, id: str, symbol: str | None = None) -> Order: ...
    def fetch_open_orders(self, symbol: str | None = None) -> list[Order]: ...
    def fetch_balance(self) -> dict[str, Any]: ...

