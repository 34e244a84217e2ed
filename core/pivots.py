"""Williams market structure: swing highs/lows found recursively, levels 1..5.

Level 1: bar i is a swing high when its high is strictly higher than the highs of the `strength`
bars on each side (swing low: strictly lower low). Level k: a level-(k-1) swing high whose high is
strictly higher than the highs of the `higher_strength` neighbouring level-(k-1) swing highs on each
side (lows likewise). So every level-k pivot is a level-(k-1) pivot.

No look-ahead: a pivot needs bars on its RIGHT. A level-1 pivot at bar i is only known at bar
i + strength (its confirmation index); a level-k pivot is confirmed when the `higher_strength`-th
level-(k-1) pivot after it is confirmed. Features must only use pivots with confirm <= t; the helpers
here (`latest_confirmed`, `support_resistance`) do exactly that.
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

MAX_LEVELS = 5


@dataclass(frozen=True, slots=True)
class PivotLevel:
    """Swing points of one level and one side. Arrays are aligned and sorted by bar index."""

    level: int
    kind: str  # "high" | "low"
    index: np.ndarray  # int64 bar index of the pivot
    confirm: np.ndarray  # int64 bar index at which the pivot becomes known (>= index)
    price: np.ndarray  # float64 the pivot's high (kind high) or low (kind low)


@dataclass(frozen=True, slots=True)
class MarketStructure:
    n_bars: int
    highs: tuple[PivotLevel, ...]  # highs[k-1] = level k
    lows: tuple[PivotLevel, ...]

    def level(self, k: int, kind: str) -> PivotLevel:
        if not 1 <= k <= len(self.highs):
            raise ValueError(f"level {k} not computed (1..{len(self.highs)})")
        if kind not in ("high", "low"):
            raise ValueError(f"kind must be 'high' or 'low', got {kind!r}")
        return (self.highs if kind == "high" else self.lows)[k - 1]


def _extrema(values: np.ndarray, strength: int, sign: float) -> np.ndarray:
    """Positions p where sign*values[p] is strictly greater than sign*values of the `strength`
    neighbours on each side (positions within `strength` of either end cannot qualify)."""
    n = values.shape[0]
    w = 2 * strength + 1
    if n < w:
        return np.empty(0, dtype=np.int64)
    win = sliding_window_view(sign * values, w)
    centre = win[:, strength]
    others = np.concatenate((win[:, :strength], win[:, strength + 1 :]), axis=1)
    ok = centre > others.max(axis=1)
    return np.flatnonzero(ok).astype(np.int64) + strength


def market_structure(
    high: np.ndarray,
    low: np.ndarray,
    levels: int = MAX_LEVELS,
    strength: int = 2,
    higher_strength: int = 1,
) -> MarketStructure:
    """Swing highs and lows of levels 1..`levels` with their confirmation indices."""
    h = np.asarray(high, dtype=np.float64)
    lo = np.asarray(low, dtype=np.float64)
    if h.ndim != 1 or h.shape != lo.shape:
        raise ValueError(f"high and low must be 1-D arrays of equal length, got {h.shape} and {lo.shape}")
    if not 1 <= levels <= MAX_LEVELS:
        raise ValueError(f"levels must be within 1..{MAX_LEVELS}, got {levels}")
    if strength < 1 or higher_strength < 1:
        raise ValueError(f"strength and higher_strength must be >= 1, got {strength}, {higher_strength}")
    out: dict[str, list[PivotLevel]] = {"high": [], "low": []}
    for kind, vals, sign in (("high", h, 1.0), ("low", lo, -1.0)):
        idx = _extrema(vals, strength, sign)
        conf = idx + strength
        out[kind].append(PivotLevel(1, kind, idx, conf, vals[idx]))
        for k in range(2, levels + 1):
            prev = out[kind][-1]
            pos = _extrema(prev.price, higher_strength, sign)
            # confirmed once the higher_strength-th later pivot of the level below is confirmed
            out[kind].append(
                PivotLevel(k, kind, prev.index[pos], prev.confirm[pos + higher_strength], prev.price[pos])
            )
    return MarketStructure(h.shape[0], tuple(out["high"]), tuple(out["low"]))


def latest_confirmed(piv: PivotLevel, n_bars: int) -> np.ndarray:
    """[n_bars] price of the most recent pivot confirmed at or before each bar (NaN before the first).

    Confirmation indices are increasing within a level, so the pivot confirmed last is also the
    latest one found."""
    out = np.full(n_bars, np.nan)
    keep = piv.confirm < n_bars
    conf = piv.confirm[keep]
    if conf.size == 0:
        return out
    out[conf] = piv.price[keep]
    # forward fill by index of the last set position
    pos = np.where(np.isfinite(out), np.arange(n_bars), -1)
    np.maximum.accumulate(pos, out=pos)
    res = np.full(n_bars, np.nan)
    has = pos >= 0
    res[has] = out[pos[has]]
    return res


def support_resistance(ms: MarketStructure, levels: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(support, resistance), each [n_bars, levels]: per level the last confirmed swing low / high
    price known at each bar (NaN until the first one)."""
    k = len(ms.highs) if levels is None else levels
    if not 1 <= k <= len(ms.highs):
        raise ValueError(f"levels must be within 1..{len(ms.highs)}, got {levels}")
    sup = np.column_stack([latest_confirmed(ms.lows[i], ms.n_bars) for i in range(k)])
    res = np.column_stack([latest_confirmed(ms.highs[i], ms.n_bars) for i in range(k)])
    return sup, res


@numba.njit(cache=True)
def _latest_kernel(
    vals: np.ndarray, sign: float, levels: int, strength: int, higher_strength: int, out: np.ndarray
) -> None:  # pragma: no cover - compiled
    # Same rules as market_structure, fused into one pass per level for the live path:
    # out[:, k] = price of the last level-(k+1) pivot confirmed at or before each bar.
    n = vals.shape[0]
    idx = np.empty(n, dtype=np.int64)
    conf = np.empty(n, dtype=np.int64)
    price = np.empty(n)
    cnt = 0
    for i in range(strength, n - strength):
        centre = sign * vals[i]
        ok = True
        for j in range(i - strength, i + strength + 1):
            if j != i and not centre > sign * vals[j]:
                ok = False
                break
        if ok:
            idx[cnt] = i
            conf[cnt] = i + strength
            price[cnt] = vals[i]
            cnt += 1
    for k in range(levels):
        if k > 0:  # pivots of this level among the previous level's pivots
            new = 0
            for p in range(higher_strength, cnt - higher_strength):
                centre = sign * price[p]
                ok = True
                for q in range(p - higher_strength, p + higher_strength + 1):
                    if q != p and not centre > sign * price[q]:
                        ok = False
                        break
                if ok:
                    idx[new] = idx[p]
                    conf[new] = conf[p + higher_strength]
                    price[new] = price[p]
                    new += 1
            cnt = new
        col = out[:, k]
        col[:] = np.nan
        for p in range(cnt):
            start = conf[p]
            if start >= n:
                break
            stop = conf[p + 1] if p + 1 < cnt and conf[p + 1] < n else n
            col[start:stop] = price[p]


def support_resistance_fast(
    high: np.ndarray,
    low: np.ndarray,
    levels: int = MAX_LEVELS,
    strength: int = 2,
    higher_strength: int = 1,
) -> tuple[np.ndarray, np.ndarray]:
    """support_resistance(market_structure(...)) in one compiled pass (the FeatureBuilder's live
    path); equal to it by test."""
    h = np.ascontiguousarray(high, dtype=np.float64)
    lo = np.ascontiguousarray(low, dtype=np.float64)
    if h.ndim != 1 or h.shape != lo.shape:
        raise ValueError(f"high and low must be 1-D arrays of equal length, got {h.shape} and {lo.shape}")
    if not 1 <= levels <= MAX_LEVELS or strength < 1 or higher_strength < 1:
        raise ValueError(f"bad pivot settings: levels={levels}, strength={strength}, higher={higher_strength}")
    sup = np.empty((h.shape[0], levels))
    res = np.empty((h.shape[0], levels))
    _latest_kernel(lo, -1.0, levels, strength, higher_strength, sup)
    _latest_kernel(h, 1.0, levels, strength, higher_strength, res)
    return sup, res
