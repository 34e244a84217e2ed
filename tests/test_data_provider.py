"""DataProvider, ring buffer and ReplaySource on real candles."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from core.data.files import load_file
from core.data.provider import DataProvider
from core.data.replay import ReplaySource
from core.data.resample import resample
from core.data.ringbuffer import CandleRing
from core.data.store import MarketStore
from core.types import CANDLE_COLUMNS, CandleEvent, SeriesKey

KEY = SeriesKey("binanceus", "BTC/USDT", "1m")


@pytest.fixture(scope="module")
def btc(shared_data: Path) -> pd.DataFrame:
    return load_file(shared_data / "binanceus" / "BTC_USDT-1m.csv")


@pytest.fixture(scope="module")
def xrp(shared_data: Path) -> pd.DataFrame:
    return load_file(shared_data / "freqtrade" / "XRP_ETH-1m.csv")


def test_ring_wraps_and_reads_copies(btc: pd.DataFrame) -> None:
    ring = CandleRing(100)
    vals = btc[list(CANDLE_COLUMNS[1:])].to_numpy()
    ts = btc["ts"].to_numpy()
    for j in range(130):
        ring.append(int(ts[j]), *vals[j])
    got_ts, got_vals = ring.read()
    np.testing.assert_array_equal(got_ts, ts[30:130])
    np.testing.assert_array_equal(got_vals.T, vals[30:130])
    got_ts[:] = 0  # a copy: the ring is untouched
    assert ring.read(1)[0][0] == ts[129]
    ring.extend(ts[130:1000], vals[130:1000])
    np.testing.assert_array_equal(ring.read(5)[0], ts[995:1000])
    ring.extend(ts[1000:1042], vals[1000:1042])  # wraps across the end
    np.testing.assert_array_equal(ring.read()[0], ts[942:1042])


def test_ingest_base_and_higher_timeframes_equal_resample(btc: pd.DataFrame) -> None:
    p = DataProvider(None, "1m", ["1m", "5m", "1h"], cache_bars=1500)
    events: list[CandleEvent] = []
    p.subscribe(events.append)
    part = btc.iloc[:3 * 60 + 7]
    for i in range(0, len(part), 50):  # batches, as a REST backfill delivers them
        p.ingest(KEY, part.iloc[i:i + 50])
    by_tf = {tf: [e for e in events if e.key.timeframe == tf] for tf in ("1m", "5m", "1h")}
    assert len(by_tf["1m"]) == len(part)
    for tf, n in (("5m", 37), ("1h", 3)):
        ref = resample(part, "1m", tf)  # closed buckets only
        assert len(ref) == n
        got = pd.DataFrame([e.as_row() for e in by_tf[tf]], columns=list(CANDLE_COLUMNS))
        pd.testing.assert_frame_equal(got, ref, check_exact=False, rtol=1e-12)
        pd.testing.assert_frame_equal(p.snapshot("BTC/USDT", tf), ref, check_exact=False, rtol=1e-12)
    # the hour candle is published right after its last minute, never before
    i_hour = next(i for i, e in enumerate(events) if e.key.timeframe == "1h")
    assert events[i_hour - 1].key.timeframe in ("1m", "5m") and events[i_hour].ts == part["ts"].iat[0]
    last_min = [e for e in events[:i_hour] if e.key.timeframe == "1m"][-1]
    assert last_min.ts == part["ts"].iat[59]


def test_gappy_series_higher_tf_equals_resample(xrp: pd.DataFrame) -> None:
    p = DataProvider(None, "1m", ["5m", "15m"], cache_bars=2000)
    key = SeriesKey("binance", "XRP/ETH", "1m")
    part = xrp.iloc[:600]
    for i in range(0, len(part), 37):
        p.ingest(key, part.iloc[i:i + 37])
    for tf in ("5m", "15m"):
        ref = resample(part, "1m", tf)
        got = p.snapshot("XRP/ETH", tf)
        if got["ts"].iat[0] != ref["ts"].iat[0]:  # first bucket seen mid-way is not published
            ref = ref.iloc[1:].reset_index(drop=True)
        pd.testing.assert_frame_equal(got, ref, check_exact=False, rtol=1e-12)


def test_subscriber_isolation_and_filters(btc: pd.DataFrame, caplog: pytest.LogCaptureFixture) -> None:
    p = DataProvider(None, "1m", ["1m", "5m"], cache_bars=100)
    got_all: list[CandleEvent] = []
    got_5m: list[CandleEvent] = []
    got_other: list[CandleEvent] = []

    def boom(ev: CandleEvent) -> None:
        raise RuntimeError("subscriber bug")

    p.subscribe(boom)
    p.subscribe(got_all.append)
    p.subscribe(got_5m.append, timeframes=["5m"])
    p.subscribe(got_other.append, symbols=["ETH/USDT"])
    with caplog.at_level("ERROR"):
        p.ingest(KEY, btc.iloc[:20])
    assert len(got_all) == 24 and len(got_5m) == 4 and not got_other
    assert "subscriber bug" in caplog.text
    tok = p.subscribe(got_other.append)
    p.unsubscribe(tok)
    p.ingest(KEY, btc.iloc[20:25])
    assert not got_other and len(got_all) == 30


def test_in_progress_updates(btc: pd.DataFrame) -> None:
    p = DataProvider(None, "1m", ["1m", "5m"], cache_bars=100)
    closed_only: list[CandleEvent] = []
    live: list[CandleEvent] = []
    p.subscribe(closed_only.append)
    p.subscribe(live.append, in_progress=True)
    p.ingest(KEY, btc.iloc[:2])
    cur = btc.iloc[2:3]
    early = cur.assign(close=cur["open"], high=cur[["open", "close"]].max(axis=1),
                       low=cur[["open", "close"]].min(axis=1), volume=cur["volume"] / 2)
    evs = p.ingest(KEY, early, closed=False)
    assert [e.closed for e in evs] == [False, False] and len(closed_only) == 2
    part5 = p.partial("BTC/USDT", "5m")
    assert part5 is not None and part5.open == btc["open"].iat[0]
    assert part5.volume == pytest.approx(btc["volume"].iloc[:2].sum() + early["volume"].iat[0])
    assert len(p.snapshot("BTC/USDT", "1m")) == 2  # the partial candle is not in the closed cache
    # a late in-progress update for an already closed candle is rejected
    assert p.ingest(KEY, btc.iloc[1:2], closed=False) == []
    p.ingest(KEY, btc.iloc[2:5])
    assert p.partial("BTC/USDT", "1m") is None and len(closed_only) == 6  # 5 minutes + one 5m candle
    assert sum(not e.closed for e in live) == 2


def test_rejected_rows_counted_never_cached(btc: pd.DataFrame) -> None:
    p = DataProvider(None, "1m", ["1m"], cache_bars=100)
    bad = btc.iloc[:5].copy()
    bad.loc[bad.index[2], "low"] = bad["high"].iat[2] * 2  # hand-broken row
    p.ingest(KEY, bad, source="test")
    assert p.rejected_counts == {"high_below_low": 1}
    assert p.snapshot("BTC/USDT", "1m")["ts"].tolist() == bad["ts"].drop(bad.index[2]).tolist()
    p.ingest(KEY, btc.iloc[1:2], source="test")  # older than the cache: out of order
    assert p.rejected_counts == {"high_below_low": 1, "out_of_order": 1}


def test_snapshot_and_arrays_are_copies(btc: pd.DataFrame) -> None:
    p = DataProvider(None, "1m", ["1m"], cache_bars=50)
    p.ingest(KEY, btc.iloc[:80])
    a = p.arrays("BTC/USDT", "1m")
    assert len(a["ts"]) == 50 and a["ts"][0] == btc["ts"].iat[30]
    with pytest.raises(ValueError):
        a["close"][0] = 1.0  # read-only
    snap = p.snapshot("BTC/USDT", "1m", 10)
    snap.loc[0, "close"] = -1.0
    assert p.snapshot("BTC/USDT", "1m", 10)["close"].iat[0] == btc["close"].iat[70]
    with pytest.raises(KeyError, match="not served"):
        p.snapshot("BTC/USDT", "4h")


def test_ingest_stores_and_warm_restores(btc: pd.DataFrame, tmp_path: Path) -> None:
    store = MarketStore(tmp_path / "w.duckdb")
    p = DataProvider(store, "1m", ["1m", "5m", "1h"], cache_bars=200, exchange="binanceus")
    part = btc.iloc[:1000]
    p.ingest(KEY, part)
    assert store.candle_count(KEY) == 1000
    # a fresh provider (restart) warms from the store and continues seamlessly
    q = DataProvider(store, "1m", ["1m", "5m", "1h"], cache_bars=200, exchange="binanceus")
    assert q.warm("BTC/USDT") == 1000
    pd.testing.assert_frame_equal(q.snapshot("BTC/USDT", "1m"), p.snapshot("BTC/USDT", "1m"))
    pd.testing.assert_frame_equal(q.snapshot("BTC/USDT", "1h"), p.snapshot("BTC/USDT", "1h"))
    events: list[CandleEvent] = []
    q.subscribe(events.append, timeframes=["1h"])
    q.ingest(KEY, btc.iloc[1000:1080])  # completes hour 16 (bars 960..1019, begun before the restart) and 17
    ref = resample(btc.iloc[:1080], "1m", "1h")
    assert [e.ts for e in events] == ref["ts"].tolist()[-2:]
    assert [e.volume for e in events] == pytest.approx(ref["volume"].tolist()[-2:])
    assert [e.open for e in events] == ref["open"].tolist()[-2:]
    store.close()


def test_replay_order_and_status(btc: pd.DataFrame, shared_data: Path) -> None:
    store = MarketStore(":memory:")
    eth = load_file(shared_data / "binanceus" / "BTC_USD-1m.csv")
    k2 = SeriesKey("binanceus", "BTC/USD", "1m")
    store.upsert_candles(KEY, btc.iloc[:300])
    store.upsert_candles(k2, eth.iloc[:300])
    p = DataProvider(store, "1m", ["1m", "5m"], cache_bars=500)
    seen: list[CandleEvent] = []
    p.subscribe(seen.append, timeframes=["1m"])
    start, end = int(btc["ts"].iat[100]), int(btc["ts"].iat[200])

    def no_writes(*a: object, **k: object) -> int:
        raise AssertionError("replayed candles must not be written back to the store")

    store.upsert_candles = no_writes  # type: ignore[method-assign]
    src = ReplaySource(store, [KEY, k2], start_ms=start, end_ms=end)
    p.add_source(src)
    p.start()
    assert p.wait(60)
    assert len(seen) == 200
    ts = [e.ts for e in seen]
    assert ts == sorted(ts) and [e.key.symbol for e in seen[:2]] == ["BTC/USDT", "BTC/USD"]
    assert seen[0].ts == start and seen[-1].ts == end - 60_000
    st = p.status()["replay"]
    assert st.rejected_rows == 0 and st.error is None and not st.connected
    store.close()


def test_file_source_through_provider(shared_data: Path, tmp_path: Path) -> None:
    from core.data.files import FileSource

    store = MarketStore(tmp_path / "f.duckdb")
    key = SeriesKey("binance", "ETH/BTC", "5m")
    p = DataProvider(store, "5m", ["5m", "1h"], cache_bars=300, exchange="binance")
    p.add_source(FileSource(shared_data / "freqtrade" / "ETH_BTC-5m.csv", key, chunk_rows=1000))
    p.start()
    assert p.wait(60)
    ref = load_file(shared_data / "freqtrade" / "ETH_BTC-5m.csv")
    assert store.candle_count(key) == len(ref) == 5760
    pd.testing.assert_frame_equal(p.snapshot("ETH/BTC", "5m"), ref.iloc[-300:].reset_index(drop=True))
    hours = resample(ref, "5m", "1h")
    got = p.snapshot("ETH/BTC", "1h")
    pd.testing.assert_frame_equal(got, hours.iloc[-len(got):].reset_index(drop=True), check_exact=False, rtol=1e-12)
    assert p.status()["file:ETH_BTC-5m.csv"].rejected_rows == 0
    store.close()


def test_replay_pacing(btc: pd.DataFrame) -> None:
    store = MarketStore(":memory:")
    store.upsert_candles(KEY, btc.iloc[:4])
    times: list[float] = []
    src = ReplaySource(store, [KEY], speed=600.0)  # a 1m candle every 0.1 s

    def emit(key: SeriesKey, df: pd.DataFrame, closed: bool) -> None:
        times.append(time.monotonic())

    t0 = time.monotonic()
    asyncio.run(src.run(emit, asyncio.Event()))
    assert len(times) == 4
    offsets = [t - t0 for t in times]
    assert offsets[0] < 0.05
    assert offsets[-1] == pytest.approx(0.3, abs=0.05)  # 3 minutes at 600x
    assert all(0.07 < b - a < 0.14 for a, b in zip(offsets, offsets[1:], strict=False))
    # as fast as possible: no pacing
    t1 = time.monotonic()
    asyncio.run(ReplaySource(store, [KEY]).run(emit, asyncio.Event()))
    assert time.monotonic() - t1 < 0.1
    store.close()
