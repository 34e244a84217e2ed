"""Sub-commands ``train`` and ``evaluate`` of main_backtest.py (offline, on candles in the store)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import pandas as pd

from core.config import load_config, load_models
from core.types import SeriesKey

log = logging.getLogger(__name__)


def _ms(text: str) -> int:
    """--from/--to: ISO date/time (UTC) or epoch milliseconds."""
    if text.isdigit():
        return int(text)
    try:
        ts = pd.Timestamp(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date/time or epoch ms: {text!r}") from None
    ts = ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")
    return int(ts.value // 1_000_000)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--symbol", default=None, help="ccxt symbol (default: first of data.symbols)")
    p.add_argument("--timeframe", default=None, help="base timeframe (default: data.base_timeframe)")
    p.add_argument("--exchange", default=None, help="exchange id of the stored series (default: data.exchange)")
    p.add_argument("--from", dest="start", type=_ms, default=None, help="first candle (ISO UTC or epoch ms)")
    p.add_argument("--to", dest="end", type=_ms, default=None, help="end, exclusive (ISO UTC or epoch ms)")
    p.add_argument("--db", default=None, help="DuckDB file (default: data.db_path)")
    p.add_argument("--models-dir", default=None, help="checkpoint folder (default: training.models_dir)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (default 1: these small models run fastest on one)")


def register(sub: argparse._SubParsersAction) -> None:
    t = sub.add_parser("train", help="train experts and/or the MoE gate offline on stored candles")
    t.add_argument("--experts", default="cnn,transformer,dqn,moe",
                   help="comma list of expert names from models.yml, plus 'moe' for the gate")
    _common(t)
    t.add_argument("--epochs", type=int, default=None, help="max epochs (early stopping on val log loss); default 10")
    t.add_argument("--max-steps", type=int, default=None, help="cap optimisation steps per epoch (quick runs)")
    t.add_argument("--patience", type=int, default=3, help="epochs without val improvement before stopping")
    t.add_argument("--no-progress", action="store_true", help="no progress bars")
    t.add_argument("--runs-dir", default=None, help="TensorBoard log folder (default: training.runs_dir)")
    t.add_argument("--kronos-preset", default="nano", help="train_kronos preset for --experts kronos (nano | nano-smoke)")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("evaluate", help="score experts, fused and climatology on the test split")
    e.add_argument("--experts", default=None, help="comma list (default: every enabled expert with a checkpoint)")
    _common(e)
    e.add_argument("--out", default=None, help="JSON report path (default: reports/eval_<ts>.json)")
    e.set_defaults(func=cmd_evaluate)


def _context(args: argparse.Namespace):
    import torch

    from core.data.store import MarketStore

    if args.threads < 1:
        raise SystemExit(f"--threads must be >= 1, got {args.threads}")
    torch.set_num_threads(args.threads)
    app = load_config(args.config)
    models = load_models(args.models)
    key = SeriesKey(args.exchange or app.data.exchange, args.symbol or app.data.symbols[0],
                    args.timeframe or app.data.base_timeframe)
    db = Path(args.db) if args.db else app.resolve(app.data.db_path)
    if not db.exists():
        raise SystemExit(f"database {db} does not exist: import candles first (main_backtest.py data import ...)")
    models_dir = Path(args.models_dir) if args.models_dir else app.resolve(app.training.models_dir)
    return app, models, key, MarketStore(db), models_dir


def cmd_train(args: argparse.Namespace) -> int:
    from NN.training.trainer import run_training

    app, models, key, store, models_dir = _context(args)
    names = [n.strip() for n in args.experts.split(",") if n.strip()]
    try:
        res = run_training(store, key, models, app, names, start_ms=args.start, end_ms=args.end,
                           epochs=args.epochs, models_dir=models_dir,
                           runs_dir=Path(args.runs_dir) if args.runs_dir else app.resolve(app.training.runs_dir),
                           progress=not args.no_progress, max_steps_per_epoch=args.max_steps,
                           patience=args.patience, kronos_preset=args.kronos_preset)
    except ValueError as exc:
        print(f"train: {exc}", file=sys.stderr)
        return 1
    finally:
        store.close()
    print(json.dumps(res, indent=2, default=float))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from NN.training.trainer import run_evaluation

    app, models, key, store, models_dir = _context(args)
    names = [n.strip() for n in args.experts.split(",")] if args.experts else None
    try:
        report = run_evaluation(store, key, models, app, start_ms=args.start, end_ms=args.end,
                                models_dir=models_dir, names=names)
    except ValueError as exc:
        print(f"evaluate: {exc}", file=sys.stderr)
        return 1
    finally:
        store.close()
    stamp = pd.Timestamp.now("UTC").strftime("%Y%m%dT%H%M%S")
    out = Path(args.out) if args.out else app.resolve(app.backtest.reports_dir) / f"eval_{stamp}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    table = Table(title=f"test split: {key.exchange} {key.symbol} {key.timeframe} (n={report['split']['test']['n']})")
    for col in ("model", "horizon", "n", "accuracy", "log_loss", "brier", "ece"):
        table.add_column(col, justify="left" if col == "model" else "right")
    rows = [(n, s) for n, s in report["experts"].items()]
    if "fused" in report:
        rows.append((f"fused ({report['fused']['gate']})", report["fused"]))
    rows += [(n, s) for n, s in report["baseline"].items()]
    for n, s in rows:
        table.add_row(n, str(s["horizon"]), str(s["n"]), f"{s['accuracy']:.4f}", f"{s['log_loss']:.4f}",
                      f"{s['brier']:.4f}", f"{s['ece']:.4f}")
    console = Console()
    console.print(table)
    for w in report.get("warnings", []):
        console.print(f"[yellow]warning:[/] {w}")
    console.print(f"report: {out}")
    return 0
