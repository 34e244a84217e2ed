"""FeatureBuilder on real recorded market data (../shared/data): shapes, no look-ahead, live == batch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from core.config import FeaturesConfig
from core.data.files import load_file as load_candles
from core.features import FeatureBuilder, resample_candles
from core.types import timeframe_ms

REF_COLS = ("ref_ret_1", "ref_ret_5", "ref_ret_15", "ref_ret_60", "ref_present")
N_BARS = 6000  # ~4 days of 1m bars: crosses several hour and day boundaries, keeps the test fast


@pytest.fixture(scope="module")
def btc(shared_data: Path) -> pd.DataFrame:
    return load_candles(shared_data / "binanceus" / "BTC_USDT-1m.csv").iloc[:N_BARS].reset_index(drop=True)


@pytest.fixture(scope="module")
def btc_usd(shared_data: Path) -> pd.DataFrame:
    return load_candles(shared_data / "binanceus" / "BTC_USD-1m.csv").iloc[:N_BARS].reset_index(drop=True)


@pytest.fixture(scope="module")
def builder() -> FeatureBuilder:
    return FeatureBuilder(FeaturesConfig(), "1m")


@pytest.fixture(scope="module")
def batch(builder: FeatureBuilder, btc: pd.DataFrame, btc_usd: pd.DataFrame):
    return builder.build_many(btc, ref=btc_usd, symbol="BTC/USDT")


def live_frames(builder: FeatureBuilder, candles: pd.DataFrame, i: int, bars: int = 1500) -> dict:
    """What the DataProvider would cache at the close of bar i: closed bars only, `bars` per frame."""
    hist = candles.iloc[: i + 1]
    now = int(hist.ts.iloc[-1]) + builder.base_ms
    frames = {}
    for tf in builder.timeframes:
        r = hist if tf == builder.base_timeframe else resample_candles(hist, tf)
        r = r[r.ts + timeframe_ms(tf) <= now]
        frames[tf] = r.tail(bars).reset_index(drop=True)
    return frames


def test_shapes_dtypes_and_spec(builder: FeatureBuilder, batch, btc: pd.DataFrame) -> None:
    spec = builder.spec
    n, t, lw, f = len(btc), len(spec.timeframes), spec.window, len(spec.bar_features)
    assert spec.timeframes == ("1m", "5m", "1h", "1d")
    assert batch.windows.shape == (n, t, lw, f) and batch.windows.dtype == np.float32
    assert batch.flat.shape == (n, len(spec.flat_features)) and batch.flat.dtype == np.float32
    assert batch.regime.shape == (n, len(spec.regime_features)) and batch.regime.dtype == np.float32
    assert batch.ts.dtype == np.int64 and np.array_equal(batch.ts, btc.ts.to_numpy())
    assert np.array_equal(batch.close, btc.close.to_numpy())
    assert batch.symbol == "BTC/USDT" and batch.timeframe == "1m"
    for a in (batch.windows, batch.flat, batch.regime):
        assert np.isfinite(a).all()
    assert builder.min_history == 64 + 60
    # the last bar of the base window is the sample's own bar: close relative to itself is 0
    ci = spec.bar_features.index("close")
    assert np.all(batch.windows[:, 0, -1, ci] == 0.0)
    # open of the sample's own bar, in log-percent of its close, by hand
    oi = spec.bar_features.index("open")
    i = 4321
    exp = 100 * np.log(btc.open.iloc[i] / btc.close.iloc[i])
    assert batch.windows[i, 0, -1, oi] == pytest.approx(exp, abs=1e-4)
    # flat starts with the last bar of every timeframe
    assert np.array_equal(batch.flat[:, : t * f], batch.windows[:, :, -1, :].reshape(n, t * f))


def test_padding_convention(builder: FeatureBuilder, batch, btc: pd.DataFrame) -> None:
    """Higher timeframes without enough history are zero-padded on the left with present = 0."""
    pi = builder.spec.bar_features.index("present")
    ts = btc.ts.to_numpy()
    for ti, tf in enumerate(builder.spec.timeframes):
        tf_ms = timeframe_ms(tf)
        for i in (0, 59, 60, 1439, 1440, 3000, N_BARS - 1):
            # number of tf bars closed by the close of bar i, counted by hand
            closed = int(np.sum(np.unique(ts[: i + 1] // tf_ms * tf_ms) + tf_ms <= ts[i] + 60_000))
            present = batch.windows[i, ti, :, pi]
            k = min(closed, builder.window)
            assert present.sum() == k, (tf, i)
            assert np.all(present[builder.window - k :] == 1.0)
            assert np.all(batch.windows[i, ti, : builder.window - k, :] == 0.0)
    # the 1m data never holds 64 daily bars: the daily window is always mostly padding
    assert batch.windows[:, 3, :, pi].sum(axis=1).max() <= 5


def test_higher_timeframe_bar_by_hand(builder: FeatureBuilder, batch, btc: pd.DataFrame) -> None:
    """At 10:37 the last closed 1h bar is 09:00-10:00; its high, relative to close_t, by hand."""
    i = 1440 + 10 * 60 + 37  # day 2, 10:37
    hi = builder.spec.bar_features.index("high")
    hour = btc.iloc[1440 + 9 * 60 : 1440 + 10 * 60]
    exp = 100 * np.log(hour.high.max() / btc.close.iloc[i])
    assert batch.windows[i, 2, -1, hi] == pytest.approx(exp, abs=1e-4)
    # and one bar later the 10:00 bar is still open (closes at 11:00): unchanged hour high
    exp2 = 100 * np.log(hour.high.max() / btc.close.iloc[i + 1])
    assert batch.windows[i + 1, 2, -1, hi] == pytest.approx(exp2, abs=1e-4)


@pytest.mark.parametrize("i", [1500, 2999, 3059, 4319, N_BARS - 1])
def test_build_one_equals_build_many(builder: FeatureBuilder, batch, btc, btc_usd, i: int) -> None:
    """i = 3059 is 02:59 (last minute of an hour); 4319 is 23:59 (last minute of a day)."""
    frames = live_frames(builder, btc, i)
    one = builder.build_one(frames, ref=btc_usd.iloc[max(0, i - 1499) : i + 1], symbol="BTC/USDT")
    assert len(one) == 1 and one.ts[0] == batch.ts[i] and one.close[0] == batch.close[i]
    np.testing.assert_allclose(one.windows[0], batch.windows[i], atol=1e-6, rtol=0)
    np.testing.assert_allclose(one.flat[0], batch.flat[i], atol=1e-6, rtol=0)
    np.testing.assert_allclose(one.regime[0], batch.regime[i], atol=1e-6, rtol=0)


def test_no_look_ahead(builder: FeatureBuilder, batch, btc: pd.DataFrame, btc_usd) -> None:
    """Change every bar after t (prices x1.5, volume 0, reference too): nothing at <= t moves.
    t just before hour and day boundaries and mid-hour."""
    for t in (3059, 4319, 4330):
        bad, bad_ref = btc.copy(), btc_usd.copy()
        for df in (bad, bad_ref):
            df.loc[t + 1 :, ["open", "high", "low", "close"]] *= 1.5
            df.loc[t + 1 :, "volume"] = 0.0
        b2 = builder.build_many(bad, ref=bad_ref)
        assert np.array_equal(b2.windows[: t + 1], batch.windows[: t + 1]), t
        assert np.array_equal(b2.flat[: t + 1], batch.flat[: t + 1]), t
        assert np.array_equal(b2.regime[: t + 1], batch.regime[: t + 1]), t
        # the test can fail: the change does show up right after t
        assert not np.array_equal(b2.windows[t + 1], batch.windows[t + 1])


def test_reference_returns(builder: FeatureBuilder, batch, btc_usd: pd.DataFrame) -> None:
    names = builder.spec.flat_features
    i = 2000
    exp = 100 * np.log(btc_usd.close.iloc[i] / btc_usd.close.iloc[i - 5])
    assert batch.flat[i, names.index("ref_ret_5")] == pytest.approx(exp, abs=1e-4)
    assert batch.flat[i, names.index("ref_present")] == 1.0


def test_alt_btc_tiny_prices(shared_data: Path) -> None:
    """ETH/BTC prices are ~0.09 and ADA/BTC ~4e-5 (5m data): features stay finite and scale-free."""
    eth = load_candles(shared_data / "freqtrade" / "ETH_BTC-5m.csv")
    ada = load_candles(shared_data / "freqtrade" / "ADA_BTC-5m.csv")
    assert ada.close.max() < 1e-3
    fb = FeatureBuilder(FeaturesConfig(window=32), "5m")
    assert fb.timeframes == ("5m", "1h", "1d")  # 1m cannot be built from 5m bars: dropped
    b = fb.build_many(ada, ref=eth, symbol="ADA/BTC")
    assert np.isfinite(b.windows).all() and np.isfinite(b.flat).all() and np.isfinite(b.regime).all()
    # scale-free: the same market priced in a unit 1e6 times larger gives the same features
    big = ada.copy()
    big[["open", "high", "low", "close"]] *= 1e6
    b2 = fb.build_many(big, ref=eth)
    np.testing.assert_allclose(b2.windows, b.windows, atol=1e-4)
    np.testing.assert_allclose(b2.regime, b.regime, atol=1e-4)
    # the window carries real price moves (not all zeros), and the reference is aligned
    assert np.abs(b.windows[fb.min_history :, 0, :, 3]).mean() > 0.01
    assert b.flat[fb.min_history :, fb.spec.flat_features.index("ref_present")].min() == 1.0


def test_bad_input_errors(builder: FeatureBuilder, btc: pd.DataFrame) -> None:
    """Hand-made bad candles (edge cases): each error names what is wrong."""
    df = btc.iloc[:300].copy()
    with pytest.raises(ValueError, match="missing columns"):
        builder.build_many(df.drop(columns=["volume"]))
    bad = df.copy()
    bad.loc[7, "close"] = np.nan
    with pytest.raises(ValueError, match="close.*row 7"):
        builder.build_many(bad)
    bad = df.copy()
    bad.loc[9, "low"] = -1.0
    with pytest.raises(ValueError, match="low.*row 9"):
        builder.build_many(bad)
    with pytest.raises(ValueError, match="strictly increasing"):
        builder.build_many(df.iloc[::-1])
    shifted = df.copy()
    shifted["ts"] += 1000
    with pytest.raises(ValueError, match="not aligned"):
        builder.build_many(shifted)
    with pytest.raises(ValueError, match="frames lack timeframes"):
        builder.build_one({"1m": df})


def test_kernel_matches_public_indicators(builder: FeatureBuilder, btc: pd.DataFrame) -> None:
    """The compiled per-bar kernel computes the same numbers as core.indicators / core.pivots."""
    from core import indicators as ind
    from core.feature_kernels import ATR_CLIP, tf_matrix
    from core.features import _as_ohlcv
    from core.pivots import market_structure, support_resistance

    x = _as_ohlcv(btc, "btc")
    mat = tf_matrix(x, builder.levels, builder.norm_window)
    names = builder.spec.bar_features
    col = {n: mat[:, names.index(n)] for n in names}
    h, lo, c, v = x.h, x.lo, x.c, x.v
    a = ind.atr(h, lo, c, 14)

    def dist(num: np.ndarray) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.clip(np.nan_to_num(num / a, nan=0.0), -ATR_CLIP, ATR_CLIP)

    w = 40  # past every warm-up
    close = lambda got, exp: np.testing.assert_allclose(got[w:], exp[w:], rtol=1e-9, atol=1e-9)  # noqa: E731
    close(col["close"], 100 * np.log(c))
    close(col["ret"], 100 * np.nan_to_num(ind.log_returns(c)))
    close(col["ema_fast_dist"], dist(c - ind.ema(c, 12)))
    close(col["ema_slow_dist"], dist(c - ind.ema(c, 26)))
    mid, up, _ = ind.bollinger(c, 20)
    close(col["bb_z"], np.clip((c - mid) / ((up - mid) / 2), -ATR_CLIP, ATR_CLIP))
    close(col["bb_width"], 100 * 2 * (up - mid) / mid)
    close(col["rsi"], ind.rsi(c, 14) / 100 - 0.5)
    line, _, hist = ind.macd(c)
    close(col["macd"], dist(line))
    close(col["macd_hist"], dist(hist))
    close(col["atr_rel"], 100 * a / c)
    close(col["vwap_dist"], dist(c - ind.vwap_rolling(h, lo, c, v, 20)))
    vm = pd.Series(v).rolling(builder.norm_window, min_periods=1).mean().to_numpy()
    close(col["volume"], np.log1p(v / vm))
    sup, res = support_resistance(market_structure(h, lo, builder.levels, 2, 1), builder.levels)
    for k in range(builder.levels):
        close(col[f"sup{k + 1}_dist"], dist(c - sup[:, k]))
        close(col[f"res{k + 1}_dist"], dist(res[:, k] - c))
    # warm-up values read 0, never NaN
    assert np.all(col["macd_hist"][:33] == 0) and np.all(col["rsi"][:14] == 0)


def test_build_one_from_the_real_data_provider(builder: FeatureBuilder, batch, btc, btc_usd) -> None:
    """The live path end to end: closed 1m bars ingested into the DataProvider (which resamples the
    higher timeframes itself and caches 1500 bars each); build_one on provider.frames() equals the
    build_many row at the same ts."""
    from core.data.provider import DataProvider
    from core.types import SeriesKey

    prov = DataProvider(None, "1m", list(builder.timeframes), cache_bars=1500)
    key = SeriesKey("binanceus", "BTC/USDT", "1m")
    done = 0
    for i in (2999, 4319, 4320, N_BARS - 1):  # 4319 = 23:59 (a day closes), 4320 = 00:00
        prov.ingest(key, btc.iloc[done : i + 1], closed=True)
        done = i + 1
        frames = prov.frames("BTC/USDT")
        assert len(frames["1m"]) == min(i + 1, 1500)
        one = builder.build_one(frames, symbol="BTC/USDT")
        assert one.ts[0] == batch.ts[i]
        np.testing.assert_allclose(one.windows[0], batch.windows[i], atol=1e-6, rtol=0)
        np.testing.assert_allclose(one.flat[0, : -len(REF_COLS)], batch.flat[i, : -len(REF_COLS)], atol=1e-6)
        np.testing.assert_allclose(one.regime[0], batch.regime[i], atol=1e-6, rtol=0)
        # the provider's arrays (read-only numpy) work too
        arrs = {tf: prov.arrays("BTC/USDT", tf) for tf in builder.timeframes}
        np.testing.assert_array_equal(builder.build_one(arrs).windows, one.windows)


def test_rows_give_the_matching_rows_of_the_full_batch(builder: FeatureBuilder, batch, btc, btc_usd) -> None:
    for rows in (slice(1000, 1500), slice(N_BARS - 10, None), slice(0, 3)):
        part = builder.build_many(btc, ref=btc_usd, symbol="BTC/USDT", rows=rows)
        full = batch.take(rows)
        for name in ("ts", "close", "windows", "flat", "regime"):
            assert np.array_equal(getattr(part, name), getattr(full, name)), (rows, name)
    assert len(builder.build_many(btc, rows=slice(10, 10))) == 0
    with pytest.raises(ValueError, match="contiguous"):
        builder.build_many(btc, rows=slice(0, 100, 2))


def test_defensive_inputs(builder: FeatureBuilder, batch, btc: pd.DataFrame, btc_usd: pd.DataFrame) -> None:
    """A higher-timeframe row that has not closed yet is ignored by build_one; a reference in
    another timeframe is refused (its open bar would leak the future)."""
    i = 3030  # 02:30: the 02:00 hour bar is still open
    frames = live_frames(builder, btc, i)
    hist = btc.iloc[: i + 1]
    open_hour = resample_candles(hist, "1h").tail(1)
    assert int(open_hour.ts.iloc[0]) + 3_600_000 > int(btc.ts.iloc[i]) + 60_000
    frames["1h"] = pd.concat([frames["1h"], open_hour], ignore_index=True)
    one = builder.build_one(frames)
    np.testing.assert_allclose(one.windows[0], batch.windows[i], atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="base timeframe"):
        builder.build_many(btc, ref=resample_candles(btc_usd, "5m"))


@pytest.mark.parametrize("first", [30, 1439 + 90])
def test_history_starting_mid_bucket_matches_provider(
    builder: FeatureBuilder, btc: pd.DataFrame, first: int
) -> None:
    """History that begins inside an hour/day: that first bucket's open is unknown, so neither the
    DataProvider nor build_many makes a bar of it; live and batch still agree."""
    from core.data.provider import DataProvider
    from core.types import SeriesKey

    part = btc.iloc[first:].reset_index(drop=True)
    b = builder.build_many(part)
    pi = builder.spec.bar_features.index("present")
    j = 119 - first % 60  # the bar closing the first FULL hour
    assert b.windows[j - 1, 2, :, pi].sum() == 0  # the partial first hour never became a bar
    assert b.windows[j, 2, :, pi].sum() == 1
    prov = DataProvider(None, "1m", list(builder.timeframes), cache_bars=1500)
    key = SeriesKey("binanceus", "BTC/USDT", "1m")
    done = 0
    for i in (j - 1, j, 2500, len(part) - 1):
        prov.ingest(key, part.iloc[done : i + 1], closed=True)
        done = i + 1
        one = builder.build_one(prov.frames("BTC/USDT"))
        np.testing.assert_allclose(one.windows[0], b.windows[i], atol=1e-6, rtol=0)
        np.testing.assert_allclose(one.flat[0], b.flat[i], atol=1e-6, rtol=0)


def test_alt_btc_live_path(shared_data: Path) -> None:
    """ADA/BTC 5m (prices ~4e-5, history starting 04:55 inside an hour and a day) through the
    DataProvider: build_one == build_many."""
    from core.data.provider import DataProvider
    from core.types import SeriesKey

    ada = load_candles(shared_data / "freqtrade" / "ADA_BTC-5m.csv")
    fb = FeatureBuilder(FeaturesConfig(window=32), "5m")
    b = fb.build_many(ada, symbol="ADA/BTC")
    prov = DataProvider(None, "5m", list(fb.timeframes), cache_bars=1500)
    key = SeriesKey("binance", "ADA/BTC", "5m")
    done = 0
    for i in (300, 2000, len(ada) - 1):
        prov.ingest(key, ada.iloc[done : i + 1], closed=True)
        done = i + 1
        one = fb.build_one(prov.frames("ADA/BTC"), symbol="ADA/BTC")
        np.testing.assert_allclose(one.windows[0], b.windows[i], atol=1e-6, rtol=0)
        np.testing.assert_allclose(one.flat[0], b.flat[i], atol=1e-6, rtol=0)
        np.testing.assert_allclose(one.regime[0], b.regime[i], atol=1e-6, rtol=0)
