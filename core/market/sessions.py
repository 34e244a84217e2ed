"""Session filtering of candle frames: which bars of a stock series count.

Two different things happen to a bar outside the configured session:

* outside EVERY session of the exchange (a Saturday, a holiday, 02:00 ET): a vendor glitch. Validation
  rejects it with the reason ``outside_session`` (core/data/validate.py), like any other bad row.
* inside the exchange's extended hours but outside the configured session (pre-/post-market bars of a
  ``session: rth`` symbol, or an hourly vendor bar that straddles 09:30): not an error, just not part of
  the series. ``filter_session`` drops it and counts it as ``filtered``.

Vendor daily bars are stamped at the exchange's local midnight (Alpaca: 05:00 UTC); ``align_daily`` moves
them to their session's open so the daily bar is the session, as resampled daily bars are.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from core.market.calendar import DAY_MS, Calendar, SessionCalendar
from core.types import timeframe_ms


@dataclass(frozen=True)
class SessionSplit:
    kept: pd.DataFrame  # the bars of the configured session, input order
    filtered: int  # bars of the exchange's extended hours outside the configured session
    pre: int = 0  # of which before the regular open
    post: int = 0  # of which after the regular close
    straddling: int = 0  # of which bars crossing the session boundary (clock-aligned vendor bars)


def align_daily(df: pd.DataFrame, cal: Calendar, timeframe: str) -> pd.DataFrame:
    """Daily bars of a session calendar stamped at a session date's local midnight -> that session's open
    (other rows unchanged; a midnight that is no session stays and is rejected by validation)."""
    if timeframe != "1d" or cal.always_open or df.empty or not isinstance(cal, SessionCalendar):
        return df
    ts = df["ts"].to_numpy(dtype=np.int64)
    local = pd.DatetimeIndex(pd.to_datetime(ts, unit="ms", utc=True)).tz_convert(cal.tz)
    midnight = (local.hour == 0) & (local.minute == 0)
    if not midnight.any():
        return df
    t = cal.table
    i = np.searchsorted(t.opens, ts, side="left")  # the first open at/after the midnight
    ok = midnight & (i < len(t.opens))
    i = np.minimum(i, len(t.opens) - 1)
    same_day = ok & (t.opens[i] - ts < DAY_MS)
    out = df.copy()
    out["ts"] = np.where(same_day, t.opens[i], ts).astype(np.int64)
    return out


def filter_session(df: pd.DataFrame, cal: Calendar, timeframe: str) -> SessionSplit:
    """Keep the bars lying wholly inside one session of ``cal`` (rows must already be validated: bars
    outside every session are validation's ``outside_session``). 24/7 keeps everything (same frame)."""
    if cal.always_open or df.empty:
        return SessionSplit(df, 0)
    ts = df["ts"].to_numpy(dtype=np.int64)
    tf = timeframe_ms(timeframe)
    keep = cal.contains(ts, tf)
    if keep.all():
        return SessionSplit(df, 0)
    drop = ~keep
    pre = post = straddle = 0
    if isinstance(cal, SessionCalendar):
        x = ts[drop]
        si = np.maximum(cal.widest()._session(x), 0)  # rth and extended tables list the same sessions
        reg = SessionCalendar(cal.name, "rth").table
        reg_open, reg_close = reg.opens[si], reg.closes[si]
        crosses = ((x < reg_open) & (x + tf > reg_open)) | ((x < reg_close) & (x + tf > reg_close))
        straddle = int(crosses.sum())
        pre = int(((x + tf <= reg_open) & ~crosses).sum())
        post = int(((x >= reg_close) & ~crosses).sum())
    return SessionSplit(df.loc[keep].reset_index(drop=True), int(drop.sum()), pre, post, straddle)


@dataclass(frozen=True)
class SessionFlat:
    """``execution.flat_at_session_end``: the bars whose decision is replaced by "go flat", so no position
    is held over the overnight gap. With fills at the next open the flattening order is placed at the
    close of the second-to-last bar (it fills at the open of the last one, still in the session) and the
    last bar opens nothing (it would fill at tomorrow's open); with fills at the last price, the last bar
    of the session flattens at its close. The same mask for both backtest modes and the live executor."""

    calendar: SessionCalendar
    timeframe: str
    next_open: bool = True  # execution.fill_at == "next_open"

    def mask(self, ts: np.ndarray) -> np.ndarray:
        return self.calendar.bars_to_close(ts, self.timeframe) <= (1 if self.next_open else 0)

    def __call__(self, ts: int) -> bool:
        return bool(self.mask(np.array([ts], dtype=np.int64))[0])


def session_flat(calendar: Calendar | None, timeframe: str, fill_at: str, enabled: bool) -> SessionFlat | None:
    if not enabled or calendar is None or not isinstance(calendar, SessionCalendar):
        return None
    return SessionFlat(calendar, timeframe, fill_at == "next_open")


def session_candles(df: pd.DataFrame, calendar: Calendar, timeframe: str) -> pd.DataFrame:
    """Only the bars of the configured session (a store filled under a wider session setting)."""
    return filter_session(df, calendar, timeframe).kept
