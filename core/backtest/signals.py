"""Backtests of an external signal series (``main_backtest.py run --signals FILE.csv``): the file's
target position per bar, traded by the same execution kernel with fees, slippage and the fill model
only, so other tools can reproduce the numbers by hand (tests/test_backtest.py does)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from core.backtest.engine import fills_frame
from core.backtest.metrics import compute_metrics
from core.backtest.report import Report, ReportSpec, build_report, iso_minutes
from core.config import AppConfig
from core.execution import kernel as K


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
        raise ValueError(f"{path}: row {i + 2}: timestamp {iso_minutes(int(ts[i]))} is not a bar of the "
                         "backtest range (signals must be stamped with candle OPEN times inside --from/--to)")
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


def run_signals(path: Path, cfg: AppConfig, candles: pd.DataFrame, run_id: str, spec: ReportSpec) -> Report:
    """Trade the file's targets over ``candles`` (cfg: the run's config, cost overrides applied); the
    report's spec says mode "signals" and names the file."""
    spec = replace(spec, mode="signals", signals=str(path))
    sig = load_signals(path, candles)
    a = {c: candles[c].to_numpy(np.float64) for c in ("ts", "open", "high", "low", "close")}
    equity, pos, fills, state = K.run(a["ts"], a["open"], a["high"], a["low"], a["close"], sig,
                                       params=signals_params(cfg), initial_cash=cfg.execution.initial_cash)
    fdf = fills_frame(fills)
    metrics = compute_metrics(candles, equity, pos, fdf, state, cfg.execution.initial_cash, spec.timeframe)
    return build_report(run_id, "signals", spec, candles, equity, fdf, metrics,
                        p_up=np.full(len(candles), np.nan), weights={}, experts={}, horizon=1, dead_zone=0.0)
