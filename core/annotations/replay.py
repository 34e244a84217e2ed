"""Replay annotated periods through an expert or the fused decision (the backtester's decision code).

One Backtester run (fast mode) over the stored candles from the first annotated bar minus the feature
warm-up to the last one plus k bars; its per-bar decision codes go to ``evaluate``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from core.annotations.evaluate import Evaluation, evaluate
from core.annotations.model import Annotation
from core.annotations.store import key_of
from core.backtest.engine import Backtester, ComponentsFactory, spec_from_config
from core.backtest.runner import default_thresholds
from core.config import AppConfig, ModelsConfig
from core.data.store import MarketStore
from core.types import Thresholds, timeframe_ms


def replay(annotations: Sequence[Annotation], *, cfg: AppConfig, models: ModelsConfig, store: MarketStore,
           components: ComponentsFactory, model: str = "fused", k: int = 2, thresholds: Thresholds | None = None,
           models_dir: Path | None = None) -> tuple[Evaluation, pd.DataFrame, dict]:
    """(metrics, the replayed candles, the components' info {expert: {trained, version...}}).
    model: an expert name, or "fused" (every enabled expert through the gate)."""
    if not annotations:
        raise ValueError("no annotations to replay against")
    keys = {key_of(a) for a in annotations}
    if len(keys) > 1:
        raise ValueError(f"annotations of {len(keys)} series; replay one at a time (--symbol/--timeframe)")
    key = keys.pop()
    names = None if model == "fused" else [model]
    spec = spec_from_config(cfg, models, exchange=key.exchange, symbol=key.symbol, timeframe=key.timeframe,
                            thresholds=thresholds or default_thresholds(cfg), mode="fast")
    comps = components(models, key.timeframe, names, store=store,
                       models_dir=models_dir or cfg.resolve(cfg.training.models_dir), calendar=spec.calendar)
    bar = timeframe_ms(key.timeframe)
    warm = int(comps.builder.min_history) + k
    longest = max(timeframe_ms(tf) for tf in comps.builder.timeframes)  # the backtester starts on its boundary
    lo = (min(a.entry_ts for a in annotations) - warm * bar) // longest * longest
    hi = max(a.exit_ts for a in annotations) + (k + 1) * bar
    candles = store.candles(key, lo, hi)
    res = Backtester(comps, spec, cfg.execution, cfg.risk, store=None, keep_decisions=False).run(candles)
    candles = res.candles  # aligned to the longest feature timeframe (as every backtest)
    codes = np.where(res.decided, res.codes, 0).astype(np.int8)
    ev = evaluate(annotations, candles["ts"].to_numpy(np.int64), candles["close"].to_numpy(np.float64), codes,
                  candles=candles, k=k)
    return ev, candles, comps.info
