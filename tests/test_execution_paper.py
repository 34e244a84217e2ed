"""PaperBroker (ccxt-shaped paper account), RiskManager, and the paper Executor == kernel.simulate on real
BTC/USDT candles. Hand-written bars/orders only in the small arithmetic cases, computed by hand."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from core.config import ExecutionConfig, RiskConfig
from core.execution import kernel as K
from core.execution.broker import OrderError, PaperBroker, client_order_id
from core.execution.executor import Executor
from core.execution.risk import RiskManager
from core.types import Action, CandleEvent, Decision, SeriesKey, Thresholds

KEY = SeriesKey("binanceus", "BTC/USDT", "1m")


def paper(fill_at="next_open", cash=10_000.0, **kw):
    p = K.make_params(fill_at=fill_at, taker_fee_bps=10, slippage_bps=2, **kw)
    st = K.new_state(cash)
    st[K.S_LAST_PRICE] = 100.0
    return PaperBroker(p, st, "BTC/USDT", maker_fee_bps=5), st


def test_market_order_next_open_with_slippage_and_taker_fee():
    b, st = paper()
    o = b.create_order("BTC/USDT", "market", "buy", 10.0, params={"clientOrderId": "c1"})
    assert o.status == "open" and st[K.S_POS] == 0.0  # waits for the next bar's open
    fills = b.on_bar(60_000, 101.0, 102.0, 100.0, 101.5)
    assert len(fills) == 1 and fills[0].price == pytest.approx(101.0 * 1.0002)
    assert fills[0].fee == pytest.approx(10 * 101.0202 * 0.001)
    assert st[K.S_CASH] == pytest.approx(10_000 - 1010.202 - 1.010202)
    assert b.fetch_order("c1").status == "closed" and b.fetch_open_orders() == []
    s = b.create_order("BTC/USDT", "market", "sell", 10.0, params={"clientOrderId": "c2"})
    b.on_bar(120_000, 99.0, 99.0, 99.0, 99.0)
    assert b.fetch_order(s.id).price == pytest.approx(99.0 * 0.9998) and st[K.S_POS] == 0.0


def test_last_price_fill_and_idempotent_client_id():
    b, st = paper(fill_at="last_price")
    o1 = b.create_order("BTC/USDT", "market", "buy", 1.0, params={"clientOrderId": "same"})
    o2 = b.create_order("BTC/USDT", "market", "buy", 1.0, params={"clientOrderId": "same"})
    assert o1 == o2 and st[K.S_POS] == 1.0 and len(b.fetch_my_trades()) == 1
    assert o1.price == pytest.approx(100.02)


def test_rejects_what_the_account_cannot_pay():
    b, st = paper(cash=1_000.0)
    o = b.create_order("BTC/USDT", "market", "buy", 10.0, params={"clientOrderId": "big"})
    # 10 * 100.02 * 1.001 = 1001.2 > 1000 cash
    assert o.status == "rejected" and "insufficient cash" in o.reason and st[K.S_CASH] == 1_000.0
    ok = b.create_order("BTC/USDT", "market", "buy", 9.9, params={"clientOrderId": "fits"})
    assert ok.status == "open"
    sell = b.create_order("BTC/USDT", "market", "sell", 1.0, params={"clientOrderId": "short"})
    assert sell.status == "rejected" and "no shorts" in sell.reason
    # prices moved against a waiting order: rejected at fill time, nothing booked
    gap = b.on_bar(60_000, 120.0, 121.0, 119.0, 120.0)
    assert gap == [] and b.fetch_order("fits").status == "rejected" and st[K.S_POS] == 0.0
    with pytest.raises(OrderError, match="amount"):
        b.create_order("BTC/USDT", "market", "buy", -1.0)
    with pytest.raises(OrderError, match="symbol"):
        b.create_order("ETH/USDT", "market", "buy", 1.0)


def test_limit_order_maker_fee_and_cancel():
    b, st = paper()
    lim = b.create_order("BTC/USDT", "limit", "buy", 2.0, 95.0, {"clientOrderId": "l1"})
    b.on_bar(60_000, 99.0, 100.0, 96.0, 97.0)
    assert b.fetch_order(lim.id).status == "open"
    fills = b.on_bar(120_000, 97.0, 97.0, 94.0, 95.5)
    assert fills[0].price == 95.0 and fills[0].fee == pytest.approx(2 * 95.0 * 0.0005)
    c = b.create_order("BTC/USDT", "limit", "sell", 2.0, 110.0, {"clientOrderId": "l2"})
    assert b.cancel_order(c.id).status == "canceled" and b.fetch_open_orders() == []


def test_risk_manager_view():
    p = K.make_params(stop_loss_pct=0.02, take_profit_pct=0.04, cooldown_bars=3, sizing="volatility_target",
                      target_vol_annual=0.5)
    st = K.new_state(10_000.0)
    r = RiskManager(p, st)
    assert r.size(1.0, 1.0) == pytest.approx(0.5) and r.check_stops(100, 101, 99) is None
    K.apply_fill(st, 10.0, 100.0, 0.0)
    assert r.check_stops(100, 101, 97.5) == (pytest.approx(98.0), "stop_loss")
    assert r.check_stops(100, 104.5, 99) == (pytest.approx(104.0), "take_profit")
    r.start_cooldown()
    assert np.isnan(r.gate(0.5)) and r.gate(0.0) == 0.0 and r.cooldown == 3
    st[K.S_EQUITY] = 10_000.0
    assert r.check_daily_loss(9_000.0) and r.kill_switch
    r.reset()
    assert not r.kill_switch and r.status().kills == 1
    rc = RiskConfig()
    assert RiskManager.from_config(ExecutionConfig(), rc, K.new_state(1.0)).params[K.P_COOLDOWN] == rc.cooldown_bars


def real_bars(shared_data, n):
    df = pd.read_csv(shared_data / "binanceus" / "BTC_USDT-1m.csv", nrows=n)
    df["ts"] = pd.to_datetime(df["timestamp"], utc=True).dt.as_unit("ms").astype("int64")
    return df


def decisions_for(df) -> list[Decision | None]:
    """A causal rule on real closes: BUY above the 20-bar mean, SELL below; HOLD between."""
    c = df["close"].to_numpy()
    m = pd.Series(c).rolling(20).mean().to_numpy()
    out: list[Decision | None] = []
    for i, ts in enumerate(df["ts"].to_numpy()):
        act = Action.BUY if c[i] > m[i] * 1.0003 else Action.SELL if c[i] < m[i] * 0.9997 else Action.HOLD
        out.append(Decision(id=f"BTC/USDT-{ts}", ts=int(ts), symbol="BTC/USDT", action=act,
                            probs=(0.3, 0.3, 0.4), expected_return=0.0, weights={}, thresholds=Thresholds(),
                            target_position=1.0 if act == Action.BUY else 0.0, reason="rule"))
    return out


@pytest.mark.parametrize("fill_at,sizing", [("next_open", "fixed_fraction"), ("last_price", "volatility_target")])
def test_paper_executor_equals_kernel_simulate(shared_data, fill_at, sizing):
    df = real_bars(shared_data, 3000)
    dec = decisions_for(df)
    exe = ExecutionConfig(fill_at=fill_at)
    risk = RiskConfig(sizing=sizing, fraction=0.7, target_vol_annual=0.3, stop_loss_pct=0.003,
                      take_profit_pct=0.006, cooldown_bars=5, max_daily_loss_pct=0.01,
                      kill_switch_reset="next_day", vol_window=30)
    ex = Executor(exe, risk, "BTC/USDT", "1m")
    fills = []
    equity = []
    for i, r in enumerate(df.itertuples()):
        bar = CandleEvent(KEY, int(r.ts), r.open, r.high, r.low, r.close, r.volume)
        fills += ex.on_bar(bar, dec[i])
        equity.append(ex.snapshot().equity)
    sig = np.array([np.nan if d.action == Action.HOLD else d.target_position for d in dec])
    vol = K.realised_vol(df["close"].to_numpy(), 30, K.bars_per_year("1m")) if sizing != "fixed_fraction" \
        else None
    eq, pos, kf, st = K.run(df["ts"], df["open"], df["high"], df["low"], df["close"], sig, vol,
                            params=K.params_from_config(exe, risk))
    assert len(kf) > 30 and np.array_equal(np.array(equity), eq)
    assert np.array_equal(ex.state, st, equal_nan=True)
    assert [f.price for f in fills] == kf[:, K.F_PRICE].tolist()
    assert [f.amount for f in fills] == kf[:, K.F_QTY].tolist()
    # signal orders carry the clientOrderId of the decision that caused them: (account, symbol, timeframe,
    # the decision's bar, action) only, so a restart re-deriving it finds the same order
    first_buy = next(f for f in fills if f.side == "buy")
    i = int(np.searchsorted(df["ts"].to_numpy(), first_buy.ts))
    src = dec[i] if fill_at == "last_price" else dec[i - 1]  # decided at this close / the previous one
    assert src.action == Action.BUY
    assert first_buy.clientOrderId == ex.client_id(src.ts, "buy") == client_order_id(
        f"paper:BTC/USDT|BTC/USDT|1m|{src.ts}|buy")
    # replaying an already booked bar books nothing
    r = df.iloc[-1]
    assert ex.on_bar(CandleEvent(KEY, int(r.ts), r.open, r.high, r.low, r.close, r.volume), None) == []


def test_executor_rejects_bad_bars(shared_data):
    ex = Executor(ExecutionConfig(), RiskConfig(), "BTC/USDT", "1m")
    with pytest.raises(ValueError, match="not closed"):
        ex.on_bar(CandleEvent(KEY, 0, 1.0, 1.0, 1.0, 1.0, 1.0, closed=False), None)
    with pytest.raises(ValueError, match="bad bar"):
        ex.on_bar(CandleEvent(KEY, 0, 1.0, 0.5, 1.0, 1.0, 1.0), None)
    with pytest.raises(ValueError, match="trades BTC/USDT"):
        ex.on_bar(CandleEvent(SeriesKey("x", "ETH/USDT", "1m"), 0, 1.0, 1.0, 1.0, 1.0, 1.0), None)
    assert ex.snapshot().cash == 10_000.0 and ex.snapshot().ts is None


def test_orchestrator_hooks_match_on_bar(shared_data):
    """on_decision (orchestrator) + on_candle (provider subscriber) books exactly what on_bar does."""
    df = real_bars(shared_data, 400)
    dec = decisions_for(df)
    a = Executor(ExecutionConfig(), RiskConfig(), "BTC/USDT", "1m")
    b = Executor(ExecutionConfig(), RiskConfig(), "BTC/USDT", "1m")
    other = SeriesKey("binanceus", "BTC/USDT", "5m")
    fa, fb = [], []
    for i, r in enumerate(df.itertuples()):
        bar = CandleEvent(KEY, int(r.ts), r.open, r.high, r.low, r.close, r.volume)
        fa += a.on_bar(bar, dec[i])
        if dec[i].action != Action.HOLD:
            b.on_decision(dec[i])
        assert b.on_candle(CandleEvent(other, int(r.ts), r.open, r.high, r.low, r.close, 1.0)) == []
        fb += b.on_candle(bar)
    assert fa == fb and len(fa) > 5 and np.array_equal(a.state, b.state, equal_nan=True)
    b.on_decision(dec[-1])  # its bar is already booked: dropped, counted
    assert b.late_decisions == 1


class _CloseFillBroker:
    """Test double for an exchange: market orders fill in full at the bar's close with the taker fee, so the
    live path's decisions can be compared number for number with the paper kernel (last_price, no slippage)."""

    mode = "sandbox"

    def __init__(self) -> None:
        self.price = 0.0
        self.n = 0

    def create_order(self, symbol, type, side, amount, price=None, params=None):
        from core.types import Order

        self.n += 1
        return Order(id=str(self.n), clientOrderId=params["clientOrderId"], symbol=symbol, side=side, type=type,
                     amount=amount, price=self.price, status="closed", filled=amount,
                     fee=amount * self.price * 0.001, ts=0)


ACTIONS = ("buy", "sell", "hold", "kill_switch", "stop_loss", "take_profit")


def test_live_path_matches_kernel_without_stops(shared_data):
    """The ccxt path composes the kernel phases (rollover, kill switch, sizing, gating, quantities) exactly
    like step(): with close fills and no slippage both book the same trades on real candles."""
    df = real_bars(shared_data, 3000)
    dec = decisions_for(df)
    exe = ExecutionConfig(fill_at="last_price", slippage_bps=0.0, taker_fee_bps=10.0)
    risk = RiskConfig(fraction=0.8, stop_loss_pct=0.0, take_profit_pct=0.0, max_daily_loss_pct=0.004,
                      kill_switch_reset="next_day")
    stub = _CloseFillBroker()
    live = Executor(exe, risk, "BTC/USDT", "1m", broker=stub)
    paper = Executor(exe, risk, "BTC/USDT", "1m")
    for i, r in enumerate(df.itertuples()):
        bar = CandleEvent(KEY, int(r.ts), r.open, r.high, r.low, r.close, r.volume)
        stub.price = float(r.close)
        fl = live.on_bar(bar, dec[i])
        fp = paper.on_bar(bar, dec[i])
        assert [(f.side, f.amount, f.price, f.fee) for f in fl] == [(f.side, f.amount, f.price, f.fee) for f in fp]
        # the same ids up to the account (ccxt:... vs paper:...): both derive from (bar, action)
        for ex_, fs in ((paper, fp), (live, fl)):
            assert all(f.clientOrderId in {ex_.client_id(bar.ts, a) for a in ACTIONS} for f in fs)
    assert np.array_equal(live.state, paper.state, equal_nan=True)
    assert live.state[K.S_KILLS] >= 1 and live.state[K.S_TRADES] > 10
