"""Labels and chronological splits for training and evaluation.

Label rule: the forward log return r = log(close[t+h] / close[t]) over h base bars is
  0 (down) if r < -dead_zone, 2 (up) if r > dead_zone, 1 (flat) otherwise,
and -1 where t + h runs past the data (never used for training). The dead zone defaults to the
round-trip taker fee (2 x execution.taker_fee_bps): a move smaller than the cost of a round trip is
not worth trading, so it is "flat".
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from core.config import AppConfig, LabelsConfig, SplitConfig
from core.features import FeatureBuilder
from core.types import FeatureBatch

DOWN, FLAT, UP, UNKNOWN = 0, 1, 2, -1


def _close(close: np.ndarray) -> np.ndarray:
    c = np.asarray(close, dtype=np.float64)
    if c.ndim != 1:
        raise ValueError(f"close must be 1-D, got shape {c.shape}")
    bad = ~(np.isfinite(c) & (c > 0))
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise ValueError(f"close must be finite and > 0; row {row} has {c[row]!r}")
    return c


def _horizon(horizon: int) -> int:
    if int(horizon) != horizon or horizon < 1:
        raise ValueError(f"horizon must be an integer >= 1 bar, got {horizon!r}")
    return int(horizon)


def default_dead_zone(app_cfg: AppConfig, labels_cfg: LabelsConfig) -> float:
    """Dead zone in log-return units: labels.dead_zone_bps if set, else the round-trip taker fee."""
    bps = labels_cfg.dead_zone_bps
    if bps is None:
        bps = 2.0 * app_cfg.execution.taker_fee_bps
    if bps < 0:
        raise ValueError(f"labels.dead_zone_bps must be >= 0, got {bps}")
    return float(bps) / 1e4


def forward_returns(close: np.ndarray, horizon: int) -> np.ndarray:
    """float64 [N]: log(close[t+h] / close[t]); NaN for the last h bars."""
    c, h = _close(close), _horizon(horizon)
    out = np.full(c.shape[0], np.nan)
    if c.shape[0] > h:
        out[:-h] = np.log(c[h:] / c[:-h])
    return out


def make_labels(close: np.ndarray, horizon: int, dead_zone: float) -> np.ndarray:
    """int64 [N]: 0 down / 1 flat / 2 up by the rule of the module docstring; -1 where unknown."""
    if not (dead_zone >= 0):  # also rejects NaN
        raise ValueError(f"dead_zone must be >= 0, got {dead_zone!r}")
    r = forward_returns(close, horizon)
    out = np.full(r.shape[0], UNKNOWN, dtype=np.int64)
    known = np.isfinite(r)
    out[known] = FLAT
    out[known & (r > dead_zone)] = UP
    out[known & (r < -dead_zone)] = DOWN
    return out


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
) -> tuple[FeatureBatch, np.ndarray, np.ndarray]:
    """Aligned (FeatureBatch, labels int64 [N], forward log returns float64 [N]) for one horizon from
    stored base-timeframe candles. Drops samples without full history (the first min_history-1
    bars), without a label (the last `horizon` bars) and whose horizon spans a gap in the data
    (h bars later must be exactly h timeframes later)."""
    h = _horizon(horizon)
    if "close" not in candles.columns or "ts" not in candles.columns:
        raise ValueError("build_dataset: candles need ts and close columns (and the rest of CANDLE_COLUMNS)")
    first = min(builder.min_history - 1, len(candles))
    # samples before `first` are never built: their windows would be thrown away anyway
    batch = builder.build_many(candles, ref, symbol=symbol, rows=slice(first, None))
    close = _close(candles["close"].to_numpy(dtype=np.float64))
    ts = np.asarray(candles["ts"], dtype=np.int64)
    labels = make_labels(close, h, dead_zone)[first:]
    fwd = forward_returns(close, h)[first:]
    contiguous = np.zeros(len(close), dtype=bool)
    if len(close) > h:
        contiguous[:-h] = (ts[h:] - ts[:-h]) == h * builder.base_ms
    keep = (labels != UNKNOWN) & contiguous[first:]
    idx = np.flatnonzero(keep)
    return batch.take(idx), labels[idx], fwd[idx]
