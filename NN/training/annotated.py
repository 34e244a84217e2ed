"""Annotated trades as extra supervised training samples (``train --annotations``).

Each labelled bar of an annotation (core.annotations.cases: ENTRY/HOLD of a long -> UP, of a short -> DOWN,
EXIT/NO_TRADE -> FLAT) replaces the forward-return label of the training sample at that bar and is
repeated ``weight`` times per epoch. The features are the training set's own FeatureBuilder rows at
those bars (the cases' format). Only annotations lying WHOLLY inside the train part are used: a trade
whose exit falls in the split gap, validation or test would carry their prices into training.

For the DQN the same annotations are demonstrations: ``demos`` holds each used trade's rows (entry ..
exit, consecutive bars) and direction; the trainer turns them into replay transitions (flat -> the
annotated position at the entry, held to the exit, rewards from the real closes).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from core.annotations.cases import case_class
from core.annotations.model import Annotation
from core.types import FeatureBatch, timeframe_ms


@dataclass(frozen=True)
class AnnotatedRows:
    idx: np.ndarray  # int64 row positions in the training batch (train part only)
    labels: np.ndarray  # int64 classes from the annotations
    weight: int
    used: list[str] = field(default_factory=list)  # annotation ids used
    held_out: list[str] = field(default_factory=list)  # ids not wholly in the train part (not used)
    demos: list[tuple[int, int, int]] = field(default_factory=list)  # (entry row, exit row, sign -1/0/+1)

    def summary(self) -> dict[str, object]:
        return {"cases": int(self.idx.size), "weight": self.weight, "annotations_used": len(self.used),
                "annotations_held_out": len(self.held_out)}


def annotated_rows(batch: FeatureBatch, train: slice, annotations: Sequence[Annotation], weight: int
                   ) -> AnnotatedRows:
    if weight < 1:
        raise ValueError(f"--weight must be >= 1, got {weight}")
    ts = batch.ts
    lo, hi = int(ts[train.start]), int(ts[train.stop - 1])
    idx: list[int] = []
    labels: list[int] = []
    used, held = [], []
    demos: list[tuple[int, int, int]] = []
    for a in annotations:
        if a.timeframe != batch.timeframe or (a.symbol != batch.symbol and batch.symbol):
            continue
        if a.entry_ts < lo or a.exit_ts > hi:
            held.append(a.id)
            continue
        a = a.with_default_spans(timeframe_ms(a.timeframe))
        used.append(a.id)
        i0, i1 = (int(x) for x in np.searchsorted(ts, [a.entry_ts, a.exit_ts]))
        if i1 > i0 and i1 < len(ts) and ts[i0] == a.entry_ts and ts[i1] == a.exit_ts \
                and i1 - i0 == (a.exit_ts - a.entry_ts) // timeframe_ms(a.timeframe):  # no gap inside
            demos.append((i0, i1, a.sign))
        for s in a.spans:
            for t in range(s.start_ts, s.end_ts + 1, timeframe_ms(a.timeframe)):
                i = int(np.searchsorted(ts, t))
                if i < len(ts) and ts[i] == t:
                    idx.append(i)
                    labels.append(case_class(a, s.label))
    return AnnotatedRows(np.asarray(idx, dtype=np.int64), np.asarray(labels, dtype=np.int64), weight, used, held,
                         demos)
