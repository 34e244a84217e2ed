"""Backtest metrics against hand computations on small hand-written curves and fills (edge-case inputs
written in the test, as allowed), plus consistency with the execution kernel on real BTC/USDT."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from core.backtest import metrics as M
from core.execution import kernel as K

DAY = 86_400_000
EQ = [100.0, 110.0, 99.0, 108.9, 130.68]
TS = [i * DAY for i in range(5)]


def test_returns_sharpe_sortino_by_hand():
    r = [0.1, -0.1, 0.1, 0.2]
    mean = 0.075
    sd = math.sqrt(((0.025) ** 2 + (0.175) ** 2 + (0.025) ** 2 + (0.125) ** 2) / 3)
    assert M.periods_per_year(TS) == pytest.approx(365.0)
    assert np.allclose(M.bar_returns(EQ), r)
    assert M.total_return(EQ) == pytest.approx(0.3068)
    assert M.sharpe(EQ, 365) == pytest.approx(mean / sd * math.sqrt(365))
    assert M.sortino(EQ, 365) == pytest.approx(mean / 0.05 * math.sqrt(365))  # downside sqrt(0.01/4)
    assert M.cagr(EQ, TS) == pytest.approx(1.3068 ** (365 / 4) - 1)


def test_drawdown_and_calmar_by_hand():
    mdd, peak, trough, dur = M.max_drawdown(EQ)
    assert mdd == pytest.approx(0.1) and (peak, trough) == (1, 2)
    assert dur == 3  # below the 110 peak of bar 1 until bar 4 regains it
    assert M.calmar(EQ, TS) == pytest.approx(M.cagr(EQ, TS) / 0.1)
    # never regained: the duration runs to the last bar; a rising curve has no drawdown
    assert M.max_drawdown([100, 120, 90, 95, 100])[3] == 3
    assert M.max_drawdown([1.0, 2.0, 3.0])[0] == 0.0 and math.isnan(M.calmar([1.0, 2.0, 3.0], TS[:3]))


def test_round_trips_and_trade_stats_by_hand():
    side = ["buy", "sell", "buy", "sell", "sell", "buy", "sell", "buy"]
    qty = [1, 1, 2, 1, 1, 1, 3, 2]
    price = [100, 110, 50, 40, 45, 10, 12, 11]
    fee = [0.1, 0.11, 0.1, 0.04, 0.045, 0.01, 0.036, 0.022]
    pnl = M.round_trips(side, qty, price, fee)
    # the 3-unit sell flips long 1 -> short 2: one third of it (and of its fee) closes the long
    expected = [10 - 0.21, -100 + 85 - 0.185, 2 - 0.01 - 0.012, 24 - 22 - 0.024 - 0.022]
    assert np.allclose(pnl, expected)
    st = M.trade_stats(pnl)
    assert st["n_trades"] == 4 and st["win_rate"] == pytest.approx(0.75)
    assert st["profit_factor"] == pytest.approx((expected[0] + expected[2] + expected[3]) / -expected[1])
    assert st["expectancy"] == pytest.approx(np.mean(expected))
    # numeric sides and an open position at the end (not a trade)
    assert np.allclose(M.round_trips([1, -1, 1], [1, 1, 1], [10, 12, 13], [0, 0, 0]), [2.0])
    none = M.trade_stats([])
    assert none["n_trades"] == 0 and math.isnan(none["win_rate"]) and math.isnan(none["profit_factor"])
    assert M.trade_stats([1.0, 2.0])["profit_factor"] == math.inf


def test_exposure_turnover_buy_and_hold_fees():
    assert M.exposure([0, 1, 1, 0, 0]) == pytest.approx(0.4)
    assert M.turnover([1, 1], [100, 110], EQ) == pytest.approx(210 / np.mean(EQ))
    assert M.buy_and_hold([20.0, 25.0, 30.0]) == pytest.approx(0.5)
    fills = pd.DataFrame({"side": ["buy", "sell"], "amount": [1.0, 1.0], "price": [100.0, 110.0],
                          "fee": [0.1, 0.11]})
    s = M.summary(EQ, TS, [0, 1, 1, 0, 0], fills, [20, 21, 22, 23, 24])
    assert s["fees_paid"] == pytest.approx(0.21) and s["n_fills"] == 2 and s["n_trades"] == 1
    assert s["expectancy"] == pytest.approx(9.79) and s["total_return"] == pytest.approx(0.3068)
    assert s["buy_and_hold"] == pytest.approx(0.2) and s["max_drawdown_bars"] == 3
    assert s["max_drawdown_duration_ms"] == pytest.approx(3 * DAY)
    # initial_equity prepends the starting cash one bar before ts[0]
    s0 = M.summary(EQ, TS, [0, 1, 1, 0, 0], fills, [20, 21, 22, 23, 24], initial_equity=50.0)
    assert s0["total_return"] == pytest.approx(130.68 / 50 - 1)


def test_calibration_brier_and_ece_by_hand():
    probs = np.array([[0.2, 0.3, 0.5], [0.7, 0.2, 0.1], [0.3, 0.3, 0.4]])
    y = np.array([2, 1, -1])  # the last outcome is not known yet: ignored
    assert M.brier(probs, y) == pytest.approx((0.04 + 0.09 + 0.25 + 0.49 + 0.64 + 0.01) / 2)
    assert M.ece(probs, y, n_bins=10) == pytest.approx(0.5 * 0.5 + 0.5 * 0.7)
    perfect = np.eye(3)[[0, 1, 2, 2]]
    assert M.brier(perfect, [0, 1, 2, 2]) == 0.0 and M.ece(perfect, [0, 1, 2, 2]) == 0.0
    with pytest.raises(ValueError, match="sum to 1"):
        M.brier([[0.5, 0.6, 0.1]], [0])


def test_bad_inputs_named():
    with pytest.raises(ValueError, match=r"equity\[1\]"):
        M.total_return([100.0, float("nan")])
    with pytest.raises(ValueError, match="side"):
        M.round_trips(["buy", "hold"], [1, 1], [1, 1], [0, 0])


def test_metrics_agree_with_kernel_on_real_prices(shared_data):
    df = pd.read_csv(shared_data / "binanceus" / "BTC_USDT-1m.csv", nrows=4000)
    ts = pd.to_datetime(df["timestamp"], utc=True).dt.as_unit("ms").astype("int64").to_numpy()
    o, h, low, c = (df[k].to_numpy(np.float64) for k in ("open", "high", "low", "close"))
    m = pd.Series(c).rolling(20).mean().to_numpy()
    sig = np.where(c > m, 1.0, np.where(c < m, 0.0, np.nan))
    sig[-1] = 0.0  # end flat so every fill belongs to a completed round trip
    p = K.make_params(fill_at="last_price", stop_loss_pct=0.004, take_profit_pct=0.004, cooldown_bars=3)
    eq, pos, fills, st = K.run(ts, o, h, low, c, sig, params=p, initial_cash=10_000.0)
    ff = pd.DataFrame({"side": fills[:, K.F_SIDE], "amount": fills[:, K.F_QTY],
                       "price": fills[:, K.F_PRICE], "fee": fills[:, K.F_FEE]})
    s = M.summary(eq, ts, pos, ff, c, initial_equity=10_000.0)
    pnl = M.round_trips(ff["side"], ff["amount"], ff["price"], ff["fee"])
    assert pos[-1] == 0 and s["n_trades"] > 20
    assert pnl.sum() == pytest.approx(eq[-1] - 10_000.0, abs=1e-6)  # trades explain the whole PnL
    assert s["fees_paid"] == pytest.approx(st[K.S_FEES])
    assert s["periods_per_year"] == pytest.approx(525_600)
    assert M.summary(eq, ts, pos, ff, c, timeframe="1m")["sharpe"] == pytest.approx(s["sharpe"], rel=1e-3)
    assert s["exposure"] == pytest.approx(np.mean(pos != 0))
    assert s["buy_and_hold"] == pytest.approx(c[-1] / c[0] - 1)
    assert s["total_return"] == pytest.approx(eq[-1] / 10_000 - 1)
