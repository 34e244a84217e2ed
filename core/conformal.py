"""Adaptive conformal inference (ACI) for forecast bands, so their coverage tracks the nominal level
under drift.

A band forecast is (median m, lower lo, upper hi) of the price ``horizon`` bars ahead, e.g. Kronos'
q10/q90 from its Monte-Carlo paths (nominal 80%). The band actually used is widened or narrowed by a
factor s around m: [m - s (m - lo), m + s (hi - m)]. Each matured forecast gives a score, the smallest
s that would have covered the realised price. s_t is the (1 - alpha_t) quantile of the last
``window`` scores, and alpha_t follows the ACI update (Gibbs & Candes, 2021)

    alpha_{t+1} = alpha_t + gamma * (alpha - err_t),   err_t = 1 if the band used missed, else 0,

which keeps the long-run miss rate at alpha whatever the drift (the average miss rate over T forecasts
is within (max(alpha_1, 1 - alpha_1) + gamma) / (gamma T) of alpha). Outcomes mature ``horizon`` bars
late; each is scored with the factor that was in force when its forecast was made.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any

import numpy as np


class AdaptiveConformal:
    def __init__(self, coverage: float = 0.8, gamma: float = 0.01, window: int = 500) -> None:
        if not 0 < coverage < 1:
            raise ValueError(f"coverage must be within (0, 1), got {coverage}")
        if not gamma > 0:
            raise ValueError(f"gamma must be > 0, got {gamma}")
        self.alpha = 1.0 - float(coverage)  # the target miss rate
        self.gamma = float(gamma)
        self.alpha_t = self.alpha
        self._scores: deque[float] = deque(maxlen=int(window))
        self.n = 0
        self.misses = 0

    def factor(self) -> float:
        """The width factor s_t for a new band (1 = the forecaster's own band until scores exist)."""
        if not self._scores:
            return 1.0
        if self.alpha_t <= 0:
            return float(max(self._scores)) * 1.5  # asked for more than every past score: widen past them
        if self.alpha_t >= 1:
            return 0.0
        return float(np.quantile(np.fromiter(self._scores, float), 1.0 - self.alpha_t))

    @staticmethod
    def band(median: float, lower: float, upper: float, s: float) -> tuple[float, float]:
        return median - s * (median - lower), median + s * (upper - median)

    @staticmethod
    def score(median: float, lower: float, upper: float, realised: float) -> float:
        """The smallest factor whose band covers ``realised``."""
        if realised >= median:
            return float((realised - median) / max(upper - median, 1e-12))
        return float((median - realised) / max(median - lower, 1e-12))

    def observe(self, median: float, lower: float, upper: float, realised: float, s_used: float) -> bool:
        """A matured forecast; returns whether the band used (factor ``s_used``) covered it."""
        sc = self.score(median, lower, upper, realised)
        covered = sc <= s_used
        self.alpha_t += self.gamma * (self.alpha - (0.0 if covered else 1.0))
        self._scores.append(sc)
        self.n += 1
        self.misses += int(not covered)
        return covered


def conformal_bands(median: np.ndarray, lower: np.ndarray, upper: np.ndarray, realised: np.ndarray,
                    horizon: int, coverage: float = 0.8, gamma: float = 0.01, window: int = 500
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Walk N forecasts in time order (forecast i matures at i + horizon, realised[i] its outcome, NaN =
    never) -> (adjusted lower [N], adjusted upper [N], covered [N] as 1/0, NaN until matured)."""
    n = len(median)
    aci = AdaptiveConformal(coverage, gamma, window)
    lo, hi, cov, used = np.empty(n), np.empty(n), np.full(n, np.nan), np.empty(n)
    for i in range(n):
        j = i - int(horizon)
        if j >= 0 and np.isfinite(realised[j]):
            cov[j] = float(aci.observe(median[j], lower[j], upper[j], realised[j], used[j]))
        used[i] = aci.factor()
        lo[i], hi[i] = aci.band(median[i], lower[i], upper[i], used[i])
    return lo, hi, cov


BAND_KEYS = ("q10", "q25", "q75", "q90")  # scaled around q50; q10/q90 define the nominal 80% band


def scale_bands(extras: dict[str, Any], s: float, coverage: float) -> dict[str, Any]:
    """A candle expert's extras with its quantile bands (log returns at its horizon) widened/narrowed by
    ``s`` around q50; the raw ones are kept as ``<q>_raw``, the factor as ``aci_factor``."""
    out = dict(extras)
    m = float(extras["q50"])
    for k in BAND_KEYS:
        if k in extras:
            v = float(extras[k])
            out[f"{k}_raw"] = v
            out[k] = m + s * (v - m)
    out["aci_factor"] = float(s)
    out["aci_coverage"] = float(coverage)
    return out


class BandTracker:
    """ACI over one forecaster's successive band forecasts (Kronos: log-return quantiles q10/q50/q90
    ``horizon`` bars ahead). ``adjust`` is called with each new forecast and the closed bars known at
    that moment: forecasts whose horizon has passed in those bars are scored first, then the new one
    gets the current factor. The live orchestrator and the fast backtest both go through it (same
    forecasts, same bars: same bands)."""

    def __init__(self, horizon: int, coverage: float = 0.8, gamma: float = 0.02, window: int = 500) -> None:
        self.h = int(horizon)
        self.aci = AdaptiveConformal(coverage, gamma, window)
        self.coverage = float(coverage)
        self._pending: deque[tuple[int, float, float, float, float]] = deque()  # ts, q10, q50, q90, s

    def _mature(self, ts: np.ndarray, close: np.ndarray) -> None:
        while self._pending:
            t, lo, m, hi, s = self._pending[0]
            i = int(np.searchsorted(ts, t))
            if i < len(ts) and ts[i] == t and i + self.h >= len(ts):
                return  # not matured yet (forecasts are in time order: neither are the later ones)
            self._pending.popleft()
            if i < len(ts) and ts[i] == t:
                self.aci.observe(m, lo, hi, math.log(float(close[i + self.h]) / float(close[i])), s)

    def adjust(self, fts: int, extras: dict[str, Any], ts: np.ndarray, close: np.ndarray) -> dict[str, Any]:
        """extras of the forecast made at bar ``fts`` -> extras with ACI-scaled bands (unchanged when the
        forecast has no finite q10/q50/q90)."""
        self._mature(ts, close)
        q = [float(extras.get(k, np.nan)) for k in ("q10", "q50", "q90")]
        if not all(np.isfinite(q)):
            return dict(extras)
        s = self.aci.factor()
        self._pending.append((int(fts), q[0], q[1], q[2], s))
        return scale_bands(extras, s, self.coverage)
