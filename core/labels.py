"""The label rule, written once: what counts as down / flat / up after h bars.

The forward log return r = log(close[t+h] / close[t]) over h base bars is
  0 (down) if r < -dead_zone, 2 (up) if r > dead_zone, 1 (flat) otherwise,
and -1 (unknown) where t + h runs past the data. Training labels, the gate's matured outcomes, the
outcome tracker, backtest scores and the dashboard all use ``realised_class`` / ``make_labels``.

The dead zone defaults to the round-trip taker fee (2 x execution.taker_fee_bps): a move smaller than
the cost of a round trip is not worth trading, so it is "flat".
"""

from __future__ import annotations

from typing import overload

import numpy as np

from core.config import ExecutionConfig, LabelsConfig
from core.market.calendar import Calendar
from core.types import timeframe_ms

DOWN, FLAT, UP, UNKNOWN = 0, 1, 2, -1


def dead_zone(execution: ExecutionConfig, labels: LabelsConfig) -> float:
    """Dead zone in log-return units: labels.dead_zone_bps if set, else the round-trip taker fee."""
    bps = labels.dead_zone_bps
    if bps is None:
        bps = 2.0 * execution.taker_fee_bps
    if not bps >= 0:
        raise ValueError(f"labels.dead_zone_bps must be >= 0, got {bps}")
    return float(bps) / 1e4


@overload
def realised_class(log_return: float, dead_zone: float) -> int: ...
@overload
def realised_class(log_return: np.ndarray, dead_zone: float) -> np.ndarray: ...
def realised_class(log_return: float | np.ndarray, dead_zone: float) -> int | np.ndarray:
    """0 down / 1 flat / 2 up for matured forward log returns (scalar -> int, array -> int64 array)."""
    if isinstance(log_return, np.ndarray):
        return np.where(log_return > dead_zone, UP, np.where(log_return < -dead_zone, DOWN, FLAT)).astype(np.int64)
    if log_return > dead_zone:
        return UP
    if log_return < -dead_zone:
        return DOWN
    return FLAT


def check_close(close: np.ndarray) -> np.ndarray:
    """float64 1-D closes, all finite and > 0 (a clear error naming the first bad row otherwise)."""
    c = np.asarray(close, dtype=np.float64)
    if c.ndim != 1:
        raise ValueError(f"close must be 1-D, got shape {c.shape}")
    bad = ~(np.isfinite(c) & (c > 0))
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise ValueError(f"close must be finite and > 0; row {row} has {c[row]!r}")
    return c


def check_horizon(horizon: int) -> int:
    if int(horizon) != horizon or horizon < 1:
        raise ValueError(f"horizon must be an integer >= 1 bar, got {horizon!r}")
    return int(horizon)


def forward_returns(close: np.ndarray, horizon: int) -> np.ndarray:
    """float64 [N]: log(close[t+h] / close[t]); NaN for the last h bars."""
    c, h = check_close(close), check_horizon(horizon)
    out = np.full(c.shape[0], np.nan)
    if c.shape[0] > h:
        out[:-h] = np.log(c[h:] / c[:-h])
    return out


def make_labels(close: np.ndarray, horizon: int, dead_zone: float) -> np.ndarray:
    """int64 [N]: ``realised_class`` of the forward return over ``horizon`` bars; -1 where unknown."""
    if not (dead_zone >= 0):  # also rejects NaN
        raise ValueError(f"dead_zone must be >= 0, got {dead_zone!r}")
    r = forward_returns(close, horizon)
    out = np.full(r.shape[0], UNKNOWN, dtype=np.int64)
    known = np.isfinite(r)
    out[known] = realised_class(r[known], dead_zone)
    return out


def horizon_ok(ts: np.ndarray, horizon: int, timeframe: str, calendar: Calendar | None = None,
               cross_sessions: bool = False) -> np.ndarray:
    """bool [N]: the bar ``horizon`` rows later exists, is exactly ``horizon`` bars later (no gap in the
    data) and -- on a market with sessions, unless ``cross_sessions`` (models.yml labels.cross_sessions)
    -- lies in the same session: "5 bars ahead" of 15:57 is not tomorrow's 09:31. Bars are counted in
    session bars, so 15:59 -> next 09:30 is 1 bar, not a 17.5-hour gap. 24x7: h timeframes later."""
    h = check_horizon(horizon)
    t = np.asarray(ts, dtype=np.int64)
    ok = np.zeros(t.shape[0], dtype=bool)
    if t.shape[0] <= h:
        return ok
    if calendar is None or calendar.always_open:
        ok[:-h] = (t[h:] - t[:-h]) == h * timeframe_ms(timeframe)
        return ok
    idx = calendar.bar_index(t, timeframe)
    ok[:-h] = (idx[h:] - idx[:-h]) == h
    if not cross_sessions:
        day = calendar.day_ids(t)
        ok[:-h] &= day[h:] == day[:-h]
    return ok

