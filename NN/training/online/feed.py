"""Samples on their way to the trainers: the engine-side feed buffer and the split rule.

``FeedBuffer`` holds the feature rows the decision path built; ``Feeder`` wraps it for the manager
(engine process): ``lock`` guards the buffer, which the engine thread appends to, a UI-thread ``start``
seeds and the judge's validation window is copied from; rows leave it only as copies, never views. A
row's label MATURES once the bar ``horizon`` bars later has arrived, contiguous; every matured row is
sent to the trainers, and ``split_release`` (used by the manager and inside the trainers alike) says
which ones form the validation window: the newest ``val_bars``, never trained on, nor anything within
``horizon`` bars before them. ``drain`` is the one way this package empties a queue (trainer inbox,
judge jobs, live weights writer).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from core.config import ModelsConfig
from core.labels import UNKNOWN, horizon_ok, make_labels
from core.market.calendar import Calendar
from core.types import FeatureBatch, FeatureSpec, SeriesKey

if TYPE_CHECKING:
    from core.data.store import MarketStore
    from core.features import FeatureBuilder


class FeedBuffer:
    """Recent fed feature rows (ring with amortised compaction; views never escape)."""

    def __init__(self, spec: FeatureSpec, bar_ms: int, capacity: int, calendar: Calendar | None = None) -> None:
        self.spec, self.bar_ms, self.cap = spec, int(bar_ms), int(capacity)
        self.calendar = calendar  # session bars (stocks); None = 24x7
        T, L, F = len(spec.timeframes), spec.window, len(spec.bar_features)
        n = 2 * self.cap
        self.ts = np.zeros(n, np.int64)
        self.close = np.zeros(n, np.float64)
        self.windows = np.zeros((n, T, L, F), np.float32)
        self.flat = np.zeros((n, len(spec.flat_features)), np.float32)
        self.regime = np.zeros((n, len(spec.regime_features)), np.float32)
        self.position = np.full(n, np.nan)
        self.n = 0
        self.symbol = ""

    def append(self, batch: FeatureBatch, position: np.ndarray) -> int:
        keep = np.ones(len(batch), dtype=bool)
        if self.n:
            keep &= batch.ts > self.ts[self.n - 1]  # a replayed bar is fed once
        idx = np.flatnonzero(keep)
        for i in idx:
            if self.n == 2 * self.cap:
                self._compact()
            j = self.n
            self.ts[j], self.close[j] = batch.ts[i], batch.close[i]
            self.windows[j], self.flat[j], self.regime[j] = batch.windows[i], batch.flat[i], batch.regime[i]
            self.position[j] = position[i]
            self.n += 1
        self.symbol = batch.symbol or self.symbol
        return len(idx)

    def _compact(self) -> None:
        k = self.cap
        for a in (self.ts, self.close, self.windows, self.flat, self.regime, self.position):
            a[:k] = a[self.n - k : self.n]
        self.n = k

    def first_ts(self) -> int | None:
        return int(self.ts[0]) if self.n else None

    def matured(self, horizon: int, dead_zone: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(row indices, labels, forward log returns) of rows whose horizon-h label is known within
        the buffer and spans no gap (same rule as datasets.build_dataset)."""
        n, h = self.n, int(horizon)
        if n <= h:
            return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0)
        close, ts = self.close[:n], self.ts[:n]
        y = make_labels(close, h, dead_zone)
        ok = (y != UNKNOWN) & horizon_ok(ts, h, self.spec.timeframes[0], self.calendar)
        idx = np.flatnonzero(ok)
        fwd = np.log(close[idx + h] / close[idx])
        return idx, y[idx], fwd

    def rows(self, idx: np.ndarray) -> dict[str, np.ndarray]:
        """Copies of the rows ``idx`` (safe to hand to a queue or another thread)."""
        return {"ts": self.ts[idx].copy(), "close": self.close[idx].copy(),
                "windows": self.windows[idx].copy(), "flat": self.flat[idx].copy(),
                "regime": self.regime[idx].copy(), "position": self.position[idx].copy()}


def batch_from_rows(rows: Mapping[str, np.ndarray], spec: FeatureSpec, symbol: str = "") -> FeatureBatch:
    return FeatureBatch(symbol=symbol, timeframe=spec.timeframes[0], ts=rows["ts"], close=rows["close"],
                        windows=rows["windows"], flat=rows["flat"], regime=rows["regime"], spec=spec)


def split_release(ts: np.ndarray, matured_idx: np.ndarray, horizon: int, bar_ms: int, val_bars: int,
                  released_until: int) -> tuple[np.ndarray, np.ndarray]:
    """Pure: (indices to send to the trainer, validation indices). Validation = the newest
    ``val_bars`` matured samples; trainers get matured samples at least ``horizon`` bars before the
    first validation sample (their label spans end before it starts) and newer than what they got."""
    if len(matured_idx) == 0:
        return matured_idx, matured_idx
    val = matured_idx[-val_bars:]
    cutoff = int(ts[val[0]]) - int(horizon) * int(bar_ms)
    t = ts[matured_idx]
    send = matured_idx[(t <= cutoff) & (t > released_until)]
    return send, val


class Feeder:
    """The stream's recent feature rows (``buffer``) and what they yield: matured samples for a trainer,
    the validation window, stored candles to seed the buffer and build a trainer's replay history."""

    def __init__(self, builder: FeatureBuilder, models_cfg: ModelsConfig, store: MarketStore | None,
                 key: SeriesKey | None, dead_zone: float, bar_ms: int, capacity: int) -> None:
        self.builder, self.models_cfg, self.store, self.key = builder, models_cfg, store, key
        self.dead_zone, self.bar_ms = float(dead_zone), int(bar_ms)
        self.buffer = FeedBuffer(builder.spec, bar_ms, capacity, getattr(builder, "calendar", None))
        self.lock = threading.Lock()

    def append(self, batch: FeatureBatch, position: np.ndarray) -> None:
        with self.lock:
            self.buffer.append(batch, position)

    def matured_after(self, horizon: int, released_until: int) -> dict[str, np.ndarray] | None:
        """Copies of the matured rows newer than ``released_until`` with their "labels" and "fwd"
        returns (None: none). Every matured row goes out: the trainer keeps the newest val_bars for
        judging only."""
        with self.lock:
            idx, y, r = self.buffer.matured(horizon, self.dead_zone)
            send = idx[self.buffer.ts[idx] > released_until]
            if len(send) == 0:
                return None
            pos = np.searchsorted(idx, send)
            rows = self.buffer.rows(send)
        rows["labels"], rows["fwd"] = y[pos], r[pos]
        return rows

    def validation_window(self, horizon: int, val_bars: int) -> tuple[FeatureBatch, np.ndarray]:
        """The current validation samples (copies) and their labels."""
        with self.lock:
            idx, y, _ = self.buffer.matured(horizon, self.dead_zone)
            _, val = split_release(self.buffer.ts[: self.buffer.n], idx, horizon, self.bar_ms, val_bars,
                                   np.iinfo(np.int64).min)
            rows = self.buffer.rows(val)
            labels = y[np.searchsorted(idx, val)]
        return batch_from_rows(rows, self.builder.spec, self.buffer.symbol), labels

    def seed(self) -> None:
        """Empty buffer + a store: build the newest validation window's rows from stored candles,
        so challengers can be judged without waiting val_bars bars."""
        if self.store is None or self.key is None or self.buffer.n:
            return
        want = self.buffer.cap - 64
        warm = self.builder.min_history + self.models_cfg.features.norm_window
        candles = self.store.last_candles(self.key, want + warm)
        if len(candles) <= self.builder.min_history:
            return
        first = max(self.builder.min_history - 1, len(candles) - want)
        b = self.builder.build_many(candles, symbol=self.key.symbol, rows=slice(first, None))
        with self.lock:
            self.buffer.append(b, np.full(len(b), np.nan))

    def replay_candles(self, replay_bars: int, horizon: int) -> pd.DataFrame | None:
        """Stored candles a trainer builds its replay samples from: everything before the buffer
        (whose rows reach it as matured samples), ``replay_bars`` + warm-up long."""
        if self.store is None or self.key is None or replay_bars == 0:
            return None
        end = self.buffer.first_ts()
        warm = self.builder.min_history + self.models_cfg.features.norm_window
        n = replay_bars + warm + horizon
        if end is None:
            return self.store.last_candles(self.key, n)
        df = self.store.query_df(
            "SELECT ts, open, high, low, close, volume FROM candles WHERE exchange = ? AND symbol = ? "
            "AND timeframe = ? AND ts < ? ORDER BY ts DESC LIMIT ?",
            [self.key.exchange, self.key.symbol, self.key.timeframe, int(end), int(n)])
        return df.iloc[::-1].reset_index(drop=True)


def drain(inbox: Any, timeout: float | None) -> list[Any]:
    """Wait up to ``timeout`` s (None: for ever) for one item of a queue, then take what else is queued."""
    msgs = []
    try:
        if timeout is None:
            msgs.append(inbox.get())
        else:
            msgs.append(inbox.get(timeout=timeout) if timeout > 0 else inbox.get_nowait())
        while True:
            msgs.append(inbox.get_nowait())
    except queue.Empty:
        pass
    return msgs

