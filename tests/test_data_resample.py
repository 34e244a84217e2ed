"""resample() against an independent pandas groupby on the real files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from core.data.files import load_file
from core.data.resample import resample


def pandas_ohlcv(df: pd.DataFrame, rule: str) -> pd.DataFrame:
    """Reference: DatetimeIndex resample (left-closed, left-labelled), empty buckets dropped."""
    x = df.set_index(pd.to_datetime(df["ts"], unit="ms", utc=True))
    agg = x.resample(rule, label="left", closed="left").agg(
        {"open": "first", "high": "max", "low": "min", "close": "last", "volume": "sum", "ts": "count"}
    )
    agg = agg[agg["ts"] > 0].drop(columns="ts")
    out = agg.reset_index(names="dt")
    out.insert(0, "ts", out.pop("dt").astype("datetime64[ms, UTC]").astype("int64"))
    return out.reset_index(drop=True)


@pytest.mark.parametrize("to_tf, rule", [("5m", "5min"), ("1h", "1h"), ("1d", "1D")])
def test_btc_1m_resample_equals_pandas(shared_data: Path, to_tf: str, rule: str) -> None:
    df = load_file(shared_data / "binanceus" / "BTC_USDT-1m.csv")
    got = resample(df, "1m", to_tf, closed_only=False)
    ref = pandas_ohlcv(df, rule)
    pd.testing.assert_frame_equal(got, ref, check_exact=False, rtol=1e-12)


def test_gappy_xrp_eth_resample_equals_pandas(shared_data: Path) -> None:
    df = load_file(shared_data / "freqtrade" / "XRP_ETH-1m.csv")
    got = resample(df, "1m", "5m", closed_only=False)
    ref = pandas_ohlcv(df, "5min")
    pd.testing.assert_frame_equal(got, ref, check_exact=False, rtol=1e-12)
    # buckets without any 1m candle produce no 5m candle (nothing invented)
    span = (df["ts"].max() - df["ts"].min()) // 300_000 + 1
    assert len(got) < span


def test_5m_to_1h_on_freqtrade(shared_data: Path) -> None:
    df = load_file(shared_data / "freqtrade" / "LTC_BTC-5m.csv")
    pd.testing.assert_frame_equal(resample(df, "5m", "1h", closed_only=False), pandas_ohlcv(df, "1h"),
                                  check_exact=False, rtol=1e-12)


def test_closed_only_drops_incomplete_trailing_bucket(shared_data: Path) -> None:
    df = load_file(shared_data / "binanceus" / "BTC_USDT-1m.csv")
    part = df.iloc[: 60 * 5 + 17]  # five whole hours and 17 minutes of the sixth
    assert len(resample(part, "1m", "1h", closed_only=False)) == 6
    closed = resample(part, "1m", "1h", closed_only=True)
    assert len(closed) == 5
    assert closed["volume"].iat[-1] == pytest.approx(part["volume"].iloc[240:300].sum())
    # a bucket is complete once its LAST base candle is present
    assert len(resample(df.iloc[:120], "1m", "1h")) == 2


def test_bad_ratio_and_unsorted_input(shared_data: Path) -> None:
    df = load_file(shared_data / "freqtrade" / "ETH_BTC-5m.csv")
    with pytest.raises(ValueError, match="not a multiple"):
        resample(df, "5m", "1m")
    with pytest.raises(ValueError, match="ascending"):
        resample(df.iloc[::-1], "5m", "1h")
    assert np.array_equal(resample(df, "5m", "5m")["close"], df["close"])
