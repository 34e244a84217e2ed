"""Summary statistics and calibration on real BTC/USDT candles, forecast by the fixture's tiny
checkpoint (random weights: the numbers are not skilful, but every statistic is checked against an
independent computation or a property it must have)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from core.data.files import load_file
from NN.experts.kronos.calibration import (
    Calibration,
    collect_forecasts,
    evaluate,
    pav,
    pinball_crps,
)
from NN.experts.kronos.hub import load_predictor, load_tokenizer
from NN.experts.kronos.sampler import KronosSampler, SampleConfig
from NN.experts.kronos.summary import bollinger_mid_paths, session_vwap_paths, summarize, touch_probability


@pytest.fixture(scope="module")
def sampler(kronos_fixture):
    torch.set_num_threads(1)
    return KronosSampler(load_tokenizer(kronos_fixture / "tokenizer"), load_predictor(kronos_fixture / "model"))


@pytest.fixture(scope="module")
def btc(shared_data) -> pd.DataFrame:
    return load_file(shared_data / "binanceus" / "BTC_USDT-1m.csv").iloc[4000:6000].reset_index(drop=True)


def test_summary_on_real_candles(sampler, btc):
    ctx = btc.iloc[:300]
    fc = sampler.forecast(ctx, 12, SampleConfig(samples=64, seed=1, top_p=0.95))
    s = summarize(fc, session=btc.iloc[:0])
    closes = fc.closes
    assert s["horizon"] == 12 and s["samples"] == 64 and len(s["steps"]) == 12
    assert s["at_horizon"]["p_up"] == pytest.approx(np.mean(closes[:, -1] > ctx["close"].iloc[-1]))
    assert s["at_horizon"]["expected_return"] == pytest.approx(np.mean(closes[:, -1] / ctx["close"].iloc[-1] - 1))
    for st in s["steps"]:
        for col in ("close", "high", "low"):
            q = [st[col][f"p{p}"] for p in (10, 25, 50, 75, 90)]
            assert q == sorted(q)
    # session VWAP now, computed independently over the bars of the last bar's UTC day
    day = ctx["ts"].iloc[-1] // 86_400_000
    d = ctx[ctx["ts"] // 86_400_000 == day]
    tp = (d["high"] + d["low"] + d["close"]) / 3
    assert s["touch"]["session_vwap"]["level_now"] == pytest.approx((tp * d["volume"]).sum() / d["volume"].sum())
    assert s["touch"]["bollinger_mid"]["level_now"] == pytest.approx(ctx["close"].iloc[-20:].mean())
    for k in ("session_vwap", "bollinger_mid"):
        assert 0.0 <= s["touch"][k]["p_touch"] <= 1.0
    risk = s["risk"]
    assert all(v <= 0 for v in risk["long_adverse_excursion"].values())
    assert all(v >= 0 for v in risk["short_adverse_excursion"].values())
    assert all(v <= 0 for v in risk["max_drawdown"].values())
    # a deeper percentile of the adverse move is at least as large as a shallower one
    le = risk["long_adverse_excursion"]
    assert le["p5"] <= le["p10"] <= le["p25"] <= le["p50"]


def test_vwap_and_bollinger_levels_follow_each_path(btc):
    """Hand-checked edge cases on real bars: zero-volume future bars leave the VWAP where it is; a new
    UTC day restarts it from the path's own bars; the 20-bar mean rolls in the path's closes."""
    hist = btc.iloc[:50]
    h_ts = hist["ts"].to_numpy(np.int64)
    h = hist[["open", "high", "low", "close", "volume"]].to_numpy(np.float64)
    h = np.concatenate([h, h[:, 4:5] * 0], axis=1)
    paths = np.repeat(h[-3:][None], 2, axis=0).copy()  # two paths replaying 3 real bars
    paths[:, :, 4] = 0.0
    fut = h_ts[-1] + 60_000 * np.arange(1, 4)
    now, v = session_vwap_paths(h_ts, h, fut, paths)
    np.testing.assert_allclose(v, now)
    next_day = (h_ts[-1] // 86_400_000 + 1) * 86_400_000 + 60_000 * np.arange(3)
    paths[:, :, 4] = 1.0
    _, v2 = session_vwap_paths(h_ts, h, next_day, paths)
    np.testing.assert_allclose(v2[:, 0], paths[:, 0, 1:4].mean(axis=1))
    mid_now, mid = bollinger_mid_paths(h[:, 3], paths[:, :, 3])
    assert mid_now == pytest.approx(h[-20:, 3].mean())
    assert mid[0, 0] == pytest.approx(np.concatenate([h[-19:, 3], paths[0, :1, 3]]).mean())
    assert touch_probability(np.array([[1.0, 5.0]]), np.array([[2.0, 6.0]]), np.array([[0.5, 5.5]])) == 1.0
    assert touch_probability(np.array([[1.0, 5.0]]), np.array([[0.9, 4.0]]), np.array([[0.5, 3.0]])) == 0.0


def test_pav_and_crps_hand_examples():
    # hand-made edge cases
    x, y = pav(np.array([0.1, 0.2, 0.3, 0.4]), np.array([0.0, 1.0, 0.0, 1.0]))
    np.testing.assert_allclose(y, [0.0, 0.5, 0.5, 1.0])
    assert np.all(np.diff(y) >= 0)
    q = np.full(99, 2.0)
    assert pinball_crps(q, np.array(3.0)) == pytest.approx(1.0, rel=1e-9)


def test_calibration_fit_and_held_out_report(sampler, btc):
    cfg = SampleConfig(samples=16, seed=0, top_p=0.9)
    fit_o = np.linspace(100, 1000, 40).astype(int)
    test_o = np.linspace(1100, 1900, 30).astype(int)
    r, y, ts = collect_forecasts(sampler, btc, fit_o, 64, 5, cfg)
    assert r.shape == (40, 16, 5) and y.shape == (40, 5)
    assert np.all(np.diff(ts) > 0)
    np.testing.assert_allclose(y[:, 0], np.log(btc["close"].to_numpy()[fit_o + 1] / btc["close"].to_numpy()[fit_o]))
    cal = Calibration.fit(r, y)
    ins = evaluate(r, y, cal)
    for lvl in ("50", "80", "90"):  # in-sample the conformal bands hit their nominal level
        assert ins["calibrated"]["coverage"][lvl]["all_steps"] == pytest.approx(int(lvl) / 100, abs=0.06)
    rt, yt, _ = collect_forecasts(sampler, btc, test_o, 64, 5, cfg)
    rep = evaluate(rt, yt, cal)
    for v in ("raw", "calibrated"):
        assert sum(rep[v]["pit_hist"]) == pytest.approx(1.0, abs=1e-3)
        assert rep[v]["crps"]["all_steps"] > 0 and 0 <= rep[v]["brier_up"]["all_steps"] <= 1
    # round trip through JSON keeps every number
    again = Calibration.from_dict(cal.to_dict())
    np.testing.assert_allclose(again.quantiles(rt), cal.quantiles(rt))
    np.testing.assert_allclose(again.p_up(np.mean(rt > 0, axis=1)), cal.p_up(np.mean(rt > 0, axis=1)))
    # calibrated CDF is monotone in x and within [0, 1]
    xs = np.linspace(-0.01, 0.01, 9)
    c = [cal.cdf(rt[0], np.full(5, xv))[-1] for xv in xs]
    assert c == sorted(c) and 0 <= c[0] <= c[-1] <= 1
    with pytest.raises(ValueError, match="at least 20"):
        Calibration.fit(r[:5], y[:5])
