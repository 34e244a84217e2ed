"""Annotations -> training cases in the live model input's format (a FeatureBatch), plus outcomes.

Every bar of an annotation's label spans is one case: the FeatureBuilder row at that bar (the same
numbers ``build_one`` gives live at that bar's close), the span's label, a class for the supervised
experts and the trade's outcome. Class rule (core.labels codes): ENTRY and HOLD of a long trade -> UP,
of a short trade -> DOWN; EXIT and NO_TRADE -> FLAT (be out of the market there).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from core.annotations.model import Annotation
from core.features import FeatureBuilder
from core.labels import DOWN, FLAT, UP
from core.types import FeatureBatch, timeframe_ms

CLASS_NAMES = {DOWN: "DOWN", FLAT: "FLAT", UP: "UP"}
_CLUSTER_GAP_BARS = 2000  # annotations closer than this share one build_many call


@dataclass(frozen=True, slots=True)
class Outcome:
    direction: str
    pnl_pct: float  # signed by the direction: 100 * sign * (exit / entry - 1); 0 for NO_TRADE
    holding_bars: int  # bars from the entry bar's close to the exit bar's close
    holding_ms: int
    mfe_pct: float  # maximum favourable excursion after entry (>= 0), bars entry+1 .. exit, highs/lows
    mae_pct: float  # maximum adverse excursion (<= 0)
    exit_price: float


def outcome(a: Annotation, candles: pd.DataFrame) -> Outcome:
    """The trade's result from the stored candles of its period (rows entry_ts .. exit_ts)."""
    return outcome_of_arrays(a, candles["ts"].to_numpy(np.int64), candles["high"].to_numpy(np.float64),
                             candles["low"].to_numpy(np.float64))


def outcome_of_arrays(a: Annotation, ts: np.ndarray, high: np.ndarray, low: np.ndarray) -> Outcome:
    """``outcome`` on the period's columns (no DataFrame: hundreds of trades per page draw)."""
    sel = (ts > a.entry_ts) & (ts <= a.exit_ts)
    hi = high[sel]
    lo = low[sel]
    e = a.entry_price
    up = 100.0 * (float(hi.max()) / e - 1.0) if hi.size else 0.0
    down = 100.0 * (float(lo.min()) / e - 1.0) if lo.size else 0.0
    if a.direction == "short":
        up, down = -down, -up
    bar = timeframe_ms(a.timeframe)
    return Outcome(
        direction=a.direction,
        pnl_pct=100.0 * a.sign * (a.exit_price / e - 1.0),
        holding_bars=int(np.count_nonzero(sel)) if len(ts) else (a.exit_ts - a.entry_ts) // bar,
        holding_ms=a.exit_ts - a.entry_ts,
        mfe_pct=max(0.0, up),
        mae_pct=min(0.0, down),
        exit_price=a.exit_price,
    )


def case_class(a: Annotation, label: str) -> int:
    if label in ("ENTRY", "HOLD") and a.sign:
        return UP if a.sign > 0 else DOWN
    return FLAT


@dataclass(frozen=True)
class CaseSet:
    """Aligned cases: batch row i is the case (annotation_id[i], label[i]) at batch.ts[i]."""

    batch: FeatureBatch
    annotation_id: np.ndarray  # object [N]
    label: np.ndarray  # object [N] ENTRY | HOLD | EXIT | NO_TRADE
    target: np.ndarray  # int64 [N] DOWN / FLAT / UP
    outcomes: dict[str, Outcome]

    def __len__(self) -> int:
        return len(self.batch)


def _bar_labels(a: Annotation, bar: int) -> list[tuple[int, str]]:
    """(bar ts, label) for every bar of the spans; a bar in two spans keeps the later span's label."""
    out: dict[int, str] = {}
    for s in a.spans:
        for t in range(s.start_ts, s.end_ts + 1, bar):
            out[t] = s.label
    return sorted(out.items())


def make_cases(builder: FeatureBuilder, candles: pd.DataFrame, annotations: Sequence[Annotation],
               ref: pd.DataFrame | None = None) -> CaseSet:
    """Cases of ``annotations`` (one series, the builder's base timeframe) from the stored history
    ``candles`` (ts ascending; everything before each case may be used, nothing after it is)."""
    bar = builder.base_ms
    ts = candles["ts"].to_numpy(np.int64)
    rows: list[tuple[int, str, str, int]] = []  # (candle index, annotation id, label, class)
    outcomes: dict[str, Outcome] = {}
    for a in annotations:
        if a.timeframe != builder.base_timeframe:
            raise ValueError(f"annotation {a.id} is on {a.timeframe}; cases are built on the base timeframe "
                             f"{builder.base_timeframe}")
        a = a.with_default_spans(bar)
        i0, i1 = np.searchsorted(ts, [a.entry_ts, a.exit_ts])
        if i1 >= len(ts) or ts[i0] != a.entry_ts or ts[i1] != a.exit_ts:
            raise ValueError(f"annotation {a.id}: its period is not inside the candles given")
        outcomes[a.id] = outcome(a, candles.iloc[i0 : i1 + 1])
        for t, label in _bar_labels(a, bar):
            rows.append((int(np.searchsorted(ts, t)), a.id, label, case_class(a, label)))
    rows.sort(key=lambda r: r[0])
    idx = np.array([r[0] for r in rows], dtype=np.int64)
    parts: list[FeatureBatch] = []
    start = 0
    while start < len(idx):  # one build_many per cluster of nearby cases (rows must be contiguous)
        stop = start + 1
        while stop < len(idx) and idx[stop] - idx[stop - 1] <= _CLUSTER_GAP_BARS:
            stop += 1
        lo, hi = int(idx[start]), int(idx[stop - 1])
        b = builder.build_many(candles.iloc[: hi + 1], ref, symbol=str(annotations[0].symbol),
                               rows=slice(lo, hi + 1))
        parts.append(b.take(idx[start:stop] - lo))
        start = stop
    batch = _concat(parts, builder) if parts else builder.build_many(candles.iloc[:0])
    return CaseSet(batch=batch, annotation_id=np.array([r[1] for r in rows], dtype=object),
                   label=np.array([r[2] for r in rows], dtype=object),
                   target=np.array([r[3] for r in rows], dtype=np.int64), outcomes=outcomes)


def _concat(parts: list[FeatureBatch], builder: FeatureBuilder) -> FeatureBatch:
    if len(parts) == 1:
        return parts[0]
    return FeatureBatch(symbol=parts[0].symbol, timeframe=parts[0].timeframe,
                        ts=np.concatenate([p.ts for p in parts]), close=np.concatenate([p.close for p in parts]),
                        windows=np.concatenate([p.windows for p in parts]),
                        flat=np.concatenate([p.flat for p in parts]),
                        regime=np.concatenate([p.regime for p in parts]), spec=builder.spec)
