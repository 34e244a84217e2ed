"""AlpacaSource against a local fake Alpaca server (aiohttp REST + a websocket server on 127.0.0.1).

The REST answers are alpaca-py's recorded request/response mocks (../shared/data/exchange_fixtures/alpaca_py)
for the paging test, and the real AMZN minute bars of ../shared/data/stocks served in Alpaca's documented
bar layout for the stream test. The fake server itself (its protocol handling) is written here."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import websockets
from aiohttp import web

from core.data.alpaca_source import AlpacaRefused, AlpacaSource, bars_to_frame
from core.data.files import load_file
from core.types import SeriesKey

KEY, SECRET = "test-key-id", "test-secret"  # fake credentials for the fake server


def _mocks(shared_data: Path) -> dict[str, dict[str, Any]]:
    rows = json.loads((shared_data / "exchange_fixtures" / "alpaca_py" / "data_mock_responses.json").read_text())
    return {r["test"]: r["body"] for r in rows if r["file"].endswith("test_historical_stock_data.py")}


async def _serve(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, f"http://127.0.0.1:{port}"


def test_rest_pages_through_recorded_mocks_with_keys_and_feed(shared_data: Path) -> None:
    mocks = _mocks(shared_data)
    first, second = mocks["test_get_bars"], mocks["test_multisymbol_get_bars"]
    seen: list[dict[str, str]] = []

    async def bars(request: web.Request) -> web.Response:
        q = dict(request.query)
        seen.append(q | {"key": request.headers.get("APCA-API-KEY-ID", ""),
                         "secret_sent": str(request.headers.get("APCA-API-SECRET-KEY") == SECRET)})
        if len(seen) == 1:  # a rate-limit answer first: the source must wait and retry
            return web.json_response({"message": "too many requests"}, status=429, headers={"Retry-After": "0.05"})
        return web.json_response(second if q.get("page_token") == first["next_page_token"] else first)

    async def go() -> tuple[pd.DataFrame, list[pd.DataFrame]]:
        app = web.Application()
        app.router.add_get("/v2/stocks/bars", bars)
        runner, url = await _serve(app)
        src = AlpacaSource(["AAPL"], "1d", feed="sip", data_url=url, key_id=KEY, secret_key=SECRET,
                           reconnect_initial_s=0.01, clock=lambda: int(pd.Timestamp("2022-04-01", tz="UTC").value // 10**6))
        pages: list[pd.DataFrame] = []
        try:
            df = await src.fetch_range("AAPL", int(pd.Timestamp("2022-01-01", tz="UTC").value // 10**6),
                                       on_batch=pages.append)
        finally:
            await src.close()
            await runner.cleanup()
        return df, pages

    df, pages = asyncio.run(go())
    expected = pd.concat([bars_to_frame(first["bars"]["AAPL"]), bars_to_frame(second["bars"]["AAPL"])],
                         ignore_index=True)
    pd.testing.assert_frame_equal(df, expected)
    assert len(df) == 3 and len(pages) == 2
    assert len(seen) == 3  # 429, page 1, page 2 (with the token of page 1)
    assert seen[2]["page_token"] == first["next_page_token"] and "page_token" not in seen[1]
    for q in seen:
        assert q["symbols"] == "AAPL" and q["timeframe"] == "1Day" and q["feed"] == "sip"
        assert q["key"] == KEY and q["secret_sent"] == "True"


def test_stock_data_without_keys_is_refused_with_the_variables_named() -> None:
    src = AlpacaSource(["AMZN"], "1m")
    with pytest.raises(AlpacaRefused, match="APCA_API_KEY_ID"):
        asyncio.run(src.fetch_range("AMZN", 0, 60_000))


def _alpaca_bar(row: Any) -> dict[str, Any]:
    t = pd.Timestamp(int(row.ts), unit="ms", tz="UTC").strftime("%Y-%m-%dT%H:%M:%SZ")
    return {"T": "b", "S": "AMZN", "t": t, "o": row.open, "h": row.high, "l": row.low, "c": row.close,
            "v": row.volume, "n": 1, "vw": row.close}


def test_stream_drop_reconnect_backfills_without_gap_or_duplicate(shared_data: Path) -> None:
    """Real AMZN minutes of 2025-01-14 09:30-11:29 ET: 30 by the start-up backfill, then the websocket;
    after bar 60 the server drops the connection, bars 61-70 close while the source is away, the
    source reconnects (back-off), backfills them by REST, and the stream resumes (re-sending bar 70)."""
    df = load_file(shared_data / "stocks" / "AMZN-1m-alpaca-2025-01-13_2025-01-17.csv")
    t0 = int(pd.Timestamp("2025-01-14 14:30", tz="UTC").value // 10**6)
    bars = df[df["ts"] >= t0].head(120).reset_index(drop=True)
    assert (np.diff(bars["ts"]) == 60_000).all()
    ts = bars["ts"].to_numpy(np.int64)
    now = {"ms": int(ts[30])}  # the market clock: bars with ts + 1m <= now exist
    connections: list[int] = []
    dropped = asyncio.Event()

    async def rest(request: web.Request) -> web.Response:
        q = request.query
        lo = int(pd.Timestamp(q["start"]).value // 10**6)
        hi = int(pd.Timestamp(q["end"]).value // 10**6)
        sel = bars[(bars["ts"] >= lo) & (bars["ts"] < hi) & (bars["ts"] + 60_000 <= now["ms"])]
        start = int(q.get("page_token", "0"))
        limit = int(q["limit"])
        page = sel.iloc[start:start + limit]
        token = str(start + limit) if start + limit < len(sel) else None
        return web.json_response({"bars": {"AMZN": [_alpaca_bar(r) for r in page.itertuples()]},
                                  "next_page_token": token})

    async def stream(ws: Any) -> None:
        assert ws.request.path == "/v2/iex"
        connections.append(1)
        await ws.send(json.dumps([{"T": "success", "msg": "connected"}]))
        auth = json.loads(await ws.recv())
        assert auth == {"action": "auth", "key": KEY, "secret": SECRET}
        await ws.send(json.dumps([{"T": "success", "msg": "authenticated"}]))
        sub = json.loads(await ws.recv())
        assert sub["action"] == "subscribe" and sub["bars"] == ["AMZN"]
        await ws.send(json.dumps([{"T": "subscription", "bars": ["AMZN"]}]))
        first = 30 if len(connections) == 1 else 70
        last = 60 if len(connections) == 1 else len(bars) - 1
        for i in range(first, last + 1):
            now["ms"] = int(ts[i]) + 60_000
            await ws.send(json.dumps([_alpaca_bar(bars.iloc[i])]))
            await asyncio.sleep(0.002)
        if len(connections) == 1:
            now["ms"] = int(ts[70]) + 60_000  # bars 61..70 close while the client is away
            dropped.set()
            await ws.close(code=1011, reason="server restart")
            return
        await asyncio.sleep(0.3)

    got: list[pd.DataFrame] = []

    async def go() -> AlpacaSource:
        app = web.Application()
        app.router.add_get("/v2/stocks/bars", rest)
        runner, url = await _serve(app)
        server = await websockets.serve(stream, "127.0.0.1", 0)
        port = list(server.sockets)[0].getsockname()[1]
        src = AlpacaSource(["AMZN"], "1m", feed="iex", data_url=url, stream_url=f"ws://127.0.0.1:{port}",
                           key_id=KEY, secret_key=SECRET, backfill_bars=30, page_limit=7,
                           reconnect_initial_s=0.05, clock=lambda: now["ms"])
        stop = asyncio.Event()

        def emit(key: SeriesKey, frame: pd.DataFrame, closed: bool) -> None:
            assert closed and key == SeriesKey("alpaca", "AMZN", "1m")
            got.append(frame)
            if int(frame["ts"].iat[-1]) == int(ts[-1]):
                stop.set()

        try:
            await asyncio.wait_for(src.run(emit, stop), timeout=30)
        finally:
            server.close()
            await server.wait_closed()
            await runner.cleanup()
        return src

    src = asyncio.run(go())
    out = pd.concat(got, ignore_index=True)
    assert len(connections) == 2 and src.status().reconnects == 1 and src.backoff_delays == [0.05]
    np.testing.assert_array_equal(out["ts"].to_numpy(), ts)  # every bar once, in order: no gap, no duplicate
    pd.testing.assert_frame_equal(out.reset_index(drop=True), bars[list(out.columns)])
