"""Ledger persistence and crash recovery.

The crash test starts a paper-trading subprocess that ingests real BTC/USDT 1m candles from the shared
CSV and trades a simple moving-average rule through Executor + Ledger on a tmp DuckDB file, kills it
with SIGKILL mid-run, then checks that a restart restores EXACTLY the last committed state (compared
with an uninterrupted reference run up to the same bar) and that finishing the run after the restart
gives the same ledger as a run that never crashed."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from core.config import ExecutionConfig, RiskConfig
from core.execution import kernel as K
from core.execution.executor import Executor
from core.execution.ledger import Ledger
from core.types import Action, CandleEvent, Decision, Fill, Order, SeriesKey, Thresholds

ROOT = Path(__file__).resolve().parent.parent
KEY = SeriesKey("binanceus", "BTC/USDT", "1m")
N_BARS = 1200


def session_config() -> tuple[ExecutionConfig, RiskConfig]:
    return (ExecutionConfig(fill_at="next_open"),
            RiskConfig(sizing="volatility_target", target_vol_annual=0.4, fraction=0.6, stop_loss_pct=0.003,
                       take_profit_pct=0.006, cooldown_bars=5, max_daily_loss_pct=0.01,
                       kill_switch_reset="next_day", vol_window=30))


def paper_session(db: str, csv: str, n_bars: int, stop_after_ts: int | None = None,
                  delay_s: float = 0.0, announce: bool = False) -> Executor:
    """Paper trading over real candles: resumes after the ledger's last bar; BUY above the 20-bar mean,
    SELL below it. Prints 'committed <ts>' after each committed bar when ``announce``."""
    df = pd.read_csv(csv, nrows=n_bars)
    ts = pd.to_datetime(df["timestamp"], utc=True).dt.as_unit("ms").astype("int64").to_numpy()
    c = df["close"].to_numpy()
    mean = pd.Series(c).rolling(20).mean().to_numpy()
    exe, risk = session_config()
    ledger = Ledger(db, account="paper", initial_cash=exe.initial_cash, symbol="BTC/USDT")
    ex = Executor(exe, risk, "BTC/USDT", "1m", ledger=ledger)
    start = 0 if ledger.last_ts is None else int(np.searchsorted(ts, ledger.last_ts, side="right"))
    for i in range(start, n_bars):
        if stop_after_ts is not None and ts[i] > stop_after_ts:
            break
        act = Action.BUY if c[i] > mean[i] else Action.SELL if c[i] < mean[i] else Action.HOLD
        d = Decision(id=f"BTC/USDT-{ts[i]}", ts=int(ts[i]), symbol="BTC/USDT", action=act,
                     probs=(0.3, 0.3, 0.4), expected_return=0.0, weights={}, thresholds=Thresholds(),
                     target_position=1.0 if act == Action.BUY else 0.0, reason="sma20")
        bar = CandleEvent(KEY, int(ts[i]), df["open"][i], df["high"][i], df["low"][i], c[i], df["volume"][i])
        ex.on_bar(bar, d)
        if announce:
            print(f"committed {ts[i]}", flush=True)
        if delay_s:
            time.sleep(delay_s)
    return ex


def ledger_tables(db: str | Ledger) -> dict[str, pd.DataFrame]:
    led = db if isinstance(db, Ledger) else Ledger(db, account="paper", symbol="BTC/USDT")
    out = {"state": pd.DataFrame({"s": led.restore()}), "equity": led.equity_curve(), "fills": led.fills(),
           "orders": led.orders()}
    led.close()
    return out


def _child(db: str, csv: str, delay: float) -> subprocess.Popen:
    code = (f"import sys; sys.path.insert(0, {str(ROOT)!r}); import tests.test_execution_ledger as t; "
            f"t.paper_session({db!r}, {csv!r}, {N_BARS}, delay_s={delay}, announce=True)")
    return subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def test_kill9_mid_run_restores_last_committed_state(tmp_path, shared_data):
    csv = str(shared_data / "binanceus" / "BTC_USDT-1m.csv")
    db = str(tmp_path / "crash.duckdb")
    proc = _child(db, csv, 0.002)
    seen = []
    try:
        for line in proc.stdout:
            seen.append(int(line.split()[1]))
            if len(seen) >= 300:
                break
        proc.send_signal(signal.SIGKILL)  # kill -9 mid-run, between or inside transactions
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read()[-2000:]
    seen += [int(line.split()[1]) for line in proc.stdout.read().splitlines() if line.startswith("committed")]
    assert 300 <= len(seen) < N_BARS  # killed mid-run

    after = ledger_tables(db)
    led = Ledger(db, account="paper", symbol="BTC/USDT")
    last_ts = led.last_ts
    led.close()
    # every announced bar is committed; at most one more may have committed before the signal landed
    assert last_ts in (seen[-1], seen[-1] + 60_000)
    assert len(after["equity"]) == int((last_ts - seen[0]) // 60_000) + 1  # no gap, no half bar

    # an uninterrupted reference run up to the same bar: identical state, equity curve, fills, orders
    want = ledger_tables(paper_session(":memory:", csv, N_BARS, stop_after_ts=last_ts).ledger)
    for name in ("state", "equity", "fills", "orders"):
        pd.testing.assert_frame_equal(after[name], want[name], check_exact=True, obj=name)
    assert len(want["fills"]) > 10

    # restart: finishing the run gives exactly the ledger of a run that never crashed
    proc2 = _child(db, csv, 0.0)
    out, err = proc2.communicate(timeout=300)
    assert proc2.returncode == 0, err[-2000:]
    assert int(out.split()[1]) == last_ts + 60_000  # resumed right after the last committed bar
    resumed, full = ledger_tables(db), ledger_tables(paper_session(":memory:", csv, N_BARS).ledger)
    for name in ("state", "equity", "fills", "orders"):
        pd.testing.assert_frame_equal(resumed[name], full[name], check_exact=True, obj=name)


def test_record_bar_is_one_transaction(tmp_path):
    db = str(tmp_path / "tx.duckdb")
    led = Ledger(db, account="a", symbol="BTC/USDT")
    st = K.new_state(1_000.0)
    K.apply_fill(st, 1.0, 100.0, 0.1)  # hand-made fill for the transaction test
    st[K.S_EQUITY] = st[K.S_CASH] + 100.0
    o = Order("o1", "c1", "BTC/USDT", "buy", "market", 1.0, 100.0, "closed", 1.0, 0.1, 0)
    f = Fill("o1-f", "o1", "c1", "BTC/USDT", "buy", 1.0, 100.0, 0.1, 0)
    led.record_bar(0, "BTC/USDT", 100.0, st, [o], [f], ["signal"])
    before = led.restore()
    st2 = st.copy()
    K.apply_fill(st2, -1.0, 101.0, 0.1)
    dup = Fill("o1-f", "o2", "c2", "BTC/USDT", "sell", 1.0, 101.0, 0.1, 60_000)  # duplicate fill id
    o2 = Order("o2", "c2", "BTC/USDT", "sell", "market", 1.0, 101.0, "closed", 1.0, 0.1, 60_000)
    with pytest.raises(Exception, match="(?i)constraint|duplicate"):
        led.record_bar(60_000, "BTC/USDT", 101.0, st2, [o2], [dup], ["signal"])
    led.close()
    again = Ledger(db, account="a", symbol="BTC/USDT")
    assert np.array_equal(again.restore(), before, equal_nan=True)
    assert len(again.orders()) == 1 and len(again.equity_curve()) == 1 and again.last_ts == 0
    assert again.cash == pytest.approx(1_000 - 100 - 0.1) and again.unrealised_pnl(110.0) == pytest.approx(10.0)
    assert again.positions(110.0)[0].amount == 1.0
    with pytest.raises(ValueError, match="not after"):
        again.record_bar(0, "BTC/USDT", 100.0, st, [], [])
    again.close()


def test_kill_switch_reset_is_persisted(tmp_path, shared_data):
    db = str(tmp_path / "k.duckdb")
    exe, risk = session_config()
    ex = Executor(exe, risk, "BTC/USDT", "1m", ledger=Ledger(db, symbol="BTC/USDT"))
    df = pd.read_csv(shared_data / "binanceus" / "BTC_USDT-1m.csv", nrows=3)
    ts = pd.to_datetime(df["timestamp"], utc=True).dt.as_unit("ms").astype("int64")
    for i in range(3):
        ex.on_bar(CandleEvent(KEY, int(ts[i]), df["open"][i], df["high"][i], df["low"][i], df["close"][i],
                              df["volume"][i]), None)
    ex.state[K.S_KILL] = 1.0  # as if tripped; the reset must survive a restart
    ex.reset_kill_switch()
    ex.ledger.close()
    led = Ledger(db, symbol="BTC/USDT")
    assert led.restore()[K.S_KILL] == 0.0
    led.close()

