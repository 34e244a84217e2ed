"""Exchange rules and protective exits through CcxtBroker on the fake Binance server (real BTCUSDT
filters: tick 0.01, step 0.00001, min notional 5): amounts and prices rounded by ccxt's precision
helpers, orders under the minimum skipped with a reason and never sent, timeInForce from config,
429 / 5xx / timeouts retried without doubling; stop-loss acting on an intrabar price, not at the close."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from fake_binance import FakeServer, local_binance
from helpers import binanceus_minutes

from core.config import ExecutionConfig, RiskConfig, Secrets
from core.execution.broker import CcxtBroker, client_order_id
from core.execution.executor import Executor
from core.execution.ledger import Ledger
from core.types import Action, CandleEvent, Decision, SeriesKey, Thresholds

KEYS = Secrets(exchange_api_key="test-key-not-real", exchange_secret="test-secret-not-real")


@pytest.fixture()
def server(shared_data: Path):
    df = pd.read_csv(shared_data / "binanceus" / "BTC_USDT-1m.csv", nrows=1)
    s = FakeServer()
    s.fake.reset(price=float(df["close"].iloc[0]))
    yield s
    s.close()


def broker(base: str, retries: int = 3, **exe) -> CcxtBroker:
    return CcxtBroker(ExecutionConfig(broker="ccxt", **exe), "binance", secrets=KEYS, exchange=local_binance(base),
                      retry_delay_s=0.01, retries=retries)


def test_precision_minimums_and_time_in_force(server):
    fake = server.fake
    b = broker(server.base, time_in_force="IOC")
    px = fake.price
    o = b.create_order("BTC/USDT", "market", "buy", 0.0123456789, None,
                       {"clientOrderId": client_order_id("r1"), "refPrice": px})
    assert o.status == "closed" and o.filled == pytest.approx(0.01234)  # truncated to the 0.00001 step
    sent = fake.orders[max(fake.orders)]
    assert sent["origQty"] == "0.01234000"
    lim = b.create_order("BTC/USDT", "limit", "buy", 0.01, 1000.12789, {"clientOrderId": client_order_id("r2")})
    sent = fake.orders[max(fake.orders)]
    assert lim.status == "open" and sent["price"] == "1000.13000000" and sent["timeInForce"] == "IOC"
    posts = fake.posts
    # 0.0001 BTC at ~20k is ~2 USDT, under the 5 USDT minimum notional: skipped, never sent
    tiny = b.create_order("BTC/USDT", "market", "buy", 0.0001, None,
                          {"clientOrderId": client_order_id("r3"), "refPrice": px})
    assert tiny.status == "rejected" and "minimum order value 5" in tiny.reason and fake.posts == posts
    dust = b.create_order("BTC/USDT", "market", "sell", 0.000004, None,
                          {"clientOrderId": client_order_id("r4"), "refPrice": px})
    assert dust.status == "rejected" and "minimum amount" in dust.reason and fake.posts == posts


def test_429_and_5xx_are_retried_without_doubling(server):
    fake = server.fake
    b = broker(server.base, retries=4)
    fake.fail_next, fake.fail_paths = [429, 503], ("/api/v3/order",)  # the two lookups before the POST
    fake.fail_post_next = [500]  # then the first POST fails before booking
    cid = client_order_id("retry-1")
    o = b.create_order("BTC/USDT", "market", "buy", 0.01, None, {"clientOrderId": cid})
    assert o.status == "closed" and len(fake.orders) == 1 and fake.duplicates() == 0
    assert fake.posts == 2
    fake.fail_next, fake.fail_paths = [500, 429], ("/api/v3/account",)
    bal = b.fetch_balance()  # reads retried with back-off
    assert bal["BTC"]["total"] == pytest.approx(0.01)
    fake.ack_delay_s = 0.0
    fake.stall_posts = 1  # booked, answered after the client's timeout: found by clientOrderId
    o2 = b.create_order("BTC/USDT", "market", "sell", 0.01, None, {"clientOrderId": client_order_id("retry-2")})
    assert o2.status == "closed" and fake.posts == 3 and fake.duplicates() == 0


def test_stop_loss_acts_on_an_intrabar_price(server, shared_data: Path, tmp_path):
    """5m bars from real minutes; the minutes' closes inside a bar are its ticks. After a BUY, the first
    tick under the stop level exits at once (one order), not at the bar's close."""
    fake = server.fake
    m = binanceus_minutes(shared_data, skip=14_399, nrows=3000)
    sl = 0.002
    closes = m["close"].to_numpy()
    # the first 5m bar (aligned) whose close is followed, inside the NEXT 5m bar, by a tick below the stop
    start = int(np.argmax(m["ts"].to_numpy() % 300_000 == 0))
    i = next(k for k in range(start + 4, len(m) - 5, 5) if closes[k + 1:k + 5].min() < closes[k] * (1 - sl)
             and closes[k + 1:k + 5].max() < closes[k] * (1 + 0.01))
    bar1 = m.iloc[i - 4:i + 1]
    exe = ExecutionConfig(broker="ccxt", sandbox=True, protective_orders="engine")  # the engine enforces
    risk = RiskConfig(fraction=0.5, stop_loss_pct=sl, take_profit_pct=0.01, cooldown_bars=3)
    ex = Executor(exe, risk, "BTC/USDT", "5m", broker=broker(server.base),
                  ledger=Ledger(tmp_path / "s.duckdb", account="testnet:BTC/USDT", symbol="BTC/USDT"))
    key = SeriesKey("binance", "BTC/USDT", "5m")
    ts1 = int(bar1["ts"].iloc[0])
    fake.price = float(bar1["close"].iloc[-1])
    ex.on_bar(CandleEvent(key, ts1, bar1["open"].iloc[0], bar1["high"].max(), bar1["low"].min(), bar1["close"].iloc[-1],
                          bar1["volume"].sum()),
              Decision(id="d", ts=ts1, symbol="BTC/USDT", action=Action.BUY, probs=(0.1, 0.1, 0.8),
                       expected_return=0.0, weights={}, thresholds=Thresholds(), target_position=1.0, reason="t"))
    entry = ex.snapshot().avg_price
    assert ex.snapshot().position > 0 and fake.posts == 1 and ex.snapshot().protection == "engine"
    level = entry * (1 - sl)
    exits = []
    for r in m.iloc[i + 1:i + 5].itertuples():  # the next bar's minutes, as ticks
        fake.price = float(r.close)
        got = ex.on_tick(float(r.close), int(r.ts) + 59_000)
        if got:
            exits.append((r.close, got))
    assert exits, "no tick crossed the stop level"
    (px, fills), = exits  # exactly one exit, at the first tick under the level
    assert px < level and fills[0].side == "sell" and fills[0].price == pytest.approx(px)
    assert ex.snapshot().position == 0 and fake.posts == 2 and ex.snapshot().cooldown == 3
    bar2 = m.iloc[i + 1:i + 6]
    ex.on_bar(CandleEvent(key, ts1 + 300_000, bar2["open"].iloc[0], bar2["high"].max(), bar2["low"].min(),
                          bar2["close"].iloc[-1], bar2["volume"].sum()), None)
    assert fake.posts == 2  # the close finds nothing left to stop
    assert ex.ledger is not None
    f = ex.ledger.fills()
    assert list(f["side"]) == ["buy", "sell"] and list(f["reason"]) == ["signal", "stop_loss"]
    assert ex.ledger.unresolved_intents() == []


def test_fee_in_the_base_asset_keeps_ledger_and_exchange_equal(server, shared_data: Path, tmp_path):
    """Binance takes a buy's commission in BTC (no BNB): the position receives less and the fee is
    valued in USDT; reconciliation agrees with the exchange's balances after a buy and a sell."""
    fake = server.fake
    fake.buy_fee_in_base = True
    m = pd.read_csv(shared_data / "binanceus" / "BTC_USDT-1m.csv", nrows=3)
    m["ts"] = pd.to_datetime(m["timestamp"]).dt.as_unit("ms").astype("int64")
    exe = ExecutionConfig(broker="ccxt", sandbox=True)
    ex = Executor(exe, RiskConfig(fraction=0.5), "BTC/USDT", "1m", broker=broker(server.base),
                  ledger=Ledger(tmp_path / "f.duckdb", account="testnet:BTC/USDT", symbol="BTC/USDT"),
                  reconcile_every_bars=1)
    key = SeriesKey("binance", "BTC/USDT", "1m")
    for r, act in zip(m.itertuples(), [Action.BUY, Action.HOLD, Action.SELL], strict=True):
        fake.price = float(r.close)
        ex.on_bar(CandleEvent(key, int(r.ts), r.open, r.high, r.low, r.close, r.volume),
                  Decision(id=f"d{r.ts}", ts=int(r.ts), symbol="BTC/USDT", action=act, probs=(0.2, 0.2, 0.6),
                           expected_return=0.0, weights={}, thresholds=Thresholds(),
                           target_position=1.0 if act == Action.BUY else 0.0, reason="t"))
        if act == Action.BUY:
            assert ex.snapshot().position == pytest.approx(fake.balances["BTC"], abs=1e-12)
            assert fake.trades[0]["commissionAsset"] == "BTC"
    res = ex.reconcile()
    assert res is not None and res.ok, res.summary() if res else None
    assert ex.snapshot().cash == pytest.approx(fake.balances["USDT"], abs=1e-6)
    assert ex.snapshot().position == pytest.approx(fake.balances["BTC"], abs=1e-12)
    assert ex.ledger is not None
    ex.ledger.close()
