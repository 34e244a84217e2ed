"""``main_backtest.py annotations ...``: list, add, delete, export, import, freeze, evaluate.

Errors are one line (exit status 1); the store is the configured DuckDB file or --db.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import pandas as pd

from core.annotations import io
from core.annotations.model import DIRECTIONS, Annotation
from core.annotations.service import cases_of, outcome_of
from core.annotations.store import AnnotationError, AnnotationStore, snap
from core.backtest.engine import ComponentsFactory
from core.config import load_config, load_models
from core.data.files import cli_ms
from core.types import SeriesKey


def register(sub: argparse._SubParsersAction, components: ComponentsFactory) -> None:
    p = sub.add_parser("annotations", help="trade annotations: list, add, delete, export, import, freeze, evaluate")
    s = p.add_subparsers(dest="annotations_command", required=True)

    def common(q: argparse.ArgumentParser, series: bool = True) -> None:
        q.add_argument("--db", default=None, help="DuckDB file (default: data.db_path)")
        if series:
            q.add_argument("--symbol", default=None, help="only this symbol")
            q.add_argument("--timeframe", default=None, help="only this timeframe")
            q.add_argument("--tag", default=None, help="only annotations with this tag")
            q.add_argument("--set", dest="set_name", default=None, help="a frozen annotation set instead")

    q = s.add_parser("list", help="current annotations with P&L %%, holding, MFE / MAE")
    common(q)
    q.set_defaults(func=cmd_list)
    q = s.add_parser("add", help="annotate a trade: entry and exit times snap to their candles (closes)")
    common(q, series=False)
    q.add_argument("--symbol", default=None, help="ccxt symbol (default: first of data.symbols)")
    q.add_argument("--timeframe", default=None, help="default: data.base_timeframe")
    q.add_argument("--exchange", default=None, help="default: data.exchange")
    q.add_argument("--entry", type=cli_ms, required=True, help="entry time (ISO UTC or epoch ms)")
    q.add_argument("--exit", type=cli_ms, required=True, help="exit time (ISO UTC or epoch ms)")
    q.add_argument("--entry-price", type=float, default=None)
    q.add_argument("--exit-price", type=float, default=None)
    q.add_argument("--direction", choices=DIRECTIONS, default=None, help="default: from the two prices")
    q.add_argument("--notes", default="")
    q.add_argument("--tags", default="", help="comma list")
    q.add_argument("--author", default="")
    q.set_defaults(func=cmd_add)
    q = s.add_parser("delete", help="soft-delete an annotation (its history stays)")
    common(q, series=False)
    q.add_argument("id")
    q.set_defaults(func=cmd_delete)
    q = s.add_parser("export", help="cases JSONL | trades CSV | Label Studio JSON")
    common(q)
    q.add_argument("--format", choices=("jsonl", "csv", "label-studio"), required=True)
    q.add_argument("--out", required=True)
    q.set_defaults(func=cmd_export)
    q = s.add_parser("import", help="annotations from cases JSONL, trades CSV or Label Studio JSON")
    common(q, series=False)
    q.add_argument("path")
    q.add_argument("--format", choices=("auto", "jsonl", "csv", "label-studio"), default="auto")
    q.add_argument("--exchange", default=None, help="Label Studio tasks without a series: default data.exchange")
    q.add_argument("--symbol", default=None, help="... default: first of data.symbols")
    q.add_argument("--timeframe", default=None, help="... default: data.base_timeframe")
    q.set_defaults(func=cmd_import)
    q = s.add_parser("freeze", help="freeze the selected annotations (current versions) as a named validation set")
    common(q)
    q.add_argument("name")
    q.set_defaults(func=cmd_freeze)
    q = s.add_parser("evaluate", help="replay annotated periods through an expert or the fused decision")
    common(q)
    q.add_argument("--model", default="fused", help="an expert name from models.yml, or 'fused' (default)")
    q.add_argument("--k", type=int, default=2, help="entry tolerance in bars (default 2)")
    q.add_argument("--out", default=None, help="JSON report path (default: print only)")
    q.add_argument("--models-dir", default=None, help="checkpoint folder (default: training.models_dir)")
    q.set_defaults(func=cmd_evaluate, components=components)


def _open(args: argparse.Namespace) -> tuple[Any, AnnotationStore]:
    from core.data.store import MarketStore

    cfg = load_config(args.config)
    db = Path(args.db) if args.db else cfg.resolve(cfg.data.db_path)
    if not db.exists():
        raise SystemExit(f"database {db} does not exist: import candles first (main_backtest.py data import ...)")
    try:
        return cfg, AnnotationStore(MarketStore(db))
    except RuntimeError as exc:
        raise SystemExit(str(exc)) from None


def selected(ann: AnnotationStore, args: argparse.Namespace) -> list[Annotation]:
    if getattr(args, "set_name", None):
        return ann.load_set(args.set_name)
    return ann.list(args.symbol, args.timeframe, tag=args.tag)


def _run(args: argparse.Namespace, fn: Any) -> int:
    cfg, ann = _open(args)
    try:
        return int(fn(cfg, ann) or 0)
    except (AnnotationError, ValueError, KeyError) as exc:
        print(f"annotations {args.annotations_command}: {str(exc).strip(chr(39))}")
        return 1
    finally:
        ann.store.close()


def _fmt_ts(ts: int) -> str:
    return pd.Timestamp(ts, unit="ms", tz="UTC").strftime("%Y-%m-%d %H:%M")


def cmd_list(args: argparse.Namespace) -> int:
    def go(cfg: Any, ann: AnnotationStore) -> int:
        rows = selected(ann, args)
        for a in rows:
            o = outcome_of(ann.store, a)
            print(f"{a.id}  v{a.version}  {a.symbol} {a.timeframe}  {a.direction:5}  {_fmt_ts(a.entry_ts)} "
                  f"{a.entry_price:g} -> {_fmt_ts(a.exit_ts)} {a.exit_price:g}  pnl {o.pnl_pct:+.3f}%  "
                  f"{o.holding_bars} bars  mfe {o.mfe_pct:.3f}%  mae {o.mae_pct:.3f}%  {','.join(a.tags)}")
        print(f"{len(rows)} annotation(s)")
        return 0
    return _run(args, go)


def cmd_add(args: argparse.Namespace) -> int:
    def go(cfg: Any, ann: AnnotationStore) -> int:
        key = SeriesKey(args.exchange or cfg.data.exchange, args.symbol or cfg.data.symbols[0],
                        args.timeframe or cfg.data.base_timeframe)
        a = ann.add(snap(ann.store, key, args.entry, args.exit, entry_price=args.entry_price,
                         exit_price=args.exit_price, direction=args.direction, notes=args.notes,
                         tags=tuple(t for t in args.tags.split(",") if t), author=args.author))
        o = outcome_of(ann.store, a)
        print(f"added {a.id}: {a.direction} {_fmt_ts(a.entry_ts)} {a.entry_price:g} -> {_fmt_ts(a.exit_ts)} "
              f"{a.exit_price:g}, pnl {o.pnl_pct:+.3f}%")
        return 0
    return _run(args, go)


def cmd_delete(args: argparse.Namespace) -> int:
    def go(cfg: Any, ann: AnnotationStore) -> int:
        a = ann.delete(args.id)
        print(f"deleted {a.id} (version {a.version}; history kept)")
        return 0
    return _run(args, go)


def cmd_export(args: argparse.Namespace) -> int:
    def go(cfg: Any, ann: AnnotationStore) -> int:
        rows = selected(ann, args)
        if not rows:
            raise ValueError("nothing to export (no annotations match)")
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        if args.format == "label-studio":
            out.write_text(json.dumps(io.to_label_studio(rows), indent=1))
            n = len(rows)
        elif args.format == "csv":
            n = io.write_trades_csv(out, [(a, outcome_of(ann.store, a)) for a in rows])
        else:
            models = load_models(args.models)
            n = 0
            with out.open("w", encoding="utf-8") as fh:
                for cs in cases_of(ann.store, models.features, rows):
                    for line in io.case_lines(cs, {a.id: a for a in rows}):
                        fh.write(json.dumps(line, separators=(",", ":")) + "\n")
                        n += 1
        print(f"wrote {n} {'cases' if args.format == 'jsonl' else 'rows'} of {len(rows)} annotation(s) to {out}")
        return 0
    return _run(args, go)


def cmd_import(args: argparse.Namespace) -> int:
    def go(cfg: Any, ann: AnnotationStore) -> int:
        path = Path(args.path)
        fmt = args.format
        if fmt == "auto":
            fmt = {".csv": "csv", ".jsonl": "jsonl", ".json": "label-studio"}.get(path.suffix.lower(), "")
            if not fmt:
                raise ValueError(f"cannot tell the format of {path.name}; pass --format")
        if fmt == "csv":
            anns = io.read_trades_csv(path)
        elif fmt == "jsonl":
            anns = io.read_jsonl_annotations(path)
        else:
            tasks = json.loads(path.read_text())
            default = {"exchange": args.exchange or cfg.data.exchange, "symbol": args.symbol or cfg.data.symbols[0],
                       "timeframe": args.timeframe or cfg.data.base_timeframe}
            anns = io.from_label_studio(tasks if isinstance(tasks, list) else [tasks], default=default,
                                        snap_fn=lambda ser, e0, e1, d, spans: snap(
                                            ann.store, SeriesKey(ser["exchange"], ser["symbol"], ser["timeframe"]),
                                            e0, e1, direction=d, spans=spans))
        before = {a.id: a.version for a in ann.list(include_deleted=True)}
        stored = [ann.upsert(a) for a in anns]  # refuses the first bad one, keeping those already stored
        new = sum(a.id not in before for a in stored)
        changed = sum(a.id in before and a.version != before[a.id] for a in stored)
        print(f"imported {len(stored)} annotation(s): {new} new, {changed} changed, "
              f"{len(stored) - new - changed} unchanged")
        return 0
    return _run(args, go)


def cmd_freeze(args: argparse.Namespace) -> int:
    def go(cfg: Any, ann: AnnotationStore) -> int:
        n = ann.freeze(args.name, ann.list(args.symbol, args.timeframe, tag=args.tag))
        print(f"froze {n} annotation(s) as set {args.name!r}")
        return 0
    return _run(args, go)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from core.annotations.replay import replay

    def go(cfg: Any, ann: AnnotationStore) -> int:
        rows = selected(ann, args)
        if not rows:
            raise ValueError("no annotations to evaluate against")
        models = load_models(args.models)
        ev, candles, info = replay(rows, cfg=cfg, models=models, store=ann.store, components=args.components,
                                   model=args.model, k=args.k,
                                   models_dir=Path(args.models_dir) if args.models_dir else None)
        report = {"model": args.model, "experts": info, **ev.totals(), "per_annotation": ev.per_annotation}
        _print_eval(report)
        if args.out:
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(json.dumps(report, indent=2, default=str))
            print(f"report: {args.out}")
        return 0
    return _run(args, go)


def _f(v: float | None, spec: str = ".3f") -> str:
    return "-" if v is None else format(v, spec)


def _print_eval(r: dict[str, Any]) -> None:
    untrained = [n for n, i in r["experts"].items() if isinstance(i, dict) and not i.get("trained", True)]
    print(f"replay of {r['annotations']} annotation(s) through {r['model']} (entry tolerance +-{r['k']} bars)"
          + (f"; untrained: {', '.join(untrained)}" if untrained else ""))
    for side in ("BUY", "SELL"):
        s = r[side]
        print(f"  {side:4}  predicted {s['predicted']:3}  annotated {s['annotated']:3}  matched {s['matched']:3}  "
              f"precision {_f(s['precision'])}  recall {_f(s['recall'])}  F1 {_f(s['f1'])}")
    labels = r["confusion"]["labels"]
    print("  confusion (rows annotated, columns predicted): " + " ".join(f"{x:>8}" for x in labels))
    for name, row in zip(labels, r["confusion"]["rows_annotated_cols_predicted"], strict=True):
        print(f"  {name:>46} " + " ".join(f"{v:8d}" for v in row))
    print(f"  label accuracy {_f(r['label_accuracy'])}   P&L annotated {r['annotated_pnl_pct']:+.3f}%   "
          f"captured {r['captured_pnl_pct']:+.3f}%")
