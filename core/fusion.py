"""Robust fusion: the layer above the MoE gate that keeps the fused output honest on any market.

Members of the final mixture, per bar (M = E + 3):

* every expert's own probabilities (E members),
* the MoE gate's fused output (the learned or Hedge mixture, OOD-discounted),
* the same fused output through an online recalibration map fitted on THIS market's matured outcomes
  (``OnlineRecalibrator``: vector scaling of the log probabilities by SGD with a constant step, i.e.
  an exponential forgetting of old outcomes),
* the base rate (``RollingClimatology``): Laplace-smoothed class frequencies of the last ``window``
  matured outcomes of this market at the gate's horizon.

The final probabilities are the weighted average of the members' probabilities with fixed-share
Bayes weights (learning rate eta = 1, the log-loss-optimal rate of the exponentially weighted
average forecaster; share ``alpha``). Outcomes mature h bars late, so ``h`` independent copies run
interleaved (bar j uses and updates copy j mod h, whose last outcome, that of bar j - h, has just
matured): each copy is then an ordinary online problem.

Regret bound (log loss, natural log), for any member i over T bars:

    L_fused <= L_i + h * ln(M) + T * ln(1 / (1 - alpha))

i.e. per bar the fused log loss exceeds that of the best single member (every expert, the gate,
the recalibrated gate, climatology) by at most h*ln(M)/T + ln(1/(1-alpha)) ~= h*ln(M)/T + alpha.
With h = 5, M = 6 and the default alpha = 5e-4 that is 0.009 over 1,000 bars and 0.0014 over 10,000
(vs. a member that switches S times: + S * h * (ln M + ln(1/alpha)) in total). The fixed share keeps
every weight >= alpha/M so a member that was bad in one regime can come back in the next.
Members that are missing on a bar (a disabled expert) "sleep": they are left out of that bar's
average and keep their weight relative to the others.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

EPS = 1e-12
UNIFORM = np.full(3, 1.0 / 3.0)


def ood_discount(score: np.ndarray, threshold: float) -> np.ndarray:
    """Gate multiplier per expert from its OOD score (1 = typical training sample): 1 up to the
    threshold, then (threshold / score)^2, so an expert twice as far out as allowed keeps 1/4 of
    its weight. NaN (no score: the checkpoint has no training statistics) = 1."""
    s = np.asarray(score, dtype=np.float64)
    d = np.where(s > threshold, (threshold / np.maximum(s, EPS)) ** 2, 1.0)
    return np.where(np.isfinite(s), d, 1.0)


class RollingClimatology:
    """Class frequencies of the last ``window`` matured outcomes (+1 Laplace prior per class)."""

    def __init__(self, window: int) -> None:
        self.window = int(window)
        self._ys: deque[int] = deque()
        self._counts = np.zeros(3)

    def observe(self, realised: int) -> None:
        self._ys.append(int(realised))
        self._counts[realised] += 1
        if len(self._ys) > self.window:
            self._counts[self._ys.popleft()] -= 1

    @property
    def n(self) -> int:
        return len(self._ys)

    def probs(self) -> np.ndarray:
        c = self._counts + 1.0
        return c / c.sum()


class OnlineRecalibrator:
    """p' = softmax(a * log p + b), (a, b) per class, one SGD step on the log loss per matured outcome;
    starts at the identity (a = 1, b = 0) and a is kept within [0.1, 10]."""

    def __init__(self, lr: float) -> None:
        self.lr = float(lr)
        self.a = np.ones(3)
        self.b = np.zeros(3)
        self.n = 0

    def transform(self, p: np.ndarray) -> np.ndarray:
        z = self.a * np.log(np.clip(p, EPS, 1.0)) + self.b
        z -= z.max()
        e = np.exp(z)
        return e / e.sum()

    def observe(self, p: np.ndarray, realised: int) -> None:
        lp = np.log(np.clip(p, EPS, 1.0))
        g = self.transform(p)
        g[realised] -= 1.0  # d loss / d z
        self.a = np.clip(self.a - self.lr * g * lp, 0.1, 10.0)
        self.b = self.b - self.lr * g
        self.n += 1


@dataclass(frozen=True, slots=True)
class FusionStep:
    """What the robust layer did on one bar (the dashboard and audit read it)."""

    member_weights: np.ndarray  # [M] final mixture weights over (experts..., gate, recal, climatology)
    members: np.ndarray  # [M, 3] the members' probabilities
    fused: np.ndarray  # [3] final probabilities

    @property
    def climatology(self) -> np.ndarray:
        return self.members[-1]


class RobustFusion:
    """See the module docstring. ``step`` once per bar in bar order; ``realised`` is the class of the
    bar ``horizon`` steps earlier when it matured at this bar (None otherwise)."""

    def __init__(self, experts: list[str], horizon: int, *, alpha: float, climatology_window: int,
                 recal_lr: float) -> None:
        self.experts = list(experts)
        self.E = len(experts)
        self.members = [*self.experts, "gate", "recalibrated", "climatology"]
        self.M = len(self.members)
        self.h = max(1, int(horizon))
        self.alpha = float(alpha)
        self.clim = RollingClimatology(climatology_window)
        self.recal = OnlineRecalibrator(recal_lr)
        self._w = np.full((self.h, self.M), 1.0 / self.M)  # one weight vector per interleaved copy
        self._j = 0  # bars stepped
        # per pending bar: (member probs [M, 3], available [M], gate fused [3])
        self._pending: deque[tuple[np.ndarray, np.ndarray, np.ndarray]] = deque()

    def _members(self, probs: np.ndarray, mask: np.ndarray, gate_fused: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray]:
        P = np.empty((self.M, 3))
        P[: self.E] = probs
        P[self.E] = gate_fused
        P[self.E + 1] = self.recal.transform(gate_fused)
        P[self.E + 2] = self.clim.probs()
        avail = np.ones(self.M, dtype=bool)
        avail[: self.E] = mask
        if not mask.any():  # nothing to fuse: the gate's output is the uniform placeholder
            avail[self.E: self.E + 2] = False
        return P, avail

    def _mix(self, w: np.ndarray, P: np.ndarray, avail: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        wa = np.where(avail, w, 0.0)
        wa = wa / wa.sum()
        q = wa @ P
        return wa, q / q.sum()

    def _update(self, realised: int) -> None:
        P, avail, gate_fused = self._pending.popleft()
        k = self._j % self.h  # the copy that predicted the bar that just matured
        w = self._w[k]
        _, q = self._mix(w, P, avail)
        lik = np.where(avail, P[:, realised], q[realised])  # sleeping members: the mixture's own
        w = w * np.clip(lik, EPS, 1.0)
        w = w / w.sum()
        self._w[k] = (1.0 - self.alpha) * w + self.alpha / self.M
        self.recal.observe(gate_fused, realised)
        self.clim.observe(realised)

    def predict(self, probs: np.ndarray, mask: np.ndarray, gate_fused: np.ndarray) -> FusionStep:
        """This bar's fused output without learning anything (previews)."""
        P, avail = self._members(probs, mask, gate_fused)
        wa, q = self._mix(self._w[self._j % self.h], P, avail)
        return FusionStep(wa, P, q)

    def step(self, realised: int | None, probs: np.ndarray, mask: np.ndarray, gate_fused: np.ndarray
             ) -> FusionStep:
        if realised is not None and self._pending:
            self._update(realised)
        P, avail = self._members(probs, mask, gate_fused)
        wa, q = self._mix(self._w[self._j % self.h], P, avail)
        self._pending.append((P, avail, np.asarray(gate_fused, dtype=np.float64).copy()))
        self._j += 1
        return FusionStep(wa, P, q)

    def expert_weights(self, member_w: np.ndarray, gate_w: np.ndarray) -> tuple[np.ndarray, float]:
        """Effective weight of each expert (its own member weight + its share of the gate members)
        and the climatology's weight; they sum to 1."""
        g = member_w[self.E] + member_w[self.E + 1]
        return member_w[: self.E] + g * np.asarray(gate_w, dtype=np.float64), float(member_w[self.E + 2])
