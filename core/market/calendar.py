"""Trading calendars: when a market is open, and how bars are counted on it.

Two kinds speak one interface (``Calendar``):

* ``AlwaysOpen`` -- crypto venues, 24/7. Every method is exactly what the code did before calendars
  existed: buckets on the UTC grid (weekly on Mondays), a "day" is the UTC day, the next bar is ts + tf.
* ``SessionCalendar`` -- an exchange's sessions from ``exchange_calendars`` (holidays, early closes,
  ad-hoc closures such as 2025-01-09), in one of two modes: ``rth`` (regular hours, NYSE 09:30-16:00 ET,
  13:00 on early-close days) or ``extended`` (04:00-20:00 ET, post-market until 17:00 on early-close days,
  Alpaca's extended hours). Bars are counted in SESSION bars: a bucket of timeframe tf starts at the
  session open + k*tf and ends at min(start + tf, close) (hourly bars start 09:30 and the last one of the
  day is short; the daily bar is the session), and the bar after the last one of a session is the first
  bar of the next session.

Why exchange_calendars (not pandas-market-calendars): it is the library pandas-market-calendars itself
builds on, so one dependency instead of two; it works offline from rules plus a list of ad-hoc closures;
and it exposes the whole schedule as arrays of opens and closes, which is what the vectorised session
arithmetic below needs (searchsorted over int64 ms), with no per-day Python calls.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np
import pandas as pd

from core.types import timeframe_ms

DAY_MS = 86_400_000
WEEK_OFFSET_MS = 4 * DAY_MS  # 1970-01-01 was a Thursday; weekly candles open on Mondays (ccxt)
SessionMode = Literal["rth", "extended", "24x7"]
SESSION_MODES: tuple[str, ...] = ("rth", "extended", "24x7")

# calendar code -> (time zone, extended-hours open / close / early-close post end, local "HH:MM")
EXCHANGES: dict[str, tuple[str, str, str, str]] = {
    "XNYS": ("America/New_York", "04:00", "20:00", "17:00"),
}
TABLE_START = "2000-01-01"  # sessions known from here ...
TABLE_YEARS_AHEAD = 2  # ... to this many years after today (future bar times, next open)


class Calendar(Protocol):
    """When a market trades and how its bars are counted. ``ts`` arrays are int64 ms UTC bar OPEN times."""

    name: str  # "24x7" or an exchange code ("XNYS")
    mode: str  # "24x7" | "rth" | "extended"
    tz: str  # display / local time zone ("UTC" for 24x7)

    @property
    def always_open(self) -> bool: ...
    def widest(self) -> Calendar: ...
    def trading_day(self, ts: np.ndarray) -> np.ndarray: ...
    def on_grid(self, ts: np.ndarray, timeframe: str) -> np.ndarray: ...
    def contains(self, ts: np.ndarray, tf_ms: int) -> np.ndarray: ...
    def day_ids(self, ts: np.ndarray) -> np.ndarray: ...
    def buckets(self, ts: np.ndarray, timeframe: str) -> tuple[np.ndarray, np.ndarray]: ...
    def bar_index(self, ts: np.ndarray, timeframe: str) -> np.ndarray: ...
    def next_bars(self, ts: int, n: int, timeframe: str) -> np.ndarray: ...
    def bar_times(self, start_ms: int, end_ms: int, timeframe: str) -> np.ndarray: ...
    def bars_per_year(self, timeframe: str) -> float: ...
    def session_at(self, now_ms: int) -> tuple[int, int] | None: ...
    def next_open(self, now_ms: int) -> int | None: ...
    def sessions(self, start_ms: int, end_ms: int) -> tuple[np.ndarray, np.ndarray]: ...


def _grid_offset(timeframe: str) -> int:
    return WEEK_OFFSET_MS if timeframe == "1w" else 0


class AlwaysOpen:
    """24/7 (crypto): the UTC grid, the UTC day; bit-identical to the code before calendars."""

    name = "24x7"
    mode = "24x7"
    tz = "UTC"

    @property
    def always_open(self) -> bool:
        return True

    def widest(self) -> AlwaysOpen:
        return self

    def trading_day(self, ts: np.ndarray) -> np.ndarray:
        return np.ones(np.shape(ts), dtype=bool)

    def on_grid(self, ts: np.ndarray, timeframe: str) -> np.ndarray:
        return (np.asarray(ts, dtype=np.int64) - _grid_offset(timeframe)) % timeframe_ms(timeframe) == 0

    def contains(self, ts: np.ndarray, tf_ms: int) -> np.ndarray:
        return np.ones(np.shape(ts), dtype=bool)

    def day_ids(self, ts: np.ndarray) -> np.ndarray:
        return np.asarray(ts, dtype=np.int64) // DAY_MS

    def buckets(self, ts: np.ndarray, timeframe: str) -> tuple[np.ndarray, np.ndarray]:
        tf = timeframe_ms(timeframe)
        t = np.asarray(ts, dtype=np.int64)
        start = t - (t - _grid_offset(timeframe)) % tf
        return start, start + tf

    def bar_index(self, ts: np.ndarray, timeframe: str) -> np.ndarray:
        return (np.asarray(ts, dtype=np.int64) - _grid_offset(timeframe)) // timeframe_ms(timeframe)

    def next_bars(self, ts: int, n: int, timeframe: str) -> np.ndarray:
        return int(ts) + timeframe_ms(timeframe) * np.arange(1, n + 1, dtype=np.int64)

    def bar_times(self, start_ms: int, end_ms: int, timeframe: str) -> np.ndarray:
        tf, off = timeframe_ms(timeframe), _grid_offset(timeframe)
        first = start_ms + (-(start_ms - off)) % tf
        return np.arange(first, end_ms, tf, dtype=np.int64)

    def bars_per_year(self, timeframe: str) -> float:
        return 365.0 * DAY_MS / timeframe_ms(timeframe)  # the kernel's convention before calendars

    def session_at(self, now_ms: int) -> tuple[int, int] | None:
        d = int(now_ms) // DAY_MS * DAY_MS
        return d, d + DAY_MS

    def next_open(self, now_ms: int) -> int | None:
        return int(now_ms)

    def sessions(self, start_ms: int, end_ms: int) -> tuple[np.ndarray, np.ndarray]:
        opens = np.arange(start_ms // DAY_MS * DAY_MS, end_ms, DAY_MS, dtype=np.int64)
        return opens, opens + DAY_MS


@dataclass(frozen=True)
class SessionTable:
    """Every session of one exchange and mode, as sorted int64 ms arrays (opens[i] < closes[i] <= opens[i+1])."""

    opens: np.ndarray
    closes: np.ndarray
    regular_closes: np.ndarray  # the regular session's close (early closes visible in extended mode too)
    day_starts: np.ndarray  # local midnight starting each session's date (a bar on no such date is a glitch)


@functools.lru_cache(maxsize=8)
def session_table(code: str, mode: str) -> SessionTable:
    """The session table of exchange ``code`` in ``mode`` (rth | extended); built once per process
    (about 0.2 s), offline."""
    import exchange_calendars as xcals

    if code not in EXCHANGES:
        raise ValueError(f"unknown exchange calendar {code!r}; known: {', '.join(EXCHANGES)}")
    tz, ext_open, ext_close, early_post = EXCHANGES[code]
    end = (pd.Timestamp.now(tz="UTC") + pd.DateOffset(years=TABLE_YEARS_AHEAD)).strftime("%Y-%m-%d")
    cal = xcals.get_calendar(code, start=TABLE_START, end=end)
    opens = pd.DatetimeIndex(cal.opens).as_unit("ms").asi8.astype(np.int64)
    closes = pd.DatetimeIndex(cal.closes).as_unit("ms").asi8.astype(np.int64)
    days = pd.DatetimeIndex(cal.sessions)  # session labels (naive dates)

    def local(hhmm: str) -> np.ndarray:
        stamps = (days + pd.Timedelta(hours=int(hhmm[:2]), minutes=int(hhmm[3:]))).tz_localize(tz)
        return stamps.tz_convert("UTC").as_unit("ms").asi8.astype(np.int64)

    if mode == "rth":
        return SessionTable(opens, closes, closes, local("00:00"))
    if mode != "extended":
        raise ValueError(f"session mode {mode!r}: allowed rth, extended")
    regular_close_local = pd.DatetimeIndex(cal.closes).tz_convert(tz)
    early = (regular_close_local.hour * 60 + regular_close_local.minute) < 16 * 60
    ext_closes = np.where(early, local(early_post), local(ext_close))
    return SessionTable(local(ext_open), ext_closes.astype(np.int64), closes, local("00:00"))


class SessionCalendar:
    """An exchange's sessions (``rth`` or ``extended``); see the module doc for the bar arithmetic."""

    def __init__(self, code: str = "XNYS", mode: str = "rth") -> None:
        if mode not in ("rth", "extended"):
            raise ValueError(f"session mode {mode!r} for {code}: allowed rth, extended (24x7 is AlwaysOpen)")
        self.name = code
        self.mode = mode
        self.tz = EXCHANGES[code][0] if code in EXCHANGES else "UTC"
        self._cum: dict[str, np.ndarray] = {}
        self._cur = (0, 0)  # the last session bucket_of looked up: live bars fall in it (no search)

    def __repr__(self) -> str:
        return f"SessionCalendar({self.name!r}, {self.mode!r})"

    @property
    def always_open(self) -> bool:
        return False

    @property
    def table(self) -> SessionTable:
        return session_table(self.name, self.mode)

    def widest(self) -> SessionCalendar:
        """The same exchange in extended mode: a bar outside it is outside ANY session."""
        return self if self.mode == "extended" else SessionCalendar(self.name, "extended")

    def trading_day(self, ts: np.ndarray) -> np.ndarray:
        """Bars on a date that has a session (local time). Anything on a Saturday, a holiday or an
        ad-hoc closure is no market data at all: validation's ``outside_session``."""
        x = np.asarray(ts, dtype=np.int64)
        d = self.table.day_starts
        i = np.searchsorted(d, x, side="right") - 1
        return (i >= 0) & (x - d[np.maximum(i, 0)] < DAY_MS)

    def on_grid(self, ts: np.ndarray, timeframe: str) -> np.ndarray:
        """On the UTC grid (vendor bars: Alpaca's clock-aligned hours) or on the session grid (open + k*tf;
        daily: the open, see sessions.align_daily)."""
        tf = timeframe_ms(timeframe)
        x = np.asarray(ts, dtype=np.int64)
        s = self._session(x)
        o = self.table.opens[np.maximum(s, 0)]
        session_grid = (s >= 0) & (((x - o) % tf == 0) if tf < DAY_MS else (x == o))
        return session_grid | ((x % tf == 0) & (tf < DAY_MS))

    # ---- sessions
    def _session(self, ts: np.ndarray) -> np.ndarray:
        """Index of the session whose [open, close) holds each ts; -1 outside every session."""
        t = self.table
        x = np.asarray(ts, dtype=np.int64)
        i = np.searchsorted(t.opens, x, side="right") - 1
        ok = (i >= 0) & (x < t.closes[np.maximum(i, 0)])
        return np.where(ok, i, -1)

    def contains(self, ts: np.ndarray, tf_ms: int) -> np.ndarray:
        """Bars [ts, ts + tf) lying wholly inside one session (tf >= a session: the bar opens at the open)."""
        x = np.asarray(ts, dtype=np.int64)
        s = self._session(x)
        t = self.table
        inside = (s >= 0) & (x + tf_ms <= t.closes[np.maximum(s, 0)])
        whole_session = (s >= 0) & (x == t.opens[np.maximum(s, 0)])  # a daily bar stamped at the open
        return inside | (whole_session & (tf_ms >= DAY_MS))

    def day_ids(self, ts: np.ndarray) -> np.ndarray:
        """The session a bar belongs to (bars outside sessions count to the session that opens next)."""
        x = np.asarray(ts, dtype=np.int64)
        s = self._session(x)
        nxt = np.searchsorted(self.table.opens, x, side="right")
        return np.where(s >= 0, s, nxt).astype(np.int64)

    def sessions(self, start_ms: int, end_ms: int) -> tuple[np.ndarray, np.ndarray]:
        """(opens, closes) of the sessions overlapping [start_ms, end_ms)."""
        t = self.table
        lo = int(np.searchsorted(t.closes, start_ms, side="right"))
        hi = int(np.searchsorted(t.opens, end_ms, side="left"))
        return t.opens[lo:hi], t.closes[lo:hi]

    def session_at(self, now_ms: int) -> tuple[int, int] | None:
        s = int(self._session(np.array([now_ms]))[0])
        return None if s < 0 else (int(self.table.opens[s]), int(self.table.closes[s]))

    def next_open(self, now_ms: int) -> int | None:
        i = int(np.searchsorted(self.table.opens, now_ms, side="right"))
        return int(self.table.opens[i]) if i < len(self.table.opens) else None

    # ---- session bars
    def _tf(self, timeframe: str) -> int:
        tf = timeframe_ms(timeframe)
        if tf > DAY_MS:
            raise ValueError(f"timeframe {timeframe}: session calendars build bars up to 1d (the session)")
        return tf

    def _bars_per_session(self, tf: int) -> np.ndarray:
        t = self.table
        if tf >= DAY_MS:
            return np.ones(len(t.opens), dtype=np.int64)
        return -((t.opens - t.closes) // tf)  # ceil: the last bar of a session may be short

    def _cumulative(self, timeframe: str) -> np.ndarray:
        cum = self._cum.get(timeframe)
        if cum is None:
            cum = self._cum[timeframe] = np.r_[0, np.cumsum(self._bars_per_session(self._tf(timeframe)))]
        return cum

    def buckets(self, ts: np.ndarray, timeframe: str) -> tuple[np.ndarray, np.ndarray]:
        """(start, end) of the session bucket holding each ts: start = open + k*tf, end = min(start + tf,
        close); 1d = the session. Raises for a ts outside every session (filter first)."""
        tf = self._tf(timeframe)
        x = np.asarray(ts, dtype=np.int64)
        s = self._session(x)
        if (s < 0).any():
            bad = int(x[np.flatnonzero(s < 0)[0]])
            raise ValueError(f"bar {pd.Timestamp(bad, unit='ms', tz='UTC')} is outside every {self.name} "
                             f"{self.mode} session (filter the series to its sessions first)")
        t = self.table
        o, c = t.opens[s], t.closes[s]
        if tf >= DAY_MS:
            return o, c
        start = o + (x - o) // tf * tf
        return start, np.minimum(start + tf, c)

    def bucket_of(self, ts: int, timeframe: str) -> tuple[int, int]:
        """``buckets`` for one bar, without numpy arrays: the live path (DataProvider) per closed bar."""
        o, c = self._cur
        if not o <= ts < c:
            s = int(self._session(np.array([ts], dtype=np.int64))[0])
            if s < 0:
                self.buckets(np.array([ts], dtype=np.int64), timeframe)  # raises, naming the bar
            o, c = self._cur = int(self.table.opens[s]), int(self.table.closes[s])
        tf = self._tf(timeframe)
        if tf >= DAY_MS:
            return o, c
        start = o + (ts - o) // tf * tf
        return start, min(start + tf, c)

    def bar_index(self, ts: np.ndarray, timeframe: str) -> np.ndarray:
        """Running count of session bars: consecutive session bars differ by exactly 1 across nights,
        weekends and holidays. A ts outside every session gets the index of the last bar before it."""
        tf = self._tf(timeframe)
        x = np.asarray(ts, dtype=np.int64)
        s = self._session(x)
        cum = self._cumulative(timeframe)
        t = self.table
        inside = s >= 0
        si = np.maximum(s, 0)
        within = np.zeros_like(x) if tf >= DAY_MS else (x - t.opens[si]) // tf
        nxt = np.searchsorted(t.opens, x, side="right")
        return np.where(inside, cum[si] + within, cum[np.minimum(nxt, len(cum) - 1)] - 1)

    def bars_to_close(self, ts: np.ndarray, timeframe: str) -> np.ndarray:
        """Session bars left after each bar before its session closes (0 = the session's last bar)."""
        x = np.asarray(ts, dtype=np.int64)
        s = np.maximum(self._session(x), 0)
        return self._cumulative(timeframe)[s + 1] - 1 - self.bar_index(x, timeframe)

    def next_bars(self, ts: int, n: int, timeframe: str) -> np.ndarray:
        """Open times of the n session bars after the bar opening at ``ts`` (a ts outside every session:
        the n bars from the next open). The bar after 15:59 is the next session's 09:30."""
        tf = self._tf(timeframe)
        cum = self._cumulative(timeframe)
        t = self.table
        s = int(self._session(np.array([ts]))[0])
        if s >= 0:
            first = int(self.bar_index(np.array([ts]), timeframe)[0]) + 1
        else:
            first = int(cum[int(np.searchsorted(t.opens, ts, side="right"))])
        j = first + np.arange(n, dtype=np.int64)
        if j[-1] >= cum[-1]:
            raise ValueError(f"{self.name} sessions are only known until "
                             f"{pd.Timestamp(int(t.closes[-1]), unit='ms', tz='UTC'):%Y-%m-%d}")
        si = np.searchsorted(cum, j, side="right") - 1
        return t.opens[si] + (0 if tf >= DAY_MS else (j - cum[si]) * tf)

    def bar_times(self, start_ms: int, end_ms: int, timeframe: str) -> np.ndarray:
        """Every session bar open in [start_ms, end_ms) (expected bars: gap reports, tests)."""
        tf = self._tf(timeframe)
        opens, closes = self.sessions(start_ms, end_ms)
        if not len(opens):
            return np.empty(0, dtype=np.int64)
        if tf >= DAY_MS:
            out = opens
        else:
            counts = -((opens - closes) // tf)
            rep = np.repeat(opens, counts)
            k = np.arange(int(counts.sum())) - np.repeat(np.r_[0, np.cumsum(counts)[:-1]], counts)
            out = rep + k * tf
        return out[(out >= start_ms) & (out < end_ms)]

    def bars_per_year(self, timeframe: str) -> float:
        """Mean session bars per calendar year over the complete years 2010-2024 (Sharpe annualisation:
        1m RTH ~ 97,900, not 525,600)."""
        per = self._bars_per_session(self._tf(timeframe))
        t = self.table
        lo = pd.Timestamp("2010-01-01", tz="UTC").value // 1_000_000
        hi = pd.Timestamp("2025-01-01", tz="UTC").value // 1_000_000
        sel = (t.opens >= lo) & (t.opens < hi)
        if not sel.any():
            return float(per.sum()) / max(1.0, len(per) / 252.0)
        return float(per[sel].sum()) / 15.0


def make_calendar(code: str | None, mode: str) -> Calendar:
    """``24x7`` (or no exchange calendar) -> AlwaysOpen; else the exchange's sessions in ``mode``."""
    if mode == "24x7" or code is None:
        return AlwaysOpen()
    return SessionCalendar(code, mode)


def fmt_local(ts_ms: int, cal: Calendar, fmt: str = "%a %Y-%m-%d %H:%M %Z") -> str:
    """A timestamp in the calendar's own time zone (``Mon 2025-01-13 09:30 EST``)."""
    if not math.isfinite(ts_ms):
        return "-"
    return pd.Timestamp(int(ts_ms), unit="ms", tz="UTC").tz_convert(cal.tz).strftime(fmt)
