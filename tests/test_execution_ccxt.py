"""CcxtBroker against a local fake exchange on 127.0.0.1 that speaks Binance's spot REST format (the few
endpoints ccxt calls: exchangeInfo, time, order POST/GET/DELETE, openOrders, account). Never the
internet. Market orders fill at a real BTC/USDT close from the shared data. The live-trading safety
rule (config + --live flag + keys) is checked condition by condition."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import ccxt
import pandas as pd
import pytest

from core.config import ExecutionConfig, RiskConfig, Secrets
from core.execution.broker import (
    BrokerError,
    CcxtBroker,
    LiveTradingRefused,
    check_live_allowed,
    client_order_id,
)
from core.execution.executor import Executor
from core.types import Action, CandleEvent, Decision, SeriesKey, Thresholds

KEYS = Secrets(exchange_api_key="test-key-not-real", exchange_secret="test-secret-not-real")


class FakeBinance:
    """In-memory Binance spot account: orders keyed by id and by clientOrderId."""

    def __init__(self, price: float) -> None:
        self.price = price
        self.orders: dict[int, dict] = {}
        self.by_client: dict[str, int] = {}
        self.posts = 0
        self.stall_posts = 0  # the next N POSTs are booked, then answered too late (client timeout)
        self.drop_posts = 0  # the next N POSTs are lost before reaching the matching engine
        self.stall_s = 1.5
        self.lock = threading.Lock()
        self.requests: list[tuple[str, str]] = []
        self.headers_seen: list[dict] = []

    def order_json(self, o: dict) -> dict:
        return {k: v for k, v in o.items() if not k.startswith("_")}

    def create(self, q: dict) -> tuple[int, dict]:
        cid = q.get("newClientOrderId") or f"auto{len(self.orders) + 1}"
        with self.lock:
            if cid in self.by_client and self.orders[self.by_client[cid]]["status"] == "NEW":
                return 400, {"code": -2010, "msg": "Duplicate order sent."}
            oid = len(self.orders) + 1
            qty = float(q["quantity"])
            otype = q["type"]
            filled = otype == "MARKET"
            px = self.price if filled else float(q["price"])
            fee = qty * px * 0.001
            o = {"symbol": q["symbol"], "orderId": oid, "orderListId": -1, "clientOrderId": cid,
                 "transactTime": int(time.time() * 1000), "price": "0.00000000" if filled else f"{px:.2f}",
                 "origQty": f"{qty:.8f}", "executedQty": f"{qty if filled else 0:.8f}",
                 "cummulativeQuoteQty": f"{qty * px if filled else 0:.8f}",
                 "status": "FILLED" if filled else "NEW", "timeInForce": "GTC", "type": otype,
                 "side": q["side"], "workingTime": int(time.time() * 1000), "selfTradePreventionMode": "NONE",
                 "time": int(time.time() * 1000), "updateTime": int(time.time() * 1000), "isWorking": True,
                 "_fills": [{"price": f"{px:.2f}", "qty": f"{qty:.8f}", "commission": f"{fee:.8f}",
                             "commissionAsset": "USDT", "tradeId": oid}] if filled else []}
            self.orders[oid] = o
            self.by_client[cid] = oid
        return 200, {**self.order_json(o), "fills": o["_fills"]}

    def find(self, q: dict) -> dict | None:
        if "orderId" in q:
            return self.orders.get(int(q["orderId"]))
        if "origClientOrderId" in q:
            oid = self.by_client.get(q["origClientOrderId"])
            return None if oid is None else self.orders[oid]
        return None


def exchange_info() -> dict:
    return {"timezone": "UTC", "serverTime": int(time.time() * 1000), "rateLimits": [], "symbols": [{
        "symbol": "BTCUSDT", "status": "TRADING", "baseAsset": "BTC", "baseAssetPrecision": 8,
        "quoteAsset": "USDT", "quotePrecision": 8, "quoteAssetPrecision": 8, "baseCommissionPrecision": 8,
        "quoteCommissionPrecision": 8, "orderTypes": ["LIMIT", "MARKET"], "icebergAllowed": True,
        "ocoAllowed": True, "isSpotTradingAllowed": True, "isMarginTradingAllowed": False,
        "permissions": ["SPOT"], "permissionSets": [["SPOT"]],
        "filters": [
            {"filterType": "PRICE_FILTER", "minPrice": "0.01", "maxPrice": "1000000.00", "tickSize": "0.01"},
            {"filterType": "LOT_SIZE", "minQty": "0.00001", "maxQty": "9000.00000", "stepSize": "0.00001"},
            {"filterType": "NOTIONAL", "minNotional": "5.0", "maxNotional": "9000000.0"},
        ]}]}


def make_handler(fake: FakeBinance):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *a):  # keep test output clean
            pass

        def _send(self, code: int, payload) -> None:
            body = json.dumps(payload).encode()
            try:
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (simulated timeout)

        def _params(self) -> dict:
            q = {k: v[0] for k, v in parse_qs(urlparse(self.path).query).items()}
            n = int(self.headers.get("Content-Length") or 0)
            if n:
                q.update({k: v[0] for k, v in parse_qs(self.rfile.read(n).decode()).items()})
            return q

        def _route(self, method: str) -> None:
            path = urlparse(self.path).path
            q = self._params()
            fake.requests.append((method, path))
            fake.headers_seen.append(dict(self.headers))
            if path == "/api/v3/exchangeInfo":
                return self._send(200, exchange_info())
            if path == "/api/v3/time":
                return self._send(200, {"serverTime": int(time.time() * 1000)})
            if path == "/api/v3/account":
                return self._send(200, {"balances": [{"asset": "USDT", "free": "10000", "locked": "0"},
                                                     {"asset": "BTC", "free": "0", "locked": "0"}]})
            if path == "/api/v3/openOrders":
                return self._send(200, [fake.order_json(o) for o in fake.orders.values() if o["status"] == "NEW"])
            if path == "/api/v3/order" and method == "POST":
                fake.posts += 1
                if fake.drop_posts:
                    fake.drop_posts -= 1
                    time.sleep(fake.stall_s)
                    return self._send(504, {"code": -1007, "msg": "Timeout waiting for response"})
                code, payload = fake.create(q)
                if fake.stall_posts:
                    fake.stall_posts -= 1
                    time.sleep(fake.stall_s)  # booked, but the answer arrives after the client timed out
                return self._send(code, payload)
            if path == "/api/v3/order" and method in ("GET", "DELETE"):
                o = fake.find(q)
                if o is None:
                    return self._send(400, {"code": -2013, "msg": "Order does not exist."})
                if method == "DELETE":
                    if o["status"] != "NEW":
                        return self._send(400, {"code": -2011, "msg": "Unknown order sent."})
                    o["status"] = "CANCELED"
                return self._send(200, fake.order_json(o))
            return self._send(404, {"code": -1, "msg": f"fake exchange: no route {method} {path}"})

        def do_GET(self):
            self._route("GET")

        def do_POST(self):
            self._route("POST")

        def do_DELETE(self):
            self._route("DELETE")

    return Handler


@pytest.fixture()
def fake_exchange(shared_data):
    df = pd.read_csv(shared_data / "binanceus" / "BTC_USDT-1m.csv", nrows=2000)
    fake = FakeBinance(price=float(df["close"].iloc[-1]))
    server = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(fake))
    server.daemon_threads = True
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    yield fake, base, df
    server.shutdown()
    server.server_close()


def local_binance(base: str, timeout_ms: int = 700) -> ccxt.binance:
    """A ccxt.binance whose TESTNET urls point at the fake server (the broker turns sandbox mode on)."""
    ex = ccxt.binance({"timeout": timeout_ms, "enableRateLimit": False,
                       "options": {"fetchMarkets": ["spot"], "fetchCurrencies": False}})
    test = ex.urls["test"]
    for k, v in list(test.items()):
        if isinstance(v, str):
            test[k] = base + "/" + v.split("/", 3)[3]
    return ex


def broker(base: str, **kw) -> CcxtBroker:
    ex = local_binance(base)
    return CcxtBroker(ExecutionConfig(broker="ccxt", sandbox=True), "binance", secrets=KEYS, exchange=ex,
                      retry_delay_s=0.05, **kw)


def test_create_fetch_cancel_through_sandbox_urls(fake_exchange):
    fake, base, _ = fake_exchange
    b = broker(base)
    assert b.mode == "sandbox"
    cid = client_order_id("dec-1")
    o = b.create_order("BTC/USDT", "market", "buy", 0.01, None, {"clientOrderId": cid})
    assert o.status == "closed" and o.clientOrderId == cid and o.filled == pytest.approx(0.01)
    assert o.price == pytest.approx(fake.price) and o.fee == pytest.approx(0.01 * fake.price * 0.001)
    assert b.fetch_order(o.id, "BTC/USDT").clientOrderId == cid
    lim = b.create_order("BTC/USDT", "limit", "buy", 0.01, 1000.0, {"clientOrderId": client_order_id("dec-2")})
    assert lim.status == "open" and [x.id for x in b.fetch_open_orders("BTC/USDT")] == [lim.id]
    assert b.cancel_order(lim.id, "BTC/USDT").status == "canceled"
    assert b.fetch_open_orders("BTC/USDT") == []
    bal = b.fetch_balance()
    assert bal["USDT"]["free"] == 10_000 and bal["BTC"]["free"] == 0
    # every request went to the fake server with the key header; the secret itself never travels
    assert all(h.get("X-MBX-APIKEY") == "test-key-not-real" for (m, p), h in zip(fake.requests, fake.headers_seen,
                                                                                    strict=True) if p == "/api/v3/order")
    assert not any("test-secret-not-real" in json.dumps(h) for h in fake.headers_seen)


def test_timeout_after_booking_is_not_doubled(fake_exchange):
    fake, base, _ = fake_exchange
    b = broker(base)
    fake.stall_posts = 1  # the first POST is booked, then answered too late
    cid = client_order_id("dec-timeout")
    o = b.create_order("BTC/USDT", "market", "buy", 0.02, None, {"clientOrderId": cid})
    assert o.status == "closed" and o.clientOrderId == cid
    assert fake.posts == 1 and b.submissions == 1  # looked up by clientOrderId, never re-submitted
    assert len([x for x in fake.orders.values() if x["clientOrderId"] == cid]) == 1
    assert fake.requests.count(("GET", "/api/v3/order")) == 2  # before the first POST and after the timeout
    # the same decision submitted again (e.g. after a restart) finds the order instead of doubling it
    again = b.create_order("BTC/USDT", "market", "buy", 0.02, None, {"clientOrderId": cid})
    assert again.id == o.id and len(fake.orders) == 1


def test_lost_request_is_resubmitted_once(fake_exchange):
    fake, base, _ = fake_exchange
    b = broker(base)
    fake.drop_posts = 1  # the first POST never reaches the matching engine
    cid = client_order_id("dec-lost")
    o = b.create_order("BTC/USDT", "market", "sell", 0.01, None, {"clientOrderId": cid})
    assert o.status == "closed" and fake.posts == 2 and len(fake.orders) == 1


def test_unreachable_exchange_raises_without_doubling(fake_exchange):
    fake, base, _ = fake_exchange
    b = broker(base, retries=2)
    fake.drop_posts = 5
    with pytest.raises(BrokerError, match="unreachable"):
        b.create_order("BTC/USDT", "market", "buy", 0.01, None, {"clientOrderId": client_order_id("x")})
    assert len(fake.orders) == 0


def test_client_order_id_is_deterministic():
    a, b = client_order_id("decision-42"), client_order_id("decision-42")
    assert a == b and a != client_order_id("decision-43") and len(a) <= 36
    assert client_order_id("d", "1") != client_order_id("d", "2")


def test_live_requires_all_three_conditions():
    none = Secrets()
    live_cfg = ExecutionConfig(live=True, broker="ccxt")
    with pytest.raises(LiveTradingRefused) as e:
        check_live_allowed(live_cfg, False, none)
    assert "--live flag" in str(e.value) and "MOE_EXCHANGE_API_KEY" in str(e.value)
    assert "execution.live" not in str(e.value)
    with pytest.raises(LiveTradingRefused) as e:
        check_live_allowed(ExecutionConfig(live=False, broker="ccxt"), True, KEYS)
    assert "execution.live is not true" in str(e.value) and "--live" not in str(e.value).split(":", 1)[1]
    with pytest.raises(LiveTradingRefused, match="keys"):
        check_live_allowed(live_cfg, True, none)
    assert check_live_allowed(live_cfg, True, KEYS) == "live"
    with pytest.raises(LiveTradingRefused, match="keys"):
        check_live_allowed(ExecutionConfig(broker="ccxt", sandbox=True), False, none)
    with pytest.raises(LiveTradingRefused, match="sandbox is false"):
        check_live_allowed(ExecutionConfig(broker="ccxt", sandbox=False), False, KEYS)
    # the refusal happens before any exchange object is touched, and never shows a key
    with pytest.raises(LiveTradingRefused) as e:
        CcxtBroker(live_cfg, "binance", live_flag=False, secrets=KEYS)
    assert "test-key" not in str(e.value) and "test-key" not in repr(KEYS)


def test_executor_trades_through_ccxt_broker(fake_exchange):
    """Executor live path on real candles: decisions become exchange orders with decision-derived ids."""
    fake, base, df = fake_exchange
    b = broker(base)
    ex = Executor(ExecutionConfig(broker="ccxt", fill_at="last_price"), RiskConfig(fraction=0.1), "BTC/USDT",
                  "1m", broker=b)
    key = SeriesKey("binanceus", "BTC/USDT", "1m")
    rows = df.iloc[-3:]
    actions = [Action.BUY, Action.HOLD, Action.SELL]
    all_fills = []
    for (_, r), act in zip(rows.iterrows(), actions, strict=True):
        ts = int(pd.Timestamp(r["timestamp"]).value // 1_000_000)
        bar = CandleEvent(key, ts, r["open"], r["high"], r["low"], r["close"], r["volume"])
        d = Decision(id=f"d-{ts}", ts=ts, symbol="BTC/USDT", action=act, probs=(0.2, 0.2, 0.6),
                     expected_return=0.0, weights={}, thresholds=Thresholds(), target_position=1.0 if act ==
                     Action.BUY else 0.0, reason="test")
        fake.price = float(r["close"])
        all_fills += ex.on_bar(bar, d)
    assert [f.side for f in all_fills] == ["buy", "sell"]
    ts0 = int(pd.Timestamp(rows.iloc[0]["timestamp"]).value // 1_000_000)
    # the id derives from (account, symbol, timeframe, bar ts, action) only: the same after a restart
    assert all_fills[0].clientOrderId == ex.client_id(ts0, "buy") == client_order_id(
        f"sandbox:BTC/USDT|BTC/USDT|1m|{ts0}|buy")
    snap = ex.snapshot()
    assert snap.position == pytest.approx(0.0, abs=1e-12) and snap.mode == "sandbox"
    # sized 10% of equity, then rounded by ccxt to the market's 0.00001 lot step
    assert abs(all_fills[0].amount - 0.1 * 10_000 / float(rows.iloc[0]["close"])) <= 1e-5
    assert len(fake.orders) == 2
