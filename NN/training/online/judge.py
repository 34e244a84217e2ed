"""Champion / challenger verdicts on the engine side: published checkpoints become Swaps.

A trainer scores its own checkpoint on its withheld window (``judged`` only applies the rule to the
scores it sent). Any other checkpoint file (``submit``: e.g. an offline run) is scored on the
"challenger-eval" background thread against the manager's validation window, on scratch copies of the
expert that the decision path never uses. Verdicts wait in a queue until ``collect`` (engine thread,
from ``poll``) turns the winners into promotion Swaps; losers' files are deleted there. The rule
itself is NN/training/promotion.py.
"""

from __future__ import annotations

import copy
import queue
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from core.config import ModelsConfig
from core.types import FeatureBatch, FeatureSpec, Swap, Verdict
from NN.experts.base import Expert
from NN.training.online.feed import drain
from NN.training.online.worker import TrainerSpec
from NN.training.promotion import MIN_VAL_SAMPLES, evaluate, judge
from NN.weights_io import load_weights

# (spec, published body, validation batch, labels, champion version, champion state)
Job = tuple[TrainerSpec, dict, FeatureBatch, np.ndarray, str, dict[str, Any]]


class Judge:
    """The evaluator thread, its job and verdict queues, and the last scores per expert (``scores``:
    challenger_score, champion_score, last_verdict, promotions; read by the manager's status)."""

    def __init__(self, models_cfg: ModelsConfig, spec: FeatureSpec) -> None:
        self.models_cfg = models_cfg
        self.spec = spec
        self.scores: dict[str, dict[str, Any]] = {}
        self._jobs: queue.Queue = queue.Queue()
        self._results: queue.Queue = queue.Queue()
        self._evaluator: threading.Thread | None = None
        self._scratch: dict[tuple[str, str], Expert] = {}
        self.closed = False

    def submit(self, spec: TrainerSpec, body: dict, batch: FeatureBatch, labels: np.ndarray,
               champ_version: str, champ_state: dict[str, Any]) -> None:
        """Score the checkpoint ``body["path"]`` against the champion on ``batch`` (background thread)."""
        self._jobs.put((spec, body, batch, labels, champ_version, champ_state))
        if self._evaluator is None or not self._evaluator.is_alive():
            self._evaluator = threading.Thread(target=self._evaluate_loop, name="challenger-eval",
                                               daemon=True)
            self._evaluator.start()

    def judged(self, spec: TrainerSpec, body: dict) -> None:
        """A trainer's checkpoint with the validation scores it computed on its withheld window."""
        margin = spec.online.promote_margin
        if "challenger_logloss" in body:
            verdict = judge(float(body["champion_logloss"]), float(body["challenger_logloss"]), margin,
                            int(body["n_val"]), MIN_VAL_SAMPLES, gain_se=float(body.get("gain_se", 0.0)),
                            z=spec.online.promote_z)
        else:
            verdict = judge(float("nan"), float("nan"), margin, int(body["n_val"]), MIN_VAL_SAMPLES)
        self._results.put((spec.name, body["version"], Path(body["path"]), None, verdict,
                           str(body["champion_version"])))

    def _scratch_expert(self, name: str, role: str) -> Expert:
        ex = self._scratch.get((name, role))
        if ex is None:
            from NN.experts.registry import build_expert

            cfg = self.models_cfg.experts[name].model_copy(update={"device": "cpu"})
            ex = self._scratch[(name, role)] = build_expert(name, cfg, self.spec)
            ex.version = ""
        return ex

    def _next_jobs(self) -> list[Job] | None:
        """Block for one job, then take whatever else is queued; per expert only the NEWEST
        checkpoint is judged (older ones are superseded: their files are removed). None = stop."""
        jobs = drain(self._jobs, None)
        if any(j is None for j in jobs):
            return None
        newest: dict[str, Job] = {}
        for j in jobs:
            old = newest.get(j[0].name)
            if old is not None:
                Path(old[1]["path"]).unlink(missing_ok=True)
            newest[j[0].name] = j
        return list(newest.values())

    def _evaluate_loop(self) -> None:
        while True:
            jobs = self._next_jobs()
            if jobs is None:
                return
            for job in jobs:
                self._evaluate_one(*job)

    def _evaluate_one(self, spec: TrainerSpec, body: dict, batch: FeatureBatch, labels: np.ndarray,
                      champ_version: str, champ_state: dict[str, Any]) -> None:
        path = Path(body["path"])
        try:
            champ = self._scratch_expert(spec.name, "champion")
            if champ.version != champ_version:
                champ.load_state_dict(copy.deepcopy(champ_state))
                champ.version = champ_version
            chall = self._scratch_expert(spec.name, "challenger")
            state = load_weights(path)
            chall.load_state_dict(state)
            verdict = evaluate(champ, chall, batch, labels, spec.online.promote_margin, MIN_VAL_SAMPLES,
                               z=spec.online.promote_z)
            self._results.put((spec.name, body["version"], path, state, verdict, champ_version))
        except Exception as exc:  # a broken checkpoint is reported, never applied
            self._results.put((spec.name, body["version"], path, None,
                               Verdict(False, float("nan"), float("nan"), spec.online.promote_margin, 0,
                                       f"evaluation failed: {type(exc).__name__}: {exc}"), champ_version))

    def collect(self, champion: Mapping[str, tuple[str, dict[str, Any]]]) -> list[Swap]:
        """The verdicts so far as promotion Swaps (engine thread). A win counts only against the
        champion it was judged against (``champion``: name -> (live version, state))."""
        swaps: list[Swap] = []
        while True:
            try:
                name, version, path, state, verdict, champ_version = self._results.get_nowait()
            except queue.Empty:
                return swaps
            self.scores[name] = {**self.scores.get(name, {}), "challenger_score": verdict.challenger_logloss,
                                 "champion_score": verdict.champion_logloss, "last_verdict": verdict.reason}
            if verdict.promote and champ_version == champion[name][0]:
                try:
                    if state is None:  # judged by its trainer: load the winner only (small file)
                        state = load_weights(path)
                    swaps.append(Swap(expert=name, version=version, state=state, kind="promote",
                                      verdict=verdict, path=str(path)))
                    continue
                except Exception as exc:
                    self.scores[name]["last_verdict"] = f"cannot load {path.name}: {exc}"
            path.unlink(missing_ok=True)  # rejected (or superseded) challengers leave no files behind

    def promoted(self, name: str) -> None:
        sc = self.scores.setdefault(name, {})
        sc["promotions"] = sc.get("promotions", 0) + 1

    def close(self) -> None:
        """Take no more jobs (``submit`` callers check ``closed``)."""
        self.closed = True

    def join(self, timeout: float) -> None:
        """Stop the evaluator thread once it has finished the jobs it holds."""
        if self._evaluator is not None:
            self._jobs.put(None)
            self._evaluator.join(timeout)
            self._evaluator = None
