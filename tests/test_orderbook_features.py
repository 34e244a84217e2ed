"""The optional order-book feature block on real recorded books: build_one == build_many, no look-ahead,
zeros with ob_present = 0 where nothing was recorded. The shared recording is 11 minutes: this checks
the plumbing, it is no evidence that the block helps a model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from core.book_features import BOOK_FEATURES, book_features
from core.config import FeaturesConfig
from core.data.book_buckets import Consolidator
from core.data.book_engine import SUMMARY_COLUMNS, BookEngine, VenueSymbol, summary_row
from core.data.book_replay import read_capture
from core.features import FeatureBuilder

T0_NS = 1723161256_000_000_000


@pytest.fixture(scope="module")
def recorded(shared_data: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(1 s candles from the recorded spot trades, per-second book summary of spot + USD-M), 200 s."""
    ob = shared_data / "orderbook" / "binance-2024-08-08"
    eng = BookEngine("BTC/USDT", [VenueSymbol("binance", "BTC/USDT"), VenueSymbol("binanceusdm", "BTC/USDT:USDT")],
                     Consolidator(10.0, 20))
    rows = []
    eng.sink = lambda s: rows.append(summary_row(s, "BTC/USDT"))
    for m in read_capture(ob / "raw", ["binance", "binanceusdm"]):
        if m.recv_ns > T0_NS + 200 * 10**9:
            break
        eng.on_message(m)
    summary = pd.DataFrame(rows, columns=list(SUMMARY_COLUMNS))
    tr = pd.read_csv(ob / "reference" / "binance_spot_BTCUSDT_trades.csv")
    tr["ts"] = (tr["local_timestamp"] // 1_000_000) * 1000  # receive-time second (the book's clock)
    g = tr.groupby("ts")
    candles = pd.DataFrame({"open": g["price"].first(), "high": g["price"].max(), "low": g["price"].min(),
                            "close": g["price"].last(), "volume": g["amount"].sum()}).reset_index()
    full = pd.DataFrame({"ts": np.arange(candles.ts.min(), candles.ts.max() + 1000, 1000, dtype=np.int64)})
    candles = full.merge(candles, on="ts", how="left")
    candles["close"] = candles["close"].ffill()  # a second without trades: a flat bar at the last price
    for c in ("open", "high", "low"):
        candles[c] = candles[c].fillna(candles["close"])
    candles["volume"] = candles["volume"].fillna(0.0)
    return candles[["ts", "open", "high", "low", "close", "volume"]].head(330), summary


@pytest.fixture(scope="module")
def builder() -> FeatureBuilder:
    return FeatureBuilder(FeaturesConfig(window=16, timeframes=["1s"], norm_window=20, orderbook=True), "1s")


def test_block_in_spec_and_values(builder: FeatureBuilder, recorded) -> None:
    candles, summary = recorded
    batch = builder.build_many(candles, book=summary)
    names = list(batch.spec.flat_features)
    assert names[-len(BOOK_FEATURES):] == list(BOOK_FEATURES)
    ob = batch.flat[:, -len(BOOK_FEATURES):]
    present = ob[:, BOOK_FEATURES.index("ob_present")]
    close = batch.ts + 1000
    covered = (close >= summary.ts.iloc[0]) & (close <= summary.ts.iloc[-1] + 5000)
    assert present[covered].all() and covered.sum() > 150
    assert not present[~covered].any() and (ob[~covered] == 0).all()
    assert (np.abs(ob[covered, :7]) <= 1).all()  # imbalances and their MAs
    spread = ob[covered, BOOK_FEATURES.index("ob_spread_bps")]
    assert (np.abs(spread) < 20).all()  # cross-venue spread of BTC spot vs perp, in bps


def test_build_one_equals_build_many_and_no_look_ahead(builder: FeatureBuilder, recorded) -> None:
    candles, summary = recorded
    batch = builder.build_many(candles, book=summary)
    for i in (60, 150, 240):
        close = int(candles.ts.iloc[i]) + 1000
        seen = summary[summary.ts <= close]  # what existed at the bar's close
        one = builder.build_one({"1s": candles.iloc[: i + 1]}, book=seen)
        np.testing.assert_allclose(one.flat[0], batch.flat[i], atol=1e-6, rtol=0)
        # later book rows changed beyond recognition: the sample does not move
        later = summary.copy()
        later.loc[later.ts > close, ["imb_1", "imb_all", "ma_1s", "spread", "mid"]] = [1.0, -1.0, 0.9, 50.0, 1e5]
        again = builder.build_many(candles, book=later)
        np.testing.assert_array_equal(again.flat[i], batch.flat[i])


def test_stale_or_disordered_book_rows(recorded) -> None:
    _, summary = recorded
    last = int(summary.ts.iloc[-1])
    f = book_features(summary, np.array([last + 5000, last + 5001], dtype=np.int64))
    assert f[0, -1] == 1.0 and f[1, -1] == 0.0  # older than 5 s: not present
    with pytest.raises(ValueError, match="strictly increasing"):
        book_features(summary.iloc[::-1], np.array([last]))


def test_book_rows_hook_gives_the_same_features(recorded) -> None:
    """How train/backtest (store) and live (BookEngine) supply the rows: through builder.book_rows."""
    candles, summary = recorded
    fb = FeatureBuilder(FeaturesConfig(window=16, timeframes=["1s"], norm_window=20, orderbook=True), "1s")
    want = fb.build_many(candles, book=summary, symbol="BTC/USDT")
    calls = []

    def rows(symbol: str, a: int, b: int) -> pd.DataFrame:
        calls.append((symbol, a, b))
        return summary[(summary.ts >= a) & (summary.ts <= b)]

    fb.book_rows = rows
    got = fb.build_many(candles, symbol="BTC/USDT")
    np.testing.assert_array_equal(got.flat, want.flat)
    one = fb.build_one({"1s": candles.iloc[:201]}, symbol="BTC/USDT")
    np.testing.assert_allclose(one.flat[0], want.flat[200], atol=1e-6, rtol=0)
    close = int(candles.ts.iloc[200]) + 1000
    assert calls[-1] == ("BTC/USDT", close - 5000, close)  # only rows up to the bar's close are asked for
