"""The market model: a symbol trades on a venue, and the venue has a calendar.

Crypto venues (every ccxt exchange, and Alpaca's crypto pairs) trade 24/7. Alpaca's stocks (tickers such
as AMZN or QQQ) follow the NYSE calendar. Per symbol, config.yaml ``markets.<SYMBOL>`` may set the venue
(``exchange``) and which hours count (``session: rth | extended | 24x7``); the defaults are: a ticker
trades on ``alpaca`` in regular trading hours, a pair trades on ``data.exchange`` 24/7.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from core.config import AppConfig, is_ticker
from core.market.calendar import AlwaysOpen, Calendar, make_calendar

STOCK_VENUES: dict[str, str] = {"alpaca": "XNYS"}  # venue id -> the calendar of its stocks


@dataclass(frozen=True)
class Market:
    exchange: str
    symbol: str
    kind: str  # "crypto" | "stock"
    session: str  # "rth" | "extended" | "24x7"
    calendar: Calendar = field(default_factory=AlwaysOpen, compare=False)

    @property
    def is_stock(self) -> bool:
        return self.kind == "stock"

    @property
    def always_open(self) -> bool:
        return self.calendar.always_open


def market_for(cfg: AppConfig | None, symbol: str, exchange: str | None = None) -> Market:
    """The market of ``symbol`` (``exchange`` overrides the configured venue, e.g. a file imported with
    --exchange). Stocks: a ticker on a stock venue; everything else is crypto and trades 24/7."""
    mc = cfg.markets.get(symbol) if cfg is not None else None
    stock = is_ticker(symbol)
    default_exchange = "alpaca" if stock else (cfg.data.exchange if cfg is not None else "binanceus")
    venue = exchange or (mc.exchange if mc is not None and mc.exchange else default_exchange)
    if stock and venue not in STOCK_VENUES:
        raise ValueError(f"{symbol} looks like a stock ticker but exchange {venue!r} has no stock calendar; "
                         f"stock venues: {', '.join(STOCK_VENUES)} (crypto symbols are pairs like BTC/USD)")
    session = (mc.session if mc is not None and mc.session else None) or ("rth" if stock else "24x7")
    code = STOCK_VENUES.get(venue) if stock else None
    return Market(exchange=venue, symbol=symbol, kind="stock" if stock else "crypto",
                  session=session if code else "24x7", calendar=make_calendar(code, session))


def calendar_for(cfg: AppConfig | None, symbol: str, exchange: str | None = None) -> Calendar:
    return market_for(cfg, symbol, exchange).calendar
