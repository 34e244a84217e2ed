"""CNN, Transformer and DQN experts on features built from real BTC/USDT 1m candles (../shared/data):
shapes and dtypes, no look-ahead at the prediction level, state round trips, params validation, and
the DQN learning a better-than-random policy on a real price slice."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from core.config import ConfigError, ExpertConfig, load_models
from core.data.files import load_file as load_candles
from core.features import FeatureBuilder
from core.labels import forward_returns, make_labels
from core.types import ExpertOutput
from NN.experts.dqn import DQNExpert
from NN.experts.registry import build_expert

torch.set_num_threads(1)  # small nets: one thread is faster, and the 2-core box is shared

N_BARS = 700  # 124 warm-up bars + enough samples; FeatureBuilder costs ~3 ms per bar
EXPERTS = ("cnn", "transformer", "dqn")


@pytest.fixture(scope="module")
def btc(shared_data: Path) -> pd.DataFrame:
    return load_candles(shared_data / "binanceus" / "BTC_USDT-1m.csv")


@pytest.fixture(scope="module")
def models():
    m = load_models()
    for name in EXPERTS:  # CPU in tests, whatever the machine has
        m.experts[name] = m.experts[name].model_copy(update={"device": "cpu"})
    return m


@pytest.fixture(scope="module")
def builder(models) -> FeatureBuilder:
    return FeatureBuilder(models.features, "1m")


@pytest.fixture(scope="module")
def batch(builder: FeatureBuilder, btc: pd.DataFrame):
    full = builder.build_many(btc.iloc[:N_BARS].reset_index(drop=True), symbol="BTC/USDT")
    return full.take(slice(builder.min_history, None))


def make(name: str, models, spec):
    torch.manual_seed(0)
    return build_expert(name, models.experts[name], spec)


@pytest.mark.parametrize("name", EXPERTS)
def test_shapes_and_dtypes(name: str, models, batch) -> None:
    ex = make(name, models, batch.spec)
    out = ex.predict_many(batch)
    n = len(batch)
    assert out.probs.shape == (n, 3) and out.probs.dtype == np.float64
    assert out.ts.dtype == np.int64 and np.array_equal(out.ts, batch.ts)
    assert out.expected_return.shape == (n,) and out.confidence.shape == (n,)
    np.testing.assert_allclose(out.probs.sum(axis=1), 1.0, atol=1e-9)
    assert (out.probs > 0).all() and ((out.confidence >= 0) & (out.confidence <= 1)).all()
    one = ex.predict(batch)
    assert isinstance(one, ExpertOutput) and one.ts == int(batch.ts[-1])
    np.testing.assert_allclose(one.probs, out.probs[-1], atol=1e-6)
    assert one.latency_ms > 0 and one.horizon == models.experts[name].horizon
    if name == "dqn":
        q = out.extras["q_values"]
        assert q.shape == (n, 3)
        assert len(one.extras["q_values"]) == 3


@pytest.mark.parametrize("name", EXPERTS)
def test_train_step_learns_and_state_round_trips(name: str, models, batch, tmp_path: Path) -> None:
    ex = make(name, models, batch.spec)
    y = make_labels(batch.close, ex.horizon, 0.002)
    r = forward_returns(batch.close, ex.horizon)
    ok = np.flatnonzero((y >= 0) & np.isfinite(r))
    before = ex.predict_many(batch).probs
    for _ in range(3):
        m = ex.train_step(batch.take(ok), y[ok], r[ok])
    assert "loss" in m
    after = ex.predict_many(batch).probs
    if name != "dqn" or ex.buffer.n >= ex.params.warmup:
        assert not np.allclose(before, after), "training changed nothing"
    ex.save(tmp_path / "x.pt")
    other = make(name, models, batch.spec)
    other.load(tmp_path / "x.pt")
    np.testing.assert_array_equal(other.predict_many(batch).probs, after)


@pytest.mark.parametrize("name", EXPERTS)
def test_no_look_ahead(name: str, models, builder: FeatureBuilder, btc: pd.DataFrame) -> None:
    """Change every bar after t: the prediction at t must not move; change bar t: it must."""
    candles = btc.iloc[:400].reset_index(drop=True)
    t = 300
    ex = make(name, models, builder.spec)
    base = ex.predict_many(builder.build_many(candles)).probs[t]
    future = candles.copy()
    rng = np.random.default_rng(1)
    k = len(future) - t - 1
    scale = rng.uniform(0.9, 1.1, size=k)
    for col in ("open", "high", "low", "close"):
        future.loc[t + 1 :, col] = future.loc[t + 1 :, col].to_numpy() * scale
    future.loc[t + 1 :, "volume"] = future.loc[t + 1 :, "volume"].to_numpy() * rng.uniform(0.1, 10, size=k)
    np.testing.assert_array_equal(ex.predict_many(builder.build_many(future)).probs[t], base)
    present = candles.copy()
    present.loc[t, ["close", "high"]] = present.loc[t, ["close", "high"]].to_numpy() * 1.01
    assert not np.allclose(ex.predict_many(builder.build_many(present)).probs[t], base)


def test_bad_params_name_the_key(batch) -> None:
    cfg = ExpertConfig.model_validate({"class": "NN.experts.cnn.CNNExpert", "params": {"chanels": 8}})
    with pytest.raises(ConfigError, match=r"experts\.cnn\.params: unknown key 'chanels'"):
        build_expert("cnn", cfg, batch.spec)
    cfg = ExpertConfig.model_validate({"class": "NN.experts.transformer.TransformerExpert",
                                       "params": {"d_model": 30, "heads": 4}})
    with pytest.raises(ConfigError, match="multiple of heads"):
        build_expert("transformer", cfg, batch.spec)
    cfg = ExpertConfig.model_validate({"class": "NN.experts.nope.Nope"})
    with pytest.raises(ConfigError, match="cannot import"):
        build_expert("x", cfg, batch.spec)


def test_nan_features_are_refused(models, batch) -> None:
    ex = make("cnn", models, batch.spec)
    bad = batch.take(slice(0, 4))
    w = bad.windows.copy()
    w[1, 0, -1, 0] = np.nan
    bad = type(bad)(bad.symbol, bad.timeframe, bad.ts, bad.close, w, bad.flat, bad.regime, bad.spec)
    with pytest.raises(ValueError, match="NaN"):
        ex.predict_many(bad)


def test_dqn_position_changes_q(models, batch) -> None:
    ex = make("dqn", models, batch.spec)
    q_flat = ex.predict_many(batch).extras["q_values"]
    ex.set_position(1)
    q_long = ex.predict_many(batch).extras["q_values"]
    assert not np.allclose(q_flat, q_long)
    with pytest.raises(ValueError):
        ex.set_position(2)


def test_dqn_beats_random_policies(models, btc: pd.DataFrame, builder: FeatureBuilder) -> None:
    """Fee 0, a short real BTC slice: after training on it (in-sample: this checks that the agent
    learns, not that it generalises), the greedy policy's total reward beats every one of 20 uniformly
    random policies on the same bars (seeded)."""
    candles = btc.iloc[5000:5900].reset_index(drop=True)
    b = builder.build_many(candles).take(slice(builder.min_history, None))
    cfg = models.experts["dqn"].model_copy(update={"params": {
        **models.experts["dqn"].params, "fee_bps": 0.0, "epsilon_decay_steps": 4000, "warmup": 200,
        "update_every": 2, "target_sync": 100, "lr": 1e-3}})
    torch.manual_seed(0)
    ex: DQNExpert = build_expert("dqn", cfg, b.spec)
    y = make_labels(b.close, ex.horizon, 0.0)
    r = np.nan_to_num(forward_returns(b.close, ex.horizon))
    for _ in range(2):
        ex.train_step(b, y, r)
    greedy = ex.policy_reward(b, fee_bps=0.0)
    s = ex.states(b)
    rng = np.random.default_rng(123)
    randoms = [float(ex.rollout(s, b.close, 1.0, 1, 0.0, rng)[2].sum()) for _ in range(20)]
    assert greedy > max(randoms), (greedy, np.mean(randoms), max(randoms))
    assert greedy > 0.0
