"""One FeatureBuilder for training, backtests and live: candles -> FeatureBatch (core/types.py).

A sample at base bar t describes the market at the CLOSE of bar t, from bars up to t only.

What goes in (README "Features and labels" has the user-facing description):
* windows [N, T, L, F]: for each timeframe (base first), the last L bars CLOSED by the close of bar t
  (a higher-timeframe bar opening at b is used once b + tf <= ts_t + base). Per bar (BAR_FEATURES):
  open/high/low/close as 100*log(x / close_t) (close_t = the sample's own last base close, so the
  scale of the price never matters), the bar's log return, volume as log1p(v / trailing mean volume
  over `norm_window` bars), indicators as distances in ATR units or bounded oscillators, distances
  to the last CONFIRMED Williams support/resistance of each level, and `present` (1 real bar, 0 pad).
* Windows without enough history are zero-padded on the LEFT with present = 0 (the 1m data never
  holds 64 daily bars); indicator values still in warm-up read 0. No price is ever invented.
* flat [N, D]: the last bar's features of every timeframe, the session-VWAP distance, base returns
  over 5/15/60 bars and the reference symbol's returns over 1/5/15/60 bars (+ ref_present).
* regime [N, R]: realised volatility over 60 bars, return over 60 bars, efficiency ratio and the
  ratio of short to long (norm_window) volatility -- all trailing.

`build_many` and `build_one` share `_tf_matrix`, so a live sample equals the matching row of a
backtest (exactly, up to the decay of recursive indicators seeded inside a 1500-bar snapshot).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from numpy.lib.stride_tricks import sliding_window_view

from core import indicators as ind
from core.config import FeaturesConfig
from core.pivots import market_structure, support_resistance
from core.types import CANDLE_COLUMNS, FeatureBatch, FeatureSpec, timeframe_ms

# indicator periods (fixed: experts are trained against them)
EMA_FAST, EMA_SLOW, MACD_SIGNAL = 12, 26, 9
RSI_WINDOW, ATR_WINDOW, BB_WINDOW, VWAP_WINDOW = 14, 14, 20, 20
PIVOT_STRENGTH, PIVOT_HIGHER_STRENGTH = 2, 1
REGIME_WINDOW = 60
RETURN_HORIZONS = (5, 15, 60)
REF_HORIZONS = (1, 5, 15, 60)
ATR_CLIP = 50.0  # distances in ATR units are clipped: a near-zero ATR must not blow up a network
# base bars before the first bar whose indicators and regime are all warmed up
WARMUP_BARS = max(REGIME_WINDOW, EMA_SLOW + MACD_SIGNAL - 1, RSI_WINDOW + 1, BB_WINDOW)
CHUNK = 2048  # samples gathered per step in build_many (bounds temporary memory)

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
_N_PRICE = 4  # the first four bar features are prices relative to close_t


def _bar_feature_names(levels: int) -> tuple[str, ...]:
    piv = tuple(f"{side}{k}_dist" for k in range(1, levels + 1) for side in ("sup", "res"))
    return _BASE_BAR_FEATURES + piv + ("present",)


@dataclass(frozen=True, slots=True)
class _Ohlcv:
    ts: np.ndarray  # int64 open times
    o: np.ndarray
    h: np.ndarray
    lo: np.ndarray
    c: np.ndarray
    v: np.ndarray

    def __len__(self) -> int:
        return int(self.ts.shape[0])

    def head(self, n: int) -> _Ohlcv:
        return _Ohlcv(self.ts[:n], self.o[:n], self.h[:n], self.lo[:n], self.c[:n], self.v[:n])


def _as_ohlcv(df: pd.DataFrame, what: str) -> _Ohlcv:
    """Validated arrays from a candle DataFrame; a clear error naming what is wrong."""
    if not isinstance(df, pd.DataFrame):
        raise TypeError(
            f"{what}: expected a DataFrame with columns {CANDLE_COLUMNS}, got {type(df).__name__}"
        )
    missing = [c for c in CANDLE_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"{what}: missing columns {missing} (need {list(CANDLE_COLUMNS)})")
    ts = df["ts"].to_numpy()
    if not np.issubdtype(ts.dtype, np.integer):
        raise ValueError(f"{what}: column ts must be int64 milliseconds, got dtype {ts.dtype}")
    ts = ts.astype(np.int64, copy=False)
    if ts.shape[0] > 1 and not np.all(np.diff(ts) > 0):
        bad = int(np.flatnonzero(np.diff(ts) <= 0)[0]) + 1
        raise ValueError(
            f"{what}: ts must be strictly increasing; row {bad} has ts={ts[bad]} after {ts[bad - 1]}"
        )
    cols = {}
    for name in ("open", "high", "low", "close", "volume"):
        a = df[name].to_numpy(dtype=np.float64)
        ok = np.isfinite(a) & ((a >= 0) if name == "volume" else (a > 0))
        if not ok.all():
            row = int(np.flatnonzero(~ok)[0])
            rule = "finite and >= 0" if name == "volume" else "finite and > 0"
            raise ValueError(f"{what}: column {name} must be {rule}; row {row} (ts={ts[row]}) has {a[row]!r}")
        cols[name] = a
    return _Ohlcv(ts, cols["open"], cols["high"], cols["low"], cols["close"], cols["volume"])


def resample_candles(candles: pd.DataFrame, timeframe: str) -> pd.DataFrame:
    """Buckets of `timeframe` aligned to multiples of it in UTC (first open, max high, min low, last
    close, summed volume). The trailing bucket is returned even if not complete: callers decide
    which buckets have closed (FeatureBuilder uses open + tf <= now)."""
    x = _as_ohlcv(candles, "resample input")
    r = _resample(x, timeframe_ms(timeframe))
    return pd.DataFrame({"ts": r.ts, "open": r.o, "high": r.h, "low": r.lo, "close": r.c, "volume": r.v})


def _resample(x: _Ohlcv, tf_ms: int) -> _Ohlcv:
    if len(x) == 0:
        return x
    bucket = (x.ts // tf_ms) * tf_ms
    starts = np.flatnonzero(np.r_[True, bucket[1:] != bucket[:-1]])
    ends = np.r_[starts[1:], len(x)] - 1
    return _Ohlcv(
        bucket[starts],
        x.o[starts],
        np.maximum.reduceat(x.h, starts),
        np.minimum.reduceat(x.lo, starts),
        x.c[ends],
        np.add.reduceat(x.v, starts),
    )


def _safe_div(num: np.ndarray, den: np.ndarray, clip: float | None = None) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(den > 0, num / den, 0.0)
    out = np.nan_to_num(out, nan=0.0, posinf=0.0, neginf=0.0)
    if clip is not None:
        np.clip(out, -clip, clip, out=out)
    return out


def _trailing_sums(x: np.ndarray, window: int) -> np.ndarray:
    """Sum of x over the last `window` elements (fewer at the start), via cumulative sums: used only
    on small, centred values (returns), where cumsum differences keep full precision."""
    cs = np.cumsum(x)
    out = cs.copy()
    out[window:] -= cs[:-window]
    return out


def _tf_matrix(x: _Ohlcv, levels: int, norm_window: int) -> np.ndarray:
    """[M, F] float64 per-bar features of one timeframe series. Price columns hold 100*log(price)
    (made relative to close_t when a sample is gathered); every other column is final."""
    m = len(x)
    f = len(_BASE_BAR_FEATURES) + 2 * levels + 1
    out = np.zeros((m, f))
    if m == 0:
        return out
    c = x.c
    out[:, 0] = 100.0 * np.log(x.o)
    out[:, 1] = 100.0 * np.log(x.h)
    out[:, 2] = 100.0 * np.log(x.lo)
    out[:, 3] = 100.0 * np.log(c)
    out[1:, 4] = out[1:, 3] - out[:-1, 3]
    # volume vs its trailing mean (the bar itself included): scale-free across symbols
    vmean = _trailing_sums(x.v, norm_window) / np.minimum(np.arange(1, m + 1), norm_window)
    out[:, 5] = np.log1p(_safe_div(x.v, vmean))
    a = ind.atr(x.h, x.lo, c, ATR_WINDOW)
    out[:, 6] = _safe_div(c - ind.ema(c, EMA_FAST), a, ATR_CLIP)
    out[:, 7] = _safe_div(c - ind.ema(c, EMA_SLOW), a, ATR_CLIP)
    mid, up, _ = ind.bollinger(c, BB_WINDOW, 2.0)
    sd = (up - mid) / 2.0
    out[:, 8] = _safe_div(c - mid, sd, ATR_CLIP)
    out[:, 9] = _safe_div(4.0 * sd, mid) * 100.0
    out[:, 10] = np.nan_to_num(ind.rsi(c, RSI_WINDOW) / 100.0 - 0.5, nan=0.0)
    line, _, hist = ind.macd(c, EMA_FAST, EMA_SLOW, MACD_SIGNAL)
    out[:, 11] = _safe_div(line, a, ATR_CLIP)
    out[:, 12] = _safe_div(hist, a, ATR_CLIP)
    out[:, 13] = _safe_div(a, c) * 100.0
    out[:, 14] = _safe_div(c - ind.vwap_rolling(x.h, x.lo, c, x.v, VWAP_WINDOW), a, ATR_CLIP)
    ms = market_structure(x.h, x.lo, levels, PIVOT_STRENGTH, PIVOT_HIGHER_STRENGTH)
    sup, res = support_resistance(ms, levels)
    j = len(_BASE_BAR_FEATURES)
    for k in range(levels):
        out[:, j + 2 * k] = _safe_div(c - sup[:, k], a, ATR_CLIP)
        out[:, j + 2 * k + 1] = _safe_div(res[:, k] - c, a, ATR_CLIP)
    out[:, -1] = 1.0
    return out


def _base_extras(x: _Ohlcv, norm_window: int) -> tuple[np.ndarray, np.ndarray]:
    """Per base bar: extra flat columns (session VWAP distance, returns over RETURN_HORIZONS) [M, 4]
    and regime [M, 4] (rv_60, ret_60, eff_60, rv_ratio). Trailing only."""
    m = len(x)
    lc = np.log(x.c)
    r = np.zeros(m)
    r[1:] = np.diff(lc)
    idx = np.arange(m)

    def ret_over(k: int) -> np.ndarray:
        out = np.zeros(m)
        out[k:] = 100.0 * (lc[k:] - lc[:-k])
        return out

    a = ind.atr(x.h, x.lo, x.c, ATR_WINDOW)
    sv = ind.vwap_session(x.ts, x.h, x.lo, x.c, x.v)
    flat = np.column_stack([_safe_div(x.c - sv, a, ATR_CLIP)] + [ret_over(k) for k in RETURN_HORIZONS])

    def vol(window: int) -> np.ndarray:
        n = np.minimum(idx, window).astype(np.float64)  # returns available in the window
        s1, s2 = _trailing_sums(r, window), _trailing_sums(r * r, window)
        mean = _safe_div(s1, n)
        var = np.maximum(_safe_div(s2, n) - mean * mean, 0.0)
        return np.where(n >= 2, np.sqrt(var), 0.0)

    rv = vol(REGIME_WINDOW)
    rv_long = vol(norm_window)
    ret60 = np.zeros(m)
    ret60[REGIME_WINDOW:] = lc[REGIME_WINDOW:] - lc[:-REGIME_WINDOW]
    path = _trailing_sums(np.abs(r), REGIME_WINDOW)
    eff = _safe_div(ret60, path)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where((rv > 0) & (rv_long > 0), np.log(rv / rv_long), 0.0)
    regime = np.column_stack([100.0 * rv, 100.0 * ret60, eff, ratio])
    return flat, regime


def _ref_features(ref: pd.DataFrame | None, ts: np.ndarray) -> np.ndarray:
    """[N, len(REF_HORIZONS) + 1]: 100 * log return of the reference symbol over its last k bars
    that opened at or before each sample's ts, then ref_present (1 when the reference has a bar
    at exactly that ts). Zeros without a reference."""
    out = np.zeros((ts.shape[0], len(REF_HORIZONS) + 1))
    if ref is None:
        return out
    rx = _as_ohlcv(ref, "reference candles")
    if len(rx) == 0:
        return out
    lc = np.log(rx.c)
    i = np.searchsorted(rx.ts, ts, side="right") - 1
    for col, k in enumerate(REF_HORIZONS):
        ok = i - k >= 0
        out[ok, col] = 100.0 * (lc[i[ok]] - lc[i[ok] - k])
    has = i >= 0
    out[has, -1] = (rx.ts[i[has]] == ts[has]).astype(np.float64)
    return out


class FeatureBuilder:
    """Turns candles into FeatureBatches (see the module docstring for the layout)."""

    def __init__(self, cfg: FeaturesConfig, base_timeframe: str) -> None:
        self.cfg = cfg
        self.base_timeframe = base_timeframe
        self.base_ms = timeframe_ms(base_timeframe)
        # the base first, then every configured timeframe longer than it (shorter ones cannot be
        # built from the base and are dropped: e.g. 1m for a 5m-only market)
        higher = sorted({tf for tf in cfg.timeframes if timeframe_ms(tf) > self.base_ms}, key=timeframe_ms)
        self.timeframes: tuple[str, ...] = (base_timeframe, *higher)
        self.tf_ms = tuple(timeframe_ms(tf) for tf in self.timeframes)
        self.window = cfg.window
        self.levels = cfg.pivot_levels
        self.norm_window = cfg.norm_window
        bar = _bar_feature_names(self.levels)
        flat = tuple(f"{tf}:{name}" for tf in self.timeframes for name in bar)
        flat += ("session_vwap_dist",) + tuple(f"ret_{k}" for k in RETURN_HORIZONS)
        flat += tuple(f"ref_ret_{k}" for k in REF_HORIZONS) + ("ref_present",)
        self.spec = FeatureSpec(
            timeframes=self.timeframes,
            window=self.window,
            bar_features=bar,
            flat_features=flat,
            regime_features=("rv_60", "ret_60", "eff_60", "rv_ratio"),
        )
        self.min_history: int = self.window + WARMUP_BARS

    # ------------------------------------------------------------------ batch (history)
    def build_many(
        self, candles: pd.DataFrame, ref: pd.DataFrame | None = None, *, symbol: str = ""
    ) -> FeatureBatch:
        """One sample per base bar of `candles` (base timeframe, ts ascending). Higher timeframes are
        resampled here; sample t only sees their bars closed by the close of bar t."""
        x = _as_ohlcv(candles, f"{self.base_timeframe} candles")
        self._check_grid(x)
        n, tcount, win = len(x), len(self.timeframes), self.window
        f = len(self.spec.bar_features)
        windows = np.zeros((n, tcount, win, f), dtype=np.float32)
        now = x.ts + self.base_ms  # close time of each sample's bar
        logc = 100.0 * np.log(x.c)
        for ti, tf_ms in enumerate(self.tf_ms):
            series = x if ti == 0 else _resample(x, tf_ms)
            mat = _tf_matrix(series, self.levels, self.norm_window)
            last = np.searchsorted(series.ts + tf_ms, now, side="right") - 1  # last closed bar
            padded = np.vstack([np.zeros((win, f)), mat])
            view = sliding_window_view(padded, win, axis=0)  # [M+1, F, L]; row j+1 ends at bar j
            for s in range(0, n, CHUNK):
                e = min(n, s + CHUNK)
                w = view[last[s:e] + 1].transpose(0, 2, 1).copy()  # [n, L, F] float64
                w[..., :_N_PRICE] -= logc[s:e, None, None]
                w[..., :_N_PRICE] *= w[..., -1:]  # padding stays exactly 0
                windows[s:e, ti] = w
        extras, regime = _base_extras(x, self.norm_window)
        flat = np.concatenate(
            [windows[:, :, -1, :].reshape(n, tcount * f), extras, _ref_features(ref, x.ts)], axis=1
        ).astype(np.float32)
        return FeatureBatch(
            symbol=symbol,
            timeframe=self.base_timeframe,
            ts=x.ts.copy(),
            close=x.c.copy(),
            windows=windows,
            flat=flat,
            regime=regime.astype(np.float32),
            spec=self.spec,
        )

    # ------------------------------------------------------------------ one sample (live)
    def build_one(
        self, frames: dict[str, pd.DataFrame], ref: pd.DataFrame | None = None, *, symbol: str = ""
    ) -> FeatureBatch:
        """The sample at the last bar of frames[base] from the provider's caches (closed bars only).
        Higher-timeframe rows not closed by the close of that bar are ignored defensively."""
        missing = [tf for tf in self.timeframes if tf not in frames]
        if missing:
            raise ValueError(f"build_one: frames lack timeframes {missing} (need {list(self.timeframes)})")
        base = _as_ohlcv(frames[self.base_timeframe], f"{self.base_timeframe} frame")
        if len(base) == 0:
            raise ValueError(f"build_one: the {self.base_timeframe} frame is empty")
        self._check_grid(base)
        t = int(base.ts[-1])
        now = t + self.base_ms
        logc = 100.0 * np.log(base.c[-1])
        win, f = self.window, len(self.spec.bar_features)
        windows = np.zeros((1, len(self.timeframes), win, f), dtype=np.float32)
        for ti, (tf, tf_ms) in enumerate(zip(self.timeframes, self.tf_ms, strict=True)):
            series = base if ti == 0 else _as_ohlcv(frames[tf], f"{tf} frame")
            if ti:
                series = series.head(int(np.searchsorted(series.ts + tf_ms, now, side="right")))
            mat = _tf_matrix(series, self.levels, self.norm_window)[-win:]
            mat[:, :_N_PRICE] -= logc
            windows[0, ti, win - mat.shape[0] :] = mat
        extras, regime = _base_extras(base, self.norm_window)
        flat = np.concatenate(
            [windows[:, :, -1, :].reshape(1, -1), extras[-1:], _ref_features(ref, base.ts[-1:])], axis=1
        ).astype(np.float32)
        return FeatureBatch(
            symbol=symbol,
            timeframe=self.base_timeframe,
            ts=base.ts[-1:].copy(),
            close=base.c[-1:].copy(),
            windows=windows,
            flat=flat,
            regime=regime[-1:].astype(np.float32),
            spec=self.spec,
        )

    def _check_grid(self, x: _Ohlcv) -> None:
        off = x.ts % self.base_ms
        if np.any(off):
            row = int(np.flatnonzero(off)[0])
            raise ValueError(
                f"{self.base_timeframe} candles: ts={x.ts[row]} (row {row}) is not aligned to the "
                f"{self.base_timeframe} grid; pass candles of the builder's base timeframe"
            )
