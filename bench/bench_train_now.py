"""Train now: wall time of the quick preset, end to end (the background child process: features,
CNN + Transformer + DQN + gate, checkpoints adopted into the engine's registry and loaded into the
running experts). Prints ONE JSON object.

- quick_train_s: median over ``--runs`` runs on the bundled sample's first two days (2,880 real
  BTC/USDT 1m candles: what a fresh clone trains on);
- quick_train_20k_s: one run on the newest 20,000 candles of ../shared/data's BTC/USDT 1m (the most the
  quick preset takes from a larger store).

    python bench/bench_train_now.py [--runs 3]
Target: quick_train_s <= 180 on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from compose import engine_parts  # noqa: E402
from core.config import load_config, load_models  # noqa: E402
from core.data.files import load_file  # noqa: E402
from core.data.store import MarketStore  # noqa: E402
from core.paths import shared_data_dir  # noqa: E402
from core.types import SeriesKey  # noqa: E402

KEY = SeriesKey("binanceus", "BTC/USDT", "1m")


def one_run(candles, tmp: Path) -> tuple[float, list[str]]:
    cfg = load_config()
    cfg = cfg.model_copy(update={"training": cfg.training.model_copy(update={"models_dir": str(tmp / "models")})})
    store = MarketStore(tmp / "bench.duckdb")
    try:
        parts = engine_parts(cfg, load_models(), store, "1m", mode="replay", training=False)
        job = parts.offline
        assert job is not None
        t0 = time.perf_counter()
        job.start("quick", KEY, candles)
        while job.running:
            time.sleep(0.2)
        adopted = job.poll()
        dt = time.perf_counter() - t0
        if job.status().get("state") != "done":
            raise SystemExit(f"train now failed: {job.status().get('error')}")
        return dt, adopted
    finally:
        store.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    import logging

    logging.basicConfig(level=logging.ERROR)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sample = load_file(ROOT / "data" / "sample" / "BTC_USDT-1m.csv").iloc[:2880]
    big = load_file(shared_data_dir() / "binanceus" / "BTC_USDT-1m.csv").iloc[-20_000:]
    times, adopted = [], []
    for _ in range(args.runs):
        with tempfile.TemporaryDirectory() as tmp:
            dt, adopted = one_run(sample, Path(tmp))
            times.append(dt)
    with tempfile.TemporaryDirectory() as tmp:
        big_s, _ = one_run(big, Path(tmp))
    print(json.dumps({"quick_train_s": round(float(np.median(times)), 1), "runs_s": [round(t, 1) for t in times],
                      "bars": len(sample), "adopted": adopted, "quick_train_20k_s": round(big_s, 1),
                      "cpus": os.cpu_count(), "load_avg_1m": round(os.getloadavg()[0], 2),
                      "targets": {"quick_train_s": 180}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
