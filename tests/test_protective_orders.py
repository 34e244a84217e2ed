"""Stop-loss / take-profit resting ON THE EXCHANGE (core/execution/protective.py) against the fake Binance
spot server: after a BUY the executor places an OCO list (LIMIT_MAKER take-profit above, STOP_LOSS_LIMIT
below); real BTC/USDT minutes replayed as prices trigger a leg on the exchange, which the executor books
as the exit at its next bar (the sibling expires there, nothing is sold twice); a take-profit that fires
while the engine is down is booked at the restart; kill -9 around the OCO request never doubles it.

Each minute's trade path is replayed as open -> low -> high -> close (the real order inside a minute is
not recorded; the test needs only that the level is crossed)."""

from __future__ import annotations

import os
import signal
import urllib.request
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest
from fake_binance import FakeServer, local_binance
from helpers import binanceus_minutes

from core.config import ExecutionConfig, RiskConfig, Secrets
from core.execution.broker import CcxtBroker
from core.execution.executor import Executor
from core.execution.ledger import Ledger
from core.snapshot import EngineSnapshot, trading_view
from core.types import Action, CandleEvent, Decision, SeriesKey, Thresholds
from web.api import status_json
from web.pages.live import reconcile_line

KEYS = Secrets(exchange_api_key="test-key-not-real", exchange_secret="test-secret-not-real")
EXE = ExecutionConfig(broker="ccxt", sandbox=True, fill_at="last_price", max_bar_age_s=0)
SL, TP = 0.002, 0.003
RISK = RiskConfig(fraction=0.5, stop_loss_pct=SL, take_profit_pct=TP, cooldown_bars=2)
KEY = SeriesKey("binance", "BTC/USDT", "1m")
ACCOUNT = "testnet:BTC/USDT"


@pytest.fixture(scope="module")
def minutes(shared_data: Path) -> pd.DataFrame:
    return binanceus_minutes(shared_data, skip=14_399, nrows=600)


@pytest.fixture(scope="module")
def server():
    s = FakeServer()
    yield s
    s.close()


def exit_window(minutes: pd.DataFrame, fake, which: str, after: int) -> pd.DataFrame:
    """The real minutes from a BUY whose ``which`` level is hit first to ``after`` - 1 minutes past the
    exit, with the fake exchange reset to the entry's close."""
    k, j = first_exit(minutes, which)
    df = minutes.iloc[k:j + after]
    fake.reset(price=float(df["close"].iloc[0]))
    return df


def first_exit(df: pd.DataFrame, which: str) -> tuple[int, int]:
    """(entry bar, exit bar): a BUY at a close whose stop (which='sl') or take-profit ('tp') is the
    first level a later minute crosses (the other level not crossed on the way, nor in that minute)."""
    c, lo, hi = df["close"].to_numpy(), df["low"].to_numpy(), df["high"].to_numpy()
    for k in range(len(df) - 30):
        stop, take = c[k] * (1 - SL), c[k] * (1 + TP)
        for j in range(k + 1, k + 30):
            down, up = lo[j] <= stop, hi[j] >= take
            if down or up:
                if down != up and (down if which == "sl" else up) and j > k + 1:
                    return k, j
                break
    raise AssertionError(f"no {which} exit in the sample")


def make(db: Path, base: str, pid_header: bool = False) -> Executor:
    b = CcxtBroker(EXE, "binance", secrets=KEYS, exchange=local_binance(base, timeout_ms=2000, pid_header=pid_header),
                   retry_delay_s=0.01)
    return Executor(EXE, RISK, "BTC/USDT", "1m", broker=b,
                    ledger=Ledger(db, account=ACCOUNT, initial_cash=EXE.initial_cash, symbol="BTC/USDT"))


def decision(ts: int, act: Action) -> Decision:
    return Decision(id=f"{ACCOUNT}:1m:{ts}", ts=ts, symbol="BTC/USDT", action=act, probs=(0.3, 0.3, 0.4),
                    expected_return=0.0, weights={}, thresholds=Thresholds(), target_position=1.0, reason="test")


def trade_minute(ex: Executor, base: str, r, act: Action | None = None, path: bool = True) -> list:
    """The minute's prices reach the exchange (its resting orders trigger), then its close is a bar."""
    for p in (r.open, r.low, r.high, r.close) if path else (r.close,):
        urllib.request.urlopen(f"{base}/fake/price?p={p}", timeout=5).read()
    return ex.on_bar(CandleEvent(KEY, int(r.ts), r.open, r.high, r.low, r.close, r.volume),
                     None if act is None else decision(int(r.ts), act))


def assert_ledger_equals_exchange(db: Path, fake) -> pd.DataFrame:
    led = Ledger(db, account=ACCOUNT, initial_cash=EXE.initial_cash, symbol="BTC/USDT")
    try:
        assert fake.duplicates() == 0
        fills = led.fills()
        trades = {str(t["orderId"]): t for t in fake.trades}
        assert sorted(fills["order_id"]) == sorted(trades)
        for f in fills.itertuples():
            assert f.amount == pytest.approx(float(trades[f.order_id]["qty"]), abs=1e-12)
            assert f.fee == pytest.approx(float(trades[f.order_id]["commission"]), abs=1e-8)
        assert led.cash == pytest.approx(fake.balances["USDT"], abs=1e-6)
        assert float(led.restore()[1]) == pytest.approx(fake.balances["BTC"], abs=1e-12)
        return fills
    finally:
        led.close()


def test_stop_loss_fires_on_the_exchange_and_is_booked_once(minutes, server, tmp_path):
    fake = server.fake
    df = exit_window(minutes, fake, "sl", 2)
    db = tmp_path / "sl.duckdb"
    ex = make(db, server.base)
    assert ex.snapshot().protection == "exchange"
    trade_minute(ex, server.base, df.iloc[0], Action.BUY, path=False)
    s = ex.snapshot()
    assert s.position > 0 and s.protective_orders == 2 and fake.list_seq == 1
    legs = {o["type"]: o for o in fake.orders.values() if o["orderListId"] == 1}
    assert float(legs["STOP_LOSS_LIMIT"]["stopPrice"]) == pytest.approx(s.avg_price * (1 - SL), abs=0.01)
    assert float(legs["LIMIT_MAKER"]["price"]) == pytest.approx(s.avg_price * (1 + TP), abs=0.01)
    assert fake.balances["BTC"] - fake.locked_base() == pytest.approx(0.0, abs=1e-12)  # the coins are held
    # the status API and the Live page say who holds the stops
    snap = replace(EngineSnapshot.empty("BTC/USDT", "1m", "testnet"), trading=trading_view("testnet", "ccxt", ex))
    st = status_json(snap)["trading"]
    assert (st["protection"], st["protective_orders"]) == ("exchange", 2)
    assert "stops on the exchange (2 resting)" in str(reconcile_line(snap))
    assert {(o.type, o.reason) for o in ex.open_orders()} == {("stop_loss_limit", "stop_loss"),
                                                              ("limit_maker", "take_profit")}
    for r in df.iloc[1:-2].itertuples():  # no level crossed yet: the legs rest, the engine sells nothing
        trade_minute(ex, server.base, r)
    assert ex.snapshot().protective_orders == 2 and fake.posts == 2
    # the stop fires on the exchange during minute j; at j's close the policy also says SELL: the executor
    # resolves the resting legs first (the stop filled, the take-profit expired) and sells nothing more
    fills = trade_minute(ex, server.base, df.iloc[-2], Action.SELL)
    assert legs["STOP_LOSS_LIMIT"]["status"] == "FILLED" and legs["LIMIT_MAKER"]["status"] == "EXPIRED"
    assert [(f.side, f.clientOrderId) for f in fills] == [("sell", legs["STOP_LOSS_LIMIT"]["clientOrderId"])]
    s = ex.snapshot()
    assert s.position == 0 and s.protective_orders == 0 and s.cooldown >= 1 and fake.posts == 2
    trade_minute(ex, server.base, df.iloc[-1], Action.BUY)  # cooldown after a stop: no new entry
    assert fake.posts == 2
    assert ex.ledger is not None
    assert ex.ledger.unresolved_intents() == []
    it = ex.ledger.intents().set_index("reason")
    assert it.loc["stop_loss", "status"] == "filled" and it.loc["take_profit", "status"] == "canceled"
    ex.ledger.close()
    fills = assert_ledger_equals_exchange(db, fake)
    assert list(fills["reason"]) == ["signal", "stop_loss"]


def test_take_profit_fires_while_down_and_is_booked_at_restart(minutes, server, tmp_path):
    fake = server.fake
    df = exit_window(minutes, fake, "tp", 2)
    db = tmp_path / "tp.duckdb"
    ex = make(db, server.base)
    trade_minute(ex, server.base, df.iloc[0], Action.BUY, path=False)
    assert ex.snapshot().protective_orders == 2
    assert ex.ledger is not None
    ex.ledger.close()  # the engine goes down; the market moves on and the take-profit fills on the exchange
    for r in df.iloc[1:-1].itertuples():
        for p in (r.open, r.low, r.high, r.close):
            fake.set_price(float(p))
    legs = {o["type"]: o for o in fake.orders.values() if o["orderListId"] == 1}
    assert legs["LIMIT_MAKER"]["status"] == "FILLED" and legs["STOP_LOSS_LIMIT"]["status"] == "EXPIRED"
    ex = make(db, server.base)  # restart: the resting legs are looked up before anything else
    assert ex.snapshot().position == 0 and ex.snapshot().protective_orders == 0
    for r in df.iloc[1:].itertuples():  # the source re-delivers: the booked bar is skipped, the rest book
        trade_minute(ex, server.base, r, path=False)
    assert fake.posts == 2 and fake.list_seq == 1
    ex.ledger.close()
    fills = assert_ledger_equals_exchange(db, fake)
    assert list(fills["reason"]) == ["signal", "take_profit"]
    assert fills["price"].iloc[1] == pytest.approx(float(legs["LIMIT_MAKER"]["price"]))


def _child(db: Path, base: str, df: pd.DataFrame, mode: str) -> None:
    """The trading process: BUY then HOLD; SIGKILLed around the OCO request (before it leaves: 'before';
    booked by the exchange but never acknowledged: the fake kills it, 'in_flight'; acknowledged but the
    bar never committed: 'after_ack')."""
    code = 0
    try:
        ex = make(db, base, pid_header=True)
        real = ex.live_broker.create_protective  # type: ignore[union-attr]

        def create_protective(*a, **kw):
            if mode == "before":
                os.kill(os.getpid(), signal.SIGKILL)
            legs = real(*a, **kw)
            if mode == "after_ack":  # acknowledged, the bar's commit never happens
                os.kill(os.getpid(), signal.SIGKILL)
            return legs

        ex.live_broker.create_protective = create_protective  # type: ignore[union-attr]
        for n, r in enumerate(df.itertuples()):
            trade_minute(ex, base, r, Action.BUY if n == 0 else None, path=False)
    except BaseException:
        code = 3
    os._exit(code)


@pytest.mark.parametrize("mode", ["before", "in_flight", "after_ack"])
def test_kill9_around_the_oco_request_never_doubles_it(minutes, server, tmp_path, mode):
    fake = server.fake
    df = exit_window(minutes, fake, "sl", 2)
    fake.kill_on_post = 2 if mode == "in_flight" else 0  # POST 1: the market buy, POST 2: the OCO list
    db = tmp_path / f"k-{mode}.duckdb"
    pid = os.fork()
    if pid == 0:
        _child(db, server.base, df.iloc[:3], mode)
    _, status = os.waitpid(pid, 0)
    fake.kill_on_post = 0
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    sent = mode != "before"
    assert fake.list_seq == int(sent)
    ex = make(db, server.base)  # restart: the legs' intents are looked up by clientOrderId
    assert ex.snapshot().unresolved == 0
    assert ex.snapshot().protective_orders == (2 if sent else 0)
    for r in df.iloc[1:].itertuples():  # re-delivered minutes; the stop then fires on the exchange
        trade_minute(ex, server.base, r)
    assert fake.list_seq == 1 and fake.duplicates() == 0  # one OCO list, whatever the crash point
    assert ex.snapshot().position == 0
    assert ex.ledger is not None
    it = ex.ledger.intents()
    assert set(it[it["reason"] == "stop_loss"]["status"]) == ({"filled"} if sent else {"absent", "filled"})
    ex.ledger.close()
    assert list(assert_ledger_equals_exchange(db, fake)["reason"]) == ["signal", "stop_loss"]


def test_a_price_through_the_stop_books_the_exchange_exit_within_the_bar(minutes, server, tmp_path):
    """The stop fires on the exchange at a trade inside minute j; the tick that shows that price makes the
    executor look the legs up at once: the exit is booked before the minute closes."""
    fake = server.fake
    df = exit_window(minutes, fake, "sl", 1)
    ex = make(tmp_path / "tick.duckdb", server.base)
    trade_minute(ex, server.base, df.iloc[0], Action.BUY, path=False)
    for r in df.iloc[1:-1].itertuples():
        trade_minute(ex, server.base, r)
    stop = ex.snapshot().avg_price * (1 - SL)
    r = df.iloc[-1]
    if r["open"] > stop:  # a price above the stop: nothing to look up, nothing sold
        fake.set_price(float(r["open"]))
        assert ex.on_tick(float(r["open"]), int(r["ts"]) + 1_000, int(r["ts"])) == [] and fake.posts == 2
    fake.set_price(float(r["low"]))  # the market trades through the stop: the exchange fills the leg
    got = ex.on_tick(float(r["low"]), int(r["ts"]) + 30_000, int(r["ts"]))
    # the leg placed after the entry bar, booked as the stop-loss exit at the exchange's price
    assert [(f.side, f.clientOrderId) for f in got] == [("sell", ex.client_id(int(df["ts"].iloc[0]), "protect-sl"))]
    assert got[0].price == pytest.approx(float(r["low"]))
    assert ex.snapshot().position == 0 and ex.snapshot().protective_orders == 0 and fake.posts == 2
    trade_minute(ex, server.base, r, path=False)  # the close books the bar; nothing more is sold
    assert fake.posts == 2
    assert ex.ledger is not None
    ex.ledger.close()
    assert list(assert_ledger_equals_exchange(tmp_path / "tick.duckdb", fake)["reason"]) == ["signal", "stop_loss"]


def test_paper_exchange_holds_the_stops_the_same_way(minutes, tmp_path):
    """Paper = live minus the exchange: PaperExchange rests the same OCO legs (coins locked), a tick
    through the stop fills it there, the executor books it within the bar, the sibling expires, and the
    ledger equals the paper exchange's own book."""
    from core.execution.paper_exchange import PaperExchange

    k, j = first_exit(minutes, "sl")
    df = minutes.iloc[k:j + 1]
    px = PaperExchange(tmp_path / "px.duckdb", account="paper:BTC/USDT", symbol="BTC/USDT",
                       initial_cash=EXE.initial_cash)
    ex = Executor(EXE, RISK, "BTC/USDT", "1m", broker=px,
                  ledger=Ledger(tmp_path / "p.duckdb", account="paper:BTC/USDT", initial_cash=EXE.initial_cash,
                                symbol="BTC/USDT"))
    assert ex.snapshot().protection == "exchange"
    r0 = df.iloc[0]
    ex.on_bar(CandleEvent(KEY, int(r0.ts), r0.open, r0.high, r0.low, r0.close, r0.volume), decision(int(r0.ts), Action.BUY))
    assert ex.snapshot().protective_orders == 2 and len(px.fetch_open_orders("BTC/USDT")) == 2
    refused = px.create_order("BTC/USDT", "market", "sell", ex.snapshot().position, None, {"clientOrderId": "moe-x"})
    assert refused.status == "rejected" and "locked" in refused.reason  # the legs hold the coins
    exits = []
    for r in df.iloc[1:].itertuples():  # each minute's low as a tick, then its close
        exits += ex.on_tick(float(r.low), int(r.ts) + 30_000, int(r.ts))
        ex.on_bar(CandleEvent(KEY, int(r.ts), r.open, r.high, r.low, r.close, r.volume), None)
    assert [f.clientOrderId for f in exits] == [ex.client_id(int(r0.ts), "protect-sl")]
    assert ex.snapshot().position == 0 and px.fetch_open_orders("BTC/USDT") == []
    assert {o.status for o in (px.fetch_order_by_client_id(ex.client_id(int(r0.ts), f"protect-{g}")) for g in ("sl", "tp"))
            if o is not None} == {"closed", "expired"}
    assert ex.ledger is not None
    fills = ex.ledger.fills()
    trades = {t["order"]: t for t in px.fetch_my_trades("BTC/USDT")}
    assert list(fills["reason"]) == ["signal", "stop_loss"] and sorted(fills["order_id"]) == sorted(trades)
    bal = px.fetch_balance()
    assert ex.ledger.cash == pytest.approx(bal["USDT"]["total"], abs=1e-6)
    assert float(ex.ledger.restore()[1]) == pytest.approx(bal["BTC"]["total"], abs=1e-12)
    ex.ledger.close()
    px.store.close()


def test_single_stop_loss_limit_is_idempotent_and_triggers(minutes, server):
    """Where no take-profit rests on the exchange (take=None: a venue without OCO), one STOP_LOSS_LIMIT is
    placed; asking again with the same clientOrderId returns it (nothing doubled); a price through its
    trigger fills it at the market."""
    fake = server.fake
    px0 = float(minutes["close"].iloc[0])
    fake.reset(price=px0, btc=0.1)
    b = CcxtBroker(EXE, "binance", secrets=KEYS, exchange=local_binance(server.base), retry_delay_s=0.01)
    cids = {"sl": "moe-sl-single", "tp": "moe-tp-single", "list": "moe-list-single"}
    stop = px0 * (1 - SL)
    first = b.create_protective("BTC/USDT", 0.05, stop=stop, stop_limit=stop * 0.995, take=None, cids=cids, fresh=True)
    again = b.create_protective("BTC/USDT", 0.05, stop=stop, stop_limit=stop * 0.995, take=None, cids=cids)
    assert [o.id for o in first] == [o.id for o in again] and len(fake.orders) == 1 and fake.posts == 1
    o = fake.orders[int(first[0].id)]
    assert o["type"] == "STOP_LOSS_LIMIT" and float(o["stopPrice"]) == pytest.approx(stop, abs=0.01)
    fake.set_price(stop * 0.999)  # through the trigger, above the limit: filled at the market
    got = b.fetch_order_by_client_id(cids["sl"], "BTC/USDT")
    assert got is not None and got.status == "closed" and got.filled == pytest.approx(0.05)
    assert got.fee == pytest.approx(0.05 * stop * 0.999 * fake.fee_rate, rel=1e-6)
