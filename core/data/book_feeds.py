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
from core.data.book_stream import StreamSync, kraken_checksum, okx_checksum

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
        if (b"@bookTicker" in payload[:48]) if isinstance(payload, bytes) else ("@bookTicker" in payload[:48]):
            return None  # best bid/ask ticks: the book already has them (not parsed: most frames are these)
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


def _ms(x: object) -> int:
    return int(float(str(x)) * 1000) if x not in (None, "") else 0


class KrakenFeed(VenueFeed):
    """Kraken v1 ``book`` channel: ``[chan, {"as","bs"}, "book-N", pair]`` snapshot, then updates
    ``[chan, {"a"}, {"b", "c"}, "book-N", pair]`` with a CRC32 checksum ``c`` over the 10 best levels."""

    def __init__(self, venue: str, symbols: dict[str, str], depth: int = 1000) -> None:
        super().__init__(venue, symbols)
        for sym in self.native.values():
            self.syncs[sym] = StreamSync(sym, venue, checksum=kraken_checksum, depth=depth)

    def on_ws(self, payload: str | bytes, recv_ms: int) -> str | None:
        self.frames += 1
        msg = orjson.loads(payload)
        if not isinstance(msg, list) or len(msg) < 4 or not str(msg[-2]).startswith("book"):
            if isinstance(msg, list) and len(msg) >= 4 and msg[-2] == "trade":
                self._trades(msg[1])
            return None
        sym = self.native.get(msg[-1])
        if sym is None:
            self.unparsed += 1
            return None
        sync = self.syncs[sym]
        assert isinstance(sync, StreamSync)
        parts = msg[1:-2]
        if "as" in parts[0] or "bs" in parts[0]:
            snap = parts[0]
            ok = sync.on_snapshot(snap.get("bs", []), snap.get("as", []), exchange_ms=recv_ms)
            return sym if ok else None
        bids: list = []
        asks: list = []
        checksum = None
        last_ms = 0
        for p in parts:
            bids.extend(p.get("b", ()))
            asks.extend(p.get("a", ()))
            if "c" in p:
                checksum = int(p["c"])
        for lvl in (*bids, *asks):
            last_ms = max(last_ms, _ms(lvl[2]))
        ok = sync.on_update(bids, asks, checksum=checksum, exchange_ms=last_ms, recv_ms=recv_ms)
        return sym if ok else None

    def _trades(self, rows: list) -> None:
        for r in rows:  # [price, volume, time, side b/s, ...]
            self.trades.append(BookTrade(_ms(r[2]), float(r[0]), float(r[1]), "buy" if r[3] == "b" else "sell"))


class OkxFeed(VenueFeed):
    """OKX v5 ``books``: ``action`` snapshot/update, signed CRC32 ``checksum`` over 25 levels a side,
    ``seqId``/``prevSeqId`` when the venue sends them."""

    def __init__(self, venue: str, symbols: dict[str, str]) -> None:
        super().__init__(venue, symbols)
        for sym in self.native.values():
            self.syncs[sym] = StreamSync(sym, venue, checksum=okx_checksum)

    def on_ws(self, payload: str | bytes, recv_ms: int) -> str | None:
        self.frames += 1
        msg = orjson.loads(payload)
        arg = msg.get("arg", {}) if isinstance(msg, dict) else {}
        if "data" not in msg or not str(arg.get("channel", "")).startswith("books"):
            if arg.get("channel") == "trades" and "data" in msg:
                for t in msg["data"]:
                    self.trades.append(BookTrade(int(t["ts"]), float(t["px"]), float(t["sz"]), t["side"]))
            return None
        sym = self.native.get(arg.get("instId", ""))
        if sym is None:
            self.unparsed += 1
            return None
        sync = self.syncs[sym]
        assert isinstance(sync, StreamSync)
        changed = False
        for d in msg["data"]:
            seq = d.get("seqId")
            prev = d.get("prevSeqId")
            ck = d.get("checksum")
            if msg.get("action") == "snapshot":
                changed = sync.on_snapshot(d["bids"], d["asks"], seq=seq, checksum=ck, exchange_ms=int(d["ts"]))
            else:
                changed = sync.on_update(d["bids"], d["asks"], seq=seq, prev_seq=prev, checksum=ck,
                                         exchange_ms=int(d["ts"]), recv_ms=recv_ms)
        return sym if changed else None


class BybitFeed(VenueFeed):
    """Bybit v5 ``orderbook.N.SYMBOL``: snapshot/delta with update id ``u`` (+1 per message; ``u == 1``
    is a fresh snapshot after a service restart)."""

    def __init__(self, venue: str, symbols: dict[str, str], depth: int = 200) -> None:
        super().__init__(venue, symbols)
        for sym in self.native.values():
            self.syncs[sym] = StreamSync(sym, venue, depth=depth)

    def on_ws(self, payload: str | bytes, recv_ms: int) -> str | None:
        self.frames += 1
        msg = orjson.loads(payload)
        topic = str(msg.get("topic", "")) if isinstance(msg, dict) else ""
        if topic.startswith("publicTrade."):
            for t in msg["data"]:
                self.trades.append(BookTrade(int(t["T"]), float(t["p"]), float(t["v"]), t["S"].lower()))
            return None
        if not topic.startswith("orderbook."):
            return None
        d = msg["data"]
        sym = self.native.get(d.get("s", ""))
        if sym is None:
            self.unparsed += 1
            return None
        sync = self.syncs[sym]
        assert isinstance(sync, StreamSync)
        if msg.get("type") == "snapshot" or d.get("u") == 1:
            ok = sync.on_snapshot(d["b"], d["a"], seq=d.get("u"), exchange_ms=int(msg.get("ts", 0)))
        else:
            ok = sync.on_update(d["b"], d["a"], seq=d.get("u"), exchange_ms=int(msg.get("ts", 0)), recv_ms=recv_ms)
        return sym if ok else None


class CoinbaseFeed(VenueFeed):
    """Coinbase Advanced Trade ``level2`` (frames on channel ``l2_data``). ``sequence_num`` counts every
    frame of the connection, so a gap in it resyncs every book of the connection."""

    def __init__(self, venue: str, symbols: dict[str, str]) -> None:
        super().__init__(venue, symbols)
        for sym in self.native.values():
            self.syncs[sym] = StreamSync(sym, venue)
        self.last_seq: int | None = None

    def on_ws(self, payload: str | bytes, recv_ms: int) -> str | None:
        self.frames += 1
        msg = orjson.loads(payload)
        seq = msg.get("sequence_num")
        if seq is not None:
            if self.last_seq is not None and seq != self.last_seq + 1:
                reason = "duplicate" if seq <= self.last_seq else "gap"
                for s in self.syncs.values():
                    if s.synced:
                        s.resync(reason)
            self.last_seq = seq if self.last_seq is None or seq > self.last_seq else self.last_seq
        if msg.get("channel") == "market_trades":
            for ev in msg.get("events", ()):
                for t in ev.get("trades", ()):
                    self.trades.append(BookTrade(0, float(t["price"]), float(t["size"]), t["side"].lower()))
            return None
        if msg.get("channel") != "l2_data":
            return None
        changed = None
        for ev in msg.get("events", ()):
            sym = self.native.get(ev.get("product_id", ""))
            if sym is None:
                self.unparsed += 1
                continue
            sync = self.syncs[sym]
            assert isinstance(sync, StreamSync)
            bids = [(u["price_level"], u["new_quantity"]) for u in ev["updates"] if u["side"] == "bid"]
            asks = [(u["price_level"], u["new_quantity"]) for u in ev["updates"] if u["side"] != "bid"]
            if ev.get("type") == "snapshot":
                ok = sync.on_snapshot(bids, asks)
            else:
                ok = sync.on_update(bids, asks, recv_ms=recv_ms)
            if ok:
                changed = sym
        return changed


class GeminiFeed(VenueFeed):
    """Gemini v2 ``l2``: the first ``changes`` frame of a symbol is its full book, then ``l2_updates``."""

    def __init__(self, venue: str, symbols: dict[str, str]) -> None:
        super().__init__(venue, symbols)
        for sym in self.native.values():
            self.syncs[sym] = StreamSync(sym, venue)

    def on_ws(self, payload: str | bytes, recv_ms: int) -> str | None:
        self.frames += 1
        msg = orjson.loads(payload)
        if not isinstance(msg, dict) or "changes" not in msg:
            return None
        sym = self.native.get(msg.get("symbol", ""))
        if sym is None:
            self.unparsed += 1
            return None
        sync = self.syncs[sym]
        assert isinstance(sync, StreamSync)
        bids = [(c[1], c[2]) for c in msg["changes"] if c[0] == "buy"]
        asks = [(c[1], c[2]) for c in msg["changes"] if c[0] != "buy"]
        for t in msg.get("trades", ()):
            self.trades.append(BookTrade(int(t.get("timestamp", 0)), float(t["price"]), float(t["quantity"]),
                                         t.get("side", "")))
        if "trades" in msg:  # the initial frame carries the full book and recent trades
            ok = sync.on_snapshot(bids, asks, exchange_ms=recv_ms)
        else:
            ok = sync.on_update(bids, asks, recv_ms=recv_ms)
        return sym if ok else None


class BitstampFeed(VenueFeed):
    """Bitstamp ``diff_order_book_<pair>`` + REST ``order_book`` snapshot: diffs are applied when newer
    (``microtimestamp``) than the snapshot; buffered while it is awaited. No sequence numbers, so the
    checks are ordering of microtimestamps and an uncrossed book."""

    def __init__(self, venue: str, symbols: dict[str, str]) -> None:
        super().__init__(venue, symbols)
        for sym in self.native.values():
            self.syncs[sym] = StreamSync(sym, venue)
        self.snap_us: dict[str, int] = {}
        self.last_us: dict[str, int] = {}
        self.pending: dict[str, list[dict]] = {s: [] for s in self.native.values()}

    def on_ws(self, payload: str | bytes, recv_ms: int) -> str | None:
        self.frames += 1
        msg = orjson.loads(payload)
        ch = str(msg.get("channel", ""))
        if msg.get("event") == "trade" and ch.startswith("live_trades_"):
            d = msg["data"]
            self.trades.append(BookTrade(int(d["microtimestamp"]) // 1000, float(d["price"]), float(d["amount"]),
                                         "buy" if d["type"] == 0 else "sell"))
            return None
        if msg.get("event") != "data" or not ch.startswith("diff_order_book_"):
            return None
        sym = self.native.get(ch.removeprefix("diff_order_book_"))
        if sym is None:
            self.unparsed += 1
            return None
        sync = self.syncs[sym]
        if not sync.synced:
            sync.stats.messages += 1
            self.pending[sym].append(msg["data"])
            return None
        return sym if self._apply(sym, msg["data"], recv_ms) else None

    def _apply(self, sym: str, d: dict, recv_ms: int) -> bool:
        sync = self.syncs[sym]
        assert isinstance(sync, StreamSync)
        us = int(d["microtimestamp"])
        if us <= self.snap_us.get(sym, 0):
            sync.stats.dropped_stale += 1
            return False
        if us < self.last_us.get(sym, 0):
            sync.resync("out_of_order")
            return False
        self.last_us[sym] = us
        return sync.on_update(d["bids"], d["asks"], exchange_ms=us // 1000, recv_ms=recv_ms)

    def on_http(self, payload: str | bytes, recv_ms: int, symbol: str) -> None:
        snap = orjson.loads(payload)
        sync = self.syncs[symbol]
        assert isinstance(sync, StreamSync)
        self.snap_us[symbol] = int(snap["microtimestamp"])
        self.last_us[symbol] = 0
        sync.on_snapshot(snap["bids"], snap["asks"], exchange_ms=int(snap["microtimestamp"]) // 1000)
        pending, self.pending[symbol] = self.pending[symbol], []
        for d in pending:
            self._apply(symbol, d, recv_ms)
