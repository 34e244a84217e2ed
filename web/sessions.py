"""Chart helpers for markets with sessions (pure: snapshot data -> numbers and plotly layout pieces).

A stock's chart shows exchange-local time (America/New_York), hides the time between sessions (plotly
``rangebreaks``: nights, weekends, holidays, the afternoon of an early close), marks each session's open and
close, and shades the extended hours when the market is configured ``session: extended``. Crypto (24x7)
charts are untouched: every helper returns its input / nothing for them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from core.market import Calendar, SessionCalendar, fmt_local, make_calendar
from core.snapshot import MarketStatus


def calendar_of(market: MarketStatus) -> Calendar | None:
    """The calendar the snapshot's market status names; None for 24x7."""
    if market.calendar == "24x7" or market.session == "24x7":
        return None
    return make_calendar(market.calendar, market.session)


def to_local(ts: np.ndarray | list[int], market: MarketStatus) -> np.ndarray:
    """UTC ms -> exchange wall-clock ms (plotly draws numbers as naive times); 24x7 unchanged."""
    t = np.asarray(ts, dtype=np.int64)
    if market.tz == "UTC" or calendar_of(market) is None or t.size == 0:
        return t
    idx = pd.DatetimeIndex(pd.to_datetime(t, unit="ms", utc=True)).tz_convert(market.tz)
    return idx.tz_localize(None).as_unit("ms").asi8.astype(np.int64)


@dataclass(frozen=True)
class SessionLayout:
    rangebreaks: list[dict]
    shapes: list[dict]
    key: str  # changes when a session enters or leaves the view: the chart is redrawn then


def _naive(ms: int) -> str:
    return pd.Timestamp(int(ms), unit="ms").strftime("%Y-%m-%d %H:%M:%S")


def session_layout(market: MarketStatus, start_ms: int, end_ms: int) -> SessionLayout | None:
    """Rangebreaks between the sessions overlapping [start_ms, end_ms] (UTC), open/close lines, and the
    extended-hours shading; all in exchange-local chart coordinates."""
    cal = calendar_of(market)
    if cal is None or not isinstance(cal, SessionCalendar) or end_ms <= start_ms:
        return None
    opens, closes = cal.sessions(start_ms, end_ms + 1)
    if not len(opens):
        return None
    lo, lc = to_local(opens, market), to_local(closes, market)
    by_len: dict[int, list[str]] = {}
    for c, o in zip(lc[:-1], lo[1:], strict=True):  # the gaps between consecutive sessions
        by_len.setdefault(int(o - c), []).append(_naive(int(c)))
    breaks = [{"values": v, "dvalue": d} for d, v in sorted(by_len.items())]
    shapes: list[dict] = []
    for o, c in zip(lo, lc, strict=True):
        for x, color in ((int(o), "rgba(0,230,118,0.55)"), (int(c), "rgba(255,82,82,0.55)")):
            shapes.append({"type": "line", "xref": "x", "yref": "paper", "x0": x, "x1": x, "y0": 0, "y1": 1,
                           "line": {"color": color, "width": 1, "dash": "dot"}, "layer": "below"})
    if cal.mode == "extended":
        ro, rc = SessionCalendar(cal.name, "rth").sessions(start_ms, end_ms + 1)
        for a, b in ((lo, to_local(ro, market)), (to_local(rc, market), lc)):
            for x0, x1 in zip(a, b, strict=False):
                shapes.append({"type": "rect", "xref": "x", "yref": "paper", "x0": int(x0), "x1": int(x1),
                               "y0": 0, "y1": 1, "fillcolor": "rgba(120,144,156,0.12)", "line": {"width": 0},
                               "layer": "below"})
    return SessionLayout(breaks, shapes, f"{int(opens[0])}-{int(opens[-1])}")


def market_text(market: MarketStatus) -> str:
    """``open · closes 16:00 EST`` / ``closed · next open Tue 09:30 EST`` / ``24/7``."""
    cal = calendar_of(market)
    if cal is None:
        return "24/7"
    if market.clock_ms is None:
        return f"{market.calendar} {market.session}"
    if market.is_open and market.session_close_ms is not None:
        return f"open · closes {fmt_local(market.session_close_ms, cal, '%H:%M %Z')}"
    nxt = market.next_open_ms
    return "market closed" + (f", next open {fmt_local(nxt, cal, '%a %H:%M %Z')}" if nxt else "")
