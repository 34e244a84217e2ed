"""Orchestrator: decision rule, runtime thresholds, failing experts, audit trail, matured-only gate
updates, checkpoint hot-swap. Real BTC/USDT 1m candles from ../shared/data drive freshly seeded
(untrained) experts; hand-written inputs are used only for the pure rule's edge cases and for the
deliberately broken expert, as marked."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import tiny_kronos_dir

from core.config import ModelsConfig, load_models
from core.data.files import load_file
from core.data.provider import DataProvider
from core.data.store import MarketStore
from core.features import FeatureBuilder
from core.labels import realised_class
from core.orchestrator import BUY, HOLD, SELL, GateRunner, Orchestrator, decide, decide_codes
from core.types import Action, SeriesKey, Thresholds
from NN.experts.registry import build_expert
from NN.moe import MoEGate

torch.set_num_threads(1)
KEY = SeriesKey("binanceus", "BTC/USDT", "1m")


@pytest.fixture(scope="module")
def candles(shared_data) -> pd.DataFrame:
    return load_file(shared_data / "binanceus" / "BTC_USDT-1m.csv").iloc[:260].reset_index(drop=True)


def small_models() -> ModelsConfig:
    m = load_models()
    feats = m.features.model_copy(update={"timeframes": ["1m", "5m"], "window": 16, "norm_window": 100})
    return m.model_copy(update={"features": feats})


def make_orch(store=None, names=("cnn", "dqn"), **kw) -> Orchestrator:
    models = small_models()
    builder = FeatureBuilder(models.features, "1m")
    experts = {n: build_expert(n, models.experts[n], builder.spec) for n in names}
    extra = kw.pop("experts", {})
    experts.update(extra)
    gate = MoEGate(list(experts), models.moe, len(builder.spec.regime_features))
    return Orchestrator(experts, gate, builder, kw.pop("thresholds", Thresholds()), store, None,
                        "BTC/USDT", "1m", slow_async=False, **kw)


def replay(orch: Orchestrator, candles: pd.DataFrame, on_decision=None) -> list:
    """Feed candles one by one through a real DataProvider; returns the decisions."""
    prov = DataProvider(None, "1m", list(orch.builder.timeframes), cache_bars=len(candles) + 1,
                        exchange=KEY.exchange)
    out: list = []
    errors: list = []

    def cb(ev):
        try:
            frames = {tf: prov.snapshot("BTC/USDT", tf) for tf in orch.builder.timeframes}
            d = orch.on_candle(ev, frames)
            if d is not None:
                out.append(d)
                if on_decision:
                    on_decision(len(out), d)
        except Exception as exc:  # the provider swallows subscriber errors; the test must not
            errors.append(exc)

    prov.subscribe(cb, symbols=["BTC/USDT"], timeframes=["1m"])
    for i in range(len(candles)):
        prov.ingest(KEY, candles.iloc[i:i + 1])
    if errors:
        raise errors[0]
    return out


# ---------------------------------------------------------------- the pure rule (hand-written edges)


def test_decide_rule_edges():
    t = Thresholds(buy=0.6, sell=0.6, min_confidence=0.2)
    assert decide((0.1, 0.3, 0.6), t, 0.2) is Action.BUY  # both limits inclusive
    assert decide((0.1, 0.3, 0.6), t, 0.19) is Action.HOLD  # not confident enough
    assert decide((0.6, 0.3, 0.1), t, 0.5) is Action.SELL
    assert decide((0.3, 0.4, 0.3), t, 0.9) is Action.HOLD
    low = Thresholds(buy=0.3, sell=0.3)
    assert decide((0.45, 0.1, 0.45), low, 1.0) is Action.HOLD  # both fire, tie -> hold
    assert decide((0.40, 0.1, 0.50), low, 1.0) is Action.BUY  # both fire, larger wins
    codes = decide_codes(np.array([[0.1, 0.3, 0.6], [0.7, 0.2, 0.1], [0.3, 0.4, 0.3]]),
                         np.array([1.0, 1.0, 1.0]), Thresholds(0.6, 0.6))
    assert codes.tolist() == [BUY, SELL, HOLD]
    with pytest.raises(ValueError, match="buy"):
        Thresholds(buy=1.5)


def test_realised_class_dead_zone():
    assert realised_class(0.003, 0.002) == 2
    assert realised_class(-0.003, 0.002) == 0
    assert realised_class(0.001, 0.002) == 1


# ---------------------------------------------------------------- on real candles


def test_thresholds_change_applies_to_next_decision(candles):
    orch = make_orch()
    seen = []

    def on_decision(k, d):
        seen.append(d)
        if k == 20:  # everything buys from the next decision on
            orch.set_thresholds(Thresholds(buy=0.0, sell=1.0, min_confidence=0.0))
        if k == 40:  # nothing can pass any more
            orch.set_thresholds(Thresholds(buy=1.0, sell=1.0, min_confidence=1.0))

    decisions = replay(orch, candles, on_decision)
    assert len(decisions) == len(candles) - orch.builder.min_history + 1
    assert all(d.thresholds == Thresholds() for d in decisions[:20])
    assert all(d.action is Action.BUY and d.thresholds.buy == 0.0 for d in decisions[20:40])
    assert all(d.action is Action.HOLD and d.thresholds.buy == 1.0 for d in decisions[40:])
    # BUY sets the long target, HOLD keeps it
    assert decisions[25].target_position == 1.0 and decisions[60].target_position == 1.0


class BrokenExpert:
    """Hand-written test double: an expert whose inference always raises."""

    name = "broken"
    version = "broken-1"
    input_kind = "features"
    horizon = 5

    def predict(self, batch, candles=None):
        raise RuntimeError("weights are corrupt")


def test_failing_expert_is_skipped_and_reported(candles):
    orch = make_orch(experts={"broken": BrokenExpert()})
    decisions = replay(orch, candles.iloc[:140])
    assert decisions, "decisions must go on while an expert fails"
    for d in decisions:
        assert {o.expert for o in d.outputs} == {"cnn", "dqn"}
        assert set(d.weights) - {"climatology"} == {"cnn", "dqn"}  # + the base rate (core/fusion.py)
        assert math.isclose(sum(d.weights.values()), 1.0, rel_tol=1e-9)
    errs = orch.snapshot().errors
    assert errs and errs[-1][1] == "expert:broken" and "weights are corrupt" in errs[-1][2]


def test_disabled_expert_gets_no_weight(candles):
    orch = make_orch()
    orch.set_expert_enabled("dqn", False)
    d = replay(orch, candles.iloc[:120])[-1]
    # the rest goes to the base rate (core/fusion.py); the weights sum to 1
    assert set(d.weights) == {"cnn", "climatology"} and sum(d.weights.values()) == pytest.approx(1.0)
    with pytest.raises(KeyError, match="unknown expert"):
        orch.set_expert_enabled("nope", True)


def test_audit_rows_for_every_decision(candles):
    store = MarketStore(":memory:")
    orch = make_orch(store=store, run_id="audit-test", audit_flush_every=50)
    decisions = replay(orch, candles)
    orch.close()
    dec = store.query_df("SELECT * FROM decisions WHERE run_id = 'audit-test' ORDER BY ts")
    pred = store.query_df("SELECT * FROM predictions WHERE run_id = 'audit-test' ORDER BY ts, expert")
    assert len(dec) == len(decisions)
    assert len(pred) == 2 * len(decisions)  # every expert output of every decision
    assert dec["id"].tolist() == [d.id for d in decisions]
    last = decisions[-1]
    assert all(o.symbol == "BTC/USDT" and o.ts == last.ts for o in last.outputs)
    row = dec.iloc[-1]
    assert row["action"] == str(last.action)
    assert json.loads(row["weights"]) == pytest.approx(last.weights)
    p = pred[pred["decision_id"] == last.id].set_index("expert")
    for o in last.outputs:
        assert p.loc[o.expert, "p_up"] == pytest.approx(o.probs[2])
        assert p.loc[o.expert, "weight"] == pytest.approx(last.weights[o.expert])
        assert p.loc[o.expert, "model_version"] == o.model_version


class RecordingGate:
    """Hand-written test double around the real gate: records what ``observe`` receives."""

    def __init__(self, gate):
        self.gate = gate
        self.observed: list[tuple[np.ndarray, int]] = []
        self.robust = gate.robust

    def fuse(self, probs, regime, enabled=None):
        return self.gate.fuse(probs, regime, enabled)

    def observe(self, probs, realised):
        self.observed.append((np.array(probs), realised))
        self.gate.observe(probs, realised)


def test_gate_sees_only_matured_outcomes(candles):
    models = small_models()
    gate = RecordingGate(MoEGate(["a", "b"], models.moe, 4))
    h, dz = 5, 0.0005
    runner = GateRunner(gate, h, dz)
    close = candles["close"].to_numpy(np.float64)[:60]
    rng_probs = [np.array([[0.2, 0.3, 0.5], [0.5, 0.3, 0.2]]) * (1 + 0.01 * i) for i in range(60)]
    rng_probs = [p / p.sum(axis=1, keepdims=True) for p in rng_probs]
    for i in range(60):
        runner.step(close[i], rng_probs[i], np.zeros(4), np.array([True, True]))
        # after step i the gate has seen exactly the outcomes of bars 0 .. i - h
        assert len(gate.observed) == max(0, i - h + 1)
    for k, (p, realised) in enumerate(gate.observed):
        np.testing.assert_array_equal(p, rng_probs[k])
        assert realised == realised_class(math.log(close[k + h] / close[k]), dz)


def test_checkpoint_hot_swap_between_decisions(candles, tmp_path):
    from core.config import CheckpointPolicy
    from NN.training.checkpoints import CheckpointRegistry

    store = MarketStore(":memory:")
    reg = CheckpointRegistry(store, tmp_path / "models")
    orch = make_orch(registry=reg, swap_every=1)
    cfg = small_models().experts["cnn"]
    donor_cfg = cfg.model_copy(update={"params": {**cfg.params, "seed": 7}})  # other weights
    donor = build_expert("cnn", donor_cfg, orch.builder.spec)
    registered: dict[str, str] = {}

    def on_decision(k, d):
        if k == 10:  # a trainer publishes a better checkpoint while the orchestrator runs
            registered["v"] = reg.register("cnn", donor.state_dict(), 0.5, CheckpointPolicy(), {})
            g = MoEGate(["cnn", "dqn"], small_models().moe, len(orch.builder.spec.regime_features))
            registered["g"] = reg.register("moe", g.state_dict(), 0.4, CheckpointPolicy(), {})

    decisions = replay(orch, candles.iloc[:130], on_decision)
    version = registered["v"]
    cnn = [next(o for o in d.outputs if o.expert == "cnn") for d in decisions]
    assert all(o.model_version == "untrained" for o in cnn[:10])
    assert all(o.model_version == version for o in cnn[10:])  # swapped before decision 11
    assert orch.experts["dqn"].version == "untrained"
    assert orch.gate.version == registered["g"]  # the gate is swapped the same way
    w_run = next(iter(orch.experts["cnn"].state_dict()["net"].values()))
    w_don = next(iter(donor.state_dict()["net"].values()))
    assert torch.equal(w_run, w_don)


# ---------------------------------------------------------------- the engine the dashboard drives


def test_engine_replay_publishes_snapshots_and_obeys_commands(candles, tmp_path):
    import compose
    from core.config import load_config
    from core.engine import ReplayConfig
    from core.snapshot import EngineSnapshot

    cfg = load_config()
    cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"db_path": str(tmp_path / "e.duckdb"),
                                                                     "timeframes": ["1m", "5m"]})})
    models = small_models()
    experts = {n: e.model_copy(update={"enabled": n in ("cnn", "dqn")}) for n, e in models.experts.items()}
    experts["kronos"] = experts["kronos"].model_copy(update={  # a freshly seeded tiny Kronos on its worker
        "enabled": True, "device": "cpu",
        "params": {"model": str(tiny_kronos_dir(tmp_path)), "lookback": 32, "samples": 4, "calibrated": False}})
    models = models.model_copy(update={"experts": experts})
    cfg = cfg.model_copy(update={"orchestrator": cfg.orchestrator.model_copy(update={"kronos_every_bars": 2}),
                                 # this test trades on untrained experts on purpose (the rule: test_first_run.py)
                                 "execution": cfg.execution.model_copy(update={"allow_untrained": True})})
    with MarketStore(cfg.data.db_path) as s:
        s.upsert_candles(KEY, candles.iloc[:150])
    eng = compose.build_engine(cfg, models, replay=ReplayConfig(speed=None))
    assert isinstance(eng.snapshot(), EngineSnapshot) and eng.snapshot().decision is None
    eng.set_thresholds(Thresholds(buy=0.0, sell=1.0))  # before start: applied to the first decision
    eng.start()
    try:
        assert eng.wait_idle(60)
        snap = eng.snapshot()
        n_dec = 150 - eng.builder.min_history + 1
        assert snap.mode == "replay" and snap.running and len(snap.recent_decisions) == n_dec
        assert snap.decision.action is Action.BUY and snap.thresholds.buy == 0.0
        assert snap.decision.target_position == cfg.risk.fraction  # RiskManager sizing of a BUY
        assert set(snap.experts) == {"cnn", "dqn", "kronos"} and not snap.experts["cnn"].trained
        assert snap.experts["kronos"].input_kind == "candles"
        # the worker's freshest forecast took part in decisions, and the snapshot summarises it
        assert any("kronos" in d.weights for d in snap.recent_decisions)
        k = snap.kronos
        assert k is not None and k.bands["q10"][1] <= k.median[1] <= k.bands["q90"][1]
        assert k.future_ts[1] - k.future_ts[0] == 5 * 60_000 and k.median[0] > 0
        assert len(snap.candles["1m"]) == 150 and len(snap.candles["5m"]) == 30
        assert len(snap.trades) >= 1 and snap.trades[0].side == "buy"  # BUY at bar k fills at k+1's open
        assert len(snap.positions) == 1 and snap.positions[0].amount > 0
        assert len(snap.equity) == 150 and "drawdown" in snap.equity
        assert set(snap.inference_latency_ms) >= {"cnn", "dqn", "total"}
        # the Live page's threshold preview counts what `decide` does over the cached decisions
        from core.audit import decision_confidence
        from web.experts_api import experts_json
        from web.pages.live import live_threshold_preview
        prev = live_threshold_preview(snap)
        assert prev is not None and prev["n_bars"] == n_dec
        for i, b in enumerate(prev["buy"][::6]):
            for j, sl in enumerate(prev["sell"][::6]):
                t = Thresholds(buy=b, sell=sl, min_confidence=snap.thresholds.min_confidence)
                acts = [decide(d.probs, t, decision_confidence(d)) for d in snap.recent_decisions]
                assert prev["n_buy"][6 * i][6 * j] == sum(a is Action.BUY for a in acts)
                assert prev["n_sell"][6 * i][6 * j] == sum(a is Action.SELL for a in acts)
        rows = {r["name"]: r for r in experts_json(snap)}
        assert rows["cnn"]["ood"] is None  # untrained: no training statistics, no OOD score
        eng.set_expert_enabled("dqn", False)
        eng.wait_idle(10)
        assert eng.snapshot().experts["dqn"].enabled is False
        pred = eng.generate_prediction()
        assert pred.ts == int(candles["ts"].iloc[149]) and set(pred.weights) - {"climatology"} == {"cnn", "kronos"}
        with pytest.raises(ValueError, match="unknown expert"):
            eng.set_expert_enabled("nope", True)
    finally:
        eng.stop()
    assert not eng.snapshot().running
