"""Checkpoint registry (retention, pruning, best loaded, rollback) and the offline `train` ->
`evaluate` commands end to end on real BTC/USDT 1m candles (../shared/data) in a temporary DuckDB."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

import main_backtest
from core.config import CheckpointPolicy, load_models
from core.data.files import load_file as load_candles
from core.data.store import MarketStore
from core.features import FeatureBuilder
from core.types import SeriesKey
from NN.experts.registry import build_expert
from NN.training.checkpoints import CheckpointRegistry

torch.set_num_threads(1)  # small nets: one thread is faster, and the 2-core box is shared

N_BARS = 6000  # ~4 days of 1m bars: train ~4.1k, val ~0.8k, test ~0.8k samples
KEY = SeriesKey("binanceus", "BTC/USDT", "1m")


def weights(expert) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in expert.net.state_dict().items()}


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_registry_keeps_best_n_prunes_and_rolls_back(tmp_path: Path) -> None:
    models = load_models()
    spec = FeatureBuilder(models.features, "1m").spec
    cfg = models.experts["cnn"].model_copy(update={"device": "cpu"})
    store = MarketStore(":memory:")
    reg = CheckpointRegistry(store, tmp_path / "models")
    policy = CheckpointPolicy(keep_best=3, metric="val_logloss", mode="min")
    metrics = [0.9, 0.7, 0.8, 0.6, 1.0]
    saved, versions = [], []
    for seed, m in enumerate(metrics):
        ex = build_expert("cnn", cfg.model_copy(update={"params": {**cfg.params, "seed": seed}}), spec)
        saved.append(weights(ex))
        curve = pd.DataFrame({"step": [0, 1], "name": "val_logloss", "value": [m + 0.1, m]})
        versions.append(reg.register("cnn", ex.state_dict(), m, policy, {"seed": seed}, metrics=curve))
    kept = reg.list("cnn")
    assert sorted(i.metric for i in kept) == [0.6, 0.7, 0.8]
    assert {i.version for i in kept} == {versions[1], versions[2], versions[3]}
    for i, v in enumerate(versions):  # pruned from disk too
        assert (tmp_path / "models" / "cnn" / f"{v}.pt").exists() == (i in (1, 2, 3))
    rows = store.query_df("SELECT * FROM checkpoints WHERE expert = 'cnn'")
    assert len(rows) == 3 and set(rows.columns) >= {"expert", "version", "path", "metric", "created_at", "meta"}
    assert reg.best("cnn").version == versions[3] and reg.best("cnn").meta["seed"] == 3
    assert reg.latest_version("cnn") == versions[3]
    # training curves are pruned with their checkpoints; metrics() is the newest surviving run's
    kept_curves = store.query_df("SELECT DISTINCT version FROM training_metrics WHERE expert = 'cnn'")
    assert set(kept_curves.version) == {versions[1], versions[2], versions[3]}
    curve = reg.metrics("cnn")
    assert list(curve.columns) == ["step", "name", "value"]
    assert curve.step.tolist() == [0, 1] and curve.value.tolist() == pytest.approx([0.7, 0.6])
    assert reg.metrics("dqn").empty
    with pytest.raises(ValueError, match=r"lack columns \['value'\]"):
        reg.register("cnn", {}, 0.5, policy, {}, metrics=pd.DataFrame({"step": [0], "name": ["x"]}))
    with pytest.raises(ValueError, match="'x' appears twice at step 0"):
        reg.register("cnn", {}, 0.5, policy, {},
                     metrics=pd.DataFrame({"step": [0, 0], "name": ["x", "x"], "value": [1.0, 2.0]}))
    assert len(reg.list("cnn")) == 3  # a refused registration leaves no row behind

    fresh = build_expert("cnn", cfg.model_copy(update={"params": {**cfg.params, "seed": 99}}), spec)
    assert reg.load_into(fresh) and fresh.version == versions[3]
    assert same(weights(fresh), saved[3])  # the best one is loaded by default
    assert reg.load_into(fresh, versions[2]) and fresh.version == versions[2]
    assert same(weights(fresh), saved[2])  # rollback to an older version: identical weights
    with pytest.raises(KeyError):
        reg.load_into(fresh, versions[0])  # pruned
    assert not reg.load_into(build_expert("dqn", models.experts["dqn"].model_copy(update={"device": "cpu"}), spec))

    # an architecture mismatch is refused with a clear message, not half-loaded
    other = build_expert("cnn", cfg.model_copy(update={"params": {**cfg.params, "channels": 8}}), spec)
    with pytest.raises(ValueError, match="channels"):
        reg.load_into(other)
    (tmp_path / "models" / "cnn" / f"{versions[1]}.pt").unlink()
    with pytest.raises(FileNotFoundError, match="missing"):
        reg.load_into(fresh, versions[1])
    with pytest.raises(ValueError, match="finite"):
        reg.register("cnn", {}, float("nan"), policy, {})


@pytest.fixture(scope="module")
def trained(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """`train` then `evaluate` through main_backtest.py on a temporary DuckDB holding real candles."""
    tmp = tmp_path_factory.mktemp("train")
    db = tmp / "t.duckdb"
    candles = load_candles(shared_data / "binanceus" / "BTC_USDT-1m.csv").iloc[:N_BARS]
    with MarketStore(db) as store:
        store.upsert_candles(KEY, candles)
    models_yml = tmp / "models.yml"
    raw = yaml.safe_load((Path(main_backtest.__file__).parent / "models.yml").read_text())
    for name in ("cnn", "transformer", "dqn"):
        raw["experts"][name]["device"] = "cpu"
    raw["experts"]["kronos"]["enabled"] = False
    # 4 days of calm March-2023 minutes hold almost no 5-bar move beyond the default 20 bps dead zone
    # (the val part has none at all), so this slice uses 5 bps: every class is present in every part
    raw["labels"]["dead_zone_bps"] = 5
    models_yml.write_text(yaml.safe_dump(raw, sort_keys=False))
    common = ["--db", str(db), "--models-dir", str(tmp / "models"), "--symbol", KEY.symbol,
              "--timeframe", KEY.timeframe, "--exchange", KEY.exchange]
    rc = main_backtest.main(["--models", str(models_yml), "train", "--experts", "cnn,transformer,dqn,moe",
                             *common, "--epochs", "2", "--max-steps", "12", "--no-progress",
                             "--runs-dir", str(tmp / "runs")])
    assert rc == 0
    out = tmp / "eval.json"
    rc = main_backtest.main(["--models", str(models_yml), "evaluate", *common, "--out", str(out)])
    assert rc == 0
    return {"tmp": tmp, "db": db, "report": json.loads(out.read_text())}


def test_train_registers_checkpoints_and_logs(trained: dict) -> None:
    with MarketStore(trained["db"], read_only=True) as store:
        rows = store.query_df("SELECT expert, metric, meta FROM checkpoints ORDER BY expert")
    assert sorted(rows.expert) == ["cnn", "dqn", "moe", "transformer"]
    assert np.isfinite(rows.metric).all()
    meta = {r.expert: json.loads(r.meta) for r in rows.itertuples()}
    # the gate was fit on validation data, after every expert's training window
    assert meta["moe"]["experts"] == ["cnn", "transformer", "dqn"]  # models.yml order
    assert meta["cnn"]["train_end_ts"] < meta["cnn"]["val_start_ts"] < meta["cnn"]["test_start_ts"]
    assert list((trained["tmp"] / "runs").rglob("events.out.tfevents.*")), "no TensorBoard logs"


def _text(component: object) -> str:
    """All the text a Dash component tree shows."""
    children = getattr(component, "children", component)
    if isinstance(children, str | int | float):
        return str(children)
    if isinstance(children, list | tuple):
        return " ".join(_text(c) for c in children)
    return "" if children is None or children is component else _text(children)


def test_train_records_training_curves_and_the_models_page_shows_them(trained: dict) -> None:
    """Each trained expert's registration carries its per-epoch curves (the TensorBoard epoch scalars);
    the Models page reads checkpoints and curves through the registry, TensorBoard only for a
    checkpoint that recorded none (the gate), and says "none recorded yet" without checkpoints."""
    from web.pages import models as page

    runs = trained["tmp"] / "runs"
    with MarketStore(trained["db"], read_only=True) as store:
        reg = CheckpointRegistry(store, trained["tmp"] / "models")
        for name in ("cnn", "transformer", "dqn"):
            (info,) = reg.list(name)
            curve = reg.metrics(name)
            epochs = info.meta["epochs_run"]
            assert sorted(set(curve.name)) == ["epoch_train_loss", "val_logloss"]
            val = curve[curve.name == "val_logloss"]
            assert val.step.tolist() == list(range(epochs)) and np.isfinite(curve.value).all()
            assert val.value.iloc[info.meta["best_epoch"] - 1] == pytest.approx(info.metric, rel=1e-12)
            tb = page.tensorboard_scalars(runs, name)
            tb_val = tb[tb.name == "val_logloss"].sort_values("step")
            np.testing.assert_allclose(tb_val.value, val.value, rtol=1e-6)  # float32 in TensorBoard
            pd.testing.assert_frame_equal(page.metrics_for(reg, name, runs), curve)
            assert [i.version for i in page.checkpoints_for(reg, name)] == [info.version]
            block = _text(page.checkpoint_block(reg, name))
            assert f"last checkpoint: {info.version}" in block and "★" in block and "none recorded" not in block
        n = store.query_one("SELECT count(*) FROM training_metrics WHERE expert = 'moe'")[0]
        assert n == 0 and reg.list("moe")
        gate = page.metrics_for(reg, "moe", runs)  # no curves recorded: its TensorBoard scalars
        assert "holdout_gate_logloss" in set(gate.name)
        assert "offline loss curves" in str(page.loss_block(reg, "cnn", runs).figure.layout.title.text)
    with MarketStore(":memory:") as empty:
        for registry in (CheckpointRegistry(empty, trained["tmp"] / "none"), None):
            assert page.checkpoints_for(registry, "cnn") == [] and page.metrics_for(registry, "cnn").empty
            block = _text(page.checkpoint_block(registry, "cnn"))
            assert "last checkpoint: none" in block and "none recorded yet" in block
            assert "none recorded yet" in _text(page.loss_block(registry, "cnn", trained["tmp"] / "no-runs"))


def test_evaluate_report_and_fused_no_worse_than_best_expert(trained: dict) -> None:
    rep = trained["report"]
    assert set(rep["experts"]) == {"cnn", "transformer", "dqn"}
    for s in [*rep["experts"].values(), rep["fused"], *rep["baseline"].values()]:
        assert {"accuracy", "log_loss", "brier", "ece", "n"} <= set(s)
        assert 0 <= s["accuracy"] <= 1 and s["log_loss"] > 0 and 0 <= s["ece"] <= 1
    n_test = rep["split"]["test"]["n"]
    assert rep["fused"]["n"] > 0.9 * n_test and rep["fused"]["gate"] == "learned"
    assert sum(rep["fused"]["mean_weights"].values()) == pytest.approx(1.0, abs=1e-3)
    best = min(s["log_loss"] for s in rep["experts"].values())
    assert rep["fused"]["log_loss"] <= best + 0.01, (rep["fused"]["log_loss"], best)
    assert rep["warnings"] == []


def test_train_refuses_unknown_series(trained: dict, capsys: pytest.CaptureFixture) -> None:
    rc = main_backtest.main(["train", "--experts", "cnn", "--db", str(trained["db"]), "--symbol", "ETH/USDT",
                             "--models-dir", str(trained["tmp"] / "m2"), "--no-progress"])
    assert rc == 1
    assert "no candles for" in capsys.readouterr().err  # errors go to stderr (issue 16)


def test_second_train_starts_from_the_best_checkpoint(trained: dict) -> None:
    with MarketStore(trained["db"], read_only=True) as store:
        first = CheckpointRegistry(store, trained["tmp"] / "models").best("cnn").version
    rc = main_backtest.main(["--models", str(trained["tmp"] / "models.yml"), "train", "--experts", "cnn",
                             "--db", str(trained["db"]), "--models-dir", str(trained["tmp"] / "models"),
                             "--epochs", "1", "--max-steps", "2", "--no-progress",
                             "--runs-dir", str(trained["tmp"] / "runs")])
    assert rc == 0
    with MarketStore(trained["db"], read_only=True) as store:
        rows = CheckpointRegistry(store, trained["tmp"] / "models").list("cnn")
    assert len(rows) == 2 and rows[-1].meta["resumed_from"] == first
    with MarketStore(trained["db"], read_only=True) as store:  # the curves shown are the newest run's
        curve = CheckpointRegistry(store, trained["tmp"] / "models").metrics("cnn")
    assert curve[curve.name == "val_logloss"].step.tolist() == [0]  # --epochs 1


def test_training_draws_only_from_the_train_part(shared_data: Path) -> None:
    """Mini-batches (supervised) and episode chunks (DQN) come only from the train part, in time order
    inside a DQN chunk; the parts are chronological with the configured gap between them."""
    from core.config import load_config
    from NN.training.prepared import prepare
    from NN.training.trainer import train_expert

    models = load_models()
    models.labels.dead_zone_bps = 5  # a short calm slice: see the `trained` fixture
    candles = load_candles(shared_data / "binanceus" / "BTC_USDT-1m.csv").iloc[:3000]
    prep = prepare(candles, KEY, models, load_config())
    assert prep.train.stop + models.split.gap_bars == prep.val.start
    assert prep.val.stop + models.split.gap_bars == prep.test.start
    train_end_ts = prep.batch.ts[prep.train.stop - 1]
    for name in ("cnn", "dqn"):
        ex = build_expert(name, models.experts[name].model_copy(update={"device": "cpu"}), prep.batch.spec)
        seen: list[np.ndarray] = []
        inner = ex.train_step

        def spy(batch, labels, fwd, _inner=inner, _seen=seen):
            _seen.append(batch.ts.copy())
            return _inner(batch, labels, fwd)

        ex.train_step = spy
        train_expert(ex, prep, epochs=1, max_steps_per_epoch=3)
        assert seen and all(ts.max() <= train_end_ts for ts in seen)
        if name == "dqn":
            assert all((np.diff(ts) == 60_000).all() for ts in seen)  # consecutive bars
        else:
            assert any((np.diff(ts) != 60_000).any() for ts in seen)  # random within the part


def test_train_kronos_is_delegated(trained: dict) -> None:
    """`train --experts kronos` hands over to NN.experts.kronos.train.train_kronos (smoke preset)."""
    out = trained["tmp"] / "kronos-models"
    rc = main_backtest.main(["--models", str(trained["tmp"] / "models.yml"), "train", "--experts", "kronos",
                             "--kronos-preset", "nano-smoke", "--db", str(trained["db"]), "--models-dir", str(out),
                             "--runs-dir", str(trained["tmp"] / "runs"), "--no-progress"])
    assert rc == 0
    assert [p.name for p in (out / "kronos").iterdir()][0].startswith("nano-smoke")
