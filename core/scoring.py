"""Scores of probabilistic (down, flat, up) forecasts: log loss, Brier, accuracy, top-label ECE.

Pure numpy, shared by evaluation, promotion, the outcome tracker, backtest reports and the dashboard.
Everything takes class probabilities ``[N, 3]`` and integer labels ``[N]`` in {0, 1, 2}.
"""

from __future__ import annotations

import numpy as np

EPS = 1e-12


def check_probs(probs: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(labels)
    if p.ndim != 2:
        raise ValueError(f"probs must be [N, K], got shape {p.shape}")
    if y.shape != (p.shape[0],):
        raise ValueError(f"labels must be [N]={p.shape[0]}, got shape {y.shape}")
    if p.shape[0] == 0:
        raise ValueError("no samples to score")
    if not np.isfinite(p).all():
        raise ValueError("probs contain NaN or inf")
    if y.min() < 0 or y.max() >= p.shape[1]:
        raise ValueError(f"labels must be within [0, {p.shape[1] - 1}] (drop unknown labels first)")
    return p, y.astype(np.int64)


# ---------------------------------------------------------------- scores


def sample_log_loss(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per-sample negative log-likelihood [N] of the realised class (natural log)."""
    p, y = check_probs(probs, labels)
    return -np.log(np.clip(p[np.arange(len(y)), y], EPS, 1.0))


def log_loss(probs: np.ndarray, labels: np.ndarray) -> float:
    """Mean negative log-likelihood of the realised class (natural log)."""
    return float(sample_log_loss(probs, labels).mean())


def brier_score(probs: np.ndarray, labels: np.ndarray) -> float:
    """Multi-class Brier score: mean squared distance to the one-hot outcome (0 best, 2 worst)."""
    p, y = check_probs(probs, labels)
    onehot = np.eye(p.shape[1])[y]
    return float(((p - onehot) ** 2).sum(axis=1).mean())


def accuracy(probs: np.ndarray, labels: np.ndarray) -> float:
    p, y = check_probs(probs, labels)
    return float((p.argmax(axis=1) == y).mean())


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> float:
    """Top-label ECE: bins by the predicted class's probability, weighted |accuracy - confidence|."""
    p, y = check_probs(probs, labels)
    conf = p.max(axis=1)
    correct = (p.argmax(axis=1) == y).astype(np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    # bin i holds conf in (edges[i], edges[i+1]]; conf is never 0 for a normalised distribution
    idx = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, n_bins - 1)
    ece = 0.0
    for b in range(n_bins):
        m = idx == b
        if m.any():
            ece += m.mean() * abs(correct[m].mean() - conf[m].mean())
    return float(ece)


def scores(probs: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """The evaluation scores in one dict."""
    return {
        "n": int(len(labels)),
        "accuracy": accuracy(probs, labels),
        "log_loss": log_loss(probs, labels),
        "brier": brier_score(probs, labels),
        "ece": expected_calibration_error(probs, labels),
    }
