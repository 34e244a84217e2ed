"""The one interface every expert implements (CNN, Transformer, DQN, Kronos).

The orchestrator, backtester, trainers and evaluation only talk to experts through this class.
``train_online`` is one round of live training, run inside a trainer process
(NN/training/online/worker.py) on that process's own copy of the expert.
"""

from __future__ import annotations

import os
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from core.config import ExpertConfig
from core.market.calendar import Calendar
from core.types import ExpertBatchOutput, ExpertOutput, FeatureBatch, FeatureSpec
from NN.devices import pick_device
from NN.ood import OODStats
from NN.weights_io import load_weights


def save_atomic(obj: Any, path: str | Path) -> None:
    """torch.save to a temporary file, then os.replace: readers never see a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


@dataclass(frozen=True)
class OnlineRound:
    """What one ``Expert.train_online`` round did: optimisation steps, samples they used, and their
    losses (the mean is the round's loss)."""

    steps: int
    samples: int
    losses: tuple[float, ...]


class Expert(ABC):
    """An expert gives probabilities of (down, flat, up) over ``horizon`` bars.

    Subclasses implement ``predict_many`` (batched, eval mode, under ``torch.inference_mode()``),
    ``train_step`` and the state accessors. ``predict`` is the single-sample path used live.
    """

    def __init__(self, name: str, cfg: ExpertConfig, spec: FeatureSpec) -> None:
        self.name = name
        self.cfg = cfg
        self.spec = spec
        self.horizon = cfg.horizon
        self.device = pick_device(cfg.device)
        self.version = "untrained"
        #: training-distribution statistics of the flat feature vector (NN/ood.py), fitted by the
        #: trainer and kept in the checkpoint; None = no OOD score (extras carry none)
        self.ood: OODStats | None = None

    def ood_extras(self, batch: FeatureBatch) -> dict[str, np.ndarray]:
        """{"ood": [N] scores} when the expert has training statistics, else {}."""
        if self.ood is None or batch.flat.shape[1] != len(self.ood.mean):
            return {}
        return {"ood": self.ood.score(batch.flat)}

    # ---- inference
    #: "features": predicts from the FeatureBatch alone; "candles": also needs raw base-timeframe
    #: candles (Kronos), passed as ``candles`` = DataFrame[CANDLE_COLUMNS] holding at least every bar
    #: up to the last ts of the batch (bars after a sample's ts must never be used for that sample).
    input_kind: str = "features"
    #: the market's sessions (stocks), set by whoever runs the expert on a market (Orchestrator,
    #: Backtester): candle experts stamp their forecasts' future bars with it. None = 24x7.
    calendar: Calendar | None = None

    @abstractmethod
    def predict_many(
        self, batch: FeatureBatch, candles: pd.DataFrame | None = None
    ) -> ExpertBatchOutput:
        """Vectorised predictions for every sample of ``batch``."""

    def predict(self, batch: FeatureBatch, candles: pd.DataFrame | None = None) -> ExpertOutput:
        """Prediction for the LAST sample of ``batch`` (live: a batch of one)."""
        t0 = time.perf_counter()
        out = self.predict_many(batch.take(slice(len(batch) - 1, len(batch))), candles)
        latency = (time.perf_counter() - t0) * 1000.0
        p = out.probs[0]
        extras = {k: _scalar(v[0]) for k, v in out.extras.items()}
        return ExpertOutput(
            expert=self.name,
            model_version=self.version,
            symbol=batch.symbol,
            ts=int(out.ts[0]),
            horizon=self.horizon,
            probs=(float(p[0]), float(p[1]), float(p[2])),
            expected_return=float(out.expected_return[0]),
            confidence=float(out.confidence[0]),
            latency_ms=latency,
            extras=extras,
        )

    # ---- training
    @abstractmethod
    def train_step(
        self, batch: FeatureBatch, labels: np.ndarray, fwd_returns: np.ndarray
    ) -> dict[str, float]:
        """One optimisation step on a mini-batch; returns metrics such as {'loss': ...}.

        labels: int64 [N] in {0: down, 1: flat, 2: up} at this expert's horizon;
        fwd_returns: float64 [N] the matching forward log returns (DQN rewards use them)."""

    def train_online(self, batch: FeatureBatch, labels: np.ndarray, fwd_returns: np.ndarray,
                     position: np.ndarray, fresh: np.ndarray, rng: np.random.Generator, *, batch_size: int,
                     min_steps: int, max_steps: int) -> OnlineRound:
        """One live-training round over ``batch``: the trainable samples, ts-ascending, labels matured
        (the validation window is not in it). ``fresh`` indexes the samples not trained on before (the
        others may be replayed); ``position`` is the realised position held after each bar's decision
        (NaN: unknown); ``rng`` is the trainer's and decides what is replayed. At least ``min_steps``
        replayed mini-batches or chunks (0: none forced), at most ``max_steps`` steps; ``batch_size``
        is the online mini-batch size. Experts that only train offline keep this default."""
        raise NotImplementedError(f"{self.name}: {type(self).__name__} does not train online")

    # ---- state
    @abstractmethod
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to restore the expert (weights, optimiser, calibration, version)."""

    @abstractmethod
    def load_state_dict(self, state: dict[str, Any]) -> None: ...

    def save(self, path: str | Path) -> None:
        save_atomic(self.state_dict(), path)

    def load(self, path: str | Path) -> None:
        self.load_state_dict(load_weights(path, map_location=self.device))


def _scalar(v: Any) -> Any:
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, np.generic):
        return v.item()
    return v


def confidence_from_probs(probs: np.ndarray) -> np.ndarray:
    """Confidence = 1 - normalised entropy of (down, flat, up): 0 for uniform, 1 for certain."""
    p = np.clip(probs, 1e-12, 1.0)
    h = -(p * np.log(p)).sum(axis=-1)
    return 1.0 - h / np.log(p.shape[-1])
