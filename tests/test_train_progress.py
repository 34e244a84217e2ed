"""Train now's honesty: its progress names every stage (Kronos, features, each expert, the gate) with an
ETA estimated per stage from measured durations; the full preset keeps a released hub Kronos; the
order-book page's empty state points at what a user has."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import huggingface_hub.constants as hf_constants
import pytest

from compose import engine_parts
from core.config import load_config, load_models
from core.data.store import MarketStore
from NN.training import background
from NN.training.progress import Stage, Tracker, estimate, job_stages
from web.pages import first_run, orderbook

ROOT = Path(__file__).resolve().parent.parent


# ---------------------------------------------------------------- plan(): a released Kronos is kept


def _hub_cache(root: Path, fixture: Path) -> Path:
    """A Hugging Face cache holding the Kronos compatibility fixture's networks under the released ids
    (the layout ``huggingface-cli download`` leaves), so ``model: auto`` resolves to the hub weights
    offline exactly as on a machine that pre-fetched Kronos-small."""
    commit = "0" * 40
    for repo, src in (("NeoQuasar/Kronos-small", fixture / "model"),
                      ("NeoQuasar/Kronos-Tokenizer-base", fixture / "tokenizer")):
        d = root / ("models--" + repo.replace("/", "--"))
        (d / "refs").mkdir(parents=True)
        (d / "refs" / "main").write_text(commit)
        snap = d / "snapshots" / commit
        snap.mkdir(parents=True)
        for f in ("config.json", "model.safetensors"):
            shutil.copy(src / f, snap / f)
    return root


def _parts(tmp: Path):
    cfg = load_config()
    cfg = cfg.model_copy(update={"training": cfg.training.model_copy(update={"models_dir": str(tmp / "models")})})
    models = load_models()
    assert models.experts["kronos"].params["model"] == "auto"  # the shipped default
    store = MarketStore(tmp / "engine.duckdb")
    return engine_parts(cfg, models, store, "1m", mode="replay", training=False), models, store


def test_full_preset_keeps_a_released_kronos_and_retrains_a_nano_one(tmp_path: Path, kronos_fixture: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    # 1) the hub's Kronos-small is in the cache: `model: auto` uses it; neither preset retrains it
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(_hub_cache(tmp_path / "hf", kronos_fixture)))
    parts, models, store = _parts(tmp_path / "hub")
    try:
        kronos = parts.experts["kronos"]
        assert kronos.version == "NeoQuasar/Kronos-small" and parts.trained["kronos"]
        assert background.released_kronos(kronos)
        for preset in ("quick", "full"):
            names = background.plan(models, preset, parts.experts, parts.trained)
            assert names == ["cnn", "transformer", "dqn", "moe"], preset
            assert background.kronos_note(preset, names, parts.experts) == \
                "NeoQuasar/Kronos-small (released weights from the hub, kept)"
    finally:
        store.close()

    # 2) no hub weights, a nano checkpoint under models/kronos: full retrains it, quick keeps it
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "empty-hf"))
    nano = tmp_path / "nano" / "models" / "kronos" / "nano-20260101-000000"
    shutil.copytree(kronos_fixture / "tokenizer", nano / "tokenizer")
    shutil.copytree(kronos_fixture / "model", nano / "model")
    (nano / "meta.json").write_text(json.dumps({"version": nano.name, "val_loss": 1.0, "max_context": 512}))
    parts, models, store = _parts(tmp_path / "nano")
    try:
        kronos = parts.experts["kronos"]
        assert kronos.version == nano.name and parts.trained["kronos"] and not background.released_kronos(kronos)
        full = background.plan(models, "full", parts.experts, parts.trained)
        assert full == ["kronos", "cnn", "transformer", "dqn", "moe"]
        assert background.kronos_note("full", full, parts.experts) == "a nano Kronos trained in this job (nano preset)"
        quick = background.plan(models, "quick", parts.experts, parts.trained)
        assert quick == ["cnn", "transformer", "dqn", "moe"]
        assert background.kronos_note("quick", quick, parts.experts) == f"{nano.name} (kept)"
    finally:
        store.close()


# ---------------------------------------------------------------- order-book page: the empty state


def test_orderbook_empty_state_points_at_live_books_and_the_users_own_recordings() -> None:
    from types import SimpleNamespace

    cfg = load_config()
    alert = orderbook.layout(SimpleNamespace(cfg=cfg, extra={}))
    text = "".join(c if isinstance(c, str) else str(c.children) for c in alert.children)
    assert "python main_dashboard.py --book live" in text
    assert "orderbook.venues" in text and cfg.orderbook.symbol in text
    assert "python main_backtest.py book record" in text and f"--book {cfg.orderbook.record_dir}" in text
    assert "shared" not in text  # no path only the project's developers have


# ---------------------------------------------------------------- stages and ETA

# A quick Train now on the bundled sample, recorded (bench/bench_train_now.py --trace, 2 CPU cores, load
# ~2-3): seconds from the job's start at which each stage began, each unit (epoch; gate: rows) ended,
# and the stage ended. DQN stopped early after 2 of 4 epochs; the gate forecast 354 validation rows.
TIMELINE: list[tuple[str, float | None, list[tuple[float, int]], float, int | None]] = [
    # (stage, begin, [(unit end, units done)], end, total)
    ("kronos", 3.4, [(10.9, 1), (14.5, 2), (18.1, 3), (21.3, 4), (25.3, 5), (28.8, 6), (31.6, 7), (34.4, 8)],
     34.5, 8),
    ("features", 34.6, [], 39.8, None),
    ("cnn", 39.8, [(40.4, 1), (40.8, 2), (41.2, 3), (41.7, 4)], 41.8, 4),
    ("transformer", 41.8, [(42.8, 1), (43.4, 2), (44.2, 3), (45.0, 4)], 45.1, 4),
    ("dqn", 45.2, [(47.1, 1), (48.6, 2)], 48.7, 4),
    ("gate", 48.9, [(49.5, 10), (51.9, 60), (54.3, 110), (57.5, 160), (60.5, 210), (64.0, 260), (71.4, 310),
                    (75.7, 354)], 75.8, 354),
]
END = 75.8


class Clock:
    t = 0.0

    def __call__(self) -> float:
        return self.t


def _replay(check) -> Tracker:
    """Feed the recorded timeline through a Tracker; ``check(summary, now)`` after every event."""
    clock = Clock()
    names = ["kronos", "cnn", "transformer", "dqn", "moe"]
    tracker = Tracker(job_stages(names, 4, 400), lambda s: check(s, clock.t), clock=clock)
    check(tracker.summary(), 0.0)
    for stage, begin, units, end, total in TIMELINE:
        clock.t = begin
        tracker.begin(stage, total if stage == "gate" else None)
        for t, done in units:
            clock.t = t
            tracker.advance(stage, done, total, loss=0.5)
        clock.t = end
        tracker.end(stage)
    return tracker


def test_eta_is_per_stage_and_honest_on_recorded_timings() -> None:
    seen: list[tuple[float, dict]] = []
    tracker = _replay(lambda s, now: seen.append((now, s)))
    final = tracker.summary()
    # every stage is reported, the gate included, in the order run_training runs them
    assert [s["name"] for s in final["stages"]] == ["kronos", "features", "cnn", "transformer", "dqn", "gate"]
    assert all(s["state"] == "done" for s in final["stages"]) and final["eta_s"] == 0.0
    gate = final["stages"][-1]
    assert gate["unit"] == "row" and gate["done"] == gate["total"] == 354
    assert any(s["stage"] == "gate" and s["stages"][-1]["state"] == "running" for _, s in seen)
    # nothing measured yet: no number at all ("estimating"), not a guess
    assert seen[0][1]["eta_s"] is None and "gate" in seen[0][1]["estimating"]
    full = [(now, s) for now, s in seen if s["eta_s"] is not None and not s["estimating"] and END - now > 5]
    partial = [(now, s) for now, s in seen if s["eta_s"] is not None and s["estimating"]]
    assert full and partial
    for now, s in full:  # once every stage has a measurement: within a factor 2 of the time really left
        assert 0.5 <= s["eta_s"] / (END - now) <= 2.0, (now, s["eta_s"], END - now)
    for now, s in partial:  # stages still estimating: the number is a lower bound, never an overestimate
        assert s["eta_s"] <= END - now, (now, s["eta_s"], s["estimating"])
    # the first features epoch no longer carries Kronos and feature building (36 s): after cnn's first
    # epoch the experts' ETA is a few seconds, not 11 epochs x 36 s
    after_cnn1 = next(s for now, s in seen if now == 40.4)
    assert after_cnn1["estimating"] == ["gate"] and after_cnn1["eta_s"] < 10
    # an unstarted expert is estimated from the measured experts' epochs
    cnn_done = next(s for now, s in seen if now == 41.8 and s["stage"] is None)
    tr = next(x for x in cnn_done["stages"] if x["name"] == "transformer")
    assert tr["state"] == "pending" and tr["eta_s"] == pytest.approx(4 * 1.9 / 4, abs=0.05)


def test_estimate_running_stage_subtracts_the_unit_under_way() -> None:
    # hand-written: 2 of 4 epochs took 10 s each; 4 s into the third, 16 s are left
    s = Stage("cnn", "expert", "epoch", total=4, done=2, state="running", started=0.0, last=20.0)
    assert estimate([s], 24.0) == (16.0, [])
    g = Stage("gate", "gate", "row", total=400)
    assert estimate([s, g], 24.0) == (16.0, ["gate"])


def test_models_page_line_lists_the_stages_with_the_current_ones_progress() -> None:
    seen: list[tuple[float, dict]] = []
    _replay(lambda s, now: seen.append((now, s)))
    mid = next(s for now, s in seen if now == 43.4)  # transformer's 2nd epoch
    st = {"state": "running", "preset": "quick", "kronos": "a nano Kronos trained in this job (nano-quick preset)",
          **mid}
    line = first_run.running_text(st)
    assert line.startswith("kronos ✓, features ✓, cnn ✓, transformer 2/4, dqn, gate, loss 0.5000")
    assert "ETA ≥ " in line and "(gate still estimating)" in line
    assert line.endswith("· Kronos: a nano Kronos trained in this job (nano-quick preset)")
    in_gate = next(s for now, s in seen if now == 60.5)
    line = first_run.running_text({"state": "running", **in_gate})
    assert "dqn ✓, gate 210/354 rows" in line and "still estimating" not in line and "ETA " in line
    assert first_run.running_text({"state": "running", **seen[0][1]}).endswith("ETA estimating")


def test_gate_rows_forecast_in_chunks_give_the_same_probabilities(kronos_fixture: Path) -> None:
    """The gate's rows are forecast in chunks (10, then 50 at a time) so the progress can count them; the
    probabilities must be those of one pass (every expert is row-wise; Kronos reseeds per forecast)."""
    import numpy as np
    import torch

    from core.data.files import load_file
    from core.types import SeriesKey
    from NN.experts.registry import build_expert
    from NN.training.gate_fit import expert_probs
    from NN.training.prepared import prepare

    torch.manual_seed(0)
    torch.set_num_threads(1)
    models, app = load_models(), load_config()
    candles = load_file(ROOT / "data" / "sample" / "BTC_USDT-1m.csv").iloc[:1500]
    prep = prepare(candles, SeriesKey("binanceus", "BTC/USDT", "1m"), models, app)
    experts = {n: build_expert(n, models.experts[n], prep.batch.spec) for n in ("cnn", "transformer", "dqn")}
    kr = models.experts["kronos"]
    experts["kronos"] = build_expert("kronos", kr.model_copy(update={"params": {
        **kr.params, "model": str(kronos_fixture), "calibrated": False, "samples": 4}}), prep.batch.spec)
    vb = prep.batch.take(np.arange(prep.val.start, prep.val.start + 73))
    seen: list[tuple[int, int]] = []
    chunked = expert_probs(experts, vb, candles, lambda d, t: seen.append((d, t)))
    assert seen == [(10, 73), (60, 73), (73, 73)]
    assert np.allclose(chunked, expert_probs(experts, vb, candles), atol=1e-6)


def test_a_gate_probe_completes_the_eta_before_the_gate_starts() -> None:
    # hand-written: cnn measured at 1 s per epoch, 2 epochs left; the gate probed at 0.05 s per row x 354
    cnn = Stage("cnn", "expert", "epoch", total=4, done=2, state="running", started=0.0, last=2.0)
    gate = Stage("gate", "gate", "row", total=354, prior_s=0.05)
    eta, unknown = estimate([cnn, gate], 2.0)
    assert unknown == [] and eta == pytest.approx(2.0 + 17.7)
    # the gate under way, no chunk done yet: the probe's estimate less the time already spent
    gate.state, gate.started = "running", 10.0
    assert estimate([gate], 15.0) == (pytest.approx(12.7), [])
    # its own first chunk replaces the probe
    gate.done, gate.last, gate.recent = 10, 16.0, 0.6
    assert estimate([gate], 16.0)[0] == pytest.approx(0.6 * 344)


def test_train_now_kronos_keeps_its_presets_epochs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Train now's ``epochs`` are the features experts' (quick: 4); Kronos trains its own preset's
    (nano-quick: 1 tokenizer + 2 predictor epochs), as ``main_backtest.py train --experts kronos`` does
    without --epochs. The CLI's explicit --epochs still sets both."""
    import NN.experts.kronos.train as kronos_train
    from core.types import SeriesKey
    from NN.training.trainer import run_training

    seen: list[int | None] = []

    def record(*_a, epochs=None, **_k):  # only the argument is under test; the training itself is elsewhere
        seen.append(epochs)
        return tmp_path / "kronos-dir"

    monkeypatch.setattr(kronos_train, "train_kronos", record)
    store = MarketStore(tmp_path / "k.duckdb")
    for own in (True, False):
        run_training(store, SeriesKey("binanceus", "BTC/USDT", "1m"), load_models(), load_config(), ["kronos"],
                     epochs=4, models_dir=tmp_path, runs_dir=None, progress=False, kronos_preset="nano-quick",
                     kronos_preset_epochs=own)
    store.close()
    assert seen == [None, 4]
