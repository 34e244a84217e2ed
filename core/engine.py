"""The live / paper / replay composition the dashboard drives.

The engine thread owns every mutable object (provider, orchestrator, executor). Readers (Dash/Flask
threads) only ever see an immutable ``EngineSnapshot`` whose reference is swapped under a lock; they
send commands through a queue that the engine thread drains between candles, so no UI click can
interleave with a decision half-way.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import numpy as np
import pandas as pd

from core.types import Decision, ExpertOutput, Fill, Order, Position, Thresholds

log = logging.getLogger(__name__)

_EMPTY: Mapping[str, Any] = MappingProxyType({})


# ---------------------------------------------------------------- snapshot contract (read by web/)


@dataclass(frozen=True, slots=True)
class KronosSummary:
    """The freshest finished Kronos forecast, summarised for display.

    ``bands`` maps a quantile label ("q05", "q25", "q50", "q75", "q95") to the price path of that
    quantile over the next ``horizon`` bars; ``future_ts`` are the open times of those bars."""

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
