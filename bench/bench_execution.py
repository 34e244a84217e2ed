"""Execution kernel benchmark: the decision+execution loop alone over 1,000,000 bars of precomputed
signals (what bench_backtest.py's loop_bars_per_s measures), plus the per-bar costs of event mode.

Bars: the real BTC/USDT 1m candles (../shared/data) chained end to end until 1,000,000 bars (each copy
rescaled so its first open continues the previous copy's last close: real returns, continuous prices).
Signals: a causal 20-bar moving-average rule (BUY above, SELL below, HOLD in a 3 bps band), stops,
take-profit, cooldown and the daily-loss kill switch all enabled.

Prints ONE JSON object (medians over --repeats):
- loop_bars_per_s_next_open / loop_bars_per_s_last_price: kernel.simulate throughput (target >= 2e6)
- fills: fills in the 1M-bar run
- step_us_per_bar: kernel.step called from Python once per bar (event mode's raw cost)
- executor_us_per_bar: Executor.on_bar without a ledger (paper, event mode)
- ledger_ms_per_bar: Executor.on_bar with a DuckDB ledger on a temporary file (one durable commit per bar)

    .venv/bin/python bench/bench_execution.py [--bars 1000000] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from core.config import ExecutionConfig, RiskConfig  # noqa: E402
from core.execution import kernel as K  # noqa: E402
from core.execution.executor import Executor  # noqa: E402
from core.execution.ledger import Ledger  # noqa: E402
from core.paths import shared_data_dir  # noqa: E402
from core.types import Action, CandleEvent, Decision, SeriesKey, Thresholds  # noqa: E402


def real_bars(n: int) -> dict[str, np.ndarray]:
    df = pd.read_csv(shared_data_dir() / "binanceus" / "BTC_USDT-1m.csv")
    ts0 = pd.to_datetime(df["timestamp"], utc=True).dt.as_unit("ms").astype("int64").to_numpy()
    cols = {k: df[k].to_numpy(np.float64) for k in ("open", "high", "low", "close")}
    m = len(df)
    reps = n // m + 1
    out = {k: [] for k in ("ts", "open", "high", "low", "close")}
    scale = 1.0
    for r in range(reps):
        out["ts"].append(ts0 + r * m * 60_000)
        for k in ("open", "high", "low", "close"):
            out[k].append(cols[k] * scale)
        scale = out["close"][-1][-1] / cols["open"][0]
    return {k: np.concatenate(v)[:n].astype(np.float64) for k, v in out.items()}


def signals(close: np.ndarray) -> np.ndarray:
    m = pd.Series(close).rolling(20).mean().to_numpy()
    return np.where(close > m * 1.0003, 1.0, np.where(close < m * 0.9997, 0.0, np.nan))


def params(fill_at: str) -> np.ndarray:
    return K.make_params(fill_at=fill_at, fraction=0.5, stop_loss_pct=0.01, take_profit_pct=0.02,
                         cooldown_bars=15, max_daily_loss_pct=0.05, kill_switch_reset="next_day")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bars", type=int, default=1_000_000)
    ap.add_argument("--repeats", type=int, default=5)
    a = ap.parse_args()
    b = real_bars(a.bars)
    sig = signals(b["close"])
    vol = np.full(a.bars, np.nan)
    res: dict[str, float] = {"bars": a.bars}
    for fill_at in ("next_open", "last_price"):
        p = params(fill_at)
        K.simulate(b["ts"][:50], b["open"][:50], b["high"][:50], b["low"][:50], b["close"][:50], sig[:50],
                   vol[:50], p, K.new_state(1e4))  # compile / load the cache outside the timing
        times = []
        for _ in range(a.repeats):
            st = K.new_state(10_000.0)
            t = time.perf_counter()
            _, _, fills = K.simulate(b["ts"], b["open"], b["high"], b["low"], b["close"], sig, vol, p, st)
            times.append(time.perf_counter() - t)
        res[f"loop_bars_per_s_{fill_at}"] = round(a.bars / statistics.median(times))
        res[f"fills_{fill_at}"] = int(len(fills))

    n = 20_000
    p = params("next_open")
    buf = np.zeros((K.MAX_FILLS_PER_BAR, K.FILL_SIZE))
    times = []
    for _ in range(a.repeats):
        st = K.new_state(10_000.0)
        t = time.perf_counter()
        for i in range(n):
            K.step(st, p, b["ts"][i], b["open"][i], b["high"][i], b["low"][i], b["close"][i], sig[i], np.nan, buf)
        times.append(time.perf_counter() - t)
    res["step_us_per_bar"] = round(statistics.median(times) / n * 1e6, 3)

    key = SeriesKey("binanceus", "BTC/USDT", "1m")
    exe = ExecutionConfig()
    risk = RiskConfig()

    def decisions(k: int) -> list[tuple[CandleEvent, Decision | None]]:
        out = []
        for i in range(k):
            ts = int(b["ts"][i])
            bar = CandleEvent(key, ts, b["open"][i], b["high"][i], b["low"][i], b["close"][i], 1.0)
            s = sig[i]
            d = None if s != s else Decision(
                id=f"d{ts}", ts=ts, symbol="BTC/USDT", action=Action.BUY if s > 0 else Action.SELL,
                probs=(0.3, 0.3, 0.4), expected_return=0.0, weights={}, thresholds=Thresholds(),
                target_position=float(s), reason="bench")
            out.append((bar, d))
        return out

    evs = decisions(5_000)
    times = []
    for _ in range(a.repeats):
        ex = Executor(exe, risk, "BTC/USDT", "1m")
        t = time.perf_counter()
        for bar, d in evs:
            ex.on_bar(bar, d)
        times.append(time.perf_counter() - t)
    res["executor_us_per_bar"] = round(statistics.median(times) / len(evs) * 1e6, 2)

    k = 300
    with tempfile.TemporaryDirectory() as tmp:
        led = Ledger(str(Path(tmp) / "bench.duckdb"), symbol="BTC/USDT")
        ex = Executor(exe, risk, "BTC/USDT", "1m", ledger=led)
        lat = []
        for bar, d in evs[:k]:
            t = time.perf_counter()
            ex.on_bar(bar, d)
            lat.append(time.perf_counter() - t)
        led.close()
    res["ledger_ms_per_bar"] = round(statistics.median(lat) * 1e3, 3)
    print(json.dumps(res))


if __name__ == "__main__":
    main()
