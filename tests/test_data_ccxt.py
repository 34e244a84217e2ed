"""CcxtSource without the internet: ccxt's own Binance parsers on hand-written raw payloads, and a
fault-injecting Binance look-alike on 127.0.0.1 (kline websocket + /api/v3/klines REST) serving the REAL
BTC/USDT minutes of ../shared/data, which drops the stream and refuses reconnects to exercise back-off and
the REST backfill of missed candles."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import ccxt
import ccxt.pro
import numpy as np
import pandas as pd
import pytest
from aiohttp import WSMsgType, web

from core.data.ccxt_source import (
    CcxtSource,
    ExchangeUnavailableError,
    ohlcv_to_frame,
    trades_to_frame,
    unavailable_message,
)
from core.data.files import load_file
from core.data.provider import DataProvider
from core.data.store import MarketStore
from core.data.validate import validate_candles, validate_trades
from core.types import SeriesKey

# Hand-written raw Binance payloads (the REST kline array layout and a /api/v3/trades entry); the
# numbers are the first two real BTC/USDT minutes of 2023-03-01 from ../shared/data.
RAW_KLINES = [
    [1677628800000, "23140.48", "23150.77", "23128.52", "23142.31", "2.131777", 1677628859999,
     "49332.39", 120, "1.0", "23141.0", "0"],
    [1677628860000, "23143.89", "23148.80", "23137.61", "23137.77", "0.881378", 1677628919999,
     "20394.21", 61, "0.4", "9254.0", "0"],
]
RAW_TRADES = [
    {"id": 13519807, "price": "0.00141342", "qty": "23", "quoteQty": "0.0325", "time": 1570752011620,
     "isBuyerMaker": True, "isBestMatch": True},
    {"id": 13519808, "price": "0.00141266", "qty": "54", "quoteQty": "0.0763", "time": 1570752011620,
     "isBuyerMaker": False, "isBestMatch": True},
]


def test_ccxt_binance_parsers_to_frames() -> None:
    ex = ccxt.binance()
    rows = [ex.parse_ohlcv(k) for k in RAW_KLINES]
    df = ohlcv_to_frame(rows)
    assert df["ts"].tolist() == [1677628800000, 1677628860000]
    assert df["close"].tolist() == [23142.31, 23137.77] and df["volume"].iat[0] == 2.131777
    assert validate_candles(df, "1m", now_ms=1677628980000).counts == {}
    trades = [ex.parse_trade(t) for t in RAW_TRADES]
    tf = trades_to_frame(trades)
    assert tf["id"].tolist() == ["13519807", "13519808"]
    assert tf["side"].tolist() == ["sell", "buy"]  # buyer is maker -> the taker sold
    assert tf["amount"].tolist() == [23.0, 54.0] and tf["ts"].iat[0] == 1570752011620
    assert validate_trades(tf).counts == {}


def test_region_and_unreachable_messages() -> None:
    msg = unavailable_message("binance", ccxt.ExchangeNotAvailable(
        'binance GET https://api.binance.com/api/v3/exchangeInfo 451  {"code":0,"msg":"Service unavailable '
        'from a restricted location"}'))
    assert msg and "451" in msg and "binanceus" in msg and "kraken" in msg
    msg = unavailable_message("kraken", ccxt.NetworkError("Cannot connect to host api.kraken.com"))
    assert msg and "unreachable" in msg and "binanceus" in msg
    assert unavailable_message("kraken", ccxt.BadSymbol("no such market")) is None


def _num(x: float) -> str:
    return repr(float(x))  # Binance sends numbers as decimal strings


class FakeBinance:
    """Serves real candles as if live: candle ``i`` is in progress; each websocket message starts the
    next candle. Connection 1 is dropped after ``drop_after`` messages and ``skip`` candles pass while
    disconnected; the next ``refuse`` connection attempts are refused (HTTP 503)."""

    def __init__(self, candles: pd.DataFrame, start: int, end: int, drop_after: int, skip: int,
                 refuse: int, advance_on_rest: bool = False, max_limit: int = 1000) -> None:
        self.max_limit = max_limit  # Binance caps a klines page at 1000
        self.advance_on_rest = advance_on_rest  # polling mode: each REST call moves time one candle on
        self.c = candles.reset_index(drop=True)
        self.i = start
        self.end = end
        self.drop_after = drop_after
        self.skip = skip
        self.refuse = refuse
        self.connections = 0
        self.refused = 0
        self.rest_calls = 0
        self.finished = asyncio.Event()

    offset_ms = 0  # moves the clock on without new candles (a quiet market)

    def clock(self) -> int:
        return int(self.c["ts"].iat[self.i]) + 30_000 + self.offset_ms  # half-way through the candle

    def _kline(self, i: int) -> dict:
        r = self.c.iloc[i]
        return {"e": "kline", "E": int(r.ts) + 30_000, "s": "BTCUSDT", "k": {
            "t": int(r.ts), "T": int(r.ts) + 59_999, "s": "BTCUSDT", "i": "1m", "f": 1, "L": 2,
            "o": _num(r.open), "c": _num(r.close), "h": _num(r.high), "l": _num(r.low), "v": _num(r.volume),
            "n": 2, "x": False, "q": "0", "V": "0", "Q": "0", "B": "0"}}

    async def klines(self, request: web.Request) -> web.Response:
        self.rest_calls += 1
        start = int(request.query.get("startTime", 0))
        limit = min(int(request.query.get("limit", 500)), self.max_limit)
        c = self.c.iloc[: self.i + 1]  # up to the candle in progress, as the real API does
        c = c[c["ts"] >= start].iloc[:limit]
        if self.advance_on_rest and self.i < self.end:
            self.i += 1
            if self.i >= self.end:
                self.i = self.end - 1
                self.finished.set()
        body = [[int(r.ts), _num(r.open), _num(r.high), _num(r.low), _num(r.close), _num(r.volume),
                 int(r.ts) + 59_999, "0", 1, "0", "0", "0"] for r in c.itertuples()]
        return web.json_response(body)

    async def stream(self, request: web.Request) -> web.StreamResponse:
        if self.connections >= 1 and self.refused < self.refuse:
            self.refused += 1
            return web.Response(status=503, text="try later")
        self.connections += 1
        conn = self.connections
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        msg = await ws.receive()
        assert msg.type == WSMsgType.TEXT
        sub = json.loads(msg.data)
        await ws.send_json({"result": None, "id": sub["id"]})
        sent = 0
        while self.i < self.end:
            await ws.send_json(self._kline(self.i))
            sent += 1
            await asyncio.sleep(0.02)
            if conn == 1 and sent == self.drop_after:
                self.i += 1 + self.skip  # these candles close while nobody listens
                await ws.close()
                return ws
            self.i += 1
        self.i = self.end - 1
        await ws.send_json(self._kline(self.i))
        self.finished.set()
        while not ws.closed:
            m = await ws.receive()
            if m.type in (WSMsgType.CLOSE, WSMsgType.CLOSED, WSMsgType.ERROR):
                break
        return ws


def _market(base: str, quote: str) -> dict:
    return {
        "id": base + quote, "lowercaseId": (base + quote).lower(), "symbol": f"{base}/{quote}", "base": base,
        "quote": quote, "baseId": base, "quoteId": quote, "settle": None, "settleId": None, "type": "spot",
        "spot": True, "margin": False, "swap": False, "future": False, "option": False, "contract": False,
        "linear": None, "inverse": None, "active": True, "precision": {"amount": 1e-8, "price": 1e-8},
        "limits": {}, "info": {},
    }


def _binance_at(port: int) -> ccxt.pro.binance:
    ex = ccxt.pro.binance({"enableRateLimit": False})
    ex.urls["api"]["ws"]["spot"] = f"ws://127.0.0.1:{port}/stream/ws"  # '/stream' marks a spot url
    ex.urls["api"]["public"] = f"http://127.0.0.1:{port}/api/v3"
    ex.set_markets([_market("BTC", "USDT"), _market("XRP", "ETH")])
    return ex


def test_reconnect_backoff_and_gap_backfill(shared_data: Path) -> None:
    real = load_file(shared_data / "binanceus" / "BTC_USDT-1m.csv").iloc[:80]
    start, end = 20, 60

    async def scenario() -> tuple[CcxtSource, FakeBinance, MarketStore, DataProvider]:
        fake = FakeBinance(real, start=start, end=end, drop_after=6, skip=4, refuse=2)
        app = web.Application()
        app.router.add_get("/api/v3/klines", fake.klines)
        app.router.add_get("/stream/ws/{n}", fake.stream)  # ccxt appends a stream index
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        sleeps: list[float] = []

        async def fake_sleep(d: float) -> None:  # records the back-off, waits only a little
            sleeps.append(d)
            await asyncio.sleep(0.05)

        src = CcxtSource("binance", ["BTC/USDT"], "1m", exchange=_binance_at(port), sleep=fake_sleep,
                         clock=fake.clock, backfill_bars=10, reconnect_initial_s=1.0, reconnect_max_s=3.0,
                         close_check_s=0.05)
        store = MarketStore(":memory:")
        prov = DataProvider(store, "1m", ["1m", "5m"], exchange="binance")
        prov.add_source(src)
        emit = prov._emit_for(src)
        stop = asyncio.Event()
        task = asyncio.create_task(src.run(emit, stop))
        await asyncio.wait_for(fake.finished.wait(), 30)
        key = SeriesKey("binance", "BTC/USDT", "1m")
        async def wait_closed(i: int) -> None:
            for _ in range(200):
                last = store.last_candles(key, 1)
                if not last.empty and int(last["ts"].iat[0]) == int(real["ts"].iat[i]):
                    return
                await asyncio.sleep(0.05)

        await wait_closed(end - 2)  # the last sent candle closes the one before it
        assert store.last_candles(key, 1)["ts"].iat[0] == real["ts"].iat[end - 2]
        fake.offset_ms = 60_000  # no newer candle comes, but the last one's period elapses
        await wait_closed(end - 1)
        stop.set()
        await asyncio.wait_for(task, 10)
        await runner.cleanup()
        assert sleeps == src.backoff_delays
        return src, fake, store, prov

    src, fake, store, prov = asyncio.run(scenario())
    st = src.status()
    assert fake.connections == 2 and fake.refused == 2
    assert st.reconnects == 3  # the drop, then two refused attempts
    assert src.backoff_delays == [1.0, 2.0, 3.0]  # doubling, capped at reconnect_max_s
    key = SeriesKey("binance", "BTC/USDT", "1m")
    got = store.candles(key)
    want = real.iloc[start - 10: end].reset_index(drop=True)  # backfill .. the last candle, closed by time
    assert store.gaps(key) == []
    pd.testing.assert_frame_equal(got, want)  # no candle lost across the drop, values exact
    assert fake.rest_calls >= 2  # the start-up backfill and the one after the drop
    five = prov.snapshot("BTC/USDT", "5m")
    assert len(five) >= 5 and np.isfinite(five.to_numpy()).all()
    assert prov.status()["ccxt:binance"].rejected_rows == 0


def test_rest_polling_fallback(shared_data: Path) -> None:
    real = load_file(shared_data / "binanceus" / "BTC_USDT-1m.csv").iloc[:80]

    async def scenario() -> MarketStore:
        fake = FakeBinance(real, start=20, end=40, drop_after=0, skip=0, refuse=0, advance_on_rest=True)
        app = web.Application()
        app.router.add_get("/api/v3/klines", fake.klines)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        polls: list[float] = []

        async def fake_sleep(d: float) -> None:
            polls.append(d)
            await asyncio.sleep(0.01)

        src = CcxtSource("binance", ["BTC/USDT"], "1m", websocket=False, poll_interval_s=5.0,
                         exchange=_binance_at(port), sleep=fake_sleep, clock=fake.clock, backfill_bars=5)
        store = MarketStore(":memory:")
        prov = DataProvider(store, "1m", ["1m"], exchange="binance")
        prov.add_source(src)
        stop = asyncio.Event()
        task = asyncio.create_task(src.run(prov._emit_for(src), stop))
        await asyncio.wait_for(fake.finished.wait(), 30)
        await asyncio.sleep(0.2)
        stop.set()
        await asyncio.wait_for(task, 10)
        await runner.cleanup()
        assert polls and set(polls) == {5.0}  # polled at poll_interval_s, no back-off
        return store

    store = asyncio.run(scenario())
    got = store.candles(SeriesKey("binance", "BTC/USDT", "1m"))
    assert got["ts"].iat[0] == real["ts"].iat[15]
    assert store.gaps(SeriesKey("binance", "BTC/USDT", "1m")) == []
    pd.testing.assert_frame_equal(got, real.iloc[15:15 + len(got)].reset_index(drop=True))
    assert len(got) >= 20


def test_exchange_refusing_region_stops_with_clear_error() -> None:
    class Refusing:
        has = {"watchOHLCV": True}
        markets = None

        async def load_markets(self) -> None:
            raise ccxt.ExchangeNotAvailable("binance GET https://api.binance.com/api/v3/exchangeInfo 451 "
                                            "Service unavailable from a restricted location")

        async def close(self) -> None:
            return None

    src = CcxtSource("binance", ["BTC/USDT"], "1m", exchange=Refusing())
    with pytest.raises(ExchangeUnavailableError, match="binanceus"):
        asyncio.run(src.run(lambda *a: None, asyncio.Event()))
    assert "451" in (src.status().error or "")


@pytest.mark.network
def test_download_a_few_candles_from_binanceus() -> None:
    async def go() -> pd.DataFrame:
        src = CcxtSource("binanceus", ["BTC/USDT"], "1m", websocket=False)
        try:
            now = src._clock()
            return await src.fetch_range("BTC/USDT", now - 10 * 60_000)
        finally:
            await src.exchange.close()

    df = asyncio.run(go())
    assert 5 <= len(df) <= 10
    assert validate_candles(df, "1m").counts == {}


def test_cli_download_pages_into_the_store(shared_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture) -> None:
    """`data download` against the local fake exchange (run on its own thread), 250 candles per page."""
    import threading

    import main_backtest
    from core.data import ccxt_source

    real = load_file(shared_data / "binanceus" / "BTC_USDT-1m.csv").iloc[:2000]
    fake = FakeBinance(real, start=len(real) - 1, end=len(real), drop_after=0, skip=0, refuse=0, max_limit=250)
    loop = asyncio.new_event_loop()
    started = threading.Event()
    holder: dict = {}

    async def serve() -> None:
        app = web.Application()
        app.router.add_get("/api/v3/klines", fake.klines)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        holder["port"] = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        holder["runner"] = runner
        started.set()

    th = threading.Thread(target=lambda: (loop.run_until_complete(serve()), loop.run_forever()), daemon=True)
    th.start()
    assert started.wait(10)
    monkeypatch.setattr(ccxt_source, "make_exchange", lambda exchange_id, websocket=True: _binance_at(holder["port"]))
    cfg = tmp_path / "config.yaml"
    cfg.write_text(f"data:\n  db_path: {tmp_path / 'dl.duckdb'}\n")
    try:
        rc = main_backtest.main(["--config", str(cfg), "data", "download", "--exchange", "binance", "--symbol",
                                 "BTC/USDT", "--timeframe", "1m", "--since", "2023-03-01T00:00:00Z",
                                 "--until", "2023-03-01T10:00:00Z"])
    finally:
        asyncio.run_coroutine_threadsafe(holder["runner"].cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        th.join(10)
    assert rc == 0
    assert "downloaded 600 candles, stored 600" in capsys.readouterr().out
    assert fake.rest_calls >= 3  # 600 candles at 250 per page
    with MarketStore(tmp_path / "dl.duckdb", read_only=True) as st:
        key = SeriesKey("binance", "BTC/USDT", "1m")
        pd.testing.assert_frame_equal(st.candles(key), real.iloc[:600].reset_index(drop=True))
        assert st.gaps(key) == []


def test_trade_stream_into_store(shared_data: Path) -> None:
    """watch_trades -> DataProvider.ingest_trades -> store, with real XRP/ETH trades sent as Binance
    trade-stream messages by the local server."""
    from core.data.files import load_trades

    trades = load_trades(shared_data / "freqtrade" / "XRP_ETH-trades.csv").iloc[:120]
    done = asyncio.Event()

    async def stream(request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        sub = json.loads((await ws.receive()).data)
        assert sub["params"] == ["xrpeth@trade"]
        await ws.send_json({"result": None, "id": sub["id"]})
        for r in trades.itertuples():
            await ws.send_json({"e": "trade", "E": int(r.ts), "s": "XRPETH", "t": int(r.id), "p": _num(r.price),
                                "q": _num(r.amount), "T": int(r.ts), "m": r.side == "sell", "M": True})
            await asyncio.sleep(0.002)
        done.set()
        await ws.receive()
        return ws

    async def scenario() -> pd.DataFrame:
        app = web.Application()
        app.router.add_get("/stream/ws/{n}", stream)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        ex = _binance_at(port)
        src = CcxtSource("binance", ["XRP/ETH"], "1m", exchange=ex, trades=True, trade_flush_s=0.1)
        writes: list[int] = []
        store_upsert = MarketStore.upsert_trades

        def counting(self: MarketStore, *a: object, **k: object) -> int:
            writes.append(1)
            return store_upsert(self, *a, **k)  # type: ignore[arg-type]

        store = MarketStore(":memory:")
        prov = DataProvider(store, "1m", ["1m"], exchange="binance")
        prov.add_source(src)  # wires the provider's trade sink because trades=True
        store.upsert_trades = counting.__get__(store)  # type: ignore[method-assign]
        stop = asyncio.Event()
        task = asyncio.create_task(src._watch_trades(stop, "XRP/ETH"))
        await asyncio.wait_for(done.wait(), 20)
        for _ in range(100):
            if store.query_one("SELECT count(*) FROM trades")[0] == len(trades):
                break
            await asyncio.sleep(0.05)
        stop.set()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await ex.close()
        await runner.cleanup()
        got = store.trades("binance", "XRP/ETH")
        store.close()
        assert 1 <= len(writes) < len(trades) // 4  # batched: one store write per flush, not per trade
        return got

    got = asyncio.run(scenario())
    assert got["id"].tolist() == trades["id"].tolist()
    np.testing.assert_array_equal(got["price"].to_numpy(), trades["price"].to_numpy())
    np.testing.assert_array_equal(got["amount"].to_numpy(), trades["amount"].to_numpy())
    assert got["side"].tolist() == trades["side"].tolist() and got["ts"].tolist() == trades["ts"].tolist()
