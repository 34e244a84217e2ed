"""Fast mode == event mode on real BTC/USDT 1m data (the March 2023 banking-crisis days), with freshly
seeded CNN, Transformer and DQN experts and the online Hedge gate.

Actions, targets, fills and equity must be identical. Fused probabilities and gate weights may differ
by float32 rounding only: the networks see a batch of 2048 in fast mode and a batch of one live, and
CPU matmul kernels round differently per batch size (measured ~1e-7)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from compose import backtest_components
from core.backtest.engine import Backtester, spec_from_config
from core.config import load_config, load_models
from core.data.files import load_file
from core.data.store import MarketStore
from core.types import Thresholds

torch.set_num_threads(1)
START, BARS = 14_000, 600  # 2023-03-10 17:20 UTC onwards: a volatile stretch, so trades happen


def components():
    """Freshly seeded CNN, Transformer and DQN with a fresh gate on smaller features (each test that
    changes them builds its own: the module's fixture stays as it was made)."""
    models = load_models()
    feats = models.features.model_copy(update={"timeframes": ["1m", "5m", "1h"], "window": 32,
                                               "norm_window": 200})
    return backtest_components(models, "1m", ["cnn", "transformer", "dqn"], features=feats)


@pytest.fixture(scope="module")
def setup(shared_data):
    cfg = load_config()
    models = load_models()
    candles = load_file(shared_data / "binanceus" / "BTC_USDT-1m.csv").iloc[START:START + BARS]
    comps = components()
    probe = spec_from_config(cfg, models, exchange="binanceus", symbol="BTC/USDT", timeframe="1m",
                             thresholds=Thresholds(), mode="fast")
    bt = Backtester(comps, probe, cfg.execution, cfg.risk)
    first = bt.run(candles)
    # thresholds from the fused probabilities themselves, so both BUYs and SELLs occur
    # (the gate's weights do not depend on thresholds, only on matured outcomes)
    f = first.fused[first.decided]
    th = Thresholds(buy=float(np.quantile(f[:, 2], 0.7)), sell=float(np.quantile(f[:, 0], 0.7)))
    spec = spec_from_config(cfg, models, exchange="binanceus", symbol="BTC/USDT", timeframe="1m",
                            thresholds=th, mode="fast")
    store = MarketStore(":memory:")
    bt = Backtester(comps, spec, cfg.execution, cfg.risk, store=store)
    fast = bt.run(candles, "fast")
    bt.run_id = "event-run"
    event = bt.run(candles, "event")
    return fast, event, store, comps


def test_fast_and_event_make_identical_decisions_fills_and_equity(setup):
    fast, event, _store, comps = setup
    assert fast.decided.sum() == len(candles_decided := fast.decisions) > 400
    np.testing.assert_array_equal(fast.decided, event.decided)
    np.testing.assert_array_equal(fast.codes, event.codes)
    assert {-1, 1} <= set(fast.codes[fast.decided].tolist()), "thresholds should give BUYs and SELLs"
    for a, b in zip(candles_decided, event.decisions, strict=True):
        assert (a.ts, a.action, a.target_position, a.thresholds) == (b.ts, b.action, b.target_position,
                                                                      b.thresholds)
        assert [o.expert for o in a.outputs] == [o.expert for o in b.outputs]
        for oa, ob in zip(a.outputs, b.outputs, strict=True):
            np.testing.assert_allclose(oa.probs, ob.probs, atol=1e-6)
    np.testing.assert_allclose(fast.fused, event.fused, atol=1e-6)
    np.testing.assert_allclose(fast.weights, event.weights, atol=1e-6)
    assert len(fast.fills) >= 2
    pd.testing.assert_frame_equal(fast.fills, event.fills, check_exact=False, rtol=0, atol=1e-9)
    np.testing.assert_allclose(fast.equity, event.equity, rtol=0, atol=1e-9)
    np.testing.assert_allclose(fast.position, event.position, rtol=0, atol=1e-12)
    np.testing.assert_allclose(fast.state, event.state, rtol=0, atol=1e-9, equal_nan=True)
    assert all(not i["trained"] for i in comps.info.values())


def test_both_modes_write_the_same_audit_trail(setup):
    fast, event, store, _ = setup
    dec = store.query_df("SELECT run_id, ts, action, target_position FROM decisions ORDER BY run_id, ts")
    a = dec[dec.run_id == fast.run_id].drop(columns="run_id").reset_index(drop=True)
    b = dec[dec.run_id == "event-run"].drop(columns="run_id").reset_index(drop=True)
    assert len(a) == len(fast.decisions)
    pd.testing.assert_frame_equal(a, b)
    n_pred = store.query_one("SELECT count(*) FROM predictions WHERE run_id = ?", [fast.run_id])[0]
    assert n_pred == 3 * len(fast.decisions)


@pytest.mark.parametrize("adapt", [False, True])
def test_trained_gate_batched_in_fast_mode_matches_event_mode(setup, shared_data, adapt):
    """A trained gate is fused per bar live; in fast mode in one batch (adapt_trained off) or walked
    bar by bar with its online Hedge factor (on): same decisions either way. The gate is fitted on
    components of this test's own, so neither the fixture nor the other parametrisation sees it."""
    from core.labels import make_labels

    _fast, _event, _store, shared = setup
    comps = components()
    assert not comps.gate.trained and list(comps.experts) == list(shared.experts)
    cfg, models = load_config(), load_models()
    # fit on the experts' outputs over the 900 bars BEFORE the test slice (no overlap with it)
    fit_bars = load_file(shared_data / "binanceus" / "BTC_USDT-1m.csv").iloc[START - 900:START]
    batch = comps.builder.build_many(fit_bars, symbol="BTC/USDT")
    probs = np.stack([comps.experts[n].predict_many(batch).probs for n in comps.experts], axis=1)
    labels = make_labels(batch.close.astype(np.float64), 5, 0.002)
    ok = labels >= 0
    comps.gate.cfg = models.moe.model_copy(update={"adapt_trained": adapt})
    comps.gate.fit(probs[ok], batch.regime[ok].astype(np.float64), labels[ok])
    assert comps.gate.trained and comps.gate.adapts is adapt
    spec = spec_from_config(cfg, models, exchange="binanceus", symbol="BTC/USDT", timeframe="1m",
                            thresholds=_fast.spec.thresholds, mode="fast")
    bt = Backtester(comps, spec, cfg.execution, cfg.risk)
    candles = load_file(shared_data / "binanceus" / "BTC_USDT-1m.csv").iloc[START:START + BARS]
    fast = bt.run(candles, "fast")
    event = bt.run(candles, "event")
    np.testing.assert_array_equal(fast.codes, event.codes)
    np.testing.assert_allclose(fast.weights, event.weights, atol=1e-6)
    assert np.abs(fast.weights - 1 / 3).max() > 1e-3  # the trained gate really weighs by regime
    pd.testing.assert_frame_equal(fast.fills, event.fills, check_exact=False, rtol=0, atol=1e-9)
    np.testing.assert_allclose(fast.equity, event.equity, rtol=0, atol=1e-9)
