"""AlpacaBroker (alpaca-py TradingClient) against a local fake Alpaca trading server that answers with
alpaca-py's recorded trading mocks (../shared/data/exchange_fixtures/alpaca_py/trading_mock_responses.json).
The fake's order book (remembering orders by client order id) is written here."""

from __future__ import annotations

import json
import threading
import time
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


def _now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + f".{time.time_ns() % 10**9:09d}Z"


class FakeAlpaca:
    def __init__(self, mocks: dict[str, Any]) -> None:
        self.mocks = mocks
        self.orders: dict[str, dict[str, Any]] = {}  # client order id -> order
        self.posts = 0
        self.fail_next_post = False  # store the order, then answer 503 (a lost response)
        self.headers: list[dict[str, str]] = []
        self.fill_price: float | None = None  # set: a market order fills at once at this price
        self.cash: float | None = None  # set: the account's cash moves with the fills
        self.positions: dict[str, float] = {}

    def fill(self, o: dict[str, Any], price: float) -> None:
        """The order fills (commission as the recorded order's, in USD); cash and position move."""
        qty, sign = float(o["qty"]), 1.0 if o["side"] == "buy" else -1.0
        o.update(status="filled", filled_qty=str(qty), filled_avg_price=str(price),
                 filled_at=_now_iso())
        if self.cash is not None:
            self.cash -= sign * qty * price + float(o.get("commission") or 0.0)
        self.positions[o["symbol"]] = self.positions.get(o["symbol"], 0.0) + sign * qty

    def position(self, sym: str, qty: float) -> dict[str, Any]:
        return dict(self.mocks["test_get_all_positions"][0], symbol=sym, qty=str(qty), qty_available=str(qty))

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
                    q = parse_qs(u.query)
                    want = q.get("status", ["open"])[0]
                    syms = q["symbols"][0].split(",") if "symbols" in q else None
                    rows = [o for o in fake.orders.values() if (o["status"] in ("accepted", "new")) == (want == "open")
                            and (syms is None or o["symbol"] in syms)]
                    return self._send(200, rows)
                if u.path == "/v2/positions":
                    return self._send(200, [fake.position(s, q) for s, q in fake.positions.items() if q])
                if u.path == "/v2/account":
                    acct = dict(fake.mocks["test_get_account"])
                    if fake.cash is not None:
                        acct["cash"] = str(fake.cash)
                    return self._send(200, acct)
                self._send(404, {"message": "no route"})

            def do_POST(self) -> None:  # noqa: N802
                req = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                fake.posts += 1
                o = dict(fake.mocks["test_market_order"], client_order_id=req["client_order_id"],
                         symbol=req["symbol"], qty=req["qty"], side=req["side"], type=req["type"],
                         order_type=req["type"], id=str(uuid.UUID(int=fake.posts)),
                         time_in_force=req["time_in_force"])
                if fake.cash is not None:  # an account that trades now: its times are now
                    o.update(submitted_at=_now_iso(), created_at=_now_iso(), updated_at=_now_iso())
                fake.orders[req["client_order_id"]] = o
                if fake.fill_price is not None and req["type"] == "market":
                    fake.fill(o, fake.fill_price)
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
    assert bal["USD"]["total"] == -23140.2 and bal["equity"] == 103820.56  # the recorded account: cash, equity
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


def test_reconcile_with_the_alpaca_account(fake, shared_data: Path, tmp_path) -> None:
    """The executor trades real AMZN minutes through AlpacaBroker (paper) and reconciles at start and every
    5 bars with the account's closed orders (its fills), open orders, positions and cash: it agrees on a
    clean run; an order placed by hand on the same account is a difference that halts new orders."""
    import pandas as pd

    from core.config import RiskConfig
    from core.execution.executor import Executor
    from core.execution.ledger import Ledger
    from core.types import Action, CandleEvent, Decision, SeriesKey, Thresholds

    f, url = fake
    f.cash = 50_000.0
    df = pd.read_csv(shared_data / "stocks" / "AMZN-1m-alpaca-2025-01-13_2025-01-17.csv", nrows=400).iloc[200:260]
    df["ts"] = pd.to_datetime(df["timestamp"]).dt.as_unit("ms").astype("int64")
    b = AlpacaBroker(ExecutionConfig(broker="alpaca"), secrets=KEYS, paper_url=url, retry_delay_s=0.01)
    exe = ExecutionConfig(broker="alpaca", fill_at="last_price", max_bar_age_s=0)
    risk = RiskConfig(fraction=0.5, stop_loss_pct=0.0, take_profit_pct=0.0, max_daily_loss_pct=0.5)
    ex = Executor(exe, risk, "AMZN", "1m", broker=b, reconcile_every_bars=5,
                  ledger=Ledger(tmp_path / "a.duckdb", account="paper:AMZN", initial_cash=exe.initial_cash,
                                symbol="AMZN"))
    assert ex.last_reconcile is not None and ex.last_reconcile.ok  # at start
    key = SeriesKey("alpaca", "AMZN", "1m")
    prev = None

    def feed(rows: pd.DataFrame) -> None:
        nonlocal prev
        for r in rows.itertuples():
            act = Action.HOLD if prev is None or r.close == prev else (Action.BUY if r.close > prev else Action.SELL)
            prev = r.close
            f.fill_price = float(r.close)
            ex.on_bar(CandleEvent(key, int(r.ts), r.open, r.high, r.low, r.close, r.volume),
                      Decision(id=f"d{r.ts}", ts=int(r.ts), symbol="AMZN", action=act, probs=(0.3, 0.3, 0.4),
                               expected_return=0.0, weights={}, thresholds=Thresholds(), target_position=1.0,
                               reason="test policy"))

    feed(df.iloc[:40])
    res = ex.last_reconcile
    assert res is not None and res.ok and res.fills_checked >= 6, res.summary() if res else None
    assert ex.snapshot().position == pytest.approx(f.positions.get("AMZN", 0.0))
    # the user buys 2 AMZN by hand on the same account
    manual = dict(f.mocks["test_market_order"], client_order_id="web-manual-1", symbol="AMZN", qty="2",
                  side="buy", id="manual-order-1")
    f.orders["web-manual-1"] = manual
    f.fill(manual, float(df["close"].iloc[40]))
    feed(df.iloc[40:50])  # the 5th bar after the last check reconciles, before its decision
    res = ex.last_reconcile
    assert res is not None and not res.ok and ex.halt_reason == "reconcile"
    assert {"fill_missing_in_ledger", "balance_base", "balance_quote"} <= {d.what for d in res.differences}
    assert any("manual-order-1" in d.detail for d in res.differences)
    halted = f.posts
    feed(df.iloc[50:60])
    assert f.posts == halted  # halted: nothing sent, whatever the decisions
    assert ex.ledger is not None
    ex.ledger.close()
