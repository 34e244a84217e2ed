"""Train now: wall time of the quick preset, end to end (the background child process: features,
CNN + Transformer + DQN + gate, checkpoints adopted into the engine's registry and loaded into the
running experts). Prints ONE JSON object.

- quick_train_s: median over ``--runs`` runs on the bundled sample's first two days (2,880 real
  BTC/USDT 1m candles: what a fresh clone trains on);
- quick_train_20k_s: one run on the newest 20,000 candles of ../shared/data's BTC/USDT 1m (the most the
  quick preset takes from a larger store);
- eta: how the job's status ETA compared with the time really left (NN/training/progress.py), sampled
  every 0.2 s of the first run: the stages, when the first complete ETA came, ETA / actual (median,
  min, max) once no stage was estimating, and how often a partial ETA stayed a lower bound;
- kronos_last_day: how good the quick Kronos (trained on the sample's first two days) is on the third,
  unseen day: CRPS of its 5-bar return forecasts (32 Monte-Carlo paths per origin, through its stored
  calibration as the expert draws them; raw_crps_bps without it) against the climatology of the first
  two days' 5-bar returns, and the direction hit rate of its median against always calling the
  climatology's more frequent direction (120 origins spread over the day).

    python bench/bench_train_now.py [--runs 3] [--no-20k]
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


def kronos_last_day(kronos_dir: Path, sample, train_bars: int, origins: int = 120, horizon: int = 5) -> dict:
    """The quick Kronos on the day after its training data vs the training days' climatology."""
    from NN.experts.kronos.bundle import load_bundle
    from NN.experts.kronos.calibration import TAUS, pinball_crps
    from NN.experts.kronos.sampler import SampleConfig

    b = load_bundle(str(kronos_dir))
    close = sample["close"].to_numpy(np.float64)
    rows = np.unique(np.linspace(train_bars, len(sample) - 1 - horizon, origins).astype(np.int64))
    cfg = SampleConfig(samples=32, temperature=1.0, top_p=0.9, seed=0, max_context=b.max_context)
    sampler = b.sampler()
    paths = [np.log(sampler.forecast(sample.iloc[i - 255:i + 1], horizon, cfg).closes / close[i]) for i in rows]
    r = np.stack([p[:, -1] for p in paths])  # [M, paths] raw log return at the horizon
    y = np.log(close[rows + horizon] / close[rows])
    past = np.log(close[horizon:train_bars] / close[:train_bars - horizon])  # the training days' 5-bar returns
    cal = b.calibration  # what the expert draws (its bands and probabilities) when the model has one
    taus = cal.taus if cal is not None else TAUS
    q = np.stack([cal.quantiles(p)[-1] for p in paths]) if cal is not None else np.quantile(r, taus, axis=1).T
    crps_k = pinball_crps(q, y, taus)
    crps_raw = pinball_crps(np.quantile(r, taus, axis=1).T, y, taus)
    crps_c = pinball_crps(np.tile(np.quantile(past, taus), (len(y), 1)), y, taus)
    moved = y != 0
    clim_dir = 1.0 if (past > 0).mean() >= (past < 0).mean() else -1.0
    median = q[:, int(np.argmin(np.abs(taus - 0.5)))]
    hit_k = float(np.mean(np.sign(median)[moved] == np.sign(y[moved])))
    hit_c = float(np.mean(np.sign(y[moved]) == clim_dir))
    return {"origins": int(len(rows)), "horizon_bars": horizon, "calibrated": cal is not None,
            "crps_bps": round(float(crps_k.mean()) * 1e4, 3), "raw_crps_bps": round(float(crps_raw.mean()) * 1e4, 3),
            "climatology_crps_bps": round(float(crps_c.mean()) * 1e4, 3),
            "direction_hit": round(hit_k, 3), "climatology_direction_hit": round(hit_c, 3),
            "model": b.version}


def eta_honesty(trace: list[tuple[float, dict]], end: float) -> dict:
    """How the status's ETA compared with the real remaining time over a run: per sample taken while
    the job ran, predicted (ETA) vs actual seconds left; ``partial`` samples had stages still estimating
    (their ETA is a lower bound)."""
    full = [(round(st["eta_s"], 1), round(end - t, 1)) for t, st in trace
            if isinstance(st.get("eta_s"), int | float) and not st.get("estimating") and end - t > 5]
    partial = [(round(st["eta_s"], 1), round(end - t, 1)) for t, st in trace
               if isinstance(st.get("eta_s"), int | float) and st.get("estimating")]
    ratio = [p / a for p, a in full if a > 0]
    first_full = next((round(t - trace[0][0], 1) for t, st in trace
                       if isinstance(st.get("eta_s"), int | float) and not st.get("estimating")), None)
    stages = [s["name"] for s in trace[-1][1].get("stages", [])] if trace else []
    return {"stages": stages, "first_full_eta_after_s": first_full, "samples": len(full),
            "eta_over_actual_median": round(float(np.median(ratio)), 2) if ratio else None,
            "eta_over_actual_min_max": [round(min(ratio), 2), round(max(ratio), 2)] if ratio else None,
            "partial_lower_bound_held": (sum(p <= a * 1.1 + 5 for p, a in partial), len(partial)),
            "gate_seen_running": any(st.get("stage") == "gate" for _, st in trace)}


def one_run(candles, tmp: Path, trace: list | None = None) -> tuple[float, list[str]]:
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
            if trace is not None:
                trace.append((time.time(), job.status()))
        adopted = job.poll()
        dt = time.perf_counter() - t0
        if trace is not None:
            trace.append((time.time(), job.status()))
        if job.status().get("state") != "done":
            raise SystemExit(f"train now failed: {job.status().get('error')}")
        return dt, adopted
    finally:
        store.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--no-20k", action="store_true", help="skip the 20,000-candle run")
    ap.add_argument("--trace", default=None, help="write the first run's status samples (JSON) to this file")
    args = ap.parse_args()
    import logging

    logging.basicConfig(level=logging.ERROR)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    torch.set_num_threads(1)  # this process only scores the quick Kronos; 2 threads on a busy 2-core box crawl
    full = load_file(ROOT / "data" / "sample" / "BTC_USDT-1m.csv")
    sample = full.iloc[:2880]
    times, adopted, loads, quality, honesty = [], [], [], {}, {}
    for i in range(args.runs):
        with tempfile.TemporaryDirectory() as tmp:
            loads.append(os.getloadavg()[0])
            trace: list = []
            dt, adopted = one_run(sample, Path(tmp), trace)
            times.append(dt)
            if i == 0:
                honesty = eta_honesty(trace[:-1], trace[-1][0])
                if args.trace:  # the status samples, for a look at how the ETA moved
                    Path(args.trace).write_text(json.dumps(
                        [[t, {k: st.get(k) for k in ("state", "stage", "eta_s", "estimating", "stages")}]
                         for t, st in trace], default=str))
                quality = kronos_last_day(next((Path(tmp) / "models" / "kronos").glob("nano-quick-*")), full, 2880)
    out = {"quick_train_s": round(float(np.median(times)), 1), "runs_s": [round(t, 1) for t in times],
           "bars": len(sample), "adopted": adopted, "eta": honesty, "kronos_last_day": quality}
    if not args.no_20k:
        big = load_file(shared_data_dir() / "binanceus" / "BTC_USDT-1m.csv").iloc[-20_000:]
        with tempfile.TemporaryDirectory() as tmp:
            out["quick_train_20k_s"] = round(one_run(big, Path(tmp))[0], 1)
    print(json.dumps({**out, "cpus": os.cpu_count(), "load_avg_1m_at_starts": [round(x, 2) for x in loads],
                      "targets": {"quick_train_s": 180}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
