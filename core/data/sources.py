"""All sources speak one async interface (``Source``): ccxt live/REST, stored-candle replay, files.
The implementations live in their own modules; this one re-exports them."""

from __future__ import annotations

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

__all__ = [
    "ALTERNATIVE_EXCHANGES",
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
    "to_ms",
    "trades_to_frame",
    "unavailable_message",
]
