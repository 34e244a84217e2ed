"""The optional order-book block of the features (``features.orderbook: true``).

Read from the per-second ``book_summary`` rows (core/data/book_store.py). The sample of the bar closing
at C uses the last row with ``ts <= C``: that row holds only messages received before its second, so
nothing after the close is seen. A row older than ``MAX_AGE_MS`` at C (no recording then) gives zeros
with ``ob_present = 0``, as the reference-symbol block does. One pure function serves build_many and
build_one, so both give the same numbers.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

BOOK_FEATURES: tuple[str, ...] = (
    "ob_imb_1", "ob_imb_5", "ob_imb_all", "ob_ma_1s", "ob_ma_5s", "ob_ma_15s", "ob_ma_60s",
    "ob_spread_bps", "ob_depth_imb_10bps", "ob_depth_imb_50bps", "ob_log_depth_50bps",
    "ob_wall_bid", "ob_wall_ask", "ob_present",
)
MAX_AGE_MS = 5_000
_WALL_SCALE_BPS = 100.0  # wall distance / 100 bps, capped at 1 (= no wall within 100 bps)


def _imb(b: np.ndarray, a: np.ndarray) -> np.ndarray:
    tot = b + a
    out = np.zeros_like(tot)
    np.divide(b - a, tot, out=out, where=tot > 0)
    return out


def book_features(book: pd.DataFrame | None, close_ms: np.ndarray) -> np.ndarray:
    """[N, len(BOOK_FEATURES)] float32 for samples whose bars close at ``close_ms`` (int64 ms)."""
    close_ms = np.asarray(close_ms, dtype=np.int64)
    out = np.zeros((close_ms.shape[0], len(BOOK_FEATURES)), dtype=np.float32)
    if book is None or len(book) == 0:
        return out
    ts = book["ts"].to_numpy(np.int64)
    if ts.shape[0] > 1 and not (ts[1:] > ts[:-1]).all():
        raise ValueError("order-book summary: ts must be strictly increasing (one row per second)")
    j = np.searchsorted(ts, close_ms, side="right") - 1
    jj = np.clip(j, 0, None)
    ok = (j >= 0) & (close_ms - ts[jj] <= MAX_AGE_MS)
    if not ok.any():
        return out

    def col(name: str) -> np.ndarray:
        return book[name].to_numpy(np.float64)[jj]

    mid = col("mid")
    db10, da10, db50, da50 = col("depth_bid_10bps"), col("depth_ask_10bps"), col("depth_bid_50bps"), col("depth_ask_50bps")
    walls = [np.nan_to_num(np.minimum(col(c) / _WALL_SCALE_BPS, 1.0), nan=1.0) for c in ("wall_bid_bps", "wall_ask_bps")]
    vals = np.stack([
        col("imb_1"), col("imb_5"), col("imb_all"), col("ma_1s"), col("ma_5s"), col("ma_15s"), col("ma_60s"),
        np.divide(col("spread"), mid, out=np.zeros_like(mid), where=mid > 0) * 1e4,
        _imb(db10, da10), _imb(db50, da50), np.log1p(db50 + da50), walls[0], walls[1], np.ones_like(mid),
    ], axis=1)
    vals = np.nan_to_num(vals, nan=0.0, posinf=0.0, neginf=0.0)
    out[ok] = vals[ok].astype(np.float32)
    return out
