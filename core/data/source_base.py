"""What every source shares: the async ``Source`` protocol and its status record."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import pandas as pd

from core.types import SeriesKey

Emit = Callable[[SeriesKey, pd.DataFrame, bool], None]


@dataclass(frozen=True, slots=True)
class SourceStatus:
    name: str
    connected: bool = False
    last_message_ms: int | None = None  # wall clock of the last message received
    lag_ms: int | None = None  # wall clock minus the close time of the newest candle received
    reconnects: int = 0
    rejected_rows: int = 0
    error: str | None = None


@runtime_checkable
class Source(Protocol):
    name: str

    async def run(self, emit: Emit, stop: asyncio.Event) -> None:
        """Deliver candles in ts order through ``emit(key, candles_df, closed)`` until ``stop`` is set
        (or the source is exhausted); closed=False marks an in-progress update."""
        ...

    def status(self) -> SourceStatus: ...


def now_ms() -> int:
    return int(time.time() * 1000)


def emit_new_closed(emit: Emit, key: SeriesKey, df: pd.DataFrame, last: int | None) -> int | None:
    """Emit the closed candles of ``df`` newer than ``last`` (REST pages overlap what a stream already
    delivered), ts ascending and unique; returns the newest ts emitted, None when nothing was new."""
    if df.empty:
        return None
    if last is not None:
        df = df[df["ts"] > last]
        if df.empty:
            return None
    ts = df["ts"].to_numpy()
    if len(ts) > 1 and not (ts[1:] > ts[:-1]).all():
        df = df.sort_values("ts", kind="stable").drop_duplicates("ts", keep="last")
    df = df.reset_index(drop=True)
    emit(key, df, True)
    return int(df["ts"].iat[-1])

