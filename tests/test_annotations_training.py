"""Training on annotations moves the expert toward the annotated labels (measured against the same run
without them), and no annotation outside the train part reaches training. Real BTC/USDT minutes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from core.annotations.store import snap
from core.config import load_config, load_models
from core.data.files import load_file
from core.data.store import MarketStore
from core.types import SeriesKey
from NN.calibration import softmax
from NN.experts.registry import build_expert
from NN.training.annotated import annotated_rows
from NN.training.prepared import prepare
from NN.training.trainer import train_expert

torch.set_num_threads(1)
KEY = SeriesKey("binanceus", "BTC/USDT", "1m")
N_BARS = 6000
MIN = 60_000


@pytest.fixture(scope="module")
def setup(shared_data: Path):
    models = load_models()
    models.labels.dead_zone_bps = 5  # a calm 4-day slice: see tests/test_training.py
    candles = load_file(shared_data / "binanceus" / "BTC_USDT-1m.csv").iloc[:N_BARS].reset_index(drop=True)
    store = MarketStore(":memory:")
    store.upsert_candles(KEY, candles)
    prep = prepare(candles, KEY, models, load_config())
    ts = prep.batch.ts
    # ten real 20-minute trades spread over the train part (prices = the stored closes, direction from them)
    starts = np.linspace(prep.train.start + 50, prep.train.stop - 100, 10).astype(int)
    train_anns = [snap(store, KEY, int(ts[i]), int(ts[i]) + 20 * MIN) for i in starts]
    test_anns = [snap(store, KEY, int(ts[i]), int(ts[i]) + 20 * MIN)
                 for i in (prep.test.start + 10, prep.test.start + 300)]
    straddle = [snap(store, KEY, int(ts[prep.train.stop - 5]), int(ts[prep.train.stop - 5]) + 20 * MIN)]
    yield models, prep, train_anns, test_anns, straddle
    store.close()


def _train(models, prep, rows, seed=0):
    cfg = models.experts["cnn"].model_copy(update={"device": "cpu"})
    ex = build_expert("cnn", cfg.model_copy(update={"params": {**cfg.params, "seed": seed}}), prep.batch.spec)
    train_expert(ex, prep, epochs=2, max_steps_per_epoch=40, annotated=rows)
    return ex


def test_annotations_shift_predictions_toward_labels(setup) -> None:
    models, prep, train_anns, _, _ = setup
    rows = annotated_rows(prep.batch, prep.train, train_anns, weight=5)
    assert rows.summary() == {"cases": 10 * 21, "weight": 5, "annotations_used": 10, "annotations_held_out": 0}
    assert {int(x) for x in rows.labels} <= {0, 1, 2} and len(set(rows.labels.tolist())) >= 2
    base = _train(models, prep, None)
    with_ann = _train(models, prep, rows)
    sub = prep.batch.take(rows.idx)
    p0 = softmax(base.logits_many(sub))[np.arange(rows.idx.size), rows.labels]
    p1 = softmax(with_ann.logits_many(sub))[np.arange(rows.idx.size), rows.labels]
    # measured: the probability of the annotated class on the annotated bars rises (mean and most bars)
    print(f"annotated-class probability: without {p0.mean():.3f}, with {p1.mean():.3f}")
    assert p1.mean() > p0.mean() + 0.05
    assert np.mean(p1 > p0) > 0.6


def test_annotations_outside_the_train_part_never_reach_training(setup) -> None:
    models, prep, _, test_anns, straddle = setup
    rows = annotated_rows(prep.batch, prep.train, test_anns + straddle, weight=5)
    assert rows.idx.size == 0 and len(rows.held_out) == 3
    base = _train(models, prep, None)
    leaked = _train(models, prep, rows)
    for k, v in base.net.state_dict().items():  # bit-identical training: nothing of them was used
        assert torch.equal(v, leaked.net.state_dict()[k]), k


def _train_dqn(models, prep, rows, seed=0):
    cfg = models.experts["dqn"].model_copy(update={"device": "cpu"})
    ex = build_expert("dqn", cfg.model_copy(update={"params": {**cfg.params, "seed": seed}}), prep.batch.spec)
    train_expert(ex, prep, epochs=2, max_steps_per_epoch=6, annotated=rows)
    return ex


def _entry_advantage(ex, prep, rows):
    """Per annotated trade, from flat at its entry bar: Q of the annotated action minus the best other."""
    entries = np.asarray([i0 for i0, _, _ in rows.demos])
    want = np.asarray([2 if sign > 0 else 0 for _, _, sign in rows.demos])
    q = ex.q_values(ex.states(prep.batch.take(entries)), 1)
    other = np.where(np.arange(3)[None, :] == want[:, None], -np.inf, q).max(axis=1)
    return q[np.arange(len(want)), want] - other


def test_dqn_demonstrations_move_the_greedy_action_toward_the_annotations(setup) -> None:
    models, prep, train_anns, _, _ = setup
    rows = annotated_rows(prep.batch, prep.train, train_anns, weight=5)
    assert len(rows.demos) == 10 and all(i1 - i0 == 20 and s in (-1, 1) for i0, i1, s in rows.demos)
    base = _train_dqn(models, prep, None)
    demo = _train_dqn(models, prep, rows)
    assert demo.demos is not None and demo.demos.n == 10 * 20 and base.demos is None
    a0, a1 = _entry_advantage(base, prep, rows), _entry_advantage(demo, prep, rows)
    # measured: the annotated action's margin at the entry bars rises, and more entries pick it greedily
    print(f"annotated-action Q margin at entries: without {a0.mean():.3f} ({(a0 > 0).sum()}/10 greedy), "
          f"with {a1.mean():.3f} ({(a1 > 0).sum()}/10 greedy)")
    assert a1.mean() > a0.mean()
    assert (a1 > 0).sum() > (a0 > 0).sum()


def test_dqn_demonstrations_outside_the_train_part_are_never_used(setup) -> None:
    models, prep, _, test_anns, straddle = setup
    rows = annotated_rows(prep.batch, prep.train, test_anns + straddle, weight=5)
    assert rows.demos == [] and len(rows.held_out) == 3
    base = _train_dqn(models, prep, None)
    leaked = _train_dqn(models, prep, rows)
    assert leaked.demos is None
    for k, v in base.net.state_dict().items():
        assert torch.equal(v, leaked.net.state_dict()[k]), k
