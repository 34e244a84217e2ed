"""Champion / challenger: a freshly trained checkpoint replaces the live one only when it beats it.

Both are scored (log loss) on the same recent validation window: matured samples the challenger did
not train on (NN/training/online/ withholds them from the trainers). With gain = champion_logloss -
challenger_logloss (the mean of the paired per-sample differences) and se its standard error, the
challenger wins when
    gain > 0, gain >= promote_margin and gain >= promote_z * se      (models.yml experts.<n>.online)
so a window of a few hundred samples cannot promote noise: the same window is judged every round.
The verdict is a ``Swap``: the engine applies it between two decisions (``apply_swap`` on its own
thread). ``ChampionHistory`` keeps the exact previous states so a rollback restores bit-identical
weights.
"""

from __future__ import annotations

import copy
import io
from typing import Any

import numpy as np
import torch

from core.scoring import sample_log_loss
from core.types import FeatureBatch, Swap, Verdict
from NN.weights_io import load_weights

MIN_VAL_SAMPLES = 30  # fewer matured validation samples than this: no verdict yet


def apply_swap(swap: Swap, live: Any) -> dict[str, Any]:
    """Load ``swap.state`` into ``live`` (call on the decision thread, between decisions); returns an
    exact copy of the state it replaced (for rollback)."""
    previous = copy.deepcopy(live.state_dict())
    live.load_state_dict(copy.deepcopy(swap.state))
    live.version = swap.version
    return previous


def sample_logloss(expert: Any, batch: FeatureBatch, labels: np.ndarray) -> np.ndarray:
    """Per-sample log loss [N] of ``expert`` on labelled samples (eval mode, no gradient)."""
    if len(batch) != len(labels):
        raise ValueError(f"validation: {len(batch)} samples but {len(labels)} labels")
    return sample_log_loss(expert.predict_many(batch).probs, np.asarray(labels, dtype=np.int64))


def judge(champion_logloss: float, challenger_logloss: float, margin: float, n: int,
          min_samples: int, *, gain_se: float = 0.0, z: float = 0.0) -> Verdict:
    """Pure promotion rule (module docstring); ``gain_se``: standard error of the gain."""
    def verdict(ok: bool, reason: str) -> Verdict:
        return Verdict(ok, champion_logloss, challenger_logloss, margin, n, reason, gain_se)

    if n < min_samples:
        return verdict(False, f"only {n} validation samples (< {min_samples})")
    if not np.isfinite(challenger_logloss):
        return verdict(False, "challenger loss is not finite")
    gain = champion_logloss - challenger_logloss
    need = max(margin, z * gain_se if np.isfinite(gain_se) else np.inf)
    vs = f"log loss {challenger_logloss:.4f} vs champion {champion_logloss:.4f}: gain {gain:.4f}"
    se = f" ± {gain_se:.4f}" if z > 0 else ""
    if gain > 0 and gain >= need:  # an equal score is no improvement, even with margin 0
        return verdict(True, f"{vs}{se} >= {need:.4f}")
    return verdict(False, f"{vs}{se} < {need:.4f}" if gain < need else f"{vs}: no improvement")


def evaluate(champion: Any, challenger: Any, batch: FeatureBatch, labels: np.ndarray, margin: float,
             min_samples: int = MIN_VAL_SAMPLES, z: float = 0.0) -> Verdict:
    """Score both on the same window (paired per-sample differences) and judge. ``champion`` /
    ``challenger`` are expert objects NOT used by the decision path (scratch copies), so this may run
    on any thread."""
    n = len(labels)
    if n < min_samples:
        return judge(float("nan"), float("nan"), margin, n, min_samples)
    a, b = sample_logloss(champion, batch, labels), sample_logloss(challenger, batch, labels)
    d = a - b
    se = float(d.std(ddof=1) / np.sqrt(n)) if n > 1 else float("inf")
    return judge(float(a.mean()), float(b.mean()), margin, n, min_samples, gain_se=se, z=z)


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
    return load_weights(data)
