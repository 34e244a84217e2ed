"""``main_backtest.py forecast``: a Kronos Monte-Carlo forecast from stored candles, printed as a
summary and written as pred_summary_<SYMBOL>_<ts>.json, paths_<SYMBOL>_<ts>.csv and a fan chart
(fan_<SYMBOL>_<ts>.png and .html) under --out."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

DAY_MS = 86_400_000


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("forecast", help="Kronos Monte-Carlo candle forecast (summary, paths, fan chart)",
                              description=__doc__)
    p.add_argument("--symbol", default=None, help="ccxt symbol, e.g. BTC/USDT (default: first of data.symbols)")
    p.add_argument("--timeframe", default=None, help="e.g. 1m (default: data.base_timeframe)")
    p.add_argument("--exchange", default=None, help="default: data.exchange")
    p.add_argument("--lookback", type=int, default=480, help="context bars (default 480)")
    p.add_argument("--horizon", type=int, default=30, help="bars to forecast (default 30)")
    p.add_argument("--samples", type=int, default=100, help="Monte-Carlo paths (default 100)")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-p", type=float, default=0.9)
    p.add_argument("--top-k", type=int, default=0, help="> 0 keeps the k most likely tokens (1 = greedy)")
    p.add_argument("--model", default=None,
                   help="checkpoint directory, hub id (NeoQuasar/Kronos-small ...) or 'nano' "
                        "(default: models.yml experts.kronos.params.model, else nano)")
    p.add_argument("--seed", type=int, default=None, help="seed for a reproducible forecast")
    p.add_argument("--calibrated", action="store_true", help="also report calibrated bands / P(up); the fan "
                   "chart then shows calibrated bands")
    p.add_argument("--end", default=None, help="forecast from the last bar before this UTC time (ISO); default latest")
    p.add_argument("--out", default="reports/forecasts", help="output directory (default reports/forecasts)")
    p.add_argument("--db", default=None, help="DuckDB file (default: data.db_path of config.yaml)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | mps")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (default 1: on a small shared CPU one thread is fastest, measured)")
    p.set_defaults(func=cmd_forecast)


def _fmt_pct(x: float) -> str:
    return f"{100 * x:+.3f}%"


def print_summary(s: dict[str, Any], symbol: str, out: Any = None) -> None:
    h = s["at_horizon"]
    lines = [
        f"Kronos forecast {symbol}: last close {s['last_close']:.6g} at "
        f"{pd.Timestamp(s['last_ts'], unit='ms', tz='UTC'):%Y-%m-%d %H:%M} UTC, {s['samples']} paths × "
        f"{s['horizon']} bars ({s['seconds']:.2f} s)",
        f"  at horizon: P(up) {h['p_up']:.3f}  E[return] {_fmt_pct(h['expected_return'])}  close p10/p50/p90 "
        f"{h['close']['p10']:.6g} / {h['close']['p50']:.6g} / {h['close']['p90']:.6g}",
        f"  touch within horizon: session VWAP {s['touch']['session_vwap']['level_now']:.6g} "
        f"P={s['touch']['session_vwap']['p_touch']:.3f}; Bollinger mid {s['touch']['bollinger_mid']['level_now']:.6g} "
        f"P={s['touch']['bollinger_mid']['p_touch']:.3f}",
        "  stop sizing (adverse excursion, long): " + ", ".join(
            f"{k}: {_fmt_pct(v)}" for k, v in s["risk"]["long_adverse_excursion"].items()),
        "  stop sizing (adverse excursion, short): " + ", ".join(
            f"{k}: {_fmt_pct(v)}" for k, v in s["risk"]["short_adverse_excursion"].items()),
    ]
    if "calibrated" in s:
        c = s["calibrated"]["at_horizon"]
        lines.append(f"  calibrated: P(up) {c['p_up']:.3f}  close p10/p50/p90 {c['close']['p10']:.6g} / "
                     f"{c['close']['p50']:.6g} / {c['close']['p90']:.6g}")
    lines.append("  step   P(up)   E[ret]     p10        p50        p90")
    every = max(1, s["horizon"] // 10)
    for i, st in enumerate(s["steps"]):
        if (i + 1) % every == 0 or i == 0:
            lines.append(f"  {i + 1:>4}  {st['p_up']:.3f}  {_fmt_pct(st['expected_return']):>9}  "
                         f"{st['close']['p10']:<10.6g} {st['close']['p50']:<10.6g} {st['close']['p90']:<10.6g}")
    # stdout looked up at call time: a default bound at import outlives redirected streams
    print("\n".join(lines), file=out if out is not None else sys.stdout)


def paths_frame(fc: Any) -> pd.DataFrame:
    """One row per path: close_1..close_H, high_1..high_H, low_1..low_H."""
    n, h = fc.paths.shape[:2]
    cols: dict[str, np.ndarray] = {"path": np.arange(n)}
    for name, j in (("close", 3), ("high", 1), ("low", 2)):
        for t in range(h):
            cols[f"{name}_{t + 1}"] = fc.paths[:, t, j]
    return pd.DataFrame(cols)


def cmd_forecast(args: argparse.Namespace) -> int:
    import torch

    from core.config import load_config, load_models
    from core.data.store import MarketStore
    from core.types import SeriesKey, timeframe_ms

    from .bundle import load_bundle
    from .fan import fan_bands, write_html, write_png
    from .hub import CheckpointNotFound
    from .sampler import SampleConfig
    from .summary import summarize

    if args.threads >= 1:
        torch.set_num_threads(args.threads)
    app = load_config(args.config)
    symbol = args.symbol or app.data.symbols[0]
    timeframe = args.timeframe or app.data.base_timeframe
    step_ms = timeframe_ms(timeframe)
    from core.config import is_ticker
    from core.market import market_for

    market = market_for(app, symbol, args.exchange or (None if is_ticker(symbol) else app.data.exchange))
    key = SeriesKey(market.exchange, symbol, timeframe)
    model_spec = args.model
    if model_spec is None:
        kcfg = load_models(args.models).experts.get("kronos")
        model_spec = str(kcfg.params.get("model", "nano")) if kcfg else "nano"
    for name, v, lo in (("--lookback", args.lookback, 2), ("--horizon", args.horizon, 1), ("--samples", args.samples, 1)):
        if v < lo:
            print(f"forecast: {name} must be >= {lo}, got {v}", file=sys.stderr)
            return 2
    db = Path(args.db) if args.db else app.resolve(app.data.db_path)
    if not db.exists():
        print(f"forecast: no database at {db}; import candles first with `python main_backtest.py data import ...`",
              file=sys.stderr)
        return 2
    store = MarketStore(db, read_only=True)
    try:
        end_ms = (int(pd.Timestamp(args.end, tz="UTC").value // 1_000_000) if args.end else None)
        if end_ms is None:
            ctx = store.last_candles(key, args.lookback)
        else:
            ctx = store.candles(key, end_ms - (args.lookback + 10) * step_ms * 4, end_ms).tail(args.lookback)
        if len(ctx) < 2:
            print(f"forecast: no candles for {key.exchange} {symbol} {timeframe} in {db}"
                  + (f" before {args.end}" if args.end else "") + "; import them with `main_backtest.py data import`",
                  file=sys.stderr)
            return 2
        ctx = ctx.reset_index(drop=True)
        last_ts = int(ctx["ts"].iloc[-1])
        day0 = (last_ts // DAY_MS) * DAY_MS if market.always_open else (
            market.calendar.session_at(last_ts) or (last_ts, 0))[0]  # the trading session's start
        session = store.candles(key, day0, int(ctx["ts"].iloc[0]))
    finally:
        store.close()
    try:
        from NN.devices import pick_device

        bundle = load_bundle(model_spec, app.resolve(app.training.models_dir), pick_device(args.device))
    except CheckpointNotFound as exc:
        print(f"forecast: {exc}", file=sys.stderr)
        return 2
    if args.calibrated and bundle.calibration is None:
        print(f"forecast: model {model_spec!r} has no stored calibration (train_kronos writes calibration.json); "
              "run without --calibrated", file=sys.stderr)
        return 2
    if args.calibrated and bundle.calibration is not None and bundle.calibration.horizon < args.horizon:
        print(f"forecast: the calibration covers {bundle.calibration.horizon} bars; use --horizon <= that",
              file=sys.stderr)
        return 2
    try:
        cfg = SampleConfig(samples=args.samples, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                           seed=args.seed, max_context=bundle.max_context)
        # future bars follow the market's calendar (stocks: the bar after 15:59 is the next session's 09:30)
        fut = None if market.always_open else market.calendar.next_bars(last_ts, args.horizon, timeframe)
        fc = bundle.sampler().forecast(ctx, args.horizon, cfg, step_ms=step_ms, future=fut)
    except ValueError as exc:
        print(f"forecast: {exc}", file=sys.stderr)
        return 2
    cal = bundle.calibration if args.calibrated else None
    summary = summarize(fc, cal, session)
    summary.update({"exchange": key.exchange, "symbol": symbol, "timeframe": timeframe, "model": model_spec,
                    "model_version": str(bundle.version), "lookback": int(len(ctx))})
    print_summary(summary, symbol)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tag = f"{symbol.replace('/', '_')}_{pd.Timestamp(last_ts, unit='ms', tz='UTC'):%Y%m%dT%H%MZ}"
    files = {
        "summary": out / f"pred_summary_{tag}.json",
        "paths": out / f"paths_{tag}.csv",
        "png": out / f"fan_{tag}.png",
        "html": out / f"fan_{tag}.html",
    }
    files["summary"].write_text(json.dumps(summary, indent=1))
    paths_frame(fc).to_csv(files["paths"], index=False, float_format="%.8g")
    bands = fan_bands(fc, cal)
    title = f"Kronos {symbol} {timeframe}: {args.samples} paths, {args.horizon} bars" + (" (calibrated)" if cal else "")
    write_png(fc, bands, files["png"], title)
    write_html(fc, bands, files["html"], title)
    for k, path in files.items():
        print(f"wrote {k}: {path}")
    return 0
