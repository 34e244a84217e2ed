"""Training trials of a sweep on real BTC/USDT 1m bars (March 2023): horizon, dead zone and a CNN
hyper-parameter change the labels and the model, so each trial trains one fold; the pruner (ASHA-style
successive halving over expert epochs) stops the trials behind their rung."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from compose import sweep_training_trial
from core.backtest.sweep import SweepError, load_space, open_study, run_sweep, sweep_paths
from core.config import load_config, load_models

torch.set_num_threads(1)
START = 12_000  # 2023-03-09 08:00 UTC


def _space(tmp_path: Path, shared_data: Path, extra: str = "") -> Path:
    p = tmp_path / "train.yml"
    p.write_text(f"""data: {shared_data / "binanceus" / "BTC_USDT-1m.csv"}
from: 2023-03-09T08:00
to: 2023-03-09T22:00
train: 12h
test: 2h
experts: [cnn]
epochs: 3
max_steps: 3
pruner: asha
reduction_factor: 2
sampler: grid
seed: 3
min_trades: 1
params:
  horizon: {{values: [3, 5]}}
  cnn.lr: {{values: [0.001, 0.8]}}
  dead_zone_bps: {{values: [4.0]}}
  buy_threshold: {{values: [0.3]}}
{extra}""")
    return p


def _models():
    models = load_models()
    # small feature windows so a 12-hour fold has enough samples (the test's only change to models.yml)
    feats = models.features.model_copy(update={"timeframes": ["1m", "5m", "1h"], "window": 32, "norm_window": 200})
    return models.model_copy(update={"features": feats})


def test_four_training_trials_one_pruned_by_successive_halving(shared_data, tmp_path):
    cfg, models = load_config(), _models()
    space = load_space(_space(tmp_path, shared_data), cfg, models)
    assert space.kind == "training" and space.training is not None and space.training.experts == ("cnn",)
    paths = sweep_paths(tmp_path / "moe.duckdb", "train")
    s = run_sweep(space, cfg, n_trials=4, workers=0, paths=paths, name="train", models=models,
                  train_trial=sweep_training_trial)
    trials = open_study(space, paths, "train").get_trials()
    assert len(trials) == 4 and not s["failed"]
    states = {t.number: t.state.name for t in trials}
    assert "PRUNED" in states.values(), states
    assert s["trials"] + len(s["pruned"]) == 4 == s["trials_tried"]
    for t in trials:
        # every trial reported its epochs' val log-loss skill over climatology (step = epoch, one expert)
        assert t.intermediate_values and set(t.intermediate_values) <= {1, 2, 3}
        assert all(-1.0 < v < 1.0 for v in t.intermediate_values.values())
        if t.state.name == "PRUNED":  # stopped before its last epoch was trained
            assert max(t.intermediate_values) < 3 or len(t.intermediate_values) < 3
        else:
            assert t.user_attrs["stats"]["bars"] == 120 and len(t.intermediate_values) == 3
            st = t.user_attrs["stats"]  # the kept (best) epoch is the one of the highest skill
            skill = st["val_climatology"]["cnn"] - st["val_logloss"]["cnn"]
            assert skill == pytest.approx(max(t.intermediate_values.values()), abs=1e-5)  # kept if 1e-5 better
            assert 0.3 < st["val_climatology"]["cnn"] < 1.2  # a 3-class base rate's log loss
    # the pruned trials lost at their rung to a trial that had reached it before them
    by_n = sorted(trials, key=lambda t: t.number)
    for t in by_n:
        if t.state.name == "PRUNED":
            step = max(t.intermediate_values)
            earlier = [u.intermediate_values[step] for u in by_n[:t.number] if step in u.intermediate_values]
            assert earlier and t.intermediate_values[step] < max(earlier)
    # horizons and the hyper-parameter were really varied
    assert {(t.params["horizon"], t.params["cnn.lr"]) for t in trials} == {(3, 0.001), (3, 0.8), (5, 0.001),
                                                                           (5, 0.8)}


@pytest.mark.parametrize("extra, needle", [
    ("  cnn.nope: {values: [1]}\n", "cnn has no parameter 'nope'"),
    ("  dqn.lr: {values: [0.1]}\n", "'dqn' is not one of the trained experts"),
])
def test_bad_training_spaces_fail_with_one_line(shared_data, tmp_path, extra, needle):
    with pytest.raises(SweepError) as e:
        load_space(_space(tmp_path, shared_data, extra), load_config(), _models())
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_training_keys_without_data_say_what_is_needed(tmp_path):
    p = tmp_path / "s.yml"
    p.write_text("predictions: x\nparams: {horizon: {values: [3, 5]}}\n")
    with pytest.raises(SweepError, match="need retraining: give 'data'"):
        load_space(p)


def test_training_trials_on_two_ray_workers_report_their_epochs_into_the_journal(shared_data, tmp_path):
    """The same 4 trials as Ray tasks: each worker process reports its epochs straight into the study's
    journal (which trials the pruner stops depends on the order they finish, so only that is checked)."""
    cfg, models = load_config(), _models()
    space = load_space(_space(tmp_path, shared_data), cfg, models)
    paths = sweep_paths(tmp_path / "moe.duckdb", "ray")
    s = run_sweep(space, cfg, n_trials=4, workers=2, paths=paths, name="ray", models=models,
                  train_trial=sweep_training_trial)
    trials = open_study(space, paths, "ray").get_trials()
    assert len(trials) == 4 and not s["failed"] and s["trials"] + len(s["pruned"]) == 4
    assert all(t.state.name in ("COMPLETE", "PRUNED") and t.intermediate_values for t in trials)
    assert s["trials"] >= 1 and all(len(t.intermediate_values) == 3 for t in trials if t.state.name == "COMPLETE")
