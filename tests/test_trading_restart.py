"""Real trading end to end against the fake Binance spot server (tests/fake_binance.py) on 127.0.0.1:
the Executor trades through CcxtBroker in sandbox mode on real BTC/USDT minutes, and its ledger must
equal the exchange's own view (balances, fills, fees) after a clean run, after kill -9 of the trading
process at random points around create_order, and after a backfill of stale bars.

The trading process is a fork of the test process (imports already loaded: a trial costs the trading,
not the start-up), killed with SIGKILL: before the order is sent (intent committed), while it is in flight
(the fake books it, then kills the client before answering) and after the acknowledgement (before the
ledger write). The default run does 12 trials (one per ~1.3 s); the 50-trial run is marked slow
(MOE_SLOW_TESTS=1); MOE_KILL_TRIALS overrides both counts."""

from __future__ import annotations

import os
import random
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
from core.snapshot import EngineSnapshot, KillSwitchState, trading_view
from core.types import Action, CandleEvent, Decision, SeriesKey, Thresholds
from web.api import status_json
from web.pages.live import kill_panel

KEYS = Secrets(exchange_api_key="test-key-not-real", exchange_secret="test-secret-not-real")
EXE = ExecutionConfig(broker="ccxt", sandbox=True, fill_at="last_price", max_bar_age_s=0)
RISK = RiskConfig(fraction=0.5, stop_loss_pct=0.0, take_profit_pct=0.0, max_daily_loss_pct=0.5)
KEY = SeriesKey("binance", "BTC/USDT", "1m")
ACCOUNT = "testnet:BTC/USDT"
TRIALS = os.environ.get("MOE_KILL_TRIALS")


@pytest.fixture(scope="module")
def bars(shared_data: Path) -> pd.DataFrame:
    """Real minutes of the March 2023 move (many direction changes, hence many orders)."""
    return binanceus_minutes(shared_data, skip=14_399, nrows=400)


@pytest.fixture(scope="module")
def server():
    s = FakeServer()
    yield s
    s.close()


def decisions(df: pd.DataFrame) -> list[Decision]:
    """A fixed policy on the real closes (BUY after an up-minute, SELL after a down-minute): many trades."""
    out = []
    prev = None
    for r in df.itertuples():
        act = Action.HOLD if prev is None or r.close == prev else (Action.BUY if r.close > prev else Action.SELL)
        out.append(Decision(id=f"{ACCOUNT}:1m:{r.ts}", ts=int(r.ts), symbol="BTC/USDT", action=act,
                            probs=(0.3, 0.3, 0.4), expected_return=0.0, weights={}, thresholds=Thresholds(),
                            target_position=1.0 if act == Action.BUY else 0.0, reason="test policy"))
        prev = r.close
    return out


def make_executor(db: Path, base: str, *, pid_header: bool = False, **kw) -> Executor:
    b = CcxtBroker(EXE, "binance", secrets=KEYS, exchange=local_binance(base, timeout_ms=2000, pid_header=pid_header),
                   retry_delay_s=0.01)
    led = Ledger(db, account=ACCOUNT, initial_cash=EXE.initial_cash, symbol="BTC/USDT")
    return Executor(EXE, RISK, "BTC/USDT", "1m", ledger=led, broker=b, **kw)


def feed(ex: Executor, base: str, df: pd.DataFrame, decs: list[Decision]) -> None:
    for r, d in zip(df.itertuples(), decs, strict=True):
        # the market trades at this minute's close (set over HTTP: the forked trader owns no server object)
        urllib.request.urlopen(f"{base}/fake/price?p={r.close}", timeout=5).read()
        ex.on_bar(CandleEvent(KEY, int(r.ts), r.open, r.high, r.low, r.close, r.volume), d)


def assert_ledger_equals_exchange(db: Path, server: FakeServer) -> dict:
    fake = server.fake
    led = Ledger(db, account=ACCOUNT, initial_cash=EXE.initial_cash, symbol="BTC/USDT")
    try:
        assert fake.duplicates() == 0, "a clientOrderId reached the exchange twice"
        assert led.unresolved_intents() == [], "an intent stayed unresolved after the restart"
        fills = led.fills()
        trades = {str(t["orderId"]): t for t in fake.trades}
        assert sorted(fills["order_id"]) == sorted(trades), "ledger fills differ from the exchange's trades"
        for f in fills.itertuples():
            t = trades[f.order_id]
            assert f.amount == pytest.approx(float(t["qty"]), abs=1e-12)
            assert f.price == pytest.approx(float(t["price"]), rel=1e-12)
            assert f.fee == pytest.approx(float(t["commission"]), abs=1e-8)
        assert led.cash == pytest.approx(fake.balances["USDT"], abs=1e-6)
        assert float(led.restore()[1]) == pytest.approx(fake.balances["BTC"], abs=1e-12)  # S_POS
        assert led.fees == pytest.approx(sum(float(t["commission"]) for t in fake.trades), abs=1e-6)
        intents = led.intents()
        assert set(intents["status"]) <= {"filled", "absent", "rejected"}
        return {"fills": len(fills), "intents": len(intents), "absent": int((intents["status"] == "absent").sum())}
    finally:
        led.close()


def test_replay_through_ccxt_broker_ledger_equals_exchange(bars, server, tmp_path):
    server.fake.reset(price=float(bars["close"].iloc[0]))
    df = bars.iloc[:200]
    ex = make_executor(tmp_path / "l.duckdb", server.base)
    feed(ex, server.base, df, decisions(df))
    assert ex.snapshot().mode == "sandbox" and ex.ledger is not None
    ex.ledger.close()
    got = assert_ledger_equals_exchange(tmp_path / "l.duckdb", server)
    assert got["fills"] >= 40 and got["absent"] == 0
    # every order is explainable: its intent names the decision and the bar behind it
    led = Ledger(tmp_path / "l.duckdb", account=ACCOUNT, symbol="BTC/USDT")
    it = led.intents()
    assert (it["decision_id"] == ACCOUNT + ":1m:" + it["bar_ts"].astype(str)).all()
    led.close()


def _trial(server: FakeServer, df: pd.DataFrame, decs: list[Decision], db: Path, mode: str, k: int) -> int:
    """One trading process killed with SIGKILL at the k-th order (mode: before_send | in_flight |
    after_ack); returns the signal that ended it (0: it finished before the k-th order)."""
    fake = server.fake
    fake.kill_on_post = k if mode == "in_flight" else 0
    pid = os.fork()
    if pid == 0:  # the trading process
        code = 0
        try:
            ex = make_executor(db, server.base, pid_header=True)
            broker = ex.live_broker
            real = broker.create_order
            n = 0

            def create_order(*a, **kw):
                nonlocal n
                n += 1
                if mode == "before_send" and n == k:
                    os.kill(os.getpid(), signal.SIGKILL)
                o = real(*a, **kw)
                if mode == "after_ack" and n == k:
                    os.kill(os.getpid(), signal.SIGKILL)
                return o

            broker.create_order = create_order
            feed(ex, server.base, df, decs)
        except BaseException:
            code = 3
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    fake.kill_on_post = 0
    if os.WIFSIGNALED(status):
        return os.WTERMSIG(status)
    assert os.WEXITSTATUS(status) == 0, "the trading process failed before the kill"
    return 0


def test_kill9_around_create_order_never_doubles(bars, server, tmp_path):
    kill_trials(bars, server, tmp_path, int(TRIALS or 12), seed=15)


@pytest.mark.slow
def test_kill9_50_trials(bars, server, tmp_path):
    kill_trials(bars, server, tmp_path, int(TRIALS or 50), seed=1515)


def kill_trials(bars, server, tmp_path, trials: int, seed: int) -> None:
    """kill -9 at a random order and point; restart; finish the run. Zero duplicates on the exchange,
    every intent resolved, ledger equal to the exchange."""
    TRIALS = trials
    rng = random.Random(seed)
    df = bars.iloc[:30]
    decs = decisions(df)
    modes = ["before_send", "in_flight", "after_ack"]
    killed = {m: 0 for m in modes}
    for i in range(TRIALS):
        mode = modes[i % 3]
        k = rng.randint(1, 12)
        server.fake.reset(price=float(df["close"].iloc[0]))
        db = tmp_path / f"t{i}.duckdb"
        sig = _trial(server, df, decs, db, mode, k)
        if sig:
            assert sig == signal.SIGKILL
            killed[mode] += 1
        ex = make_executor(db, server.base)  # restart: resolves the intents before anything else
        assert ex.snapshot().unresolved == 0
        feed(ex, server.base, df, decs)  # the source re-delivers every bar: booked ones are skipped
        assert ex.ledger is not None
        ex.ledger.close()
        got = assert_ledger_equals_exchange(db, server)
        if sig and mode == "before_send":
            assert got["absent"] == 1  # the intent was committed, the order never left
        if sig and mode != "before_send":
            assert got["absent"] == 0  # the order reached the exchange and was found by clientOrderId
    assert sum(killed.values()) >= TRIALS * 0.8, killed
    print(f"kill -9 trials: {TRIALS}, killed {killed}")


def test_backfill_after_restart_trades_nothing(bars, server, tmp_path):
    """Down for 2 h: the restart's backfill of 120 minutes is recorded but never traded."""
    server.fake.reset(price=float(bars["close"].iloc[0]))
    db = tmp_path / "b.duckdb"
    exe = EXE.model_copy(update={"max_bar_age_s": 90.0})
    live, gap = bars.iloc[:40], bars.iloc[40:160]  # 120 minutes missed while down
    now = {"t": 0.0}

    def clock() -> float:
        return now["t"]

    b = CcxtBroker(exe, "binance", secrets=KEYS, exchange=local_binance(server.base, timeout_ms=2000),
                   retry_delay_s=0.01)
    ex = Executor(exe, RISK, "BTC/USDT", "1m", ledger=Ledger(db, account=ACCOUNT, symbol="BTC/USDT"), broker=b,
                  max_bar_age_s=exe.max_bar_age_s, clock=clock)
    decs = decisions(bars.iloc[:161])
    for r, d in zip(live.itertuples(), decs[:40], strict=True):  # live: each bar arrives 2 s after its close
        now["t"] = (r.ts + 60_000 + 2_000) / 1000
        server.fake.price = float(r.close)
        ex.on_bar(CandleEvent(KEY, int(r.ts), r.open, r.high, r.low, r.close, r.volume), d)
    posts_live = server.fake.posts
    assert posts_live >= 5 and ex.stale_bars == 0
    assert ex.ledger is not None
    ex.ledger.close()
    # the restart, 2 h later, 40 s after the next minute closed: 120 backfilled bars, all closed > 90 s ago
    nxt = bars.iloc[160]
    now["t"] = (int(nxt["ts"]) + 60_000 + 40_000) / 1000
    ex = Executor(exe, RISK, "BTC/USDT", "1m", ledger=Ledger(db, account=ACCOUNT, symbol="BTC/USDT"), broker=b,
                  max_bar_age_s=exe.max_bar_age_s, clock=clock)
    gap_decs = decs[40:160]
    assert sum(d.action != Action.HOLD for d in gap_decs) > 60  # the policy would have traded them
    for r, d in zip(gap.itertuples(), gap_decs, strict=True):
        server.fake.price = float(r.close)
        ex.on_bar(CandleEvent(KEY, int(r.ts), r.open, r.high, r.low, r.close, r.volume), d)
    assert ex.stale_bars == 120 and server.fake.posts == posts_live  # recorded, none traded
    assert ex.ledger is not None
    eq = ex.ledger.equity_curve()
    assert len(eq) == 160 and eq["ts"].iloc[-1] == gap["ts"].iloc[-1]  # every bar recorded
    # the first fresh bar trades again (a BUY or SELL the position allows)
    before = server.fake.posts
    held = ex.snapshot().position
    server.fake.price = float(nxt["close"])
    ex.on_bar(CandleEvent(KEY, int(nxt["ts"]), nxt["open"], nxt["high"], nxt["low"], nxt["close"], nxt["volume"]),
              decisions(bars.iloc[159:161])[1])
    assert ex.stale_bars == 120 and ex.snapshot().ts == int(nxt["ts"])
    act = decisions(bars.iloc[159:161])[1].action
    assert (server.fake.posts > before) == ((act == Action.BUY and held == 0) or (act == Action.SELL and held > 0))
    ex.ledger.close()
    assert_ledger_equals_exchange(db, server)


def test_reconcile_every_n_bars_agrees_then_halts_on_a_manual_trade(bars, server, tmp_path):
    """Reconciliation at start and every 10 bars agrees with the fake exchange on a clean run; a trade
    made outside the engine (the user's own order on the account) is a difference: orders halt
    (reason reconcile) until acknowledged, then trading resumes."""
    fake = server.fake
    fake.reset(price=float(bars["close"].iloc[0]))
    events: list[tuple[str, dict]] = []
    df = bars.iloc[:120]
    decs = decisions(df)
    ex = make_executor(tmp_path / "r.duckdb", server.base, reconcile_every_bars=10,
                       on_event=lambda k, d: events.append((k, d)))
    assert ex.last_reconcile is not None and ex.last_reconcile.ok  # at start: a fresh account agrees
    feed(ex, server.base, df.iloc[:60], decs[:60])
    res = ex.last_reconcile
    assert res is not None and res.ok and res.fills_checked >= 10 and not ex.halt_reason, res.summary()
    # the user buys 0.01 BTC by hand on the same account
    fake.create({"symbol": "BTCUSDT", "side": "BUY", "type": "MARKET", "quantity": "0.01000000",
                 "newClientOrderId": "web_manual_1"})
    posts = fake.posts
    feed(ex, server.base, df.iloc[60:70], decs[60:70])  # the 10th bar reconciles, before its decision
    res = ex.last_reconcile
    assert res is not None and not res.ok and ex.halt_reason == "reconcile"
    whats = {d.what for d in res.differences}
    assert {"fill_missing_in_ledger", "balance_base", "balance_quote"} <= whats, whats
    assert ex.snapshot().halt_reason == "reconcile"
    assert any(k == "reconcile" for k, _ in events) and any(k == "kill_switch" and d["reason"] == "reconcile"
                                                            for k, d in events)
    # the UI and the API show the differences (what /api/status and the live page render)
    view = trading_view("testnet", "ccxt", ex)
    snap = replace(EngineSnapshot.empty("BTC/USDT", "1m", "testnet"), trading=view,
                   kill_switch=KillSwitchState(True, "reconcile", None))
    st = status_json(snap)
    assert st["kill_switch"]["reason"] == "reconcile" and st["trading"]["halted"] == "reconcile"
    assert st["trading"]["reconcile"]["ok"] is False and any("web" in d or "not in the ledger" in d
                                                             for d in st["trading"]["reconcile"]["differences"])
    panel = str(kill_panel(snap))
    assert "reconcile-diffs" in panel and "is not in the ledger" in panel and "Reset acknowledges" in panel
    halted_posts = fake.posts
    feed(ex, server.base, df.iloc[70:90], decs[70:90])
    assert fake.posts == halted_posts  # halted: nothing sent, whatever the decisions
    ex.reset_kill_switch()  # the user acknowledges
    assert not ex.halt_reason
    feed(ex, server.base, df.iloc[90:120], decs[90:120])
    assert fake.posts > halted_posts and ex.last_reconcile is not None and ex.last_reconcile.ok
    assert not ex.halt_reason and posts <= halted_posts


# ---- paper = live minus the exchange: the same executor path against PaperExchange (its own DuckDB book)

PAPER = "paper:BTC/USDT"


def make_paper_executor(db: Path, xdb: Path, **kw) -> Executor:
    from core.execution.paper_exchange import PaperExchange

    px = PaperExchange(xdb, account=PAPER, symbol="BTC/USDT", initial_cash=EXE.initial_cash)
    return Executor(EXE, RISK, "BTC/USDT", "1m", broker=px,
                    ledger=Ledger(db, account=PAPER, initial_cash=EXE.initial_cash, symbol="BTC/USDT"), **kw)


def feed_paper(ex: Executor, df: pd.DataFrame, decs: list[Decision]) -> None:
    for r, d in zip(df.itertuples(), decs, strict=True):
        ex.on_bar(CandleEvent(KEY, int(r.ts), r.open, r.high, r.low, r.close, r.volume), d)


def close_paper(ex: Executor) -> None:
    assert ex.ledger is not None
    ex.ledger.close()
    ex.live_broker.store.close()  # type: ignore[union-attr]


def assert_ledger_equals_paper_exchange(db: Path, xdb: Path) -> int:
    from core.execution.paper_exchange import PaperExchange

    px = PaperExchange(xdb, account=PAPER, symbol="BTC/USDT", initial_cash=EXE.initial_cash)
    led = Ledger(db, account=PAPER, initial_cash=EXE.initial_cash, symbol="BTC/USDT")
    try:
        trades = {t["order"]: t for t in px.fetch_my_trades("BTC/USDT")}
        fills = led.fills()
        assert sorted(fills["order_id"]) == sorted(trades) and led.unresolved_intents() == []
        for f in fills.itertuples():
            assert f.amount == trades[f.order_id]["amount"] and f.fee == pytest.approx(trades[f.order_id]["fee"]["cost"])
        bal = px.fetch_balance()
        assert led.cash == pytest.approx(bal["USDT"]["total"], abs=1e-6)
        assert float(led.restore()[1]) == pytest.approx(bal["BTC"]["total"], abs=1e-12)
        return len(fills)
    finally:
        led.close()
        px.store.close()


def _paper_child(db: Path, xdb: Path, mode: str, k: int, df: pd.DataFrame, decs: list[Decision]) -> None:
    """The forked paper-trading process, SIGKILLed at its k-th order (before_send | after_ack)."""
    code = 0
    try:
        ex = make_paper_executor(db, xdb)
        real, n = ex.live_broker.create_order, [0]  # type: ignore[union-attr]

        def create_order(*a, **kw):
            n[0] += 1
            if mode == "before_send" and n[0] == k:
                os.kill(os.getpid(), signal.SIGKILL)
            o = real(*a, **kw)
            if mode == "after_ack" and n[0] == k:
                os.kill(os.getpid(), signal.SIGKILL)
            return o

        ex.live_broker.create_order = create_order  # type: ignore[union-attr]
        feed_paper(ex, df, decs)
    except BaseException:
        code = 3
    os._exit(code)


def test_paper_exchange_same_path_replay_and_kill9(bars, tmp_path):
    """The replay, reconciliation and kill -9 checks of the exchange path, in paper mode."""
    df = bars.iloc[:60]
    decs = decisions(df)
    ex = make_paper_executor(tmp_path / "p.duckdb", tmp_path / "px.duckdb", reconcile_every_bars=10)
    feed_paper(ex, df, decs)
    assert ex.snapshot().mode == "paper" and ex.last_reconcile is not None and ex.last_reconcile.ok
    assert ex.last_reconcile.fills_checked >= 10 and not ex.halt_reason
    close_paper(ex)
    assert assert_ledger_equals_paper_exchange(tmp_path / "p.duckdb", tmp_path / "px.duckdb") >= 15
    rng = random.Random(7)
    df, decs = bars.iloc[:30], decisions(bars.iloc[:30])
    killed = 0
    for i in range(4):
        mode = ("before_send", "after_ack")[i % 2]
        k = rng.randint(1, 10)
        db, xdb = tmp_path / f"k{i}.duckdb", tmp_path / f"kx{i}.duckdb"
        pid = os.fork()
        if pid == 0:
            _paper_child(db, xdb, mode, k, df, decs)
        _, status = os.waitpid(pid, 0)
        killed += int(os.WIFSIGNALED(status))
        assert os.WIFSIGNALED(status) or os.WEXITSTATUS(status) == 0
        ex = make_paper_executor(db, xdb)  # restart: intents resolved against the paper exchange's book
        feed_paper(ex, df, decs)
        close_paper(ex)
        assert_ledger_equals_paper_exchange(db, xdb)
    assert killed >= 3


def test_unconfirmed_order_resolved_after_restart_then_backfill(bars, server, tmp_path):
    """An order booked by the exchange whose answer and lookups all failed stays a pending intent in a
    recorded bar; the restart finds it filled and books it with the next bar, here a backfilled (stale)
    one: booked once, never traded again, ledger equal to the exchange after one more restart."""
    fake = server.fake
    fake.reset(price=float(bars["close"].iloc[0]))
    db = tmp_path / "u.duckdb"
    df = bars.iloc[:40]
    decs = decisions(df)
    buy = next(i for i, d in enumerate(decs) if d.action == Action.BUY)
    ex = make_executor(db, server.base)
    ex.live_broker.retries = 2  # type: ignore[union-attr]
    feed(ex, server.base, df.iloc[:buy], decs[:buy])
    fake.stall_posts, fake.stall_s = 1, 2.5  # booked, answered after the client's 2 s timeout
    fake.fail_next, fake.fail_paths, fake.fail_methods = [503] * 6, ("/api/v3/order",), ("GET",)  # lookups fail
    feed(ex, server.base, df.iloc[buy:buy + 1], decs[buy:buy + 1])
    assert ex.snapshot().position == 0 and len(fake.orders) == 1  # the exchange has it, the ledger not yet
    assert ex.ledger is not None and [i.status for i in ex.ledger.unresolved_intents()] == ["pending"]
    ex.ledger.close()
    fake.fail_next, fake.fail_methods = [], ()
    # restart long after: the next bars are backfill (stale); the intent resolves first, booked with them
    now = (int(df["ts"].iloc[-1]) + 3_600_000) / 1000
    ex = make_executor(db, server.base, max_bar_age_s=90.0, clock=lambda: now)
    assert ex.snapshot().position > 0 and ex.snapshot().unresolved == 0
    feed(ex, server.base, df.iloc[buy + 1:], decs[buy + 1:])
    assert ex.stale_bars == len(df) - buy - 1 and len(fake.orders) == 1
    assert ex.ledger is not None
    ex.ledger.close()
    got = assert_ledger_equals_exchange(db, server)  # restored state == the exchange: booked exactly once
    assert got["fills"] == 1
