"""Per-expert P&L attribution: which experts earned (or lost) the money.

The rule (documented in README "Walk-forward and sweeps"):
1. Bar P&L: ``pnl[t] = equity[t] - equity[t-1]`` (``equity[-1]`` = the initial cash), fees included,
   so the parts sum to the run's total P&L.
2. The decision in force at bar t is the last BUY or SELL decided at or before bar ``t - lag`` (lag 1
   when fills happen at the next bar's open, 0 when at the bar's close): every bar's P&L, risk exits
   included, belongs to the decision that set the position it comes from.
3. That decision (direction d = +1 BUY, -1 SELL, gate weights w_e, expert probabilities p_e) is split by
   agreement: expert e's vote is ``v_e = max(0, d * (p_e[up] - p_e[down]))`` and its share
   ``w_e * v_e / sum_k w_k v_k`` (by the weights alone when no expert agreed). Shares sum to 1.
4. P&L before any decision (none: the account is flat then) goes to ``unattributed``.
Per trade = per decision in force; per run and per group (fold) = sums.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def decision_shares(codes: np.ndarray, weights: np.ndarray, expert_probs: np.ndarray) -> np.ndarray:
    """[N, E] each expert's share of each bar's decision (rule 3); rows of HOLD bars are 0."""
    d = np.asarray(codes, dtype=np.float64)[:, None]
    p = np.asarray(expert_probs, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    v = np.maximum(0.0, d * (p[:, :, 2] - p[:, :, 0])) * w
    tot = v.sum(axis=1, keepdims=True)
    wsum = w.sum(axis=1, keepdims=True)
    by_w = np.divide(w, wsum, out=np.zeros_like(w), where=wsum > 0)
    s = np.where(tot > 1e-15, v / np.where(tot > 1e-15, tot, 1.0), by_w)
    s[np.asarray(codes) == 0] = 0.0
    return s


def in_force(codes: np.ndarray, lag: int = 1) -> np.ndarray:
    """int [N]: index of the decision in force at each bar (rule 2); -1 before the first."""
    c = np.asarray(codes)
    n = len(c)
    idx = np.where(c != 0, np.arange(n), -1)
    last = np.maximum.accumulate(idx) if n else idx
    if lag:
        last = np.concatenate([np.full(min(lag, n), -1), last[:n - lag]])
    return last


def attribute(equity: np.ndarray, initial_cash: float, codes: np.ndarray, weights: np.ndarray,
              expert_probs: np.ndarray, names: list[str], *, groups: np.ndarray | None = None,
              lag: int = 1) -> dict[str, Any]:
    """The run's P&L split per expert (plus ``unattributed``), per group (e.g. fold) and per decision in
    force; ``check`` = |sum of parts - total P&L| (float rounding only)."""
    eq = np.asarray(equity, dtype=np.float64)
    pnl = np.diff(np.concatenate([[float(initial_cash)], eq]))
    shares = decision_shares(codes, weights, expert_probs)
    src = in_force(codes, lag)
    has = src >= 0
    parts = np.zeros((len(eq), len(names)))
    parts[has] = shares[src[has]] * pnl[has, None]
    un = np.where(has, 0.0, pnl)
    total = float(eq[-1] - initial_cash) if len(eq) else 0.0

    def pack(rows: np.ndarray) -> dict[str, float]:
        out = {n: float(parts[rows, e].sum()) for e, n in enumerate(names)}
        out["unattributed"] = float(un[rows].sum())
        return out

    allrows = np.ones(len(eq), dtype=bool)
    per = pack(allrows)
    trades = []
    for j in np.unique(src[has]):
        rows = src == j
        trades.append({"decision_bar": int(j), "side": "BUY" if codes[j] > 0 else "SELL",
                       "pnl": float(pnl[rows].sum()), "parts": pack(rows)})
    g: dict[int, dict[str, float]] = {}
    if groups is not None:
        for k in np.unique(groups):
            g[int(k)] = pack(np.asarray(groups) == k)
    return {"rule": "weight x agreeing vote of the decision in force", "total_pnl": total, "experts": per,
            "check": abs(sum(per.values()) - total), "groups": g, "trades": trades}
