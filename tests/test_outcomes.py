"""Outcome tracking on real BTC/USDT 1m candles (../shared/data) with real (untrained, seeded) CNN and
DQN outputs written through core/audit.py: outcomes mature only once ts + horizon bars are stored
(no look-ahead), realised returns/classes equal the training labels, rolling metrics equal
NN.calibration.scores, and the in-memory LiveOutcomes agrees with the stored tracker."""

from __future__ import annotations

from dataclasses import astuple
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from core.audit import AuditWriter
from core.config import load_models
from core.data.files import load_file as load_candles
from core.data.store import MarketStore
from core.features import FeatureBuilder
from core.labels import make_labels
from core.orchestrator import decide
from core.outcomes import MOE, LiveOutcomes, OutcomeTracker
from core.scoring import scores
from core.types import Decision, ExpertOutput, SeriesKey, Thresholds
from NN.experts.registry import build_expert

torch.set_num_threads(1)

N_BARS = 600
FIRST_STORE = 400  # candles stored before the first update
DZ = 0.002
KEY = SeriesKey("binanceus", "BTC/USDT", "1m")
H = {"cnn": 5, "dqn": 3}
THRESH = Thresholds(buy=0.3, sell=0.3)  # near-uniform untrained nets still trade both ways


@pytest.fixture(scope="module")
def world(shared_data: Path):
    """(candles, first decision index, decisions) from real features and real expert outputs."""
    candles = load_candles(shared_data / "binanceus" / "BTC_USDT-1m.csv").iloc[:N_BARS].reset_index(drop=True)
    m = load_models()
    builder = FeatureBuilder(m.features, "1m")
    first = builder.min_history - 1
    batch = builder.build_many(candles, symbol=KEY.symbol, rows=slice(first, None))
    probs = {}
    for name, h in H.items():
        torch.manual_seed(0)
        cfg = m.experts[name].model_copy(update={"device": "cpu", "horizon": h})
        probs[name] = build_expert(name, cfg, batch.spec).predict_many(batch).probs
    decisions = []
    for j, ts in enumerate(batch.ts):
        outs = tuple(ExpertOutput(n, "v0", KEY.symbol, int(ts), H[n], tuple(map(float, probs[n][j])), 0.0, 0.5, 0.1)
                     for n in H)
        fused = np.mean([probs[n][j] for n in H], axis=0)
        decisions.append(Decision(id=f"t:{int(ts)}", ts=int(ts), symbol=KEY.symbol, action=decide(fused, THRESH),
                                  probs=tuple(map(float, fused)), expected_return=0.0,
                                  weights={n: 0.5 for n in H}, thresholds=THRESH, target_position=0.0,
                                  reason="", outputs=outs))
    return candles, first, decisions


def stored_run(candles: pd.DataFrame, first: int, decisions: list[Decision], upto: int, store=None,
               window: int = 500) -> tuple[MarketStore, OutcomeTracker]:
    """Store candles [0, upto) and the decisions of those bars, as the engine would have."""
    store = store or MarketStore(":memory:")
    store.upsert_candles(KEY, candles.iloc[:upto])
    audit = AuditWriter(store, "t")
    for d in decisions:
        if d.ts <= int(candles["ts"].iloc[upto - 1]):
            audit.add(d)
    audit.flush()
    return store, OutcomeTracker(store, KEY, DZ, window=window)


def test_outcomes_mature_only_after_horizon_and_equal_labels(world) -> None:
    candles, first, decisions = world
    close, ts = candles["close"].to_numpy(), candles["ts"].to_numpy()
    store, tracker = stored_run(candles, first, decisions, FIRST_STORE)
    n = tracker.update()
    out = tracker.outcomes()
    assert n == len(out) > 0
    for name, h in [*H.items(), (MOE, min(H.values()))]:
        got = out[out.expert == name].sort_values("ts")
        due = np.arange(first, FIRST_STORE - h)  # bars i with i + h stored: nothing later
        assert np.array_equal(got["ts"].to_numpy(), ts[due]), name
        assert (got["horizon"] == h).all()
        np.testing.assert_allclose(got["realised_return"], np.log(close[due + h] / close[due]), rtol=0, atol=1e-12)
        labels = make_labels(close, h, DZ)  # the training label rule on the full series
        assert np.array_equal(got["realised_class"].to_numpy(), labels[due]), name
        assert np.array_equal(got["exit_ts"].to_numpy(), ts[due + h])
    assert tracker.update() == 0  # nothing new is due: idempotent

    # the rest of the bars arrive (and their decisions); everything whose horizon passed matures once
    store.upsert_candles(KEY, candles.iloc[FIRST_STORE:])
    audit = AuditWriter(store, "t")
    for d in decisions:
        if d.ts > int(ts[FIRST_STORE - 1]):
            audit.add(d)
    audit.flush()
    tracker.update()
    out = tracker.outcomes()
    assert not out.duplicated(["decision_id", "expert"]).any()
    for name, h in H.items():
        assert (out.expert == name).sum() == N_BARS - h - first


def test_incremental_updates_equal_one_full_scan_and_see_late_older_rows(world) -> None:
    # the engine's rhythm: 25 bars stored (and decided) between updates; after the first scan the
    # tracker reads only from its watermark on, and must still end with exactly the one-shot result
    candles, first, decisions = world
    window = 150
    store, tracker = stored_run(candles, first, decisions, first + 30, window=window)
    audit = AuditWriter(store, "t")
    stored = first + 30
    for upto in [*range(stored + 25, N_BARS, 25), N_BARS]:
        prev = int(candles["ts"].iloc[stored - 1])
        store.upsert_candles(KEY, candles.iloc[stored:upto])
        for d in decisions:
            if prev < d.ts <= int(candles["ts"].iloc[upto - 1]):
                audit.add(d)
        audit.flush()
        tracker.update()
        stored = upto
    assert tracker.full_scans == 1  # steady state never rescans the audit trail
    _, oneshot = stored_run(candles, first, decisions, N_BARS, window=window)
    oneshot.update()
    cols = ["decision_id", "expert", "ts", "horizon", "exit_ts", "realised_class", "driven"]
    a, b = tracker.outcomes()[cols], oneshot.outcomes()[cols]
    pd.testing.assert_frame_equal(a.reset_index(drop=True), b.reset_index(drop=True))
    # the in-memory windows equal the window query (NaN mean trade return where nothing traded)
    assert set(tracker.metrics()) == set(oneshot.metrics())
    for k, m in tracker.metrics().items():
        assert astuple(m) == pytest.approx(astuple(oneshot.metrics()[k]), nan_ok=True), k

    # another run writes older rows below the watermark (an event-mode backtest's audit trail): the
    # count check notices them and one full scan matures them too
    late = AuditWriter(store, "backtest")
    for d in decisions[:100]:
        late.add(d)
    late.flush()
    n = tracker.update()
    assert tracker.full_scans == 2 and n == len(oneshot.outcomes().query("ts <= @decisions[99].ts"))
    assert tracker.update() == 0 and tracker.full_scans == 2


def test_rolling_metrics_equal_scores_and_trade_returns(world) -> None:
    candles, first, decisions = world
    window = 120
    _, tracker = stored_run(candles, first, decisions, N_BARS, window=window)
    tracker.update()
    out = tracker.outcomes()
    metrics = tracker.metrics()
    assert set(metrics) == {("cnn", 5), ("dqn", 3), (MOE, 3)}
    for (name, h), m in metrics.items():
        g = out[out.expert == name].sort_values("ts").iloc[-window:]
        p = g[["p_down", "p_flat", "p_up"]].to_numpy()
        s = scores(p, g["realised_class"].to_numpy())
        assert m.n == window and m.horizon == h and m.last_ts == int(g["ts"].max())
        assert m.accuracy == pytest.approx(s["accuracy"]) and m.log_loss == pytest.approx(s["log_loss"])
        assert m.brier == pytest.approx(s["brier"]) and m.ece == pytest.approx(s["ece"])
        direction = np.where(g["action"] == "BUY", 1.0, np.where(g["action"] == "SELL", -1.0, 0.0))
        top = p.argmax(axis=1)
        drove = (direction != 0) if name == MOE else (((direction > 0) & (top == 2)) | ((direction < 0) & (top == 0)))
        assert m.trades == int(drove.sum())
        if name != "cnn":  # the untrained CNN always favours "flat": it drives no trade
            assert m.trades > 0
        assert m.trade_return == pytest.approx(float((direction * g["realised_return"].to_numpy())[drove].sum()))


def test_live_outcomes_agree_with_the_store(world) -> None:
    candles, first, decisions = world
    _, tracker = stored_run(candles, first, decisions, N_BARS, window=200)
    tracker.update()
    stored = tracker.outcomes().set_index(["expert", "ts"])
    live = LiveOutcomes("1m", DZ, window=200)
    by_ts = {d.ts: d for d in decisions}
    matured = []
    for ts, c in zip(candles["ts"], candles["close"], strict=True):
        matured += live.on_close(int(ts), float(c))  # the bar closes, then its decision is taken
        if int(ts) in by_ts:
            live.add(by_ts[int(ts)])
    assert len(matured) == len(stored)
    for m in matured:
        row = stored.loc[(m.expert, m.ts)]
        assert m.realised_class == row["realised_class"] and m.realised_return == pytest.approx(row["realised_return"])
    for key, m in tracker.metrics().items():
        lm = live.metrics()[key]
        assert (lm.n, lm.trades) == (m.n, m.trades)
        assert lm.log_loss == pytest.approx(m.log_loss) and lm.accuracy == pytest.approx(m.accuracy)
    # a bar can only mature predictions made at least h bars before it
    assert all(m.ts + m.horizon * 60_000 <= int(candles["ts"].iloc[-1]) for m in matured)


def test_gap_matures_as_of_the_last_close(world) -> None:
    # edge case on real candles: one stored candle deliberately removed (a gap in the data)
    candles, first, decisions = world
    j = first + 40
    holed = candles.drop(index=j).reset_index(drop=True)
    store = MarketStore(":memory:")
    store.upsert_candles(KEY, holed)
    audit = AuditWriter(store, "t")
    for d in decisions:
        audit.add(d)
    audit.flush()
    tracker = OutcomeTracker(store, KEY, DZ)
    tracker.update()
    out = tracker.outcomes().set_index(["expert", "ts"])
    ts, close = candles["ts"].to_numpy(), candles["close"].to_numpy()
    row = out.loc[("cnn", int(ts[j - 5]))]  # its exit bar is the missing one
    assert row["exit_ts"] == ts[j - 1] and row["exit_close"] == close[j - 1]
    assert ("cnn", int(ts[j])) not in out.index  # no entry candle: nothing to measure from
    live = LiveOutcomes("1m", DZ)
    got = []
    by_ts = {d.ts: d for d in decisions}
    for t, c in zip(holed["ts"], holed["close"], strict=True):
        got += live.on_close(int(t), float(c))
        if int(t) in by_ts:
            live.add(by_ts[int(t)])
    m = next(m for m in got if m.expert == "cnn" and m.ts == int(ts[j - 5]))
    assert m.realised_return == pytest.approx(np.log(close[j - 1] / close[j - 5]))


def test_bad_inputs_are_refused() -> None:
    # hand-written edge cases: a negative dead zone and a non-positive close
    with pytest.raises(ValueError, match="dead_zone"):
        LiveOutcomes("1m", -0.1)
    with pytest.raises(ValueError, match="close of bar"):
        LiveOutcomes("1m", 0.0).on_close(0, 0.0)
    with pytest.raises(ValueError, match="timeframe"):
        LiveOutcomes("7m", 0.0)


def test_stored_outcomes_count_session_bars_for_stocks(shared_data: Path) -> None:
    """Real AMZN RTH minutes: a 5-bar call made at 15:58 ET matures at the next session's 09:33 ET (5
    stored session bars later, not 5 clock minutes), only once that bar is stored, and agrees with the
    in-memory LiveOutcomes on the same calendar. The calls themselves are hand-written (HOLD, flat
    probabilities); the closes are the real ones."""
    from core.data.clean import clean_candles
    from core.market import SessionCalendar

    cal = SessionCalendar("XNYS", "rth")
    raw = load_candles(shared_data / "stocks" / "AMZN-1m-alpaca-2025-01-13_2025-01-17.csv")
    bars = clean_candles(raw, "1m", cal).candles.reset_index(drop=True)
    key = SeriesKey("alpaca", "AMZN", "1m")
    et = pd.to_datetime(bars["ts"], unit="ms", utc=True).dt.tz_convert("America/New_York")
    day1 = et.dt.date == et.dt.date.iloc[0]
    i = int(np.flatnonzero(day1 & (et.dt.strftime("%H:%M") == "15:58"))[0])
    ts = bars["ts"].to_numpy(np.int64)
    close = bars["close"].to_numpy(np.float64)
    calls = [i - 20, i]  # one that matures inside the session, one across the night
    decisions = [Decision(id=f"s:{int(ts[k])}", ts=int(ts[k]), symbol="AMZN", action=decide((0.3, 0.4, 0.3), THRESH),
                          probs=(0.3, 0.4, 0.3), expected_return=0.0, weights={"cnn": 1.0}, thresholds=THRESH,
                          target_position=0.0, reason="",
                          outputs=(ExpertOutput("cnn", "v0", "AMZN", int(ts[k]), 5, (0.3, 0.4, 0.3), 0.0, 0.5, 0.1),))
                 for k in calls]
    store = MarketStore(":memory:")
    audit = AuditWriter(store, "s")
    for d in decisions:
        audit.add(d)
    audit.flush()
    tracker = OutcomeTracker(store, key, DZ, sessions=True)
    store.upsert_candles(key, bars.iloc[:i + 3])  # 15:58, 15:59, then the next session's 09:30
    tracker.update()
    got = tracker.outcomes("cnn").set_index("ts")
    assert list(got.index) == [int(ts[i - 20])]  # the night call has not matured on the first day's bars
    assert got.loc[int(ts[i - 20]), "exit_ts"] == ts[i - 15]
    store.upsert_candles(key, bars.iloc[i + 3:i + 6])  # 09:31, 09:32, 09:33
    tracker.update()
    got = tracker.outcomes("cnn").set_index("ts")
    row = got.loc[int(ts[i])]
    assert et.iloc[i + 5].strftime("%H:%M") == "09:33" and et.iloc[i + 5].date() > et.iloc[i].date()
    assert row["exit_ts"] == ts[i + 5] and row["realised_return"] == pytest.approx(np.log(close[i + 5] / close[i]))
    # the in-memory tracker on the same calendar agrees
    live = LiveOutcomes("1m", DZ, calendar=cal)
    matured = []
    for k in range(i + 6):
        matured += live.on_close(int(ts[k]), float(close[k]))
        if k in calls:
            live.add(decisions[calls.index(k)])
    m = next(x for x in matured if x.expert == "cnn" and x.ts == int(ts[i]))
    assert m.realised_return == pytest.approx(row["realised_return"])
