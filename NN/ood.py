"""Out-of-distribution score of a feature vector against an expert's training distribution.

A Mahalanobis distance on the FeatureBuilder's flat feature vector, with the covariance shrunk
towards its mean variance (features are many and correlated; the shrinkage keeps the inverse
stable), divided by the median distance of the training samples themselves: a score of 1 is a
typical training sample, 3 is three times as far out as the typical one. Fitted by the trainer on
the expert's train split and stored in its checkpoint; the gate discounts an expert whose score
passes ``moe.robust.ood_threshold`` (core/fusion.ood_discount).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass
class OODStats:
    mean: np.ndarray  # [D]
    prec: np.ndarray  # [D, D] inverse of the shrunk covariance
    scale: float  # median training distance (score 1)
    n: int  # training samples it was fitted on

    @classmethod
    def fit(cls, x: np.ndarray, shrink: float = 0.1, max_rows: int = 50_000) -> OODStats:
        """x [N, D] training feature vectors (a strided subsample beyond ``max_rows``)."""
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2 or len(x) < max(10, x.shape[1] + 1):
            raise ValueError(f"OOD stats need [N, D] with N > D and N >= 10 samples, got shape {x.shape}")
        if not np.isfinite(x).all():
            raise ValueError("OOD stats: training features contain NaN/inf")
        if len(x) > max_rows:
            x = x[:: int(np.ceil(len(x) / max_rows))]
        mean = x.mean(axis=0)
        cov = np.cov(x - mean, rowvar=False).reshape(x.shape[1], x.shape[1])
        target = max(float(np.trace(cov)) / cov.shape[0], 1e-12)
        prec = np.linalg.pinv((1.0 - shrink) * cov + shrink * target * np.eye(cov.shape[0]))
        stats = cls(mean, prec, 1.0, len(x))
        stats.scale = max(float(np.median(stats._dist(x))), 1e-12)
        return stats

    def _dist(self, x: np.ndarray) -> np.ndarray:
        d = np.asarray(x, dtype=np.float64) - self.mean
        return np.sqrt(np.maximum(np.einsum("nd,de,ne->n", d, self.prec, d), 0.0))

    def score(self, x: np.ndarray) -> np.ndarray:
        """[N] scores of feature vectors x [N, D] (NaN where a feature is not finite)."""
        s = self._dist(np.nan_to_num(np.asarray(x, dtype=np.float64))) / self.scale
        return np.where(np.isfinite(np.asarray(x, dtype=np.float64)).all(axis=1), s, np.nan)

    def state_dict(self) -> dict[str, Any]:
        return {"mean": self.mean.tolist(), "prec": self.prec.tolist(), "scale": self.scale, "n": self.n}

    @classmethod
    def from_state(cls, state: dict[str, Any] | None) -> OODStats | None:
        if not state:
            return None
        return cls(np.asarray(state["mean"], dtype=np.float64), np.asarray(state["prec"], dtype=np.float64),
                   float(state["scale"]), int(state["n"]))
