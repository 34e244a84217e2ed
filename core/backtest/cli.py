"""``main_backtest.py run`` (backtest) and ``main_backtest.py report ID`` (reopen a run): argparse over
``core.backtest.runner.run_backtest`` and ``core.backtest.report``."""

from __future__ import annotations

import argparse
import contextlib
import webbrowser
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd

from core.backtest import report as R
from core.backtest.engine import ComponentsFactory, Progress
from core.backtest.runner import NoCandlesError, RunRequest, default_thresholds, run_backtest, with_costs
from core.config import load_config, load_models


def _parse_time(v: str | None) -> int | None:
    if v is None:
        return None
    if v.isdigit():
        return int(v)
    t = pd.Timestamp(v)
    t = t.tz_localize("UTC") if t.tzinfo is None else t.tz_convert("UTC")
    return int(t.value // 1_000_000)


@contextlib.contextmanager
def _progress_bar() -> Iterator[Progress]:
    """A transient rich progress bar, one task per stage (inference per expert, gate, replay), shown
    from the first report on: an error before it (no candles) or a signals run prints no bar."""
    from rich.progress import BarColumn, TextColumn, TimeElapsedColumn
    from rich.progress import Progress as Bar

    bar: Bar | None = None
    tasks: dict[str, Any] = {}

    def progress(stage: str, done: int, total: int) -> None:
        nonlocal bar
        if bar is None:
            bar = Bar(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                      TimeElapsedColumn(), transient=True)
            bar.start()
        if stage not in tasks:
            tasks[stage] = bar.add_task(stage, total=total)
        bar.update(tasks[stage], completed=done)

    try:
        yield progress
    finally:
        if bar is not None:
            bar.stop()


def cmd_run(args: argparse.Namespace) -> int:
    from core.data.store import MarketStore

    cfg = load_config(args.config)
    models = load_models(args.models)
    request = RunRequest(
        symbol=args.symbol, exchange=args.exchange, timeframe=args.timeframe,
        start_ms=_parse_time(getattr(args, "from")), end_ms=_parse_time(args.to),
        experts=None if args.experts is None else tuple(x for a in args.experts for x in a.split(",") if x),
        thresholds=default_thresholds(cfg, args.buy_threshold, args.sell_threshold, args.min_confidence),
        mode=args.mode, fees_bps=args.fees_bps, slippage_bps=args.slippage_bps,
        signals=Path(args.signals) if args.signals else None)
    with_costs(cfg, request.fees_bps, request.slippage_bps)  # a bad override fails before a store file is made
    db = Path(args.db) if args.db else cfg.resolve(cfg.data.db_path)
    reports_dir = Path(args.reports_dir) if args.reports_dir else cfg.resolve(cfg.backtest.reports_dir)
    store = MarketStore(db)
    try:
        with _progress_bar() as progress:
            rep = run_backtest(request, cfg=cfg, models=models, store=store, components=args.components,
                               reports_dir=reports_dir, progress=progress)
    except NoCandlesError as exc:
        raise SystemExit(str(exc)) from None
    finally:
        store.close()
    _print_metrics(rep.run_id, rep.spec.symbol, rep.spec.timeframe, rep.bars, rep.metrics)
    if rep.untrained:
        print(f"untrained experts: {', '.join(rep.untrained)} (no registered checkpoint)")
    print(f"run {rep.run_id}\n  json: {rep.json_path}\n  html: {rep.html_path}  (open: xdg-open {rep.html_path})")
    return 0


def _print_metrics(run_id: str, symbol: str | None, timeframe: str | None, bars: int | None,
                   metrics: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"backtest {run_id} ({symbol} {timeframe}, {bars} bars)")
    t.add_column("metric")
    t.add_column("value", justify="right")
    for k, v in metrics.items():
        t.add_row(k, R.fmt_value(v) if v is not None else "-")
    Console().print(t)


def cmd_report(args: argparse.Namespace) -> int:
    cfg = load_config(args.config)
    reports_dir = Path(args.reports_dir) if args.reports_dir else cfg.resolve(cfg.backtest.reports_dir)
    db = Path(args.db) if args.db else cfg.resolve(cfg.data.db_path)
    jp = R.report_path(args.id, reports_dir, None)
    if not jp.exists() and db.exists():  # written elsewhere: its backtest_runs row knows where
        from core.data.store import MarketStore

        with MarketStore(db, read_only=True) as store:
            jp = R.report_path(args.id, reports_dir, store)
    rep = R.read_json(jp)
    hp = R.write_html(rep, jp.with_suffix(".html"))
    spec = rep.get("spec", {})
    _print_metrics(rep["run_id"], spec.get("symbol"), spec.get("timeframe"), rep.get("bars"), rep["metrics"])
    print(f"html: {hp}")
    if args.open:
        webbrowser.open(hp.resolve().as_uri())
    return 0


def register(sub: argparse._SubParsersAction, components: ComponentsFactory) -> None:
    """``components`` builds the experts of a run (the composition root's compose.backtest_components)."""
    p = sub.add_parser("run", help="backtest the experts (or a --signals CSV) over stored candles")
    p.add_argument("--symbol", required=True, help="ccxt symbol, e.g. BTC/USDT")
    p.add_argument("--timeframe", default=None, help="base timeframe (default: data.base_timeframe)")
    p.add_argument("--exchange", default=None, help="exchange id of the stored series (default: data.exchange)")
    p.add_argument("--from", dest="from", default=None, help="start (ISO date/time UTC or ms), inclusive")
    p.add_argument("--to", default=None, help="end (ISO date/time UTC or ms), exclusive")
    p.add_argument("--experts", nargs="+", default=None,
                   help="experts to run, e.g. cnn dqn or cnn,dqn (default: enabled ones with a checkpoint; "
                        "named ones without a checkpoint run untrained and the report says so)")
    p.add_argument("--buy-threshold", type=float, default=None)
    p.add_argument("--sell-threshold", type=float, default=None)
    p.add_argument("--min-confidence", type=float, default=None)
    p.add_argument("--fees-bps", type=float, default=None, help="taker fee (default: execution.taker_fee_bps)")
    p.add_argument("--slippage-bps", type=float, default=None)
    p.add_argument("--mode", choices=["fast", "event"], default=None, help="default: backtest.mode")
    p.add_argument("--db", default=None, help="DuckDB file (default: data.db_path)")
    p.add_argument("--signals", default=None, help="CSV of (timestamp, target position) to backtest instead")
    p.add_argument("--reports-dir", default=None, help="default: backtest.reports_dir")
    p.set_defaults(func=cmd_run, components=components)

    q = sub.add_parser("report", help="reopen a backtest run: print its metrics, regenerate its HTML")
    q.add_argument("id", help="run id printed by `run`")
    q.add_argument("--open", action="store_true", help="open the HTML in the default browser")
    q.add_argument("--db", default=None)
    q.add_argument("--reports-dir", default=None)
    q.set_defaults(func=cmd_report)
