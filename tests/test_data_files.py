"""File import layouts and units, file-name detection, and candles built from real trades."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from core.data.files import candles_from_trades, load_file, load_trades, parse_series_name, to_ms
from core.data.resample import resample


@pytest.fixture(scope="module")
def btc(shared_data: Path) -> pd.DataFrame:
    return load_file(shared_data / "binanceus" / "BTC_USDT-1m.csv").iloc[:2000].reset_index(drop=True)


def test_shared_layout_iso_timestamps(shared_data: Path) -> None:
    df = load_file(shared_data / "binanceus" / "BTC_USDT-1m.csv")
    assert len(df) == 30_240 and df["ts"].dtype == np.int64
    assert df["ts"].iat[0] == 1_677_628_800_000  # 2023-03-01T00:00:00Z
    assert (np.diff(df["ts"]) == 60_000).all()
    raw = pd.read_csv(shared_data / "binanceus" / "BTC_USDT-1m.csv", nrows=3)
    assert df["close"].iloc[:3].tolist() == raw["close"].tolist()


@pytest.mark.parametrize("unit, factor", [("s", 1e-3), ("ms", 1), ("us", 1e3), ("ns", 1e6)])
def test_epoch_units_detected(btc: pd.DataFrame, tmp_path: Path, unit: str, factor: float) -> None:
    f = tmp_path / f"BTC_USDT-1m-{unit}.csv"
    out = btc.assign(timestamp=(btc["ts"].astype("float64") * factor).astype("int64")).drop(columns="ts")
    out[["timestamp", "open", "high", "low", "close", "volume"]].to_csv(f, index=False)
    pd.testing.assert_frame_equal(load_file(f), btc)


def test_binance_kline_csv_without_header(btc: pd.DataFrame, tmp_path: Path) -> None:
    """The data.binance.vision layout: 12 columns, no header (values from the real BTC file)."""
    f = tmp_path / "BTCUSDT-1m-2023-03.csv"
    k = pd.DataFrame({
        0: btc["ts"], 1: btc["open"], 2: btc["high"], 3: btc["low"], 4: btc["close"], 5: btc["volume"],
        6: btc["ts"] + 59_999, 7: btc["close"] * btc["volume"], 8: 10, 9: btc["volume"] / 2,
        10: btc["close"] * btc["volume"] / 2, 11: 0,
    })
    k.to_csv(f, header=False, index=False)
    pd.testing.assert_frame_equal(load_file(f), btc)
    # 2025+ spot files stamp microseconds
    k[0] = k[0] * 1000
    k.to_csv(f, header=False, index=False)
    pd.testing.assert_frame_equal(load_file(f), btc)
    assert parse_series_name(f) == (None, "1m")


def test_freqtrade_json_and_date_csv(btc: pd.DataFrame, tmp_path: Path) -> None:
    f = tmp_path / "BTC_USDT-1m.json"
    f.write_text(json.dumps(btc.to_numpy().tolist()))
    got = load_file(f)
    pd.testing.assert_frame_equal(got, btc)
    g = tmp_path / "BTC_USDT-1m-date.csv"
    btc.assign(date=pd.to_datetime(btc["ts"], unit="ms", utc=True).astype(str)).drop(columns="ts")[
        ["date", "open", "high", "low", "close", "volume"]].to_csv(g, index=False)
    pd.testing.assert_frame_equal(load_file(g), btc)


def test_freqtrade_feather_dates_and_jsongz(btc: pd.DataFrame, tmp_path: Path) -> None:
    """freqtrade's own storage: feather with a tz-aware `date` column, and gzipped JSON rows."""
    f = tmp_path / "BTC_USDT-1m.feather"
    btc.assign(date=pd.to_datetime(btc["ts"], unit="ms", utc=True)).drop(columns="ts")[
        ["date", "open", "high", "low", "close", "volume"]].to_feather(f)
    pd.testing.assert_frame_equal(load_file(f), btc)
    import gzip

    g = tmp_path / "BTC_USDT-1m.json.gz"
    with gzip.open(g, "wt") as fh:
        json.dump(btc.to_numpy().tolist(), fh)
    pd.testing.assert_frame_equal(load_file(g), btc)
    assert parse_series_name(g) == ("BTC/USDT", "1m")


def test_parquet_feather_and_mapping(btc: pd.DataFrame, tmp_path: Path) -> None:
    p = tmp_path / "x.parquet"
    btc.rename(columns={"ts": "open_time"}).to_parquet(p)
    pd.testing.assert_frame_equal(load_file(p), btc)
    f = tmp_path / "x.feather"
    btc.rename(columns={"ts": "when", "volume": "qty_base"}).to_feather(f)
    with pytest.raises(ValueError, match="no column for 'ts'"):
        load_file(f)
    pd.testing.assert_frame_equal(load_file(f, {"ts": "when", "volume": "qty_base"}), btc)


def test_bad_timestamp_is_named(tmp_path: Path) -> None:
    f = tmp_path / "bad.csv"  # hand-written edge case
    f.write_text("timestamp,open,high,low,close,volume\nnot-a-time,1,1,1,1,1\n")
    with pytest.raises(ValueError, match="not-a-time"):
        load_file(f)
    with pytest.raises(FileNotFoundError):
        load_file(tmp_path / "missing.csv")


def test_to_ms_units() -> None:
    assert to_ms(pd.Series([1_677_628_800])).tolist() == [1_677_628_800_000]
    assert to_ms(pd.Series(["2023-03-01T00:00:00.250Z"])).tolist() == [1_677_628_800_250]
    assert to_ms(pd.Series(["2023-03-01 00:00:00"])).tolist() == [1_677_628_800_000]  # naive = UTC


def test_series_names() -> None:
    assert parse_series_name("BTC_USDT-1m.csv") == ("BTC/USDT", "1m")
    assert parse_series_name("/x/XRP_ETH-trades.csv") == ("XRP/ETH", "trades")
    assert parse_series_name("ETH_BTC-5m.feather") == ("ETH/BTC", "5m")
    assert parse_series_name("BTC_USDT_USDT-1h-futures.feather") == ("BTC/USDT", "1h")
    assert parse_series_name("whatever.csv") == (None, None)


def test_candles_from_trades_match_exchange_candles(shared_data: Path) -> None:
    """Every 1m candle of XRP_ETH-1m.csv is rebuilt exactly from XRP_ETH-trades.csv (checked: 2469 of
    2469 candles, open/high/low/close/volume identical; the trades file covers every minute)."""
    trades = load_trades(shared_data / "freqtrade" / "XRP_ETH-trades.csv")
    ref = load_file(shared_data / "freqtrade" / "XRP_ETH-1m.csv")
    got = candles_from_trades(trades, "1m")
    assert got["ts"].tolist() == ref["ts"].tolist()
    for c in ("open", "high", "low", "close"):
        np.testing.assert_array_equal(got[c].to_numpy(), ref[c].to_numpy(), err_msg=c)
    np.testing.assert_allclose(got["volume"].to_numpy(), ref["volume"].to_numpy(), rtol=1e-12)


def test_candles_from_trades_1s_roll_up_to_1m(shared_data: Path) -> None:
    trades = load_trades(shared_data / "freqtrade" / "XRP_ETH-trades.csv")
    sec = candles_from_trades(trades, "1s")
    assert (sec["ts"] % 1000 == 0).all() and sec["volume"].sum() == pytest.approx(trades["amount"].sum())
    assert len(sec) == trades["ts"].floordiv(1000).nunique()
    pd.testing.assert_frame_equal(resample(sec, "1s", "1m", closed_only=False), candles_from_trades(trades, "1m"),
                                  check_exact=False, rtol=1e-12)
