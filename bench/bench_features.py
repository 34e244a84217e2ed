"""FeatureBuilder benchmark on real BTC/USDT 1m candles (../shared/data), default models.yml features.

Prints ONE JSON object:
- build_one_p50_ms / build_one_p99_ms: one live sample from 1500-bar frames of every timeframe
  (DataFrames as DataProvider.frames() returns them), over --samples different bars.
- build_one_arrays_p50_ms: the same from DataProvider.arrays()-style dicts of numpy arrays.
- build_many_s: median over --repeats of build_many on all 30,240 bars (+ BTC/USD as reference).
- build_many_per_bar_us, windows_mb (size of the [N, T, L, F] float32 windows).

    .venv/bin/python bench/bench_features.py [--samples 300] [--repeats 3]
Targets: build_one p50 well under 2 ms; build_many in seconds.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from core.config import load_models  # noqa: E402
from core.features import FeatureBuilder, resample_candles  # noqa: E402
from core.paths import shared_data_dir  # noqa: E402
from core.types import CANDLE_COLUMNS, timeframe_ms  # noqa: E402


def load(path: Path) -> pd.DataFrame:
    df = pd.read_csv(path)
    t = pd.to_datetime(df.pop("timestamp"), utc=True)
    df["ts"] = ((t - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(milliseconds=1)).astype("int64")
    return df[list(CANDLE_COLUMNS)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=300)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    btc = load(shared_data_dir() / "binanceus" / "BTC_USDT-1m.csv")
    ref = load(shared_data_dir() / "binanceus" / "BTC_USD-1m.csv")
    fb = FeatureBuilder(load_models().features, "1m")
    fb.build_many(btc.iloc[:500])  # load compiled kernels

    # live frames at many bars, prepared outside the timing
    rng = np.random.default_rng(0)
    at = rng.choice(np.arange(5000, len(btc)), size=args.samples, replace=False)
    higher = {tf: resample_candles(btc, tf) for tf in fb.timeframes[1:]}
    one_ms, arr_ms = [], []
    for i in at:
        now = int(btc.ts.iloc[i]) + fb.base_ms
        frames = {fb.timeframes[0]: btc.iloc[i - 1499 : i + 1].reset_index(drop=True)}
        for tf, h in higher.items():
            frames[tf] = h[h.ts + timeframe_ms(tf) <= now].tail(1500).reset_index(drop=True)
        arrays = {tf: {c: f[c].to_numpy() for c in CANDLE_COLUMNS} for tf, f in frames.items()}
        t0 = time.perf_counter()
        fb.build_one(frames)
        one_ms.append((time.perf_counter() - t0) * 1000)
        t0 = time.perf_counter()
        fb.build_one(arrays)
        arr_ms.append((time.perf_counter() - t0) * 1000)

    many = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        batch = fb.build_many(btc, ref=ref)
        many.append(time.perf_counter() - t0)
        mb = batch.windows.nbytes / 2**20
        del batch
    s = statistics.median(many)
    print(
        json.dumps(
            {
                "build_one_p50_ms": round(statistics.median(one_ms), 3),
                "build_one_p99_ms": round(float(np.percentile(one_ms, 99)), 3),
                "build_one_arrays_p50_ms": round(statistics.median(arr_ms), 3),
                "build_many_s": round(s, 3),
                "build_many_bars": len(btc),
                "build_many_per_bar_us": round(s / len(btc) * 1e6, 2),
                "windows_mb": round(mb, 1),
                "timeframes": list(fb.timeframes),
                "window": fb.window,
                "bar_features": len(fb.spec.bar_features),
            }
        )
    )


if __name__ == "__main__":
    main()
