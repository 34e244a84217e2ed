"""Per-candle decision-path latency of the features experts + gate, and training throughput.

Latency: for each of ``--candles`` consecutive real BTC/USDT 1m bars (../shared/data), from a warm
cache (provider-like frames: the last ``cache_bars`` closed bars of every timeframe, prepared outside
the timer as the DataProvider keeps them): FeatureBuilder.build_one + CNN/Transformer/DQN predict()
+ gate fuse through GateRunner with the robust layer (base rate, OOD scores, online recalibration;
core/fusion.py). Prints ONE JSON object: p50_ms / p99_ms of that total, per-stage medians, and training
throughput (samples/s) per expert with the slowest as the headline. torch threads = 1; the experts run
on ``--device`` (default cpu, the figures in the README; cuda for bench/gpu_check.sh), the gate is numpy.

With live training (skip: ``--no-training``): p99_ms_training_one / p99_ms_training_all are the same
decision path's p99 while one (cnn) / all three trainer processes train, measured by
bench/bench_training.py in its own process (so its trainers never share this loop), plus the
samples/s of each trainer and the p99 ratio against that run's no-trainer baseline (target <= 2).
That phase always runs on the CPU, whatever ``--device`` says.

    python bench/bench_inference.py [--candles 5000] [--threads 1] [--device cpu] [--training-cycles 6]
                                    [--no-training]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.config import load_config, load_models  # noqa: E402
from core.features import FeatureBuilder, resample_candles  # noqa: E402
from core.labels import dead_zone, forward_returns, make_labels  # noqa: E402
from core.orchestrator import GateRunner  # noqa: E402
from core.paths import shared_data_dir  # noqa: E402
from core.types import CANDLE_COLUMNS, timeframe_ms  # noqa: E402
from NN.devices import pick_device  # noqa: E402
from NN.experts.registry import build_expert  # noqa: E402
from NN.moe import MoEGate  # noqa: E402
from NN.ood import OODStats  # noqa: E402

EXPERTS = ("cnn", "transformer", "dqn")


def load_btc() -> pd.DataFrame:
    df = pd.read_csv(shared_data_dir() / "binanceus" / "BTC_USDT-1m.csv")
    t = pd.to_datetime(df.pop("timestamp"), utc=True)
    df["ts"] = ((t - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(milliseconds=1)).astype("int64")
    return df[list(CANDLE_COLUMNS)]


def frames_at(builder: FeatureBuilder, base: pd.DataFrame, higher: dict[str, pd.DataFrame], i: int,
              bars: int) -> dict[str, pd.DataFrame]:
    """What the provider caches at the close of base bar i: the last ``bars`` CLOSED bars per tf."""
    now = int(base.ts.iat[i]) + builder.base_ms
    out = {builder.base_timeframe: base.iloc[max(0, i + 1 - bars): i + 1]}
    for tf, df in higher.items():
        end = int(np.searchsorted(df.ts.to_numpy() + timeframe_ms(tf), now, side="right"))
        out[tf] = df.iloc[max(0, end - bars): end]
    return out


def pct(x: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(x), q))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--candles", type=int, default=5000)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--train-steps", type=int, default=20)
    ap.add_argument("--training-cycles", type=int, default=6, help="bench_training.py blocks per phase")
    ap.add_argument("--no-training", action="store_true", help="skip the live-training latency phases")
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda", "mps", "auto"),
                    help="where the experts run (default cpu, whatever the machine has)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = pick_device(args.device)  # fails at once, with the reason, when cuda/mps is missing
    app, models = load_config(), load_models()
    for n in EXPERTS:
        models.experts[n] = models.experts[n].model_copy(update={"device": device.type})
    builder = FeatureBuilder(models.features, app.data.base_timeframe)
    btc = load_btc()
    cache = app.data.cache_bars
    start = max(cache, builder.min_history) + 2000  # history for the cache and the gate's fit samples
    if start + args.candles > len(btc):
        raise SystemExit(f"need {start + args.candles} bars, the file has {len(btc)}")
    hist = btc.iloc[: start + args.candles].reset_index(drop=True)
    higher = {tf: resample_candles(hist, tf) for tf in builder.timeframes[1:]}

    experts = {n: build_expert(n, models.experts[n], builder.spec) for n in EXPERTS}
    # a fitted gate (the trained path): fit on expert outputs over the 2000 bars before the timed span
    fit = builder.build_many(hist.iloc[:start], rows=slice(start - 2000, start))
    y = make_labels(fit.close, experts["cnn"].horizon, dead_zone(app.execution, models.labels))
    ok = np.flatnonzero(y >= 0)
    fit = fit.take(ok)
    gate = MoEGate(list(EXPERTS), models.moe, len(builder.spec.regime_features))
    gate.fit(np.stack([experts[n].predict_many(fit).probs for n in EXPERTS], axis=1), fit.regime, y[ok])
    # robust fusion on (issue 17): OOD statistics in every expert (its score is computed in predict),
    # the gate run through GateRunner with the base rate, fixed-share weights and online recalibration
    for n in EXPERTS:
        experts[n].ood = OODStats.fit(fit.flat)
    runner = GateRunner(gate, experts["cnn"].horizon, dead_zone(app.execution, models.labels), models.moe.robust)

    stages: dict[str, list[float]] = {k: [] for k in ("features", *EXPERTS, "gate", "total")}
    enabled = np.ones(len(EXPERTS), dtype=bool)
    for i in range(start - 20, start + args.candles):  # the first 20 warm up (not recorded)
        frames = frames_at(builder, hist, higher, i, cache)
        t0 = time.perf_counter()
        batch = builder.build_one(frames, symbol="BTC/USDT")
        t1 = time.perf_counter()
        probs = np.empty((len(EXPERTS), 3))
        ood = np.empty(len(EXPERTS))
        lat = {}
        for j, n in enumerate(EXPERTS):
            a = time.perf_counter()
            o = experts[n].predict(batch)
            probs[j], ood[j] = o.probs, o.extras.get("ood", np.nan)
            lat[n] = (time.perf_counter() - a) * 1e3
        a = time.perf_counter()
        runner.step(float(batch.close[-1]), probs, batch.regime[-1].astype(np.float64), enabled, ood)
        t2 = time.perf_counter()
        if i >= start:
            stages["features"].append((t1 - t0) * 1e3)
            for n in EXPERTS:
                stages[n].append(lat[n])
            stages["gate"].append((t2 - a) * 1e3)
            stages["total"].append((t2 - t0) * 1e3)

    # training throughput on real samples
    tb = builder.build_many(hist.iloc[: start], rows=slice(start - 1500, start))
    h = experts["cnn"].horizon
    yl = make_labels(tb.close, h, dead_zone(app.execution, models.labels))
    fr = np.nan_to_num(forward_returns(tb.close, h))
    yl = np.where(yl < 0, 1, yl)  # the last h bars: label unknown; irrelevant for throughput
    train_sps: dict[str, float] = {}
    for n in EXPERTS:
        ex = build_expert(n, models.experts[n], builder.spec)
        size = ex.params.chunk if n == "dqn" else ex.params.batch_size
        rng = np.random.default_rng(0)
        times = []
        for s in range(args.train_steps if n != "dqn" else max(3, args.train_steps // 5)):
            if n == "dqn":  # a contiguous episode chunk: env steps + replay updates
                a0 = int(rng.integers(0, len(tb) - size))
                idx = np.arange(a0, a0 + size)
            else:
                idx = rng.choice(len(tb), size=size, replace=False)
            b = tb.take(idx)
            a = time.perf_counter()
            ex.train_step(b, yl[idx], fr[idx])
            if s > 0 or n == "dqn":  # the first supervised step pays one-off allocations
                times.append((time.perf_counter() - a) / size)
        train_sps[n] = round(1.0 / float(np.median(times)), 1)

    out = {
        "bench": "inference",
        "candles": args.candles,
        "threads": args.threads,
        "device": device.type,
        "p50_ms": round(pct(stages["total"], 50), 3),
        "p99_ms": round(pct(stages["total"], 99), 3),
        "target_p99_ms": 10.0,
        "robust_fusion": bool(models.moe.robust.enabled),  # base rate + OOD scores + recalibration on
        "stage_p50_ms": {k: round(pct(v, 50), 3) for k, v in stages.items() if k != "total"},
        "stage_p99_ms": {k: round(pct(v, 99), 3) for k, v in stages.items() if k != "total"},
        "train_samples_per_s": train_sps,
        "train_samples_per_s_headline": min(train_sps.values()),
        "train_note": "cnn/transformer: samples per s in mini-batches of params.batch_size; dqn: bars per s "
                      "of episode chunks (env steps + replay updates, after warm-up)",
        "cpu_count": os.cpu_count(),
        "note": "medians/percentiles on a shared 2-core machine (other jobs running): treat as upper bounds",
    }
    if device.type == "cuda":
        out["gpu"] = torch.cuda.get_device_name(device)
    if not args.no_training:
        out.update(training_latency(args.training_cycles))
    print(json.dumps(out))
    return 0


TRAINING_KEYS = ("p99_ms_training_none", "p99_ms_training_one", "p99_ms_training_all", "p50_ms_training_none",
                 "p50_ms_training_one", "p50_ms_training_all", "p99_ratio_one_vs_none", "p99_ratio_all_vs_none",
                 "target_p99_ratio", "block_p99_ms_median", "trainer_samples_per_s", "trainer_steps",
                 "spawn_to_first_step_s", "trainer_sched_idle", "trainer_cpus", "freeze_while_deciding",
                 "block", "spaced")


def training_latency(cycles: int) -> dict:
    """The decision p99 with 0 / 1 / all trainers running, from bench/bench_training.py (one JSON
    line on its stdout); its errors surface as this benchmark's error."""
    cmd = [sys.executable, str(Path(__file__).with_name("bench_training.py")), "--cycles", str(cycles)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"bench_training.py failed ({r.returncode}):\n{r.stderr[-2000:]}")
    d = json.loads(r.stdout.strip().splitlines()[-1])
    out = {k: d[k] for k in TRAINING_KEYS if k in d}
    out["training_cycles"] = cycles
    out["training_note"] = ("p*_ms_training_*: bench_training.py's decision loop (build_one + 3 experts + an "
                            "online-Hedge gate, feed+poll of the TrainingManager timed apart) in a separate "
                            "process, phases interleaved in blocks; compare with p99_ms_training_none there, "
                            "not with p99_ms here; top level: decisions back to back, spaced: with a pause "
                            "between decisions")
    return out


if __name__ == "__main__":
    sys.exit(main())
