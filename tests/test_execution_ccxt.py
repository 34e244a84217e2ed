"""CcxtBroker against a local fake exchange on 127.0.0.1 that speaks Binance's spot REST format
(tests/fake_binance.py: exchangeInfo, time, order POST/GET/DELETE, openOrders, account, myTrades). Never the
internet. Market orders fill at a real BTC/USDT close from the shared data. The live-trading safety
rule (config + --live flag + keys) is checked condition by condition."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from fake_binance import FakeBinance, FakeServer, local_binance

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


@pytest.fixture()
def fake_exchange(shared_data):
    """The fake Binance spot server of tests/fake_binance.py (shared with the real-trading tests)."""
    df = pd.read_csv(shared_data / "binanceus" / "BTC_USDT-1m.csv", nrows=2000)
    server = FakeServer(FakeBinance(price=float(df["close"].iloc[-1])))
    yield server.fake, server.base, df
    server.close()


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
    bal = b.fetch_balance()  # the market buy moved the account
    assert bal["USDT"]["free"] == pytest.approx(10_000 - 0.01 * fake.price * 1.001) and bal["BTC"]["free"] == 0.01
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
    fake.balances["BTC"] = 0.01  # the account holds what it sells
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
    # the long's stop-loss / take-profit rested on the exchange as an OCO list, cancelled before the sell
    legs = [o for o in fake.orders.values() if o["orderListId"] >= 0]
    assert len(fake.orders) == 4 and {o["type"] for o in legs} == {"STOP_LOSS_LIMIT", "LIMIT_MAKER"}
    assert all(o["status"] == "CANCELED" for o in legs) and ex.snapshot().protection == "exchange"
