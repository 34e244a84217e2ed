"""Shared machinery of the supervised classifiers (CNN, Transformer): a torch network mapping a
FeatureBatch to (down, flat, up) logits, trained with cross-entropy, calibrated by temperature scaling
fit on the validation split (NN/calibration.py), expected return from class-conditional mean returns.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import Any

import numpy as np
import pandas as pd
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from core.config import ExpertConfig, validate_params
from core.types import ExpertBatchOutput, FeatureBatch, FeatureSpec
from NN.calibration import CalibrationKind, Calibrator, softmax
from NN.devices import to_device
from NN.experts.base import Expert, OnlineRound, confidence_from_probs
from NN.ood import OODStats


class SupervisedParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    dropout: float = Field(0.1, ge=0, lt=1)
    grad_clip: float = Field(1.0, gt=0)
    batch_size: int = Field(256, ge=1)  # mini-batch size the offline trainer draws
    eval_batch: int = Field(2048, ge=1)  # chunk size of predict_many (bounds memory)
    seed: int = 0


def spec_dims(spec: FeatureSpec) -> dict[str, int]:
    return {
        "T": len(spec.timeframes),
        "L": int(spec.window),
        "F": len(spec.bar_features),
        "D": len(spec.flat_features),
        "R": len(spec.regime_features),
    }


def check_batch(batch: FeatureBatch, spec: FeatureSpec, who: str) -> None:
    """Clear errors for a batch that does not match the spec this expert was built for."""
    d = spec_dims(spec)
    want_w = (len(batch), d["T"], d["L"], d["F"])
    if tuple(batch.windows.shape) != want_w:
        raise ValueError(f"{who}: windows shape {tuple(batch.windows.shape)} != expected {want_w}")
    if tuple(batch.flat.shape) != (len(batch), d["D"]):
        raise ValueError(f"{who}: flat shape {tuple(batch.flat.shape)} != expected {(len(batch), d['D'])}")
    if not np.isfinite(batch.windows).all() or not np.isfinite(batch.flat).all():
        raise ValueError(
            f"{who}: features contain NaN/inf (samples before FeatureBuilder.min_history? drop them)"
        )


def weights_state(expert: Any) -> dict[str, Any]:
    """The checkpoint fields every torch expert shares (net, optimiser, calibration, class stats)."""
    return {
        "kind": expert.kind,
        "name": expert.name,
        "params": expert.params.model_dump(),
        "dims": dict(expert.dims),
        "horizon": expert.horizon,
        "net": {k: v.detach().cpu().clone() for k, v in expert.net.state_dict().items()},
        "opt": expert.opt.state_dict(),
        "calibrator": expert.calibrator.state_dict(),
        "class_ret_sum": expert.class_ret_sum.tolist(),
        "class_count": expert.class_count.tolist(),
        "version": expert.version,
        "ood": expert.ood.state_dict() if expert.ood is not None else None,
    }


def load_weights_state(expert: Any, state: dict[str, Any]) -> None:
    """Refuse a checkpoint of another kind, feature layout or architecture (a clear error naming the
    difference), then restore the fields of ``weights_state``."""
    if state.get("kind") != expert.kind:
        raise ValueError(f"{expert.name}: checkpoint is a {state.get('kind')!r} model, not {expert.kind!r}")
    if state.get("dims") != expert.dims:
        raise ValueError(
            f"{expert.name}: checkpoint feature dims {state.get('dims')} != current {expert.dims} "
            "(features config changed? retrain)"
        )
    mine = expert.params.model_dump()
    theirs = state.get("params", {})
    diff = {k: (theirs.get(k), mine[k]) for k in expert.ARCH_KEYS if theirs.get(k) != mine[k]}
    if diff:
        raise ValueError(f"{expert.name}: checkpoint architecture differs from models.yml params "
                         f"(key: (checkpoint, models.yml)) {diff}; retrain or restore the params")
    expert.net.load_state_dict(state["net"])
    try:
        expert.opt.load_state_dict(state["opt"])
    except ValueError:  # optimiser layout differs (e.g. other torch version): weights are what count
        pass
    expert.calibrator = Calibrator.from_state(state["calibrator"])
    expert.class_ret_sum = np.asarray(state["class_ret_sum"], dtype=np.float64)
    expert.class_count = np.asarray(state["class_count"], dtype=np.float64)
    expert.version = str(state.get("version", "untrained"))
    expert.ood = OODStats.from_state(state.get("ood"))  # older checkpoints have none


class SupervisedExpert(Expert):
    """Base of CNN and Transformer. Subclasses define ``Params`` and ``build_net``."""

    Params: type[SupervisedParams] = SupervisedParams
    kind: str = "supervised"
    #: temperature scaling: a network trained with cross-entropy already learns the class priors
    calibration_kind: CalibrationKind = "temperature"
    #: params that change the network's shape: a checkpoint must match them to load
    ARCH_KEYS: tuple[str, ...] = ()

    def __init__(self, name: str, cfg: ExpertConfig, spec: FeatureSpec) -> None:
        super().__init__(name, cfg, spec)
        self.params = validate_params(self.Params, cfg.params, f"models.yml: experts.{name}.params")
        torch.manual_seed(self.params.seed)
        self.dims = spec_dims(spec)
        self.net = self.build_net().to(self.device)
        self.opt = torch.optim.AdamW(
            self.net.parameters(), lr=self.params.lr, weight_decay=self.params.weight_decay
        )
        self.calibrator = Calibrator(kind=self.calibration_kind)  # identity until fit on validation data
        # class-conditional sums of forward returns seen in training -> expected_return
        self.class_ret_sum = np.zeros(3)
        self.class_count = np.zeros(3)

    @abstractmethod
    def build_net(self) -> nn.Module:
        """A module taking (windows [N,T,L,F], flat [N,D]) float tensors, returning logits [N, 3]."""

    # ---------------------------------------------------------------- inference

    def _inputs(self, batch: FeatureBatch) -> tuple[torch.Tensor, torch.Tensor]:
        # pinned, non-blocking host->device copies on cuda; zero-copy as before on cpu
        w = to_device(batch.windows, self.device, np.float32)
        return w, to_device(batch.flat, self.device, np.float32)

    def logits_many(self, batch: FeatureBatch) -> np.ndarray:
        """Raw logits [N, 3] before calibration (used to fit it)."""
        check_batch(batch, self.spec, self.name)
        self.net.eval()
        out = []
        with torch.inference_mode():
            for s in range(0, len(batch), self.params.eval_batch):
                w, f = self._inputs(batch.take(slice(s, s + self.params.eval_batch)))
                out.append(self.net(w, f).double().cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, 3))

    def class_mean_returns(self) -> np.ndarray:
        return np.where(self.class_count > 0, self.class_ret_sum / np.maximum(self.class_count, 1), 0.0)

    def predict_many(self, batch: FeatureBatch, candles: pd.DataFrame | None = None) -> ExpertBatchOutput:
        p = self.calibrator.transform(softmax(self.logits_many(batch)))
        return ExpertBatchOutput(
            expert=self.name,
            model_version=self.version,
            horizon=self.horizon,
            ts=np.asarray(batch.ts, dtype=np.int64),
            probs=p,
            expected_return=p @ self.class_mean_returns(),
            confidence=confidence_from_probs(p),
            extras=self.ood_extras(batch),
        )

    def set_calibrator(self, cal: Calibrator) -> None:
        """Calibration of softmax(logits), fit by the trainer on the validation split."""
        self.calibrator = cal

    # ---------------------------------------------------------------- training

    def train_step(self, batch: FeatureBatch, labels: np.ndarray, fwd_returns: np.ndarray) -> dict[str, float]:
        check_batch(batch, self.spec, self.name)
        y = np.asarray(labels)
        r = np.asarray(fwd_returns, dtype=np.float64)
        if y.shape != (len(batch),) or r.shape != (len(batch),):
            raise ValueError(f"{self.name}: labels/fwd_returns must be [N]={len(batch)}")
        if y.min() < 0 or y.max() > 2 or not np.isfinite(r).all():
            raise ValueError(f"{self.name}: labels must be 0/1/2 and returns finite (drop unknown ones)")
        self.net.train()
        w, f = self._inputs(batch)
        yt = to_device(y, self.device, np.int64)
        logits = self.net(w, f)
        loss = nn.functional.cross_entropy(logits, yt)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        gn = nn.utils.clip_grad_norm_(self.net.parameters(), self.params.grad_clip)
        self.opt.step()
        np.add.at(self.class_ret_sum, y, r)
        np.add.at(self.class_count, y, 1)
        acc = float((logits.argmax(1) == yt).float().mean())
        return {"loss": float(loss.detach()), "acc": acc, "grad_norm": float(gn)}

    def train_online(self, batch: FeatureBatch, labels: np.ndarray, fwd_returns: np.ndarray,
                     position: np.ndarray, fresh: np.ndarray, rng: np.random.Generator, *, batch_size: int,
                     min_steps: int, max_steps: int) -> OnlineRound:
        """Shuffled mini-batches of ``batch_size``: every fresh sample plus as many replayed older ones
        (at least one mini-batch's worth, and enough for ``min_steps`` mini-batches); ``position`` is
        not used (a classifier learns from labels only)."""
        old = np.setdiff1d(np.arange(len(batch)), fresh, assume_unique=True)
        want = max(len(fresh), batch_size, min_steps * batch_size - len(fresh))
        replay = rng.choice(old, size=min(len(old), want), replace=False) if len(old) else old
        idx = np.concatenate([fresh, replay])
        rng.shuffle(idx)
        steps, samples, losses = 0, 0, []
        for s in range(0, len(idx), batch_size):
            if steps >= max_steps:
                break
            b = np.sort(idx[s : s + batch_size])
            m = self.train_step(batch.take(b), labels[b], fwd_returns[b])
            steps += 1
            samples += len(b)
            losses.append(float(m["loss"]))
        return OnlineRound(steps, samples, tuple(losses))

    # ---------------------------------------------------------------- state

    def state_dict(self) -> dict[str, Any]:
        return weights_state(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        load_weights_state(self, state)
