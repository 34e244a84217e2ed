"""Re-trading cached walk-forward predictions with other thresholds and risk settings, without
retraining: the fused probabilities and confidences of a walk-forward (its ``predictions.npz``) do not
depend on thresholds or risk settings (the gate's weights move with matured outcomes only), so a trial
is a re-decision (core/backtest/thresholds.Redecider, the same code as the threshold preview) + one
compiled kernel pass. Everything that does not depend on the trial (the validated bar arrays, the
volatility series, the re-decider's arrays) is computed once in ``load_cached``.

Trial parameters: buy_threshold, sell_threshold, min_confidence (orchestrator) and fraction,
stop_loss_pct, take_profit_pct, cooldown_bars (risk).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from core.backtest.thresholds import Redecider
from core.config import AppConfig
from core.execution import kernel as K
from core.types import Thresholds

RISK_KEYS = ("fraction", "stop_loss_pct", "take_profit_pct", "cooldown_bars")
THRESHOLD_KEYS = ("buy_threshold", "sell_threshold", "min_confidence")
BLOCKS = 16  # CSCV blocks the stitched bars are cut into (PBO)


@dataclass(frozen=True)
class Cached:
    """A walk-forward's stitched test bars and predictions (read-only arrays, shareable zero-copy), with
    the kernel's validated inputs and the re-decider built once."""

    ts: np.ndarray
    open: np.ndarray
    high: np.ndarray
    low: np.ndarray
    close: np.ndarray
    fused: np.ndarray  # [N, 3]
    confidence: np.ndarray
    fold_of: np.ndarray
    live: np.ndarray  # bool [N]: some expert gave an output (else the fast backtester holds)
    vol: np.ndarray  # [N] realised vol for volatility_target sizing (NaN otherwise)
    redecider: Redecider


def cached_from_arrays(bars: pd.DataFrame, fused: np.ndarray, confidence: np.ndarray, fold_of: np.ndarray,
                       live: np.ndarray | None = None, cfg: AppConfig | None = None,
                       timeframe: str = "1m") -> Cached:
    col = {k: bars[k].to_numpy(np.float64) for k in ("ts", "open", "high", "low", "close")}
    n = len(col["close"])
    vol = np.full(n, np.nan)
    if cfg is not None and cfg.risk.sizing == "volatility_target":  # as the walk-forward's own kernel pass
        vol = K.realised_vol(col["close"], cfg.risk.vol_window, K.bars_per_year(timeframe))
    live_ = np.ones(n, dtype=bool) if live is None else np.asarray(live, dtype=bool)
    ts, o, h, low, c, _sig, vol = K.check_bars(col["ts"], col["open"], col["high"], col["low"], col["close"],
                                               np.full(n, np.nan), vol)
    fused = np.asarray(fused, dtype=np.float64)
    confidence = np.asarray(confidence, dtype=np.float64)
    return Cached(ts=ts, open=o, high=h, low=low, close=c, fused=fused, confidence=confidence,
                  fold_of=np.asarray(fold_of), live=live_, vol=vol, redecider=Redecider(fused, confidence, live_))


def load_cached(folder: Path, cfg: AppConfig | None = None, timeframe: str = "1m") -> Cached:
    """A walk-forward output folder (report.json, predictions.npz, candles.parquet)."""
    p, c = Path(folder) / "predictions.npz", Path(folder) / "candles.parquet"
    if not p.exists() or not c.exists():
        raise ValueError(f"{folder}: not a walk-forward output folder (needs predictions.npz and candles.parquet; "
                         "run main_backtest.py walkforward first)")
    d = np.load(p)
    bars = pd.read_parquet(c)
    if len(bars) != len(d["ts"]) or not np.array_equal(bars["ts"].to_numpy(np.int64), d["ts"]):
        raise ValueError(f"{folder}: candles.parquet and predictions.npz disagree on the bars")
    live = d["mask"].any(axis=1) if "mask" in d.files else None
    return cached_from_arrays(bars, d["fused"], d["confidence"], d["fold_of"], live, cfg, timeframe)


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


SIGNAL_OF_CODE = np.array([-1.0, np.nan, 1.0])  # code + 1 -> kernel signal (the fast backtester's mapping)


def retrade(c: Cached, thresholds: Thresholds, params: np.ndarray, initial_cash: float
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(codes, equity, kernel state) of the cached predictions under new thresholds and params."""
    codes = c.redecider.codes(thresholds)
    signal = SIGNAL_OF_CODE[codes + 1]  # spot: the kernel turns SELL into flat
    state = K.new_state(initial_cash)
    equity, _pos, _fills = K.simulate(c.ts, c.open, c.high, c.low, c.close, signal, c.vol, params, state)
    return codes, equity, state


def evaluate_trial(c: Cached, trial: dict[str, Any], cfg: AppConfig, bars_per_year: float) -> dict[str, Any]:
    """One threshold/risk trial: its figures, and per-block return sums for CSCV."""
    o = cfg.orchestrator
    th = Thresholds(buy=float(trial.get("buy_threshold", o.buy_threshold)),
                    sell=float(trial.get("sell_threshold", o.sell_threshold)),
                    min_confidence=float(trial.get("min_confidence", o.min_confidence)))
    codes, equity, state = retrade(c, th, base_params(cfg, trial), cfg.execution.initial_cash)
    return trial_stats(equity, codes, int(state[K.S_TRADES]), cfg.execution.initial_cash, bars_per_year)


def trial_stats(equity: np.ndarray, codes: np.ndarray, fills: int, initial_cash: float, bars_per_year: float
                ) -> dict[str, Any]:
    """Per-bar Sharpe, skew, kurtosis (the deflated Sharpe's inputs) and CSCV block sums of an equity
    curve. Plain element-wise sums, no BLAS call: a threaded dot product on a loaded box costs more
    than the whole kernel pass."""
    r = np.empty_like(equity)
    r[0] = equity[0] / initial_cash - 1.0
    np.divide(equity[1:], equity[:-1], out=r[1:])
    r[1:] -= 1.0
    n = len(r)
    mean = float(r.sum() / n)
    d = r - mean
    d2 = d * d
    m2 = float(d2.sum()) / n
    sd = float(np.sqrt(m2 * n / (n - 1))) if n > 1 else 0.0
    sr = mean / sd if sd > 0 else 0.0
    skew = float((d2 * d).sum() / n / m2 ** 1.5) if m2 > 0 else 0.0
    kurt = float((d2 * d2).sum() / n / m2 ** 2) if m2 > 0 else 3.0
    q, rem = divmod(n, BLOCKS)  # np.array_split's blocks: the first ``rem`` one bar longer
    k = np.arange(min(BLOCKS, n))
    starts = k * q + np.minimum(k, rem)
    counts = np.diff(np.append(starts, n))
    return {"sharpe_bar": sr, "sharpe": sr * float(np.sqrt(bars_per_year)),
            "total_return": float(equity[-1] / initial_cash - 1), "fills": fills,
            "decisions_buy": int(np.count_nonzero(codes == 1)), "decisions_sell": int(np.count_nonzero(codes == -1)),
            "bars": n, "skew": skew, "kurt": kurt, "block_sum": np.add.reduceat(r, starts).tolist(),
            "block_sq": np.add.reduceat(r * r, starts).tolist(),
            "block_n": counts.tolist()}
