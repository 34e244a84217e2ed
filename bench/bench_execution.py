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
- live_roundtrip_ms_p50 / _p99: decision -> order acknowledged, through the real path on loopback: Executor.on_bar
  with a ledger and CcxtBroker in sandbox mode against the fake Binance server of tests/fake_binance.py (intent
  made durable by the intent journal, POST, ack parsed); target p99 <= 20 ms
- live_ack_ms_p50 / _p99: the create_order round trip alone (the rest of live_roundtrip is the decision path
  and the intent's journal append + fdatasync)
- reconcile_ms: Executor.reconcile() over 1,000 fills (balance, open orders, 1,000 trades fetched and parsed by
  ccxt, compared with 1,000 ledger fills); target <= 200 ms. reconcile_incremental_ms: the periodic check
  afterwards (only trades newer than the last seen are fetched)

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
    res.update(live_bench(b, a.repeats))
    print(json.dumps(res))


def live_bench(b: dict[str, np.ndarray], repeats: int, orders: int = 300) -> dict[str, float]:
    """live_roundtrip_ms (p50, p99) and reconcile_ms against the fake Binance server on loopback."""
    sys.path.insert(0, str(ROOT / "tests"))
    from fake_binance import FakeServer, local_binance

    from core.config import Secrets
    from core.execution.ccxt_broker import CcxtBroker
    from core.types import Fill

    keys = Secrets(exchange_api_key="bench-key", exchange_secret="bench-secret")
    exe = ExecutionConfig(broker="ccxt", sandbox=True, max_bar_age_s=0)
    risk = RiskConfig(fraction=0.5, stop_loss_pct=0.0, take_profit_pct=0.0, max_daily_loss_pct=0.9)
    key = SeriesKey("binance", "BTC/USDT", "1m")
    srv = FakeServer()
    out: dict[str, float] = {}
    try:
        srv.fake.reset(price=float(b["close"][0]), usdt=1e9)
        lat: list[float] = []
        http: list[float] = []
        with tempfile.TemporaryDirectory() as tmp:
            broker = CcxtBroker(exe, "binance", secrets=keys, exchange=local_binance(srv.base, timeout_ms=5000))
            ex = Executor(exe, risk, "BTC/USDT", "1m", broker=broker,
                          ledger=Ledger(str(Path(tmp) / "live.duckdb"), account="testnet:BTC/USDT", symbol="BTC/USDT"))
            real = broker.create_order
            acked: list[float] = []

            sent: list[float] = []

            def timed(*args, **kw):  # the instant the order leaves (intent committed) and its acknowledgement
                sent.append(time.perf_counter())
                o = real(*args, **kw)
                acked.append(time.perf_counter())
                return o

            broker.create_order = timed  # type: ignore[method-assign]
            i = 0
            while len(lat) < orders and i < len(b["ts"]) - 1:
                ts = int(b["ts"][i])
                act = Action.BUY if ex.snapshot().position == 0 else Action.SELL  # an order every bar
                srv.fake.price = float(b["close"][i])
                d = Decision(id=f"d{ts}", ts=ts, symbol="BTC/USDT", action=act, probs=(0.3, 0.3, 0.4),
                             expected_return=0.0, weights={}, thresholds=Thresholds(),
                             target_position=1.0 if act == Action.BUY else 0.0, reason="bench")
                n = len(acked)
                t = time.perf_counter()
                ex.on_bar(CandleEvent(key, ts, b["open"][i], b["high"][i], b["low"][i], b["close"][i], 1.0), d)
                if len(acked) > n:
                    lat.append(acked[n] - t)
                    http.append(acked[n] - sent[n])
                i += 1
            assert ex.ledger is not None
            ex.ledger.close()
        arr = np.array(lat[10:]) * 1e3  # the first orders load markets and warm the connection
        out["live_roundtrip_ms_p50"] = round(float(np.percentile(arr, 50)), 3)
        out["live_roundtrip_ms_p99"] = round(float(np.percentile(arr, 99)), 3)
        out["live_orders"] = int(len(arr))
        ack = np.array(http[10:]) * 1e3  # create_order alone: the exchange round trip, without the intent commit
        out["live_ack_ms_p50"] = round(float(np.percentile(ack, 50)), 3)
        out["live_ack_ms_p99"] = round(float(np.percentile(ack, 99)), 3)

        # reconcile over 1,000 fills: the account traded 1,000 times, the ledger booked the same fills
        srv.fake.reset(price=float(b["close"][0]), usdt=1e9)
        since = int(time.time() * 1000) - 1000
        fills = []
        for j in range(1000):
            srv.fake.price = float(b["close"][j])
            _, body = srv.fake.create({"symbol": "BTCUSDT", "side": "BUY" if j % 2 == 0 else "SELL",
                                       "type": "MARKET", "quantity": "0.01000000", "newClientOrderId": f"moe-b{j}"})
            f = body["fills"][0]
            fills.append(Fill(id=f"{body['orderId']}-f", order_id=str(body["orderId"]), clientOrderId=f"moe-b{j}",
                              symbol="BTC/USDT", side="buy" if j % 2 == 0 else "sell", amount=float(f["qty"]),
                              price=float(f["price"]), fee=float(f["commission"]), ts=int(body["transactTime"])))
        with tempfile.TemporaryDirectory() as tmp:
            led = Ledger(str(Path(tmp) / "rec.duckdb"), account="testnet:BTC/USDT", initial_cash=1e9, symbol="BTC/USDT")
            st = K.new_state(1e9)
            st[K.S_CASH] = srv.fake.balances["USDT"]
            st[K.S_POS] = srv.fake.balances["BTC"]
            st[K.S_FEES] = sum(f.fee for f in fills)
            led.record_bar(int(b["ts"][0]), "BTC/USDT", float(b["close"][0]), st, [], fills,
                           meta={"baseline": {"base": 0.0, "quote": 1e9, "since_ms": since, "ignored": []}})
            broker = CcxtBroker(exe, "binance", secrets=keys, exchange=local_binance(srv.base, timeout_ms=5000))
            ex = Executor(exe.model_copy(update={"initial_cash": 1e9}), risk, "BTC/USDT", "1m", broker=broker,
                          ledger=led, reconcile_every_bars=1_000_000)
            times, warm = [], []
            for _ in range(max(3, repeats)):
                ex._trades_from = None  # cold: all 1,000 trades fetched and parsed again
                t = time.perf_counter()
                r = ex.reconcile()
                times.append(time.perf_counter() - t)
                assert r is not None and r.ok and r.fills_checked == 1000, r.summary() if r else None
                t = time.perf_counter()  # the periodic check: only trades newer than the last one seen
                r = ex.reconcile()
                warm.append(time.perf_counter() - t)
                assert r is not None and r.ok and r.fills_checked == 1000, r.summary() if r else None
            led.close()
        out["reconcile_ms"] = round(statistics.median(times) * 1e3, 2)
        out["reconcile_incremental_ms"] = round(statistics.median(warm) * 1e3, 2)
    finally:
        srv.close()
    return out


if __name__ == "__main__":
    main()
