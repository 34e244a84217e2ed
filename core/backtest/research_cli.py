"""``main_backtest.py walkforward`` and ``main_backtest.py sweep``: argparse over
core/backtest/walkforward.py and core/backtest/sweep.py. The fold trainer comes from the composition
root (compose.walkforward_trainer): core never imports NN."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from core.backtest.cli import _parse_time, _progress_bar
from core.backtest.runner import default_thresholds, new_run_id, with_costs
from core.config import AppConfig, ModelsConfig, load_config, load_models
from core.types import SeriesKey

TrainerFactory = Callable[..., Any]  # (models, app, key, names, *, epochs, max_steps, retrain_gate) -> FoldTrainer


def _names(v: list[str] | None) -> list[str]:
    return [x for a in (v or ["cnn,transformer,dqn"]) for x in a.split(",") if x]


def cmd_walkforward(args: argparse.Namespace) -> int:
    from core.backtest.engine import spec_from_config
    from core.backtest.walkforward import make_folds, parse_duration, run_walkforward
    from core.data.store import MarketStore

    cfg: AppConfig = with_costs(load_config(args.config), args.fees_bps, args.slippage_bps)
    models: ModelsConfig = load_models(args.models)
    try:
        train_ms, test_ms = parse_duration(args.train), parse_duration(args.test)
        step_ms = parse_duration(args.step) if args.step else None
    except ValueError as exc:
        raise SystemExit(f"walkforward: {exc}") from None
    key = SeriesKey(args.exchange or cfg.data.exchange, args.symbol or cfg.data.symbols[0],
                    args.timeframe or cfg.data.base_timeframe)
    db = Path(args.db) if args.db else cfg.resolve(cfg.data.db_path)
    if not db.exists():
        raise SystemExit(f"walkforward: database {db} does not exist; import candles first (main_backtest.py data import)")
    with MarketStore(db, read_only=True) as store:
        candles = store.candles(key, _parse_time(getattr(args, "from")), _parse_time(args.to))
    if candles.empty:
        raise SystemExit(f"walkforward: no candles for {key.exchange} {key.symbol} {key.timeframe} in {db}")
    thresholds = default_thresholds(cfg, args.buy_threshold, args.sell_threshold, args.min_confidence)
    spec = spec_from_config(cfg, models, exchange=key.exchange, symbol=key.symbol, timeframe=key.timeframe,
                            thresholds=thresholds, mode="fast")
    try:
        folds = make_folds(candles["ts"].to_numpy(), key.timeframe, train_ms, test_ms, step_ms, args.max_folds)
        trainer = args.trainer(models, cfg, key, _names(args.experts), epochs=args.epochs, max_steps=args.max_steps,
                               retrain_gate=args.retrain_gate)
        run_id = new_run_id()
        out = (Path(args.reports_dir) if args.reports_dir else cfg.resolve(cfg.backtest.reports_dir)) / "walkforward" / run_id
        with _progress_bar() as progress:
            res = run_walkforward(candles, folds, trainer, spec, cfg.execution, cfg.risk, warm_start=args.warm_start,
                                  run_id=run_id, cache_dir=out, progress=progress)
    except ValueError as exc:
        raise SystemExit(f"walkforward: {exc}") from None
    print_walkforward(res.summary())
    print(f"walk-forward {run_id}: {out / 'report.json'}\n  cached predictions: {out / 'predictions.npz'} "
          f"(re-tune thresholds: main_backtest.py sweep SPACE.yml with predictions: {out})")
    return 0


def print_walkforward(s: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"walk-forward {s['run_id']}: {s['spec']['symbol']} {s['spec']['timeframe']}, "
                    f"{len(s['folds'])} folds, {s['bars']} out-of-sample bars")
    for c in ("fold", "bars", "return", "buy & hold", "fills", "BUY", "SELL", "train s"):
        t.add_column(c, justify="right")
    for f in s["folds"]:
        m = f["metrics"]
        t.add_row(str(f["index"]), str(f["bars"]), f"{m['return']:+.4%}", f"{m['buy_and_hold_return']:+.4%}",
                  str(m["fills"]), str(m["buy_decisions"]), str(m["sell_decisions"]), f"{f['train_s']:.1f}")
    m, b = s["metrics"], s["baselines"]
    t.add_row("total", str(s["bars"]), f"{m['total_return']:+.4%}", f"{b['buy_and_hold_return']:+.4%}",
              str(m["n_fills"]), str(m["buy_decisions"]), str(m["sell_decisions"]), "")
    con = Console()
    con.print(t)
    if "fused" in b:
        con.print(f"log loss: fused {b['fused']['log_loss']:.4f} vs climatology {b['climatology']['log_loss']:.4f}; "
                  f"accuracy: fused {b['fused']['accuracy']:.4f} vs climatology {b['climatology']['accuracy']:.4f} "
                  f"({b['n_scored']} bars)")
    a = s["attribution"]
    con.print("P&L by expert: " + ", ".join(f"{k} {v:+.2f}" for k, v in a["experts"].items())
              + f" (total {a['total_pnl']:+.2f})")
    con.print(f"model age at decision: median {s['model_age_min']['median']:.0f} min, "
              f"max {s['model_age_min']['max']:.0f} min")


def cmd_sweep(args: argparse.Namespace) -> int:
    from core.backtest.sweep import SweepError, load_space, run_sweep, sweep_paths

    cfg = load_config(args.config)
    models = load_models(args.models)
    try:
        space = load_space(Path(args.space), cfg, models)
        db = Path(args.db) if args.db else cfg.resolve(cfg.data.db_path)
        name = args.resume or args.name or f"{Path(args.space).stem}-{new_run_id()}"
        paths = sweep_paths(db, name)
        if args.resume and not paths.journal.exists():
            raise SweepError(f"no sweep named {args.resume!r} to resume ({paths.journal} does not exist)")
        summary = run_sweep(space, cfg, n_trials=args.trials, workers=args.workers, address=args.address,
                            paths=paths, name=name, models=models, train_trial=args.train_trial)
    except (SweepError, ValueError) as exc:
        raise SystemExit(f"sweep: {exc}") from None
    print(json.dumps({k: summary[k] for k in ("name", "kind", "trials", "pruned", "best", "pbo", "survivors")}, indent=2,
                     default=str))
    print(f"sweep {name}: {paths.result}\n  study: {paths.journal} (resume: --resume {name})")
    return 0


def register(sub: argparse._SubParsersAction, trainer: TrainerFactory, train_trial: Callable[..., Any] | None = None
             ) -> None:
    w = sub.add_parser("walkforward", help="walk-forward backtest: retrain every --step, trade the next --test")
    w.add_argument("--train", default="7d", help="train window (e.g. 7d, 12h)")
    w.add_argument("--test", default="1d", help="test window traded by each fold's models")
    w.add_argument("--step", default=None, help="fold step (default: --test)")
    w.add_argument("--experts", nargs="+", default=None, help="features experts (default cnn,transformer,dqn)")
    w.add_argument("--retrain-gate", action="store_true", help="fit the MoE gate per fold (default: online Hedge gate)")
    w.add_argument("--warm-start", action="store_true", help="fine-tune the previous fold's models instead of fresh ones")
    w.add_argument("--epochs", type=int, default=3, help="max epochs per fold (early stopping on the fold's val part)")
    w.add_argument("--max-steps", type=int, default=None, help="cap optimisation steps per epoch")
    w.add_argument("--max-folds", type=int, default=None)
    w.add_argument("--symbol", default=None)
    w.add_argument("--exchange", default=None)
    w.add_argument("--timeframe", default=None)
    w.add_argument("--from", dest="from", default=None, help="start (ISO UTC or ms)")
    w.add_argument("--to", default=None, help="end, exclusive")
    w.add_argument("--buy-threshold", type=float, default=None)
    w.add_argument("--sell-threshold", type=float, default=None)
    w.add_argument("--min-confidence", type=float, default=None)
    w.add_argument("--fees-bps", type=float, default=None)
    w.add_argument("--slippage-bps", type=float, default=None)
    w.add_argument("--db", default=None)
    w.add_argument("--reports-dir", default=None)
    w.set_defaults(func=cmd_walkforward, trainer=trainer)

    s = sub.add_parser("sweep", help="parameter sweep (Optuna on Ray): thresholds/risk over a walk-forward's cached "
                       "predictions, or horizons/dead zone/hyper-parameters with training trials")
    s.add_argument("space", help="SPACE.yml: predictions folder, sampler, parameter ranges")
    s.add_argument("--trials", type=int, default=200)
    s.add_argument("--workers", type=int, default=1, help="parallel Ray workers (CPUs) on this machine")
    s.add_argument("--address", default=None, help="an existing Ray cluster, e.g. ray://host:10001")
    s.add_argument("--resume", default=None, help="continue the sweep of this name")
    s.add_argument("--name", default=None, help="name of a new sweep (default: SPACE stem + time)")
    s.add_argument("--db", default=None, help="DuckDB file; the study journal lives next to it")
    s.set_defaults(func=cmd_sweep, train_trial=train_trial)
