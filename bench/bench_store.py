"""Data-layer benchmark: prints ONE JSON object of medians.

- import_1m_rows_s: validate_candles + MarketStore.upsert_candles of 1,000,000 1m candles (the real
  BTC/USDT file of ../shared/data tiled with shifted timestamps) into a fresh DuckDB FILE, commit included.
  validate_1m_rows_s / upsert_1m_rows_s split it; reimport_1m_rows_s = the same batch again (0 written).
- last1500_query_ms: MarketStore.last_candles(key, 1500) on that 1M-row table.
- cache_append_us: DataProvider.ingest of one closed 1m candle (validate, ring append, 5m/1h resample,
  publish to one subscriber; no store); ring_append_us: the bare ring buffer append.
- cache_read_ms: DataProvider.arrays(symbol, '1m', 1500) (read-only copies); snapshot_ms: the same as a
  DataFrame.

Usage: python bench/bench_store.py [--rows 1000000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.data.files import load_file  # noqa: E402
from core.data.provider import DataProvider  # noqa: E402
from core.data.ringbuffer import CandleRing  # noqa: E402
from core.data.store import MarketStore  # noqa: E402
from core.data.validate import validate_candles  # noqa: E402
from core.paths import shared_data_dir  # noqa: E402
from core.types import CANDLE_COLUMNS, SeriesKey  # noqa: E402

KEY = SeriesKey("bench", "BTC/USDT", "1m")


def tiled(rows: int) -> pd.DataFrame:
    base = load_file(shared_data_dir() / "binanceus" / "BTC_USDT-1m.csv")
    span = len(base) * 60_000
    reps = -(-rows // len(base))
    big = pd.concat([base.assign(ts=base["ts"] + i * span) for i in range(reps)], ignore_index=True)
    return big.iloc[:rows].reset_index(drop=True)


def med(xs: list[float]) -> float:
    return float(statistics.median(xs))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    big = tiled(args.rows)
    imp, val, ups, reimp, q_ms, q_cold = [], [], [], [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            path = Path(tmp) / f"bench{r}.duckdb"
            store = MarketStore(path)
            t0 = time.perf_counter()
            res = validate_candles(big, "1m")
            t1 = time.perf_counter()
            n = store.upsert_candles(KEY, res.valid, validate=False)
            t2 = time.perf_counter()
            assert n == args.rows and not res.counts
            val.append(t1 - t0)
            ups.append(t2 - t1)
            imp.append(t2 - t0)
            t0 = time.perf_counter()
            assert store.upsert_candles(KEY, big) == 0
            reimp.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            store.last_candles(KEY, 1500)
            q_cold.append((time.perf_counter() - t0) * 1000)
            for _ in range(30):
                t0 = time.perf_counter()
                last = store.last_candles(KEY, 1500)
                q_ms.append((time.perf_counter() - t0) * 1000)
            assert len(last) == 1500 and last["ts"].iat[-1] == big["ts"].iat[-1]
            store.close()

    # cache: provider ingest of single closed candles, then reads
    prov = DataProvider(None, "1m", ["1m", "5m", "1h"], cache_bars=1500)
    prov.subscribe(lambda ev: None)
    ts = big["ts"].to_numpy()
    vals = big[list(CANDLE_COLUMNS[1:])].to_numpy()
    frames = [pd.DataFrame({"ts": ts[j:j + 1], "open": vals[j:j + 1, 0], "high": vals[j:j + 1, 1],
                            "low": vals[j:j + 1, 2], "close": vals[j:j + 1, 3], "volume": vals[j:j + 1, 4]})
              for j in range(3000)]
    app = []
    for f in frames:
        t0 = time.perf_counter()
        prov.ingest(KEY, f)
        app.append((time.perf_counter() - t0) * 1e6)
    ring = CandleRing(1500)
    ring_app = []
    for j in range(3000):
        t0 = time.perf_counter()
        ring.append(int(ts[j]), *vals[j])
        ring_app.append((time.perf_counter() - t0) * 1e6)
    reads, snaps = [], []
    for _ in range(2000):
        t0 = time.perf_counter()
        a = prov.arrays("BTC/USDT", "1m", 1500)
        reads.append((time.perf_counter() - t0) * 1000)
    for _ in range(200):
        t0 = time.perf_counter()
        prov.snapshot("BTC/USDT", "1m", 1500)
        snaps.append((time.perf_counter() - t0) * 1000)
    assert len(a["ts"]) == 1500 and np.array_equal(a["ts"], ts[1500:3000])

    print(json.dumps({
        "rows": args.rows,
        "repeats": args.repeats,
        "import_1m_rows_s": round(med(imp), 3),
        "validate_1m_rows_s": round(med(val), 3),
        "upsert_1m_rows_s": round(med(ups), 3),
        "reimport_1m_rows_s": round(med(reimp), 3),
        "last1500_query_ms": round(med(q_ms), 3),
        "last1500_query_cold_ms": round(med(q_cold), 3),
        "cache_append_us": round(med(app), 1),
        "ring_append_us": round(med(ring_app), 2),
        "cache_read_ms": round(med(reads), 4),
        "snapshot_ms": round(med(snaps), 3),
    }))


if __name__ == "__main__":
    main()
