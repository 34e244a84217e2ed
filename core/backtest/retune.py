"""Re-trading cached walk-forward predictions with other thresholds and risk settings, without
retraining: the fused probabilities and confidences of a walk-forward (its ``predictions.npz``) do not
depend on thresholds or risk settings (the gate's weights move with matured outcomes only), so a trial
is ``decide_codes`` + one compiled kernel pass. A sweep's threshold trials run this; it is the
cached-prediction counterpart of the live threshold preview (the two can share ``retrade``).

Trial parameters: buy_threshold, sell_threshold, min_confidence (orchestrator) and fraction,
stop_loss_pct, take_profit_pct, cooldown_bars (risk).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from core.config import AppConfig
from core.execution import kernel as K
from core.orchestrator import BUY, SELL, decide_codes
from core.types import Thresholds

RISK_KEYS = ("fraction", "stop_loss_pct", "take_profit_pct", "cooldown_bars")
THRESHOLD_KEYS = ("buy_threshold", "sell_threshold", "min_confidence")
BLOCKS = 16  # CSCV blocks the stitched bars are cut into (PBO)


@dataclass(frozen=True)
class Cached:
    """A walk-forward's stitched test bars and predictions (read-only arrays, shareable zero-copy)."""

    ts: np.ndarray
    open: np.ndarray
    high: np.ndarray
    low: np.ndarray
    close: np.ndarray
    fused: np.ndarray  # [N, 3]
    confidence: np.ndarray
    fold_of: np.ndarray


def load_cached(folder: Path) -> Cached:
    """A walk-forward output folder (report.json, predictions.npz, candles.parquet)."""
    p, c = Path(folder) / "predictions.npz", Path(folder) / "candles.parquet"
    if not p.exists() or not c.exists():
        raise ValueError(f"{folder}: not a walk-forward output folder (needs predictions.npz and candles.parquet; "
                         "run main_backtest.py walkforward first)")
    d = np.load(p)
    bars = pd.read_parquet(c)
    if len(bars) != len(d["ts"]) or not np.array_equal(bars["ts"].to_numpy(np.int64), d["ts"]):
        raise ValueError(f"{folder}: candles.parquet and predictions.npz disagree on the bars")
    col = {k: bars[k].to_numpy(np.float64) for k in ("ts", "open", "high", "low", "close")}
    return Cached(ts=col["ts"], open=col["open"], high=col["high"], low=col["low"], close=col["close"],
                  fused=d["fused"], confidence=d["confidence"], fold_of=d["fold_of"])


def base_params(cfg: AppConfig, overrides: dict[str, Any]) -> np.ndarray:
    """Kernel params of config.yaml with the trial's risk overrides (validated by make_params)."""
    e, r = cfg.execution, cfg.risk
    kw: dict[str, Any] = dict(
        taker_fee_bps=e.taker_fee_bps, slippage_bps=e.slippage_bps, fill_at=e.fill_at, allow_short=e.allow_short,
        sizing=r.sizing, fraction=r.fraction, target_vol_annual=r.target_vol_annual,
        max_position_fraction=r.max_position_fraction, stop_loss_pct=r.stop_loss_pct,
        take_profit_pct=r.take_profit_pct, max_daily_loss_pct=r.max_daily_loss_pct, cooldown_bars=r.cooldown_bars,
        kill_switch_reset=r.kill_switch_reset, min_trade_fraction=e.min_trade_fraction)
    kw.update({k: overrides[k] for k in RISK_KEYS if k in overrides})
    kw["cooldown_bars"] = int(kw["cooldown_bars"])
    return K.make_params(**kw)


def retrade(c: Cached, thresholds: Thresholds, params: np.ndarray, initial_cash: float
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(codes, equity, kernel state) of the cached predictions under new thresholds and params."""
    codes = decide_codes(c.fused, c.confidence, thresholds)
    # the fast backtester's mapping (spot: the kernel turns SELL into flat)
    signal = np.where(codes == BUY, 1.0, np.where(codes == SELL, -1.0, np.nan))
    equity, _pos, _fills, state = K.run(c.ts, c.open, c.high, c.low, c.close, signal, params=params,
                                        initial_cash=initial_cash)
    return codes, equity, state


def evaluate_trial(c: Cached, trial: dict[str, Any], cfg: AppConfig, bars_per_year: float) -> dict[str, Any]:
    """One threshold/risk trial: its figures, and per-block return sums for CSCV."""
    o = cfg.orchestrator
    th = Thresholds(buy=float(trial.get("buy_threshold", o.buy_threshold)),
                    sell=float(trial.get("sell_threshold", o.sell_threshold)),
                    min_confidence=float(trial.get("min_confidence", o.min_confidence)))
    codes, equity, state = retrade(c, th, base_params(cfg, trial), cfg.execution.initial_cash)
    prev = np.empty_like(equity)
    prev[0] = cfg.execution.initial_cash
    prev[1:] = equity[:-1]
    r = equity / prev - 1.0
    n = len(r)
    mean = float(r.mean())
    d = r - mean
    m2 = float(d @ d) / n
    sd = float(np.sqrt(m2 * n / (n - 1))) if n > 1 else 0.0
    sr = mean / sd if sd > 0 else 0.0
    skew = float((d ** 3).sum() / n / m2 ** 1.5) if m2 > 0 else 0.0
    kurt = float((d ** 4).sum() / n / m2 ** 2) if m2 > 0 else 3.0
    starts = np.array([b[0] for b in np.array_split(np.arange(n), BLOCKS)])
    counts = np.diff(np.append(starts, n))
    buys = int((codes == 1).sum())
    return {"sharpe_bar": sr, "sharpe": sr * float(np.sqrt(bars_per_year)),
            "total_return": float(equity[-1] / cfg.execution.initial_cash - 1), "fills": int(state[K.S_TRADES]),
            "decisions_buy": buys, "decisions_sell": int((codes == -1).sum()), "bars": n, "skew": skew,
            "kurt": kurt, "block_sum": np.add.reduceat(r, starts).tolist(),
            "block_sq": np.add.reduceat(r * r, starts).tolist(), "block_n": counts.tolist()}
