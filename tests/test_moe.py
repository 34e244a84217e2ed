"""MoE gate and calibration. Expert probabilities here are simple forecasters computed from REAL
BTC/USDT 1m closes (../shared/data): climatology, a momentum rule and an over-confident momentum
rule; regime = trailing volatility and trend of the same closes. Hand-written numbers appear only in
the ECE edge cases (said there)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from core.config import MoEConfig
from core.labels import make_labels
from core.scoring import brier_score, expected_calibration_error, log_loss
from NN.calibration import Calibrator, fit_temperature, softmax
from NN.moe import MoEGate

torch.set_num_threads(1)  # tiny fits: one thread is faster on the shared 2-core box

H = 5
NAMES = ["clim", "momentum", "overconfident"]


@pytest.fixture(scope="module")
def real(shared_data: Path) -> dict[str, np.ndarray]:
    df = pd.read_csv(shared_data / "binanceus" / "BTC_USDT-1m.csv", usecols=["close"], nrows=12_000)
    close = df["close"].to_numpy(np.float64)
    logc = np.log(close)
    start = 120  # trailing windows below need 120 bars
    y = make_labels(close, H, 0.0005)
    r5 = logc[start:] - logc[start - 5 : -5]  # trailing 5-bar return: known at t
    ret1 = np.diff(logc)
    vol = pd.Series(ret1).rolling(60).std().to_numpy()[start - 1 : len(ret1)][: len(r5)]
    trend = logc[start:] - logc[: -start]
    y = y[start:]
    n_fit = 6000
    clim = np.bincount(y[:n_fit][y[:n_fit] >= 0], minlength=3) / (y[:n_fit] >= 0).sum()
    z = np.stack([-r5, np.zeros_like(r5), r5], axis=1) / (vol[:, None] * np.sqrt(5))
    mom = 0.7 * np.tile(clim, (len(y), 1)) + 0.3 * softmax(z)
    over = softmax(4 * z)
    probs = np.stack([np.tile(clim, (len(y), 1)), mom, over], axis=1)
    regime = np.stack([vol, trend], axis=1)
    keep = y >= 0
    return {"probs": probs[keep], "regime": regime[keep], "y": y[keep]}


def test_hedge_weights_sum_to_one_and_disabled_get_zero(real) -> None:
    gate = MoEGate(NAMES, MoEConfig(), 2)
    p, r = real["probs"][:50], real["regime"][:50]
    w, fused = gate.fuse(p, r)
    np.testing.assert_allclose(w, 1 / 3)  # no outcome yet: uniform
    np.testing.assert_allclose(fused, p.mean(axis=1))
    for t in range(300):
        gate.observe(real["probs"][t], int(real["y"][t]))
    w, fused = gate.fuse(p, r, np.array([True, False, True]))
    np.testing.assert_allclose(w.sum(axis=1), 1.0)
    assert (w[:, 1] == 0).all() and (w[:, [0, 2]] > 0).all()
    np.testing.assert_allclose(fused.sum(axis=1), 1.0)


def test_hedge_rule_by_hand(real) -> None:
    cfg = MoEConfig(hedge_eta=0.5, hedge_window=100, calibrate=False)
    gate = MoEGate(NAMES, cfg, 2)
    P, y = real["probs"], real["y"]
    for t in range(250):
        gate.observe(P[t], int(y[t]))
    # only the last 100 matured outcomes count
    losses = -np.log(np.clip(P[np.arange(150, 250), :, y[150:250]], 1e-12, 1))  # [100, 3]; gate clips at 1e-12
    expected = np.exp(-0.5 * losses.mean(axis=0))
    expected /= expected.sum()
    np.testing.assert_allclose(gate.hedge_weights(), expected, rtol=1e-12)
    # the over-confident expert has the worst recent log loss and the smallest weight
    assert gate.hedge_weights().argmin() == losses.mean(axis=0).argmax()
    w, fused = gate.fuse(P[:10], real["regime"][:10])
    np.testing.assert_allclose(fused, np.einsum("e,nek->nk", expected, P[:10]))


def test_gate_is_deterministic_and_round_trips(real) -> None:
    P, R, y = real["probs"], real["regime"], real["y"]
    a = MoEGate(NAMES, MoEConfig(epochs=60), 2)
    a.fit(P[:3000], R[:3000], y[:3000])
    b = MoEGate(NAMES, MoEConfig(epochs=60), 2)
    b.fit(P[:3000], R[:3000], y[:3000])
    wa, fa = a.fuse(P[3000:4000], R[3000:4000])
    wb, fb = b.fuse(P[3000:4000], R[3000:4000])
    np.testing.assert_array_equal(wa, wb)
    np.testing.assert_array_equal(fa, fb)
    np.testing.assert_array_equal(a.fuse(P[3000:4000], R[3000:4000])[1], fa)  # same inputs, same outputs
    c = MoEGate(NAMES, MoEConfig(epochs=60), 2)
    c.load_state_dict(a.state_dict())
    np.testing.assert_array_equal(c.fuse(P[3000:4000], R[3000:4000])[1], fa)
    # weights vary with the inputs (a learned, regime-aware gate), still summing to 1
    assert wa.std(axis=0).max() > 0
    np.testing.assert_allclose(wa.sum(axis=1), 1.0)


def test_trained_gate_no_worse_than_best_expert_out_of_sample(real) -> None:
    P, R, y = real["probs"], real["regime"], real["y"]
    gate = MoEGate(NAMES, MoEConfig(), 2)
    info = gate.fit(P[:5000], R[:5000], y[:5000])
    assert info["holdout_gate_logloss"] <= info["holdout_uniform_logloss"] + 1e-12
    w, fused = gate.fuse(P[5000:], R[5000:])
    best_single = min(log_loss(P[5000:, e], y[5000:]) for e in range(3))
    assert log_loss(fused, y[5000:]) <= best_single + 0.01
    w, _ = gate.fuse(P[5000:], R[5000:], np.array([False, True, True]))
    assert (w[:, 0] == 0).all()
    np.testing.assert_allclose(w.sum(axis=1), 1.0)


def test_trained_gate_adapts_online_to_matured_outcomes(real) -> None:
    P, R, y = real["probs"], real["regime"], real["y"]
    cfg = MoEConfig(epochs=60, calibrate=False, hedge_window=100)
    gate = MoEGate(NAMES, cfg, 2)
    gate.fit(P[:3000], R[:3000], y[:3000])
    frozen = MoEGate(NAMES, cfg.model_copy(update={"adapt_trained": False}), 2)
    frozen.load_state_dict(gate.state_dict())
    p, r = P[4000:4010], R[4000:4010]
    w0, wf0 = gate.fuse(p, r)[0], frozen.fuse(p, r)[0]
    np.testing.assert_allclose(w0, wf0, rtol=1e-12)  # no outcome yet: the MLP's weights
    for t in range(3000, 3100):
        gate.observe(P[t], int(y[t]))
        frozen.observe(P[t], int(y[t]))
    w1, fused = gate.fuse(p, r)
    np.testing.assert_array_equal(frozen.fuse(p, r)[0], wf0)  # adapt_trained off: unchanged
    # w ∝ w_mlp * w_hedge: the expert with the worst recent log loss loses weight, rows sum to 1
    expected = w0 * gate.hedge_weights()[None]
    np.testing.assert_allclose(w1, expected / expected.sum(axis=1, keepdims=True), rtol=1e-12)
    worst = gate.hedge_weights().argmin()
    assert (w1[:, worst] < w0[:, worst]).all() and gate.adapts and not frozen.adapts
    np.testing.assert_allclose(fused, np.einsum("ne,nek->nk", w1, p), rtol=1e-12)


def test_fused_is_weighted_sum_without_calibration(real) -> None:
    P, R, y = real["probs"], real["regime"], real["y"]
    gate = MoEGate(NAMES, MoEConfig(calibrate=False, epochs=30), 2)
    gate.fit(P[:2000], R[:2000], y[:2000])
    w, fused = gate.fuse(P[2000:2100], R[2000:2100])
    np.testing.assert_allclose(fused, np.einsum("ne,nek->nk", w, P[2000:2100]), rtol=1e-12)


def test_gate_rejects_bad_input(real) -> None:
    gate = MoEGate(NAMES, MoEConfig(), 2)
    with pytest.raises(ValueError, match="every expert is disabled"):
        gate.fuse(real["probs"][:3], real["regime"][:3], np.zeros(3, bool))
    with pytest.raises(ValueError, match=r"probs must be \[N, 3, 3\]"):
        gate.fuse(real["probs"][:3, :2], real["regime"][:3])
    with pytest.raises(ValueError, match="regime"):
        gate.fuse(real["probs"][:3], real["regime"][:3, :1])
    with pytest.raises(ValueError, match="realised"):
        gate.observe(real["probs"][0], -1)
    other = MoEGate(["a", "b"], MoEConfig(), 2)
    with pytest.raises(ValueError, match="checkpoint is for experts"):
        other.load_state_dict(gate.state_dict())


def test_temperature_and_vector_scaling_fix_overconfidence(real) -> None:
    P, y = real["probs"][:, 2], real["y"]  # the over-confident expert
    logits = np.log(np.clip(P, 1e-12, 1))
    t = fit_temperature(logits[:4000], y[:4000])
    assert t > 1.0  # over-confident -> soften
    held = slice(4000, None)
    assert log_loss(softmax(logits[held] / t), y[held]) < log_loss(P[held], y[held])
    for kind in ("temperature", "vector"):
        cal = Calibrator(kind=kind).fit(P[:4000], y[:4000])
        after = cal.transform(P[held])
        np.testing.assert_allclose(after.sum(axis=1), 1.0)
        assert log_loss(after, y[held]) < log_loss(P[held], y[held])
        assert expected_calibration_error(after, y[held]) < expected_calibration_error(P[held], y[held])
        assert Calibrator.from_state(cal.state_dict()).transform(P[held]).tolist() == after.tolist()


def test_ece_and_brier_edge_cases() -> None:
    # hand-written edge cases (not market data): exact values are known
    p = np.array([[0.0, 0.2, 0.8]] * 5)
    y = np.array([2, 2, 2, 2, 1])  # 80% confident, 80% right -> perfectly calibrated
    assert expected_calibration_error(p, y) == pytest.approx(0.0)
    y_all_right = np.array([2, 2, 2, 2, 2])
    assert expected_calibration_error(p, y_all_right) == pytest.approx(0.2)
    assert brier_score(np.eye(3), np.arange(3)) == pytest.approx(0.0)
    assert brier_score(np.eye(3), np.array([1, 2, 0])) == pytest.approx(2.0)
    with pytest.raises(ValueError, match="labels"):
        log_loss(p, np.array([2, 2, 2, 2, -1]))


def test_calibration_refuses_a_missing_class(real) -> None:
    P, y = real["probs"][:, 1], real["y"]
    flat_only = np.flatnonzero(y == 1)[:500]
    with pytest.raises(ValueError, match=r"class counts \(down, flat, up\) = \(0, 500, 0\)"):
        Calibrator(kind="vector").fit(P[flat_only], y[flat_only])
    with pytest.raises(ValueError, match="dead_zone"):
        fit_temperature(np.log(P[flat_only]), y[flat_only])
