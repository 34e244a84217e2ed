"""Order-book benchmark on the recorded Binance BTC books (spot + USD-M + COIN-M, 11 minutes): ONE JSON object.

- updates_per_s: depth diff messages (raw JSON text) parsed, sequence-checked, applied and consolidated
  every recorded second, per second of wall time, over the whole capture replayed as fast as possible
  (messages read into memory first; trades and bookTicker frames are parsed too but not counted).
  Median of --repeats runs, one thread; updates_per_cpu_s divides by this process's CPU time instead
  (the fairer figure when other work shares the cores; *_cpu_ms likewise).
- bucket_snapshot_ms: Consolidator.snapshot of the three live books (±20 buckets of $10), median.
- heatmap_update_p95_ms / _median_ms: server time of the page's 1 s heatmap update (copying the engine's
  history and trades as the callback does, then a Patch appending one column, the new trades and the mid) with the whole recorded history held (651 s: the capture is shorter
  than the 15 minutes the target names; the Patch only touches the newest second, so history length
  does not enter it). heatmap_full_ms: the full figure (first render) of that history.
- heatmap_update_bytes: JSON size of one such Patch (median).

Usage: python bench/bench_orderbook.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.config import load_config  # noqa: E402
from core.data.book_engine import engine_for_capture  # noqa: E402
from core.data.book_replay import read_capture  # noqa: E402
from core.paths import shared_data_dir  # noqa: E402
from web.pages.orderbook import heatmap_update  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    raw = shared_data_dir() / "orderbook" / "binance-2024-08-08" / "raw"
    ob = load_config().orderbook
    msgs = list(read_capture(raw))
    n_depth = sum(1 for m in msgs if m.kind == "ws" and "depthUpdate" in m.payload)
    rates, cpu_rates = [], []
    eng = None
    for _ in range(args.repeats):
        eng = engine_for_capture(raw, ob)
        t0, c0 = time.perf_counter(), time.process_time()
        for m in msgs:
            eng.on_message(m)
        rates.append(n_depth / (time.perf_counter() - t0))
        cpu_rates.append(n_depth / (time.process_time() - c0))
    assert eng is not None
    assert all(d["resync_count"] == 0 for d in eng.status())
    # snapshot cost on the final books of the three venues
    books = eng.venue_books()
    cons = eng.consolidator
    ts = eng.history[-1].ts_ms
    snap_ms, snap_cpu = [], []
    for i in range(300):
        t0, c0 = time.perf_counter(), time.process_time()
        cons.snapshot(ts + 1000 * (i + 1), books)
        snap_ms.append((time.perf_counter() - t0) * 1e3)
        snap_cpu.append((time.process_time() - c0) * 1e3)
    # heatmap: full render of the history, then one Patch per further second
    snaps = list(eng.history)
    trades = list(eng.trades)
    venues = sorted(v.venue for v in eng.venues)
    k = 200
    t0 = time.perf_counter()
    _, state = heatmap_update(snaps[:-k], trades, venues, None)
    full_ms = (time.perf_counter() - t0) * 1e3
    upd_ms, upd_bytes = [], []
    for j in range(k, 0, -1):
        t0 = time.perf_counter()
        # as the page callback does: copy the engine's history and trades, then build the Patch
        hist, tr_now = list(eng.history)[: len(snaps) - j + 1], list(eng.trades)
        p, state = heatmap_update(hist, tr_now, venues, state)
        body = json.dumps(p.to_plotly_json())  # the server sends it serialised
        upd_ms.append((time.perf_counter() - t0) * 1e3)
        upd_bytes.append(len(body))
    print(json.dumps({
        "updates_per_s": round(statistics.median(rates)),
        "updates_per_cpu_s": round(statistics.median(cpu_rates)),
        "depth_messages": n_depth,
        "all_messages": len(msgs),
        "bucket_snapshot_ms": round(statistics.median(snap_ms), 3),
        "bucket_snapshot_cpu_ms": round(statistics.median(snap_cpu), 3),
        "heatmap_update_p95_ms": round(float(np.percentile(upd_ms, 95)), 2),
        "heatmap_update_median_ms": round(statistics.median(upd_ms), 2),
        "heatmap_full_ms": round(full_ms, 1),
        "heatmap_history_s": len(snaps) - k,
        "heatmap_update_bytes": int(statistics.median(upd_bytes)),
        "load_avg_1m": round(os.getloadavg()[0], 2),
        "repeats": args.repeats,
    }))


if __name__ == "__main__":
    main()
