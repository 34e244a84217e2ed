"""Live training: trainer throughput and decision latency with 0, 1 and all trainers running.

Decisions are measured exactly like bench/bench_inference.py does (FeatureBuilder.build_one on
provider-like frames + CNN/Transformer/DQN predict() + gate fuse) on consecutive real BTC/USDT 1m bars
(../shared/data), with the TrainingManager's feed()+poll() done after each decision (as the engine
does, timed separately as ``manager_overhead``). Trainers are real spawned processes (torch threads
1 each) kept busy: ``--steps`` replay mini-batches per round every ``--cadence`` s on top of the fresh
matured samples. Prints ONE JSON object (medians / percentiles).

    python bench/bench_training.py [--candles 400] [--steps 20] [--cadence 0.2]
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
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.config import load_config, load_models  # noqa: E402
from core.data.store import MarketStore  # noqa: E402
from core.features import FeatureBuilder, resample_candles  # noqa: E402
from core.paths import shared_data_dir  # noqa: E402
from core.types import CANDLE_COLUMNS, SeriesKey, timeframe_ms  # noqa: E402
from NN.experts.registry import build_expert  # noqa: E402
from NN.moe import MoEGate  # noqa: E402
from NN.training.datasets import default_dead_zone  # noqa: E402
from NN.training.online import TrainingManager  # noqa: E402

EXPERTS = ("cnn", "transformer", "dqn")
KEY = SeriesKey("binanceus", "BTC/USDT", "1m")


def load_btc() -> pd.DataFrame:
    df = pd.read_csv(shared_data_dir() / "binanceus" / "BTC_USDT-1m.csv")
    t = pd.to_datetime(df.pop("timestamp"), utc=True)
    df["ts"] = ((t - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(milliseconds=1)).astype("int64")
    return df[list(CANDLE_COLUMNS)]


def frames_at(base: pd.DataFrame, higher: dict[str, pd.DataFrame], i: int, bars: int, base_tf: str
              ) -> dict[str, pd.DataFrame]:
    """The provider's cache at the close of base bar i: the last ``bars`` CLOSED bars per timeframe."""
    now = int(base.ts.iat[i]) + timeframe_ms(base_tf)
    out = {base_tf: base.iloc[max(0, i + 1 - bars): i + 1]}
    for tf, df in higher.items():
        end = int(np.searchsorted(df.ts.to_numpy() + timeframe_ms(tf), now, side="right"))
        out[tf] = df.iloc[max(0, end - bars): end]
    return out


def q(x: list[float], p: float) -> float:
    return round(float(np.percentile(np.asarray(x), p)), 3) if x else float("nan")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--candles", type=int, default=400, help="timed decisions per phase")
    ap.add_argument("--steps", type=int, default=20, help="replay mini-batches per trainer round")
    ap.add_argument("--cadence", type=float, default=0.2, help="seconds between trainer rounds")
    ap.add_argument("--start-timeout", type=float, default=180.0)
    args = ap.parse_args()
    torch.set_num_threads(1)
    app, models = load_config(), load_models()
    for n in EXPERTS:
        online = models.experts[n].online.model_copy(update={"cadence_s": args.cadence, "replay_bars": 2000,
                                                             "val_bars": 120})
        models.experts[n] = models.experts[n].model_copy(update={"device": "cpu", "online": online})
    base_tf = app.data.base_timeframe
    builder = FeatureBuilder(models.features, base_tf)
    cache = app.data.cache_bars
    btc = load_btc()
    start = max(cache, builder.min_history) + 2500  # stored history: replay + validation seed
    end = start + 3 * (args.candles + 20)
    hist = btc.iloc[:end].reset_index(drop=True)
    higher = {tf: resample_candles(hist, tf) for tf in builder.timeframes[1:]}
    dz = default_dead_zone(app, models.labels)

    store = MarketStore(":memory:")
    store.upsert_candles(KEY, hist.iloc[:start])
    torch.manual_seed(0)
    experts = {n: build_expert(n, models.experts[n], builder.spec) for n in EXPERTS}
    gate = MoEGate(list(EXPERTS), models.moe, len(builder.spec.regime_features))
    enabled = np.ones(len(EXPERTS), dtype=bool)
    tmp = Path(tempfile.mkdtemp(prefix="bench_training_"))
    mgr = TrainingManager(store, models, builder, experts, key=KEY, dead_zone=dz, models_dir=tmp / "models",
                          runs_dir=tmp / "runs", min_steps_per_round=args.steps)
    cursor = start
    sps: dict[str, list[float]] = {n: [] for n in EXPERTS}

    def decide_span(n_timed: int) -> tuple[list[float], list[float]]:
        nonlocal cursor
        lat, over = [], []
        for k in range(n_timed + 20):  # the first 20 warm up (not recorded)
            frames = frames_at(hist, higher, cursor, cache, base_tf)
            t0 = time.perf_counter()
            batch = builder.build_one(frames, symbol=KEY.symbol)
            probs = np.stack([experts[n].predict(batch).probs for n in EXPERTS])[None]
            gate.fuse(probs, batch.regime, enabled)
            t1 = time.perf_counter()
            mgr.feed(batch, position=0.0)
            mgr.poll(apply=True)
            t2 = time.perf_counter()
            if k >= 20:
                lat.append((t1 - t0) * 1e3)
                over.append((t2 - t1) * 1e3)
            for n, st in mgr.status().items():
                if st.running and st.samples_per_s > 0:
                    sps[n].append(st.samples_per_s)
            cursor += 1
        return lat, over

    def wait_training(names: list[str]) -> float:
        t0 = time.monotonic()
        while time.monotonic() - t0 < args.start_timeout:
            mgr.poll(apply=True)
            if all(mgr.status()[n].steps > 0 for n in names):
                return time.monotonic() - t0
            time.sleep(0.2)
        raise SystemExit(f"trainers {names} did not train within {args.start_timeout} s: {mgr.status()}")

    out: dict = {"bench": "training", "candles_per_phase": args.candles, "device": "cpu", "threads": 1,
                 "steps_per_round": args.steps, "cadence_s": args.cadence}
    try:
        lat0, over0 = decide_span(args.candles)
        mgr.start("cnn")
        out["spawn_to_first_step_s"] = round(wait_training(["cnn"]), 1)
        for v in sps.values():
            v.clear()
        lat1, over1 = decide_span(args.candles)
        for n in EXPERTS[1:]:
            mgr.start(n)
        wait_training(list(EXPERTS))
        for v in sps.values():
            v.clear()
        lat_all, over_all = decide_span(args.candles)
        status = mgr.status()
    finally:
        mgr.shutdown()
    out.update({
        "p50_ms_training_none": q(lat0, 50), "p99_ms_training_none": q(lat0, 99),
        "p50_ms_training_one": q(lat1, 50), "p99_ms_training_one": q(lat1, 99),
        "p50_ms_training_all": q(lat_all, 50), "p99_ms_training_all": q(lat_all, 99),
        "p99_ratio_all_vs_none": round(q(lat_all, 99) / q(lat0, 99), 2),
        "target_p99_ratio": 2.0,
        "manager_overhead_p50_ms": {"none": q(over0, 50), "one": q(over1, 50), "all": q(over_all, 50)},
        "manager_overhead_p99_ms": {"none": q(over0, 99), "one": q(over1, 99), "all": q(over_all, 99)},
        "trainer_samples_per_s": {n: round(float(np.median(v)), 1) if v else None for n, v in sps.items()},
        "trainer_steps": {n: st.steps for n, st in status.items()},
        "promotions": {n: st.promotions for n, st in status.items()},
        "cpu_count": os.cpu_count(),
        "note": "decision = build_one + 3 experts predict + gate fuse; trainers 1 torch thread each; "
                "shared 2-core machine: 3 trainers + the decision loop oversubscribe it",
    })
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
