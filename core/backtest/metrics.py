"""Backtest metrics: pure numpy functions over an equity curve, fills and bar timestamps, plus the
calibration of predicted probabilities.

Conventions (the report and the tests rely on them):
* ``equity`` is the account value at each bar's close; per-bar returns are simple returns
  ``equity[t] / equity[t-1] - 1``. Pass ``initial_equity`` to ``summary`` to measure from the cash the
  run started with rather than from the first close.
* Annualisation uses calendar time (crypto trades 365 days): bars per year = 365 days / the median bar
  spacing of ``ts`` (int64 ms). Sharpe and Sortino use a zero risk-free rate; Sortino's downside
  deviation is sqrt(mean(min(r, 0)^2)) over ALL bars.
* A trade is a round trip: from a flat position to flat again (a flip closes one trade and opens the
  next; the flipping fill's quantity and fee are split pro rata). Its PnL is net of fees. A position
  still open at the end is not a trade.
* Undefined values (no trades, zero variance, no drawdown) are NaN, never a made-up number.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from core.execution import kernel as K
from core.labels import make_labels
from core.types import timeframe_ms

YEAR_MS = 365 * 86_400_000


def _f64(a: Any, name: str) -> np.ndarray:
    x = np.asarray(a, dtype=np.float64)
    if x.ndim != 1:
        raise ValueError(f"{name}: expected a 1-d array, got shape {x.shape}")
    return x


def _equity(equity: Any) -> np.ndarray:
    e = _f64(equity, "equity")
    if e.size == 0:
        raise ValueError("equity: empty curve")
    if not np.isfinite(e).all() or (e <= 0).any():
        i = int(np.argmax(~np.isfinite(e) | (e <= 0)))
        raise ValueError(f"equity[{i}]={e[i]!r}: equity must be finite and > 0")
    return e


def _ppy_from_ts(ts: Any) -> float:
    return periods_per_year(ts)


def periods_per_year(ts: Any) -> float:
    """Bars per year from the median spacing of bar timestamps (ms)."""
    t = _f64(ts, "ts")
    if t.size < 2:
        raise ValueError("ts: need at least 2 timestamps to infer the bar spacing")
    dt = float(np.median(np.diff(t)))
    if dt <= 0:
        raise ValueError("ts must be increasing")
    return YEAR_MS / dt


def bar_returns(equity: Any) -> np.ndarray:
    e = _equity(equity)
    return e[1:] / e[:-1] - 1.0


def total_return(equity: Any) -> float:
    e = _equity(equity)
    return float(e[-1] / e[0] - 1.0)


def cagr(equity: Any, ts: Any) -> float:
    """Compound annual growth rate over the span from the first to the last timestamp."""
    e = _equity(equity)
    t = _f64(ts, "ts")
    if t.shape != e.shape:
        raise ValueError(f"ts has {t.size} values, equity {e.size}")
    years = (t[-1] - t[0]) / YEAR_MS
    if years <= 0:
        return math.nan
    return float((e[-1] / e[0]) ** (1.0 / years) - 1.0)


def sharpe(equity: Any, ppy: float) -> float:
    r = bar_returns(equity)
    if r.size < 2:
        return math.nan
    sd = float(np.std(r, ddof=1))
    return math.nan if sd == 0 else float(np.mean(r) / sd * math.sqrt(ppy))


def sortino(equity: Any, ppy: float) -> float:
    r = bar_returns(equity)
    if r.size < 2:
        return math.nan
    dd = math.sqrt(float(np.mean(np.minimum(r, 0.0) ** 2)))
    return math.nan if dd == 0 else float(np.mean(r) / dd * math.sqrt(ppy))


def max_drawdown(equity: Any) -> tuple[float, int, int, int]:
    """(max drawdown as a positive fraction, its peak index, trough index, longest drawdown duration in
    bars). The duration is the longest stretch spent below a previous peak, counted from the peak bar
    to the bar that regains it (or to the last bar when it never does)."""
    e = _equity(equity)
    peak = np.maximum.accumulate(e)
    dd = 1.0 - e / peak
    trough = int(np.argmax(dd))
    mdd = float(dd[trough])
    peak_i = int(np.argmax(e[: trough + 1])) if mdd > 0 else trough
    longest = 0
    last_peak = 0
    under = False
    for i in range(1, e.size):
        if e[i] >= peak[i]:  # at a new or regained high
            if under:
                longest = max(longest, i - last_peak)
                under = False
            last_peak = i
        else:
            under = True
            longest = max(longest, i - last_peak)
    return mdd, peak_i, trough, longest


def calmar(equity: Any, ts: Any) -> float:
    mdd = max_drawdown(equity)[0]
    return math.nan if mdd == 0 else float(cagr(equity, ts) / mdd)


def _sides(side: Any) -> np.ndarray:
    s = np.asarray(side)
    if s.dtype.kind in "USO":
        low = np.char.lower(s.astype(str))
        bad = ~np.isin(low, ("buy", "sell"))
        if bad.any():
            raise ValueError(f"fill side {s[int(np.argmax(bad))]!r}: expected 'buy' or 'sell'")
        return np.where(low == "buy", 1.0, -1.0)
    f = s.astype(np.float64)
    if not np.isin(f, (1.0, -1.0)).all():
        raise ValueError("fill side must be +1 (buy) or -1 (sell)")
    return f


def round_trips(side: Any, qty: Any, price: Any, fee: Any) -> np.ndarray:
    """Net PnL (quote currency, fees included) of each completed round trip, in order."""
    s = _sides(side)
    q, p, f = _f64(qty, "qty"), _f64(price, "price"), _f64(fee, "fee")
    if not (s.size == q.size == p.size == f.size):
        raise ValueError("fills: side, qty, price and fee must have the same length")
    if (q <= 0).any():
        raise ValueError("fills: qty must be > 0")
    pnls: list[float] = []
    pos = 0.0
    flow = 0.0  # cash in minus cash out of the open trade
    tol = 1e-12
    for i in range(s.size):
        dq = s[i] * q[i]
        if pos != 0.0 and (pos > 0) != (dq > 0) and abs(dq) > abs(pos) * (1 + tol):
            # a flip: the closing part ends this trade, the rest opens the next
            part = abs(pos) / abs(dq)
            flow += pos * p[i] - f[i] * part  # closing -pos units brings in pos * price
            pnls.append(flow)
            rest = dq + pos
            pos = rest
            flow = -rest * p[i] - f[i] * (1 - part)
            continue
        flow += -dq * p[i] - f[i]
        pos += dq
        if abs(pos) <= tol * max(q[i], 1.0):
            pos = 0.0
            pnls.append(flow)
            flow = 0.0
    return np.asarray(pnls, dtype=np.float64)


def trade_stats(pnl: Any) -> dict[str, float]:
    x = _f64(pnl, "pnl")
    if x.size == 0:
        return {"n_trades": 0, "win_rate": math.nan, "profit_factor": math.nan, "expectancy": math.nan}
    gains = float(x[x > 0].sum())
    losses = float(-x[x < 0].sum())
    pf = math.inf if losses == 0 and gains > 0 else (math.nan if losses == 0 else gains / losses)
    return {"n_trades": int(x.size), "win_rate": float(np.mean(x > 0)), "profit_factor": pf,
            "expectancy": float(np.mean(x))}


def exposure(position: Any) -> float:
    """Fraction of bars ending with an open position."""
    p = _f64(position, "position")
    return math.nan if p.size == 0 else float(np.mean(p != 0))


def turnover(qty: Any, price: Any, equity: Any) -> float:
    """Traded notional divided by the mean equity (how many times the book was traded)."""
    notional = float(np.sum(_f64(qty, "qty") * _f64(price, "price")))
    return notional / float(np.mean(_equity(equity)))


def buy_and_hold(close: Any) -> float:
    """Return of holding the asset from the first to the last close of the same bars (no fees)."""
    c = _equity(close)
    return float(c[-1] / c[0] - 1.0)


# ---------------------------------------------------------------- calibration


def _probs_labels(probs: Any, y: Any) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(probs, dtype=np.float64)
    t = np.asarray(y)
    if p.ndim != 2 or t.ndim != 1 or p.shape[0] != t.shape[0]:
        raise ValueError(f"probs must be [N, K] and classes [N]; got {p.shape} and {t.shape}")
    keep = t >= 0  # -1 marks outcomes that are not known yet
    p, t = p[keep], t[keep].astype(np.int64)
    if (t >= p.shape[1]).any():
        raise ValueError(f"class index {int(t.max())} out of range for {p.shape[1]} classes")
    if not np.isfinite(p).all() or (p < 0).any() or not np.allclose(p.sum(axis=1), 1.0, atol=1e-6):
        raise ValueError("probs must be finite, >= 0 and sum to 1 in each row")
    return p, t


def brier(probs: Any, y: Any) -> float:
    """Multi-class Brier score: mean over samples of sum_k (p_k - 1[y = k])^2 (0 best, 2 worst)."""
    p, t = _probs_labels(probs, y)
    if t.size == 0:
        return math.nan
    onehot = np.zeros_like(p)
    onehot[np.arange(t.size), t] = 1.0
    return float(np.mean(np.sum((p - onehot) ** 2, axis=1)))


def ece(probs: Any, y: Any, n_bins: int = 10) -> float:
    """Expected calibration error of the top-class confidence: equal-width bins on [0, 1] (the last
    bin closed), sum over bins of (bin share) * |accuracy - mean confidence|."""
    p, t = _probs_labels(probs, y)
    if t.size == 0:
        return math.nan
    conf = p.max(axis=1)
    correct = (p.argmax(axis=1) == t).astype(np.float64)
    b = np.minimum((conf * n_bins).astype(np.int64), n_bins - 1)
    total = 0.0
    for k in range(n_bins):
        m = b == k
        if m.any():
            total += m.mean() * abs(correct[m].mean() - conf[m].mean())
    return float(total)


# ---------------------------------------------------------------- everything at once


def summary(equity: Any, ts: Any, position: Any, fills: Any, close: Any,
            initial_equity: float | None = None, timeframe: str | None = None,
            periods_per_year: float | None = None) -> dict[str, float]:
    """All backtest metrics in one flat dict. ``fills``: a DataFrame (or mapping) with columns side
    ('buy'/'sell' or +1/-1), amount, price, fee. With ``initial_equity`` the curve starts from it one
    bar before ts[0] (the cash before the first bar). ``timeframe`` (ccxt string) fixes the bars per
    year; without it they come from the median bar spacing of ``ts``. ``periods_per_year`` overrides
    both: a market with sessions annualises by its session bars (1m NYSE RTH ~ 97,750, not 525,600);
    durations in ms then count session time."""
    e = _equity(equity)
    t = _f64(ts, "ts")
    if t.size != e.size:
        raise ValueError(f"ts has {t.size} values, equity {e.size}")
    ppy = periods_per_year if periods_per_year is not None else (
        YEAR_MS / timeframe_ms(timeframe) if timeframe else _ppy_from_ts(t))
    if initial_equity is not None:
        e = np.concatenate(([float(initial_equity)], e))
        t = np.concatenate(([t[0] - YEAR_MS / ppy], t))
    side, qty, price, fee = (np.asarray(fills[k]) for k in ("side", "amount", "price", "fee"))
    pnl = round_trips(side, qty, price, fee) if len(qty) else np.empty(0)
    mdd, peak_i, trough_i, dd_bars = max_drawdown(e)
    out: dict[str, float] = {
        "total_return": total_return(e),
        "cagr": cagr(e, t),
        "sharpe": sharpe(e, ppy),
        "sortino": sortino(e, ppy),
        "calmar": calmar(e, t),
        "max_drawdown": mdd,
        "max_drawdown_bars": dd_bars,
        "max_drawdown_duration_ms": float(dd_bars * YEAR_MS / ppy),
        "exposure": exposure(position),
        "turnover": turnover(qty, price, e) if len(qty) else 0.0,
        "fees_paid": float(np.sum(np.asarray(fee, dtype=np.float64))),
        "n_fills": int(len(qty)),
        "buy_and_hold": buy_and_hold(close),
        "final_equity": float(e[-1]),
        "bars": int(_f64(close, "close").size),
        "periods_per_year": ppy,
    }
    out.update(trade_stats(pnl))
    return out


def compute_metrics(candles: pd.DataFrame, equity: np.ndarray, position: np.ndarray, fills: pd.DataFrame,
                    state: np.ndarray, initial_cash: float, timeframe: str, codes: np.ndarray | None = None,
                    horizon: int = 5, *, decided: np.ndarray | None = None, fused: np.ndarray | None = None,
                    dead_zone: float = 0.0, periods_per_year: float | None = None) -> dict[str, Any]:
    """A backtest report's figures: every metric of ``summary`` (one definition, hand-checked in
    tests), the kernel's risk counters, and — for expert runs — the decision counts, the directional
    hit rate of BUY/SELL over ``horizon`` bars, and the fused probabilities' Brier score and ECE
    against the realised class (dead zone as for labels) on bars where a decision was made."""
    close = candles["close"].to_numpy(np.float64)
    m: dict[str, Any] = summary(equity, candles["ts"].to_numpy(np.int64), position, fills, close,
                                initial_equity=initial_cash, timeframe=timeframe,
                                periods_per_year=periods_per_year)
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
            m["fused_brier"] = brier(np.where(dm[:, None], fused, 1 / 3), y)
            m["fused_ece"] = ece(np.where(dm[:, None], fused, 1 / 3), y)
    return m
