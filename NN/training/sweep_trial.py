"""A sweep's training trial (core/backtest/sweep.py ``TrainTrial``): one walk-forward fold trained with
the trial's horizon, dead zone and model hyper-parameters, its test window decided by the fast
backtester. Each expert's per-epoch validation log loss goes to ``report`` (the study's pruner: ASHA-
style successive halving); a pruned trial stops training at once and returns None.

Parameter names: ``horizon`` (every trained expert's label horizon and the decision horizon),
``dead_zone_bps`` (labels.dead_zone_bps), ``<expert>.<param>`` (models.yml ``experts.<expert>.params``).
Thresholds and risk settings are applied afterwards by the sweep to the returned predictions.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pandas as pd

from core.backtest.engine import spec_from_config
from core.backtest.walkforward import Fold, fold_predictions
from core.config import AppConfig, FeaturesConfig, ModelsConfig
from core.types import SeriesKey, Thresholds
from NN.training.walkforward import FoldPruned, FoldTrainerNN


def apply_training_params(models: ModelsConfig, app: AppConfig, names: list[str], params: dict[str, Any]
                          ) -> tuple[ModelsConfig, AppConfig]:
    """models.yml / config.yaml with the trial's training parameters (unknown names are the sweep's
    business: load_space already refused them)."""
    experts = dict(models.experts)
    for n in names:
        e = experts[n]
        over = {k.split(".", 1)[1]: v for k, v in params.items() if k.startswith(f"{n}.")}
        upd: dict[str, Any] = {"params": {**e.params, **over}}
        if "horizon" in params:
            upd["horizon"] = int(params["horizon"])
        experts[n] = e.model_copy(update=upd)
    labels = models.labels
    if "dead_zone_bps" in params:
        labels = labels.model_copy(update={"dead_zone_bps": float(params["dead_zone_bps"])})
    models = models.model_copy(update={"experts": experts, "labels": labels})
    if "horizon" in params:
        app = app.model_copy(update={"orchestrator": app.orchestrator.model_copy(
            update={"decision_horizon": int(params["horizon"])})})
    return models, app


def training_trial(candles: pd.DataFrame, fold: Fold, params: dict[str, Any], app: AppConfig,
                   models: ModelsConfig, key: SeriesKey, names: list[str], *, epochs: int, max_steps: int | None,
                   report: Callable[[int, float], bool], seed: int = 0,
                   features: FeaturesConfig | None = None) -> dict[str, Any] | None:
    """Train ``names`` on the fold's train window with ``params``; report step = expert index * epochs +
    epoch (the same expert and epoch are compared across trials) and value = the val log-loss SKILL over
    climatology (climatology's val log loss - the expert's; higher is better, the study maximises): raw log
    losses of different horizons or dead zones are not comparable (a wide dead zone makes "flat" easy),
    their gain over the same labels' base rate is. Returns the test window's per-bar ts, fused,
    confidence, live (any expert spoke), or None when pruned."""
    models, app = apply_training_params(models, app, names, params)
    order = {n: i for i, n in enumerate(names)}
    trainer: FoldTrainerNN | None = None

    def on_epoch(name: str, epoch: int, _epochs: int, _train_loss: float, val_logloss: float) -> bool:
        assert trainer is not None
        return report(order[name] * epochs + epoch, trainer.baseline[name] - float(val_logloss))

    trainer = FoldTrainerNN(models, app, key, names, epochs=epochs, max_steps=max_steps, seed=seed,
                            features=features, on_epoch=on_epoch)
    ts = candles["ts"]
    train = candles[(ts >= fold.train_start) & (ts < fold.train_end)].reset_index(drop=True)
    try:
        comps = trainer(train, fold, None)
    except FoldPruned:
        return None
    spec = spec_from_config(app, trainer.models, exchange=key.exchange, symbol=key.symbol, timeframe=key.timeframe,
                            thresholds=Thresholds(), mode="fast")
    p = fold_predictions(candles.reset_index(drop=True), fold, comps, spec, app.execution, app.risk)
    val = {n: float(comps.info[n]["val_logloss"]) for n in names}
    return {"ts": p["ts"], "fused": p["fused"], "confidence": p["confidence"], "live": p["mask"].any(axis=1),
            "val_logloss": val, "val_climatology": dict(trainer.baseline)}
