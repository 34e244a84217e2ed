"""Threshold preview: what each (buy, sell) threshold pair would have done over cached predictions.

Pure numpy over the fused probabilities and gate confidence already computed for the last N bars (the
audit trail or a backtest's arrays): for every pair of the grid, the BUY and SELL decisions the one
decision rule (core/orchestrator.decide_codes) gives and their hit rate, a BUY being a hit when the
price rose over the horizon and a SELL when it fell (a bar whose horizon has not matured counts as a
decision, not in the hit rate). Nothing is re-predicted, so a slider preview is instant.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from core.audit import decision_confidence
from core.orchestrator import BUY, SELL, decide_codes
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


def threshold_preview(fused: np.ndarray, confidence: np.ndarray, fwd_return: np.ndarray,
                      buy_grid: np.ndarray | None = None, sell_grid: np.ndarray | None = None,
                      min_confidence: float = 0.0) -> ThresholdPreview:
    """fused [N, 3] (down, flat, up), confidence [N], fwd_return [N] (NaN = not matured) -> the preview
    over buy_grid x sell_grid (default: ``grid_for(fused)``) at ``min_confidence``."""
    f = np.asarray(fused, dtype=np.float64)
    c = np.asarray(confidence, dtype=np.float64)
    r = np.asarray(fwd_return, dtype=np.float64)
    if f.ndim != 2 or f.shape[1] != 3:
        raise ValueError(f"threshold preview: fused must be [N, 3], got {f.shape}")
    if c.shape != (len(f),) or r.shape != (len(f),):
        raise ValueError(f"threshold preview: confidence {c.shape} and returns {r.shape} must be [{len(f)}]")
    bg = grid_for(f) if buy_grid is None else np.asarray(buy_grid, dtype=np.float64)
    sg = grid_for(f) if sell_grid is None else np.asarray(sell_grid, dtype=np.float64)
    shape = (len(bg), len(sg))
    nb, ns, bh, sh, mat = (np.zeros(shape, dtype=np.int64) for _ in range(5))
    known = np.isfinite(r)
    up, down = known & (r > 0), known & (r < 0)
    for i, b in enumerate(bg):
        for j, s in enumerate(sg):
            codes = decide_codes(f, c, Thresholds(buy=float(b), sell=float(s), min_confidence=min_confidence))
            isb, iss = codes == BUY, codes == SELL
            nb[i, j], ns[i, j] = isb.sum(), iss.sum()
            bh[i, j], sh[i, j] = (isb & up).sum(), (iss & down).sum()
            mat[i, j] = ((isb | iss) & known).sum()
    return ThresholdPreview(bg, sg, nb, ns, bh, sh, mat, len(f))


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
