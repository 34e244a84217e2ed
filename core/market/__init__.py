"""Markets and their calendars: crypto trades 24/7, stocks in their exchange's sessions (DESIGN.md:
every count of bars counts session bars)."""

from core.market.calendar import (
    DAY_MS,
    SESSION_MODES,
    AlwaysOpen,
    Calendar,
    SessionCalendar,
    fmt_local,
    make_calendar,
    session_table,
)
from core.market.model import STOCK_VENUES, Market, calendar_for, market_for
from core.market.sessions import (
    SessionFlat,
    SessionSplit,
    align_daily,
    filter_session,
    session_candles,
    session_flat,
)

__all__ = [
    "DAY_MS",
    "SESSION_MODES",
    "STOCK_VENUES",
    "AlwaysOpen",
    "Calendar",
    "Market",
    "SessionCalendar",
    "SessionFlat",
    "SessionSplit",
    "align_daily",
    "calendar_for",
    "filter_session",
    "fmt_local",
    "make_calendar",
    "market_for",
    "session_candles",
    "session_flat",
    "session_table",
]
