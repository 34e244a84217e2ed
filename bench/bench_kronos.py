"""Kronos sampler benchmark: our KV-cached batched sampler against the in-repo full-recompute oracle
(the reference algorithm) on the same randomly initialised weights, real BTC/USDT 1m candles.

Prints ONE JSON object (medians over --repeats): small_s / mini_s (100 paths, context 480, horizon 30),
oracle_s_per_path (oracle run on --oracle-paths paths; its cost is linear in paths), speedup
(oracle per path × paths / small_s), peak_rss_mb, greedy_equal (greedy fast == greedy oracle)."""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.paths import shared_data_dir  # noqa: E402
from NN.devices import pick_device  # noqa: E402
from NN.experts.kronos.config import MAX_CONTEXT, PREDICTOR_PRESETS, TOKENIZER_PRESETS  # noqa: E402
from NN.experts.kronos.model import KronosModel  # noqa: E402
from NN.experts.kronos.sampler import KronosSampler, SampleConfig  # noqa: E402
from NN.experts.kronos.tokenizer import KronosTokenizer  # noqa: E402


def load_context(n: int) -> pd.DataFrame:
    df = pd.read_csv(shared_data_dir() / "binanceus" / "BTC_USDT-1m.csv")
    df["ts"] = pd.to_datetime(df["timestamp"], utc=True).astype("datetime64[ms, UTC]").astype("int64")
    return df.iloc[10_000:10_000 + n][["ts", "open", "high", "low", "close", "volume"]].reset_index(drop=True)


def build(pred: str, tok: str, device: torch.device, seed: int) -> KronosSampler:
    torch.manual_seed(seed)
    return KronosSampler(KronosTokenizer(TOKENIZER_PRESETS[tok]).to(device),
                         KronosModel(PREDICTOR_PRESETS[pred]).to(device))


def timed(fn, repeats: int) -> tuple[float, float, object]:
    """Median wall seconds, median process CPU seconds (a load-independent figure on a shared
    machine), and the last result."""
    times, cpu, out = [], [], None
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return statistics.median(times), statistics.median(cpu), out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--context", type=int, default=480)
    ap.add_argument("--horizon", type=int, default=30)
    ap.add_argument("--paths", type=int, default=100)
    ap.add_argument("--oracle-paths", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--oracle-repeats", type=int, default=1)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (default 1: fastest on this 2-core shared machine; 0 = torch default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    ctx = load_context(args.context)
    res: dict[str, object] = {"device": str(device), "threads": torch.get_num_threads(),
                              "load_avg_1m_start": round(os.getloadavg()[0], 2),
                              "context": args.context, "horizon": args.horizon, "paths": args.paths}
    if device.type == "cuda":
        res["gpu"] = torch.cuda.get_device_name(device)
    cfg = SampleConfig(samples=args.paths, temperature=1.0, top_p=0.9, seed=0, max_context=512)
    greedy = SampleConfig(samples=1, top_k=1, max_context=512)
    greedy_ok = True
    for label, pred, tok in (("small", "Kronos-small", "Kronos-Tokenizer-base"),
                             ("mini", "Kronos-mini", "Kronos-Tokenizer-2k")):
        s = build(pred, tok, device, seed=1)
        cfg_m = replace(cfg, max_context=MAX_CONTEXT[pred])
        s.forecast(ctx, 2, SampleConfig(samples=4, seed=0))  # warm-up
        t, tc, fc = timed(lambda s=s, c=cfg_m: s.forecast(ctx, args.horizon, c), args.repeats)
        res[f"{label}_s"] = round(t, 4)
        res[f"{label}_cpu_s"] = round(tc, 4)
        res[f"{label}_paths_shape"] = list(fc.paths.shape)  # type: ignore[union-attr]
        ocfg = replace(cfg_m, samples=args.oracle_paths)
        to, toc, _ = timed(lambda s=s, c=ocfg: s.forecast(ctx, args.horizon, c, use_oracle=True),
                           args.oracle_repeats)
        per_path = to / args.oracle_paths
        res[f"{label}_oracle_cpu_s_per_path"] = round(toc / args.oracle_paths, 4)
        res[f"{label}_oracle_s_per_path"] = round(per_path, 4)
        res[f"{label}_speedup"] = round(per_path * args.paths / t, 1)
        g = replace(greedy, max_context=MAX_CONTEXT[pred])
        g_fast = s.forecast(ctx, args.horizon, g).paths
        g_slow = s.forecast(ctx, args.horizon, g, use_oracle=True).paths
        eq = bool(np.allclose(g_fast, g_slow, rtol=1e-4, atol=0))
        res[f"{label}_greedy_equal"] = eq
        greedy_ok &= eq
        del s
    res["oracle_s_per_path"] = res["small_oracle_s_per_path"]
    res["speedup"] = res["small_speedup"]
    res["greedy_equal"] = greedy_ok
    res["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    res["load_avg_1m_end"] = round(os.getloadavg()[0], 2)
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
