"""Champion / challenger: a freshly trained checkpoint replaces the live one only when it beats it.

Both are scored (log loss) on the same recent validation window: matured samples the challenger did
not train on (NN/training/online.py withholds them from the trainers). The challenger wins when
    challenger_logloss <= champion_logloss - promote_margin, and strictly lower (models.yml experts.<n>.online)
The verdict is a ``Swap``: the engine applies it between two decisions (``Swap.apply`` on its own
thread). ``ChampionHistory`` keeps the exact previous states so a rollback restores bit-identical
weights.
"""

from __future__ import annotations

import copy
import io
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from core.types import FeatureBatch
from NN.calibration import log_loss


@dataclass(frozen=True, slots=True)
class Verdict:
    promote: bool
    champion_logloss: float
    challenger_logloss: float
    margin: float
    n: int
    reason: str


@dataclass(frozen=True, slots=True)
class Swap:
    """Weights to put into the live expert ``expert`` between two decisions."""

    expert: str
    version: str
    state: dict[str, Any] = field(repr=False)
    kind: str  # "promote" | "rollback"
    verdict: Verdict | None = None
    path: str | None = None  # the checkpoint file a promotion came from (None: a rollback)

    def apply(self, live: Any) -> dict[str, Any]:
        """Load the state into ``live`` (call on the decision thread, between decisions); returns an
        exact copy of the state it replaced (for rollback)."""
        previous = copy.deepcopy(live.state_dict())
        live.load_state_dict(copy.deepcopy(self.state))
        live.version = self.version
        return previous


def validation_logloss(expert: Any, batch: FeatureBatch, labels: np.ndarray) -> float:
    """Mean log loss of ``expert`` on labelled samples (eval mode, no gradient)."""
    if len(batch) != len(labels):
        raise ValueError(f"validation: {len(batch)} samples but {len(labels)} labels")
    return log_loss(expert.predict_many(batch).probs, np.asarray(labels, dtype=np.int64))


def judge(champion_logloss: float, challenger_logloss: float, margin: float, n: int,
          min_samples: int) -> Verdict:
    """Pure promotion rule (module docstring)."""
    if n < min_samples:
        return Verdict(False, champion_logloss, challenger_logloss, margin, n,
                       f"only {n} validation samples (< {min_samples})")
    if not np.isfinite(challenger_logloss):
        return Verdict(False, champion_logloss, challenger_logloss, margin, n, "challenger loss is not finite")
    gain = champion_logloss - challenger_logloss
    if gain > 0 and gain >= margin:  # an equal score is no improvement, even with margin 0
        return Verdict(True, champion_logloss, challenger_logloss, margin, n,
                       f"log loss {challenger_logloss:.4f} beats {champion_logloss:.4f} by {gain:.4f} >= {margin}")
    return Verdict(False, champion_logloss, challenger_logloss, margin, n,
                   f"log loss {challenger_logloss:.4f} vs champion {champion_logloss:.4f}: gain {gain:.4f} < {margin}")


def evaluate(champion: Any, challenger: Any, batch: FeatureBatch, labels: np.ndarray, margin: float,
             min_samples: int = 30) -> Verdict:
    """Score both on the same window and judge. ``champion``/``challenger`` are expert objects NOT
    used by the decision path (scratch copies), so this may run on any thread."""
    n = len(labels)
    if n < min_samples:
        return judge(float("nan"), float("nan"), margin, n, min_samples)
    return judge(validation_logloss(champion, batch, labels), validation_logloss(challenger, batch, labels),
                 margin, n, min_samples)


class ChampionHistory:
    """Previous live states of one expert, newest last (exact deep copies), for rollback."""

    def __init__(self, keep: int = 3) -> None:
        self.keep = max(1, int(keep))
        self._stack: list[tuple[str, dict[str, Any]]] = []

    def push(self, version: str, state: dict[str, Any]) -> None:
        self._stack.append((version, state))
        del self._stack[: -self.keep]

    def pop(self) -> tuple[str, dict[str, Any]] | None:
        return self._stack.pop() if self._stack else None

    def __len__(self) -> int:
        return len(self._stack)


def state_to_bytes(state: dict[str, Any]) -> bytes:
    """Serialise a state dict for a multiprocessing queue (no shared-memory tensors)."""
    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.getvalue()


def state_from_bytes(data: bytes) -> dict[str, Any]:
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=False)
