"""MarketStore on the real files of ../shared/data: import, idempotent re-import, gaps, queries, helpers."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from core.data.files import load_file, load_trades, parse_series_name
from core.data.store import Gap, MarketStore
from core.types import CANDLE_COLUMNS, SeriesKey


@pytest.fixture
def store(tmp_path: Path):
    s = MarketStore(tmp_path / "t.duckdb")
    yield s
    s.close()


def test_import_every_file_then_reimport_changes_nothing(crypto_candle_files: list[Path],
                                                         store: MarketStore) -> None:
    files = crypto_candle_files
    assert len(files) == 14
    expected: dict[SeriesKey, pd.DataFrame] = {}
    for f in files:
        symbol, tf = parse_series_name(f)
        assert symbol and tf
        key = SeriesKey(f.parent.name, symbol, tf)
        df = load_file(f)
        assert store.upsert_candles(key, df) == len(df)
        expected[key] = df
    before = store.query_df("SELECT * FROM candles ORDER BY exchange, symbol, timeframe, ts")
    # second import: no row new or changed, content identical
    for f in files:
        symbol, tf = parse_series_name(f)
        assert store.upsert_candles(SeriesKey(f.parent.name, symbol, tf), load_file(f)) == 0
    after = store.query_df("SELECT * FROM candles ORDER BY exchange, symbol, timeframe, ts")
    pd.testing.assert_frame_equal(before, after)
    assert store.candle_count() == sum(len(d) for d in expected.values())
    for key, df in expected.items():
        got = store.candles(key)
        np.testing.assert_array_equal(got["ts"].to_numpy(), np.sort(df["ts"].to_numpy()))
        np.testing.assert_array_equal(got["close"].to_numpy(), df.sort_values("ts")["close"].to_numpy())
    assert set(store.series()) == set(expected)


def test_trades_import_idempotent(shared_data: Path, store: MarketStore) -> None:
    trades = load_trades(shared_data / "freqtrade" / "XRP_ETH-trades.csv")
    assert store.upsert_trades("binance", "XRP/ETH", trades) == 12_477
    assert store.upsert_trades("binance", "XRP/ETH", trades) == 0
    got = store.trades("binance", "XRP/ETH")
    assert len(got) == 12_477
    assert got["price"].sum() == pytest.approx(trades["price"].sum())
    # one changed trade counts as one upsert
    changed = trades.iloc[:3].copy()
    changed.loc[changed.index[1], "amount"] += 1
    assert store.upsert_trades("binance", "XRP/ETH", changed) == 1


def _pandas_gaps(ts: np.ndarray, tf_ms: int) -> list[tuple[int, int, int]]:
    s = pd.Series(np.sort(ts))
    d = s.diff()
    idx = d[d > tf_ms].index
    return [(int(s[i - 1] + tf_ms), int(s[i]), int(d[i] // tf_ms - 1)) for i in idx]


def test_gaps_xrp_eth_match_pandas(shared_data: Path, store: MarketStore) -> None:
    df = load_file(shared_data / "freqtrade" / "XRP_ETH-1m.csv")
    key = SeriesKey("binance", "XRP/ETH", "1m")
    store.upsert_candles(key, df)
    gaps = store.gaps(key)
    ref = _pandas_gaps(df["ts"].to_numpy(), 60_000)
    assert len(ref) > 100  # the file is known to have many holes
    assert [(g.start_ms, g.end_ms, g.missing_bars) for g in gaps] == ref
    span_bars = (df["ts"].max() - df["ts"].min()) // 60_000 + 1
    assert sum(g.missing_bars for g in gaps) == span_bars - len(df)
    cov = store.coverage().set_index(["exchange", "symbol", "timeframe"]).loc[("binance", "XRP/ETH", "1m")]
    assert cov["rows"] == len(df) and cov["gaps"] == len(ref)
    assert cov["missing_bars"] == span_bars - len(df)


def test_gaps_exact_positions_on_btc_copy_with_rows_removed(shared_data: Path, store: MarketStore,
                                                            tmp_path: Path) -> None:
    src = shared_data / "binanceus" / "BTC_USDT-1m.csv"
    lines = src.read_text().splitlines()
    # drop data rows 100 (one bar), 5000..5009 (ten bars) and the row before the last (one bar)
    drop = {100, *range(5000, 5010), len(lines) - 2}
    kept = [ln for i, ln in enumerate(lines) if i == 0 or i not in drop]
    copy = tmp_path / "BTC_USDT-1m.csv"
    copy.write_text("\n".join(kept) + "\n")
    df = load_file(copy)
    key = SeriesKey("binanceus", "BTC/USDT", "1m")
    store.upsert_candles(key, df)
    t0 = int(load_file(src)["ts"].iat[0])
    m = 60_000
    # data row i (1-based after the header) has ts t0 + (i - 1) * m
    assert store.gaps(key) == [
        Gap(t0 + 99 * m, t0 + 100 * m, 1),
        Gap(t0 + 4999 * m, t0 + 5009 * m, 10),
        Gap(t0 + (len(lines) - 3) * m, t0 + (len(lines) - 2) * m, 1),
    ]
    cov = store.coverage()
    assert int(cov["gaps"].iat[0]) == 3 and int(cov["missing_bars"].iat[0]) == 12


def test_range_and_last_n_queries(shared_data: Path, store: MarketStore) -> None:
    df = load_file(shared_data / "binanceus" / "BTC_USDT-1m.csv")
    key = SeriesKey("binanceus", "BTC/USDT", "1m")
    store.upsert_candles(key, df)
    last = store.last_candles(key, 1500)
    pd.testing.assert_frame_equal(last, df.iloc[-1500:].reset_index(drop=True))
    assert list(last.columns) == list(CANDLE_COLUMNS) and last["ts"].dtype == np.int64
    start, end = int(df["ts"].iat[10]), int(df["ts"].iat[20])
    part = store.candles(key, start, end)
    pd.testing.assert_frame_equal(part, df.iloc[10:20].reset_index(drop=True))  # [start, end)
    assert len(store.last_candles(key, 10**6)) == len(df)
    assert store.last_candles(SeriesKey("x", "NO/PE", "1m"), 5).empty


def test_last_n_across_gaps(shared_data: Path, store: MarketStore) -> None:
    df = load_file(shared_data / "freqtrade" / "XRP_ETH-1m.csv")
    key = SeriesKey("binance", "XRP/ETH", "1m")
    store.upsert_candles(key, df)
    pd.testing.assert_frame_equal(store.last_candles(key, 500), df.iloc[-500:].reset_index(drop=True))
    # new candles after a cached max are seen
    store.last_candles(key, 1)
    nxt = df.iloc[-1:].assign(ts=df["ts"].iat[-1] + 60_000)
    store.upsert_candles(key, nxt)
    assert int(store.last_candles(key, 1)["ts"].iat[0]) == int(nxt["ts"].iat[0])


def test_changed_candle_is_updated_and_counted(shared_data: Path, store: MarketStore) -> None:
    df = load_file(shared_data / "binanceus" / "BTC_USD-1m.csv").iloc[:100]
    key = SeriesKey("binanceus", "BTC/USD", "1m")
    store.upsert_candles(key, df)
    changed = df.iloc[40:60].copy()
    changed.loc[changed.index[5], "volume"] += 1.0
    assert store.upsert_candles(key, changed) == 1
    assert store.candles(key)["volume"].iat[45] == pytest.approx(df["volume"].iat[45] + 1.0)
    assert store.candle_count(key) == 100  # replaced, not duplicated
    assert store.query_df("SELECT count(DISTINCT ts) AS n FROM candles")["n"].iat[0] == 100
    with pytest.raises(ValueError, match="upsert_candles"):
        store.write_df("candles", df)


def test_bad_batch_refused_whole_and_stored_data_kept(shared_data: Path, store: MarketStore) -> None:
    df = load_file(shared_data / "binanceus" / "BTC_USDT-1m.csv").iloc[:50]
    key = SeriesKey("binanceus", "BTC/USDT", "1m")
    store.upsert_candles(key, df)
    bad = df.iloc[40:50].copy()  # real rows, one of them broken by hand
    bad.loc[bad.index[3], "high"] = bad["low"].iat[3] / 2
    bad = pd.concat([bad, df.iloc[-1:].assign(ts=df["ts"].iat[-1] + 60_000)], ignore_index=True)
    with pytest.raises(ValueError, match="high_below_low"):
        store.upsert_candles(key, bad)
    pd.testing.assert_frame_equal(store.candles(key), df.reset_index(drop=True))


def test_generic_helpers_and_transactions(store: MarketStore) -> None:
    store.execute("CREATE TABLE decisions (id VARCHAR PRIMARY KEY, ts BIGINT, action VARCHAR)")
    df = pd.DataFrame({"id": ["a", "b"], "ts": [1, 2], "action": ["BUY", "HOLD"]})
    assert store.write_df("decisions", df) == 2
    assert store.write_df("decisions", df.assign(action=["SELL", "HOLD"]), mode="upsert") == 2
    got = store.query_df("SELECT * FROM decisions ORDER BY id")
    assert got["action"].tolist() == ["SELL", "HOLD"]
    with pytest.raises(RuntimeError), store.transaction() as con:
        con.execute("INSERT INTO decisions VALUES ('c', 3, 'BUY')")
        raise RuntimeError("boom")
    assert store.query_df("SELECT count(*) AS n FROM decisions")["n"].iat[0] == 2  # rolled back
    # append creates a table that does not exist yet
    assert store.write_df("metrics", pd.DataFrame({"step": [1, 2], "loss": [0.5, 0.4]})) == 2
    with pytest.raises(ValueError, match="bad table name"):
        store.write_df("x; DROP TABLE candles", df)


def test_threads_share_one_connection(shared_data: Path, tmp_path: Path) -> None:
    path = tmp_path / "shared.duckdb"
    a, b = MarketStore(path), MarketStore(path)  # same process: one connection, one lock
    df = load_file(shared_data / "freqtrade" / "ETH_BTC-5m.csv")
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            s = a if i % 2 else b
            key = SeriesKey("binance", f"S{i}/BTC", "5m")
            s.upsert_candles(key, df.iloc[i * 200:(i + 1) * 200])
            s.query_df("SELECT count(*) FROM candles")
        except BaseException as exc:  # collected and re-raised in the test thread
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert a.candle_count() == 1600
    a.close()
    assert b.candle_count() == 1600  # still open: the connection lives until the last user closes
    b.close()
    ro = MarketStore(path, read_only=True)
    assert ro.candle_count() == 1600
    with pytest.raises(PermissionError):
        ro.upsert_candles(SeriesKey("x", "A/B", "5m"), df.iloc[:1])
    ro.close()


def test_second_process_gets_a_clear_error(tmp_path: Path) -> None:
    import subprocess
    import sys

    path = tmp_path / "locked.duckdb"
    s = MarketStore(path)  # this process holds the writer lock
    code = ("import sys; from core.data.store import MarketStore\n"
            "try:\n    MarketStore(sys.argv[1], read_only=True)\n"
            "except RuntimeError as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parent.parent, timeout=60).stdout
    # one sentence naming the holder (this test process) and what to do (issue 16)
    import os

    assert out.strip() == f"process {os.getpid()} holds {path}; stop it or pass --db"
    s.close()
