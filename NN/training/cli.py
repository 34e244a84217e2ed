"""Sub-commands ``train`` and ``evaluate`` of main_backtest.py (offline, on candles in the store)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

import pandas as pd

from core.config import load_config, load_models
from core.data.files import cli_ms
from core.types import SeriesKey

log = logging.getLogger(__name__)




def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--symbol", default=None, help="ccxt symbol (default: first of data.symbols)")
    p.add_argument("--timeframe", default=None, help="base timeframe (default: data.base_timeframe)")
    p.add_argument("--exchange", default=None, help="exchange id of the stored series (default: data.exchange)")
    p.add_argument("--from", dest="start", type=cli_ms, default=None, help="first candle (ISO UTC or epoch ms)")
    p.add_argument("--to", dest="end", type=cli_ms, default=None, help="end, exclusive (ISO UTC or epoch ms)")
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
    t.add_argument("--annotations", action="store_true",
                   help="add the series' annotated trades (wholly in the train split): labelled cases for "
                        "cnn/transformer, demonstrations in the DQN's replay buffer")
    t.add_argument("--annotation-set", default=None, help="with --annotations: only this frozen annotation set")
    t.add_argument("--weight", type=int, default=5, help="with --annotations: times each annotated bar counts for cnn/transformer (5); "
                        "the DQN's share of demonstrations is its demo_fraction param")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("evaluate", help="score experts, fused and climatology on the test split")
    e.add_argument("--experts", default=None, help="comma list (default: every enabled expert with a checkpoint)")
    _common(e)
    e.add_argument("--out", default=None, help="JSON report path (default: reports/eval_<ts>.json)")
    e.add_argument("--markets", default=None,
                   help="comma list exchange:SYMBOL[@timeframe] (e.g. binanceus:BTC/USD,binance:XRP/ETH): "
                        "evaluate the current checkpoints on each market's test split and compare")
    e.add_argument("--warmup", type=int, default=None,
                   help="bars before the test split the online parts run over (default: all of them)")
    e.add_argument("--walk", type=int, default=0, help="also score the test split in this many time windows")
    e.add_argument("--orderbook-ablation", action="store_true",
                   help="compare the features with and without the order-book block (needs features.orderbook: true "
                        "and recorded books over the span)")
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
    annotations = None
    if args.annotations or args.annotation_set:
        from core.annotations.store import AnnotationError, AnnotationStore

        ann = AnnotationStore(store)
        try:
            annotations = (ann.load_set(args.annotation_set) if args.annotation_set
                           else ann.list(key.symbol, key.timeframe))
        except AnnotationError as exc:
            store.close()
            print(f"train: {exc}")
            return 1
        annotations = [a for a in annotations if SeriesKey(a.exchange, a.symbol, a.timeframe) == key]
    try:
        res = run_training(store, key, models, app, names, start_ms=args.start, end_ms=args.end,
                           epochs=args.epochs, models_dir=models_dir,
                           runs_dir=Path(args.runs_dir) if args.runs_dir else app.resolve(app.training.runs_dir),
                           progress=not args.no_progress, max_steps_per_epoch=args.max_steps,
                           patience=args.patience, kronos_preset=args.kronos_preset,
                           annotations=annotations, annotation_weight=args.weight)
    except ValueError as exc:
        print(f"train: {exc}", file=sys.stderr)
        return 1
    finally:
        store.close()
    print(json.dumps(res, indent=2, default=float))
    return 0


def parse_markets(text: str, default_exchange: str, default_tf: str) -> list[SeriesKey]:
    """'binanceus:BTC/USD,binance:XRP/ETH@1m' -> series keys (the exchange and timeframe default)."""
    keys = []
    for item in (t.strip() for t in text.split(",")):
        if not item:
            continue
        ex, _, rest = item.rpartition(":")
        sym, _, tf = rest.partition("@")
        if not sym or "/" not in sym:
            raise SystemExit(f"--markets: {item!r} is not exchange:BASE/QUOTE[@timeframe]")
        keys.append(SeriesKey(ex or default_exchange, sym, tf or default_tf))
    if not keys:
        raise SystemExit("--markets: no market given")
    return keys


def cmd_evaluate(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from NN.training.trainer import run_evaluation

    if args.walk < 0 or (args.warmup is not None and args.warmup < 0):
        raise SystemExit("--walk and --warmup must be >= 0")
    app, models, key, store, models_dir = _context(args)
    names = [n.strip() for n in args.experts.split(",")] if args.experts else None
    if args.markets:
        markets = parse_markets(args.markets, key.exchange, key.timeframe)
        try:
            return _evaluate_markets(args, app, models, store, models_dir, names, markets)
        finally:
            store.close()
    if getattr(args, "orderbook_ablation", False):
        from NN.training.book_ablation import run_orderbook_ablation

        try:
            res = run_orderbook_ablation(store, key, models, app, start_ms=args.start, end_ms=args.end)
        except ValueError as exc:
            print(f"evaluate: {exc}")
            return 1
        finally:
            store.close()
        print(json.dumps(res, indent=2))
        return 0
    try:
        report = run_evaluation(store, key, models, app, start_ms=args.start, end_ms=args.end,
                                models_dir=models_dir, names=names, warmup=args.warmup, walk=args.walk)
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
    if "gate_static" in report:
        rows.append((f"gate alone ({report['gate_static']['gate']}, static)", report["gate_static"]))
    if "fused" in report:
        rows.append((f"fused ({report['fused']['gate']}, online + base rate)", report["fused"]))
    rows += [(n, s) for n, s in report["baseline"].items()]
    for n, s in rows:
        table.add_row(n, str(s["horizon"]), str(s["n"]), f"{s['accuracy']:.4f}", f"{s['log_loss']:.4f}",
                      f"{s['brier']:.4f}", f"{s['ece']:.4f}")
    console = Console()
    console.print(table)
    for w in report.get("warnings", []):
        console.print(f"[yellow]warning:[/] {w}")
    for w_ in report.get("walk", []):
        console.print(f"window {pd.Timestamp(w_['from_ts'], unit='ms')} .. {pd.Timestamp(w_['to_ts'], unit='ms')}: "
                      f"fused {w_['fused']['log_loss']:.4f}, climatology {w_['climatology']['log_loss']:.4f}, "
                      f"best expert {w_['best_expert']['name']} {w_['best_expert']['log_loss']:.4f}")
    console.print(f"report: {out}")
    return 0


def _evaluate_markets(args: argparse.Namespace, app: Any, models: Any, store: Any, models_dir: Path,
                      names: list[str] | None, markets: list[SeriesKey]) -> int:
    """``evaluate --markets``: the same checkpoints on each market; one table, the worst market and
    plain sentences where fused loses to the base rate. A market that cannot be evaluated is a row
    with its one-line reason; the others go on."""
    from rich.console import Console
    from rich.table import Table

    from NN.training.evaluation import market_summary, verdicts
    from NN.training.trainer import run_evaluation

    reports: dict[str, Any] = {}
    rows: list[dict[str, Any]] = []
    for k in markets:
        label = f"{k.exchange}:{k.symbol}@{k.timeframe}"
        try:
            rep = run_evaluation(store, k, models, app, start_ms=args.start, end_ms=args.end,
                                 models_dir=models_dir, names=names, warmup=args.warmup, walk=args.walk)
        except (ValueError, KeyError) as exc:
            rows.append({"market": label, "error": str(exc).splitlines()[0]})
            continue
        reports[label] = rep
        rows.append(market_summary(label, rep))
    lines = verdicts(rows)
    ok = [r for r in rows if "error" not in r]
    summary = {"markets": rows, "verdicts": lines,
               "worst_market": max(ok, key=lambda r: r["fused_minus_climatology"])["market"] if ok else None,
               "reports": reports}
    stamp = pd.Timestamp.now("UTC").strftime("%Y%m%dT%H%M%S")
    out = Path(args.out) if args.out else app.resolve(app.backtest.reports_dir) / f"eval_markets_{stamp}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=2, default=float))
    table = Table(title="test splits, current checkpoints, online parts running (log loss; lower is better)")
    for col in ("market", "n", "fused", "climatology", "rolling clim.", "best expert", "fused ECE",
                "clim. weight", "fused - clim."):
        table.add_column(col, justify="left" if col == "market" else "right")
    for r in ok:
        table.add_row(r["market"], str(r["n"]), f"{r['fused_log_loss']:.4f}", f"{r['climatology_log_loss']:.4f}",
                      f"{r.get('rolling_climatology_log_loss', float('nan')):.4f}",
                      f"{r['best_expert']} {r['best_expert_log_loss']:.4f}", f"{r['fused_ece']:.4f}",
                      f"{r['climatology_weight']:.2f}", f"{r['fused_minus_climatology']:+.4f}")
    console = Console()
    if ok:
        console.print(table)
    for line in lines:
        console.print(line)
    console.print(f"report: {out}")
    return 0 if ok else 1
