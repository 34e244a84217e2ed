"""Input preparation outside the networks, exactly as the reference does it: six features per bar,
z-score over the context window only (no look-ahead), clip to ±5, and five calendar stamps."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

FEATURES = ("open", "high", "low", "close", "volume", "amount")
CLIP = 5.0
EPS = 1e-5


def candle_features(df: pd.DataFrame, dtype: type = np.float32) -> np.ndarray:
    """[T, 6] in FEATURES order (float32 by default, like the reference). amount = volume × mean(OHLC) when missing; volume and amount
    are 0 when volume is missing (the reference's rules)."""
    missing = [c for c in ("open", "high", "low", "close") if c not in df.columns]
    if missing:
        raise ValueError(f"candles lack column(s) {missing}; need open, high, low, close")
    out = pd.DataFrame({c: df[c].astype("float64") for c in ("open", "high", "low", "close")})
    if "volume" in df.columns:
        out["volume"] = df["volume"].astype("float64")
        out["amount"] = (df["amount"].astype("float64") if "amount" in df.columns
                         else out["volume"] * out[["open", "high", "low", "close"]].mean(axis=1))
    else:
        out["volume"] = 0.0
        out["amount"] = 0.0
    x = out.to_numpy(dtype=dtype)
    if not np.isfinite(x).all():
        bad = sorted({FEATURES[j] for j in np.argwhere(~np.isfinite(x))[:, 1]})
        raise ValueError(f"candles contain NaN/inf in {bad}; fix or drop those bars before forecasting")
    return x


@dataclass(frozen=True, slots=True)
class Scaler:
    mean: np.ndarray  # [6] float32
    std: np.ndarray  # [6] float32

    @classmethod
    def fit(cls, x: np.ndarray) -> Scaler:
        return cls(mean=np.mean(x, axis=0), std=np.std(x, axis=0))

    def transform(self, x: np.ndarray) -> np.ndarray:
        return np.clip((x - self.mean) / (self.std + EPS), -CLIP, CLIP).astype(np.float32)

    def inverse(self, z: np.ndarray) -> np.ndarray:
        return z * (self.std.astype(np.float64) + EPS) + self.mean.astype(np.float64)


def time_stamps(ts_ms: np.ndarray) -> np.ndarray:
    """[T, 5] int64: minute, hour, weekday (Mon=0), day, month of UTC ms timestamps."""
    t = pd.to_datetime(np.asarray(ts_ms, dtype="int64"), unit="ms", utc=True)
    return np.stack([t.minute, t.hour, t.day_of_week, t.day, t.month], axis=1).astype(np.int64)


def future_ts(last_ts: int, step_ms: int, horizon: int) -> np.ndarray:
    return last_ts + step_ms * np.arange(1, horizon + 1, dtype=np.int64)


def infer_step_ms(ts: np.ndarray) -> int:
    """The bar spacing: the most common difference of the timestamps."""
    d = np.diff(np.asarray(ts, dtype=np.int64))
    d = d[d > 0]
    if d.size == 0:
        raise ValueError("need at least two increasing timestamps to infer the bar spacing")
    vals, counts = np.unique(d, return_counts=True)
    return int(vals[np.argmax(counts)])
