"""One FeatureBuilder for training, backtests and live: candles -> FeatureBatch (core/types.py).

A sample at base bar t describes the market at the CLOSE of bar t, from bars up to t only.

What goes in (README "Features and labels" has the user-facing description):
* windows [N, T, L, F]: for each timeframe (base first), the last L bars CLOSED by the close of bar t
  (a higher-timeframe bar opening at b is used once b + tf <= ts_t + base). Per bar (spec.bar_features):
  open/high/low/close as 100*log(x / close_t) (close_t = the sample's own last base close, so the
  scale of the price never matters), the bar's log return, volume as log1p(v / trailing mean volume
  over `norm_window` bars), indicators as distances in ATR units or bounded oscillators, distances
  to the last CONFIRMED Williams support/resistance of each level, and `present` (1 real bar, 0 pad).
* Windows without enough history are zero-padded on the LEFT with present = 0 (the 1m data never
  holds 64 daily bars); indicator values still in warm-up read 0. No price is ever invented.
  A higher-timeframe bucket that began before the data did is dropped (its open is unknown; the
  DataProvider does not publish it either).
* flat [N, D]: the last bar's features of every timeframe, the session-VWAP distance, base returns
  over 5/15/60 bars and the reference symbol's returns over 1/5/15/60 bars (+ ref_present).
* regime [N, R]: realised volatility over 60 bars, return over 60 bars, efficiency ratio and the
  ratio of short to long (norm_window) volatility -- all trailing.

`build_many` and `build_one` share the compiled kernels (core/feature_kernels.py), so a live sample equals the matching row of
a backtest. Exact up to what a 1500-bar snapshot cannot hold: recursive indicators (EMA, Wilder) are
seeded at the snapshot's first bar (the difference decays below float32 resolution long before the
window), the volume mean needs norm_window + L bars, and a high pivot level whose neighbours lie
before the snapshot can be missed (level 3 on 1m bars: every ~100 bars, far inside 1500).
Prices and returns are in log-percent (100 * log ratio) so networks see O(1) numbers.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
import pandas as pd

from core.book_features import BOOK_FEATURES, MAX_AGE_MS, book_features
from core.config import FeaturesConfig
from core.data.validate import grid_offset
from core.feature_kernels import (
    N_PRICE,
    REF_HORIZONS,
    RETURN_HORIZONS,
    WARMUP_BARS,
    Ohlcv,
    bar_feature_names,
    base_extras,
    gather_windows,
    tf_matrix,
)
from core.market.calendar import Calendar
from core.types import CANDLE_COLUMNS, FeatureBatch, FeatureSpec, timeframe_ms

_CANDLE_INDEX = pd.Index(CANDLE_COLUMNS)
_VALUE_COLUMNS = ("open", "high", "low", "close", "volume")


def _fast_arrays(df: pd.DataFrame | Mapping[str, np.ndarray]) -> Ohlcv | None:
    """The common case on the live path in one conversion (pandas column access costs ~40 us each):
    a numeric DataFrame of exactly CANDLE_COLUMNS with integer ms timestamps and valid values.
    Anything else returns None and goes through the checks that name the problem."""
    if not isinstance(df, pd.DataFrame) or not df.columns.equals(_CANDLE_INDEX):
        return None
    try:
        arr = df.to_numpy(dtype=np.float64).T
    except (TypeError, ValueError):
        return None
    t = arr[0]
    if not (np.isfinite(arr).all() and (arr[1:5] > 0).all() and (arr[5] >= 0).all()):
        return None
    if not ((t == np.floor(t)).all() and (np.abs(t) < 2.0**53).all()):
        return None
    ts = t.astype(np.int64)
    if ts.shape[0] > 1 and not (ts[1:] > ts[:-1]).all():
        return None
    return Ohlcv(ts, arr[1].copy(), arr[2].copy(), arr[3].copy(), arr[4].copy(), arr[5].copy())


def _as_ohlcv(df: pd.DataFrame | Mapping[str, np.ndarray], what: str) -> Ohlcv:
    """Validated arrays from a candle DataFrame (or the provider's dict of arrays); a clear error
    naming what is wrong."""
    if not isinstance(df, pd.DataFrame | Mapping):
        raise TypeError(
            f"{what}: expected a DataFrame with columns {CANDLE_COLUMNS}, got {type(df).__name__}"
        )
    cols = df.columns if isinstance(df, pd.DataFrame) else df.keys()
    missing = [c for c in CANDLE_COLUMNS if c not in cols]
    if missing:
        raise ValueError(f"{what}: missing columns {missing} (need {list(CANDLE_COLUMNS)})")
    fast = _fast_arrays(df)
    if fast is not None:
        return fast
    ts = np.asarray(df["ts"])
    integral_float = np.issubdtype(ts.dtype, np.floating) and bool(np.all(ts == np.floor(ts)))
    if not (np.issubdtype(ts.dtype, np.integer) or integral_float):
        raise ValueError(f"{what}: column ts must be int64 milliseconds, got dtype {ts.dtype}")
    ts = ts.astype(np.int64, copy=False)
    if ts.shape[0] > 1 and not (ts[1:] > ts[:-1]).all():
        bad = int(np.flatnonzero(ts[1:] <= ts[:-1])[0]) + 1
        raise ValueError(
            f"{what}: ts must be strictly increasing; row {bad} has ts={ts[bad]} after {ts[bad - 1]}"
        )
    # one stacked check for all five columns (this runs on every live decision)
    vals = np.empty((5, ts.shape[0]))
    for k, name in enumerate(_VALUE_COLUMNS):
        vals[k] = np.asarray(df[name], dtype=np.float64)
    if not (vals[:4] > 0).all() or not (vals[4] >= 0).all() or not np.isfinite(vals).all():
        for k, name in enumerate(_VALUE_COLUMNS):
            a = vals[k]
            ok = np.isfinite(a) & ((a >= 0) if name == "volume" else (a > 0))
            if not ok.all():
                row = int(np.flatnonzero(~ok)[0])
                rule = "finite and >= 0" if name == "volume" else "finite and > 0"
                raise ValueError(
                    f"{what}: column {name} must be {rule}; row {row} (ts={ts[row]}) has {a[row]!r}"
                )
    return Ohlcv(ts, vals[0], vals[1], vals[2], vals[3], vals[4])


def resample_candles(candles: pd.DataFrame, timeframe: str, calendar: Calendar | None = None) -> pd.DataFrame:
    """Buckets of `timeframe` on the data layer's UTC grid, or within sessions with a session calendar
    (first open, max high, min low, last close, summed volume). The trailing bucket is returned even
    if not complete: callers decide which buckets have closed (FeatureBuilder uses bucket end <= now)."""
    x = _as_ohlcv(candles, "resample input")
    r, _ = _resample(x, timeframe, calendar)
    return pd.DataFrame({"ts": r.ts, "open": r.o, "high": r.h, "low": r.lo, "close": r.c, "volume": r.v})


def _resample(x: Ohlcv, timeframe: str, calendar: Calendar | None = None,
              drop_partial_first: bool = False) -> tuple[Ohlcv, np.ndarray]:
    """(bars, their end times): the data layer's grid (weekly bars start on Monday), or session
    buckets (core/market: start = open + k*tf, end = min(start + tf, close))."""
    if len(x) == 0:
        return x, x.ts.copy()
    if calendar is None or calendar.always_open:
        tf_ms = timeframe_ms(timeframe)
        bucket = x.ts - (x.ts - grid_offset(timeframe)) % tf_ms
        end = bucket + tf_ms
    else:
        bucket, end = calendar.buckets(x.ts, timeframe)
    starts = np.flatnonzero(np.r_[True, bucket[1:] != bucket[:-1]])
    if drop_partial_first and bucket[0] < x.ts[0]:
        # the data begins inside this bucket: its open/high/low are unknown, so it is no bar at all
        # (the DataProvider does not publish such a bucket either)
        starts = starts[1:]
        if starts.size == 0:
            return x.head(0), x.ts[:0].copy()
        x = Ohlcv(
            x.ts[starts[0] :],
            x.o[starts[0] :],
            x.h[starts[0] :],
            x.lo[starts[0] :],
            x.c[starts[0] :],
            x.v[starts[0] :],
        )
        bucket = bucket[starts[0] :]
        end = end[starts[0] :]
        starts = starts - starts[0]
    ends = np.r_[starts[1:], len(x)] - 1
    return Ohlcv(
        bucket[starts],
        x.o[starts],
        np.maximum.reduceat(x.h, starts),
        np.minimum.reduceat(x.lo, starts),
        x.c[ends],
        np.add.reduceat(x.v, starts),
    ), end[starts]


def _ref_features(ref: pd.DataFrame | None, ts: np.ndarray, base_ms: int) -> np.ndarray:
    """[N, len(REF_HORIZONS) + 1]: 100 * log return of the reference symbol over its last k bars
    that opened at or before each sample's ts, then ref_present (1 when the reference has a bar
    at exactly that ts). Zeros without a reference. The reference must be in the base timeframe:
    a longer one would leak its still-open bar, so it is refused."""
    out = np.zeros((ts.shape[0], len(REF_HORIZONS) + 1))
    if ref is None:
        return out
    rx = _as_ohlcv(ref, "reference candles")
    if len(rx) == 0:
        return out
    if np.any(rx.ts % base_ms) or (len(rx) > 1 and int(np.diff(rx.ts).min()) != base_ms):
        raise ValueError(
            f"reference candles must be in the base timeframe ({base_ms // 1000} s bars on its grid); "
            f"got bars {int(np.diff(rx.ts).min()) // 1000 if len(rx) > 1 else '?'} s apart"
        )
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

    def __init__(self, cfg: FeaturesConfig, base_timeframe: str, calendar: Calendar | None = None) -> None:
        self.cfg = cfg
        self.base_timeframe = base_timeframe
        # stocks: higher timeframes within sessions, the session VWAP resets at each session; None/24x7:
        # the UTC grid and the UTC day (crypto, unchanged). Counts (windows, warm-up, returns over k bars)
        # are in bars of the series, i.e. session bars for a session-filtered series.
        self.calendar = calendar if calendar is not None and not calendar.always_open else None
        self.base_ms = timeframe_ms(base_timeframe)
        # the base first, then every configured timeframe longer than it (shorter ones cannot be
        # built from the base and are dropped: e.g. 1m for a 5m-only market)
        higher = sorted({tf for tf in cfg.timeframes if timeframe_ms(tf) > self.base_ms}, key=timeframe_ms)
        self.timeframes: tuple[str, ...] = (base_timeframe, *higher)
        self.tf_ms = tuple(timeframe_ms(tf) for tf in self.timeframes)
        self.window = cfg.window
        self.levels = cfg.pivot_levels
        self.strength = cfg.pivot_strength
        self.norm_window = cfg.norm_window
        bar = bar_feature_names(self.levels)
        flat = tuple(f"{tf}:{name}" for tf in self.timeframes for name in bar)
        flat += ("session_vwap_dist",) + tuple(f"ret_{k}" for k in RETURN_HORIZONS)
        flat += tuple(f"ref_ret_{k}" for k in REF_HORIZONS) + ("ref_present",)
        self.orderbook = bool(getattr(cfg, "orderbook", False))
        # where build_* find order-book rows when not given ``book=``: (symbol, start_ms, end_ms) -> summary rows
        # (the composition root points it at the store's book_summary, or at a live BookEngine)
        self.book_rows: Callable[[str, int, int], pd.DataFrame | None] | None = None
        if self.orderbook:  # optional block from recorded books (core/book_features.py)
            flat += BOOK_FEATURES
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
        self,
        candles: pd.DataFrame,
        ref: pd.DataFrame | None = None,
        *,
        symbol: str = "",
        rows: slice | None = None,
        book: pd.DataFrame | None = None,
    ) -> FeatureBatch:
        """One sample per base bar of `candles` (base timeframe, ts ascending). Higher timeframes are
        resampled here; sample t only sees their bars closed by the close of bar t.

        rows: only the samples of these bar positions (e.g. slice(min_history - 1, None) or one
        chunk of a long history), still computed from all earlier bars -- the same numbers as the
        matching rows of the full batch, without holding every window in memory.
        book: per-second order-book summary rows (used when features.orderbook is on)."""
        x = _as_ohlcv(candles, f"{self.base_timeframe} candles")
        self._check_grid(x)
        sel = np.arange(len(x))[rows if rows is not None else slice(None)]
        if sel.size and np.any(np.diff(sel) != 1):
            raise ValueError(f"build_many: rows must be a contiguous ascending slice, got {rows!r}")
        lo = int(sel[0]) if sel.size else 0
        n, tcount, win = int(sel.size), len(self.timeframes), self.window
        x = x.head(lo + n)  # every feature is causal: later bars cannot matter
        f = len(self.spec.bar_features)
        windows = np.empty((n, tcount, win, f), dtype=np.float32)  # gather_windows writes every cell
        ts = x.ts[lo:]
        now = ts + self.base_ms  # close time of each sample's bar
        logc = np.zeros(n)
        for ti, tf_ms in enumerate(self.tf_ms):
            if ti == 0:
                series, end = x, x.ts + tf_ms
            else:
                series, end = _resample(x, self.timeframes[ti], self.calendar, True)
            mat = tf_matrix(series, self.levels, self.norm_window, strength=self.strength)
            if ti == 0:  # 100*log(close_t), exactly as the kernel computed it
                logc = mat[lo:, 3].copy()
            last = np.searchsorted(end, now, side="right") - 1  # last closed bar
            gather_windows(mat, last, logc, windows[:, ti])
        extras, regime = base_extras(x, self.norm_window, start=lo, day=self._days(x.ts))
        parts = [windows[:, :, -1, :].reshape(n, tcount * f), extras, _ref_features(ref, ts, self.base_ms)]
        if self.orderbook:
            if book is None and self.book_rows is not None and n:
                book = self.book_rows(symbol, int(ts[0]) + self.base_ms - MAX_AGE_MS, int(ts[-1]) + self.base_ms)
            parts.append(book_features(book, ts + self.base_ms))
        flat = np.concatenate(parts, axis=1).astype(np.float32)
        return FeatureBatch(
            symbol=symbol,
            timeframe=self.base_timeframe,
            ts=ts.copy(),
            close=x.c[lo:].copy(),
            windows=windows,
            flat=flat,
            regime=regime.astype(np.float32),
            spec=self.spec,
        )

    # ------------------------------------------------------------------ one sample (live)
    def build_one(
        self, frames: Mapping[str, pd.DataFrame | Mapping[str, np.ndarray]], ref: pd.DataFrame | None = None, *,
        symbol: str = "", book: pd.DataFrame | None = None
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
        logc = 0.0
        win, f = self.window, len(self.spec.bar_features)
        windows = np.zeros((1, len(self.timeframes), win, f), dtype=np.float32)
        for ti, (tf, tf_ms) in enumerate(zip(self.timeframes, self.tf_ms, strict=True)):
            series = base if ti == 0 else _as_ohlcv(frames[tf], f"{tf} frame")
            if ti:
                ends = series.ts + tf_ms if self.calendar is None else self.calendar.buckets(series.ts, tf)[1]
                series = series.head(int(np.searchsorted(ends, now, side="right")))
            mat = tf_matrix(series, self.levels, self.norm_window, tail=win, strength=self.strength)
            if ti == 0:
                logc = float(mat[-1, 3])
            mat[:, :N_PRICE] -= logc
            windows[0, ti, win - mat.shape[0] :] = mat
        extras, regime = base_extras(base, self.norm_window, start=len(base) - 1, day=self._days(base.ts))
        parts = [windows[:, :, -1, :].reshape(1, -1), extras, _ref_features(ref, base.ts[-1:], self.base_ms)]
        if self.orderbook:
            if book is None and self.book_rows is not None:
                book = self.book_rows(symbol, now - MAX_AGE_MS, now)
            parts.append(book_features(book, base.ts[-1:] + self.base_ms))
        flat = np.concatenate(parts, axis=1).astype(np.float32)
        return FeatureBatch(
            symbol=symbol,
            timeframe=self.base_timeframe,
            ts=base.ts[-1:].copy(),
            close=base.c[-1:].copy(),
            windows=windows,
            flat=flat,
            regime=regime.astype(np.float32),
            spec=self.spec,
        )

    def _days(self, ts: np.ndarray) -> np.ndarray | None:
        """Trading day of each bar (session VWAP); None = the UTC day (24x7)."""
        return None if self.calendar is None else self.calendar.day_ids(ts)

    def _check_grid(self, x: Ohlcv) -> None:
        off = (x.ts - grid_offset(self.base_timeframe)) % self.base_ms
        if np.any(off):
            row = int(np.flatnonzero(off)[0])
            raise ValueError(
                f"{self.base_timeframe} candles: ts={x.ts[row]} (row {row}) is not aligned to the "
                f"{self.base_timeframe} grid; pass candles of the builder's base timeframe"
            )
