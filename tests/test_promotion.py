"""Champion / challenger on real BTC/USDT 1m features (../shared/data): a trained challenger is
promoted, a degraded one (the live weights plus noise) is not, through the pure rule and through
TrainingManager's evaluator thread; a rollback restores the previous weights bit for bit."""

from __future__ import annotations

import copy
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from core.config import load_models
from core.data.files import load_file as load_candles
from core.features import FeatureBuilder
from core.types import Swap
from NN.experts.registry import build_expert
from NN.training.datasets import build_dataset
from NN.training.online import TrainingManager, live_path, resume_live
from NN.training.promotion import evaluate, judge, sample_logloss
from NN.weights_io import load_weights

torch.set_num_threads(1)

N_BARS = 1500
H = 5
DEAD_ZONE = 0.002  # the default round trip (2 x 10 bps taker fee)
VAL = 200


@pytest.fixture(scope="module")
def models():
    m = load_models()
    online = m.experts["cnn"].online.model_copy(update={"val_bars": VAL, "promote_margin": 0.002})
    m.experts["cnn"] = m.experts["cnn"].model_copy(update={"device": "cpu", "horizon": H, "online": online})
    return m


@pytest.fixture(scope="module")
def data(shared_data: Path, models):
    candles = load_candles(shared_data / "binanceus" / "BTC_USDT-1m.csv").iloc[:N_BARS].reset_index(drop=True)
    builder = FeatureBuilder(models.features, "1m")
    batch, y, r = build_dataset(builder, candles, H, DEAD_ZONE, symbol="BTC/USDT")
    return builder, candles, batch, y, r


def make_cnn(models, spec):
    torch.manual_seed(0)
    return build_expert("cnn", models.experts["cnn"], spec)


@pytest.fixture(scope="module")
def trio(models, data):
    """(champion, trained challenger, degraded challenger) built from the same initial weights."""
    builder, _, batch, y, r = data
    champion = make_cnn(models, builder.spec)
    trained = make_cnn(models, builder.spec)
    trained.load_state_dict(copy.deepcopy(champion.state_dict()))
    n_train = len(batch) - VAL - H  # the validation part is never trained on (gap of H bars)
    rng = np.random.default_rng(0)
    for _ in range(80):
        idx = np.sort(rng.choice(n_train, size=64, replace=False))
        trained.train_step(batch.take(idx), y[idx], r[idx])
    degraded = make_cnn(models, builder.spec)
    state = copy.deepcopy(champion.state_dict())
    g = torch.Generator().manual_seed(1)
    for k, v in state["net"].items():
        if v.is_floating_point():
            state["net"][k] = v + 0.5 * torch.randn(v.shape, generator=g)
    degraded.load_state_dict(state)
    return champion, trained, degraded


def assert_same_state(a, b, path: str = "state") -> None:
    """Bit-identical comparison of two state dicts (tensors, arrays, numbers, nested containers)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), path
    elif isinstance(a, np.ndarray):
        assert np.array_equal(a, b), path
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            assert_same_state(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same_state(x, y, f"{path}[{i}]")
    else:
        assert a == b or (a != a and b != b), path


def _wait_file(path: Path, exists: bool, timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while path.exists() != exists:
        assert time.monotonic() < end, f"{path} {'never appeared' if exists else 'was not removed'}"
        time.sleep(0.02)


def test_resume_live_only_descendants_of_the_loaded_weights(trio, models, data, tmp_path) -> None:
    builder = data[0]
    champion, trained, _ = trio
    lp = live_path(tmp_path, "cnn")
    lp.parent.mkdir(parents=True)
    fresh = make_cnn(models, builder.spec)
    fresh.version = "v-reg"
    assert resume_live(fresh, tmp_path) is None  # nothing left live
    torch.save({"version": "online-x", "base": "v-reg", "state": trained.state_dict()}, lp)
    before = copy.deepcopy(fresh.state_dict())
    base = resume_live(fresh, tmp_path)
    assert base is not None and base[0] == "v-reg" and fresh.version == "online-x"
    assert_same_state(base[1], before)  # what a rollback returns to
    assert_same_state(fresh.state_dict()["net"], trained.state_dict()["net"])
    # a newer offline checkpoint is live now: the online weights descend from another base
    other = make_cnn(models, builder.spec)
    other.version = "v-newer"
    assert resume_live(other, tmp_path) is None and other.version == "v-newer"
    # an incompatible file (another architecture) is refused by name and changes nothing
    wide = models.experts["cnn"].model_copy(update={"params": {**models.experts["cnn"].params, "channels": 7}})
    bad = build_expert("cnn", wide, builder.spec)
    torch.save({"version": "online-y", "base": "v-reg", "state": bad.state_dict()}, lp)
    victim = make_cnn(models, builder.spec)
    victim.version = "v-reg"
    keep = copy.deepcopy(victim.state_dict())
    with pytest.raises(ValueError, match="cannot resume online weights"):
        resume_live(victim, tmp_path)
    assert victim.version == "v-reg"
    assert_same_state(victim.state_dict()["net"], keep["net"])


def val_part(data):
    _, _, batch, y, _ = data
    return batch.take(slice(len(batch) - VAL, len(batch))), y[-VAL:]


def test_judge_rule_edges() -> None:
    # hand-written losses: the rule's edges (exact margin promotes, less does not, NaN never)
    assert judge(1.0, 0.99, 0.01, 100, 30).promote
    assert not judge(1.0, 0.995, 0.01, 100, 30).promote
    assert not judge(1.0, 0.5, 0.01, 10, 30).promote  # too few validation samples
    assert not judge(1.0, float("nan"), 0.01, 100, 30).promote
    # the gain must also clear promote_z standard errors of the paired differences
    assert not judge(1.0, 0.99, 0.0, 100, 30, gain_se=0.02, z=1.0).promote  # 0.01 < 1 x 0.02: noise
    assert judge(1.0, 0.99, 0.0, 100, 30, gain_se=0.005, z=1.0).promote
    assert judge(1.0, 0.99, 0.0, 100, 30, gain_se=0.02, z=0.0).promote  # z 0: the margin rule alone
    assert not judge(1.0, 1.0, 0.0, 100, 30, gain_se=0.0, z=1.0).promote  # equal is no improvement


def test_trained_challenger_wins_degraded_loses(trio, data) -> None:
    champion, trained, degraded = trio
    vb, vy = val_part(data)
    good = evaluate(champion, trained, vb, vy, margin=0.002)
    bad = evaluate(champion, degraded, vb, vy, margin=0.002)
    assert good.promote, good.reason
    assert good.challenger_logloss < good.champion_logloss - 0.002
    assert not bad.promote, bad.reason
    assert bad.challenger_logloss > bad.champion_logloss
    assert good.n == bad.n == VAL
    # the paired test: per-sample differences on the same window, their standard error in the verdict
    d = sample_logloss(champion, vb, vy) - sample_logloss(trained, vb, vy)
    strict = evaluate(champion, trained, vb, vy, margin=0.002, z=1.0)
    assert strict.gain_se == pytest.approx(d.std(ddof=1) / np.sqrt(len(d)))
    assert strict.champion_logloss - strict.challenger_logloss == pytest.approx(d.mean())
    assert strict.promote == (d.mean() >= max(0.002, strict.gain_se)), strict.reason
    # with an absurd z no gain clears the bar: judged noise, not promoted
    assert not evaluate(champion, trained, vb, vy, margin=0.0, z=1e6).promote


def _wait_swaps(mgr: TrainingManager, name: str, before: str, timeout: float = 30.0):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        swaps = mgr.poll()
        if swaps or mgr.status()[name].last_verdict != before:
            return swaps
        time.sleep(0.05)
    raise AssertionError("no verdict from the evaluator thread")


def test_manager_promotes_only_the_better_and_rolls_back_exactly(trio, data, models, tmp_path) -> None:
    builder, _, batch, y, _ = data
    champion, trained, degraded = trio
    live = make_cnn(models, builder.spec)
    live.load_state_dict(copy.deepcopy(champion.state_dict()))
    live.version = "v-live"
    original = copy.deepcopy(live.state_dict())
    mgr = TrainingManager(None, models, builder, {"cnn": live}, dead_zone=DEAD_ZONE,
                          models_dir=tmp_path / "models", runs_dir=tmp_path / "runs")
    try:
        # the newest bars, fed as the decision path would (labels mature inside the buffer)
        mgr.feed(batch.take(slice(len(batch) - VAL - 3 * H, len(batch))))
        vb, vy = mgr.validation_window("cnn")
        assert len(vb) == VAL and np.array_equal(vy, y[-VAL - H : -H])  # the last H have no label yet

        bad_path = tmp_path / "bad.pt"
        degraded.save(bad_path)
        mgr.submit_checkpoint("cnn", bad_path, "v-bad")
        assert _wait_swaps(mgr, "cnn", "") == []
        st = mgr.status()["cnn"]
        assert st.challenger_score > st.champion_score and not bad_path.exists()
        assert live.version == "v-live"

        good_path = tmp_path / "good.pt"
        trained.save(good_path)
        mgr.submit_checkpoint("cnn", good_path, "v-good")
        swaps = _wait_swaps(mgr, "cnn", st.last_verdict)
        assert [s.kind for s in swaps] == ["promote"] and swaps[0].version == "v-good"
        mgr.apply(swaps[0])
        assert live.version == "v-good" and mgr.status()["cnn"].promotions == 1
        for k, v in trained.state_dict()["net"].items():
            assert torch.equal(live.state_dict()["net"][k], v)
        # the promoted weights are written for the next start (background thread), with their base
        lp = live_path(tmp_path / "models", "cnn")
        _wait_file(lp, True)
        rec = load_weights(lp)
        assert rec["version"] == "v-good" and rec["base"] == "v-live"
        assert_same_state(rec["state"]["net"], live.state_dict()["net"])
        assert_same_state(rec["state"]["opt"], live.state_dict()["opt"])

        mgr.rollback("cnn")
        applied = mgr.poll(apply=True)
        assert [s.kind for s in applied] == ["rollback"]
        now = live.state_dict()
        assert live.version == "v-live"
        for k, v in original["net"].items():
            assert torch.equal(now["net"][k], v), k
        assert_same_state(now, original)
        _wait_file(lp, False)  # back at the base weights: nothing to resume
        with pytest.raises(ValueError, match="no previous version"):
            mgr.rollback("cnn")

        # promoted files are pruned: the live one and the 3 a rollback may return to stay on disk
        files = []
        for i in range(6):
            f = tmp_path / "models" / "cnn" / "online" / f"v{i}.pt"
            f.parent.mkdir(parents=True, exist_ok=True)
            trained.save(f)
            files.append(f)
            mgr.apply(Swap(expert="cnn", version=f"v{i}", state=trained.state_dict(), kind="promote", path=str(f)))
        assert [f.exists() for f in files] == [False, False, True, True, True, True]
        assert live.version == "v5" and mgr.rollback("cnn").version == "v4"  # rollback needs no file
    finally:
        mgr.shutdown()
