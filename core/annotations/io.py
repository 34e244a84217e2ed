"""Export / import of annotations: JSON lines of cases, CSV of trades, Label Studio JSON both ways.

* Cases JSONL: one line per case -- the annotation (full), the bar, its label and class, the trade's
  outcome and the features (flat and regime by name, the multi-timeframe windows as [T][L][F] lists,
  the same numbers the live experts get). Importing reads the annotations back (one per id).
* Trades CSV: one row per annotation (TradingView Strategy-Tester-like columns), for spreadsheets.
* Label Studio: one task per annotation with ``data`` naming the series and our fields, and one
  ``timeserieslabels`` region per label span (start/end as bar open times in ms). Tasks made in Label
  Studio without our fields come in too: the entry is the first span's start, the exit the last span's
  end, prices the closes of those bars (``snap``), the direction from the labels' class or the prices.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from core.annotations.cases import CLASS_NAMES, CaseSet
from core.annotations.model import LABELS, Annotation, LabelSpan

TRADE_COLUMNS = ("id", "exchange", "symbol", "timeframe", "direction", "entry_time", "entry_ts", "entry_price",
                 "exit_time", "exit_ts", "exit_price", "pnl_pct", "holding_bars", "mfe_pct", "mae_pct", "notes",
                 "tags", "author")
LS_FROM, LS_TO = "label", "ts"  # names of the Label Studio labelling config's tags (see label_studio_config)


def _r(x: float) -> float:
    return float(np.round(float(x), 6))


def case_lines(cases: CaseSet, annotations: dict[str, Annotation]) -> Iterator[dict[str, Any]]:
    spec, b = cases.batch.spec, cases.batch
    for i in range(len(cases)):
        aid = str(cases.annotation_id[i])
        o = cases.outcomes[aid]
        yield {
            "annotation": annotations[aid].to_dict(),
            "ts": int(b.ts[i]), "close": float(b.close[i]), "label": str(cases.label[i]),
            "target": CLASS_NAMES[int(cases.target[i])], "class": int(cases.target[i]),
            "outcome": {"direction": o.direction, "pnl_pct": o.pnl_pct, "holding_bars": o.holding_bars,
                        "holding_ms": o.holding_ms, "mfe_pct": o.mfe_pct, "mae_pct": o.mae_pct,
                        "exit_price": o.exit_price},
            "features": {
                "timeframes": list(spec.timeframes), "bar_features": list(spec.bar_features),
                "flat": {n: float(v) for n, v in zip(spec.flat_features, b.flat[i].tolist(), strict=True)},
                "regime": {n: float(v) for n, v in zip(spec.regime_features, b.regime[i].tolist(), strict=True)},
                "windows": b.windows[i].tolist(),
            },
        }


def write_cases_jsonl(path: Path, cases: CaseSet, annotations: Iterable[Annotation]) -> int:
    by_id = {a.id: a for a in annotations}
    n = 0
    with Path(path).open("w", encoding="utf-8") as fh:
        for line in case_lines(cases, by_id):
            fh.write(json.dumps(line, separators=(",", ":")) + "\n")
            n += 1
    return n


def read_jsonl_annotations(path: Path) -> list[Annotation]:
    """Annotations from a cases JSONL (or plain annotation lines), first occurrence of each id."""
    out: dict[str, Annotation] = {}
    with Path(path).open(encoding="utf-8") as fh:
        for no, raw in enumerate(fh, 1):
            if not raw.strip():
                continue
            try:
                obj = json.loads(raw)
                d = obj.get("annotation", obj) if isinstance(obj, dict) else None
                if not isinstance(d, dict):
                    raise ValueError("not a JSON object")
                a = Annotation.from_dict(d)
            except (ValueError, KeyError, TypeError) as exc:
                raise ValueError(f"{path}:{no}: not an annotation line ({exc})") from None
            out.setdefault(a.id, a)
    return list(out.values())


def write_trades_csv(path: Path, rows: Iterable[tuple[Annotation, Any]]) -> int:
    """rows: (annotation, Outcome) pairs."""
    import pandas as pd

    n = 0
    with Path(path).open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(TRADE_COLUMNS)
        for a, o in rows:
            iso = [pd.Timestamp(t, unit="ms", tz="UTC").isoformat() for t in (a.entry_ts, a.exit_ts)]
            w.writerow([a.id, a.exchange, a.symbol, a.timeframe, a.direction, iso[0], a.entry_ts, a.entry_price,
                        iso[1], a.exit_ts, a.exit_price, _r(o.pnl_pct), o.holding_bars, _r(o.mfe_pct),
                        _r(o.mae_pct), a.notes, ";".join(a.tags), a.author])
            n += 1
    return n


def read_trades_csv(path: Path) -> list[Annotation]:
    out = []
    with Path(path).open(newline="", encoding="utf-8") as fh:
        for no, r in enumerate(csv.DictReader(fh), 2):
            try:
                out.append(Annotation(
                    id=r["id"], exchange=r["exchange"], symbol=r["symbol"], timeframe=r["timeframe"],
                    direction=r["direction"], entry_ts=int(r["entry_ts"]), exit_ts=int(r["exit_ts"]),
                    entry_price=float(r["entry_price"]), exit_price=float(r["exit_price"]), notes=r.get("notes", ""),
                    tags=tuple(t for t in (r.get("tags") or "").split(";") if t), author=r.get("author", "")))
            except (KeyError, ValueError) as exc:
                raise ValueError(f"{path}:{no}: bad trade row ({exc})") from None
    return out


# ---------------------------------------------------------------- Label Studio


def label_studio_config() -> str:
    """The labelling config our export matches (paste into a Label Studio project)."""
    labels = "".join(f'<Label value="{x}"/>' for x in LABELS)
    return (f'<View><TimeSeriesLabels name="{LS_FROM}" toName="{LS_TO}">{labels}</TimeSeriesLabels>'
            f'<TimeSeries name="{LS_TO}" valueType="url" value="$csv" timeColumn="ts">'
            '<Channel column="close"/></TimeSeries></View>')


def to_label_studio(annotations: Iterable[Annotation], csv_url: str = "") -> list[dict[str, Any]]:
    tasks = []
    for a in annotations:
        meta = {k: v for k, v in a.to_dict().items() if k != "spans"}
        result = [{
            "id": f"{a.id}-{k}", "from_name": LS_FROM, "to_name": LS_TO, "type": "timeserieslabels",
            "value": {"start": s.start_ts, "end": s.end_ts, "instant": s.start_ts == s.end_ts,
                      "timeserieslabels": [s.label]},
        } for k, s in enumerate(a.spans)]
        tasks.append({"data": {"csv": csv_url, "moe_annotation": meta},
                      "annotations": [{"result": result, "completed_by": a.author or None}]})
    return tasks


def _ms(v: Any) -> int:
    if isinstance(v, int | float) and not isinstance(v, bool):
        return int(v)
    import pandas as pd

    return int(pd.Timestamp(v).tz_localize("UTC").value // 1_000_000) if pd.Timestamp(v).tzinfo is None \
        else int(pd.Timestamp(v).value // 1_000_000)


def from_label_studio(tasks: list[dict[str, Any]], *, snap_fn: Any = None,
                      default: dict[str, str] | None = None) -> list[Annotation]:
    """Annotations from Label Studio tasks (JSON export). Tasks of our export carry ``moe_annotation``;
    others need ``snap_fn(symbol_key_fields, entry_ms, exit_ms, direction, spans) -> Annotation`` and the
    series in ``task.data`` (exchange, symbol, timeframe) or ``default``."""
    out = []
    for k, task in enumerate(tasks):
        data = task.get("data", {}) or {}
        anns = task.get("annotations") or task.get("completions") or []
        if not anns:
            continue
        spans = []
        for reg in anns[-1].get("result", []):
            if reg.get("type") != "timeserieslabels":
                continue
            v = reg["value"]
            for label in v.get("timeserieslabels", []):
                if label not in LABELS:
                    raise ValueError(f"task {k}: label {label!r} is not one of {', '.join(LABELS)}")
                spans.append(LabelSpan(label, _ms(v["start"]), _ms(v["end"])))
        spans.sort(key=lambda s: (s.start_ts, s.end_ts))
        if not spans:
            continue
        meta = data.get("moe_annotation")
        if isinstance(meta, dict):
            out.append(Annotation.from_dict({**meta, "spans": [{"label": s.label, "start_ts": s.start_ts,
                                                                 "end_ts": s.end_ts} for s in spans]}))
            continue
        if snap_fn is None:
            raise ValueError(f"task {k}: not from our export; importing it needs the store (prices of the bars)")
        series = {**(default or {}), **{x: data[x] for x in ("exchange", "symbol", "timeframe") if x in data}}
        missing = [x for x in ("exchange", "symbol", "timeframe") if x not in series]
        if missing:
            raise ValueError(f"task {k}: data lacks {', '.join(missing)} (or pass them as defaults)")
        direction = "none" if all(s.label == "NO_TRADE" for s in spans) else data.get("direction")
        out.append(snap_fn(series, spans[0].start_ts, max(s.end_ts for s in spans), direction, tuple(spans)))
    return out
