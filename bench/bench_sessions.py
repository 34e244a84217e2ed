"""What sessions cost (stocks) against the 24x7 path (crypto), on the shared UPRO minutes (59,121 raw
rows, 233 days) and AMZN minutes. Prints ONE JSON object; medians of BENCH_REPEATS (5) runs.

- clean_ms: validation with the NYSE calendar + RTH filter of the whole UPRO file (import path)
- resample_1h_ms / resample_1h_24x7_ms: 56k RTH minutes -> hourly bars within sessions / on the UTC grid
- bar_index_1m_ms_per_million: session bar counting (gaps, horizons, replay pacing)
- ingest_ms_per_bar (+ _24x7): DataProvider.ingest of one closed minute (validate, filter, 5m/1h/1d buckets)
- build_one_ms (+ _24x7): FeatureBuilder.build_one at the last of 1,500 cached minutes
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from core.config import load_models  # noqa: E402
from core.data.clean import clean_candles  # noqa: E402
from core.data.files import load_file  # noqa: E402
from core.data.provider import DataProvider  # noqa: E402
from core.data.resample import resample  # noqa: E402
from core.features import FeatureBuilder  # noqa: E402
from core.market import SessionCalendar  # noqa: E402
from core.paths import shared_data_dir  # noqa: E402
from core.types import SeriesKey  # noqa: E402

REPEATS = int(os.environ.get("BENCH_REPEATS", "5"))


def med(fn, repeats: int = REPEATS) -> float:
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return statistics.median(out)


def main() -> None:
    stocks = shared_data_dir() / "stocks"
    rth = SessionCalendar("XNYS", "rth")
    rth.bars_per_year("1m")  # builds the session table once (~0.2 s), as any first use does
    upro = load_file(stocks / "UPRO-1m-2020-01-02_2020-11-30.csv")
    clean = clean_candles(upro, "1m", rth).candles
    out: dict[str, float | int] = {"rows": len(upro), "rth_rows": len(clean)}
    out["clean_ms"] = 1000 * med(lambda: clean_candles(upro, "1m", rth))
    out["resample_1h_ms"] = 1000 * med(lambda: resample(clean, "1m", "1h", calendar=rth))
    out["resample_1h_24x7_ms"] = 1000 * med(lambda: resample(clean, "1m", "1h"))
    big = np.resize(clean["ts"].to_numpy(np.int64), 1_000_000)
    out["bar_index_1m_ms_per_million"] = 1e3 * med(lambda: rth.bar_index(big, "1m"))
    amzn = clean_candles(load_file(stocks / "AMZN-1m-alpaca-2025-01-13_2025-01-17.csv"), "1m", rth).candles
    feats = FeatureBuilder(load_models().features, "1m")
    for tag, cal in (("", rth), ("_24x7", None)):
        prov = DataProvider(None, "1m", ["1m", "5m", "1h", "1d"], cache_bars=1500, calendar=cal)
        key = SeriesKey("alpaca", "AMZN", "1m")
        rows = [amzn.iloc[i:i + 1].reset_index(drop=True) for i in range(len(amzn))]
        t = time.perf_counter()
        for r in rows:
            prov.ingest(key, r, now_ms_=int(r["ts"].iat[0]) + 60_000)
        out[f"ingest_ms_per_bar{tag}"] = 1000 * (time.perf_counter() - t) / len(rows)
        feats.calendar = cal
        frames = prov.frames("AMZN")
        feats.build_one(frames)  # compile / warm
        out[f"build_one_ms{tag}"] = 1000 * med(lambda f=frames: feats.build_one(f), 50)
    print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in out.items()}))


if __name__ == "__main__":
    main()
