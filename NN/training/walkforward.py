"""The walk-forward fold trainer (core/backtest/walkforward.py's ``FoldTrainer``): fresh (or
warm-started) experts trained on one fold's train window only, with a gate fit on its last part.

Within the window: features and labels from its candles alone (``prepare``), samples split
train | gap | val chronologically (val = the last ``val_frac``; the gap covers the label horizon, so no
training label looks into val, and val's last labels end at the train end: the unknown ones are -1).
Early stopping, calibration and the gate fit use val; nothing after the window exists here.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd
import torch

from core.backtest.engine import Components
from core.backtest.walkforward import Fold
from core.config import AppConfig, FeaturesConfig, ModelsConfig
from core.features import FeatureBuilder
from core.market import market_for
from core.scoring import log_loss
from core.types import SeriesKey, timeframe_ms
from NN.experts.dqn import DQNExpert
from NN.experts.registry import build_expert
from NN.experts.supervised import SupervisedExpert
from NN.moe import MoEGate, gate_min_samples
from NN.training.gate_fit import common_horizon, train_gate
from NN.training.prepared import Prepared, prepare
from NN.training.trainer import climatology, train_expert


class FoldPruned(Exception):
    """A sweep's pruner stopped this fold's training (ASHA-style early stopping)."""


@dataclass
class FoldTrainerNN:
    models: ModelsConfig
    app: AppConfig
    key: SeriesKey
    names: list[str]
    epochs: int = 3
    max_steps: int | None = None  # optimisation steps per epoch (quick runs)
    retrain_gate: bool = False  # False: the online Hedge gate (no fit)
    val_frac: float = 0.2
    seed: int = 0
    features: FeaturesConfig | None = None  # None: models.yml features
    # after each epoch of each expert: (expert, epoch, epochs, train loss, val log loss) -> True to stop
    # the fold (a sweep's pruner); the trainer then raises FoldPruned
    on_epoch: Callable[[str, int, int, float, float], bool] | None = None
    # per expert, the val log loss of the train part's class frequencies (set by each call before
    # training): the yardstick that makes val losses of different horizons / dead zones comparable
    baseline: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.names:
            raise ValueError("walk-forward: name at least one expert")
        bad = [n for n in self.names if n not in self.models.experts or n == "kronos"]
        if bad:
            raise ValueError(f"walk-forward trains features experts only; {bad} is not one "
                             f"(models.yml has {sorted(self.models.experts)})")
        if self.features is not None:
            self.models = self.models.model_copy(update={"features": self.features})

    def _prepare(self, train: pd.DataFrame) -> Prepared:
        prep = prepare(train, self.key, self.models, self.app)
        n = len(prep.batch)
        gap = self.models.split.gap_bars
        a = int(n * (1 - self.val_frac))
        if n - a - gap < 50:
            raise ValueError(f"walk-forward fold: {n} samples leave too few for validation after a {gap}-bar gap; "
                             "lengthen --train")
        return replace(prep, train=slice(0, a), val=slice(a + gap, n), test=slice(n, n))

    @staticmethod
    def _climatology_val_logloss(prep: Prepared, horizon: int) -> float:
        y, r = prep.labels(horizon)
        ok = (y >= 0) & np.isfinite(r)
        tr, va = np.flatnonzero(ok[prep.train]) + prep.train.start, np.flatnonzero(ok[prep.val]) + prep.val.start
        if not len(va):
            return float("nan")
        return log_loss(np.tile(climatology(y[tr]), (len(va), 1)), y[va])

    def _check_gate_samples(self, prep: Prepared, n_bars: int, fold: Fold) -> None:
        """--retrain-gate fits the gate on the fold's validation part: refuse, before any training, a train
        window too short for it, naming the shortest that works."""
        h = max(self.models.experts[n].horizon for n in self.names)
        y, r = prep.labels(h)
        have = int(((y[prep.val] >= 0) & np.isfinite(r[prep.val])).sum())
        need = gate_min_samples(self.models.moe.holdout)
        if have >= need:
            return
        warmup = n_bars - len(prep.batch)  # bars before the first complete sample
        samples = int(np.ceil((need + self.models.split.gap_bars + h) / self.val_frac)) + 1
        bars = samples + warmup
        step = timeframe_ms(self.key.timeframe)
        hours = bars * step / 3_600_000
        raise ValueError(f"--retrain-gate: fold {fold.index}'s train window leaves {have} validation samples for "
                         f"the gate, which needs >= {need} (moe.holdout {self.models.moe.holdout}); use --train of "
                         f"at least {bars} bars (~{hours:.1f} h) or drop --retrain-gate")

    def _epoch_hook(self) -> Callable[[str, int, int, float, float], None] | None:
        if self.on_epoch is None:
            return None
        hook = self.on_epoch

        def report(name: str, epoch: int, epochs: int, train_loss: float, val_logloss: float) -> None:
            if hook(name, epoch, epochs, train_loss, val_logloss):
                raise FoldPruned(f"{name} pruned after epoch {epoch} (val log loss {val_logloss:.4f})")

        return report

    def __call__(self, train_candles: pd.DataFrame, fold: Fold, previous: Components | None) -> Components:
        torch.manual_seed(self.seed + fold.index)
        prep = self._prepare(train_candles)
        if self.retrain_gate:
            self._check_gate_samples(prep, len(train_candles), fold)
        self.baseline = {n: self._climatology_val_logloss(prep, self.models.experts[n].horizon) for n in self.names}
        spec = prep.batch.spec
        experts: dict[str, Any] = {}
        info: dict[str, dict[str, Any]] = {}
        for name in self.names:
            if previous is not None and name in previous.experts:
                ex = copy.deepcopy(previous.experts[name])  # --warm-start: fine-tune last fold's model
            else:
                ex = build_expert(name, self.models.experts[name], spec)
            if not isinstance(ex, SupervisedExpert | DQNExpert):
                raise ValueError(f"{name}: not a features expert")
            res = train_expert(ex, prep, self.epochs, seed=self.seed + fold.index,
                               max_steps_per_epoch=self.max_steps, on_epoch=self._epoch_hook())
            ex.version = f"wf{fold.index}"
            experts[name] = ex
            info[name] = {"version": ex.version, "trained": True, "input_kind": ex.input_kind,
                          "val_logloss": float(res.val_logloss), "epochs_run": res.epochs_run}
        regime_dim = len(spec.regime_features)
        if self.retrain_gate:
            gate, ginfo = train_gate(experts, prep, self.models, common_horizon(experts))
            info["gate"] = {"version": f"wf{fold.index}", "trained": True, "input_kind": "gate",
                            **{k: float(v) for k, v in ginfo.items() if isinstance(v, int | float)}}
        else:
            gate = MoEGate(list(experts), self.models.moe, regime_dim)
            info["gate"] = {"version": "hedge", "trained": False, "input_kind": "gate"}
        calendar = market_for(self.app, self.key.symbol, self.key.exchange).calendar
        builder = FeatureBuilder(self.models.features, self.key.timeframe, calendar=calendar)
        return Components(experts=experts, gate=gate, builder=builder, info=info)
