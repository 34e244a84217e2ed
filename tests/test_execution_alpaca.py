"""AlpacaBroker (alpaca-py TradingClient) against a local fake Alpaca trading server that answers with
alpaca-py's recorded trading mocks (../shared/data/exchange_fixtures/alpaca_py/trading_mock_responses.json).
The fake's order book (remembering orders by client order id) is written here."""

from __future__ import annotations

import json
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest

from core.config import ExecutionConfig, Secrets
from core.execution.alpaca_broker import AlpacaBroker, alpaca_mode
from core.execution.broker import client_order_id
from core.execution.ccxt_broker import LiveTradingRefused

KEYS = Secrets(alpaca_key_id="paper-key", alpaca_secret_key="paper-secret")  # fake credentials


class FakeAlpaca:
    def __init__(self, mocks: dict[str, Any]) -> None:
        self.mocks = mocks
        self.orders: dict[str, dict[str, Any]] = {}  # client order id -> order
        self.posts = 0
        self.fail_next_post = False  # store the order, then answer 503 (a lost response)
        self.headers: list[dict[str, str]] = []

    def handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class H(BaseHTTPRequestHandler):
            def log_message(self, *a: Any) -> None:
                pass

            def _send(self, code: int, body: Any) -> None:
                raw = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def do_GET(self) -> None:  # noqa: N802
                fake.headers.append(dict(self.headers))
                u = urlparse(self.path)
                if u.path == "/v2/orders:by_client_order_id":
                    cid = parse_qs(u.query)["client_order_id"][0]
                    o = fake.orders.get(cid)
                    return self._send(200, o) if o else self._send(404, {"code": 40410000,
                                                                          "message": "order not found"})
                if u.path.startswith("/v2/orders/"):
                    oid = u.path.rsplit("/", 1)[1]
                    o = next((x for x in fake.orders.values() if x["id"] == oid), None)
                    return self._send(200, o) if o else self._send(404, {"message": "order not found"})
                if u.path == "/v2/orders":
                    return self._send(200, [o for o in fake.orders.values() if o["status"] in ("accepted", "new")])
                if u.path == "/v2/account":
                    return self._send(200, fake.mocks["test_get_account"])
                self._send(404, {"message": "no route"})

            def do_POST(self) -> None:  # noqa: N802
                req = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                fake.posts += 1
                o = dict(fake.mocks["test_market_order"], client_order_id=req["client_order_id"],
                         symbol=req["symbol"], qty=req["qty"], side=req["side"], type=req["type"],
                         order_type=req["type"], id=str(uuid.UUID(int=fake.posts)),
                         time_in_force=req["time_in_force"])
                fake.orders[req["client_order_id"]] = o
                if fake.fail_next_post:
                    fake.fail_next_post = False
                    return self._send(503, {"message": "service unavailable"})
                self._send(200, o)

            def do_DELETE(self) -> None:  # noqa: N802
                oid = urlparse(self.path).path.rsplit("/", 1)[1]
                for o in fake.orders.values():
                    if o["id"] == oid:
                        o["status"] = "canceled"
                self.send_response(204)
                self.end_headers()

        return H


@pytest.fixture
def fake(shared_data: Path):
    rows = json.loads((shared_data / "exchange_fixtures" / "alpaca_py" / "trading_mock_responses.json").read_text())
    f = FakeAlpaca({r["test"]: r["body"] for r in rows})
    srv = ThreadingHTTPServer(("127.0.0.1", 0), f.handler())
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f, f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()


def test_paper_orders_are_idempotent_by_client_order_id(fake) -> None:
    f, url = fake
    b = AlpacaBroker(ExecutionConfig(broker="alpaca"), secrets=KEYS, paper_url=url, retry_delay_s=0.01)
    assert b.mode == "paper"
    cid = client_order_id("paper-AMZN:1736778600000")
    o = b.create_order("AMZN", "market", "buy", 3.0, params={"clientOrderId": cid})
    assert (o.clientOrderId, o.symbol, o.side, o.amount, o.status) == (cid, "AMZN", "buy", 3.0, "open")
    again = b.create_order("AMZN", "market", "buy", 3.0, params={"clientOrderId": cid})  # a replayed decision
    assert again.id == o.id and f.posts == 1 and b.submissions == 1
    # the response is lost (503) after the server took the order: the retry finds it, nothing is doubled
    f.fail_next_post = True
    cid2 = client_order_id("paper-AMZN:1736778660000")
    o2 = b.create_order("AMZN", "market", "sell", 3.0, params={"clientOrderId": cid2})
    assert o2.clientOrderId == cid2 and f.posts == 2
    assert [x.id for x in b.fetch_open_orders("AMZN")] == [o.id, o2.id]
    assert b.cancel_order(o.id).status == "canceled"
    bal = b.fetch_balance()
    assert bal["USD"]["total"] == 103820.56 and bal["USD"]["free"] == -23140.2  # the recorded account
    assert all(h.get("APCA-API-KEY-ID") == "paper-key" for h in f.headers)


def test_live_needs_all_three_switches_and_paper_needs_keys() -> None:
    with pytest.raises(LiveTradingRefused, match="--live flag was not given"):
        alpaca_mode(ExecutionConfig(live=True), False, KEYS)
    with pytest.raises(LiveTradingRefused, match=r"config execution.live is not true.*APCA_API_KEY_ID"):
        alpaca_mode(ExecutionConfig(), True, Secrets())
    assert alpaca_mode(ExecutionConfig(live=True), True, KEYS) == "live"
    with pytest.raises(LiveTradingRefused, match="paper keys are not in the environment"):
        AlpacaBroker(ExecutionConfig(), secrets=Secrets())
    assert "paper-key" not in repr(KEYS) and "paper-secret" not in repr(KEYS)
