"""Probability calibration (the scores that judge forecasts live in core/scoring.py).

Calibrators are fit on a held-out (validation) split by minimising log loss, never on the data the
model was trained on, and never on the test split. Everything here works on (down, flat, up) class
probabilities ``[N, 3]`` and integer labels ``[N]`` in {0, 1, 2}.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch

from core.scoring import EPS, check_probs

# ---------------------------------------------------------------- calibrators

CalibrationKind = Literal["temperature", "vector"]


def _fit_lbfgs(params: list[torch.Tensor], loss_fn, max_iter: int = 200) -> None:
    opt = torch.optim.LBFGS(params, lr=0.5, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = loss_fn()
        loss.backward()
        return loss

    opt.step(closure)


def require_classes(labels: np.ndarray, k: int = 3, min_count: int = 5, what: str = "fit data") -> None:
    """A calibrator fit on data missing a class learns that the class never happens and is then
    infinitely wrong about it: refuse, saying what is missing."""
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=k)
    if (counts < min_count).any():
        raise ValueError(
            f"{what}: class counts (down, flat, up) = {tuple(int(c) for c in counts)}; each needs >= {min_count} "
            "to fit calibration (use a longer range, or a smaller labels.dead_zone_bps)"
        )


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """Temperature T > 0 minimising log loss of softmax(logits / T) (Guo et al. 2017)."""
    check_probs(np.zeros_like(np.asarray(logits, dtype=np.float64)), labels)
    require_classes(labels, np.asarray(logits).shape[1], what="temperature fit")
    z = torch.as_tensor(np.asarray(logits, dtype=np.float64))
    y = torch.as_tensor(np.asarray(labels, dtype=np.int64))
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)  # T = exp(log_t) stays positive
    _fit_lbfgs([log_t], lambda: torch.nn.functional.cross_entropy(z / log_t.exp(), y))
    t = float(log_t.detach().exp())
    if not np.isfinite(t):
        raise ValueError("temperature fit diverged")
    return float(np.clip(t, 1e-3, 1e3))


@dataclass
class Calibrator:
    """Temperature or vector scaling on log-probabilities: calibrated = softmax(a * log p + b).

    temperature: a is one scalar (1/T), b = 0. vector: a and b are per class (3 + 3 parameters),
    lightly L2-regularised towards the identity so that a small validation split cannot push it far.
    Unfitted it is the identity.
    """

    kind: CalibrationKind = "vector"
    a: np.ndarray = field(default_factory=lambda: np.ones(3))
    b: np.ndarray = field(default_factory=lambda: np.zeros(3))
    fitted: bool = False
    l2: float = 1e-3

    def fit(self, probs: np.ndarray, labels: np.ndarray) -> Calibrator:
        p, y = check_probs(probs, labels)
        k = p.shape[1]
        require_classes(y, k, what=f"{self.kind} scaling fit")
        z = torch.as_tensor(np.log(np.clip(p, EPS, 1.0)))
        yt = torch.as_tensor(y)
        if self.kind == "temperature":
            t = fit_temperature(z.numpy(), y)
            self.a, self.b = np.full(k, 1.0 / t), np.zeros(k)
        else:
            a = torch.ones(k, dtype=torch.float64, requires_grad=True)
            b = torch.zeros(k, dtype=torch.float64, requires_grad=True)

            def loss() -> torch.Tensor:
                reg = self.l2 * (((a - 1) ** 2).sum() + (b**2).sum())
                return torch.nn.functional.cross_entropy(z * a + b, yt) + reg

            _fit_lbfgs([a, b], loss)
            self.a, self.b = a.detach().numpy().copy(), b.detach().numpy().copy()
            if not (np.isfinite(self.a).all() and np.isfinite(self.b).all()):
                raise ValueError("vector-scaling fit diverged")
        self.fitted = True
        return self

    def transform(self, probs: np.ndarray) -> np.ndarray:
        if not self.fitted:
            return np.asarray(probs, dtype=np.float64)
        z = np.log(np.clip(np.asarray(probs, dtype=np.float64), EPS, 1.0)) * self.a + self.b
        return softmax(z)

    def state_dict(self) -> dict:
        return {"kind": self.kind, "a": self.a.tolist(), "b": self.b.tolist(), "fitted": self.fitted,
                "l2": self.l2}

    @classmethod
    def from_state(cls, state: dict) -> Calibrator:
        return cls(kind=state["kind"], a=np.asarray(state["a"], dtype=np.float64),
                   b=np.asarray(state["b"], dtype=np.float64), fitted=bool(state["fitted"]),
                   l2=float(state.get("l2", 1e-3)))


def softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)
