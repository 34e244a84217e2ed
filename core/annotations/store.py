"""Table ``annotations`` in the DuckDB store: every edit is a new version row, deletes are soft.

Rows are keyed (id, version); ``current`` marks the newest version of each id. An annotation is only
accepted on real stored candles: both ends on stored bars, no gap in between, prices inside their bar.
"""

from __future__ import annotations

import builtins
import json
import time
from dataclasses import replace
from typing import Any

import numpy as np
import pandas as pd

from core.annotations.model import Annotation, LabelSpan, default_spans, direction_from_prices
from core.data.store import MarketStore, session_gaps
from core.market.calendar import Calendar
from core.types import SeriesKey, timeframe_ms

_SCHEMA = """
CREATE TABLE IF NOT EXISTS annotations (
    id VARCHAR NOT NULL, version INTEGER NOT NULL, current BOOLEAN NOT NULL,
    exchange VARCHAR NOT NULL, symbol VARCHAR NOT NULL, timeframe VARCHAR NOT NULL,
    entry_ts BIGINT NOT NULL, exit_ts BIGINT NOT NULL, entry_price DOUBLE NOT NULL, exit_price DOUBLE NOT NULL,
    direction VARCHAR NOT NULL, spans VARCHAR NOT NULL, notes VARCHAR NOT NULL, tags VARCHAR NOT NULL,
    author VARCHAR NOT NULL, created_ms BIGINT NOT NULL, updated_ms BIGINT NOT NULL, deleted BOOLEAN NOT NULL,
    PRIMARY KEY (id, version)
);
CREATE TABLE IF NOT EXISTS annotation_sets (
    name VARCHAR NOT NULL, id VARCHAR NOT NULL, version INTEGER NOT NULL, created_ms BIGINT NOT NULL,
    PRIMARY KEY (name, id)
);
"""
_COLS = ("id", "version", "current", "exchange", "symbol", "timeframe", "entry_ts", "exit_ts", "entry_price",
         "exit_price", "direction", "spans", "notes", "tags", "author", "created_ms", "updated_ms", "deleted")


class AnnotationError(ValueError):
    """An annotation the store refuses (the message says why, in one line)."""


def _now_ms() -> int:
    return int(time.time() * 1000)


def key_of(a: Annotation) -> SeriesKey:
    return SeriesKey(a.exchange, a.symbol, a.timeframe)


def _row(a: Annotation) -> list[Any]:
    spans = json.dumps([[s.label, s.start_ts, s.end_ts] for s in a.spans])
    return [a.id, a.version, True, a.exchange, a.symbol, a.timeframe, a.entry_ts, a.exit_ts, a.entry_price,
            a.exit_price, a.direction, spans, a.notes, json.dumps(list(a.tags)), a.author, a.created_ms,
            a.updated_ms, a.deleted]


def _from_record(r: dict[str, Any]) -> Annotation:
    return Annotation(
        id=r["id"], version=int(r["version"]), exchange=r["exchange"], symbol=r["symbol"],
        timeframe=r["timeframe"], entry_ts=int(r["entry_ts"]), exit_ts=int(r["exit_ts"]),
        entry_price=float(r["entry_price"]), exit_price=float(r["exit_price"]), direction=r["direction"],
        spans=tuple(LabelSpan(str(s[0]), int(s[1]), int(s[2])) for s in json.loads(r["spans"])),
        notes=r["notes"], tags=tuple(json.loads(r["tags"])), author=r["author"], created_ms=int(r["created_ms"]),
        updated_ms=int(r["updated_ms"]), deleted=bool(r["deleted"]),
    )


def period_candles(store: MarketStore, a: Annotation | SeriesKey, start_ms: int, end_ms: int) -> pd.DataFrame:
    key = a if isinstance(a, SeriesKey) else key_of(a)
    return store.candles(key, start_ms, end_ms + timeframe_ms(key.timeframe))


def _inside(store: MarketStore, key: SeriesKey, start: int, end: int) -> None:
    first_last = store.query_one("SELECT min(ts), max(ts) FROM candles WHERE exchange = ? AND symbol = ? "
                                 "AND timeframe = ?", [key.exchange, key.symbol, key.timeframe])
    if first_last is None or first_last[0] is None:
        raise AnnotationError(f"no stored {key.timeframe} candles for {key.exchange} {key.symbol}")
    first, last = int(first_last[0]), int(first_last[1])
    if start < first or end > last:
        raise AnnotationError(
            f"annotation [{_iso(start)}, {_iso(end)}] lies outside the stored data "
            f"[{_iso(first)}, {_iso(last)}] of {key.symbol} {key.timeframe}")


def check(store: MarketStore, a: Annotation, calendar: Calendar | None = None) -> pd.DataFrame:
    """The stored candles of the annotated period, or AnnotationError naming what is wrong."""
    key, bar = key_of(a), timeframe_ms(a.timeframe)
    _inside(store, key, a.entry_ts, a.exit_ts)
    df = period_candles(store, key, a.entry_ts, a.exit_ts)
    ts = df["ts"].to_numpy(np.int64)
    for what, t in (("entry", a.entry_ts), ("exit", a.exit_ts)):
        if not len(ts) or t not in (int(ts[0]), int(ts[-1])):
            raise AnnotationError(f"the {what} {_iso(t)} is not a stored {a.timeframe} candle of {a.symbol}")
    if calendar is not None and not calendar.always_open:
        holes = [(g.start_ms, g.end_ms) for g in session_gaps(ts, a.timeframe, calendar)]
    else:
        holes = [(int(ts[j]) + bar, int(ts[j + 1])) for j in np.flatnonzero(np.diff(ts) > bar)]
    if holes:
        raise AnnotationError(f"the annotated period spans a gap in the stored candles: "
                              f"{_iso(holes[0][0])} .. {_iso(holes[0][1])} is missing ({len(holes)} gap(s))")
    for what, t, p in (("entry", a.entry_ts, a.entry_price), ("exit", a.exit_ts, a.exit_price)):
        row = df.iloc[0] if t == ts[0] else df.iloc[-1]
        if not (float(row["low"]) <= p <= float(row["high"])):
            raise AnnotationError(f"{what} price {p} is outside its candle's range "
                                  f"[{float(row['low'])}, {float(row['high'])}] at {_iso(t)}")
    return df


def _iso(ts: int) -> str:
    return pd.Timestamp(ts, unit="ms", tz="UTC").strftime("%Y-%m-%d %H:%M:%S")


def snap(store: MarketStore, key: SeriesKey, entry_ms: int, exit_ms: int, *, entry_price: float | None = None,
         exit_price: float | None = None, direction: str | None = None, spans: tuple[LabelSpan, ...] = (),
         **extra: Any) -> Annotation:
    """An annotation from two clicked times: each snapped to the bar containing it, prices to those bars'
    closes unless typed in, the direction from the two prices unless chosen, default label spans."""
    bar = timeframe_ms(key.timeframe)
    e0, e1 = sorted((int(entry_ms) - int(entry_ms) % bar, int(exit_ms) - int(exit_ms) % bar))
    _inside(store, key, e0, e1)
    df = period_candles(store, key, e0, e1)
    if df.empty or int(df["ts"].iloc[0]) != e0 or int(df["ts"].iloc[-1]) != e1:
        raise AnnotationError(f"no stored {key.timeframe} candle of {key.symbol} at "
                              f"{_iso(e0 if df.empty or int(df['ts'].iloc[0]) != e0 else e1)}")
    p0 = float(df["close"].iloc[0]) if entry_price is None else float(entry_price)
    p1 = float(df["close"].iloc[-1]) if exit_price is None else float(exit_price)
    d = direction or direction_from_prices(p0, p1)
    return Annotation(exchange=key.exchange, symbol=key.symbol, timeframe=key.timeframe, entry_ts=e0, exit_ts=e1,
                      entry_price=p0, exit_price=p1, direction=d,
                      spans=spans or default_spans(e0, e1, d, bar), **extra)


class AnnotationStore:
    """Versioned annotations on a MarketStore (the engine's writer connection or a CLI's own)."""

    def __init__(self, store: MarketStore, calendar: Calendar | None = None) -> None:
        self.store = store
        self.calendar = calendar
        if not store.read_only:
            store.execute(_SCHEMA)

    def add(self, a: Annotation) -> Annotation:
        """Store a new annotation (version 1); refused with the reason when not on clean stored candles."""
        a = a.with_default_spans(timeframe_ms(a.timeframe))
        check(self.store, a, self.calendar)
        if self._current(a.id) is not None:
            raise AnnotationError(f"annotation {a.id} already exists; edit it instead")
        now = _now_ms()
        a = replace(a, version=1, created_ms=a.created_ms or now, updated_ms=a.updated_ms or now, deleted=False)
        self._insert(a)
        return a

    def update(self, ann_id: str, **changes: Any) -> Annotation:
        """A new version with ``changes`` applied (the previous version stays, no longer current)."""
        old = self.get(ann_id)
        if "spans" not in changes and ({"entry_ts", "exit_ts", "direction"} & set(changes)):
            changes["spans"] = ()  # the period moved: rebuild the default spans
        new = replace(old, **changes, version=old.version + 1, updated_ms=max(_now_ms(), old.updated_ms + 1))
        new = new.with_default_spans(timeframe_ms(new.timeframe))
        check(self.store, new, self.calendar)
        self._replace(old, new)
        return new

    def delete(self, ann_id: str) -> Annotation:
        """Soft delete: a new version marked deleted; the history stays."""
        old = self.get(ann_id)
        new = replace(old, version=old.version + 1, deleted=True, updated_ms=max(_now_ms(), old.updated_ms + 1))
        self._replace(old, new)
        return new

    def restore(self, ann_id: str) -> Annotation:
        """Undo a soft delete: a new version, not deleted (re-checked against the stored candles)."""
        old = self._current(ann_id)
        if old is None or not old.deleted:
            raise KeyError(f"no deleted annotation {ann_id!r}")
        new = replace(old, version=old.version + 1, deleted=False, updated_ms=max(_now_ms(), old.updated_ms + 1))
        check(self.store, new, self.calendar)
        self._replace(old, new)
        return new

    def get(self, ann_id: str) -> Annotation:
        a = self._current(ann_id)
        if a is None or a.deleted:
            raise KeyError(f"no annotation {ann_id!r}")
        return a

    def list(self, symbol: str | None = None, timeframe: str | None = None, *, tag: str | None = None,
             include_deleted: bool = False) -> list[Annotation]:
        sql, params = "SELECT * FROM annotations WHERE current", builtins.list[Any]()
        if symbol:
            sql, params = sql + " AND symbol = ?", [*params, symbol]
        if timeframe:
            sql, params = sql + " AND timeframe = ?", [*params, timeframe]
        if not include_deleted:
            sql += " AND NOT deleted"
        out = [_from_record(r) for r in self.store.query_df(sql + " ORDER BY entry_ts, id", params)
               .to_dict("records")]
        return [a for a in out if tag is None or tag in a.tags]

    def history(self, ann_id: str) -> builtins.list[Annotation]:
        df = self.store.query_df("SELECT * FROM annotations WHERE id = ? ORDER BY version", [ann_id])
        return [_from_record(r) for r in df.to_dict("records")]

    def upsert(self, a: Annotation) -> Annotation:
        """Imports: a new id is added; a known id gets a new version only if something changed."""
        cur = self._current(a.id)
        if cur is None:
            return self.add(a)
        same = replace(a, version=cur.version, created_ms=cur.created_ms, updated_ms=cur.updated_ms)
        if same == cur:
            return cur
        fields = {k: getattr(a, k) for k in ("entry_ts", "exit_ts", "entry_price", "exit_price", "direction",
                                             "spans", "notes", "tags", "author", "deleted")}
        return self.update(a.id, **fields)

    def freeze(self, name: str, annotations: builtins.list[Annotation]) -> int:
        """A named set of these annotations AT THEIR CURRENT VERSIONS (a fixed validation set: later edits
        do not change it). Refuses an existing name or an empty set."""
        if not name or not annotations:
            raise AnnotationError("a frozen set needs a name and at least one annotation")
        if self.store.query_one("SELECT count(*) FROM annotation_sets WHERE name = ?", [name]) != (0,):
            raise AnnotationError(f"annotation set {name!r} already exists")
        now = _now_ms()
        with self.store.transaction() as con:
            for a in annotations:
                con.execute("INSERT INTO annotation_sets VALUES (?, ?, ?, ?)", [name, a.id, a.version, now])
        return len(annotations)

    def load_set(self, name: str) -> builtins.list[Annotation]:
        df = self.store.query_df(
            "SELECT a.* FROM annotation_sets s JOIN annotations a ON a.id = s.id AND a.version = s.version "
            "WHERE s.name = ? ORDER BY a.entry_ts, a.id", [name])
        if df.empty:
            have = self.store.query_df("SELECT DISTINCT name FROM annotation_sets ORDER BY name")["name"].tolist()
            raise AnnotationError(f"no annotation set {name!r} (sets: {', '.join(have) or 'none'})")
        return [_from_record(r) for r in df.to_dict("records")]

    def sets(self) -> dict[str, int]:
        df = self.store.query_df("SELECT name, count(*) AS n FROM annotation_sets GROUP BY name ORDER BY name")
        return dict(zip(df["name"], df["n"].astype(int), strict=True))

    # ---------------------------------------------------------------- internals
    def _current(self, ann_id: str) -> Annotation | None:
        df = self.store.query_df("SELECT * FROM annotations WHERE id = ? AND current", [ann_id])
        return _from_record(df.to_dict("records")[0]) if len(df) else None

    def _insert(self, a: Annotation) -> None:
        self.store.execute(f"INSERT INTO annotations ({', '.join(_COLS)}) VALUES ({', '.join('?' * len(_COLS))})",
                           _row(a))

    def _replace(self, old: Annotation, new: Annotation) -> None:
        with self.store.transaction() as con:
            con.execute("UPDATE annotations SET current = false WHERE id = ? AND version = ?", [old.id, old.version])
            con.execute(f"INSERT INTO annotations ({', '.join(_COLS)}) VALUES ({', '.join('?' * len(_COLS))})",
                        _row(new))
