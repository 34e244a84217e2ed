"""Higher timeframes from a base timeframe: first open, max high, min low, last close, summed volume.

Buckets are aligned to multiples of the target timeframe in UTC (weekly: Mondays, as ccxt). With a
session calendar (stocks) buckets live WITHIN sessions: they start at the session open + k*tf (hourly
bars start 09:30), the last one ends at the close (short on every day, shorter on early closes), the
daily bar is the session, and no bucket ever spans the overnight gap. Vectorised with numpy
(``reduceat`` over bucket boundaries); input must be ts-ascending without duplicates (what validation
guarantees).
"""

from __future__ import annotations

from typing import overload

import numpy as np
import pandas as pd

from core.data.validate import check_columns, grid_offset
from core.market.calendar import Calendar
from core.types import CANDLE_COLUMNS, timeframe_ms


@overload
def bucket_start(ts: int, timeframe: str) -> int: ...
@overload
def bucket_start(ts: np.ndarray, timeframe: str) -> np.ndarray: ...
def bucket_start(ts: np.ndarray | int, timeframe: str) -> np.ndarray | int:
    """Open time of the ``timeframe`` bucket holding ``ts``."""
    tf = timeframe_ms(timeframe)
    off = grid_offset(timeframe)
    return ts - (ts - off) % tf


def bucket_bounds(ts: np.ndarray, timeframe: str, calendar: Calendar | None = None
                  ) -> tuple[np.ndarray, np.ndarray]:
    """(open, end) of the ``timeframe`` bucket holding each ts: the UTC grid without a calendar (or 24x7),
    the session grid with one (end = min(open + tf, session close))."""
    if calendar is None or calendar.always_open:
        start = bucket_start(np.asarray(ts, dtype=np.int64), timeframe)
        return start, start + timeframe_ms(timeframe)
    return calendar.buckets(ts, timeframe)


def check_ratio(from_tf: str, to_tf: str) -> int:
    a, b = timeframe_ms(from_tf), timeframe_ms(to_tf)
    if b < a or b % a:
        raise ValueError(f"cannot resample {from_tf} to {to_tf}: {to_tf} is not a multiple of {from_tf}")
    return b // a


def resample(df: pd.DataFrame, from_tf: str, to_tf: str, closed_only: bool = True,
             calendar: Calendar | None = None) -> pd.DataFrame:
    """Candles of ``to_tf`` from ``from_tf`` candles. ``closed_only`` drops the trailing bucket whose
    last base candle is not in ``df`` yet (a bucket is complete once its last base candle is present;
    earlier buckets with missing base candles are closed because later data exists). ``calendar``:
    buckets within sessions (module doc); every base bar must lie in a session."""
    check_columns(df)
    check_ratio(from_tf, to_tf)
    if from_tf == to_tf:
        return df[list(CANDLE_COLUMNS)].reset_index(drop=True).copy()
    ts = df["ts"].to_numpy(dtype=np.int64)
    if len(ts) == 0:
        return df[list(CANDLE_COLUMNS)].iloc[:0].copy()
    if len(ts) > 1 and not (np.diff(ts) > 0).all():
        raise ValueError("resample: ts must be strictly ascending (validate first)")
    buckets, bucket_end = bucket_bounds(ts, to_tf, calendar)
    starts = np.flatnonzero(np.r_[True, buckets[1:] != buckets[:-1]])
    ends = np.r_[starts[1:], len(ts)] - 1
    o = df["open"].to_numpy(dtype=np.float64)
    h = df["high"].to_numpy(dtype=np.float64)
    lo = df["low"].to_numpy(dtype=np.float64)
    c = df["close"].to_numpy(dtype=np.float64)
    v = df["volume"].to_numpy(dtype=np.float64)
    out = pd.DataFrame(
        {
            "ts": buckets[starts],
            "open": o[starts],
            "high": np.maximum.reduceat(h, starts),
            "low": np.minimum.reduceat(lo, starts),
            "close": c[ends],
            "volume": np.add.reduceat(v, starts),
        }
    )
    if closed_only:
        last_base = int(bucket_end[-1]) - timeframe_ms(from_tf)
        if int(ts[-1]) < last_base:
            out = out.iloc[:-1]
    return out.reset_index(drop=True)
