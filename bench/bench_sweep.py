"""Sweep benchmark; prints ONE JSON object of figures (medians where repeated).

(a) threshold_trials_per_s: threshold/risk trials re-trading cached predictions in this process
    (``retune.evaluate_trial``: the cached re-decision (thresholds.Redecider) + the compiled kernel + the
    trial's statistics) over the 30,240-bar BTC/USDT 1m file. The cached "predictions" are a fixed real-data rule (P(up)/P(down) from
    the 15-bar momentum z-score, as bench_backtest.py): a trial costs the same whatever made them. Target
    >= 50 trials/s.
(b) trials_per_s_1_worker, trials_per_s_2_workers, scaling_efficiency: the same trials as a sweep (random
    sampler, journal storage) on 1 and 2 local Ray workers, timed from the first to the last finished trial
    (Ray's start-up excluded, reported apart). Efficiency = tps_2 / (2 * tps_1); target >= 0.8.
(c) walkforward_fold_s: one 7-day-train / 1-day-test fold with CNN + Transformer + DQN (1 epoch of at most
    BENCH_FOLD_STEPS steps each) + a fitted gate on models.yml's features; reported, no target.

The machine may be shared with other work: the load average is reported at start and end.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.backtest.retune import evaluate_trial, load_cached  # noqa: E402
from core.backtest.sweep import Space, run_sweep, sweep_paths  # noqa: E402
from core.config import load_config, load_models  # noqa: E402
from core.data.files import load_file  # noqa: E402
from core.paths import shared_data_dir  # noqa: E402


def cached_folder(candles: pd.DataFrame, out: Path) -> Path:
    """A walk-forward-shaped folder (predictions.npz + candles.parquet) over every bar of ``candles``."""
    close = candles["close"].to_numpy(np.float64)
    r = np.diff(np.log(close), prepend=np.log(close[0]))
    mom = pd.Series(r).rolling(15, min_periods=1).sum().to_numpy()
    sd = pd.Series(r).rolling(240, min_periods=2).std().fillna(1e-3).to_numpy() * np.sqrt(15)
    z = np.clip(mom / np.maximum(sd, 1e-9), -4, 4)
    up = 1 / (1 + np.exp(-z)) * 0.6
    down = (1 - 1 / (1 + np.exp(-z))) * 0.6
    fused = np.stack([down, 1 - up - down, up], axis=1)
    out.mkdir(parents=True, exist_ok=True)
    np.savez(out / "predictions.npz", ts=candles["ts"].to_numpy(np.int64), fused=fused,
             confidence=np.ones(len(candles)), fold_of=np.zeros(len(candles), dtype=np.int64))
    candles.reset_index(drop=True).to_parquet(out / "candles.parquet")
    return out


def trial_params(rng: np.random.Generator) -> dict[str, float]:
    return {"buy_threshold": float(rng.uniform(0.3, 0.5)), "sell_threshold": float(rng.uniform(0.3, 0.5)),
            "stop_loss_pct": float(rng.uniform(0.0, 0.03))}


def bench_inline(folder: Path, repeats: int) -> dict[str, float]:
    cfg = load_config()
    c = load_cached(folder)
    rng = np.random.default_rng(0)
    evaluate_trial(c, trial_params(rng), cfg, 525_600.0)  # compile / load the kernel
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(100):
            evaluate_trial(c, trial_params(rng), cfg, 525_600.0)
        rates.append(100 / (time.perf_counter() - t0))
    return {"threshold_trials_per_s": statistics.median(rates), "threshold_trials_bars": len(c.ts)}


def bench_ray(folder: Path, workers: int, trials: int) -> tuple[float, float]:
    """(trials/s from the first to the last finished trial, seconds before the first finished)."""
    cfg = load_config()
    space = Space(predictions=folder, sampler="random", seed=workers, params={
        "buy_threshold": {"low": 0.3, "high": 0.5}, "sell_threshold": {"low": 0.3, "high": 0.5},
        "stop_loss_pct": {"low": 0.0, "high": 0.03}})
    stamps: list[float] = []
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        run_sweep(space, cfg, n_trials=trials, workers=workers, paths=sweep_paths(Path(d) / "x.duckdb", f"w{workers}"),
                  name=f"w{workers}", on_trial=lambda n: stamps.append(time.perf_counter()))
    # the first `workers` results include each worker's start: time the rest
    k = min(workers, len(stamps) - 2)
    return (len(stamps) - 1 - k) / (stamps[-1] - stamps[k]), stamps[0] - t0


def bench_fold(candles: pd.DataFrame) -> dict[str, float]:
    import torch

    from compose import walkforward_trainer
    from core.backtest.engine import spec_from_config
    from core.backtest.runner import default_thresholds
    from core.backtest.walkforward import make_folds, parse_duration, run_walkforward
    from core.types import SeriesKey

    torch.set_num_threads(1)
    cfg, models = load_config(), load_models()
    steps = int(os.environ.get("BENCH_FOLD_STEPS", "50"))
    trainer = walkforward_trainer(models, cfg, SeriesKey("binanceus", "BTC/USDT", "1m"),
                                  ["cnn", "transformer", "dqn"], epochs=1, max_steps=steps, retrain_gate=True)
    spec = spec_from_config(cfg, models, exchange="binanceus", symbol="BTC/USDT", timeframe="1m",
                            thresholds=default_thresholds(cfg), mode="fast")
    folds = make_folds(candles["ts"].to_numpy(), "1m", parse_duration("7d"), parse_duration("1d"), max_folds=1)
    t0 = time.perf_counter()
    res = run_walkforward(candles, folds, trainer, spec, cfg.execution, cfg.risk)
    return {"walkforward_fold_s": time.perf_counter() - t0, "walkforward_fold_train_s": res.folds[0].train_s,
            "walkforward_fold_test_s": res.folds[0].test_s, "walkforward_fold_steps_per_epoch": steps}


def main() -> None:
    candles = load_file(shared_data_dir() / "binanceus" / "BTC_USDT-1m.csv")
    repeats = int(os.environ.get("BENCH_REPEATS", "5"))
    trials = int(os.environ.get("BENCH_TRIALS", "200"))
    out: dict[str, object] = {"machine_load_1m_start": os.getloadavg()[0], "cpus": os.cpu_count()}
    with tempfile.TemporaryDirectory() as d:
        folder = cached_folder(candles, Path(d) / "wf")
        out.update(bench_inline(folder, repeats))
        t1, s1 = bench_ray(folder, 1, trials)
        t2, s2 = bench_ray(folder, 2, trials)
    out.update({"trials_per_s_1_worker": t1, "trials_per_s_2_workers": t2, "scaling_efficiency": t2 / (2 * t1),
                "ray_startup_s_1_worker": s1, "ray_startup_s_2_workers": s2, "sweep_trials": trials})
    if os.environ.get("BENCH_SKIP_FOLD") != "1":
        out.update(bench_fold(candles))
    out["machine_load_1m_end"] = os.getloadavg()[0]
    print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in out.items()}))


if __name__ == "__main__":
    main()
