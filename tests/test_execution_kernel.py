"""The numba execution kernel: fee/slippage arithmetic, stops, cooldown, kill switch, sizing, and
step == simulate on real BTC/USDT prices.

Hand-written bars appear ONLY in the arithmetic edge-case tests (fees, slippage, stops, kill switch),
where every expected number is computed by hand in the test; everything else runs on the shared
Binance.US BTC/USDT 1m candles."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from core.execution import kernel as K

DAY = 86_400_000
MIN = 60_000


def load_btc(shared_data, n: int | None = None) -> pd.DataFrame:
    df = pd.read_csv(shared_data / "binanceus" / "BTC_USDT-1m.csv")
    df["ts"] = pd.to_datetime(df["timestamp"], utc=True).dt.as_unit("ms").astype("int64")
    return df if n is None else df.iloc[:n].reset_index(drop=True)


def bars(rows: list[tuple[float, float, float, float]], t0: int = 0, dt: int = MIN):
    """Hand-written (open, high, low, close) bars for arithmetic edge cases."""
    a = np.asarray(rows, dtype=np.float64)
    ts = t0 + dt * np.arange(len(rows), dtype=np.float64)
    return ts, a[:, 0].copy(), a[:, 1].copy(), a[:, 2].copy(), a[:, 3].copy()


def sim(rows, signal, *, t0=0, dt=MIN, cash=10_000.0, vol=None, **kw):
    ts, o, h, low, c = bars(rows, t0, dt)
    p = K.make_params(**kw)
    sig = np.asarray(signal, dtype=np.float64)
    return K.run(ts, o, h, low, c, sig, vol, params=p, initial_cash=cash)


def test_fee_and_slippage_last_price_hand_checked():
    # buy 50% at close 100, sell everything at close 110; fee 10 bps, slippage 2 bps
    eq, pos, fills, st = sim(
        [(100, 100, 100, 100), (110, 110, 110, 110)], [1.0, 0.0],
        fill_at="last_price", taker_fee_bps=10, slippage_bps=2, fraction=0.5, min_trade_fraction=0.0,
    )
    assert len(fills) == 2
    buy, sell = fills
    assert buy[K.F_SIDE] == 1 and buy[K.F_QTY] == pytest.approx(50.0)
    assert buy[K.F_PRICE] == pytest.approx(100.02)
    assert buy[K.F_FEE] == pytest.approx(50 * 100.02 * 0.001)  # 5.001
    assert buy[K.F_CASH] == pytest.approx(10_000 - 5001.0 - 5.001)
    assert sell[K.F_SIDE] == -1 and sell[K.F_QTY] == pytest.approx(50.0)
    assert sell[K.F_PRICE] == pytest.approx(109.978)
    assert sell[K.F_FEE] == pytest.approx(50 * 109.978 * 0.001)
    cash = 10_000 - 5001.0 - 5.001 + 50 * 109.978 - 50 * 109.978 * 0.001
    assert st[K.S_CASH] == pytest.approx(cash)
    assert eq[-1] == pytest.approx(cash)
    assert st[K.S_REALISED] == pytest.approx(50 * (109.978 - 100.02))
    assert st[K.S_FEES] == pytest.approx(5.001 + 5.4989)
    assert st[K.S_POS] == 0.0
    # equity at the first close marks 50 units at 100
    assert eq[0] == pytest.approx(10_000 - 5001.0 - 5.001 + 50 * 100)


def test_next_open_fills_at_the_following_bar_open():
    eq, pos, fills, st = sim(
        [(100, 101, 99, 100), (104, 105, 103, 104), (104, 105, 103, 105)], [1.0, np.nan, np.nan],
        fill_at="next_open", taker_fee_bps=10, slippage_bps=2, fraction=1.0, min_trade_fraction=0.0,
    )
    assert pos[0] == 0.0  # nothing fills at the decision bar
    assert len(fills) == 1 and fills[0][K.F_TS] == MIN
    px = 104 * 1.0002
    qty = 10_000 / (px * 1.001)  # full target sized down to what cash (incl. fee) can pay
    assert fills[0][K.F_PRICE] == pytest.approx(px)
    assert fills[0][K.F_QTY] == pytest.approx(qty)
    assert st[K.S_CASH] == pytest.approx(0.0, abs=1e-9) and st[K.S_CASH] >= -1e-9
    assert eq[2] == pytest.approx(qty * 105)


def test_unaffordable_buy_is_rejected_when_below_min_trade():
    # hand-built state: 0.3 USDT cash left, the rest in the position; the top-up to 100% can only be
    # paid partly, and what can be paid is below the minimum trade -> rejected, nothing changes
    p = K.make_params(fraction=1.0, min_trade_fraction=2.998e-5, taker_fee_bps=10, slippage_bps=2)
    st = K.new_state(10_000.0)
    st[K.S_CASH] = 0.3
    st[K.S_POS] = 99.997
    st[K.S_ENTRY] = 100.0
    assert K.order_for_target(st, p, 1.0, 100.0) == 0.0
    assert st[K.S_REJECTED] == 1.0
    # a larger cash buffer makes the same top-up affordable after sizing down
    st[K.S_CASH] = 0.6
    st[K.S_POS] = 99.994
    q = K.order_for_target(st, p, 1.0, 100.0)
    assert q == pytest.approx(0.6 / (100.02 * 1.001))


def test_stop_loss_at_level_then_cooldown_refuses_entries():
    # entry at close 100 (+2 bps), stop 2% below the entry price, cooldown 2 decisions
    rows = [(100, 100, 100, 100), (100, 100.5, 97, 99), (99, 99, 99, 99), (99, 99, 99, 99), (99, 99, 99, 99)]
    eq, pos, fills, st = sim(rows, [1.0, 1.0, 1.0, 1.0, np.nan], fill_at="last_price", fraction=0.5,
                             stop_loss_pct=0.02, take_profit_pct=0.0, cooldown_bars=2, slippage_bps=2,
                             taker_fee_bps=10, min_trade_fraction=0.0)
    entry = 100 * 1.0002
    level = entry * 0.98
    reasons = [K.REASONS[int(f[K.F_REASON])] for f in fills]
    assert reasons == ["signal", "stop_loss", "signal"]
    assert fills[1][K.F_PRICE] == pytest.approx(level * 0.9998)
    assert fills[1][K.F_TS] == MIN
    # decisions at the closes of bar 1 (the stop bar) and bar 2 are refused; bar 3 re-enters
    assert pos[1] == 0.0 and pos[2] == 0.0 and pos[3] > 0
    assert fills[2][K.F_TS] == 3 * MIN
    assert st[K.S_REFUSED] == 2 and st[K.S_STOPS] == 1


def test_stop_gap_fills_at_open_and_take_profit_at_level():
    rows = [(100, 100, 100, 100), (90, 91, 89, 90)]
    _, _, fills, _ = sim(rows, [1.0, np.nan], fill_at="last_price", stop_loss_pct=0.02,
                         slippage_bps=0, taker_fee_bps=0, min_trade_fraction=0.0)
    assert K.REASONS[int(fills[1][K.F_REASON])] == "stop_loss" and fills[1][K.F_PRICE] == 90.0
    rows = [(100, 100, 100, 100), (101, 106, 100.5, 105)]
    _, _, fills, st = sim(rows, [1.0, np.nan], fill_at="last_price", stop_loss_pct=0.02,
                          take_profit_pct=0.04, slippage_bps=0, taker_fee_bps=0, min_trade_fraction=0.0,
                          fraction=0.5)
    assert K.REASONS[int(fills[1][K.F_REASON])] == "take_profit"
    assert fills[1][K.F_PRICE] == pytest.approx(104.0)
    assert st[K.S_REALISED] == pytest.approx(50 * 4.0)
    # a bar touching both levels counts as the stop (conservative)
    rows = [(100, 100, 100, 100), (100, 110, 90, 100)]
    _, _, fills, _ = sim(rows, [1.0, np.nan], fill_at="last_price", stop_loss_pct=0.02,
                         take_profit_pct=0.04, slippage_bps=0, taker_fee_bps=0, min_trade_fraction=0.0)
    assert K.REASONS[int(fills[1][K.F_REASON])] == "stop_loss" and fills[1][K.F_PRICE] == pytest.approx(98.0)


def test_short_stop_and_long_only_default():
    rows = [(100, 100, 100, 100), (100, 103, 99, 101)]
    _, pos, fills, _ = sim(rows, [-1.0, np.nan], fill_at="last_price", slippage_bps=0, taker_fee_bps=0)
    assert len(fills) == 0 and (pos == 0).all()  # spot: a sell signal with no position does nothing
    _, pos, fills, st = sim(rows, [-1.0, np.nan], fill_at="last_price", allow_short=True, fraction=0.5,
                            stop_loss_pct=0.02, slippage_bps=0, taker_fee_bps=0, min_trade_fraction=0.0)
    assert pos[0] == pytest.approx(-50.0)
    assert K.REASONS[int(fills[1][K.F_REASON])] == "stop_loss" and fills[1][K.F_PRICE] == pytest.approx(102.0)
    assert st[K.S_REALISED] == pytest.approx(-100.0)


def test_kill_switch_flattens_refuses_and_resets():
    # day 0: buy 100% at 100, price falls 10% -> daily loss > 5% trips the switch at that close
    rows = [(100, 100, 100, 100), (100, 100, 90, 90), (90, 95, 90, 95), (95, 95, 95, 95)]
    common = dict(fill_at="last_price", fraction=1.0, max_daily_loss_pct=0.05, slippage_bps=0,
                  taker_fee_bps=0, min_trade_fraction=0.0)
    eq, pos, fills, st = sim(rows, [1.0, np.nan, 1.0, 1.0], **common)
    assert [K.REASONS[int(f[K.F_REASON])] for f in fills] == ["signal", "kill_switch"]
    assert fills[1][K.F_PRICE] == 90.0 and fills[1][K.F_TS] == MIN
    assert (pos[1:] == 0).all() and st[K.S_KILL] == 1.0 and st[K.S_REFUSED] == 2
    assert eq[-1] == pytest.approx(9_000.0)
    # manual reset: the next decision trades again, today's loss now measured from the equity at reset
    K.reset_kill(st)
    assert st[K.S_KILL] == 0.0 and st[K.S_DAY_START_EQ] == pytest.approx(9_000.0)
    buf = np.zeros((K.MAX_FILLS_PER_BAR, K.FILL_SIZE))
    p = K.make_params(**common)
    n = K.step(st, p, 4.0 * MIN, 95, 95, 95, 95, 1.0, np.nan, buf)
    assert n == 1 and st[K.S_POS] == pytest.approx(9_000 / 95)

    # next_day auto-reset: the refusal lasts until the first bar of the next UTC day
    t0 = DAY - 2 * MIN
    eq, pos, fills, st = sim(rows, [1.0, np.nan, 1.0, 1.0], t0=t0, kill_switch_reset="next_day", **common)
    # bars at DAY-2m, DAY-1m (kill), DAY+0 (new day: reset, re-enter), DAY+1m
    assert [K.REASONS[int(f[K.F_REASON])] for f in fills] == ["signal", "kill_switch", "signal"]
    assert fills[2][K.F_TS] == DAY and st[K.S_KILL] == 0.0 and st[K.S_KILLS] == 1


def test_kill_switch_next_open_flattens_at_next_open():
    rows = [(100, 100, 100, 100), (100, 100, 90, 90), (91, 95, 90, 95)]
    _, pos, fills, st = sim(rows, [1.0, 1.0, np.nan], fill_at="next_open", fraction=0.5,
                            max_daily_loss_pct=0.01, slippage_bps=0, taker_fee_bps=0, min_trade_fraction=0.0)
    # buy fills at bar 1's open; bar 1 closes 10% lower -> kill; flatten at bar 2's open (91)
    assert [K.REASONS[int(f[K.F_REASON])] for f in fills] == ["signal", "kill_switch"]
    assert fills[1][K.F_PRICE] == 91.0 and fills[1][K.F_TS] == 2 * MIN and pos[-1] == 0.0


def test_volatility_target_sizing():
    p = K.make_params(sizing="volatility_target", target_vol_annual=0.4, max_position_fraction=0.9)
    st = K.new_state(1.0)
    assert K.size_target(st, p, 1.0, 0.8) == pytest.approx(0.5)
    assert K.size_target(st, p, 1.0, 0.2) == pytest.approx(0.9)  # capped at max_position_fraction
    assert K.size_target(st, p, 1.0, np.nan) == 0.0  # unknown volatility: no entry
    assert math.isnan(K.size_target(st, p, np.nan, 0.8))  # HOLD stays HOLD


def test_bad_inputs_named():
    ts, o, h, low, c = bars([(100, 101, 99, 100), (100, 101, 99, np.nan)])
    p = K.make_params()
    with pytest.raises(ValueError, match=r"close\[1\]"):
        K.run(ts, o, h, low, c, np.zeros(2), params=p)
    with pytest.raises(ValueError, match="signal"):
        K.run(ts, o, h, low, np.array([100.0, 100.0]), np.array([2.0, 0.0]), params=p)
    with pytest.raises(ValueError, match="increasing time"):
        K.run(ts[::-1].copy(), o, h, low, np.array([100.0, 100.0]), np.zeros(2), params=p)
    with pytest.raises(ValueError, match="fill_at"):
        K.make_params(fill_at="tomorrow")
    with pytest.raises(ValueError, match="stop_loss_pct"):
        K.make_params(stop_loss_pct=1.5)


def _rule_signals(close: np.ndarray) -> np.ndarray:
    """A simple causal rule on real closes: long above the 30-bar mean, flat below, HOLD in between."""
    s = pd.Series(close)
    m = s.rolling(30).mean().to_numpy()
    sig = np.full(close.shape[0], np.nan)
    sig[close > m * 1.0005] = 1.0
    sig[close < m * 0.9995] = 0.0
    return sig


@pytest.mark.parametrize("fill_at", ["next_open", "last_price"])
@pytest.mark.parametrize("sizing", ["fixed_fraction", "volatility_target"])
def test_step_equals_simulate_on_real_prices(shared_data, fill_at, sizing):
    df = load_btc(shared_data, 6000)
    ts = df["ts"].to_numpy(np.float64)
    o, h, low, c = (df[k].to_numpy(np.float64) for k in ("open", "high", "low", "close"))
    sig = _rule_signals(c)
    vol = K.realised_vol(c, 60, K.bars_per_year("1m"))
    p = K.make_params(fill_at=fill_at, sizing=sizing, fraction=0.8, target_vol_annual=0.3,
                      stop_loss_pct=0.003, take_profit_pct=0.006, cooldown_bars=10,
                      max_daily_loss_pct=0.01, kill_switch_reset="next_day")
    eq_a, pos_a, fills_a, st_a = K.run(ts, o, h, low, c, sig, vol, params=p)

    st = K.new_state(10_000.0)
    buf = np.zeros((K.MAX_FILLS_PER_BAR, K.FILL_SIZE))
    eq_b, pos_b, fills_b = np.empty(len(c)), np.empty(len(c)), []
    for i in range(len(c)):
        n = K.step(st, p, ts[i], o[i], h[i], low[i], c[i], sig[i], vol[i], buf)
        fills_b.extend(buf[:n].copy())
        eq_b[i], pos_b[i] = st[K.S_EQUITY], st[K.S_POS]
    fills_b = np.array(fills_b)

    # the run really exercises every path, and both drivers agree exactly
    reasons = set(fills_a[:, K.F_REASON].astype(int))
    assert reasons == {K.R_SIGNAL, K.R_STOP_LOSS, K.R_TAKE_PROFIT, K.R_KILL_SWITCH} and len(fills_a) > 40
    assert np.array_equal(eq_a, eq_b) and np.array_equal(pos_a, pos_b)
    assert np.array_equal(fills_a, fills_b)
    assert np.array_equal(st_a, st, equal_nan=True)
    # accounting identity: equity = initial cash + realised - fees + unrealised
    unreal = st[K.S_POS] * (c[-1] - st[K.S_ENTRY])
    assert st[K.S_EQUITY] == pytest.approx(10_000 + st[K.S_REALISED] - st[K.S_FEES] + unreal, rel=1e-9)
    # no look-ahead: with next_open every signal fill happens at the open of a bar AFTER a decision
    if fill_at == "next_open":
        sig_fills = fills_a[fills_a[:, K.F_REASON] == K.R_SIGNAL]
        idx = np.searchsorted(ts, sig_fills[:, K.F_TS])
        assert (idx >= 1).all()
        assert np.allclose(sig_fills[:, K.F_PRICE] / o[idx], np.where(sig_fills[:, K.F_SIDE] > 0, 1.0002, 0.9998))


def test_realised_vol_is_past_only(shared_data):
    c = load_btc(shared_data, 500)["close"].to_numpy(np.float64)
    v = K.realised_vol(c, 60, K.bars_per_year("1m"))
    assert np.isnan(v[:60]).all() and np.isfinite(v[60:]).all()
    r = np.diff(np.log(c))
    assert v[100] == pytest.approx(np.std(r[40:100], ddof=1) * math.sqrt(525_600))
    c2 = c.copy()
    c2[101:] *= 1.5  # changing the future leaves the past untouched
    assert np.array_equal(K.realised_vol(c2, 60, 525_600.0)[:101], v[:101], equal_nan=True)


def test_signal_for_uses_direction_only():
    assert K.signal_for("BUY", 0.35) == 1.0 and K.signal_for("SELL", 0.0) == -1.0
    assert math.isnan(K.signal_for("HOLD", 0.5))
    with pytest.raises(ValueError, match="action"):
        K.signal_for("WAIT")
