"""Checkpoints load as data only (NN/weights_io.py): a pickle payload saved as a checkpoint is refused
with a clear message and never runs; a checkpoint path from the store must lie inside models/.

The payload class below is a hand-written attack (the edge case under test), not market data; the
expert is built on features of real BTC/USDT candles."""

from __future__ import annotations

import pathlib
from pathlib import Path

import numpy as np
import pytest
import torch

from core.config import CheckpointPolicy, load_models
from core.data.files import load_file
from core.data.store import MarketStore
from core.features import FeatureBuilder
from NN.experts.registry import build_expert
from NN.training.checkpoints import CheckpointRegistry
from NN.weights_io import UnsafeCheckpoint, load_weights


class _Payload:
    """Unpickling this would create the marker file (stands for any command an attacker wants run)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: ANN204 - pickle protocol
        return (pathlib.Path.touch, (self.marker,))


@pytest.fixture(scope="module")
def expert_and_batch(shared_data: Path):
    models = load_models()
    cfg = models.experts["cnn"].model_copy(update={"device": "cpu"})
    builder = FeatureBuilder(models.features, "1m")
    btc = load_file(shared_data / "binanceus" / "BTC_USDT-1m.csv").iloc[:300].reset_index(drop=True)
    batch = builder.build_many(btc, symbol="BTC/USDT").take(slice(builder.min_history, None))
    torch.manual_seed(0)
    return build_expert("cnn", cfg, batch.spec), batch, cfg


def test_real_checkpoint_round_trips_weights_only(expert_and_batch, tmp_path: Path) -> None:
    ex, batch, cfg = expert_and_batch
    ex.save(tmp_path / "cnn.pt")
    state = load_weights(tmp_path / "cnn.pt")
    assert isinstance(state, dict) and state
    other = build_expert("cnn", cfg, batch.spec)
    other.load(tmp_path / "cnn.pt")
    np.testing.assert_array_equal(other.predict_many(batch).probs, ex.predict_many(batch).probs)


def test_pickle_payload_is_refused_and_never_runs(expert_and_batch, tmp_path: Path) -> None:
    ex, batch, cfg = expert_and_batch
    marker = tmp_path / "pwned"
    bad = tmp_path / "models" / "cnn" / "evil.pt"
    bad.parent.mkdir(parents=True)
    torch.save({**ex.state_dict(), "extra": _Payload(marker)}, bad)
    with pytest.raises(UnsafeCheckpoint, match="refused: it holds objects outside the allowed weight types"):
        build_expert("cnn", cfg, batch.spec).load(bad)
    assert not marker.exists()
    # the same file registered in the store (a row anyone with the database could write) is refused too
    store = MarketStore(":memory:")
    reg = CheckpointRegistry(store, tmp_path / "models")
    v = reg.register("cnn", ex.state_dict(), 0.5, CheckpointPolicy(), {})
    store.execute("UPDATE checkpoints SET path = ? WHERE version = ?", [str(bad), v])
    with pytest.raises(UnsafeCheckpoint):
        reg.load_into(build_expert("cnn", cfg, batch.spec))
    assert not marker.exists()


def test_checkpoint_row_outside_models_dir_is_refused(expert_and_batch, tmp_path: Path) -> None:
    ex, batch, cfg = expert_and_batch
    store = MarketStore(":memory:")
    reg = CheckpointRegistry(store, tmp_path / "models")
    v = reg.register("cnn", ex.state_dict(), 0.5, CheckpointPolicy(), {})
    outside = tmp_path / "elsewhere.pt"
    ex.save(outside)  # a valid checkpoint, but not where checkpoints live
    for p in (outside, tmp_path / "models" / ".." / "elsewhere.pt"):
        store.execute("UPDATE checkpoints SET path = ? WHERE version = ?", [str(p), v])
        with pytest.raises(UnsafeCheckpoint, match="outside the models directory"):
            reg.load_into(build_expert("cnn", cfg, batch.spec))
