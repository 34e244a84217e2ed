"""Backtest benchmark; prints ONE JSON object of figures (medians over repeats).

(a) loop_bars_per_s: the decision + execution loop alone (``decide_codes`` -> kernel signals ->
    numba ``simulate``) over 1,000,000 bars: the real BTC/USDT 1m closes from ../shared/data tiled
    (each copy rescaled to start where the previous ended), signals from a fixed real-data rule
    (P(up)/P(down) from the 15-bar momentum z-score). Target >= 2,000,000 bars/s.
(b) full_backtest_s: a whole fast-mode backtest (feature building, CNN + Transformer + DQN inference,
    gate walk, decisions + audit rows, execution) over the 30,240-bar BTC/USDT file with models.yml's
    features and freshly seeded experts (inference costs the same trained or not). Target <= 15 s.

The machine may be shared with other work: the figures are medians and say how many repeats.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from compose import backtest_components
from core.backtest.engine import Backtester, spec_from_config  # noqa: E402
from core.config import load_config, load_models  # noqa: E402
from core.data.files import load_file  # noqa: E402
from core.execution import kernel as K  # noqa: E402
from core.orchestrator import BUY, SELL, decide_codes  # noqa: E402
from core.paths import shared_data_dir  # noqa: E402
from core.types import Thresholds  # noqa: E402

N_LOOP = 1_000_000


def tiled(candles, n: int) -> dict[str, np.ndarray]:
    """n bars from the real series repeated end to end, each copy scaled to continue the last close."""
    cols = {c: candles[c].to_numpy(np.float64) for c in ("open", "high", "low", "close")}
    reps = -(-n // len(candles))
    out = {c: [] for c in cols}
    scale = 1.0
    for _ in range(reps):
        for c in cols:
            out[c].append(cols[c] * scale)
        scale = out["close"][-1][-1] / cols["open"][0]
    arr = {c: np.concatenate(v)[:n] for c, v in out.items()}
    arr["ts"] = candles["ts"].to_numpy(np.int64)[0] + 60_000 * np.arange(n, dtype=np.int64)
    return arr


def rule_probs(close: np.ndarray) -> np.ndarray:
    """A fixed, past-only rule: 15-bar log momentum over its trailing 240-bar std -> (down, flat, up)."""
    lc = np.log(close)
    mom = np.zeros_like(lc)
    mom[15:] = lc[15:] - lc[:-15]
    r = np.zeros_like(lc)
    r[1:] = np.diff(lc)
    c2 = np.cumsum(r * r)
    var = np.empty_like(lc)
    var[:240] = c2[:240] / np.arange(1, 241)
    var[240:] = (c2[240:] - c2[:-240]) / 240
    z = mom / np.sqrt(15 * np.maximum(var, 1e-12))
    up = 1 / (1 + np.exp(-z))
    flat = 0.2 * np.ones_like(up)
    p = np.column_stack([(1 - up) * 0.8, flat, up * 0.8])
    return p


def bench_loop(candles, repeats: int = 5) -> dict[str, float]:
    a = tiled(candles, N_LOOP)
    probs = rule_probs(a["close"])
    conf = 1.0 - np.abs(probs[:, 1] - 0.2)  # all pass min_confidence 0
    th = Thresholds(buy=0.56, sell=0.56)
    cfg = load_config()
    params = K.params_from_config(cfg.execution, cfg.risk)
    vol = np.full(N_LOOP, np.nan)
    ts = a["ts"].astype(np.float64)
    times = []
    fills = 0
    for i in range(repeats + 1):  # the first run compiles (numba cache may already have it)
        t0 = time.perf_counter()
        codes = decide_codes(probs, conf, th)
        signal = np.where(codes == BUY, 1.0, np.where(codes == SELL, -1.0, np.nan))
        eq, _pos, f = K.simulate(ts, a["open"], a["high"], a["low"], a["close"], signal, vol, params,
                                 K.new_state(cfg.execution.initial_cash))
        dt = time.perf_counter() - t0
        if i:
            times.append(dt)
        fills = len(f)
    med = statistics.median(times)
    return {"loop_bars": N_LOOP, "loop_s": med, "loop_bars_per_s": N_LOOP / med, "loop_fills": fills,
            "loop_repeats": repeats}


def fitted_gate_state(comps, candles) -> dict:
    """A gate trained the way the trainer does it (MoEGate.fit on expert outputs with their labels),
    here on the first 20% of the file; fitting is NOT timed, the backtest then loads it."""
    from core.labels import make_labels

    part = candles.iloc[: len(candles) // 5]
    batch = comps.builder.build_many(part, symbol="BTC/USDT")
    probs = np.stack([comps.experts[n].predict_many(batch).probs for n in comps.experts], axis=1)
    labels = make_labels(batch.close.astype(np.float64), 5, 0.002)
    ok = labels >= 0
    comps.gate.fit(probs[ok], batch.regime[ok].astype(np.float64), labels[ok])
    return comps.gate.state_dict()


def bench_full(candles, repeats: int) -> dict[str, float]:
    """Each repeat: build the components (as `run` does) and backtest the whole file, once with the
    online Hedge gate (walked bar by bar) and once with a trained gate (fused in batches)."""
    import torch

    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    cfg = load_config()
    models = load_models()
    spec = spec_from_config(cfg, models, exchange="binanceus", symbol="BTC/USDT", timeframe="1m",
                            thresholds=Thresholds(0.4, 0.4), mode="fast")
    gate_state = fitted_gate_state(backtest_components(models, "1m", ["cnn", "transformer", "dqn"]), candles)
    out: dict[str, float] = {}
    for label, trained in (("full_backtest", False), ("full_backtest_trained_gate", True)):
        times, stages = [], []
        for _ in range(repeats):
            t0 = time.perf_counter()
            comps = backtest_components(models, "1m", ["cnn", "transformer", "dqn"])
            if trained:
                comps.gate.load_state_dict(gate_state)
            res = Backtester(comps, spec, cfg.execution, cfg.risk, keep_decisions=False).run(candles)
            times.append(time.perf_counter() - t0)
            stages.append(res.stats)
        i = times.index(sorted(times)[len(times) // 2])
        out[f"{label}_s"] = statistics.median(times)
        out.update({f"{label}_{k}": round(v, 3) for k, v in stages[i].items()})
        out[f"{label}_fills"] = len(res.fills)
    out.update({"full_backtest_bars": len(candles), "full_backtest_decisions": int(res.decided.sum()),
                "full_backtest_repeats": repeats, "torch_threads": torch.get_num_threads()})
    return out


def main() -> None:
    candles = load_file(shared_data_dir() / "binanceus" / "BTC_USDT-1m.csv")
    repeats = int(os.environ.get("BENCH_REPEATS", "3"))
    out: dict[str, object] = {"machine_load_1m_start": os.getloadavg()[0], "cpus": os.cpu_count()}
    out.update(bench_loop(candles, max(repeats, 5)))
    out.update(bench_full(candles, repeats))
    out["machine_load_1m_end"] = os.getloadavg()[0]
    print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in out.items()}))


if __name__ == "__main__":
    main()
