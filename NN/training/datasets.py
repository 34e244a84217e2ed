"""Training datasets: feature samples aligned with their labels, and chronological splits.

The label rule itself lives in core/labels.py (one definition for training, outcomes, backtests and
the dashboard); samples labelled -1 (unknown: t + h runs past the data) are never used for training.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from core.config import SplitConfig
from core.features import FeatureBuilder
from core.labels import UNKNOWN, check_close, check_horizon, forward_returns, horizon_ok, make_labels
from core.types import FeatureBatch


def chronological_split(n: int, split: SplitConfig) -> tuple[slice, slice, slice]:
    """(train, val, test) slices over n time-ordered samples, in that order, with split.gap_bars
    samples dropped between train/val and val/test so that labels (which look h bars ahead) and
    trailing windows of neighbouring parts do not overlap. Use gap_bars >= the label horizon."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    gap = split.gap_bars
    a = int(n * split.train)
    b = int(n * (split.train + split.val))
    train, val, test = slice(0, a), slice(a + gap, b), slice(b + gap, n)
    for name, s in (("train", train), ("val", val), ("test", test)):
        if s.stop - s.start < 1:
            raise ValueError(
                f"chronological_split: {n} samples leave the {name} part empty "
                f"(train={split.train}, val={split.val}, gap_bars={gap}); use more data or a smaller gap"
            )
    return train, val, test


def label_table(close: np.ndarray, horizons: list[int] | tuple[int, ...], dead_zone: float) -> np.ndarray:
    """int64 [N, H]: make_labels for every horizon of labels.horizons, column j = horizons[j]."""
    if len(horizons) == 0:
        raise ValueError("label_table: no horizons given")
    return np.column_stack([make_labels(close, h, dead_zone) for h in horizons])


def build_dataset(
    builder: FeatureBuilder,
    candles: pd.DataFrame,
    horizon: int,
    dead_zone: float,
    ref: pd.DataFrame | None = None,
    symbol: str = "",
    cross_sessions: bool = False,
) -> tuple[FeatureBatch, np.ndarray, np.ndarray]:
    """Aligned (FeatureBatch, labels int64 [N], forward log returns float64 [N]) for one horizon from
    stored base-timeframe candles. Drops samples without full history (the first min_history-1
    bars), without a label (the last `horizon` bars) and whose horizon spans a gap in the data
    (h bars later must be exactly h timeframes later; with the builder's session calendar h SESSION bars
    later, in the same session unless ``cross_sessions``: core.labels.horizon_ok)."""
    h = check_horizon(horizon)
    if "close" not in candles.columns or "ts" not in candles.columns:
        raise ValueError("build_dataset: candles need ts and close columns (and the rest of CANDLE_COLUMNS)")
    first = min(builder.min_history - 1, len(candles))
    # samples before `first` are never built: their windows would be thrown away anyway
    batch = builder.build_many(candles, ref, symbol=symbol, rows=slice(first, None))
    close = check_close(candles["close"].to_numpy(dtype=np.float64))
    ts = np.asarray(candles["ts"], dtype=np.int64)
    labels = make_labels(close, h, dead_zone)[first:]
    fwd = forward_returns(close, h)[first:]
    contiguous = horizon_ok(ts, h, builder.base_timeframe, builder.calendar, cross_sessions)
    keep = (labels != UNKNOWN) & contiguous[first:]
    idx = np.flatnonzero(keep)
    return batch.take(idx), labels[idx], fwd[idx]
