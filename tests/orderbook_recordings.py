"""Helpers for the cryptofeed websocket recordings in ../shared/data/orderbook/ws-recordings: which
connection carries each exchange's book channel, the native ids subscribed, and the feed to parse it."""

from __future__ import annotations

import asyncio
import gzip
import json
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

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


@dataclass
class Conn:
    addr: str
    sends: list[str] = field(default_factory=list)
    frames: list[tuple[float, str]] = field(default_factory=list)


@dataclass
class Recording:
    exchange: str
    conns: dict[str, Conn]
    http: list[tuple[float, str, str]]  # (ts, url, body)


def load_recording(path: Path) -> Recording:
    with gzip.open(path, "rt") as fh:
        header = json.loads(fh.readline())
        conns: dict[str, Conn] = {}
        http = []
        for line in fh:
            d = json.loads(line)
            if d["t"] == "connect":
                conns[d["conn"]] = Conn(d["addr"])
            elif d["t"] == "send":
                conns[d["conn"]].sends.append(d["data"])
            elif d["t"] == "recv":
                conns[d["conn"]].frames.append((d["ts"], d["data"]))
            elif d["t"] == "http":
                http.append((d["ts"], d["url"], d["data"]))
    return Recording(header["exchange"], conns, http)


def book_natives(rec: Recording, conn: Conn) -> list[str]:
    """Native ids whose book the connection subscribed (from the frames actually sent)."""
    ex = rec.exchange
    ids: list[str] = []
    for s in conn.sends:
        m = json.loads(s)
        if ex == "KRAKEN" and m.get("subscription", {}).get("name") == "book":
            ids += m["pair"]
        elif ex == "OKX":
            ids += [a["instId"] for a in m.get("args", []) if a.get("channel") == "books"]
        elif ex == "BYBIT":
            ids += [a.split(".")[-1] for a in m.get("args", []) if a.startswith("orderbook.")]
        elif ex == "COINBASE" and m.get("channel") == "level2":
            ids += m["product_ids"]
        elif ex == "GEMINI":
            ids += [s for sub in m.get("subscriptions", []) if sub["name"] == "l2" for s in sub["symbols"]]
        elif ex == "BITSTAMP" and m.get("data", {}).get("channel", "").startswith("diff_order_book_"):
            ids.append(m["data"]["channel"].removeprefix("diff_order_book_"))
    if ex == "BINANCE":
        ids = [s.split("@")[0].upper() for s in re.findall(r"[a-z0-9]+@depth", conn.addr)]
    return sorted(set(ids))


def book_feed(rec: Recording, conn: Conn) -> VenueFeed:
    ex = rec.exchange
    natives = {n: n for n in book_natives(rec, conn)}
    if ex == "KRAKEN":
        depth = next(json.loads(s)["subscription"].get("depth", 10) for s in conn.sends
                     if json.loads(s).get("subscription", {}).get("name") == "book")
        return KrakenFeed("kraken", natives, depth=depth)
    if ex == "OKX":
        return OkxFeed("okx", natives)
    if ex == "BYBIT":
        return BybitFeed("bybit", natives)
    if ex == "COINBASE":
        return CoinbaseFeed("coinbase", natives)
    if ex == "GEMINI":
        return GeminiFeed("gemini", natives)
    if ex == "BITSTAMP":
        return BitstampFeed("bitstamp", natives)
    if ex == "BINANCE":
        return BinanceFeed("binance", natives)
    raise ValueError(ex)


def snapshot_symbol(rec: Recording, url: str) -> str | None:
    """Native id a recorded REST book snapshot answers for (Binance depth, Bitstamp order_book)."""
    if rec.exchange == "BINANCE" and "/depth?" in url:
        return re.search(r"symbol=([A-Z0-9]+)", url).group(1)  # type: ignore[union-attr]
    if rec.exchange == "BITSTAMP" and "/order_book/" in url:
        return url.rsplit("/", 1)[-1]
    return None


def book_conns(rec: Recording) -> list[Conn]:
    return [c for c in rec.conns.values() if book_natives(rec, c)]


def snapshot_paths(rec: Recording) -> dict[str, str]:
    """Native id -> path (with query) of its recorded REST snapshot."""
    from urllib.parse import urlsplit

    out = {}
    for _, u, _ in rec.http:
        n = snapshot_symbol(rec, u)
        if n:
            sp = urlsplit(u)
            out[n] = sp.path + ("?" + sp.query if sp.query else "")
    return out


@asynccontextmanager
async def serve_recording(rec: Recording, conn: Conn) -> AsyncIterator[tuple[str, str]]:
    """A local websocket server answering every connection with the recorded frames (then closing),
    and a local HTTP server answering the recorded REST snapshots. Yields (ws_url, http_base)."""
    import websockets
    from aiohttp import web

    frames = [f for _, f in conn.frames]
    paths = snapshot_paths(rec)
    bodies = {paths[snapshot_symbol(rec, u)]: body for _, u, body in rec.http if snapshot_symbol(rec, u)}

    async def handler(ws: websockets.ServerConnection) -> None:
        # a venue answers once subscribed: read the client's subscriptions first (sending everything and
        # closing at once made the client's own subscribe sends fail on a busy machine: a flaky test)
        for _ in conn.sends:
            await asyncio.wait_for(ws.recv(), 30)
        for f in frames:
            await ws.send(f)
        await ws.close()

    async def rest(request: web.Request) -> web.Response:
        body = bodies.get(request.path_qs)
        if body is None:
            return web.Response(status=404)
        return web.Response(text=body, content_type="application/json")

    app = web.Application()
    app.router.add_get("/{tail:.*}", rest)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    http_port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        async with websockets.serve(handler, "127.0.0.1", 0, close_timeout=1) as server:
            port = list(server.sockets)[0].getsockname()[1]
            yield f"ws://127.0.0.1:{port}", f"http://127.0.0.1:{http_port}"
    finally:
        await runner.cleanup()
