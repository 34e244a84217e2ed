"""Live training wired into the Engine, on a paced replay of real BTC/USDT 1m candles (../shared/data):
a trainer process started through Engine.set_training trains the live CNN, its promotion is hot-swapped
between two decisions and the predictions audit rows carry the new model_version from the next bar on;
the engine keeps deciding while the trainer is SIGKILLed (restarted, status counts it); set_training
(and PATCH /api/experts/<name>) starts/stops the process; a disabled engine / unknown expert / candle expert is refused."""

from __future__ import annotations

import os
import signal
import time

import pandas as pd
import pytest
import torch
from helpers import api_client, tiny_kronos_dir

from core.config import AppConfig, ModelsConfig, Secrets, load_config, load_models
from core.data.files import load_file
from core.data.store import MarketStore
from core.types import SeriesKey
from NN.training.checkpoints import CheckpointRegistry
from web.app import create_app

torch.set_num_threads(1)
KEY = SeriesKey("binanceus", "BTC/USDT", "1m")
HISTORY = 1200  # stored bars before the replay starts (the trainer's replay history)
REPLAY = 3000  # replayed bars: paced so the replay outlasts spawn + a promotion on a busy machine
SPEED = 2000.0  # x real time: a 1m bar every 30 ms


@pytest.fixture(scope="module")
def candles(shared_data) -> pd.DataFrame:
    return load_file(shared_data / "binanceus" / "BTC_USDT-1m.csv").iloc[: HISTORY + REPLAY].reset_index(drop=True)


def configs(tmp_path, training_enabled: bool = True) -> tuple[AppConfig, ModelsConfig]:
    cfg = load_config()
    cfg = cfg.model_copy(update={
        "data": cfg.data.model_copy(update={"db_path": str(tmp_path / "e.duckdb"), "timeframes": ["1m", "5m"]}),
        "training": cfg.training.model_copy(update={"enabled": training_enabled,
                                                    "models_dir": str(tmp_path / "models"),
                                                    "runs_dir": str(tmp_path / "runs")})})
    m = load_models()
    feats = m.features.model_copy(update={"timeframes": ["1m", "5m"], "window": 16, "norm_window": 100})
    experts = {}
    for n, e in m.experts.items():
        # tiny rounds on a short validation window; margin 0: any lower validation log loss promotes
        online = e.online.model_copy(update={"cadence_s": 0.5, "replay_bars": 600, "val_bars": 60,
                                             "batch_size": 32, "lr": 1e-3, "promote_margin": 0.0,
                                             "promote_z": 0.0})
        experts[n] = e.model_copy(update={"enabled": n in ("cnn", "dqn"), "device": "cpu", "online": online})
    return cfg, m.model_copy(update={"features": feats, "experts": experts})


def wait_for(cond, timeout: float, what: str, eng) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return
        time.sleep(0.05)
    snap = eng.snapshot()
    raise AssertionError(f"timed out waiting for {what}: trainers={dict(snap.trainers)} "
                         f"errors={snap.errors[-5:]}")


def alive(pid: int | None) -> bool:
    if pid is None:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a killed child stays a zombie until reaped: treat zombies as dead
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_replay_training_hot_swaps_into_audit_and_survives_kill(candles, tmp_path):
    import compose
    from core.engine import ReplayConfig

    cfg, models = configs(tmp_path)
    store = MarketStore(cfg.data.db_path)
    store.upsert_candles(KEY, candles)
    eng = compose.build_engine(cfg, models, store=store,
                 replay=ReplayConfig(speed=SPEED, start_ms=int(candles["ts"].iloc[HISTORY])))
    eng.set_training("cnn", True)  # before start: the trainer starts after the first decision
    assert eng.snapshot().experts["cnn"].trainable and not eng.snapshot().experts["cnn"].training
    eng.start()
    try:
        wait_for(lambda: eng.snapshot().experts["cnn"].training, 60, "the cnn trainer to run", eng)
        assert not eng.snapshot().experts["dqn"].training  # only the expert switched on trains
        wait_for(lambda: any(s.expert == "cnn" and s.kind == "promote" for s in eng.snapshot().swaps), 75,
                 "a promotion of cnn", eng)
        swap = next(s for s in eng.snapshot().swaps if s.expert == "cnn")
        assert swap.version.startswith("online-") and swap.previous == "untrained"
        assert swap.challenger_score < swap.champion_score  # the rule that promoted it (margin 0)
        # decisions after the swap predict with the promoted weights
        n0 = len([d for d in eng.snapshot().recent_decisions if d.ts > swap.bar_ts])
        wait_for(lambda: len([d for d in eng.snapshot().recent_decisions if d.ts > swap.bar_ts]) >= n0 + 10,
                 20, "decisions after the swap", eng)
        snap = eng.snapshot()
        assert snap.experts["cnn"].can_rollback and snap.trainers["cnn"].promotions >= 1
        assert snap.experts["cnn"].trained  # promoted weights count as trained (the Models card says so)

        # SIGKILL the trainer: decisions keep flowing, the manager restarts it and counts the restart
        pid = snap.trainers["cnn"].pid
        assert alive(pid)
        os.kill(pid, signal.SIGKILL)
        last = eng.snapshot().decision.ts
        wait_for(lambda: eng.snapshot().trainers["cnn"].restarts >= 1, 20, "the trainer restart", eng)
        wait_for(lambda: eng.snapshot().decision.ts > last + 20 * 60_000, 20, "decisions after the kill", eng)
        wait_for(lambda: alive(eng.snapshot().trainers["cnn"].pid) and eng.snapshot().trainers["cnn"].pid != pid,
                 30, "a new trainer process", eng)

        # toggling through the REST API (PATCH /api/experts/<name>): off stops the process, on starts a
        # new one, and GET /api/experts reports it
        api = api_client(create_app(eng, cfg, models_cfg=models, host="127.0.0.1", secrets=Secrets()))

        def patch(name: str, on: bool) -> None:
            r = api.patch(f"/api/experts/{name}", json={"training": on})
            assert r.status_code == 200 and r.get_json()["training"] is on, r.get_json()

        def api_trainer(name: str) -> dict:
            return next(e for e in api.get("/api/experts").get_json()["experts"] if e["name"] == name)["trainer"]

        pid2 = eng.snapshot().trainers["cnn"].pid
        assert api_trainer("cnn")["running"] is True
        patch("cnn", False)
        wait_for(lambda: not eng.snapshot().experts["cnn"].training, 10, "training to stop", eng)
        assert eng.snapshot().trainers["cnn"].pid is None and api_trainer("cnn")["running"] is False
        # the engine thread does not wait for the process: it exits after its round and is reaped
        wait_for(lambda: not alive(pid2), 15, "the stopped trainer process to exit", eng)
        patch("cnn", True)
        wait_for(lambda: alive(eng.snapshot().trainers["cnn"].pid), 10, "training to start again", eng)
        assert eng.snapshot().trainers["cnn"].pid != pid2 and api_trainer("cnn")["running"] is True
        patch("dqn", True)  # a second expert's process, started and stopped the same way
        wait_for(lambda: alive(eng.snapshot().trainers["dqn"].pid), 15, "the dqn trainer to start", eng)
        pid_dqn = eng.snapshot().trainers["dqn"].pid
        patch("dqn", False)
        patch("cnn", False)
        wait_for(lambda: not eng.snapshot().experts["cnn"].training, 10, "training to stop", eng)
        wait_for(lambda: not alive(pid_dqn), 15, "the dqn trainer process to exit", eng)
        assert api.patch("/api/experts/nope", json={"training": True}).status_code == 404

        # rollback (POST /api/experts/<name>/rollback) puts the version the last promotion replaced
        # back, between two decisions
        promoted = [s for s in eng.snapshot().swaps if s.expert == "cnn" and s.kind == "promote"]
        r = api.post("/api/experts/cnn/rollback")
        assert r.status_code == 200 and r.get_json()["ok"] is True
        wait_for(lambda: eng.snapshot().swaps[-1].kind == "rollback", 10, "the rollback", eng)
        rb = eng.snapshot().swaps[-1]
        assert rb.version == promoted[-1].previous and rb.previous == promoted[-1].version
        assert eng.snapshot().experts["cnn"].version == rb.version
        assert eng.snapshot().experts["cnn"].trained == (rb.version != "untrained")
        n1 = len([d for d in eng.snapshot().recent_decisions if d.ts > rb.bar_ts])
        wait_for(lambda: len([d for d in eng.snapshot().recent_decisions if d.ts > rb.bar_ts]) >= n1 + 5,
                 20, "decisions after the rollback", eng)
        # outcome metrics: in memory since the stream started, and from the stored outcomes table
        snap = eng.snapshot()
        assert {"cnn", "dqn", "moe"} <= set(snap.live_metrics) and snap.live_metrics["moe"].n > 50
        assert {"cnn", "moe"} <= set(snap.stored_metrics) and snap.stored_metrics["cnn"].n > 50
        assert 0.0 <= snap.live_metrics["cnn"].accuracy <= 1.0

        # one authority: a checkpoint registered offline for an expert under online training is judged
        # by the manager, never loaded behind its back by the orchestrator's registry poll. Here it is
        # the live weights themselves: an equal loss is no improvement, so it is judged and rejected.
        live_version = eng.snapshot().experts["cnn"].version
        verdict_before = eng.snapshot().trainers["cnn"].last_verdict
        reg = CheckpointRegistry(store, tmp_path / "models")
        version = reg.register("cnn", eng.experts["cnn"].state_dict(), 0.5, models.experts["cnn"].checkpoints,
                               {"source": "test"})
        wait_for(lambda: eng.snapshot().trainers["cnn"].last_verdict != verdict_before, 30,
                 "the registered checkpoint's verdict", eng)
        st = eng.snapshot().trainers["cnn"]
        assert "gain 0.0000" in st.last_verdict and st.challenger_score == st.champion_score
        t0 = eng.snapshot().decision.ts  # the registry is polled every 50 decisions: let 60 pass
        wait_for(lambda: sum(d.ts > t0 for d in eng.snapshot().recent_decisions) >= 60, 30,
                 "decisions after registering (registry polls)", eng)
        assert not any(s.version == version for s in eng.snapshot().swaps)
        assert eng.snapshot().experts["cnn"].version == live_version  # not loaded by the registry poll
        assert reg.get("cnn", version).path.exists()  # the manager judged a copy
        swaps = [s for s in eng.snapshot().swaps if s.expert == "cnn"]
        decided = eng.snapshot().decision.ts
        run_id = eng.snapshot().decision.id.rsplit(":", 1)[0]

        # a stream restart shuts the manager down and starts the wanted trainers on the new stream
        eng.set_training("cnn", True)
        wait_for(lambda: alive(eng.snapshot().trainers["cnn"].pid), 10, "training to start again", eng)
        pid3 = eng.snapshot().trainers["cnn"].pid
        eng.start_stream("BTC/USDT", "1m")
        wait_for(lambda: eng.snapshot().decision is not None and not eng.snapshot().decision.id.startswith(run_id)
                 and alive(eng.snapshot().trainers["cnn"].pid), 30, "the new stream's trainer", eng)
        pid4 = eng.snapshot().trainers["cnn"].pid
        assert not alive(pid3) and pid4 != pid3
    finally:
        eng.stop()
    assert not alive(pid2) and not alive(pid4)  # stop() shuts the trainers down

    # the audit trail: cnn's model_version changes exactly after each swap's bar
    p = store.query_df("SELECT ts, model_version FROM predictions WHERE expert = 'cnn' AND run_id = ? ORDER BY ts",
                       [run_id])
    store.close()
    assert len(p) and int(p["ts"].iloc[-1]) >= decided
    for i, s in enumerate(swaps):
        nxt = swaps[i + 1].bar_ts if i + 1 < len(swaps) else None
        before = p[p["ts"] <= s.bar_ts]
        after = p[(p["ts"] > s.bar_ts) & ((p["ts"] <= nxt) if nxt is not None else True)]
        assert before["model_version"].iloc[-1] == s.previous
        assert len(after) or nxt is not None
        assert (after["model_version"] == s.version).all(), (s, after["model_version"].unique())
    assert p["model_version"].iloc[0] == "untrained" and swaps[0].version in set(p["model_version"])


def test_set_training_refused_when_disabled_unknown_or_untrainable(candles, tmp_path):
    import compose
    from core.engine import ReplayConfig

    cfg, models = configs(tmp_path, training_enabled=False)
    store = MarketStore(cfg.data.db_path)
    store.upsert_candles(KEY, candles.iloc[:200])
    eng = compose.build_engine(cfg, models, store=store, replay=ReplayConfig(speed=None))
    with pytest.raises(ValueError, match="disabled"):
        eng.set_training("cnn", True)
    assert not eng.snapshot().experts["cnn"].trainable
    # training allowed in config but the dashboard said --no-training
    cfg2, _ = configs(tmp_path, training_enabled=True)
    eng2 = compose.build_engine(cfg2, models, store=store, replay=ReplayConfig(speed=None), training=False)
    with pytest.raises(ValueError, match="disabled"):
        eng2.set_training("dqn", True)
    # allowed: an unknown expert and a candle expert (Kronos trains offline) are refused by name
    experts = dict(models.experts)
    experts["kronos"] = experts["kronos"].model_copy(update={
        "enabled": True, "device": "cpu",
        "params": {"model": str(tiny_kronos_dir(tmp_path)), "lookback": 32, "samples": 4, "calibrated": False}})
    eng3 = compose.build_engine(cfg2, models.model_copy(update={"experts": experts}), store=store,
                  replay=ReplayConfig(speed=None))
    with pytest.raises(ValueError, match="unknown expert 'nope'"):
        eng3.set_training("nope", True)
    with pytest.raises(ValueError, match="'kronos' cannot train online"):
        eng3.set_training("kronos", True)
    with pytest.raises(ValueError, match="no previous version"):
        eng3.rollback("cnn")
    assert eng3.snapshot().training_enabled and eng3.trainable() == ["cnn", "dqn"]
    store.close()


def test_live_and_paper_engines_resume_online_weights_replays_never(candles, tmp_path):
    import compose
    from core.engine import ReplayConfig
    from NN.experts.registry import build_expert
    from NN.training.online import live_path

    cfg, models = configs(tmp_path)
    store = MarketStore(cfg.data.db_path)
    store.upsert_candles(KEY, candles.iloc[:300])
    # what an earlier run left live: online weights descending from the untrained start (no registry)
    eng0 = compose.build_engine(cfg, models, store=store, replay=ReplayConfig(speed=None))
    torch.manual_seed(123)
    learned = build_expert("cnn", models.experts["cnn"], eng0.builder.spec).state_dict()
    lp = live_path(tmp_path / "models", "cnn")
    lp.parent.mkdir(parents=True)
    torch.save({"version": "online-earlier-run", "base": "untrained", "state": learned}, lp)

    paper = compose.build_engine(cfg, models, store=store)  # no replay: paper trading (nothing starts before start())
    assert paper.mode == "paper" and paper.experts["cnn"].version == "online-earlier-run"
    for k, v in learned["net"].items():
        assert torch.equal(paper.experts["cnn"].state_dict()["net"][k], v)
    assert paper.snapshot().experts["cnn"].trained and paper.experts["dqn"].version == "untrained"
    # a replay must not start from weights that may have learned from the replayed history
    assert compose.build_engine(cfg, models, store=store, replay=ReplayConfig(speed=None)).experts["cnn"].version == "untrained"
    # nor does an engine that may not train, or one told not to resume
    assert compose.build_engine(cfg, models, store=store, training=False).experts["cnn"].version == "untrained"
    off = cfg.model_copy(update={"training": cfg.training.model_copy(update={"resume_online": False})})
    assert compose.build_engine(off, models, store=store).experts["cnn"].version == "untrained"
    store.close()
