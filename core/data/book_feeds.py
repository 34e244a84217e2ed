"""Venue feeds: turn one exchange's raw websocket frames (and REST snapshot answers) into book syncs.

A feed knows its exchange's wire format only; the sync rules live in the ``*Sync`` classes. The same
feed object serves the live websocket source, the replay of recorded captures and the tests, so a
recorded frame goes through exactly the code a live one does. ``on_ws`` returns the ccxt symbol whose
book changed (None otherwise); trades seen on the stream are kept (bounded) for the heatmap dots.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import orjson

from core.data.book import BookSync
from core.data.book_binance import BinanceSync

FUTURES_VENUES = {"binanceusdm", "binancecoinm"}


@dataclass(frozen=True, slots=True)
class BookTrade:
    ts_ms: int
    price: float
    amount: float  # venue units (contracts on inverse futures)
    side: str  # taker side


class VenueFeed:
    venue: str = ""

    def __init__(self, venue: str, symbols: dict[str, str]) -> None:
        """``symbols``: exchange-native id -> ccxt symbol."""
        self.venue = venue
        self.native = dict(symbols)
        self.syncs: dict[str, BookSync] = {}
        self.trades: deque[BookTrade] = deque(maxlen=20_000)
        self.frames = 0
        self.unparsed = 0

    def on_ws(self, payload: str | bytes, recv_ms: int) -> str | None:
        raise NotImplementedError

    def on_http(self, payload: str | bytes, recv_ms: int, symbol: str) -> None:
        """A REST snapshot answer for ``symbol`` (venues that sync from REST)."""

    def needs_snapshot(self) -> list[str]:
        return [s for s, sy in self.syncs.items() if sy.needs_snapshot]


class BinanceFeed(VenueFeed):
    """Combined streams (``{"stream":..,"data":..}``) of spot and USD-M / COIN-M futures."""

    def __init__(self, venue: str, symbols: dict[str, str]) -> None:
        super().__init__(venue, symbols)
        futures = venue in FUTURES_VENUES
        for sym in self.native.values():
            self.syncs[sym] = BinanceSync(sym, futures=futures, venue=venue)

    def on_ws(self, payload: str | bytes, recv_ms: int) -> str | None:
        self.frames += 1
        msg = orjson.loads(payload)
        data = msg.get("data", msg)
        etype = data.get("e")
        sym = self.native.get(data.get("s", ""))
        if sym is None:
            self.unparsed += 1
            return None
        if etype == "depthUpdate":
            sync = self.syncs[sym]
            assert isinstance(sync, BinanceSync)
            return sym if sync.on_diff(data, recv_ms) else None
        if etype == "trade" or etype == "aggTrade":
            # m = buyer is maker -> the taker sold
            self.trades.append(BookTrade(int(data["T"]), float(data["p"]), float(data["q"]),
                                         "sell" if data["m"] else "buy"))
        return None

    def on_http(self, payload: str | bytes, recv_ms: int, symbol: str) -> None:
        sync = self.syncs[symbol]
        assert isinstance(sync, BinanceSync)
        sync.on_snapshot(orjson.loads(payload), recv_ms)
