"""``main_backtest.py run`` (backtest) and ``main_backtest.py report ID`` (reopen a run)."""

from __future__ import annotations

import argparse
import json
import logging
import uuid
import webbrowser
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from core.backtest import metrics as M
from core.backtest import report as R
from core.backtest.engine import ComponentsFactory
from core.config import AppConfig, ModelsConfig, load_config, load_models
from core.execution import kernel as K
from core.labels import UP, make_labels
from core.types import SeriesKey, Thresholds, timeframe_ms

log = logging.getLogger(__name__)

RUNS_DDL = """
CREATE TABLE IF NOT EXISTS backtest_runs (
    run_id VARCHAR PRIMARY KEY, created_at TIMESTAMP, kind VARCHAR, mode VARCHAR, exchange VARCHAR,
    symbol VARCHAR, timeframe VARCHAR, start_ts BIGINT, end_ts BIGINT, bars BIGINT, experts VARCHAR,
    thresholds VARCHAR, fees_bps DOUBLE, slippage_bps DOUBLE, metrics VARCHAR, json_path VARCHAR,
    html_path VARCHAR
)"""


# ---------------------------------------------------------------- metrics (pure)


def compute_metrics(candles: pd.DataFrame, equity: np.ndarray, position: np.ndarray, fills: pd.DataFrame,
                    state: np.ndarray, initial_cash: float, timeframe: str, codes: np.ndarray | None = None,
                    horizon: int = 5, *, decided: np.ndarray | None = None, fused: np.ndarray | None = None,
                    dead_zone: float = 0.0) -> dict[str, Any]:
    """The report's figures: every metric of core.backtest.metrics (one definition, hand-checked in
    tests), the kernel's risk counters, and — for expert runs — the decision counts, the directional
    hit rate of BUY/SELL over ``horizon`` bars, and the fused probabilities' Brier score and ECE
    against the realised class (dead zone as for labels) on bars where a decision was made."""
    close = candles["close"].to_numpy(np.float64)
    m: dict[str, Any] = M.summary(equity, candles["ts"].to_numpy(np.int64), position, fills, close,
                                  initial_equity=initial_cash, timeframe=timeframe)
    m.update({
        "realised_pnl": float(state[K.S_REALISED]),
        "stops": int(state[K.S_STOPS]),
        "kill_switch_trips": int(state[K.S_KILLS]),
        "rejected_orders": int(state[K.S_REJECTED]),
        "refused_decisions": int(state[K.S_REFUSED]),
    })
    if codes is not None:
        c = np.asarray(codes)
        dm = np.ones(len(c), dtype=bool) if decided is None else np.asarray(decided, dtype=bool)
        m["decisions"] = int(dm.sum())
        m["buy_decisions"] = int((dm & (c == 1)).sum())
        m["sell_decisions"] = int((dm & (c == -1)).sum())
        m["hold_decisions"] = int((dm & (c == 0)).sum())
        fwd = np.full(len(close), np.nan)
        fwd[:-horizon] = np.log(close[horizon:] / close[:-horizon])
        active = (c != 0) & np.isfinite(fwd)
        m["directional_hit_rate"] = (float((np.sign(fwd[active]) == c[active]).mean())
                                     if active.any() else None)
        if fused is not None and dm.any():
            y = np.where(dm, make_labels(close, horizon, dead_zone), -1)
            m["fused_brier"] = M.brier(np.where(dm[:, None], fused, 1 / 3), y)
            m["fused_ece"] = M.ece(np.where(dm[:, None], fused, 1 / 3), y)
    return m


def realised_up(close: np.ndarray, horizon: int, dead_zone: float) -> np.ndarray:
    """1 where the move over the next ``horizon`` bars was 'up', 0 otherwise, -1 unknown (calibration)."""
    y = make_labels(close, horizon, dead_zone)
    return np.where(y < 0, -1.0, (y == UP).astype(np.float64))


# ---------------------------------------------------------------- report assembly


def report_dict(run_id: str, kind: str, spec: dict[str, Any], candles: pd.DataFrame, equity: np.ndarray,
                fills: pd.DataFrame, metrics: dict[str, Any], *, p_up: np.ndarray, weights: dict[str, Any],
                experts: dict[str, Any], horizon: int, dead_zone: float, errors: list | None = None,
                stats: dict | None = None) -> dict[str, Any]:
    close = candles["close"].to_numpy(np.float64)
    ts = candles["ts"].to_numpy(np.int64)
    return {
        "run_id": run_id, "kind": kind, "spec": spec, "metrics": metrics, "experts": experts,
        "horizon": horizon, "bars": int(len(candles)),
        "start": _iso(int(ts[0])), "end": _iso(int(ts[-1])),
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "errors": [list(e) for e in (errors or [])], "stats": stats or {},
        "fills": fills.to_dict(orient="records"),
        "series": {"ts": ts, "close": close, "equity": equity, "p_up": p_up,
                   "realised_up": realised_up(close, horizon, dead_zone), "weights": weights},
    }


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="minutes")


def save_run(store: Any, rep: dict[str, Any], reports_dir: Path) -> tuple[Path, Path]:
    jp = R.write_json(rep, reports_dir / f"backtest_{rep['run_id']}.json")
    hp = R.write_html(rep, reports_dir / f"backtest_{rep['run_id']}.html")
    s = rep["spec"]
    store.execute(RUNS_DDL)
    row = pd.DataFrame([{
        "run_id": rep["run_id"], "created_at": datetime.now(UTC).replace(tzinfo=None), "kind": rep["kind"],
        "mode": s.get("mode"), "exchange": s.get("exchange"), "symbol": s.get("symbol"),
        "timeframe": s.get("timeframe"), "start_ts": int(rep["series"]["ts"][0]),
        "end_ts": int(rep["series"]["ts"][-1]), "bars": rep["bars"],
        "experts": json.dumps(rep["experts"]), "thresholds": json.dumps(s.get("thresholds")),
        "fees_bps": s.get("fees_bps"), "slippage_bps": s.get("slippage_bps"),
        "metrics": json.dumps(R._clean(rep["metrics"])), "json_path": str(jp), "html_path": str(hp)}])
    store.write_df("backtest_runs", row, mode="upsert")
    return jp, hp


# ---------------------------------------------------------------- external signals


def load_signals(path: Path, candles: pd.DataFrame) -> np.ndarray:
    """CSV with a time column (timestamp | ts | date | time) and a target-position column
    (target | position | target_position | signal), target in [-1, 1] as a fraction of equity.
    Returns the per-bar kernel signal (NaN where the file has no row: hold)."""
    if not path.exists():
        raise FileNotFoundError(f"signals file not found: {path}")
    df = pd.read_csv(path)
    cols = {c.lower().strip(): c for c in df.columns}
    tcol = next((cols[c] for c in ("timestamp", "ts", "date", "time", "datetime") if c in cols), None)
    vcol = next((cols[c] for c in ("target", "position", "target_position", "signal") if c in cols), None)
    if tcol is None or vcol is None:
        raise ValueError(f"{path}: needs a time column (timestamp|ts) and a target column "
                         f"(target|position|target_position|signal); found {list(df.columns)}")
    from core.data.files import to_ms

    ts = to_ms(df[tcol])
    tgt = pd.to_numeric(df[vcol], errors="coerce").to_numpy(np.float64)
    bad = ~np.isfinite(tgt) | (np.abs(tgt) > 1)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"{path}: row {i + 2}: target {df[vcol].iloc[i]!r} must be a number in [-1, 1]")
    bars = candles["ts"].to_numpy(np.int64)
    idx = np.searchsorted(bars, ts)
    missing = (idx >= len(bars)) | (bars[np.minimum(idx, len(bars) - 1)] != ts)
    if missing.any():
        i = int(np.flatnonzero(missing)[0])
        raise ValueError(f"{path}: row {i + 2}: timestamp {_iso(int(ts[i]))} is not a bar of the backtest "
                         "range (signals must be stamped with candle OPEN times inside --from/--to)")
    sig = np.full(len(bars), np.nan)
    sig[idx] = tgt
    return sig


def signals_params(cfg: AppConfig) -> np.ndarray:
    """The same executor with the risk layer out of the way: the file's target IS the position
    (fraction 1, no stops, no kill switch, no cooldown, no minimum trade), so other tools can
    reproduce the numbers from fees, slippage and the fill model alone."""
    e = cfg.execution
    return K.make_params(taker_fee_bps=e.taker_fee_bps, slippage_bps=e.slippage_bps, fill_at=e.fill_at,
                         allow_short=True, sizing="fixed_fraction", fraction=1.0, max_position_fraction=1.0,
                         stop_loss_pct=0.0, take_profit_pct=0.0, max_daily_loss_pct=0.999999,
                         cooldown_bars=0, min_trade_fraction=0.0)


# ---------------------------------------------------------------- commands


def _parse_time(v: str | None) -> int | None:
    if v is None:
        return None
    if v.isdigit():
        return int(v)
    t = pd.Timestamp(v)
    t = t.tz_localize("UTC") if t.tzinfo is None else t.tz_convert("UTC")
    return int(t.value // 1_000_000)


def _configs(args: argparse.Namespace) -> tuple[AppConfig, ModelsConfig]:
    cfg = load_config(args.config)
    models = load_models(args.models)
    ex: dict[str, Any] = {}
    if args.fees_bps is not None:
        ex["taker_fee_bps"] = args.fees_bps
        ex["maker_fee_bps"] = args.fees_bps
    if args.slippage_bps is not None:
        ex["slippage_bps"] = args.slippage_bps
    if ex:  # validated like the file (ranges), so a bad flag fails the same way
        cfg = cfg.model_copy(update={"execution": cfg.execution.model_validate(
            {**cfg.execution.model_dump(), **ex})})
    return cfg, models


def cmd_run(args: argparse.Namespace) -> int:
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from core.backtest import engine as BE
    from core.data.store import MarketStore

    cfg, models = _configs(args)
    o = cfg.orchestrator
    thresholds = Thresholds(
        buy=o.buy_threshold if args.buy_threshold is None else args.buy_threshold,
        sell=o.sell_threshold if args.sell_threshold is None else args.sell_threshold,
        min_confidence=o.min_confidence if args.min_confidence is None else args.min_confidence)
    exchange = args.exchange or cfg.data.exchange
    timeframe = args.timeframe or cfg.data.base_timeframe
    timeframe_ms(timeframe)
    mode = args.mode or cfg.backtest.mode
    db = Path(args.db) if args.db else cfg.resolve(cfg.data.db_path)
    reports_dir = Path(args.reports_dir) if args.reports_dir else cfg.resolve(cfg.backtest.reports_dir)
    run_id = datetime.now(UTC).strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]
    store = MarketStore(db)
    try:
        key = SeriesKey(exchange, args.symbol, timeframe)
        candles = store.candles(key, _parse_time(getattr(args, "from")), _parse_time(args.to))
        if len(candles) == 0:
            have = ", ".join(f"{k.exchange} {k.symbol} {k.timeframe}" for k in store.series()) or "nothing"
            raise SystemExit(f"no candles for {exchange} {args.symbol} {timeframe} in {db} "
                             f"(the store holds: {have}); import first: main_backtest.py data import ...")
        spec_d = {"exchange": exchange, "symbol": args.symbol, "timeframe": timeframe, "mode": mode,
                  "thresholds": {"buy": thresholds.buy, "sell": thresholds.sell,
                                 "min_confidence": thresholds.min_confidence},
                  "fees_bps": cfg.execution.taker_fee_bps, "slippage_bps": cfg.execution.slippage_bps,
                  "fill_at": cfg.execution.fill_at, "db": str(db)}
        if args.signals:
            rep = _run_signals(Path(args.signals), cfg, candles, run_id, spec_d)
        else:
            with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                          TimeElapsedColumn(), transient=True) as bar:
                tasks: dict[str, Any] = {}

                def progress(stage: str, done: int, total: int) -> None:
                    if stage not in tasks:
                        tasks[stage] = bar.add_task(stage, total=total)
                    bar.update(tasks[stage], completed=done)

                names = None if args.experts is None else [x for a in args.experts for x in a.split(",") if x]
                comps = args.components(models, timeframe, names, store=store,
                                        models_dir=cfg.resolve(cfg.training.models_dir))
                spec = BE.spec_from_config(cfg, models, exchange=exchange, symbol=args.symbol,
                                           timeframe=timeframe, thresholds=thresholds, mode=mode)
                bt = BE.Backtester(comps, spec, cfg.execution, cfg.risk, store=store,
                                   run_id=run_id, progress=progress, keep_decisions=False)
                res = bt.run(candles)
            rep = result_report(res, spec_d)
        jp, hp = save_run(store, rep, reports_dir)
    finally:
        store.close()
    _print_metrics(rep)
    untrained = [n for n, i in rep["experts"].items() if not i.get("trained") and n != "gate"]
    if untrained:
        print(f"untrained experts: {', '.join(untrained)} (no registered checkpoint)")
    print(f"run {run_id}\n  json: {jp}\n  html: {hp}  (open: xdg-open {hp})")
    return 0


def result_report(res: Any, spec_d: dict[str, Any]) -> dict[str, Any]:
    metrics = compute_metrics(res.candles, res.equity, res.position, res.fills, res.state,
                              res.spec.initial_cash, spec_d["timeframe"], res.codes, res.spec.horizon,
                              decided=res.decided, fused=res.fused, dead_zone=res.spec.dead_zone)
    metrics["elapsed_s"] = float(res.elapsed_s)
    w = {n: res.weights[:, i] for i, n in enumerate(res.names)}
    return report_dict(res.run_id, "experts", spec_d, res.candles, res.equity, res.fills, metrics,
                       p_up=np.where(res.decided, res.fused[:, 2], np.nan), weights=w, experts=res.info,
                       horizon=res.spec.horizon, dead_zone=res.spec.dead_zone, errors=res.errors,
                       stats=res.stats)


def _run_signals(path: Path, cfg: AppConfig, candles: pd.DataFrame, run_id: str,
                 spec_d: dict[str, Any]) -> dict[str, Any]:
    from core.backtest.engine import fills_frame

    sig = load_signals(path, candles)
    a = {c: candles[c].to_numpy(np.float64) for c in ("ts", "open", "high", "low", "close")}
    equity, pos, fills, state = K.run(a["ts"], a["open"], a["high"], a["low"], a["close"], sig,
                                       params=signals_params(cfg), initial_cash=cfg.execution.initial_cash)
    fdf = fills_frame(fills)
    metrics = compute_metrics(candles, equity, pos, fdf, state, cfg.execution.initial_cash, spec_d["timeframe"])
    spec_d = {**spec_d, "mode": "signals", "signals": str(path)}
    return report_dict(run_id, "signals", spec_d, candles, equity, fdf, metrics,
                       p_up=np.full(len(candles), np.nan), weights={}, experts={}, horizon=1, dead_zone=0.0)


def _print_metrics(rep: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"backtest {rep['run_id']} ({rep['spec'].get('symbol')} {rep['spec'].get('timeframe')}, "
                    f"{rep['bars']} bars)")
    t.add_column("metric")
    t.add_column("value", justify="right")
    for k, v in rep["metrics"].items():
        t.add_row(k, R._fmt(v) if v is not None else "-")
    Console().print(t)


def cmd_report(args: argparse.Namespace) -> int:
    cfg = load_config(args.config)
    reports_dir = Path(args.reports_dir) if args.reports_dir else cfg.resolve(cfg.backtest.reports_dir)
    jp = reports_dir / f"backtest_{args.id}.json"
    if not jp.exists():
        from core.data.store import MarketStore

        db = Path(args.db) if args.db else cfg.resolve(cfg.data.db_path)
        if db.exists():
            with MarketStore(db, read_only=True) as store:
                row = store.query_one("SELECT json_path FROM backtest_runs WHERE run_id = ?", [args.id]) \
                    if _has_runs(store) else None
            if row:
                jp = Path(row[0])
    rep = R.read_json(jp)
    hp = R.write_html(rep, jp.with_suffix(".html"))
    _print_metrics(rep)
    print(f"html: {hp}")
    if args.open:
        webbrowser.open(hp.resolve().as_uri())
    return 0


def _has_runs(store: Any) -> bool:
    r = store.query_one("SELECT count(*) FROM information_schema.tables WHERE table_name = 'backtest_runs'")
    return bool(r and r[0])


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
