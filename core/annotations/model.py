"""The annotation contract: a marked trade (or a "do nothing here" span) on stored candles.

An annotation spans the base bars ``entry_ts .. exit_ts`` (bar OPEN times, both inclusive) of one stored
series. Prices are what the trader clicked: a candle's close by default, or a typed price inside that
bar's low..high. Label spans say what each bar of the period teaches: ``ENTRY`` (open the trade at this
bar's close), ``HOLD`` (stay in it), ``EXIT`` (close it), ``NO_TRADE`` (nothing to do here).
"""

from __future__ import annotations

import uuid
from dataclasses import asdict, dataclass, field, replace
from typing import Any

LABELS: tuple[str, ...] = ("ENTRY", "HOLD", "EXIT", "NO_TRADE")
DIRECTIONS: tuple[str, ...] = ("long", "short", "none")


@dataclass(frozen=True, slots=True)
class LabelSpan:
    label: str
    start_ts: int  # first bar (open time, ms), inclusive
    end_ts: int  # last bar (open time, ms), inclusive

    def __post_init__(self) -> None:
        if self.label not in LABELS:
            raise ValueError(f"label {self.label!r} is not one of {', '.join(LABELS)}")
        if self.end_ts < self.start_ts:
            raise ValueError(f"{self.label} span ends ({self.end_ts}) before it starts ({self.start_ts})")


@dataclass(frozen=True, slots=True)
class Annotation:
    exchange: str
    symbol: str
    timeframe: str
    entry_ts: int
    exit_ts: int
    entry_price: float
    exit_price: float
    direction: str  # long | short | none (a NO_TRADE span)
    spans: tuple[LabelSpan, ...] = ()
    notes: str = ""
    tags: tuple[str, ...] = ()
    author: str = ""
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:16])
    version: int = 1
    created_ms: int = 0
    updated_ms: int = 0
    deleted: bool = False

    def __post_init__(self) -> None:
        if self.direction not in DIRECTIONS:
            raise ValueError(f"direction {self.direction!r} is not one of {', '.join(DIRECTIONS)}")
        if self.exit_ts < self.entry_ts:
            raise ValueError(f"exit ({self.exit_ts}) is before entry ({self.entry_ts})")
        if self.direction != "none" and self.exit_ts == self.entry_ts:
            raise ValueError("a trade needs its exit on a later bar than its entry")
        if not (self.entry_price > 0 and self.exit_price > 0):
            raise ValueError(f"prices must be > 0, got entry {self.entry_price}, exit {self.exit_price}")
        for s in self.spans:
            if s.start_ts < self.entry_ts or s.end_ts > self.exit_ts:
                raise ValueError(f"{s.label} span [{s.start_ts}, {s.end_ts}] lies outside the annotation "
                                 f"[{self.entry_ts}, {self.exit_ts}]")

    @property
    def sign(self) -> int:
        return {"long": 1, "short": -1, "none": 0}[self.direction]

    def with_default_spans(self, bar_ms: int) -> Annotation:
        """ENTRY at the entry bar, HOLD between, EXIT at the exit bar (NO_TRADE: the whole period)."""
        if self.spans:
            return self
        return replace(self, spans=default_spans(self.entry_ts, self.exit_ts, self.direction, bar_ms))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["spans"] = [asdict(s) for s in self.spans]
        d["tags"] = list(self.tags)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Annotation:
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"annotation: unknown field(s) {', '.join(unknown)}")
        kw = dict(d)
        kw["spans"] = tuple(LabelSpan(str(s["label"]), int(s["start_ts"]), int(s["end_ts"]))
                            for s in d.get("spans", ()))
        kw["tags"] = tuple(str(t) for t in d.get("tags", ()))
        for k in ("entry_ts", "exit_ts", "version", "created_ms", "updated_ms"):
            if k in kw:
                kw[k] = int(kw[k])
        for k in ("entry_price", "exit_price"):
            if k in kw:
                kw[k] = float(kw[k])
        return cls(**kw)


def default_spans(entry_ts: int, exit_ts: int, direction: str, bar_ms: int) -> tuple[LabelSpan, ...]:
    if direction == "none":
        return (LabelSpan("NO_TRADE", entry_ts, exit_ts),)
    out = [LabelSpan("ENTRY", entry_ts, entry_ts)]
    if exit_ts - entry_ts > bar_ms:
        out.append(LabelSpan("HOLD", entry_ts + bar_ms, exit_ts - bar_ms))
    out.append(LabelSpan("EXIT", exit_ts, exit_ts))
    return tuple(out)


def direction_from_prices(entry_price: float, exit_price: float) -> str:
    """The trade that would have made money: long when the exit is above the entry, else short."""
    return "long" if exit_price >= entry_price else "short"
