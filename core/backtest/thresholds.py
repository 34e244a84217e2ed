"""Re-deciding cached predictions under other thresholds: the ONE place that re-runs the decision rule
over fused probabilities and gate confidence already computed (a backtest's or walk-forward's arrays, or
the live audit trail), without re-predicting anything.

``Redecider`` holds what does not depend on the thresholds (P(up), P(down), which side wins when both
fire, the bars with no expert output) and gives, for any ``Thresholds``, the codes the one decision rule
(core/orchestrator.decide_codes) gives, byte for byte, in a few vectorised passes. Two callers:

* the threshold preview (``threshold_preview``): for every (buy, sell) pair of a grid, the BUY and SELL
  decisions and their hit rate, a BUY being a hit when the price rose over the horizon and a SELL when it
  fell (a bar whose horizon has not matured counts as a decision, not in the hit rate). The whole grid is
  counted in O(N + B*S) from one 2-d histogram of where each bar crosses the grid, not B*S re-decisions;
* a sweep's threshold/risk trials (core/backtest/retune.py): codes -> kernel signal -> one kernel pass.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from core.audit import decision_confidence
from core.types import Decision, Thresholds

DEFAULT_GRID = np.round(np.arange(0.34, 0.801, 0.02), 2)


@dataclass(frozen=True, slots=True)
class ThresholdPreview:
    buy: np.ndarray  # [B] buy thresholds (rows)
    sell: np.ndarray  # [S] sell thresholds (columns)
    n_buy: np.ndarray  # [B, S] BUY decisions
    n_sell: np.ndarray  # [B, S] SELL decisions
    buy_hits: np.ndarray  # [B, S] matured BUYs followed by a rise
    sell_hits: np.ndarray  # [B, S] matured SELLs followed by a fall
    matured: np.ndarray  # [B, S] BUY + SELL decisions whose horizon has passed
    n_bars: int

    @property
    def hit_rate(self) -> np.ndarray:
        """[B, S] (buy hits + sell hits) / matured decisions; NaN where there is none."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.matured > 0, (self.buy_hits + self.sell_hits) / np.maximum(self.matured, 1),
                            np.nan)

    @property
    def decisions(self) -> np.ndarray:
        return self.n_buy + self.n_sell


def grid_for(fused: np.ndarray, n: int = 12) -> np.ndarray:
    """Thresholds worth previewing for these probabilities: from the median of min(P(up), P(down)) to
    just above the 99.5% quantile of max(P(up), P(down)), ``n`` steps (DEFAULT_GRID without data). A
    fixed 0.34-0.80 grid shows nothing for a market whose fused output never leaves the base rate."""
    f = np.asarray(fused, dtype=np.float64)
    if f.ndim != 2 or len(f) == 0 or not np.isfinite(f).all():
        return DEFAULT_GRID
    side = f[:, [0, 2]]
    lo = np.floor(float(np.median(side.min(axis=1))) * 100) / 100
    hi = np.ceil(float(np.quantile(side.max(axis=1), 0.995)) * 100) / 100 + 0.01
    return np.round(np.linspace(lo, max(hi, lo + 0.05), n), 3)


def forward_log_returns(close: np.ndarray, horizon: int) -> np.ndarray:
    """[N] log(close[i + h] / close[i]); NaN where bar i + h is not there yet."""
    c = np.asarray(close, dtype=np.float64)
    out = np.full(len(c), np.nan)
    h = int(horizon)
    if h < 1:
        raise ValueError(f"horizon must be >= 1, got {horizon}")
    if len(c) > h:
        out[:-h] = np.log(c[h:] / c[:-h])
    return out


class Redecider:
    """Cached fused probabilities [N, 3] (down, flat, up) and confidence [N], ready to be re-decided.
    ``live`` [N] (default all): bars where some expert gave an output; the others always HOLD, as in the
    fast backtester. Everything here is computed once; ``codes`` and ``counts`` only compare."""

    def __init__(self, fused: np.ndarray, confidence: np.ndarray, live: np.ndarray | None = None) -> None:
        f = np.asarray(fused, dtype=np.float64)
        c = np.asarray(confidence, dtype=np.float64)
        if f.ndim != 2 or f.shape[1] != 3:
            raise ValueError(f"re-decision: fused must be [N, 3], got {f.shape}")
        if c.shape != (len(f),):
            raise ValueError(f"re-decision: confidence {c.shape} must be [{len(f)}]")
        self.n = len(f)
        self.up = np.ascontiguousarray(f[:, 2])
        self.down = np.ascontiguousarray(f[:, 0])
        self.confidence = c
        self.live = None if live is None else np.asarray(live, dtype=bool)
        # when both sides fire, the larger probability wins and an exact tie holds (decide_codes)
        self.up_wins = self.up > self.down
        self.down_wins = self.down > self.up

    def _ok(self, min_confidence: float) -> np.ndarray:
        ok = self.confidence >= min_confidence
        return ok if self.live is None else ok & self.live

    def codes(self, t: Thresholds) -> np.ndarray:
        """int8 codes (BUY 1, SELL -1, HOLD 0), byte-identical to ``decide_codes`` (HOLD where not live)."""
        ok = self._ok(t.min_confidence)
        buy = ok & (self.up >= t.buy)
        sell = ok & (self.down >= t.sell)
        b = buy & (~sell | self.up_wins)
        s = sell & (~buy | self.down_wins)
        return b.view(np.int8) - s.view(np.int8)

    def counts(self, buy_grid: np.ndarray, sell_grid: np.ndarray, min_confidence: float,
               weights: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """For every (buy_grid[i], sell_grid[j]): the sum of each ``weights`` array [N] over the bars that
        decide BUY (``<name>_buy`` [B, S]) and over those that decide SELL (``<name>_sell``).

        Bar n fires BUY at the i-th smallest buy threshold iff i < ib[n] (the number of grid values <=
        P(up)), SELL at the j-th smallest sell threshold iff j < js[n]; where both fire, the rule picks
        the side. So BUY(i, j) = i < ib and (j >= js or up wins), SELL(i, j) = j < js and (i >= ib or
        down wins), and each count is a suffix/prefix sum of one 2-d histogram over (ib, js)."""
        bg, sg = np.asarray(buy_grid, dtype=np.float64), np.asarray(sell_grid, dtype=np.float64)
        ob, osl = np.argsort(bg, kind="stable"), np.argsort(sg, kind="stable")
        nb, ns = len(bg), len(sg)
        ok = self._ok(min_confidence)
        # NaN probabilities never reach a threshold (searchsorted would count them past the end)
        ib = np.where(np.isfinite(self.up), np.searchsorted(bg[ob], self.up, side="right"), 0)
        js = np.where(np.isfinite(self.down), np.searchsorted(sg[osl], self.down, side="right"), 0)
        cell = ib * (ns + 1) + js
        out: dict[str, np.ndarray] = {}
        for name, w in weights.items():
            wv = np.where(ok, np.asarray(w, dtype=np.float64), 0.0)
            h_up = np.bincount(cell, np.where(self.up_wins, wv, 0.0), (nb + 1) * (ns + 1)).reshape(nb + 1, ns + 1)
            h_rest = np.bincount(cell, np.where(self.up_wins, 0.0, wv), (nb + 1) * (ns + 1)).reshape(nb + 1, ns + 1)
            # BUY: sum over ib > i of (up-wins bars, any js) + (other bars with js <= j)
            up_rows = h_up.sum(axis=1)[::-1].cumsum()[::-1][1:]  # [B]: ib > i
            rest = h_rest[::-1].cumsum(axis=0)[::-1][1:].cumsum(axis=1)[:, :ns]  # [B, S]: ib > i, js <= j
            buy = up_rows[:, None] + rest
            h_dn = np.bincount(cell, np.where(self.down_wins, wv, 0.0), (nb + 1) * (ns + 1)).reshape(nb + 1, ns + 1)
            h_rest2 = h_up + h_rest - h_dn
            # SELL: sum over js > j of (down-wins bars, any ib) + (other bars with ib <= i)
            dn_cols = h_dn.sum(axis=0)[::-1].cumsum()[::-1][1:]  # [S]: js > j
            rest2 = h_rest2[:, ::-1].cumsum(axis=1)[:, ::-1][:, 1:].cumsum(axis=0)[:nb]  # [B, S]
            sell = dn_cols[None, :] + rest2
            for side, arr in (("buy", buy), ("sell", sell)):
                back = np.empty_like(arr)
                back[np.ix_(ob, osl)] = arr  # sorted grid order -> the caller's order
                out[f"{name}_{side}"] = back
        return out


def threshold_preview(fused: np.ndarray, confidence: np.ndarray, fwd_return: np.ndarray,
                      buy_grid: np.ndarray | None = None, sell_grid: np.ndarray | None = None,
                      min_confidence: float = 0.0) -> ThresholdPreview:
    """fused [N, 3] (down, flat, up), confidence [N], fwd_return [N] (NaN = not matured) -> the preview
    over buy_grid x sell_grid (default: ``grid_for(fused)``) at ``min_confidence``."""
    f = np.asarray(fused, dtype=np.float64)
    r = np.asarray(fwd_return, dtype=np.float64)
    if f.ndim != 2 or f.shape[1] != 3:
        raise ValueError(f"threshold preview: fused must be [N, 3], got {f.shape}")
    c = np.asarray(confidence, dtype=np.float64)
    if c.shape != (len(f),) or r.shape != (len(f),):
        raise ValueError(f"threshold preview: confidence {c.shape} and returns {r.shape} must be [{len(f)}]")
    bg = grid_for(f) if buy_grid is None else np.asarray(buy_grid, dtype=np.float64)
    sg = grid_for(f) if sell_grid is None else np.asarray(sell_grid, dtype=np.float64)
    known = np.isfinite(r)
    k = Redecider(f, c).counts(bg, sg, min_confidence, {
        "n": np.ones(len(f)), "known": known, "up": known & (r > 0), "down": known & (r < 0)})
    i64 = {name: np.rint(v).astype(np.int64) for name, v in k.items()}  # exact: sums of 0/1 below 2**53
    return ThresholdPreview(bg, sg, i64["n_buy"], i64["n_sell"], i64["up_buy"], i64["down_sell"],
                            i64["known_buy"] + i64["known_sell"], len(f))


def preview_json(p: ThresholdPreview) -> dict[str, Any]:
    """The preview as plain lists (report JSON, the web figure); hit_rate None where undefined."""
    hr = p.hit_rate
    return {"buy": p.buy.tolist(), "sell": p.sell.tolist(), "n_buy": p.n_buy.tolist(), "n_sell": p.n_sell.tolist(),
            "matured": p.matured.tolist(),
            "hit_rate": [[None if not np.isfinite(v) else float(v) for v in row] for row in hr],
            "n_bars": p.n_bars}


def preview_from_decisions(decisions: Sequence[Decision], close_by_ts: Mapping[int, float], horizon: int,
                           step_ms: int, min_confidence: float, buy_grid: np.ndarray | None = None,
                           sell_grid: np.ndarray | None = None) -> ThresholdPreview:
    """The preview over cached live decisions (their fused probs and gate confidence): the forward
    return of each is read from the close ``horizon`` bars (``step_ms`` apart) later, NaN until then."""
    n = len(decisions)
    fused = np.array([d.probs for d in decisions], dtype=np.float64).reshape(n, 3)
    conf = np.array([decision_confidence(d) for d in decisions], dtype=np.float64)
    fwd = np.full(n, np.nan)
    for i, d in enumerate(decisions):
        c0, c1 = close_by_ts.get(int(d.ts)), close_by_ts.get(int(d.ts) + horizon * step_ms)
        if c0 and c1:
            fwd[i] = np.log(c1 / c0)
    return threshold_preview(fused, conf, fwd, buy_grid, sell_grid, min_confidence)
