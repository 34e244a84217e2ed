"""Outcome-tracking benchmark: prints ONE JSON object of medians.

The engine matures stored outcomes every OUTCOMES_EVERY (50) bars on its own thread, so the cost of
``OutcomeTracker.update()`` with a long audit trail is time the next decision may wait. The store holds
the real BTC/USDT 1m file of ../shared/data; every bar has a decision with the outputs of the real
(untrained, seeded) CNN, Transformer and DQN written through core/audit.py. The tracker catches up once
(``catch_up_s``: every stored decision matures at once), then each step stores 50 new candles and their
decisions and times ``update()`` (``update_50_bars_ms``, median over ``--steps`` steps at the end of
the history: the tables are at their largest) and the same when nothing is due (``idle_update_ms``).
The same is measured on the first quarter of the history (``*_quarter``): a steady-state update should
not grow with the audit trail (``growth`` = full / quarter).

Usage: python bench/bench_outcomes.py [--bars 30240] [--steps 20]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.audit import AuditWriter  # noqa: E402
from core.config import load_models  # noqa: E402
from core.data.files import load_file  # noqa: E402
from core.data.store import MarketStore  # noqa: E402
from core.features import FeatureBuilder  # noqa: E402
from core.orchestrator import decide  # noqa: E402
from core.outcomes import OutcomeTracker  # noqa: E402
from core.paths import shared_data_dir  # noqa: E402
from core.types import Decision, ExpertOutput, SeriesKey, Thresholds  # noqa: E402
from NN.experts.registry import build_expert  # noqa: E402

KEY = SeriesKey("bench", "BTC/USDT", "1m")
EXPERTS = ("cnn", "transformer", "dqn")
STEP = 50  # bars between two updates (core/engine/training.OUTCOMES_EVERY)
THRESH = Thresholds(buy=0.4, sell=0.4)


def decisions(candles, models) -> list[Decision]:
    builder = FeatureBuilder(models.features, "1m")
    batch = builder.build_many(candles, symbol=KEY.symbol, rows=slice(builder.min_history - 1, None))
    probs, horizon = {}, {}
    for name in EXPERTS:
        torch.manual_seed(0)
        cfg = models.experts[name].model_copy(update={"device": "cpu"})
        probs[name] = build_expert(name, cfg, batch.spec).predict_many(batch).probs
        horizon[name] = int(cfg.horizon)
    out = []
    w = {n: 1.0 / len(EXPERTS) for n in EXPERTS}
    for j, ts in enumerate(batch.ts.tolist()):
        outs = tuple(ExpertOutput(n, "v0", KEY.symbol, ts, horizon[n], tuple(map(float, probs[n][j])), 0.0, 0.5,
                                  0.1) for n in EXPERTS)
        fused = np.mean([probs[n][j] for n in EXPERTS], axis=0)
        out.append(Decision(id=f"b:{ts}", ts=ts, symbol=KEY.symbol, action=decide(fused, THRESH),
                            probs=tuple(map(float, fused)), expected_return=0.0, weights=w, thresholds=THRESH,
                            target_position=0.0, reason="", outputs=outs))
    return out


def measure(candles, decs: list[Decision], steps: int) -> dict[str, float]:
    by_ts = {d.ts: d for d in decs}
    split = len(candles) - steps * STEP
    store = MarketStore(":memory:")
    store.upsert_candles(KEY, candles.iloc[:split], validate=False)
    audit = AuditWriter(store, "bench", flush_every=10**9)
    last = int(candles["ts"].iloc[split - 1])
    for d in decs:
        if d.ts <= last:
            audit.add(d)
    audit.flush()
    tracker = OutcomeTracker(store, KEY, 0.002)
    t0 = time.perf_counter()
    caught_up = tracker.update()
    catch_up_s = time.perf_counter() - t0
    upd, idle, written = [], [], []
    for k in range(steps):
        part = candles.iloc[split + k * STEP : split + (k + 1) * STEP]
        store.upsert_candles(KEY, part, validate=False)
        for ts in part["ts"].tolist():
            if ts in by_ts:
                audit.add(by_ts[ts])
        audit.flush()
        t0 = time.perf_counter()
        written.append(tracker.update())
        upd.append((time.perf_counter() - t0) * 1e3)
        t0 = time.perf_counter()
        tracker.update()
        idle.append((time.perf_counter() - t0) * 1e3)
    n_pred = store.query_one("SELECT count(*) FROM predictions")[0]
    n_out = store.query_one("SELECT count(*) FROM outcomes")[0]
    assert tracker.full_scans == 1, "steady-state updates must not rescan the audit trail"
    store.close()
    return {"bars": len(candles), "predictions": int(n_pred), "outcomes": int(n_out),
            "catch_up_outcomes": int(caught_up), "catch_up_s": round(catch_up_s, 3),
            "update_50_bars_ms": round(statistics.median(upd), 2),
            "update_50_bars_p90_ms": round(float(np.percentile(upd, 90)), 2),
            "outcomes_per_update": int(statistics.median(written)), "idle_update_ms": round(statistics.median(idle), 2)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bars", type=int, default=30_240)
    ap.add_argument("--steps", type=int, default=20)
    args = ap.parse_args()
    torch.set_num_threads(1)
    candles = load_file(shared_data_dir() / "binanceus" / "BTC_USDT-1m.csv").iloc[: args.bars]
    candles = candles.reset_index(drop=True)
    decs = decisions(candles, load_models())
    full = measure(candles, decs, args.steps)
    q = len(candles) // 4
    quarter = measure(candles.iloc[:q], [d for d in decs if d.ts <= int(candles["ts"].iloc[q - 1])], args.steps)
    out = {"bench": "outcomes", **full, **{f"{k}_quarter": v for k, v in quarter.items() if k in (
        "bars", "predictions", "update_50_bars_ms", "idle_update_ms")}}
    out["growth"] = round(full["update_50_bars_ms"] / quarter["update_50_bars_ms"], 2)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
