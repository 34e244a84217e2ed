"""Nano training for a few steps on real BTC/USDT candles from the DuckDB store, then the same
checkpoint through the model resolver, the KronosExpert adapter and the forecast CLI (offline)."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

import main_backtest
from core.config import ConfigError, ExpertConfig
from core.data.files import load_file
from core.data.store import MarketStore
from core.types import FeatureBatch, FeatureSpec, SeriesKey
from NN.experts.kronos.bundle import load_bundle
from NN.experts.kronos.calibration import Calibration
from NN.experts.kronos.expert import KronosExpert
from NN.experts.kronos.hub import CheckpointNotFound
from NN.experts.kronos.train import train_kronos
from NN.training.checkpoints import CheckpointRegistry

KEY = SeriesKey("binanceus", "BTC/USDT", "1m")
BARS = 3000


@pytest.fixture(scope="module")
def candles(shared_data) -> pd.DataFrame:
    return load_file(shared_data / "binanceus" / "BTC_USDT-1m.csv").iloc[8000:8000 + BARS].reset_index(drop=True)


@pytest.fixture(scope="module")
def trained(candles, tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("kronos")
    store = MarketStore(":memory:")
    store.upsert_candles(KEY, candles)
    ckpt = train_kronos(store, KEY, start_ms=None, end_ms=None, models_dir=root / "models",
                        runs_dir=root / "runs", preset="nano-smoke", progress=False)
    registered = CheckpointRegistry(store, root / "models").best("kronos")  # rows hold absolute paths
    store.close()
    root.joinpath("registered.txt").write_text(registered.version if registered else "")
    return root, ckpt


def test_checkpoint_registered_and_loadable(trained, candles, tmp_path):
    """train_kronos records the checkpoint in the shared registry; load_into restores the same model."""
    root, ckpt = trained
    assert root.joinpath("registered.txt").read_text()
    assert all(p.is_dir() for p in (root / "models" / "kronos").iterdir())
    reg_file = next(ckpt.glob("registry/kronos/*.pt"))
    ex = _expert(root)
    ex.load(reg_file)
    ref = _expert(root)
    rows = np.array([2500])
    np.testing.assert_allclose(ex.predict_many(_batch(candles, rows), candles).probs,
                               ref.predict_many(_batch(candles, rows), candles).probs)


def test_train_writes_checkpoint_logs_and_calibration(trained, candles):
    root, ckpt = trained
    assert ckpt.parent == root / "models" / "kronos"
    for f in ("tokenizer/config.json", "tokenizer/model.safetensors", "model/config.json",
              "model/model.safetensors", "meta.json", "calibration.json"):
        assert (ckpt / f).is_file(), f
    meta = json.loads((ckpt / "meta.json").read_text())
    assert math.isfinite(meta["val_loss"]) and meta["bars"] == BARS
    assert meta["split"]["train"][1] < meta["split"]["val"][0] < meta["split"]["test"][0]  # chronological
    rep = meta["calibration_test"]
    assert set(rep) >= {"raw", "calibrated"} and set(rep["raw"]["coverage"]) == {"50", "80", "90"}
    assert any((root / "runs" / "kronos").rglob("events.out.tfevents*"))  # TensorBoard scalars
    cal = Calibration.load(ckpt / "calibration.json")
    assert cal.horizon == 5 and cal.n_fit >= 20


def test_nano_resolves_to_best_checkpoint(trained, tmp_path):
    root, ckpt = trained
    b = load_bundle("nano", root / "models")
    assert b.path == ckpt and b.calibration is not None and not b.model.training
    with pytest.raises(CheckpointNotFound, match="train --experts kronos"):
        load_bundle("nano", tmp_path)


def _batch(candles: pd.DataFrame, rows: np.ndarray) -> FeatureBatch:
    # Kronos reads only ts/close of the batch (it forecasts from candles); the feature arrays are empty
    spec = FeatureSpec(("1m",), 1, (), (), ())
    n = len(rows)
    return FeatureBatch("BTC/USDT", "1m", candles["ts"].to_numpy(np.int64)[rows],
                        candles["close"].to_numpy()[rows], np.zeros((n, 1, 1, 0), np.float32),
                        np.zeros((n, 0), np.float32), np.zeros((n, 0), np.float32), spec)


def _expert(root, **params) -> KronosExpert:
    p = {"model": "nano", "lookback": 64, "samples": 16, "seed": 3, "models_dir": str(root / "models"), **params}
    return KronosExpert("kronos", ExpertConfig.model_validate(
        {"class": "NN.experts.kronos.expert.KronosExpert", "horizon": 5, "device": "cpu", "params": p}),
        FeatureSpec(("1m",), 1, (), (), ()))


@pytest.mark.parametrize("calibrated", [True, False])
def test_expert_predict_many_uses_only_past_candles(trained, candles, calibrated):
    root, _ = trained
    ex = _expert(root, calibrated=calibrated)
    rows = np.array([2500, 2600, 2700])
    out = ex.predict_many(_batch(candles, rows), candles)
    assert out.probs.shape == (3, 3) and np.allclose(out.probs.sum(axis=1), 1.0)
    assert np.all(out.extras["valid"] == 1.0)
    assert np.all(out.extras["q10"] <= out.extras["q90"])
    assert np.all((out.confidence >= 0) & (out.confidence <= 1))
    # no look-ahead: cutting the candles right after the last sample changes nothing
    cut = ex.predict_many(_batch(candles, rows), candles.iloc[: rows[-1] + 1])
    np.testing.assert_allclose(cut.probs, out.probs)
    np.testing.assert_allclose(cut.expected_return, out.expected_return)
    single = ex.predict(_batch(candles, rows), candles)
    assert single.ts == int(candles["ts"].iloc[2700]) and single.probs == pytest.approx(tuple(out.probs[-1]))


def test_expert_params_validated_and_state_round_trip(trained, candles):
    root, _ = trained
    with pytest.raises(ConfigError, match="lookbak"):
        _expert(root, lookbak=10)
    ex = _expert(root)
    rows = np.array([2400, 2450])
    before = ex.predict_many(_batch(candles, rows), candles)
    m = ex.train_step(_batch(candles, rows), np.array([1, 1]), np.zeros(2))
    assert math.isfinite(m["loss"]) and not ex.bundle.model.training
    state = ex.state_dict()
    other = _expert(root)
    other.load_state_dict(state)
    a = ex.predict_many(_batch(candles, rows), candles)
    b = other.predict_many(_batch(candles, rows), candles)
    np.testing.assert_allclose(a.probs, b.probs)
    assert before.probs.shape == a.probs.shape


def test_forecast_cli_writes_artifacts(trained, candles, tmp_path, capsys):
    root, ckpt = trained
    db = tmp_path / "t.duckdb"
    with MarketStore(db) as st:
        st.upsert_candles(KEY, candles)
    cfg = tmp_path / "config.yaml"
    cfg.write_text(f"training:\n  models_dir: {root / 'models'}\n")
    out = tmp_path / "fc"
    rc = main_backtest.main(["--config", str(cfg), "forecast", "--symbol", "BTC/USDT", "--timeframe", "1m",
                             "--exchange", "binanceus", "--lookback", "64", "--horizon", "5", "--samples", "12",
                             "--model", "nano", "--seed", "1", "--calibrated", "--db", str(db), "--out", str(out)])
    text = capsys.readouterr().out
    assert rc == 0, text
    assert "P(up)" in text and "calibrated" in text
    tag = f"BTC_USDT_{pd.Timestamp(int(candles['ts'].iloc[-1]), unit='ms', tz='UTC'):%Y%m%dT%H%MZ}"
    s = json.loads((out / f"pred_summary_{tag}.json").read_text())
    assert s["samples"] == 12 and s["horizon"] == 5 and "calibrated" in s
    assert s["last_close"] == pytest.approx(candles["close"].iloc[-1])
    paths = pd.read_csv(out / f"paths_{tag}.csv")
    assert paths.shape == (12, 1 + 3 * 5)
    assert (out / f"fan_{tag}.png").stat().st_size > 5000
    assert "plotly" in (out / f"fan_{tag}.html").read_text()[:200000].lower()
    # no checkpoint -> a clear error naming the training command
    empty = tmp_path / "empty.yaml"
    empty.write_text(f"training:\n  models_dir: {tmp_path / 'none'}\n")
    rc = main_backtest.main(["--config", str(empty), "forecast", "--symbol", "BTC/USDT", "--exchange", "binanceus",
                             "--model", "nano", "--db", str(db), "--out", str(out)])
    assert rc == 2 and "train --experts kronos" in capsys.readouterr().err


def test_finetune_released_layout_keeps_tokenizer(candles, kronos_fixture, tmp_path):
    """base = a directory in the released layout (the fixture: tokenizer/ + model/): the predictor is
    fine-tuned, the tokenizer stays frozen, the result loads like any checkpoint."""
    from NN.experts.kronos.hub import load_predictor, load_tokenizer

    store = MarketStore(":memory:")
    store.upsert_candles(KEY, candles.iloc[:1500])
    ckpt = train_kronos(store, KEY, start_ms=None, end_ms=None, models_dir=tmp_path / "m", runs_dir=tmp_path / "r",
                        base=str(kronos_fixture), preset="nano-smoke", progress=False)
    meta = json.loads((ckpt / "meta.json").read_text())
    assert meta["base"] == str(kronos_fixture) and ckpt.name.startswith("finetune-")
    tok0, tok1 = load_tokenizer(kronos_fixture / "tokenizer"), load_tokenizer(ckpt / "tokenizer")
    for k, v in tok0.state_dict().items():
        assert torch.equal(v, tok1.state_dict()[k]), k
    m0, m1 = load_predictor(kronos_fixture / "model"), load_predictor(ckpt / "model")
    assert any(not torch.equal(v, m1.state_dict()[k]) for k, v in m0.state_dict().items())
    assert load_bundle(str(ckpt)).calibration is not None
