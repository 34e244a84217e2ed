"""Trader-facing statistics of a set of sampled paths: per step and at the horizon P(close > last
close), expected return, close/high/low percentiles, probability of touching the session VWAP and the
Bollinger middle band within the horizon, and adverse-excursion / drawdown percentiles for stops.

Levels evolve along each path (a path's own bars update its VWAP and its 20-bar mean), because a
trader's "touch" means the price meets the level as it will be then, not as it is now."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from .sampler import Forecast

PCTS = (10, 25, 50, 75, 90)
RISK_PCTS = (50, 75, 90, 95)
DAY_MS = 86_400_000
BOLL_WINDOW = 20


def _pct(a: np.ndarray, pcts=PCTS, axis: int = 0) -> dict[str, Any]:
    q = np.percentile(a, pcts, axis=axis)
    return {f"p{p}": (q[i].tolist() if np.ndim(q[i]) else float(q[i])) for i, p in enumerate(pcts)}


def session_vwap_paths(hist_ts: np.ndarray, hist: np.ndarray, fut_ts: np.ndarray, paths: np.ndarray
                       ) -> tuple[float, np.ndarray]:
    """Session (UTC day) VWAP now, and per path and step [N, H] as the path's own bars extend it.
    The session starts at UTC midnight or at the first bar of ``hist``, whichever is later."""
    day = hist_ts[-1] // DAY_MS
    sel = hist_ts // DAY_MS == day
    tp = hist[sel, 1:4].mean(axis=1)  # (high + low + close) / 3
    vol = hist[sel, 4]
    pv0, v0 = float((tp * vol).sum()), float(vol.sum())
    vwap_now = pv0 / v0 if v0 > 0 else float(hist[-1, 3])
    n, h = paths.shape[:2]
    pv = np.full(n, pv0)
    v = np.full(n, v0)
    out = np.empty((n, h))
    cur_day = day
    for t in range(h):
        if fut_ts[t] // DAY_MS != cur_day:  # a new session starts inside the horizon
            cur_day = fut_ts[t] // DAY_MS
            pv[:] = 0.0
            v[:] = 0.0
        vol_t = np.clip(paths[:, t, 4], 0.0, None)
        pv += paths[:, t, 1:4].mean(axis=1) * vol_t
        v += vol_t
        out[:, t] = np.where(v > 0, pv / np.where(v > 0, v, 1.0), paths[:, t, 3])
    return vwap_now, out


def bollinger_mid_paths(hist_close: np.ndarray, path_close: np.ndarray, window: int = BOLL_WINDOW
                        ) -> tuple[float, np.ndarray]:
    """20-bar mean of closes now, and per path and step [N, H] (history then the path's closes)."""
    n, h = path_close.shape
    seq = np.concatenate([np.broadcast_to(hist_close[-window:], (n, min(window, hist_close.size))),
                          path_close], axis=1)
    cs = np.concatenate([np.zeros((n, 1)), np.cumsum(seq, axis=1)], axis=1)
    k = seq.shape[1] - h  # history bars in seq
    out = np.empty((n, h))
    for t in range(h):
        end = k + t + 1
        start = max(0, end - window)
        out[:, t] = (cs[:, end] - cs[:, start]) / (end - start)
    return float(hist_close[-window:].mean()), out


def touch_probability(level: np.ndarray, high: np.ndarray, low: np.ndarray) -> float:
    """Share of paths whose bar range [low, high] contains their level at some step."""
    return float(np.mean(np.any((low <= level) & (level <= high), axis=1)))


def summarize(fc: Forecast, calibration: Any | None = None, session: pd.DataFrame | None = None
              ) -> dict[str, Any]:
    """JSON-ready summary. ``session``: optional earlier candles (ts, OHLCV) of the same series so the
    VWAP covers the whole UTC session, not just the context window."""
    last = fc.last_close
    close, high, low = fc.paths[:, :, 3], fc.paths[:, :, 1], fc.paths[:, :, 2]
    rets = close / last - 1.0
    steps = []
    for t in range(close.shape[1]):
        steps.append({
            "ts": int(fc.future_ts[t]),
            "p_up": float(np.mean(close[:, t] > last)),
            "expected_return": float(rets[:, t].mean()),
            "mean_close": float(close[:, t].mean()),
            "close": _pct(close[:, t]), "high": _pct(high[:, t]), "low": _pct(low[:, t]),
        })
    hist_ts, hist = fc.history_ts, fc.history
    if session is not None and len(session):
        from .normalize import candle_features

        s = session[session["ts"] < hist_ts[0]]
        hist_ts = np.concatenate([s["ts"].to_numpy(np.int64), hist_ts])
        hist = np.concatenate([candle_features(s, np.float64), hist]) if len(s) else hist
    vwap_now, vwap = session_vwap_paths(hist_ts, hist, fc.future_ts, fc.paths)
    mid_now, mid = bollinger_mid_paths(hist[:, 3], close)
    entry = last
    mae_long = np.minimum(low.min(axis=1) / entry - 1.0, 0.0)  # worst dip below entry
    mae_short = np.maximum(high.max(axis=1) / entry - 1.0, 0.0)  # worst rise above entry
    peak = np.maximum.accumulate(np.concatenate([np.full((close.shape[0], 1), entry), high], axis=1), axis=1)
    mdd = np.min(np.concatenate([[[0.0]] * close.shape[0], low / peak[:, :-1] - 1.0], axis=1), axis=1)
    out: dict[str, Any] = {
        "last_ts": int(fc.history_ts[-1]),
        "last_close": last,
        "horizon": int(close.shape[1]),
        "samples": int(close.shape[0]),
        "sampling": {"temperature": fc.config.temperature, "top_k": fc.config.top_k,
                     "top_p": fc.config.top_p, "seed": fc.config.seed},
        "seconds": round(fc.seconds, 4),
        "at_horizon": steps[-1],
        "steps": steps,
        "touch": {
            "session_vwap": {"level_now": vwap_now, "p_touch": touch_probability(vwap, high, low)},
            "bollinger_mid": {"level_now": mid_now, "window": BOLL_WINDOW,
                              "p_touch": touch_probability(mid, high, low)},
        },
        "risk": {  # fractions of the entry price (negative = loss for that side)
            "long_adverse_excursion": _pct(mae_long, tuple(100 - p for p in RISK_PCTS)),
            "short_adverse_excursion": _pct(mae_short, RISK_PCTS),
            "max_drawdown": _pct(mdd, tuple(100 - p for p in RISK_PCTS)),
        },
    }
    if calibration is not None:
        out["calibrated"] = calibration.summarize(fc)
    return out
