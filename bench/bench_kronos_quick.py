"""The quick Train-now Kronos on the bundled sample: trained exactly as Train now's quick preset trains it
(NN/training/background.PRESETS["quick"]: the nano-quick Kronos preset with its own epochs) on the
sample's first two days (2,880 real BTC/USDT 1m candles), then scored on the third, unseen day by
bench_train_now.kronos_last_day: CRPS of its 5-bar return forecasts (32 paths per origin, 120 origins)
against the climatology of the first two days' 5-bar returns, and the direction hit rate of its median
against always calling the climatology's more frequent direction. Prints ONE JSON object.

    python bench/bench_kronos_quick.py [--origins 120] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import torch  # noqa: E402
from bench_train_now import KEY, kronos_last_day  # noqa: E402

from core.data.files import load_file  # noqa: E402
from core.data.store import MarketStore  # noqa: E402
from NN.experts.kronos.train import train_kronos  # noqa: E402
from NN.training.background import PRESETS  # noqa: E402

TRAIN_BARS = 2880


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--origins", type=int, default=120)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (Train now's child uses cores - 1)")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(args.threads)
    full = load_file(ROOT / "data" / "sample" / "BTC_USDT-1m.csv")
    quick = PRESETS["quick"]
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        store = MarketStore(Path(tmp) / "k.duckdb")
        try:
            store.upsert_candles(KEY, full.iloc[:TRAIN_BARS])
            t0 = time.perf_counter()
            path = train_kronos(store, KEY, start_ms=None, end_ms=None, models_dir=Path(tmp) / "models",
                                runs_dir=Path(tmp) / "runs", preset=quick.kronos, epochs=None, progress=False,
                                device="cpu")
            train_s = time.perf_counter() - t0
        finally:
            store.close()
        t0 = time.perf_counter()
        quality = kronos_last_day(path, full, TRAIN_BARS, origins=args.origins)
        eval_s = time.perf_counter() - t0
        meta = json.loads((path / "meta.json").read_text())
    print(json.dumps({"kronos_last_day": quality, "train_s": round(train_s, 1), "eval_s": round(eval_s, 1),
                      "kronos_preset": quick.kronos, "anchor": meta.get("anchor"),
                      "threads": args.threads, "cpus": os.cpu_count(), "load_avg_1m_at_start": round(load, 2)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
