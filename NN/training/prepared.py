"""The feature samples of one stored series with their chronological split (train / validation / test),
shared by training, evaluation, the gate and the walk-forward and order-book studies."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd

from core.config import AppConfig, ModelsConfig
from core.data.store import MarketStore
from core.features import FeatureBuilder
from core.labels import dead_zone, forward_returns, horizon_ok, make_labels
from core.market import Calendar, market_for
from core.types import FeatureBatch, SeriesKey, timeframe_ms
from NN.training.datasets import chronological_split

log = logging.getLogger(__name__)


@dataclass
class Prepared:
    """Feature samples of one series with their chronological split."""

    key: SeriesKey
    batch: FeatureBatch  # complete samples only (>= FeatureBuilder.min_history bars of history)
    train: slice
    val: slice
    test: slice
    dead_zone: float  # log-return dead zone of the flat class
    calendar: Calendar | None = None  # the market's sessions (stocks); None = 24x7
    cross_sessions: bool = False  # models.yml labels.cross_sessions

    def labels(self, horizon: int) -> tuple[np.ndarray, np.ndarray]:
        """(labels, forward log returns) at ``horizon``; -1 / NaN where the future is unknown,
        including where the h bars ahead span a gap in the stored series."""
        y = make_labels(self.batch.close, horizon, self.dead_zone)
        r = forward_returns(self.batch.close, horizon)
        span_ok = horizon_ok(self.batch.ts, horizon, self.key.timeframe, self.calendar, self.cross_sessions)
        y[~span_ok] = -1
        r[~span_ok] = np.nan
        return y, r

    def part(self, which: str) -> FeatureBatch:
        return self.batch.take(getattr(self, which))


def load_candles(store: MarketStore, key: SeriesKey, start_ms: int | None, end_ms: int | None) -> pd.DataFrame:
    df = store.candles(key, start_ms, end_ms)
    if df.empty:
        have = ", ".join(f"{k.exchange} {k.symbol} {k.timeframe}" for k in store.series()) or "nothing"
        raise ValueError(f"no candles for {key.exchange} {key.symbol} {key.timeframe} in the store "
                         f"(range {start_ms}..{end_ms}); the store has: {have}. "
                         "Import first: main_backtest.py data import ...")
    return df


def load_book(store: MarketStore, key: SeriesKey, models: ModelsConfig, candles: pd.DataFrame) -> pd.DataFrame | None:
    """Recorded order-book summary rows over the candles' span when the features use the block."""
    if not models.features.orderbook or candles.empty:
        return None
    from core.data.book_store import load_summary

    return load_summary(store, key.symbol, int(candles["ts"].iloc[0]), int(candles["ts"].iloc[-1]) + timeframe_ms(key.timeframe))


def prepare(candles: pd.DataFrame, key: SeriesKey, models: ModelsConfig, app: AppConfig,
            ref: pd.DataFrame | None = None, book: pd.DataFrame | None = None) -> Prepared:
    calendar = market_for(app, key.symbol, key.exchange).calendar
    builder = FeatureBuilder(models.features, key.timeframe, calendar=calendar)
    # samples before min_history - 1 lack a full history: never built, never used
    batch = builder.build_many(candles, ref, symbol=key.symbol, rows=slice(builder.min_history - 1, None), book=book)
    n = len(batch)
    if n < 500:
        raise ValueError(f"only {n} complete samples ({len(candles)} candles - {builder.min_history} warm-up); "
                         "need at least 500 to train and evaluate")
    if not (np.isfinite(batch.windows).all() and np.isfinite(batch.flat).all()):
        raise ValueError("FeatureBuilder produced NaN/inf features after the warm-up; refusing to train on them")
    horizons = [h for h in models.labels.horizons] + [e.horizon for e in models.experts.values()]
    if models.split.gap_bars < max(horizons):
        log.warning("split.gap_bars=%s < longest horizon %s: labels near a split boundary look into the next part",
                    models.split.gap_bars, max(horizons))
    tr, va, te = chronological_split(n, models.split)
    return Prepared(key, batch, tr, va, te, dead_zone(app.execution, models.labels), calendar,
                    models.labels.cross_sessions)


def known_rows(y: np.ndarray, r: np.ndarray, part: slice) -> np.ndarray:
    """Indexes of ``part`` whose label and forward return are known."""
    idx = np.arange(part.start, part.stop)
    return idx[(y[idx] >= 0) & np.isfinite(r[idx])]
