"""Train now (NN/training/background.py): the background job trains the gate over exactly the running
engine's experts, Kronos included, and the engine ends up with those exact versions (no online-Hedge
fallback because the gate was trained over another expert set)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from compose import engine_parts
from core.config import load_config, load_models
from core.data.files import load_file
from core.data.store import MarketStore
from core.types import SeriesKey
from NN.training import background

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "data" / "sample" / "BTC_USDT-1m.csv"
KEY = SeriesKey("binanceus", "BTC/USDT", "1m")


@pytest.mark.timeout(600)
def test_train_now_gate_covers_every_engine_expert_and_is_swapped_in(tmp_path: Path, kronos_fixture: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = load_config()
    cfg = cfg.model_copy(update={"training": cfg.training.model_copy(update={"models_dir": str(tmp_path / "models")})})
    models = load_models()
    kr = models.experts["kronos"]
    # the engine's Kronos has weights (the shared compatibility fixture's small network): the job must
    # gate over THOSE weights, which it gets exported (no hub, no retraining); few paths keep it fast
    models.experts["kronos"] = kr.model_copy(update={"params": {
        **kr.params, "model": str(kronos_fixture), "calibrated": False, "samples": 4}})
    # 200 of the sample's validation rows, half of them held out: every class >= 5 times there
    models = models.model_copy(update={"moe": models.moe.model_copy(update={"holdout": 0.5})})
    # a smoke-sized preset (the real quick preset is timed by bench/bench_train_now.py)
    monkeypatch.setitem(background.PRESETS, "quick", background.Preset(
        epochs=1, max_steps_per_epoch=3, patience=1, kronos="nano-smoke", max_bars=3000, gate_rows=200))
    store = MarketStore(tmp_path / "engine.duckdb")
    try:
        parts = engine_parts(cfg, models, store, "1m", mode="replay", training=False)
        assert parts.gate.experts == ["cnn", "transformer", "dqn", "kronos"] and not parts.gate.trained
        assert parts.trained == {"cnn": False, "transformer": False, "dqn": False, "kronos": True}
        kronos_version = str(parts.experts["kronos"].version)
        job = parts.offline
        assert job is not None
        job.start("quick", KEY, load_file(SAMPLE).iloc[:3000])
        t0 = time.monotonic()
        while job.running and time.monotonic() - t0 < 540:
            time.sleep(0.5)
        adopted = job.poll()
        st = job.status()
        assert st["state"] == "done", st.get("error")
        assert sorted(adopted) == ["cnn", "dqn", "moe", "transformer"]  # Kronos kept its weights
        # the progress named every stage, the gate's validation rows (each forecast by Kronos) included
        assert [s["name"] for s in st["stages"]] == ["features", "cnn", "transformer", "dqn", "gate"]
        assert all(s["state"] == "done" for s in st["stages"]) and st["eta_s"] == 0
        gate_stage = st["stages"][-1]
        assert gate_stage["unit"] == "row" and 0 < gate_stage["done"] == gate_stage["total"] <= 200
        assert gate_stage["prior_s"] > 0  # Kronos was timed on a few rows before the gate started
        assert st["kronos"] == f"{kronos_version} (kept)"
        reg = parts.registry
        gate_info = reg.best("moe")
        assert gate_info is not None and gate_info.meta["experts"] == ["cnn", "transformer", "dqn", "kronos"]
        # the running gate IS the trained one (not the online Hedge rule), over every expert
        assert parts.gate.trained and parts.gate.version == gate_info.version
        for name in ("cnn", "transformer", "dqn"):
            info = reg.best(name)
            assert info is not None and parts.experts[name].version == info.version
            assert gate_info.meta["expert_versions"][name] == info.version  # the gate saw these weights
        assert gate_info.meta["expert_versions"]["kronos"] == kronos_version
        assert parts.experts["kronos"].version == kronos_version
        # it fuses all four experts' opinions
        probs = np.full((1, 4, 3), 1 / 3)
        w, fused = parts.gate.fuse(probs, np.zeros((1, parts.gate.regime_dim)))
        assert w.shape == (1, 4) and np.isclose(fused.sum(), 1.0)
    finally:
        store.close()
