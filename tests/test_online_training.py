"""Online training on real BTC/USDT 1m candles (../shared/data): labels reach the trainers only after
they matured (and never from the validation window), the DQN learns from realised positions, and a
real spawned trainer process trains, publishes, is restarted after SIGKILL while the caller keeps
running, and stops on request."""

from __future__ import annotations

import os
import queue
import signal
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from core.config import load_models
from core.data.files import load_file as load_candles
from core.data.store import MarketStore
from core.features import FeatureBuilder
from core.labels import make_labels
from core.types import SeriesKey
from NN.experts.dqn import POSITIONS
from NN.experts.registry import build_expert
from NN.training.online import (
    FeedBuffer,
    TrainerSpec,
    TrainingManager,
    split_release,
    trainer_cpus,
    trainer_main,
)
from NN.training.online.worker import _train_round, _TrainData

torch.set_num_threads(1)

KEY = SeriesKey("binanceus", "BTC/USDT", "1m")
DZ = 0.002
STORED = 1600  # candles in the store when training starts
FED = 40  # bars fed live afterwards


@pytest.fixture(scope="module")
def candles(shared_data: Path) -> pd.DataFrame:
    return load_candles(shared_data / "binanceus" / "BTC_USDT-1m.csv").iloc[: STORED + FED].reset_index(drop=True)


@pytest.fixture(scope="module")
def models():
    m = load_models()
    for n in ("cnn", "dqn"):
        online = m.experts[n].online.model_copy(update={"cadence_s": 0.3, "replay_bars": 500, "val_bars": 60,
                                                        "batch_size": 32, "lr": 1e-3})
        m.experts[n] = m.experts[n].model_copy(update={"device": "cpu", "online": online})
    return m


@pytest.fixture(scope="module")
def builder(models) -> FeatureBuilder:
    return FeatureBuilder(models.features, "1m")


@pytest.fixture(scope="module")
def live_rows(builder, candles):
    """Feature rows of the bars after the store's end, as the decision path builds them."""
    return builder.build_many(candles, symbol=KEY.symbol, rows=slice(STORED, STORED + FED))


def test_labels_reach_trainers_only_after_maturing(builder, candles) -> None:
    h, val_bars = 5, 30
    rows = builder.build_many(candles, symbol=KEY.symbol, rows=slice(STORED - 120, STORED))
    buf = FeedBuffer(builder.spec, 60_000, capacity=val_bars + 2 * h + 64)
    full_labels = make_labels(candles["close"].to_numpy()[STORED - 120 : STORED], h, DZ)
    released = np.iinfo(np.int64).min
    sent_ts: list[int] = []
    for i in range(len(rows)):
        buf.append(rows.take(slice(i, i + 1)), np.array([np.nan]))
        idx, y, fwd = buf.matured(h, DZ)
        ts = buf.ts[: buf.n]
        # a label exists only once the bar h later has been fed: never earlier
        if len(idx):
            assert ts[idx[-1]] + h * 60_000 <= ts[buf.n - 1]
            k = np.searchsorted(rows.ts, ts[idx])
            assert np.array_equal(y, full_labels[k])  # the offline label rule, on the same bars
            np.testing.assert_allclose(fwd, np.log(rows.close[k + h] / rows.close[k]))
        send, val = split_release(ts, idx, h, 60_000, val_bars, released)
        assert len(np.intersect1d(send, val)) == 0
        if len(send):
            # released samples' label spans end at or before the first validation sample
            assert ts[send[-1]] + h * 60_000 <= ts[val[0]]
            released = int(ts[send[-1]])
            sent_ts += ts[send].tolist()
    assert sent_ts == sorted(set(sent_ts))  # each sample is sent once, in time order
    assert len(sent_ts) == len(rows) - 2 * h - val_bars + 1  # all but the validation window + gap


def test_trainer_never_trains_on_its_validation_window(models, builder, candles) -> None:
    h, val_bars = 5, 60
    rows = builder.build_many(candles, symbol=KEY.symbol, rows=slice(STORED - 400, STORED))
    close = candles["close"].to_numpy()[STORED - 400 : STORED]
    y = make_labels(close, h, DZ)
    fwd = np.log(close[h:] / close[:-h])
    n = len(rows) - h  # rows whose label matured inside this slice

    def part(a: int, b: int) -> dict:
        return {"ts": rows.ts[a:b], "close": rows.close[a:b], "windows": rows.windows[a:b], "flat": rows.flat[a:b],
                "regime": rows.regime[a:b], "labels": y[a:b], "fwd": fwd[a:b], "position": np.full(b - a, np.nan)}

    cfg = models.experts["cnn"]
    spec = TrainerSpec(name="cnn", expert_cfg=cfg, features=models.features, base_timeframe="1m", dead_zone=DZ,
                       online=cfg.online.model_copy(update={"val_bars": val_bars}), checkpoint_dir="", run_dir=None)
    torch.manual_seed(0)
    ex = build_expert("cnn", cfg, builder.spec)
    seen: list[int] = []
    step = ex.train_step
    ex.train_step = lambda b, yy, rr: (seen.extend(b.ts.tolist()), step(b, yy, rr))[1]
    data = _TrainData(1000)
    rng = np.random.default_rng(0)
    for a, b in ((0, n - 40), (n - 40, n)):  # two rounds: new matured rows arrive in between
        data.add(part(a, b))
        n_train, val = data.split(h, 60_000, val_bars)
        val_ts = data.d["ts"][val]
        assert len(val) == val_bars and np.array_equal(val_ts, rows.ts[b - val_bars : b])
        _train_round(ex, data, n_train, spec, builder.spec, rng)
        assert seen and max(seen) + h * 60_000 <= val_ts[0]  # label spans end before the window
    assert not set(seen) & set(rows.ts[n - val_bars : n].tolist())


def test_dqn_learns_from_realised_positions(models, builder, candles) -> None:
    cfg = models.experts["dqn"].model_copy(update={"params": {**models.experts["dqn"].params, "n_step": 1}})
    dqn = build_expert("dqn", cfg, builder.spec)
    rows = builder.build_many(candles, symbol=KEY.symbol, rows=slice(STORED - 200, STORED))
    # a spot position path (long or flat) from a past-only rule on the real closes
    past = np.concatenate([[0.0], np.diff(np.log(rows.close))])
    position = (past > 0).astype(np.float64)
    n = dqn.push_experience(rows, position, 60_000)
    pidx = (np.sign(position) + 1).astype(int)
    before, after = pidx[:-2], pidx[1:-1]  # bar j: held after bar j-1's decision -> after bar j's
    keep = ~((before == 2) & (after == 1))  # long -> flat has no DQN action: skipped
    assert n == int(keep.sum()) == dqn.buffer.n > 0
    ret = np.log(rows.close[2:] / rows.close[1:-1])  # bar j earns close[j] -> close[j+1]
    fee = dqn.params.fee_bps / 1e4
    want = POSITIONS[after] * ret - fee * np.abs(POSITIONS[after] - POSITIONS[before])
    np.testing.assert_allclose(dqn.buffer.r[:n], (want[keep] * dqn.params.reward_scale).astype(np.float32),
                               rtol=1e-5)
    assert np.array_equal(dqn.buffer.p[:n], before[keep]) and np.array_equal(dqn.buffer.p2[:n], after[keep])
    s = dqn.states(rows)
    np.testing.assert_array_equal(dqn.buffer.s[:n], s[1:-1][keep])


def _state_becomes(pid: int, states: str, timeout: float = 5.0) -> bool:
    """Whether /proc says process ``pid`` is in one of ``states`` (R running, S sleeping, T stopped)
    within ``timeout`` s (a signal takes effect asynchronously)."""
    end = time.monotonic() + timeout
    while True:
        with open(f"/proc/{pid}/stat") as f:
            if f.read().rsplit(")", 1)[1].split()[0] in states:
                return True
        if time.monotonic() > end:
            return False
        time.sleep(0.005)


def _wait(cond, timeout: float, mgr: TrainingManager, feed=None) -> None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        mgr.poll(apply=True)
        if feed is not None:
            feed()
        if cond():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s; status {mgr.status()}")


def test_trainer_process_trains_restarts_after_sigkill_and_stops(models, builder, candles, live_rows,
                                                                tmp_path) -> None:
    store = MarketStore(":memory:")
    store.upsert_candles(KEY, candles.iloc[:STORED])
    torch.manual_seed(0)
    live = {"cnn": build_expert("cnn", models.experts["cnn"], builder.spec)}
    mgr = TrainingManager(store, models, builder, live, key=KEY, dead_zone=DZ,
                          models_dir=tmp_path / "models", runs_dir=tmp_path / "runs", reserve_cpus=1)
    try:
        with pytest.raises(KeyError, match="no trainable expert"):
            mgr.start("kronos")
        mgr.start("cnn")
        st = mgr.status()["cnn"]
        assert st.running and st.pid is not None and st.restarts == 0
        first_pid = st.pid
        # it yields to the decision path: SCHED_IDLE, and off the reserved CPU when there is a spare one
        cpus = sorted(os.sched_getaffinity(0))
        _wait(lambda: os.sched_getscheduler(first_pid) == os.SCHED_IDLE, 60, mgr)
        assert os.sched_getaffinity(first_pid) == (set(cpus[1:]) if len(cpus) > 1 else set(cpus))
        # Ctrl-C reaches the whole process group; the trainer leaves stopping to the manager
        os.kill(first_pid, signal.SIGINT)
        time.sleep(0.5)
        assert os.waitpid(first_pid, os.WNOHANG) == (0, 0) and mgr.status()["cnn"].restarts == 0
        # it trains on its replay history, publishes, and the checkpoint gets judged
        _wait(lambda: mgr.status()["cnn"].steps > 0 and mgr.status()["cnn"].last_verdict != "", 120, mgr)
        st = mgr.status()["cnn"]
        assert st.samples_per_s > 0 and np.isfinite(st.loss) and st.last_publish is not None
        # judged in the trainer process on its withheld window (60 seeded validation samples)
        assert np.isfinite(st.challenger_score) and np.isfinite(st.champion_score)
        assert list((tmp_path / "runs" / "online" / "cnn").glob("*/events.out.tfevents.*"))
        # every published round is a point of the live loss curve
        hist = st.history
        assert len(hist) >= 1 and all(np.isfinite(p.loss) and p.steps > 0 for p in hist)
        assert hist[-1].version.startswith("online-") and hist[-1].val_challenger == st.challenger_score
        assert [p.ts_ms for p in hist] == sorted(p.ts_ms for p in hist)

        # the decision path freezes running trainers for its milliseconds and resumes them after;
        # a held trainer stays frozen through decisions until released
        with mgr.deciding():
            assert _state_becomes(first_pid, "T")
        assert _state_becomes(first_pid, "RS")
        mgr.hold("cnn")
        with mgr.deciding():
            pass
        assert _state_becomes(first_pid, "T") and not _state_becomes(first_pid, "RS", 0.3)
        mgr.hold("cnn", False)
        assert _state_becomes(first_pid, "RS")

        # live bars: their samples reach the trainer once matured and outside the validation window
        sent = sum(mgr.feed(live_rows.take(slice(i, i + 1)), position=0.0) for i in range(20))
        assert sent > 0

        # SIGKILL mid-training: the caller keeps feeding/deciding; the trainer comes back with back-off
        os.kill(first_pid, signal.SIGKILL)
        fed = iter(range(20, FED))
        decisions = []

        def keep_trading() -> None:
            i = next(fed, None)
            if i is not None:
                row = live_rows.take(slice(i, i + 1))
                decisions.append(live["cnn"].predict(row))  # the decision path is unaffected
                mgr.feed(row, position=0.0)

        _wait(lambda: mgr.status()["cnn"].restarts == 1, 30, mgr, keep_trading)
        assert "exited with code -9" in mgr.status()["cnn"].error
        # the new process publishes too; the curve keeps the rounds from before the restart
        _wait(lambda: mgr.status()["cnn"].running and mgr.status()["cnn"].pid not in (None, first_pid)
              and len(mgr.status()["cnn"].history) > len(hist), 120, mgr, keep_trading)
        assert len(decisions) > 0
        second_pid = mgr.status()["cnn"].pid
        assert mgr.status()["cnn"].history[: len(hist)] == hist

        # the engine's stop does not wait for the process: here it is frozen (SIGSTOP) so it cannot
        # obey "stop"; poll() escalates to SIGTERM after the timeout, then SIGKILL, and reaps it
        os.kill(second_pid, signal.SIGSTOP)
        mgr.stop("cnn", timeout=0.5, wait=False)
        st = mgr.status()["cnn"]
        assert not st.running and st.pid is None and st.restarts == 1
        assert os.waitpid(second_pid, os.WNOHANG) == (0, 0)  # not waited for: still there, frozen
        _wait(lambda: not mgr._retiring, 30, mgr)
        with pytest.raises(ChildProcessError):  # reaped: no such child any more
            os.waitpid(second_pid, os.WNOHANG)

        # a blocking stop (shutdown's) returns with the process gone
        mgr.start("cnn")
        third_pid = mgr.status()["cnn"].pid
        assert third_pid not in (None, second_pid)
        mgr.stop("cnn")
        assert mgr.status()["cnn"].pid is None
        with pytest.raises(ChildProcessError):
            os.waitpid(third_pid, os.WNOHANG)
    finally:
        mgr.shutdown()


def test_trainer_reports_its_error_before_dying(models) -> None:
    # hand-written bad input: an unknown message kind; the trainer loop runs right here (no process)

    cfg = models.experts["cnn"]
    spec = TrainerSpec(name="cnn", expert_cfg=cfg, features=models.features, base_timeframe="1m", dead_zone=DZ,
                       online=cfg.online, checkpoint_dir="", run_dir=None, nice=0, sched_idle=False)
    inbox, outbox = queue.Queue(), queue.Queue()
    inbox.put(("bogus", None))
    with pytest.raises(ValueError, match="unknown message 'bogus'"):
        trainer_main(spec, inbox, outbox)
    msgs = []
    while not outbox.empty():
        msgs.append(outbox.get_nowait())
    assert msgs[0][0] == "status" and msgs[-1][0] == "error" and "unknown message 'bogus'" in msgs[-1][1]


def test_trainer_cpus_keep_the_reserved_cpus_for_the_engine() -> None:
    assert trainer_cpus(1, {0, 1}) == (1,)
    assert trainer_cpus(2, {0, 1, 2, 3}) == (2, 3)
    assert trainer_cpus(1, {5, 3, 4}) == (4, 5)  # the lowest-numbered available ones are reserved
    assert trainer_cpus(0, {0, 1}) is None  # no reservation: no pinning
    assert trainer_cpus(1, {0}) is None  # one CPU: pinning would leave trainers nothing
