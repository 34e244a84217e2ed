"""Live training: trainer throughput and decision latency with 0, 1 and all trainers running.

Decisions are measured exactly like bench/bench_inference.py does (FeatureBuilder.build_one on
provider-like frames + CNN/Transformer/DQN predict() + gate fuse) on consecutive real BTC/USDT 1m bars
(../shared/data), inside ``TrainingManager.deciding()`` as the engine does (core/engine/training.py) (running trainers are
frozen for the decision when config training.freeze_while_deciding is on; ``--no-freeze`` to compare;
the two signals count in the latency), with the manager's feed()+poll() done after each decision (timed
separately as ``manager_overhead``). Trainers are real spawned processes (torch threads 1 each) kept
busy: ``--steps`` replay mini-batches per round every ``--cadence`` s on top of the fresh matured
samples, at the priority the config gives them (training.trainer_idle / trainer_nice / reserve_cpus;
``--no-idle``, ``--reserve-cpus N`` to compare).

The machine's own drift (a shared VM: the same loop's p50 moves by 50% between minutes) would swamp
the effect if the phases ran one after the other, so they are interleaved: after one cold block
before any trainer exists, all three trainers are started, and ``--cycles`` times each phase runs a
block of ``--block`` decisions with the other trainers held (``TrainingManager.hold``: SIGSTOP until
released) - "none" holds all three, "one" lets the cnn run, "all" all three. Prints ONE JSON object:
p50/p99 per phase over all its blocks, the ratios to "none", the median of the per-block p99s,
samples/s per trainer.

    python bench/bench_training.py [--block 150] [--cycles 6] [--steps 20] [--cadence 0.2] [--no-freeze]
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
from core.data.files import load_file  # noqa: E402
from core.data.store import MarketStore  # noqa: E402
from core.features import FeatureBuilder, resample_candles  # noqa: E402
from core.labels import dead_zone  # noqa: E402
from core.paths import shared_data_dir  # noqa: E402
from core.types import SeriesKey, timeframe_ms  # noqa: E402
from NN.experts.registry import build_expert  # noqa: E402
from NN.moe import MoEGate  # noqa: E402
from NN.training.online import TrainingManager  # noqa: E402

EXPERTS = ("cnn", "transformer", "dqn")
PHASES = ("none", "one", "all")  # trainers running: none, cnn, all three
KEY = SeriesKey("binanceus", "BTC/USDT", "1m")


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


def phase_figures(lat: dict[str, list[float]], blocks: dict[str, list[float]],
                  over: dict[str, list[float]]) -> dict:
    """p50/p99 per phase, ratios to "none", the median block p99 and the manager's overhead."""
    none, one, alls = lat["none"], lat["one"], lat["all"]
    return {
        "p50_ms_training_none": q(none, 50), "p99_ms_training_none": q(none, 99),
        "p50_ms_training_one": q(one, 50), "p99_ms_training_one": q(one, 99),
        "p50_ms_training_all": q(alls, 50), "p99_ms_training_all": q(alls, 99),
        "p99_ratio_one_vs_none": round(q(one, 99) / q(none, 99), 2),
        "p99_ratio_all_vs_none": round(q(alls, 99) / q(none, 99), 2),
        "block_p99_ms_median": {c: q(v, 50) for c, v in blocks.items()},
        "manager_overhead_p50_ms": {c: q(v, 50) for c, v in over.items()},
        "manager_overhead_p99_ms": {c: q(v, 99) for c, v in over.items()},
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--block", type=int, default=150, help="timed decisions per block")
    ap.add_argument("--cycles", type=int, default=6, help="blocks per phase (none, one, all interleaved)")
    ap.add_argument("--settle", type=float, default=0.3, help="seconds after pausing/resuming trainers")
    ap.add_argument("--steps", type=int, default=20, help="replay mini-batches per trainer round")
    ap.add_argument("--cadence", type=float, default=0.2, help="seconds between trainer rounds")
    ap.add_argument("--start-timeout", type=float, default=180.0)
    ap.add_argument("--no-idle", action="store_true", help="trainers only niced, not SCHED_IDLE")
    ap.add_argument("--reserve-cpus", type=int, default=None,
                    help="CPUs kept free of trainers (default: config training.reserve_cpus)")
    ap.add_argument("--gap-ms", type=float, default=20.0,
                    help="pause between two decisions of the spaced regime (0: measure back to back only)")
    ap.add_argument("--no-freeze", action="store_true",
                    help="trainers keep running while a decision is computed (training.freeze_while_deciding off)")
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
    btc = load_file(shared_data_dir() / "binanceus" / "BTC_USDT-1m.csv")
    gaps = [0.0] + ([args.gap_ms] if args.gap_ms > 0 else [])
    start = max(cache, builder.min_history) + 2500  # stored history: replay + validation seed
    end = start + (3 * args.cycles * len(gaps) + 1) * (args.block + 20)
    hist = btc.iloc[:end].reset_index(drop=True)
    higher = {tf: resample_candles(hist, tf) for tf in builder.timeframes[1:]}
    dz = dead_zone(app.execution, models.labels)

    store = MarketStore(":memory:")
    store.upsert_candles(KEY, hist.iloc[:start])
    torch.manual_seed(0)
    experts = {n: build_expert(n, models.experts[n], builder.spec) for n in EXPERTS}
    gate = MoEGate(list(EXPERTS), models.moe, len(builder.spec.regime_features))
    enabled = np.ones(len(EXPERTS), dtype=bool)
    tmp = Path(tempfile.mkdtemp(prefix="bench_training_"))
    mgr = TrainingManager(store, models, builder, experts, key=KEY, dead_zone=dz, models_dir=tmp / "models",
                          runs_dir=tmp / "runs", min_steps_per_round=args.steps, threads=app.training.trainer_threads,
                          nice=app.training.trainer_nice, sched_idle=app.training.trainer_idle and not args.no_idle,
                          reserve_cpus=app.training.reserve_cpus if args.reserve_cpus is None else args.reserve_cpus,
                          freeze_while_deciding=app.training.freeze_while_deciding and not args.no_freeze)
    cursor = start
    sps: dict[str, list[float]] = {n: [] for n in EXPERTS}

    def decide_span(n_timed: int, running: tuple[str, ...] | list[str], gap_s: float
                    ) -> tuple[list[float], list[float]]:
        nonlocal cursor
        lat, over = [], []
        for k in range(n_timed + 20):  # the first 20 of a block are not recorded
            frames = frames_at(hist, higher, cursor, cache, base_tf)
            t0 = time.perf_counter()
            with mgr.deciding():  # as the engine does (core/engine/training.py): trainers frozen while it decides (config)
                batch = builder.build_one(frames, symbol=KEY.symbol)
                probs = np.stack([experts[n].predict(batch).probs for n in EXPERTS])[None]
                gate.fuse(probs, batch.regime, enabled)
            t1 = time.perf_counter()
            mgr.feed(batch, position=0.0)
            mgr.poll(apply=True)
            t2 = time.perf_counter()
            if gap_s > 0:  # the next bar closes later: trainers run meanwhile
                time.sleep(gap_s)
            if k >= 20:
                lat.append((t1 - t0) * 1e3)
                over.append((t2 - t1) * 1e3)
            if k == n_timed + 19 and gap_s > 0:  # trainers run between spaced decisions: their real pace
                for n in running:
                    if mgr.status()[n].samples_per_s > 0:
                        sps[n].append(mgr.status()[n].samples_per_s)
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

    out: dict = {"bench": "training", "block": args.block, "cycles": args.cycles, "device": "cpu", "threads": 1,
                 "steps_per_round": args.steps, "cadence_s": args.cadence, "trainer_sched_idle": mgr.sched_idle,
                 "freeze_while_deciding": mgr.freeze_while_deciding,
                 "trainer_cpus": list(mgr.cpus) if mgr.cpus else None}
    regimes: dict[float, dict] = {}
    try:
        cold, _ = decide_span(args.block, [], 0.0)  # before any trainer process exists
        t0 = time.monotonic()
        for n in EXPERTS:
            mgr.start(n)
        wait_training(list(EXPERTS))
        out["spawn_to_first_step_s"] = round(time.monotonic() - t0, 1)
        for gap in gaps:
            lat: dict[str, list[float]] = {c: [] for c in PHASES}
            over: dict[str, list[float]] = {c: [] for c in PHASES}
            blocks: dict[str, list[float]] = {c: [] for c in PHASES}  # p99 of each block
            for c in range(args.cycles):
                # interleaved short blocks, order rotated per cycle: the machine's drift hits every phase alike
                for phase in PHASES[c % 3:] + PHASES[: c % 3]:
                    running = {"none": (), "one": ("cnn",), "all": EXPERTS}[phase]
                    for n in EXPERTS:
                        mgr.hold(n, n not in running)
                    time.sleep(args.settle)
                    a, b = decide_span(args.block, running, gap / 1e3)
                    lat[phase] += a
                    over[phase] += b
                    blocks[phase].append(q(a, 99))
            regimes[gap] = phase_figures(lat, blocks, over)
        for n in EXPERTS:
            mgr.hold(n, False)
        status = mgr.status()
    finally:
        mgr.shutdown()  # releases held trainers first (a frozen process cannot take the stop message)
    out.update(regimes[0.0])  # headline: decisions back to back (a fast replay), the harder case
    out.update({
        "target_p99_ratio": 2.0,
        "p99_ms_none_before_spawn": q(cold, 99),
        "trainer_samples_per_s": {n: round(float(np.median(v)), 1) if v else None for n, v in sps.items()},
        "trainer_steps": {n: st.steps for n, st in status.items()},
        "promotions": {n: st.promotions for n, st in status.items()},
        "cpu_count": os.cpu_count(),
        "note": "decision = build_one + 3 experts predict + gate fuse; top-level figures: decisions back to back; "
                "spaced: the same with a pause between decisions (trainers run in it; samples/s measured there); "
                "trainers 1 torch thread each, kept busy; phases interleaved in blocks (held trainers: SIGSTOP)",
    })
    if args.gap_ms > 0:
        out["spaced"] = {"gap_ms": args.gap_ms, **regimes[args.gap_ms]}
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
