"""Replay metrics against annotations (pure numpy; the replay itself is core.annotations.replay).

Given the decision codes of a replay (BUY 1 / SELL -1 / HOLD 0 per bar, the backtests' decision code):

* Entries: every long (short) annotation is one annotated BUY (SELL) entry at its entry bar. Predicted
  entries are signal ONSETS (a bar whose code is BUY and whose previous bar's is not; same for SELL)
  inside the evaluated bars (each annotation's period widened by ``k`` bars on both sides). An onset
  within +-k bars of an annotated entry of the same side matches it (each entry matched once, nearest
  first); precision = matched / onsets, recall = matched / entries, F1 their harmonic mean.
* Confusion over ENTRY / HOLD / EXIT / NO_TRADE (rows annotated, columns predicted), on every labelled
  bar: the model's label comes from following its codes from flat at the annotation's first bar --
  flat + BUY/SELL = ENTRY (now in that direction), flat + HOLD = NO_TRADE, in a position + the same code
  or HOLD = HOLD, in a position + the opposite code = EXIT (flat again).
* Captured P&L: the same walk traded at the bars' closes (entries and exits at the close of the bar
  that says so, anything open closed at the annotation's last bar) vs the annotated P&L.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from core.annotations.cases import outcome
from core.annotations.model import LABELS, Annotation

_IDX = {label: i for i, label in enumerate(LABELS)}


@dataclass
class SideScore:
    predicted: int = 0
    annotated: int = 0
    matched: int = 0

    @property
    def precision(self) -> float | None:
        return self.matched / self.predicted if self.predicted else None

    @property
    def recall(self) -> float | None:
        return self.matched / self.annotated if self.annotated else None

    @property
    def f1(self) -> float | None:
        p, r = self.precision, self.recall
        if p is None or r is None or p + r == 0:
            return None if p is None or r is None else 0.0
        return 2 * p * r / (p + r)

    def to_dict(self) -> dict[str, Any]:
        return {"predicted": self.predicted, "annotated": self.annotated, "matched": self.matched,
                "precision": self.precision, "recall": self.recall, "f1": self.f1}


@dataclass
class Evaluation:
    k: int
    buy: SideScore = field(default_factory=SideScore)
    sell: SideScore = field(default_factory=SideScore)
    confusion: np.ndarray = field(default_factory=lambda: np.zeros((4, 4), dtype=np.int64))
    per_annotation: list[dict[str, Any]] = field(default_factory=list)
    timeline_ts: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    timeline_code: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int8))

    @property
    def label_accuracy(self) -> float | None:
        n = int(self.confusion.sum())
        return float(np.trace(self.confusion)) / n if n else None

    def totals(self) -> dict[str, Any]:
        return {"k": self.k, "BUY": self.buy.to_dict(), "SELL": self.sell.to_dict(),
                "label_accuracy": self.label_accuracy,
                "confusion": {"labels": list(LABELS), "rows_annotated_cols_predicted": self.confusion.tolist()},
                "annotated_pnl_pct": float(sum(r["annotated_pnl_pct"] for r in self.per_annotation)),
                "captured_pnl_pct": float(sum(r["captured_pnl_pct"] for r in self.per_annotation)),
                "annotations": len(self.per_annotation)}


def walk(codes: np.ndarray, close: np.ndarray) -> tuple[list[str], float, int]:
    """(predicted label per bar, captured P&L %, trades) following ``codes`` from flat (module doc)."""
    labels, pos, entry, pnl, trades = [], 0, 0.0, 0.0, 0
    for c, p in zip(codes.tolist(), close.tolist(), strict=True):
        if pos == 0:
            if c:
                pos, entry, trades = c, p, trades + 1
                labels.append("ENTRY")
            else:
                labels.append("NO_TRADE")
        elif c == -pos:
            pnl += 100.0 * pos * (p / entry - 1.0)
            pos = 0
            labels.append("EXIT")
        else:
            labels.append("HOLD")
    if pos:
        pnl += 100.0 * pos * (float(close[-1]) / entry - 1.0)
    return labels, pnl, trades


def _onsets(codes: np.ndarray, side: int) -> np.ndarray:
    on = codes == side
    prev = np.r_[False, on[:-1]]
    return np.flatnonzero(on & ~prev)


def _match(pred: np.ndarray, truth: list[int], k: int) -> tuple[int, dict[int, int]]:
    """Greedy one-to-one matching, nearest pairs first; returns (matched, {truth index: pred bar})."""
    pairs = sorted((abs(int(p) - t), int(p), t) for p in pred for t in truth if abs(int(p) - t) <= k)
    used_p: set[int] = set()
    got: dict[int, int] = {}
    for _, p, t in pairs:
        if p not in used_p and t not in got:
            used_p.add(p)
            got[t] = p
    return len(got), got


def evaluate(annotations: Sequence[Annotation], ts: np.ndarray, close: np.ndarray, codes: np.ndarray,
             candles: Any = None, k: int = 2) -> Evaluation:
    """Metrics of ``codes`` (one per bar ``ts``, ascending, one series) against ``annotations``.
    ``candles`` (the replayed DataFrame) gives the annotated outcomes; None uses entry/exit prices only."""
    ts = np.asarray(ts, dtype=np.int64)
    codes = np.asarray(codes, dtype=np.int8)
    close = np.asarray(close, dtype=np.float64)
    ev = Evaluation(k=k)
    window = np.zeros(len(ts), dtype=bool)
    truth: dict[int, list[int]] = {1: [], -1: []}
    for a in annotations:
        i0, i1 = (int(x) for x in np.searchsorted(ts, [a.entry_ts, a.exit_ts]))
        if i1 >= len(ts) or ts[i0] != a.entry_ts or ts[i1] != a.exit_ts:
            raise ValueError(f"annotation {a.id}: its bars are not in the replayed range")
        window[max(0, i0 - k) : i1 + k + 1] = True
        if a.sign:
            truth[a.sign].append(i0)
        bar = int(ts[1] - ts[0]) if len(ts) > 1 else 1
        a = a.with_default_spans(bar)
        pred, captured, trades = walk(codes[i0 : i1 + 1], close[i0 : i1 + 1])
        true = {int(t): s.label for s in a.spans for t in range(s.start_ts, s.end_ts + 1, bar)}
        conf = np.zeros((4, 4), dtype=np.int64)
        for j, label in enumerate(pred):
            t = int(ts[i0 + j])
            if t in true:
                conf[_IDX[true[t]], _IDX[label]] += 1
        ev.confusion += conf
        ann_pnl = outcome(a, candles.iloc[i0 : i1 + 1]).pnl_pct if candles is not None else \
            100.0 * a.sign * (a.exit_price / a.entry_price - 1.0)
        ev.per_annotation.append({"id": a.id, "direction": a.direction, "entry_ts": a.entry_ts, "exit_ts": a.exit_ts,
                                  "annotated_pnl_pct": ann_pnl, "captured_pnl_pct": captured, "model_trades": trades,
                                  "label_accuracy": float(np.trace(conf)) / max(1, int(conf.sum())),
                                  "entry_signal_offset": None})
    sides = {"long": 1, "short": -1}
    by_entry = {(r["entry_ts"], sides[r["direction"]]): r for r in ev.per_annotation if r["direction"] in sides}
    for side, score in ((1, ev.buy), (-1, ev.sell)):
        onsets = _onsets(codes, side)
        onsets = onsets[window[onsets]]
        score.predicted, score.annotated = int(onsets.size), len(truth[side])
        score.matched, got = _match(onsets, truth[side], k)
        for t, p in got.items():
            by_entry[(int(ts[t]), side)]["entry_signal_offset"] = p - t
    ev.timeline_ts, ev.timeline_code = ts[window], codes[window]
    return ev
