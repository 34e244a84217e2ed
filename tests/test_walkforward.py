"""Walk-forward on real BTC/USDT 1m bars (March 2023): per-fold training with no look-ahead (proven by
truncating the data), stitched metrics recomputed from the stitched fills, per-expert attribution
summing to the P&L; the deflated Sharpe and PBO against hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from core.backtest.attribution import attribute, decision_shares, in_force
from core.backtest.engine import spec_from_config
from core.backtest.metrics import summary
from core.backtest.overfit import deflated_sharpe, expected_max_sharpe, pbo_cscv
from core.backtest.walkforward import make_folds, parse_duration, run_walkforward
from core.config import load_config, load_models
from core.data.files import load_file
from core.types import SeriesKey, Thresholds
from NN.training.walkforward import FoldTrainerNN

torch.set_num_threads(1)
START = 12_000  # 2023-03-09 08:00 UTC: the run-up to the banking-crisis weekend
TRAIN, TEST = "12h", "1h"
THRESHOLDS = Thresholds(buy=0.2, sell=0.48)  # from the fused quantiles of these folds: BUYs and SELLs happen


def _setup(shared_data, n_bars: int):
    cfg, models = load_config(), load_models()
    feats = models.features.model_copy(update={"timeframes": ["1m", "5m", "1h"], "window": 32, "norm_window": 200})
    candles = load_file(shared_data / "binanceus" / "BTC_USDT-1m.csv").iloc[START:START + n_bars]
    trainer = FoldTrainerNN(models, cfg, SeriesKey("binanceus", "BTC/USDT", "1m"), ["cnn", "dqn"], epochs=1,
                            max_steps=3, features=feats)
    spec = spec_from_config(cfg, models, exchange="binanceus", symbol="BTC/USDT", timeframe="1m",
                            thresholds=THRESHOLDS, mode="fast")
    folds = make_folds(candles["ts"].to_numpy(), "1m", parse_duration(TRAIN), parse_duration(TEST))
    return cfg, candles, trainer, spec, folds


@pytest.fixture(scope="module")
def full(shared_data, tmp_path_factory):
    cfg, candles, trainer, spec, folds = _setup(shared_data, 720 + 3 * 60)
    assert len(folds) == 3
    out = tmp_path_factory.mktemp("wf")
    res = run_walkforward(candles, folds, trainer, spec, cfg.execution, cfg.risk, cache_dir=out)
    return cfg, candles, res, out


def test_folds_truncated_after_fold_k_are_byte_identical(full, shared_data):
    """Cut the data right after fold 1's test window: folds 0 and 1 must predict, decide and fill exactly
    as in the full run, so nothing of fold 2's bars leaked into them."""
    _cfg, candles, res, _out = full
    cfg, _c, trainer, spec, folds = _setup(shared_data, 720 + 3 * 60)
    k_end = folds[1].test_end
    cut = candles[candles["ts"] < k_end]
    folds_cut = make_folds(cut["ts"].to_numpy(), "1m", parse_duration(TRAIN), parse_duration(TEST))
    assert folds_cut == folds[:2]
    short = run_walkforward(cut, folds_cut, trainer, spec, cfg.execution, cfg.risk)
    n = len(short.candles)
    assert n == int((res.fold_of <= 1).sum()) == 120
    for name in ("fused", "weights", "confidence", "expert_probs", "codes", "signal", "equity", "position"):
        a, b = getattr(short, name), getattr(res, name)[:n]
        assert a.tobytes() == b.tobytes(), name
    full_fills = res.fills[res.fills["ts"] < k_end].reset_index(drop=True)
    pd.testing.assert_frame_equal(short.fills, full_fills, check_exact=True)
    assert len(full_fills) >= 2, "the thresholds should make trades in the first two folds"


def test_stitched_metrics_equal_metrics_recomputed_from_the_fills(full):
    cfg, _candles, res, out = full
    bars = res.candles
    assert len(bars) == 180 and (np.diff(bars["ts"]) == 60_000).all()
    # replay the stitched fills by hand: cash and position, marked at each close
    cash, pos = cfg.execution.initial_cash, 0.0
    eq = np.empty(len(bars))
    fills = res.fills
    j = 0
    for i, (t, c) in enumerate(zip(bars["ts"], bars["close"], strict=True)):
        while j < len(fills) and fills["ts"].iloc[j] == t:
            f = fills.iloc[j]
            s = 1.0 if f["side"] == "buy" else -1.0
            cash -= s * f["amount"] * f["price"] + f["fee"]
            pos += s * f["amount"]
            j += 1
        eq[i] = cash + pos * c
    assert j == len(fills) >= 4
    np.testing.assert_allclose(eq, res.equity, rtol=0, atol=1e-6)
    m = summary(eq, bars["ts"].to_numpy(), res.position, fills, bars["close"].to_numpy(),
                initial_equity=cfg.execution.initial_cash, timeframe="1m")
    for k in ("total_return", "sharpe", "max_drawdown", "n_trades", "n_fills", "fees_paid", "exposure"):
        assert m[k] == pytest.approx(res.metrics[k], rel=1e-9, abs=1e-9, nan_ok=True), k
    # the folds compound to the total
    rets = [f.metrics["return"] for f in res.folds]
    assert np.prod([1 + r for r in rets]) - 1 == pytest.approx(res.metrics["total_return"], abs=1e-12)
    # model age: minutes since the fold's train end, < the test window
    assert res.model_age_ms.min() == 0 and res.model_age_ms.max() == 59 * 60_000
    # per-fold predictions cached for re-tuning
    assert {p.name for p in out.iterdir()} >= {"fold_0.npz", "fold_2.npz", "predictions.npz", "report.json",
                                                 "candles.parquet"}
    s = res.summary()
    assert s["baselines"]["n_scored"] > 150 and "climatology" in s["baselines"]


def test_attribution_sums_to_the_total_pnl_of_a_real_walkforward(full):
    cfg, _candles, res, _out = full
    a = res.attribution
    total = res.equity[-1] - cfg.execution.initial_cash
    assert a["total_pnl"] == pytest.approx(total, abs=1e-9)
    assert abs(sum(a["experts"].values()) - total) < 1e-6
    assert a["experts"]["unattributed"] == 0.0  # flat (no P&L) before the first decision
    for i, f in enumerate(res.folds):
        rows = res.fold_of == i
        e0 = cfg.execution.initial_cash if i == 0 else res.equity[np.flatnonzero(rows)[0] - 1]
        assert abs(sum(f.metrics["attribution"].values()) - (res.equity[rows][-1] - e0)) < 1e-6
    assert sum(t["pnl"] for t in a["trades"]) == pytest.approx(total, abs=1e-6)
    assert any(abs(v) > 0 for k, v in a["experts"].items() if k != "unattributed")


def test_attribution_rule_on_a_hand_written_case():
    # hand-written: 2 experts, a BUY at bar 0 (expert a agrees, b disagrees), HOLD, then a SELL at bar 2
    codes = np.array([1, 0, -1, 0])
    w = np.array([[0.5, 0.5], [0.5, 0.5], [0.25, 0.75], [0.5, 0.5]])
    p = np.array([[[0.1, 0.3, 0.6], [0.5, 0.3, 0.2]]] * 2 + [[[0.3, 0.5, 0.2], [0.6, 0.2, 0.2]]] * 2)
    s = decision_shares(codes, w, p)
    np.testing.assert_allclose(s[0], [1.0, 0.0])  # only a agreed with the BUY
    # SELL: votes a 0.3 - 0.2 = 0.1, b 0.6 - 0.2 = 0.4, times the weights 0.25 / 0.75
    np.testing.assert_allclose(s[2], [0.025 / 0.325, 0.3 / 0.325])
    assert in_force(codes, lag=1).tolist() == [-1, 0, 0, 2]
    a = attribute(np.array([100.0, 110.0, 105.0, 95.0]), 100.0, codes, w, p, ["a", "b"], lag=1)
    assert a["experts"]["a"] == pytest.approx(10.0 - 5.0 + (-10.0) * s[2, 0])
    assert a["experts"]["b"] == pytest.approx(-10.0 * s[2, 1])
    assert a["check"] < 1e-12


def test_deflated_sharpe_matches_a_hand_computed_case():
    # by hand: N = 10 trials, Sharpe variance V = 0.01, g = 0.5772157
    # SR0 = 0.1 * (0.4227843 * Z(0.9) + 0.5772157 * Z(1 - 1/(10e))) = 0.1 * (0.4227843 * 1.2815516
    #       + 0.5772157 * 1.7892418) = 0.1574598
    # SR = 0.3 over T = 100 bars, skew -0.5, kurtosis 5: den = 1 + 0.15 + 1 * 0.09 = 1.24
    # z = (0.3 - 0.1574598) * sqrt(99) / sqrt(1.24) = 1.2736322 -> DSR = Phi(1.2736) = 0.89860
    assert expected_max_sharpe(10, 0.01) == pytest.approx(0.1574598, abs=1e-6)
    assert deflated_sharpe(0.3, 100, -0.5, 5.0, 10, 0.01) == pytest.approx(0.89860, abs=1e-5)
    assert expected_max_sharpe(1, 0.01) == 0.0  # one trial: no multiple-testing haircut
    assert math.isnan(deflated_sharpe(0.3, 1, 0.0, 3.0, 10, 0.01))


def test_pbo_is_zero_when_one_trial_dominates_every_block_and_one_when_ranks_reverse():
    # hand-written sufficient statistics, 4 blocks of 10 bars
    n = np.full(4, 10)
    good = np.array([[1.0, 1.0, 1.0, 1.0], [0.2, 0.2, 0.2, 0.2], [0.0, 0.1, 0.0, 0.1]])
    sq = np.full((3, 4), 1.0)
    assert pbo_cscv(good, sq, n) == 0.0
    # trial 0 shines in blocks 0-1 only, trial 1 in blocks 2-3 only: whichever wins in-sample loses OOS
    rev = np.array([[2.0, 2.0, -2.0, -2.0], [-2.0, -2.0, 2.0, 2.0]])
    p = pbo_cscv(rev, np.full((2, 4), 1.0), n)
    assert p is not None and 0.3 < p <= 1.0
    assert pbo_cscv(good[:1], sq[:1], n) is None  # one trial: not defined


class _Recorder:
    """Wraps the fold trainer: what each fold was handed (the previous fold's components or None) and
    what it returned."""

    def __init__(self, inner, later_steps=None):
        self.inner, self.calls, self.later_steps = inner, [], later_steps

    def __call__(self, train, fold, previous):
        comps = self.inner(train, fold, previous)
        self.calls.append((previous, comps))
        if self.later_steps is not None:  # the folds after the first train this many steps
            self.inner.max_steps = self.later_steps
        return comps


def _cnn_walk(shared_data, *, warm: bool, max_steps: int, later_steps=None):
    cfg, candles, _t, spec, folds = _setup(shared_data, 720 + 2 * 60)
    feats = load_models().features.model_copy(update={"timeframes": ["1m", "5m", "1h"], "window": 32,
                                                      "norm_window": 200})
    rec = _Recorder(FoldTrainerNN(load_models(), cfg, SeriesKey("binanceus", "BTC/USDT", "1m"), ["cnn"], epochs=1,
                                  max_steps=max_steps, features=feats), later_steps)
    res = run_walkforward(candles, folds, rec, spec, cfg.execution, cfg.risk, warm_start=warm)
    return rec, res


def _weights(comps):
    """The expert's network tensors (its state dict also holds calibration and OOD statistics)."""
    out = {}

    def walk(prefix, v):
        if isinstance(v, torch.Tensor):
            out[prefix] = v.detach().clone()
        elif isinstance(v, dict):
            for k, x in v.items():
                walk(f"{prefix}.{k}", x)

    walk("", comps.experts["cnn"].state_dict())
    assert len(out) > 4
    return out


def test_warm_start_fine_tunes_the_previous_folds_model(shared_data):
    # fold 0 trains 5 steps, fold 1 none: a warm fold 1 IS fold 0's trained model, a cold one the
    # fresh initialisation
    warm0, _ = _cnn_walk(shared_data, warm=True, max_steps=5, later_steps=0)
    assert warm0.calls[0][0] is None and warm0.calls[1][0] is warm0.calls[0][1]
    w0, w1 = _weights(warm0.calls[0][1]), _weights(warm0.calls[1][1])
    assert all(torch.equal(w0[k], w1[k]) for k in w0)
    assert warm0.calls[1][1].experts["cnn"] is not warm0.calls[0][1].experts["cnn"]  # a copy is fine-tuned
    cold0, _ = _cnn_walk(shared_data, warm=False, max_steps=5, later_steps=0)
    assert cold0.calls[1][0] is None
    c0, c1 = _weights(cold0.calls[0][1]), _weights(cold0.calls[1][1])
    assert all(torch.equal(w0[k], c0[k]) for k in w0)  # fold 0 does not depend on --warm-start
    assert any(not torch.equal(w0[k], c1[k]) for k in w0)
    # with training, fold 0 is the same either way and fold 1 differs: warm starting changes results
    _, warm = _cnn_walk(shared_data, warm=True, max_steps=3)
    _, cold = _cnn_walk(shared_data, warm=False, max_steps=3)
    f0, f1 = warm.fold_of == 0, warm.fold_of == 1
    assert warm.fused[f0].tobytes() == cold.fused[f0].tobytes()
    assert np.abs(warm.fused[f1] - cold.fused[f1]).max() > 1e-6


def test_retrain_gate_refuses_a_short_train_window_naming_the_minimum_and_works_at_it(shared_data):
    cfg, _c, _t, spec, _f = _setup(shared_data, 720 + 60)
    models = load_models()
    feats = models.features.model_copy(update={"timeframes": ["1m", "5m", "1h"], "window": 32, "norm_window": 200})
    trainer = FoldTrainerNN(models, cfg, SeriesKey("binanceus", "BTC/USDT", "1m"), ["cnn"], epochs=1, max_steps=3,
                            features=feats, retrain_gate=True)
    # a calmer week than START (the crash day has no "up" label in the gate's hold-out)
    full = load_file(shared_data / "binanceus" / "BTC_USDT-1m.csv").iloc[20_000:23_000]
    short = full.iloc[:720 + 60]
    folds = make_folds(short["ts"].to_numpy(), "1m", parse_duration(TRAIN), parse_duration(TEST))
    with pytest.raises(ValueError) as e:
        run_walkforward(short, folds, trainer, spec, cfg.execution, cfg.risk)
    msg = str(e.value)
    # by hand: the gate holds out the last 30%: 164 - int(164 * 0.7) = 50 held out, 163 leaves 49
    assert "--retrain-gate" in msg and "needs >= 164" in msg and "\n" not in msg
    bars = int(msg.split("at least ")[1].split(" bars")[0])
    assert 720 < bars < 2900
    # the named minimum is enough: the fold fits its gate
    ok = full.iloc[:bars + 60]
    folds = make_folds(ok["ts"].to_numpy(), "1m", bars * 60_000, parse_duration(TEST))
    res = run_walkforward(ok, folds, trainer, spec, cfg.execution, cfg.risk)
    assert res.folds[0].info["gate"]["trained"] is True and len(res.candles) == 60
