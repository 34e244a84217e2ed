"""Path anchoring of a small, briefly trained Kronos (sampler.anchor_paths): each path is measured from
its own decoded first open, so the tokenizer's price-level error no longer shifts every path. Released
models (no ``anchor`` in their meta) are sampled exactly as before."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import torch

from core.data.files import load_file
from NN.experts.kronos.bundle import load_bundle
from NN.experts.kronos.sampler import KronosSampler, SampleConfig, anchor_paths
from NN.experts.kronos.train import PRESETS

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "data" / "sample" / "BTC_USDT-1m.csv"


def test_anchor_paths_moves_each_paths_prices_so_its_first_bar_opens_at_the_last_close() -> None:
    # hand-written: two paths of two bars (open, high, low, close, volume, amount), both 1% too high
    p = np.array([[[101.0, 102.0, 100.0, 101.5, 7.0, 700.0], [101.5, 103.0, 101.0, 102.0, 8.0, 800.0]],
                  [[99.0, 99.5, 98.0, 98.5, 5.0, 500.0], [98.5, 99.0, 97.0, 97.5, 6.0, 600.0]]])
    a = anchor_paths(p, 100.0)
    assert np.allclose(a[:, 0, 0], 100.0)
    # each path's own moves (return from its first open) are kept; volumes are untouched
    assert np.allclose(a[:, :, :4] / a[:, :1, :1], p[:, :, :4] / p[:, :1, :1])
    assert np.array_equal(a[:, :, 4:], p[:, :, 4:])
    assert np.allclose(p[0, 0, 0], 101.0)  # the input is not modified


def test_quick_checkpoints_carry_the_anchor_and_released_ones_do_not(tmp_path: Path, kronos_fixture: Path) -> None:
    assert PRESETS["nano-quick"].anchor == "first_open" and PRESETS["nano"].anchor is None
    torch.set_num_threads(1)
    ctx = load_file(SAMPLE).iloc[:256]
    cfg = SampleConfig(samples=16, seed=0)
    # the fixture's networks as a quick checkpoint directory (meta.json "anchor", as train_kronos writes it)
    d = tmp_path / "nano-quick-x"
    shutil.copytree(kronos_fixture / "tokenizer", d / "tokenizer")
    shutil.copytree(kronos_fixture / "model", d / "model")
    (d / "meta.json").write_text(json.dumps({"version": d.name, "val_loss": 1.0, "anchor": "first_open"}))
    b = load_bundle(str(d))
    assert b.anchor == "first_open"
    anchored = b.sampler().forecast(ctx, 5, cfg)
    assert np.allclose(anchored.paths[:, 0, 0], ctx["close"].iat[-1])
    plain = KronosSampler(b.tokenizer, b.model).forecast(ctx, 5, cfg)  # what a released model gets
    assert not np.allclose(plain.paths[:, 0, 0], ctx["close"].iat[-1])
    assert np.allclose(anchor_paths(plain.paths, float(ctx["close"].iat[-1])), anchored.paths)
    (d / "meta.json").write_text(json.dumps({"version": d.name, "val_loss": 1.0}))
    assert load_bundle(str(d)).anchor is None
