"""The compiled half of core/features.py: fixed indicator periods, the per-bar feature layout and the
numba kernels that compute one timeframe's features in a single pass (the live path cannot afford
~150 small numpy calls per decision). ``build_many`` and ``build_one`` both run these, so a live
sample equals the matching backtest row.
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np

from core.indicators import DAY_MS
from core.pivots import support_resistance_fast

# indicator periods (fixed: experts are trained against them)
EMA_FAST, EMA_SLOW, MACD_SIGNAL = 12, 26, 9
RSI_WINDOW, ATR_WINDOW, BB_WINDOW, VWAP_WINDOW = 14, 14, 20, 20
PIVOT_HIGHER_STRENGTH = 1  # level k >= 2: beats one neighbouring pivot of the level below each side
REGIME_WINDOW = 60
RETURN_HORIZONS = (5, 15, 60)
REF_HORIZONS = (1, 5, 15, 60)
ATR_CLIP = 50.0  # distances in ATR units are clipped: a near-zero ATR must not blow up a network
# base bars before the first bar whose indicators and regime are all warmed up
WARMUP_BARS = max(REGIME_WINDOW, EMA_SLOW + MACD_SIGNAL - 1, RSI_WINDOW + 1, BB_WINDOW)

_BASE_BAR_FEATURES = (
    "open",
    "high",
    "low",
    "close",
    "ret",
    "volume",
    "ema_fast_dist",
    "ema_slow_dist",
    "bb_z",
    "bb_width",
    "rsi",
    "macd",
    "macd_hist",
    "atr_rel",
    "vwap_dist",
)
N_BASE_FEATURES = len(_BASE_BAR_FEATURES)
N_PRICE = 4  # the first four bar features are prices relative to close_t


def bar_feature_names(levels: int) -> tuple[str, ...]:
    piv = tuple(f"{side}{k}_dist" for k in range(1, levels + 1) for side in ("sup", "res"))
    return _BASE_BAR_FEATURES + piv + ("present",)


@dataclass(frozen=True, slots=True)
class Ohlcv:
    ts: np.ndarray  # int64 open times
    o: np.ndarray
    h: np.ndarray
    lo: np.ndarray
    c: np.ndarray
    v: np.ndarray

    def __len__(self) -> int:
        return int(self.ts.shape[0])

    def head(self, n: int) -> Ohlcv:
        return Ohlcv(self.ts[:n], self.o[:n], self.h[:n], self.lo[:n], self.c[:n], self.v[:n])


@numba.njit(cache=True)
def _wilder_atr(h: np.ndarray, lo: np.ndarray, c: np.ndarray, i: int, tr_sum: float,
                atr: float) -> tuple[float, float]:  # pragma: no cover - compiled
    # one step of Wilder's ATR at bar i, seeded with the mean of the first ATR_WINDOW true ranges;
    # returns the updated (sum of the first true ranges, atr) - NaN until the seed is complete
    tr = h[i] - lo[i]
    if i > 0:
        tr = max(tr, abs(h[i] - c[i - 1]), abs(lo[i] - c[i - 1]))
    if i < ATR_WINDOW:
        tr_sum += tr
        if i == ATR_WINDOW - 1:
            atr = tr_sum / ATR_WINDOW
    else:
        atr = (atr * (ATR_WINDOW - 1) + tr) / ATR_WINDOW
    return tr_sum, atr


@numba.njit(cache=True)
def _tf_kernel(
    o: np.ndarray,
    h: np.ndarray,
    lo: np.ndarray,
    c: np.ndarray,
    v: np.ndarray,
    norm_window: int,
    sup: np.ndarray,
    res: np.ndarray,
    start: int,
    out: np.ndarray,
) -> None:  # pragma: no cover - compiled
    # All per-bar features in one compiled pass: the live path cannot afford ~150 small numpy calls
    # per timeframe. Indicator definitions are those of core.indicators (same seeds, same warm-up:
    # a value still warming up reads 0); tests check this kernel against them.
    m = c.shape[0]
    a_f = 2.0 / (EMA_FAST + 1.0)
    a_s = 2.0 / (EMA_SLOW + 1.0)
    a_g = 2.0 / (MACD_SIGNAL + 1.0)
    ema_f = c[0]
    ema_s = c[0]
    sig = 0.0
    atr = np.nan
    tr_sum = 0.0
    up = 0.0
    dn = 0.0
    vsum = 0.0
    nlev = sup.shape[1]
    j0 = N_BASE_FEATURES
    # rows before `start` only advance the recursive state (live: just the last window is needed);
    # out row r holds bar start + r
    for i in range(m):
        # volume vs its trailing mean over norm_window bars (the bar itself included)
        vsum += v[i]
        if i >= norm_window:
            vsum -= v[i - norm_window]
        tr_sum, atr = _wilder_atr(h, lo, c, i, tr_sum, atr)
        ok_atr = atr > 0  # False while NaN
        if i > 0:
            ema_f = a_f * c[i] + (1.0 - a_f) * ema_f
            ema_s = a_s * c[i] + (1.0 - a_s) * ema_s
        # Wilder RSI over close changes, seeded with the mean of the first RSI_WINDOW changes
        if i > 0:
            d = c[i] - c[i - 1]
            g = d if d > 0 else 0.0
            ls = -d if d < 0 else 0.0
            if i <= RSI_WINDOW:
                up += g
                dn += ls
                if i == RSI_WINDOW:
                    up /= RSI_WINDOW
                    dn /= RSI_WINDOW
            else:
                up = (up * (RSI_WINDOW - 1) + g) / RSI_WINDOW
                dn = (dn * (RSI_WINDOW - 1) + ls) / RSI_WINDOW
        # MACD: line from bar EMA_SLOW-1, signal = its EMA seeded there, valid MACD_SIGNAL-1 later
        line = ema_f - ema_s
        if i == EMA_SLOW - 1:
            sig = line
        elif i >= EMA_SLOW:
            sig = a_g * line + (1.0 - a_g) * sig
        if i < start:
            continue
        r = i - start
        lc = 100.0 * np.log(c[i])
        out[r, 0] = 100.0 * np.log(o[i])
        out[r, 1] = 100.0 * np.log(h[i])
        out[r, 2] = 100.0 * np.log(lo[i])
        out[r, 3] = lc
        out[r, 4] = lc - 100.0 * np.log(c[i - 1]) if i > 0 else 0.0
        vmean = vsum / min(i + 1, norm_window)
        out[r, 5] = np.log1p(v[i] / vmean) if vmean > 0 else 0.0
        out[r, 6] = _clip((c[i] - ema_f) / atr) if ok_atr and i >= EMA_FAST - 1 else 0.0
        out[r, 7] = _clip((c[i] - ema_s) / atr) if ok_atr and i >= EMA_SLOW - 1 else 0.0
        # Bollinger (population std) and rolling VWAP over their windows
        if i >= BB_WINDOW - 1:
            mid = 0.0
            for k in range(i - BB_WINDOW + 1, i + 1):
                mid += c[k]
            mid /= BB_WINDOW
            var = 0.0
            for k in range(i - BB_WINDOW + 1, i + 1):
                var += (c[k] - mid) ** 2
            sd = np.sqrt(var / BB_WINDOW)
            out[r, 8] = _clip((c[i] - mid) / sd) if sd > 0 else 0.0
            out[r, 9] = 400.0 * sd / mid
        else:
            out[r, 8] = 0.0
            out[r, 9] = 0.0
        if i >= VWAP_WINDOW - 1 and ok_atr:
            pv = 0.0
            vv = 0.0
            for k in range(i - VWAP_WINDOW + 1, i + 1):
                pv += (h[k] + lo[k] + c[k]) / 3.0 * v[k]
                vv += v[k]
            out[r, 14] = _clip((c[i] - pv / vv) / atr) if vv > 0 else 0.0
        else:
            out[r, 14] = 0.0
        if i >= RSI_WINDOW:
            out[r, 10] = up / (up + dn) - 0.5 if up + dn > 0 else 0.0
        else:
            out[r, 10] = 0.0
        out[r, 11] = _clip(line / atr) if ok_atr and i >= EMA_SLOW - 1 else 0.0
        ok_sig = ok_atr and i >= EMA_SLOW + MACD_SIGNAL - 2
        out[r, 12] = _clip((line - sig) / atr) if ok_sig else 0.0
        out[r, 13] = 100.0 * atr / c[i] if ok_atr else 0.0
        for k in range(nlev):
            s_k = sup[i, k]
            r_k = res[i, k]
            out[r, j0 + 2 * k] = _clip((c[i] - s_k) / atr) if ok_atr and s_k == s_k else 0.0
            out[r, j0 + 2 * k + 1] = _clip((r_k - c[i]) / atr) if ok_atr and r_k == r_k else 0.0
        out[r, j0 + 2 * nlev] = 1.0


@numba.njit(cache=True)
def _clip(x: float) -> float:  # pragma: no cover - compiled
    if x != x:
        return 0.0
    return min(max(x, -ATR_CLIP), ATR_CLIP)


def tf_matrix(
    x: Ohlcv, levels: int, norm_window: int, tail: int | None = None, strength: int = 2
) -> np.ndarray:
    """[M, F] float64 per-bar features of one timeframe series (only the last `tail` rows if
    given). Price columns hold 100*log(price) (made relative to close_t when a sample is
    gathered); every other column is final."""
    start = 0 if tail is None else max(0, len(x) - tail)
    out = np.empty((len(x) - start, N_BASE_FEATURES + 2 * levels + 1))
    if len(x) == 0:
        return out
    sup, res = support_resistance_fast(x.h, x.lo, levels, strength, PIVOT_HIGHER_STRENGTH)
    _tf_kernel(x.o, x.h, x.lo, x.c, x.v, norm_window, sup, res, start, out)
    return out


@numba.njit(cache=True)
def _std_of_returns(lc: np.ndarray, i: int, window: int) -> float:  # pragma: no cover - compiled
    # population std of the last min(i, window) log returns ending at bar i (direct sums, so the
    # value never depends on how much history precedes the window)
    n = min(i, window)
    if n < 2:
        return 0.0
    mean = (lc[i] - lc[i - n]) / n
    var = 0.0
    for j in range(i - n + 1, i + 1):
        var += (lc[j] - lc[j - 1] - mean) ** 2
    return np.sqrt(var / n)


@numba.njit(cache=True)
def _extras_kernel(
    days: np.ndarray,
    h: np.ndarray,
    lo: np.ndarray,
    c: np.ndarray,
    v: np.ndarray,
    lc: np.ndarray,
    norm_window: int,
    start: int,
    flat: np.ndarray,
    regime: np.ndarray,
) -> None:  # pragma: no cover - compiled
    # Per base bar from `start` on: flat extras (session-VWAP distance in ATR units, 100*log
    # returns over RETURN_HORIZONS) and regime (rv_60, ret_60, eff_60, rv_ratio); trailing only.
    atr = np.nan
    tr_sum = 0.0
    day = np.int64(-1)
    spv = 0.0
    sv = 0.0
    for i in range(c.shape[0]):
        tr_sum, atr = _wilder_atr(h, lo, c, i, tr_sum, atr)
        d = days[i]  # the VWAP session resets with the trading day (24x7: 00:00 UTC)
        tp = (h[i] + lo[i] + c[i]) / 3.0
        if d != day:
            day = d
            spv = 0.0
            sv = 0.0
        spv += tp * v[i]
        sv += v[i]
        if i < start:
            continue
        r = i - start
        vw = spv / sv if sv > 0 else tp
        flat[r, 0] = _clip((c[i] - vw) / atr) if atr > 0 else 0.0
        for q in range(len(RETURN_HORIZONS)):
            k = RETURN_HORIZONS[q]
            flat[r, 1 + q] = 100.0 * (lc[i] - lc[i - k]) if i >= k else 0.0
        rv = _std_of_returns(lc, i, REGIME_WINDOW)
        rv_long = _std_of_returns(lc, i, norm_window)
        ret = lc[i] - lc[i - REGIME_WINDOW] if i >= REGIME_WINDOW else 0.0
        path = 0.0
        for j in range(max(1, i - REGIME_WINDOW + 1), i + 1):
            path += abs(lc[j] - lc[j - 1])
        regime[r, 0] = 100.0 * rv
        regime[r, 1] = 100.0 * ret
        regime[r, 2] = ret / path if path > 0 else 0.0
        regime[r, 3] = np.log(rv / rv_long) if rv > 0 and rv_long > 0 else 0.0


def base_extras(x: Ohlcv, norm_window: int, start: int = 0, day: np.ndarray | None = None
                ) -> tuple[np.ndarray, np.ndarray]:
    """Flat extras [M - start, 1 + len(RETURN_HORIZONS)] and regime [M - start, 4] of the base bars
    from `start` on (live: only the last bar). ``day``: the trading day of each bar (VWAP resets when it
    changes); None = the UTC day."""
    rows = len(x) - start
    flat = np.zeros((rows, 1 + len(RETURN_HORIZONS)))
    regime = np.zeros((rows, 4))
    if rows > 0:
        day = x.ts // DAY_MS if day is None else np.asarray(day, dtype=np.int64)
        _extras_kernel(day, x.h, x.lo, x.c, x.v, np.log(x.c), norm_window, start, flat, regime)
    return flat, regime


@numba.njit(cache=True)
def gather_windows(mat: np.ndarray, last: np.ndarray, logc: np.ndarray, out: np.ndarray) -> None:  # pragma: no cover
    # out[s] = the `win` rows of mat ending at last[s] (left-padded with zeros), prices made
    # relative to the sample's own close: 100*log(x) - 100*log(close_t).
    win = out.shape[1]
    f = out.shape[2]
    for s in range(last.shape[0]):
        for li in range(win):
            row = last[s] - win + 1 + li
            if row < 0:
                for k in range(f):
                    out[s, li, k] = 0.0
                continue
            for k in range(N_PRICE):
                out[s, li, k] = mat[row, k] - logc[s]
            for k in range(N_PRICE, f):
                out[s, li, k] = mat[row, k]
