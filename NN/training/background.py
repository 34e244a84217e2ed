"""Train now: offline training of the enabled experts and the gate in a background process, while the
dashboard's engine keeps running, then a hot swap of the new checkpoints into the running experts.

DuckDB lets one process write a file, and the dashboard holds the store. So the engine hands the job
the candles it may learn from (never newer than the engine's newest bar: a replay must not learn its
own future); the job writes them with its settings into a job directory, and a child process
(``python -m NN.training.background JOBDIR``) trains there into its own store and models directory with
the same code as ``main_backtest.py train`` (``run_training``). The child writes ``status.json`` after
every epoch and every chunk of gate rows: the stages (Kronos, features, each expert, the gate) with
their progress and an ETA per stage (NN/training/progress.py). When it has finished, ``poll`` (on the engine
thread, between two decisions) registers the new checkpoints in the engine's registry, loads them into
the running experts and the gate, and returns their names.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from core.config import AppConfig, ModelsConfig
from core.data.store import MarketStore
from core.types import ExpertLike, Gate, SeriesKey
from NN.weights_io import load_weights

log = logging.getLogger(__name__)

GATE_NAME = "moe"
MIN_BARS = 1000  # fewer candles give too few labelled samples per split to train on


@dataclass(frozen=True, slots=True)
class Preset:
    epochs: int
    max_steps_per_epoch: int | None
    patience: int
    kronos: str  # the Kronos training preset (NN/experts/kronos/train.PRESETS) when Kronos has no weights
    max_bars: int | None  # newest stored candles used (None: all)
    gate_rows: int | None  # validation rows the gate is fit on (Kronos forecasts each one; None: all)


PRESETS: dict[str, Preset] = {
    # quick: a few short epochs of every enabled features expert and the gate; <= 3 min on 2 CPU cores
    "quick": Preset(epochs=4, max_steps_per_epoch=60, patience=1, kronos="nano-quick", max_bars=20_000,
                    gate_rows=400),
    # full: what `main_backtest.py train` does by default, plus a nano Kronos retrained (a released
    # hub Kronos is kept: see plan)
    "full": Preset(epochs=10, max_steps_per_epoch=None, patience=3, kronos="nano", max_bars=None,
                   gate_rows=3000),
}


def released_kronos(ex: ExpertLike | None) -> bool:
    """True when the expert forecasts with a released Kronos from the hub (its version is the hub id)."""
    from NN.experts.kronos.config import HUB_TOKENIZER_FOR

    return ex is not None and ex.input_kind == "candles" and str(ex.version) in HUB_TOKENIZER_FOR


def plan(models: ModelsConfig, preset: str, experts: dict[str, ExpertLike], trained: dict[str, bool]) -> list[str]:
    """The experts a preset trains: every features expert, then the gate, in models.yml order; Kronos
    first when the engine's Kronos is a nano one (quick: only when it has no weights; full: always).
    A released Kronos (``model: auto`` resolved to the hub's Kronos-small/mini) is kept by both: a nano
    trained here would replace far better weights, and ``main_backtest.py train`` leaves Kronos alone
    unless named (``--experts kronos`` fine-tunes a configured hub id, not ``auto``)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown training preset {preset!r}; use one of {', '.join(PRESETS)}")
    names = [n for n, e in experts.items() if e.input_kind == "features"]
    kronos = experts.get("kronos")
    if kronos is not None and not released_kronos(kronos) and (preset == "full" or not trained.get("kronos", False)):
        names.insert(0, "kronos")  # run_training trains it first
    return [*names, GATE_NAME]


def kronos_note(preset: str, names: list[str], experts: dict[str, ExpertLike]) -> str | None:
    """Which Kronos the job's gate uses, in words (the Models page shows it); None without Kronos."""
    ex = experts.get("kronos")
    if ex is None:
        return None
    if "kronos" in names:
        return f"a nano Kronos trained in this job ({PRESETS[preset].kronos} preset)"
    if released_kronos(ex):
        return f"{ex.version} (released weights from the hub, kept)"
    return f"{ex.version} (kept)"


def _write_json(path: Path, obj: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, default=str))
    os.replace(tmp, path)  # readers never see half a file


class OfflineTraining:
    """One Train-now job at a time for an engine (the ``OfflineTrainer`` protocol of core/engine)."""

    def __init__(self, app: AppConfig, models: ModelsConfig, experts: dict[str, ExpertLike], gate_ref: Any,
                 registry: Any, models_dir: Path, *, trained: dict[str, bool] | None = None,
                 python: str | None = None) -> None:
        self.app = app
        self.models = models
        self.experts = experts
        self.trained = trained if trained is not None else {}  # the engine's flags (read at start)
        self._gate_ref = gate_ref  # callable returning the engine's current gate
        self.registry = registry
        self.models_dir = Path(models_dir)
        self.python = python or sys.executable
        self._proc: subprocess.Popen[bytes] | None = None
        self._dir: Path | None = None
        self._status: dict[str, Any] = {"state": "idle"}

    # ---- control (engine thread)
    def start(self, preset: str, key: SeriesKey, candles: pd.DataFrame) -> None:
        if self.running:
            raise ValueError("a training job is already running; wait for it to finish")
        names = plan(self.models, preset, self.experts, self.trained)
        if len(candles) < MIN_BARS:
            raise ValueError(f"train now needs at least {MIN_BARS} stored candles up to the newest bar; "
                             f"the store has {len(candles)} for {key.symbol} {key.timeframe}")
        p = PRESETS[preset]
        if p.max_bars is not None:
            candles = candles.iloc[-p.max_bars:]
        d = Path(tempfile.mkdtemp(prefix="moe-train-"))
        candles.to_parquet(d / "candles.parquet", index=False)
        # the gate is trained over exactly the engine's experts, in its order, so the hot swap fits;
        # a candle expert this job does not retrain forecasts with the engine's weights (exported here)
        gate_experts = list(self._gate_ref().experts)
        candle_models = {n: _export_candle_weights(self.experts[n], d / "engine" / n) for n in gate_experts
                         if self.experts[n].input_kind == "candles" and n not in names}
        _write_json(d / "job.json", {
            "preset": preset, "names": names, "key": [key.exchange, key.symbol, key.timeframe],
            "app": self.app.model_dump(mode="json"), "models": self.models.model_dump(mode="json"),
            "epochs": p.epochs, "max_steps_per_epoch": p.max_steps_per_epoch, "patience": p.patience,
            "kronos_preset": p.kronos, "gate_experts": gate_experts, "candle_models": candle_models,
            "gate_rows": p.gate_rows, "kronos": kronos_note(preset, names, self.experts)})
        self._status = {"state": "starting", "preset": preset, "names": names, "started": time.time(),
                        "bars": len(candles), "kronos": kronos_note(preset, names, self.experts)}
        _write_json(d / "status.json", self._status)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(_root()),
                                                                          os.environ.get("PYTHONPATH")]))}
        log_f = open(d / "train.log", "wb")  # noqa: SIM115 - the child writes it until it exits
        self._proc = subprocess.Popen([self.python, "-m", "NN.training.background", str(d)], cwd=str(_root()),
                                      stdout=log_f, stderr=subprocess.STDOUT, env=env)
        log_f.close()
        self._dir = d
        log.info("train now (%s): %s on %d candles, job %s", preset, ", ".join(names), len(candles), d)

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def status(self) -> dict[str, Any]:
        """The job's latest progress (state idle | starting | running | finishing | done | failed)."""
        if self._dir is not None and self.running:
            try:
                st = json.loads((self._dir / "status.json").read_text())
            except (OSError, ValueError):
                st = {}
            if st.get("state") in ("done", "failed"):  # the child is exiting; done = once poll() adopted
                st["state"] = "finishing"
            self._status = {**self._status, **st}
        return dict(self._status)

    def poll(self) -> list[str]:
        """When the child has exited: adopt its checkpoints (registered here, loaded into the running
        experts and gate) and return their names; [] otherwise. Engine thread only."""
        proc, d = self._proc, self._dir
        if proc is None or d is None or proc.poll() is None:
            return []
        self._proc = None
        try:
            st = json.loads((d / "status.json").read_text())
        except (OSError, ValueError):
            st = {}
        if st.get("state") != "done":
            tail = (d / "train.log").read_text(errors="replace").strip().splitlines()[-1:] \
                if (d / "train.log").is_file() else []
            why = st.get("error") or (tail[0] if tail else f"exit code {proc.returncode}")
            self._status = {**self._status, **st, "state": "failed", "error": why, "finished": time.time()}
            log.warning("train now failed: %s (log: %s)", why, d / "train.log")
            return []
        adopted = self._adopt(d, st.get("results", {}))
        self._status = {**self._status, **st, "state": "done", "adopted": adopted, "finished": time.time()}
        shutil.rmtree(d, ignore_errors=True)
        self._dir = None
        return adopted

    def cancel(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
        self._proc = None
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    # ---- adopting the child's checkpoints
    def _adopt(self, d: Path, results: dict[str, Any]) -> list[str]:
        """Register the job's checkpoints here and load exactly those versions (not the registry's best,
        which may be an older run with a lower metric) into the running experts and the gate."""
        from NN.training.checkpoints import CheckpointRegistry

        versions: dict[str, str] = {}
        states: dict[str, dict[str, Any]] = {}
        job_store = MarketStore(d / "train.duckdb", read_only=True)
        try:
            job_reg = CheckpointRegistry(job_store, d / "models")
            for name in [n for n in results if n in self.experts or n == GATE_NAME]:
                info = job_reg.best(name)
                if info is None or self.experts.get(name) is not None and self.experts[name].input_kind == "candles":
                    continue
                policy = self.models.experts[name if name != GATE_NAME else next(iter(self.models.experts))].checkpoints
                state = load_weights(info.path)  # weight data only (NN/weights_io.py)
                meta = {k: v for k, v in info.meta.items() if k not in ("metric_name", "mode")}
                # the job's version names are kept: the gate's meta names the expert versions it saw
                versions[name] = self.registry.register(name, state, info.metric, policy, {**meta, "train_now": True},
                                                        metrics=job_reg.metrics(name), version=info.version)
                states[name] = state
        finally:
            job_store.close()
        adopted: list[str] = []
        for name, r in results.items():  # a candle expert's run directory, where `model: nano` looks too
            if not (isinstance(r, dict) and "checkpoint" in r and name in self.experts):
                continue
            src = Path(r["checkpoint"])
            dst = self.models_dir / name / src.name
            shutil.copytree(src, dst, dirs_exist_ok=True)
            ex = self.experts[name]
            if hasattr(ex, "use_model"):
                ex.use_model(str(dst))  # pinned: the gate below was trained with these weights
            adopted.append(name)
        # hot swap between two decisions (poll runs on the engine thread); the weights in hand, not a
        # registry lookup: a registry keeping its best few may prune the new version at once
        for name, version in versions.items():
            if name == GATE_NAME:
                continue
            _load(self.experts[name], states[name], version)
            adopted.append(name)
        if GATE_NAME in versions:
            gate: Gate = self._gate_ref()
            try:
                _load(gate, states[GATE_NAME], versions[GATE_NAME])
                adopted.append(GATE_NAME)
            except ValueError as exc:  # the engine's expert set changed while the job ran: the online gate stays
                log.warning("train now: gate not loaded (%s)", exc)
        return adopted


def _load(obj: Any, state: dict[str, Any], version: str) -> None:
    obj.load_state_dict(state)
    obj.version = version


def _export_candle_weights(ex: ExpertLike, d: Path) -> str:
    """The weights a candle expert (Kronos) forecasts with now, as a checkpoint directory the job can
    load without the hub (tokenizer/, model/, calibration.json, meta.json with its version)."""
    from NN.experts.kronos.hub import save_pretrained

    b = ex.bundle  # type: ignore[attr-defined]
    save_pretrained(b.tokenizer, d / "tokenizer")
    save_pretrained(b.model, d / "model")
    if b.calibration is not None:
        b.calibration.save(d / "calibration.json")
    _write_json(d / "meta.json", {"version": b.version, "max_context": b.max_context, "anchor": b.anchor})
    return str(d)


def _root() -> Path:
    from core.paths import PROJECT_ROOT

    return Path(PROJECT_ROOT)


# ---------------------------------------------------------------- the child process


def child(job_dir: Path) -> int:
    from NN.training.progress import Tracker, job_stages
    from NN.training.trainer import run_training

    job = json.loads((job_dir / "job.json").read_text())
    status_path = job_dir / "status.json"
    started = time.time()
    names: list[str] = job["names"]
    epochs = int(job["epochs"])
    state: dict[str, Any] = {"state": "running", "preset": job["preset"], "names": names, "started": started,
                             "kronos": job.get("kronos"), "expert": None, "epoch": 0, "epochs": epochs,
                             "loss": None, "val_logloss": None, "eta_s": None, "done": []}

    def on_change(summary: dict[str, Any]) -> None:
        # the stage list with the ETA, plus the current stage's unit count and losses in the flat fields
        cur = next((s for s in summary["stages"] if s["name"] == summary["stage"]), None)
        flat: dict[str, Any] = {"expert": summary["stage"],
                                "done": [s["name"] for s in summary["stages"] if s["state"] == "done"]}
        if cur is not None:
            flat.update(epoch=cur["done"], epochs=cur["total"], loss=cur["metrics"].get("loss"),
                        val_logloss=cur["metrics"].get("val_logloss", cur["metrics"].get("val_loss")))
        state.update(summary, **flat)
        _write_json(status_path, state)

    tracker = Tracker(job_stages(names, epochs, job.get("gate_rows")), on_change)
    state.update(tracker.summary())
    _write_json(status_path, state)

    try:
        app = AppConfig.model_validate(job["app"])
        models = ModelsConfig.model_validate(job["models"])
        key = SeriesKey(*job["key"])
        store = MarketStore(job_dir / "train.duckdb")
        try:
            store.upsert_candles(key, pd.read_parquet(job_dir / "candles.parquet"))
            results = run_training(store, key, models, app, names, epochs=epochs, models_dir=job_dir / "models",
                                   runs_dir=None, progress=False, max_steps_per_epoch=job["max_steps_per_epoch"],
                                   patience=int(job["patience"]), stages=tracker, kronos_preset_epochs=True,
                                   kronos_preset=job["kronos_preset"], gate_experts=job.get("gate_experts"),
                                   candle_models=job.get("candle_models"), gate_rows=job.get("gate_rows"))
        finally:
            store.close()
    except Exception as exc:
        log.debug("train now failed", exc_info=True)
        _write_json(status_path, {**state, "state": "failed", "error": f"{type(exc).__name__}: {exc}".splitlines()[0]})
        return 1
    _write_json(status_path, {**state, "state": "done", "eta_s": 0, "estimating": [],
                              "done": [s["name"] for s in state["stages"]], "results": results,
                              "elapsed_s": round(time.time() - started, 1)})
    return 0


def _exit_with_parent() -> None:
    """The job dies with the dashboard that started it (no orphan burning the CPU)."""
    import threading

    parent = os.getppid()

    def watch() -> None:
        while True:
            time.sleep(2.0)
            if os.getppid() != parent:
                os._exit(3)

    threading.Thread(target=watch, daemon=True, name="parent-watch").start()


if __name__ == "__main__":
    _exit_with_parent()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # one core stays for the dashboard's decisions (torch would take them all); not niced: a niced job
    # gets a tenth of a core on a busy machine and a "quick" preset would take many minutes
    torch.set_num_threads(max(1, (os.cpu_count() or 2) - 1))
    sys.exit(child(Path(sys.argv[1])))
