"""A fake Binance spot REST server on 127.0.0.1 for tests and bench/ (no tests here).

It answers the endpoints ccxt's ``binance`` calls for spot trading (exchangeInfo, time, account,
order POST/GET/DELETE by orderId or origClientOrderId, openOrders, myTrades, and the protective orders:
STOP_LOSS_LIMIT / TAKE_PROFIT_LIMIT / LIMIT_MAKER and OCO lists, POST orderList/oco) with bodies shaped like the
real Binance responses recorded in ../shared/data/exchange_fixtures/ccxt_binance/ (same field names,
numbers as decimal strings). One in-memory account: balances move with every fill, fees are charged in
the quote asset like the recorded fills. Faults for the tests: 429 / 5xx answers for the next requests,
delayed acknowledgements, POSTs booked then answered too late or lost, and a SIGKILL of the client
process (its pid in the ``X-Test-Pid`` header) right after an order is booked, before the answer leaves.
The market price is set by the test through ``price`` (or GET /fake/price?p=..., a test-only route); a move
through a stop / take-profit level triggers it, a filled OCO leg expires its sibling, open SELL orders lock
their BTC (``free`` = total - locked), and cancelling one OCO leg cancels the list, as on Binance.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

# BTCUSDT's spot filters as Binance publishes them in exchangeInfo
FILTERS = [
    {"filterType": "PRICE_FILTER", "minPrice": "0.01000000", "maxPrice": "1000000.00000000", "tickSize": "0.01000000"},
    {"filterType": "LOT_SIZE", "minQty": "0.00001000", "maxQty": "9000.00000000", "stepSize": "0.00001000"},
    {"filterType": "NOTIONAL", "minNotional": "5.00000000", "applyMinToMarket": True,
     "maxNotional": "9000000.00000000", "applyMaxToMarket": False, "avgPriceMins": 5},
]


def _s(x: float) -> str:
    return f"{x:.8f}"


class FakeBinance:
    """In-memory Binance spot account for BTCUSDT."""

    def __init__(self, price: float = 0.0, usdt: float = 10_000.0, btc: float = 0.0, fee_rate: float = 0.001):
        self.lock = threading.RLock()
        self.fee_rate = fee_rate
        self.reset(price, usdt, btc)

    def reset(self, price: float = 0.0, usdt: float = 10_000.0, btc: float = 0.0) -> None:
        with self.lock:
            self.price = float(price)
            self.balances = {"USDT": float(usdt), "BTC": float(btc)}
            self.orders: dict[int, dict] = {}
            self.by_client: dict[str, int] = {}
            self.trades: list[dict] = []
            self.posts = 0
            self.requests: list[tuple[str, str]] = []
            self.headers_seen: list[dict] = []
            self.fail_next: list[int] = []  # status codes answered to the next requests (429, 500, 503)
            self.fail_paths: tuple[str, ...] = ()  # only these paths fail (empty: every path)
            self.fail_methods: tuple[str, ...] = ()  # only these methods fail (empty: every method)
            self.fail_post_next: list[int] = []  # status codes for the next order POSTs (not booked)
            self.ack_delay_s = 0.0  # every order POST is answered this late (booked first)
            self.stall_posts = 0  # the next N POSTs are booked, then answered after stall_s
            self.drop_posts = 0  # the next N POSTs never reach the matching engine (504 after stall_s)
            self.stall_s = 1.5
            self.buy_fee_in_base = False  # Binance without BNB: a buy's commission is taken in BTC
            self.kill_on_post = 0  # SIGKILL the client (X-Test-Pid) when booking its Nth POST (1-based)
            self.list_seq = 0  # OCO order lists created

    # ------------------------------------------------------------ the matching engine

    def order_json(self, o: dict) -> dict:
        return {k: v for k, v in o.items() if not k.startswith("_")}

    def locked_base(self) -> float:
        """BTC held by open SELL orders (an OCO list locks its quantity once, as on Binance)."""
        seen: set[int] = set()
        total = 0.0
        for o in self.orders.values():
            if o["status"] != "NEW" or o["side"] != "SELL":
                continue
            lid = int(o["orderListId"])
            if lid >= 0 and lid in seen:
                continue
            seen.add(lid)
            total += float(o["origQty"]) - float(o["executedQty"])
        return total

    def _check(self, q: dict, otype: str, side: str, qty: float, px: float, stop: float) -> tuple[int, dict] | None:
        """Binance's refusals: notional filter, balances (free = total - locked), and a stop / maker
        order that would trigger or match at once."""
        if qty * px < 5.0:
            return 400, {"code": -1013, "msg": "Filter failure: NOTIONAL"}
        if side == "BUY" and qty * px * (1 + self.fee_rate) > self.balances["USDT"] + 1e-9:
            return 400, {"code": -2010, "msg": "Account has insufficient balance for requested action."}
        if side == "SELL" and qty > self.balances["BTC"] - self.locked_base() + 1e-12:
            return 400, {"code": -2010, "msg": "Account has insufficient balance for requested action."}
        sell = side == "SELL"
        if otype == "STOP_LOSS_LIMIT" and ((sell and self.price <= stop) or (not sell and self.price >= stop)):
            return 400, {"code": -2010, "msg": "Stop price would trigger immediately."}
        if otype == "TAKE_PROFIT_LIMIT" and ((sell and self.price >= stop) or (not sell and self.price <= stop)):
            return 400, {"code": -2010, "msg": "Stop price would trigger immediately."}
        if otype == "LIMIT_MAKER" and ((sell and self.price >= px) or (not sell and self.price <= px)):
            return 400, {"code": -2010, "msg": "Order would immediately match and take."}
        return None

    def _new_order(self, symbol: str, cid: str, otype: str, side: str, qty: float, px: float, stop: float,
                   tif: str, list_id: int = -1) -> dict:
        oid = 3_397_148_653 + len(self.orders)
        now = int(time.time() * 1000)
        o = {"symbol": symbol, "orderId": oid, "orderListId": list_id, "clientOrderId": cid, "price":
             "0.00000000" if otype == "MARKET" else _s(px), "origQty": _s(qty), "executedQty": _s(0),
             "cummulativeQuoteQty": _s(0), "status": "NEW", "timeInForce": tif,
             "type": otype, "side": side, "stopPrice": _s(stop), "icebergQty": _s(0), "time": now,
             "updateTime": now, "isWorking": otype not in ("STOP_LOSS_LIMIT", "TAKE_PROFIT_LIMIT"),
             "workingTime": now if otype not in ("STOP_LOSS_LIMIT", "TAKE_PROFIT_LIMIT") else -1,
             "origQuoteOrderQty": _s(0), "selfTradePreventionMode": "NONE", "_fills": []}
        self.orders[oid] = o
        self.by_client[cid] = oid
        return o

    def _ack(self, o: dict) -> dict:
        """The POST /api/v3/order answer (newOrderRespType FULL, ccxt's default for market/limit)."""
        body = {k: o[k] for k in ("symbol", "orderId", "orderListId", "clientOrderId")}
        body.update({"transactTime": o["updateTime"], **{k: o[k] for k in (
            "price", "origQty", "executedQty", "origQuoteOrderQty", "cummulativeQuoteQty", "status",
            "timeInForce", "type", "side", "workingTime")}, "fills": o["_fills"],
            "selfTradePreventionMode": "NONE"})
        if o["type"] in ("STOP_LOSS_LIMIT", "TAKE_PROFIT_LIMIT"):
            body["stopPrice"] = o["stopPrice"]
        return body

    def create(self, q: dict) -> tuple[int, dict]:
        with self.lock:
            cid = q.get("newClientOrderId") or f"auto{len(self.orders) + 1}"
            if cid in self.by_client and self.orders[self.by_client[cid]]["status"] == "NEW":
                return 400, {"code": -2010, "msg": "Duplicate order sent."}
            qty, otype, side = float(q["quantity"]), q["type"], q["side"]
            if otype not in ("MARKET", "LIMIT", "LIMIT_MAKER", "STOP_LOSS_LIMIT", "TAKE_PROFIT_LIMIT"):
                return 400, {"code": -1116, "msg": "Invalid orderType."}
            px = self.price if otype == "MARKET" else float(q["price"])
            stop = float(q.get("stopPrice") or 0.0)
            if otype in ("STOP_LOSS_LIMIT", "TAKE_PROFIT_LIMIT") and stop <= 0:
                return 400, {"code": -1102, "msg": "Mandatory parameter 'stopPrice' was not sent, was empty/null, "
                                                   "or malformed."}
            refused = self._check(q, otype, side, qty, px, stop)
            if refused is not None:
                return refused
            o = self._new_order(q["symbol"], cid, otype, side, qty, px, stop, q.get("timeInForce", "GTC"))
            if otype == "MARKET" or (otype == "LIMIT" and (
                    (side == "BUY" and self.price <= px) or (side == "SELL" and self.price >= px))):
                self._fill(o, px if otype == "LIMIT" else self.price)
            return 200, self._ack(o)

    def create_oco(self, q: dict) -> tuple[int, dict]:
        """POST /api/v3/orderList/oco: a take-profit leg above the market (LIMIT_MAKER) and a stop-loss
        leg below it (STOP_LOSS_LIMIT), one quantity; when one leg fills the other expires."""
        with self.lock:
            lcid = q.get("listClientOrderId") or f"list{len(self.orders) + 1}"
            side, qty = q["side"], float(q["quantity"])
            above_cid, below_cid = q.get("aboveClientOrderId", ""), q.get("belowClientOrderId", "")
            for c in (above_cid, below_cid):
                if c in self.by_client and self.orders[self.by_client[c]]["status"] == "NEW":
                    return 400, {"code": -2010, "msg": "Duplicate order sent."}
            if side != "SELL" or q.get("aboveType") != "LIMIT_MAKER" or q.get("belowType") != "STOP_LOSS_LIMIT":
                return 400, {"code": -1106, "msg": "Parameter combination not supported by the fake exchange."}
            above, below_stop, below_px = float(q["abovePrice"]), float(q["belowStopPrice"]), float(q["belowPrice"])
            if not above > self.price > below_stop:
                return 400, {"code": -2010, "msg": "The relationship of the prices for the orders is not correct."}
            refused = self._check(q, "LIMIT", side, qty, below_px, 0.0)
            if refused is not None:
                return refused
            self.list_seq += 1
            lid = self.list_seq
            tif = q.get("belowTimeInForce", "GTC")
            sl = self._new_order(q["symbol"], below_cid or f"auto{len(self.orders) + 1}", "STOP_LOSS_LIMIT",
                                 side, qty, below_px, below_stop, tif, lid)
            tp = self._new_order(q["symbol"], above_cid or f"auto{len(self.orders) + 1}", "LIMIT_MAKER", side,
                                 qty, above, 0.0, "GTC", lid)
            now = int(time.time() * 1000)
            legs = [sl, tp]
            return 200, {"orderListId": lid, "contingencyType": "OCO", "listStatusType": "EXEC_STARTED",
                         "listOrderStatus": "EXECUTING", "listClientOrderId": lcid, "transactionTime": now,
                         "symbol": q["symbol"],
                         "orders": [{"symbol": o["symbol"], "orderId": o["orderId"], "clientOrderId": o["clientOrderId"]}
                                    for o in legs],
                         "orderReports": [self._ack(o) | {"stopPrice": o["stopPrice"]} for o in legs]}

    def _fill(self, o: dict, px: float) -> None:
        qty = float(o["origQty"])
        quote = qty * px
        fee = quote * self.fee_rate
        asset = "USDT"
        if o["side"] == "BUY" and self.buy_fee_in_base:
            fee, asset = qty * self.fee_rate, "BTC"
            self.balances["USDT"] -= quote
            self.balances["BTC"] += qty - fee
        elif o["side"] == "BUY":
            self.balances["USDT"] -= quote + fee
            self.balances["BTC"] += qty
        else:
            self.balances["USDT"] += quote - fee
            self.balances["BTC"] -= qty
        tid = 309_520_010 + len(self.trades)
        now = int(time.time() * 1000)
        o.update(status="FILLED", executedQty=_s(qty), cummulativeQuoteQty=_s(quote), updateTime=now)
        o["_fills"].append({"price": _s(px), "qty": _s(qty), "commission": _s(fee), "commissionAsset": asset,
                            "tradeId": tid})
        self.trades.append({"symbol": o["symbol"], "id": tid, "orderId": o["orderId"], "orderListId": o["orderListId"],
                            "price": _s(px), "qty": _s(qty), "quoteQty": _s(quote), "commission": _s(fee),
                            "commissionAsset": asset, "time": now, "isBuyer": o["side"] == "BUY",
                            "isMaker": o["type"] in ("LIMIT", "LIMIT_MAKER"), "isBestMatch": True})
        if int(o["orderListId"]) >= 0:  # one leg of an OCO filled: the other expires
            for other in self.orders.values():
                if other is not o and other["orderListId"] == o["orderListId"] and other["status"] == "NEW":
                    other.update(status="EXPIRED", updateTime=now)

    def cancel(self, o: dict) -> None:
        """Cancelling one leg of an order list cancels the whole list (Binance)."""
        now = int(time.time() * 1000)
        lid = int(o["orderListId"])
        for x in self.orders.values():
            if x["status"] == "NEW" and (x is o or (lid >= 0 and x["orderListId"] == lid)):
                x.update(status="CANCELED", updateTime=now)

    def set_price(self, px: float) -> None:
        """The market moves: resting limit orders the price trades through fill at their limit; stop /
        take-profit orders trigger at their stopPrice and then fill as limit orders at the market (a
        triggered stop-limit sell takes the bids down to its limit)."""
        with self.lock:
            self.price = float(px)
            for o in list(self.orders.values()):
                if o["status"] != "NEW":
                    continue
                lim, sell, t = float(o["price"]), o["side"] == "SELL", o["type"]
                if t in ("STOP_LOSS_LIMIT", "TAKE_PROFIT_LIMIT") and not o.get("_triggered"):
                    stop = float(o["stopPrice"])
                    down = (t == "STOP_LOSS_LIMIT") == sell  # the level is crossed going down
                    if (down and px <= stop) or (not down and px >= stop):
                        o.update(_triggered=True, isWorking=True, workingTime=int(time.time() * 1000))
                    else:
                        continue
                    if (sell and px >= lim) or (not sell and px <= lim):
                        self._fill(o, px)
                    continue
                if t in ("LIMIT", "LIMIT_MAKER") or o.get("_triggered"):
                    if (not sell and px <= lim) or (sell and px >= lim):
                        self._fill(o, lim if t in ("LIMIT", "LIMIT_MAKER") else px)

    def find(self, q: dict) -> dict | None:
        if "orderId" in q:
            return self.orders.get(int(q["orderId"]))
        oid = self.by_client.get(q.get("origClientOrderId", ""))
        return None if oid is None else self.orders[oid]

    def duplicates(self) -> int:
        """clientOrderIds that reached the matching engine more than once (must stay 0)."""
        c = Counter(o["clientOrderId"] for o in self.orders.values())
        return sum(n - 1 for n in c.values() if n > 1)


def exchange_info() -> dict:
    return {"timezone": "UTC", "serverTime": int(time.time() * 1000), "rateLimits": [
        {"rateLimitType": "REQUEST_WEIGHT", "interval": "MINUTE", "intervalNum": 1, "limit": 6000},
        {"rateLimitType": "ORDERS", "interval": "SECOND", "intervalNum": 10, "limit": 100}],
        "exchangeFilters": [], "symbols": [{
            "symbol": "BTCUSDT", "status": "TRADING", "baseAsset": "BTC", "baseAssetPrecision": 8,
            "quoteAsset": "USDT", "quotePrecision": 8, "quoteAssetPrecision": 8, "baseCommissionPrecision": 8,
            "quoteCommissionPrecision": 8, "orderTypes": ["LIMIT", "LIMIT_MAKER", "MARKET", "STOP_LOSS_LIMIT",
                                                          "TAKE_PROFIT_LIMIT"],
            "icebergAllowed": True, "ocoAllowed": True, "otoAllowed": True, "quoteOrderQtyMarketAllowed": True,
            "allowTrailingStop": True, "cancelReplaceAllowed": True, "isSpotTradingAllowed": True,
            "isMarginTradingAllowed": False, "filters": FILTERS, "permissions": [], "permissionSets": [["SPOT"]],
            "defaultSelfTradePreventionMode": "EXPIRE_MAKER",
            "allowedSelfTradePreventionModes": ["EXPIRE_TAKER", "EXPIRE_MAKER", "EXPIRE_BOTH"]}]}


def make_handler(fake: FakeBinance) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as the real API

        def log_message(self, *a: Any) -> None:
            pass

        def setup(self) -> None:
            super().setup()
            # headers and body leave in two writes: without this, Nagle + delayed ACK add ~40 ms per answer
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def _send(self, code: int, payload: Any, headers: dict[str, str] | None = None) -> None:
            body = json.dumps(payload).encode()
            try:
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (timeout) or was killed

        def _params(self) -> dict:
            q = {k: v[0] for k, v in parse_qs(urlparse(self.path).query).items()}
            n = int(self.headers.get("Content-Length") or 0)
            if n:
                q.update({k: v[0] for k, v in parse_qs(self.rfile.read(n).decode()).items()})
            return q

        def _route(self, method: str) -> None:
            path = urlparse(self.path).path
            q = self._params()
            with fake.lock:
                fake.requests.append((method, path))
                fake.headers_seen.append(dict(self.headers))
                fail = fake.fail_next.pop(0) if fake.fail_next and (
                    not fake.fail_paths or path in fake.fail_paths) and (
                    not fake.fail_methods or method in fake.fail_methods) else None
            if path == "/fake/price":
                fake.set_price(float(q["p"]))
                return self._send(200, {"price": fake.price})
            if fail == 429:
                return self._send(429, {"code": -1003, "msg": "Too many requests; current limit is 6000 "
                                        "request weight per 1 MINUTE."}, {"Retry-After": "1"})
            if fail is not None:
                return self._send(fail, {"code": -1001, "msg": "Internal error; unable to process your request."})
            if path == "/api/v3/exchangeInfo":
                return self._send(200, exchange_info())
            if path in ("/api/v3/time", "/api/v3/ping"):
                return self._send(200, {"serverTime": int(time.time() * 1000)} if path.endswith("time") else {})
            if path == "/api/v3/account":
                with fake.lock:
                    locked = {"BTC": fake.locked_base()}
                    bal = [{"asset": a, "free": _s(v - locked.get(a, 0.0)), "locked": _s(locked.get(a, 0.0))}
                           for a, v in fake.balances.items()]
                return self._send(200, {"makerCommission": 10, "takerCommission": 10, "buyerCommission": 0,
                                        "sellerCommission": 0, "canTrade": True, "canWithdraw": True,
                                        "canDeposit": True, "brokered": False, "accountType": "SPOT",
                                        "updateTime": int(time.time() * 1000), "balances": bal,
                                        "permissions": ["SPOT"], "uid": 365859102})
            if path == "/api/v3/openOrders":
                with fake.lock:
                    return self._send(200, [fake.order_json(o) for o in fake.orders.values() if o["status"] == "NEW"])
            if path == "/api/v3/myTrades":
                with fake.lock:
                    rows = [t for t in fake.trades if t["symbol"] == q.get("symbol", t["symbol"])]
                    if "orderId" in q:
                        rows = [t for t in rows if t["orderId"] == int(q["orderId"])]
                    if "fromId" in q:
                        rows = [t for t in rows if t["id"] >= int(q["fromId"])]
                    if "startTime" in q:
                        rows = [t for t in rows if t["time"] >= int(q["startTime"])]
                    return self._send(200, rows[: int(q.get("limit", 500))])
            if path == "/api/v3/orderList/oco" and method == "POST":
                with fake.lock:
                    fake.posts += 1
                    n = fake.posts
                    post_fail = fake.fail_post_next.pop(0) if fake.fail_post_next else None
                if post_fail is not None:
                    return self._send(post_fail, {"code": -1001, "msg": "Internal error; unable to process your request."})
                code, payload = fake.create_oco(q)
                if fake.kill_on_post and n == fake.kill_on_post and self.headers.get("X-Test-Pid"):
                    os.kill(int(self.headers["X-Test-Pid"]), signal.SIGKILL)  # booked, never acknowledged
                    time.sleep(0.05)
                return self._send(code, payload)
            if path == "/api/v3/order" and method == "POST":
                with fake.lock:
                    fake.posts += 1
                    n = fake.posts
                    drop = fake.drop_posts > 0
                    fake.drop_posts -= int(drop)
                    post_fail = fake.fail_post_next.pop(0) if fake.fail_post_next else None
                if post_fail is not None:
                    return self._send(post_fail, {"code": -1003 if post_fail == 429 else -1001,
                                                  "msg": "Too many requests." if post_fail == 429 else
                                                  "Internal error; unable to process your request."})
                if drop:
                    time.sleep(fake.stall_s)
                    return self._send(504, {"code": -1007, "msg": "Timeout waiting for response from backend "
                                            "server. Send status unknown; execution status unknown."})
                code, payload = fake.create(q)
                if fake.kill_on_post and n == fake.kill_on_post and self.headers.get("X-Test-Pid"):
                    os.kill(int(self.headers["X-Test-Pid"]), signal.SIGKILL)  # booked, never acknowledged
                    time.sleep(0.05)
                with fake.lock:
                    stall = fake.stall_posts > 0
                    fake.stall_posts -= int(stall)
                if stall:
                    time.sleep(fake.stall_s)
                elif fake.ack_delay_s:
                    time.sleep(fake.ack_delay_s)
                return self._send(code, payload)
            if path == "/api/v3/order" and method in ("GET", "DELETE"):
                with fake.lock:
                    o = fake.find(q)
                    if o is None:
                        return self._send(400, {"code": -2013, "msg": "Order does not exist."})
                    if method == "DELETE":
                        if o["status"] != "NEW":
                            return self._send(400, {"code": -2011, "msg": "Unknown order sent."})
                        fake.cancel(o)
                    return self._send(200, fake.order_json(o))
            return self._send(404, {"code": -1, "msg": f"fake exchange: no route {method} {path}"})

        def do_GET(self) -> None:
            self._route("GET")

        def do_POST(self) -> None:
            self._route("POST")

        def do_DELETE(self) -> None:
            self._route("DELETE")

    return Handler


class _Server(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client killed mid-request (the kill -9 trials) resets its connection: expected


class FakeServer:
    """The fake on an ephemeral loopback port, served from a daemon thread."""

    def __init__(self, fake: FakeBinance | None = None) -> None:
        self.fake = fake or FakeBinance()
        self.server = _Server(("127.0.0.1", 0), make_handler(self.fake))
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def local_binance(base: str, timeout_ms: int = 700, pid_header: bool = False, cls: Any = None) -> Any:
    """A ccxt.binance whose TESTNET urls point at the fake server (the broker turns sandbox mode on).
    ``cls``: the ccxt class to build (a test that replaces ``ccxt.binance`` passes the real one)."""
    import ccxt

    ex = (cls or ccxt.binance)({"timeout": timeout_ms, "enableRateLimit": False,
                       "options": {"fetchMarkets": ["spot"], "fetchCurrencies": False}})
    test = ex.urls["test"]
    for k, v in list(test.items()):
        if isinstance(v, str):
            test[k] = base + "/" + v.split("/", 3)[3]
    if pid_header:
        ex.headers = {"X-Test-Pid": str(os.getpid())}
    return ex
