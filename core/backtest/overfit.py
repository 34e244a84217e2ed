"""Overfitting-aware statistics for sweeps (pure functions, no scipy).

* ``deflated_sharpe``: Bailey & López de Prado (2014). The probabilistic Sharpe ratio of the chosen
  trial against the Sharpe the best of ``n_trials`` unskilled trials would reach by luck:
  SR0 = sqrt(V) * ((1 - g) * Z(1 - 1/N) + g * Z(1 - 1/(N e))), g = Euler-Mascheroni, V = variance of the
  trials' Sharpe ratios; DSR = Phi((SR - SR0) sqrt(T - 1) / sqrt(1 - skew SR + (kurt - 1) / 4 SR^2)).
  All Sharpe ratios are per bar (not annualised), kurt is the plain (not excess) kurtosis.
* ``pbo_cscv``: probability of backtest overfitting by combinatorially symmetric cross-validation
  (Bailey, Borwein, López de Prado, Zhu 2015): split the bars into S blocks, for every half of them pick
  the trial with the best in-sample Sharpe and see where it ranks out of sample; PBO = the share of
  splits where it ranks at or below the median (logit <= 0).
"""

from __future__ import annotations

import itertools
import math
from statistics import NormalDist

import numpy as np

EULER_GAMMA = 0.5772156649015329
_N = NormalDist()


def sharpe(returns: np.ndarray) -> float:
    """Per-bar Sharpe (mean / sample std); NaN without variance."""
    r = np.asarray(returns, dtype=np.float64)
    if r.size < 2:
        return math.nan
    sd = float(r.std(ddof=1))
    return float(r.mean() / sd) if sd > 0 else math.nan


def moments(returns: np.ndarray) -> tuple[float, float]:
    """(skewness, plain kurtosis) of per-bar returns (population moments)."""
    r = np.asarray(returns, dtype=np.float64)
    d = r - r.mean()
    m2 = float((d ** 2).mean())
    if m2 <= 0:
        return 0.0, 3.0
    return float((d ** 3).mean() / m2 ** 1.5), float((d ** 4).mean() / m2 ** 2)


def expected_max_sharpe(n_trials: int, sharpe_variance: float) -> float:
    """SR0: the expected best Sharpe of ``n_trials`` skill-less trials (0 for a single trial)."""
    if n_trials < 2 or not sharpe_variance > 0:
        return 0.0
    n = float(n_trials)
    return math.sqrt(sharpe_variance) * ((1 - EULER_GAMMA) * _N.inv_cdf(1 - 1 / n)
                                         + EULER_GAMMA * _N.inv_cdf(1 - 1 / (n * math.e)))


def probabilistic_sharpe(sr: float, sr0: float, n_bars: int, skew: float, kurt: float) -> float:
    """P(true Sharpe > sr0) given the observed per-bar ``sr`` over ``n_bars`` bars."""
    den = 1 - skew * sr + (kurt - 1) / 4 * sr * sr
    if n_bars < 2 or not den > 0 or not math.isfinite(sr):
        return math.nan
    return _N.cdf((sr - sr0) * math.sqrt(n_bars - 1) / math.sqrt(den))


def deflated_sharpe(sr: float, n_bars: int, skew: float, kurt: float, n_trials: int,
                    sharpe_variance: float) -> float:
    return probabilistic_sharpe(sr, expected_max_sharpe(n_trials, sharpe_variance), n_bars, skew, kurt)


def pbo_cscv(block_sums: np.ndarray, block_sq: np.ndarray, block_n: np.ndarray) -> float | None:
    """PBO from per-block sufficient statistics of each trial's per-bar returns: ``block_sums`` and
    ``block_sq`` [trials, S] (sum of r and of r^2 per block), ``block_n`` [S] bars per block. S must be
    even and >= 4, and there must be >= 2 trials; else None (the folds do not allow it)."""
    s1, s2 = np.asarray(block_sums, np.float64), np.asarray(block_sq, np.float64)
    nb = np.asarray(block_n, np.float64)
    n_trials, S = s1.shape
    if n_trials < 2 or S < 4 or S % 2:
        return None

    # every split of the S blocks into halves at once: ins [K, S] (K = C(S, S/2)), outs its complement
    ins = np.zeros((math.comb(S, S // 2), S), dtype=bool)
    for k, cols in enumerate(itertools.combinations(range(S), S // 2)):
        ins[k, list(cols)] = True

    def sharpe_of(sel: np.ndarray) -> np.ndarray:
        """[T, K] per-bar Sharpe of each trial over each split's selected blocks."""
        n = (sel * nb).sum(axis=1)  # [K]
        m = np.einsum("ts,ks->tk", s1, sel.astype(np.float64)) / n
        var = (np.einsum("ts,ks->tk", s2, sel.astype(np.float64)) - n * m * m) / np.maximum(n - 1, 1)
        sd = np.sqrt(np.maximum(var, 0))
        return np.where(sd > 0, m / np.where(sd > 0, sd, 1), -np.inf)

    best = np.argmax(sharpe_of(ins), axis=0)  # [K] the in-sample winner of each split
    oos = sharpe_of(~ins)
    ob = oos[best, np.arange(len(best))]
    # relative rank of the in-sample winner out of sample, in (0, 1)
    w = ((oos < ob).sum(axis=0) + 1 + 0.5 * ((oos == ob).sum(axis=0) - 1)) / (n_trials + 1)
    w = np.clip(w, 1e-9, 1 - 1e-9)
    logits = np.log(w / (1 - w))
    return float(np.mean(np.array(logits) <= 0))
