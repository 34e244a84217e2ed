"""Technical indicators on numpy arrays (float64 in, float64 out, same length as the input).

Every value at index t uses inputs up to t only. Values before an indicator has enough bars are NaN
(its warm-up). Recursive filters (EMA, Wilder smoothing) run in small numba kernels because a Python
loop is too slow on the live path and numpy has no first-order IIR filter.

Conventions follow the `ta` library so results can be cross-checked against it:
SMA/Bollinger use a plain rolling window (population std); EMA is seeded with the first input;
MACD's signal line is the EMA of the MACD line from its first defined value; RSI and ATR use Wilder
smoothing (alpha = 1/window) seeded with the simple mean of the first `window` values (RSI's seed is
the classic Wilder one, `ta` seeds with 0 instead; both agree after warm-up).
"""

from __future__ import annotations

import numba
import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

DAY_MS = 86_400_000


def _f64(x: np.ndarray | list[float]) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 1:
        raise ValueError(f"indicator input must be 1-D, got shape {a.shape}")
    return a


def _check_window(window: int, name: str = "window") -> None:
    if int(window) < 1:
        raise ValueError(f"{name} must be >= 1, got {window}")


@numba.njit(cache=True)
def _ewm_kernel(x: np.ndarray, alpha: float, start: int) -> np.ndarray:  # pragma: no cover - compiled
    out = np.full(x.shape[0], np.nan)
    if start >= x.shape[0]:
        return out
    acc = x[start]
    out[start] = acc
    for i in range(start + 1, x.shape[0]):
        v = x[i]
        if v == v:  # NaN inputs carry the previous value (they never occur after validation)
            acc = alpha * v + (1.0 - alpha) * acc
        out[i] = acc
    return out


@numba.njit(cache=True)
def _wilder_kernel(x: np.ndarray, window: int, start: int) -> np.ndarray:  # pragma: no cover - compiled
    # Wilder's smoothing: seed = mean of the first `window` values from `start`, then
    # s_t = (s_{t-1} * (window - 1) + x_t) / window.
    n = x.shape[0]
    out = np.full(n, np.nan)
    first = start + window - 1
    if first >= n:
        return out
    acc = 0.0
    for i in range(start, first + 1):
        acc += x[i]
    acc /= window
    out[first] = acc
    for i in range(first + 1, n):
        acc = (acc * (window - 1) + x[i]) / window
        out[i] = acc
    return out


def _first_finite(x: np.ndarray) -> int:
    idx = np.flatnonzero(np.isfinite(x))
    return int(idx[0]) if idx.size else x.shape[0]


def sma(x: np.ndarray, window: int) -> np.ndarray:
    """Simple moving average over `window` bars; NaN for the first window-1 bars."""
    _check_window(window)
    x = _f64(x)
    out = np.full(x.shape[0], np.nan)
    if x.shape[0] >= window:
        # sliding means, not cumsum differences: cumsum loses precision on long series of large prices
        out[window - 1 :] = sliding_window_view(x, window).mean(axis=-1)
    return out


def rolling_std(x: np.ndarray, window: int) -> np.ndarray:
    """Population (ddof=0) standard deviation over `window` bars; NaN during warm-up."""
    _check_window(window)
    x = _f64(x)
    out = np.full(x.shape[0], np.nan)
    if x.shape[0] >= window:
        out[window - 1 :] = sliding_window_view(x, window).std(axis=-1)
    return out


def ema(x: np.ndarray, window: int) -> np.ndarray:
    """Exponential moving average, alpha = 2 / (window + 1), seeded with the first finite input.

    NaN before the seed and for the first window-1 values after it (warm-up, as `ta` reports it)."""
    _check_window(window)
    x = _f64(x)
    start = _first_finite(x)
    out = _ewm_kernel(x, 2.0 / (window + 1.0), start)
    out[start : start + window - 1] = np.nan
    return out


def bollinger(x: np.ndarray, window: int = 20, k: float = 2.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(middle, upper, lower) Bollinger bands: SMA +/- k population standard deviations."""
    mid = sma(x, window)
    sd = rolling_std(x, window)
    return mid, mid + k * sd, mid - k * sd


def rsi(close: np.ndarray, window: int = 14) -> np.ndarray:
    """Wilder's RSI in [0, 100]; NaN for the first `window` bars. A flat stretch (no gains, no
    losses) reads 50; only gains reads 100."""
    _check_window(window)
    c = _f64(close)
    n = c.shape[0]
    if n < 2:
        return np.full(n, np.nan)
    d = np.diff(c)
    up = _wilder_kernel(np.maximum(d, 0.0), window, 0)
    dn = _wilder_kernel(np.maximum(-d, 0.0), window, 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        val = 100.0 * up / (up + dn)
    val = np.where((up + dn) == 0.0, 50.0, val)
    val[~np.isfinite(up)] = np.nan
    return np.concatenate(([np.nan], val))


def macd(
    close: np.ndarray, fast: int = 12, slow: int = 26, signal: int = 9
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(macd, signal, histogram): EMA(fast) - EMA(slow), its EMA(signal), and their difference."""
    if fast >= slow:
        raise ValueError(f"MACD fast ({fast}) must be shorter than slow ({slow})")
    line = ema(close, fast) - ema(close, slow)
    sig = ema(line, signal)
    return line, sig, line - sig


def true_range(high: np.ndarray, low: np.ndarray, close: np.ndarray) -> np.ndarray:
    """max(high - low, |high - prev close|, |low - prev close|); the first bar is high - low."""
    h, lo, c = _f64(high), _f64(low), _f64(close)
    tr = h - lo
    if h.shape[0] > 1:
        pc = c[:-1]
        tr[1:] = np.maximum(tr[1:], np.maximum(np.abs(h[1:] - pc), np.abs(lo[1:] - pc)))
    return tr


def atr(high: np.ndarray, low: np.ndarray, close: np.ndarray, window: int = 14) -> np.ndarray:
    """Wilder's average true range; first value at index window-1 = mean of the first `window` TRs."""
    _check_window(window)
    return _wilder_kernel(true_range(high, low, close), int(window), 0)


def typical_price(high: np.ndarray, low: np.ndarray, close: np.ndarray) -> np.ndarray:
    return (_f64(high) + _f64(low) + _f64(close)) / 3.0


def vwap_rolling(
    high: np.ndarray, low: np.ndarray, close: np.ndarray, volume: np.ndarray, window: int = 14
) -> np.ndarray:
    """Volume-weighted typical price over the last `window` bars (NaN during warm-up and where the
    window traded nothing)."""
    _check_window(window)
    tp = typical_price(high, low, close)
    v = _f64(volume)
    out = np.full(tp.shape[0], np.nan)
    if tp.shape[0] >= window:
        pv = sliding_window_view(tp * v, window).sum(axis=-1)
        vv = sliding_window_view(v, window).sum(axis=-1)
        with np.errstate(divide="ignore", invalid="ignore"):
            out[window - 1 :] = np.where(vv > 0, pv / vv, np.nan)
    return out


def vwap_session(
    ts: np.ndarray,
    high: np.ndarray,
    low: np.ndarray,
    close: np.ndarray,
    volume: np.ndarray,
    session_ms: int = DAY_MS,
) -> np.ndarray:
    """Session VWAP: volume-weighted typical price since the session start (00:00 UTC by default),
    resetting at each new session. ts = bar open times in ms. Bars of a session with no volume yet
    fall back to their typical price."""
    t = np.asarray(ts, dtype=np.int64)
    tp = typical_price(high, low, close)
    v = _f64(volume)
    n = tp.shape[0]
    if t.shape[0] != n:
        raise ValueError(f"ts has {t.shape[0]} rows, prices have {n}")
    if n == 0:
        return tp
    out = np.empty(n)
    _session_vwap_kernel(t, tp, v, np.int64(session_ms), out)
    return out


@numba.njit(cache=True)
def _session_vwap_kernel(
    ts: np.ndarray, tp: np.ndarray, v: np.ndarray, session_ms: np.int64, out: np.ndarray
) -> None:  # pragma: no cover - compiled
    # running sums restarted at each session: exact per session, unlike differences of one long
    # cumulative sum (which lose ~1e-12 relative on long series of large prices)
    session = np.int64(-1)
    pv = 0.0
    vv = 0.0
    for i in range(tp.shape[0]):
        s = ts[i] // session_ms
        if s != session:
            session = s
            pv = 0.0
            vv = 0.0
        pv += tp[i] * v[i]
        vv += v[i]
        out[i] = pv / vv if vv > 0 else tp[i]


def log_returns(close: np.ndarray) -> np.ndarray:
    """log(c_t / c_{t-1}); NaN for the first bar."""
    c = _f64(close)
    out = np.full(c.shape[0], np.nan)
    if c.shape[0] > 1:
        out[1:] = np.log(c[1:] / c[:-1])
    return out
