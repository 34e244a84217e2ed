"""Live book source: one websocket connection per venue, the venue's own diff stream, our own sync.

ccxt.pro's ``watch_order_book`` hides the sequence numbers and checksums it checks (and how often it
resynced), so the source speaks each exchange's public stream itself and hands every frame to the
venue feed (core/data/book_feeds.py) whose sync classes count gaps, checksum failures and crossed
books. REST snapshots (Binance, Bitstamp) are fetched after subscribing and again after any resync;
stream-snapshot venues (Kraken, OKX, Bybit, Coinbase, Gemini) reconnect to get a fresh one. Every raw
frame can be handed to a recorder (``book record``) so a session can be replayed exactly.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import aiohttp
import websockets

from core.data.book_feeds import (
    BinanceFeed,
    BitstampFeed,
    BybitFeed,
    CoinbaseFeed,
    GeminiFeed,
    KrakenFeed,
    OkxFeed,
    VenueFeed,
)
from core.data.book_replay import RawMessage

log = logging.getLogger(__name__)

REST_SNAPSHOT_VENUES = {"binance", "binanceusdm", "binancecoinm", "bitstamp"}


@dataclass
class Endpoint:
    """Where a venue's book stream lives; tests point ``ws_url`` / ``rest_base`` at local servers."""

    ws_url: str
    subscribe: list[str] = field(default_factory=list)
    rest_base: str = ""
    snapshot_path: Callable[[str], str] | None = None  # native id -> path of the REST snapshot


def native_id(venue: str, symbol: str) -> str:
    """ccxt symbol -> the id the venue's stream uses (BTC/USDT -> BTCUSDT, BTC-USDT, XBT/USDT ...)."""
    base, _, rest = symbol.partition("/")
    quote, _, settle = rest.partition(":")
    if venue == "binancecoinm":
        return f"{base}{quote}_PERP"
    if venue in ("binance", "binanceusdm", "bybit", "gemini"):
        return f"{base}{quote}"
    if venue == "kraken":
        return f"{'XBT' if base == 'BTC' else base}/{quote}"
    if venue == "okx":
        return f"{base}-{quote}-SWAP" if settle else f"{base}-{quote}"
    if venue == "coinbase":
        return f"{base}-{quote}"
    if venue == "bitstamp":
        return f"{base}{quote}".lower()
    raise ValueError(f"orderbook venue {venue!r}: not supported (one of binance, binanceusdm, binancecoinm, "
                     "kraken, okx, bybit, coinbase, gemini, bitstamp)")


def make_feed(venue: str, natives: dict[str, str]) -> VenueFeed:
    if venue in ("binance", "binanceusdm", "binancecoinm"):
        return BinanceFeed(venue, natives)
    feeds: dict[str, type[VenueFeed]] = {"kraken": KrakenFeed, "okx": OkxFeed, "bybit": BybitFeed,
                                         "coinbase": CoinbaseFeed, "gemini": GeminiFeed, "bitstamp": BitstampFeed}
    if venue not in feeds:
        native_id(venue, "BTC/USDT")  # raises the one-line error
    return feeds[venue](venue, natives)


def public_endpoint(venue: str, natives: list[str]) -> Endpoint:
    """The exchanges' public market-data streams (no keys needed)."""
    if venue in ("binance", "binanceusdm", "binancecoinm"):
        host = {"binance": "stream.binance.com:9443", "binanceusdm": "fstream.binance.com",
                "binancecoinm": "dstream.binance.com"}[venue]
        speed = "100ms" if venue == "binance" else "0ms"
        streams = "/".join(f"{n.lower()}@depth@{speed}/{n.lower()}@trade" for n in natives)
        rest = {"binance": "https://api.binance.com", "binanceusdm": "https://fapi.binance.com",
                "binancecoinm": "https://dapi.binance.com"}[venue]
        path = {"binance": "/api/v3/depth", "binanceusdm": "/fapi/v1/depth", "binancecoinm": "/dapi/v1/depth"}[venue]
        return Endpoint(f"wss://{host}/stream?streams={streams}", [], rest,
                        lambda n: f"{path}?symbol={n}&limit=1000")
    if venue == "kraken":
        return Endpoint("wss://ws.kraken.com", [json.dumps({"event": "subscribe", "pair": natives,
                                                            "subscription": {"name": "book", "depth": 1000}})])
    if venue == "okx":
        return Endpoint("wss://ws.okx.com:8443/ws/v5/public", [json.dumps(
            {"op": "subscribe", "args": [{"channel": "books", "instId": n} for n in natives]})])
    if venue == "bybit":
        return Endpoint("wss://stream.bybit.com/v5/public/spot", [json.dumps(
            {"op": "subscribe", "args": [f"orderbook.200.{n}" for n in natives]})])
    if venue == "coinbase":
        return Endpoint("wss://advanced-trade-ws.coinbase.com", [json.dumps(
            {"type": "subscribe", "product_ids": natives, "channel": "level2"})])
    if venue == "gemini":
        return Endpoint("wss://api.gemini.com/v2/marketdata/", [json.dumps(
            {"type": "subscribe", "subscriptions": [{"name": "l2", "symbols": natives}]})])
    if venue == "bitstamp":
        return Endpoint("wss://ws.bitstamp.net/", [json.dumps(
            {"event": "bts:subscribe", "data": {"channel": f"diff_order_book_{n}"}}) for n in natives],
            "https://www.bitstamp.net", lambda n: f"/api/v2/order_book/{n}")
    native_id(venue, "BTC/USDT")
    raise AssertionError


class WsBookSource:
    """Runs one venue's stream into its feed until ``stop`` is set or the server closes (``reconnect``
    False). ``on_change(venue, symbol)`` after every applied update; ``recorder`` gets every raw frame."""

    def __init__(self, feed: VenueFeed, endpoint: Endpoint,
                 on_change: Callable[[str, str], None] | None = None,
                 recorder: Callable[[RawMessage], None] | None = None, reconnect: bool = True,
                 deliver: Callable[[RawMessage], None] | None = None) -> None:
        self.feed = feed
        self.endpoint = endpoint
        self.on_change = on_change
        self.recorder = recorder
        self.deliver = deliver  # e.g. BookEngine.on_message (which feeds this same feed); None: the feed directly
        self.reconnect = reconnect
        self.connected = False
        self.connects = 0
        self.snapshots = 0
        self.bad_frames = 0
        self.by_native = {s: n for n, s in feed.native.items()}

    async def run(self, stop: asyncio.Event | None = None) -> None:
        stop = stop or asyncio.Event()
        async with aiohttp.ClientSession() as http:
            while not stop.is_set():
                try:
                    await self._session(http, stop)
                except (OSError, websockets.WebSocketException) as exc:
                    log.warning("%s book stream: %s", self.feed.venue, exc)
                self.connected = False
                if not self.reconnect:
                    return
                await asyncio.sleep(1.0)

    async def _session(self, http: aiohttp.ClientSession, stop: asyncio.Event) -> None:
        async with websockets.connect(self.endpoint.ws_url, max_size=2**24) as ws:
            self.connected = True
            self.connects += 1
            for msg in self.endpoint.subscribe:
                await ws.send(msg)
            rest = self.feed.venue in REST_SNAPSHOT_VENUES
            resyncs_at_start = self._resyncs()
            fetching: asyncio.Task | None = None
            if rest:  # the stream is open and buffering: now the snapshots (Binance's order of things)
                fetching = asyncio.create_task(self._snapshots(http, list(self.feed.syncs)))
            async for frame in ws:
                now_ns = time.time_ns()
                text = frame if isinstance(frame, str) else frame.decode()
                if self.recorder is not None:
                    self.recorder(RawMessage(now_ns, self.feed.venue, "", "ws", text))
                try:
                    if self.deliver is not None:
                        self.deliver(RawMessage(now_ns, self.feed.venue, "", "ws", text))
                        sym = None
                    else:
                        sym = self.feed.on_ws(frame, now_ns // 1_000_000)
                except (ValueError, KeyError, TypeError, IndexError, AttributeError) as exc:
                    self._bad_frame(text, exc)
                    sym = None
                if sym is not None and self.on_change is not None:
                    self.on_change(self.feed.venue, sym)
                lost = [s for s, sy in self.feed.syncs.items() if sy.needs_snapshot]
                if rest and lost and (fetching is None or fetching.done()):
                    fetching = asyncio.create_task(self._snapshots(http, lost))
                elif not rest and self._resyncs() > resyncs_at_start:
                    return  # a book was lost on this connection: re-subscribe on a fresh one for a fresh snapshot
                if stop.is_set():
                    return
            if fetching is not None:
                await fetching
            lost = [s for s, sy in self.feed.syncs.items() if sy.needs_snapshot]
            if rest and lost:  # the stream ended while a snapshot was being fetched
                await self._snapshots(http, lost)

    def _resyncs(self) -> int:
        return sum(sy.stats.resync_count for sy in self.feed.syncs.values())

    def _bad_frame(self, text: str, exc: Exception) -> None:
        """A frame that cannot be read may have carried an update of any book of the feed: each synced book
        is resynced (counted as ``bad_frame``) rather than left possibly wrong; the stream goes on."""
        self.bad_frames += 1
        if self.bad_frames <= 3 or self.bad_frames % 1000 == 0:
            log.warning("%s book stream: unreadable frame #%d (%s: %s): %.80s", self.feed.venue, self.bad_frames,
                        type(exc).__name__, exc, text)
        for sync in self.feed.syncs.values():
            if sync.synced:
                sync.resync("bad_frame")

    async def _snapshots(self, http: aiohttp.ClientSession, symbols: list[str]) -> None:
        assert self.endpoint.snapshot_path is not None
        for sym in symbols:
            native = self.by_native[sym]
            url = self.endpoint.rest_base + self.endpoint.snapshot_path(native)
            async with http.get(url) as resp:
                resp.raise_for_status()
                body = await resp.text()
            now_ns = time.time_ns()
            if self.recorder is not None:
                self.recorder(RawMessage(now_ns, self.feed.venue, sym, "http", body))
            if self.deliver is not None:
                self.deliver(RawMessage(now_ns, self.feed.venue, sym, "http", body))
            else:
                self.feed.on_http(body, now_ns // 1_000_000, sym)
            self.snapshots += 1

    def status(self) -> dict:
        """Per-venue source status for the page: connected, resyncs, gaps, lag."""
        syncs = self.feed.syncs.values()
        return {"venue": self.feed.venue, "connected": self.connected, "connects": self.connects,
                "synced": all(s.synced for s in syncs),
                "resyncs": sum(s.stats.resync_count for s in syncs), "gaps": sum(s.stats.gaps for s in syncs),
                "bad_frames": self.bad_frames,
                "lag_ms": max((s.stats.lag_ms for s in syncs), default=0)}
