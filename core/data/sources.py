"""All sources speak one async interface (``Source``): ccxt live/REST, stored-candle replay, files.
The implementations live in their own modules; this one re-exports them."""

from __future__ import annotations

from core.config import AppConfig, Secrets
from core.data.alpaca_source import AlpacaSource
from core.data.ccxt_source import (
    ALTERNATIVE_EXCHANGES,
    CcxtSource,
    ExchangeUnavailableError,
    make_exchange,
    ohlcv_to_frame,
    trades_to_frame,
    unavailable_message,
)
from core.data.files import FileSource, candles_from_trades, load_file, load_trades, parse_series_name, to_ms
from core.data.replay import ReplaySource
from core.data.source_base import Emit, Source, SourceStatus
from core.market import Market

__all__ = [
    "ALTERNATIVE_EXCHANGES",
    "AlpacaSource",
    "CcxtSource",
    "Emit",
    "ExchangeUnavailableError",
    "FileSource",
    "ReplaySource",
    "Source",
    "SourceStatus",
    "candles_from_trades",
    "load_file",
    "load_trades",
    "make_exchange",
    "ohlcv_to_frame",
    "parse_series_name",
    "source_for",
    "to_ms",
    "trades_to_frame",
    "unavailable_message",
]


def source_for(cfg: AppConfig, market: Market, timeframe: str, *, websocket: bool,
               secrets: Secrets | None = None) -> CcxtSource | AlpacaSource:
    """The market-data source of a market: Alpaca (stocks and Alpaca crypto) or a ccxt exchange."""
    d = cfg.data
    if market.exchange == "alpaca":
        a, sec = cfg.alpaca, secrets or Secrets.from_env()
        return AlpacaSource([market.symbol], timeframe, feed=a.feed, data_url=a.data_url, stream_url=a.stream_url,
                            key_id=sec.alpaca_key_id, secret_key=sec.alpaca_secret_key, websocket=websocket,
                            poll_interval_s=d.poll_interval_s, reconnect_initial_s=d.reconnect_initial_s,
                            reconnect_max_s=d.reconnect_max_s, backfill_bars=d.backfill_bars,
                            page_limit=a.page_limit, requests_per_min=a.requests_per_min,
                            calendar=market.calendar, trades=a.trades_1s)
    return CcxtSource(market.exchange, [market.symbol], timeframe, websocket=websocket,
                      poll_interval_s=d.poll_interval_s, reconnect_initial_s=d.reconnect_initial_s,
                      reconnect_max_s=d.reconnect_max_s, backfill_bars=d.backfill_bars)
