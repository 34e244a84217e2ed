"""Labels, splits and the aligned dataset helper, on real recorded candles."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from core.config import AppConfig, FeaturesConfig, LabelsConfig, SplitConfig, load_config, load_models
from core.data.files import load_file as load_candles
from core.features import FeatureBuilder
from core.labels import dead_zone, forward_returns, make_labels
from NN.training.datasets import build_dataset, chronological_split, label_table


@pytest.fixture(scope="module")
def btc(shared_data: Path) -> pd.DataFrame:
    return load_candles(shared_data / "binanceus" / "BTC_USDT-1m.csv")


def hand_label(c0: float, c1: float, dz: float) -> int:
    r = math.log(c1 / c0)
    return 2 if r > dz else (0 if r < -dz else 1)


def test_default_dead_zone_is_round_trip_fee() -> None:
    app = AppConfig.model_validate({"execution": {"taker_fee_bps": 7.5}})
    assert dead_zone(app.execution, LabelsConfig()) == pytest.approx(0.0015)
    assert dead_zone(app.execution, LabelsConfig(dead_zone_bps=3.0)) == pytest.approx(0.0003)
    # the shipped files leave labels.dead_zone_bps unset: the round trip of config.yaml's taker fee
    cfg, labels = load_config(), load_models().labels
    assert labels.dead_zone_bps is None
    assert dead_zone(cfg.execution, labels) == pytest.approx(2 * cfg.execution.taker_fee_bps / 1e4)
    with pytest.raises(ValueError, match="dead_zone_bps must be >= 0"):
        dead_zone(cfg.execution, LabelsConfig.model_construct(dead_zone_bps=-1.0))


def test_labels_by_hand_on_real_rows(btc: pd.DataFrame) -> None:
    close = btc.close.to_numpy()
    dz = 0.002  # the default round trip (2 x 10 bps)
    for h in (1, 5, 15, 60):
        lab = make_labels(close, h, dz)
        fwd = forward_returns(close, h)
        assert lab.dtype == np.int64 and fwd.dtype == np.float64
        assert np.all(lab[-h:] == -1) and np.all(np.isnan(fwd[-h:]))
        assert np.all(lab[:-h] >= 0)
        for i in (0, 777, 12345, 20000, len(close) - h - 1):
            assert lab[i] == hand_label(close[i], close[i + h], dz), (h, i)
            assert fwd[i] == pytest.approx(math.log(close[i + h] / close[i]), rel=1e-12)
    # at 60 bars the real March 2023 data has all three classes
    assert set(np.unique(make_labels(close, 60, dz)[:-60])) == {0, 1, 2}


def test_label_boundaries_hand_made() -> None:
    """Edge case (hand-written closes): a move exactly at the dead zone is flat."""
    dz = math.log(1.002)
    close = np.array([100.0, 100.2, 100.0, 99.0, 99.0])
    r = forward_returns(close, 1)
    assert r[0] == pytest.approx(dz)
    lab = make_labels(close, 1, float(r[0]))
    assert lab.tolist() == [1, 0, 0, 1, -1]
    assert make_labels(close, 10, dz).tolist() == [-1] * 5  # horizon past the data
    with pytest.raises(ValueError, match="row 2"):
        make_labels(np.array([1.0, 2.0, np.nan]), 1, dz)
    with pytest.raises(ValueError, match="horizon"):
        forward_returns(close, 0)
    with pytest.raises(ValueError, match="dead_zone"):
        make_labels(close, 1, -0.1)


def test_chronological_split() -> None:
    split = SplitConfig(train=0.7, val=0.15, gap_bars=60)
    tr, va, te = chronological_split(30_000, split)
    assert (tr.start, tr.stop) == (0, 21_000)
    assert (va.start, va.stop) == (21_060, 25_500)
    assert (te.start, te.stop) == (25_560, 30_000)
    idx = np.arange(30_000)
    parts = [idx[s] for s in (tr, va, te)]
    assert parts[0].max() + 60 < parts[1].min() and parts[1].max() + 60 < parts[2].min()
    assert sum(len(p) for p in parts) == 30_000 - 120
    with pytest.raises(ValueError, match="empty"):
        chronological_split(100, split)


def test_build_dataset_aligned(btc: pd.DataFrame) -> None:
    candles = btc.iloc[:3000].reset_index(drop=True)
    fb = FeatureBuilder(FeaturesConfig(window=32, timeframes=["1m", "5m", "1h"]), "1m")
    h, dz = 15, 0.002
    batch, labels, fwd = build_dataset(fb, candles, h, dz, symbol="BTC/USDT")
    n = len(candles) - (fb.min_history - 1) - h
    assert len(batch) == len(labels) == len(fwd) == n
    assert batch.ts[0] == candles.ts.iloc[fb.min_history - 1]
    assert batch.ts[-1] == candles.ts.iloc[len(candles) - h - 1]
    close = candles.close.to_numpy()
    for j in (0, 100, n - 1):
        i = fb.min_history - 1 + j
        assert labels[j] == hand_label(close[i], close[i + h], dz)
        assert fwd[j] == pytest.approx(math.log(close[i + h] / close[i]))
        assert batch.close[j] == close[i]
    assert labels.dtype == np.int64 and set(np.unique(labels)) <= {0, 1, 2}


def test_build_dataset_skips_gaps(shared_data: Path) -> None:
    """XRP/ETH 1m has gaps (thin market): no label may span one."""
    xrp = load_candles(shared_data / "freqtrade" / "XRP_ETH-1m.csv")
    ts = xrp.ts.to_numpy()
    assert np.any(np.diff(ts) > 60_000)
    fb = FeatureBuilder(FeaturesConfig(window=16, timeframes=["1m", "5m"]), "1m")
    h = 5
    batch, labels, fwd = build_dataset(fb, xrp, h, 0.002)
    pos = np.searchsorted(ts, batch.ts)
    assert np.all(ts[pos + h] - ts[pos] == h * 60_000)
    assert 0 < len(batch) < len(xrp) - fb.min_history - h
    assert np.isfinite(fwd).all() and np.isfinite(batch.windows).all()


def test_label_table_columns_follow_horizons(btc: pd.DataFrame) -> None:
    close = btc.close.to_numpy()[:2000]
    horizons = load_models().labels.horizons
    tab = label_table(close, horizons, 0.002)
    assert tab.shape == (2000, len(horizons)) and tab.dtype == np.int64
    for j, h in enumerate(horizons):
        assert np.array_equal(tab[:, j], make_labels(close, h, 0.002))
