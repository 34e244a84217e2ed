"""Replays stored candles through the live interface: the engine of the offline demo and of backtests.

Candles of all keys are merged by ts (ties: the order of ``keys``) and emitted one timestamp at a time,
closed. ``speed`` None = as fast as possible; N = N x real time (a 1m candle every 60/N s), paced on the
monotonic clock against the replay's start so sleeps do not accumulate drift. With a session calendar
(stocks) the pace counts session time only: nights, weekends and holidays take no time.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from dataclasses import replace

import numpy as np
import pandas as pd

from core.data.source_base import Emit, SourceStatus, now_ms
from core.data.store import MarketStore
from core.market.calendar import Calendar
from core.types import CANDLE_COLUMNS, SeriesKey, timeframe_ms


class ReplaySource:
    def __init__(self, store: MarketStore, keys: list[SeriesKey], start_ms: int | None = None,
                 end_ms: int | None = None, speed: float | None = None, *,
                 monotonic: Callable[[], float] | None = None, calendar: Calendar | None = None) -> None:
        if not keys:
            raise ValueError("ReplaySource needs at least one series key")
        if speed is not None and not speed > 0:
            raise ValueError(f"replay speed must be > 0 (or None for as fast as possible), got {speed}")
        for k in keys:
            timeframe_ms(k.timeframe)
        self.store = store
        self.keys = list(keys)
        self.start_ms = start_ms
        self.end_ms = end_ms
        self.speed = speed
        self._monotonic = monotonic or time.monotonic
        self.calendar = calendar if calendar is not None and not calendar.always_open else None
        self.name = "replay"
        self.persist = False  # its candles come from the store: the provider need not write them back
        self._status = SourceStatus(self.name)
        self.emitted = 0
        self.replay_ts: int | None = None  # simulated clock: open time of the last candle emitted

    def status(self) -> SourceStatus:
        return self._status

    def _load(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(ts, key index, values[N, 5]) of every candle, merged in (ts, key order)."""
        ts_parts, key_parts, val_parts = [], [], []
        for i, k in enumerate(self.keys):
            df = self.store.candles(k, self.start_ms, self.end_ms)
            ts_parts.append(df["ts"].to_numpy(dtype=np.int64))
            key_parts.append(np.full(len(df), i, dtype=np.int32))
            val_parts.append(df[list(CANDLE_COLUMNS[1:])].to_numpy(dtype=np.float64))
        ts = np.concatenate(ts_parts)
        kid = np.concatenate(key_parts)
        vals = np.concatenate(val_parts) if val_parts else np.empty((0, 5))
        order = np.lexsort((kid, ts))
        return ts[order], kid[order], vals[order]

    def batches(self) -> Iterator[tuple[SeriesKey, pd.DataFrame]]:
        """Synchronous replay (no pacing): (key, one-candle frame) in replay order — for backtests."""
        ts, kid, vals = self._load()
        for j in range(len(ts)):
            yield self.keys[kid[j]], _frame(ts[j: j + 1], vals[j: j + 1])

    async def run(self, emit: Emit, stop: asyncio.Event) -> None:
        ts, kid, vals = self._load()
        self._status = SourceStatus(self.name, connected=True)
        t0_wall = self._monotonic()
        t0_ts = int(ts[0]) if len(ts) else 0
        clock = ts
        if self.calendar is not None and len(ts):  # session time: bar index x the timeframe
            tf = self.keys[0].timeframe
            clock = t0_ts + (self.calendar.bar_index(ts, tf) - self.calendar.bar_index(ts[:1], tf)[0]) \
                * timeframe_ms(tf)
        try:
            for j in range(len(ts)):
                if stop.is_set():
                    break
                if self.speed is not None:
                    due = t0_wall + (int(clock[j]) - t0_ts) / 1000.0 / self.speed
                    wait = due - self._monotonic()
                    if wait > 0:
                        await asyncio.sleep(wait)
                elif j % 256 == 0:
                    await asyncio.sleep(0)  # let the loop breathe (stop requests, other sources)
                emit(self.keys[kid[j]], _frame(ts[j: j + 1], vals[j: j + 1]), True)
                self.emitted += 1
                self.replay_ts = int(ts[j])
                self._status = replace(self._status, last_message_ms=now_ms(), lag_ms=0)
        finally:
            self._status = replace(self._status, connected=False)


def _frame(ts: np.ndarray, vals: np.ndarray) -> pd.DataFrame:
    return pd.DataFrame({"ts": ts, "open": vals[:, 0], "high": vals[:, 1], "low": vals[:, 2],
                         "close": vals[:, 3], "volume": vals[:, 4]}, copy=False)
