"""Progress of an offline training job (Train now) as explicit stages — Kronos, feature building, each
features expert, the gate — each with the units it has done (epochs; the gate: validation rows every
expert, Kronos included, forecast), and an ETA estimated per stage from measured durations.

``estimate`` is pure (stages + clock in, seconds out): a stage's rate is measured on its own units, so
feature building no longer inflates the first epoch, and a stage with no measurement and no sound basis
is named "estimating" instead of being given a wrong number.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

GATE_STAGE = "gate"
FEATURES_STAGE = "features"
KRONOS_STAGE = "kronos"


class StageSink(Protocol):
    """What the trainer reports to (NN/training/trainer.run_training)."""

    def begin(self, stage: str, total: int | None = None) -> None: ...

    def advance(self, stage: str, done: int, total: int | None = None, **metrics: float) -> None: ...

    def end(self, stage: str) -> None: ...

    def prior(self, stage: str, seconds_per_unit: float, total: int | None = None) -> None: ...


class NullSink:
    """A StageSink that records nothing (training without a progress display)."""

    def begin(self, stage: str, total: int | None = None) -> None:
        pass

    def advance(self, stage: str, done: int, total: int | None = None, **metrics: float) -> None:
        pass

    def end(self, stage: str) -> None:
        pass

    def prior(self, stage: str, seconds_per_unit: float, total: int | None = None) -> None:
        pass


@dataclass
class Stage:
    name: str
    kind: str  # kronos | features | expert | gate
    unit: str  # what ``done`` / ``total`` count: epoch | row | "" (one step)
    total: int | None = None
    done: int = 0
    state: str = "pending"  # pending | running | done
    started: float | None = None
    finished: float | None = None
    last: float | None = None  # when the latest unit finished
    recent: float | None = None  # seconds per unit of the latest report (the load now, not the average)
    prior_s: float | None = None  # seconds per unit measured before the stage started (the gate's probe)
    metrics: dict[str, float] = field(default_factory=dict)


def job_stages(names: list[str], epochs: int, gate_rows: int | None, gate_name: str = "moe") -> list[Stage]:
    """The stages of a job training ``names`` (run_training's order: Kronos, features, experts, gate)."""
    out: list[Stage] = []
    if KRONOS_STAGE in names:
        out.append(Stage(KRONOS_STAGE, "kronos", "epoch"))
    out.append(Stage(FEATURES_STAGE, "features", ""))
    out += [Stage(n, "expert", "epoch", total=epochs) for n in names if n not in (KRONOS_STAGE, gate_name)]
    if gate_name in names:
        out.append(Stage(GATE_STAGE, "gate", "row", total=gate_rows))
    return out


def _rate(s: Stage) -> float | None:
    """Seconds per unit measured on this stage's finished units: the mean, or the latest units' when
    they were slower (the machine got busier; an ETA that errs, errs long)."""
    if s.done < 1 or s.started is None or s.last is None:
        return None
    mean = (s.last - s.started) / s.done
    return max(mean, s.recent) if s.recent is not None else mean


def _expert_epoch_s(stages: list[Stage]) -> float | None:
    """Mean epoch time of the features experts measured so far (a prior for the ones not started)."""
    spent = [(s.last - s.started, s.done) for s in stages
             if s.kind == "expert" and s.done and s.started is not None and s.last is not None]
    n = sum(d for _, d in spent)
    return sum(t for t, _ in spent) / n if n else None


def stage_remaining(s: Stage, stages: list[Stage], now: float) -> float | None:
    """Seconds this stage still needs (None: not known yet)."""
    if s.state == "done":
        return 0.0
    rate = _rate(s)
    if rate is None and s.prior_s is not None:  # measured ahead (a probe), not yet on the stage itself
        left = s.prior_s * (s.total or 0)
        return max(0.0, left - (now - s.started)) if s.state == "running" and s.started is not None else left
    if rate is None and s.kind == "expert":
        rate = _expert_epoch_s(stages)  # an unstarted expert: the others' epochs (early stopping may cut it)
        if rate is not None and s.state == "running" and s.started is not None:
            return max(0.0, rate * (s.total or 0) - (now - s.started))
    if rate is None or s.total is None:
        return None
    left = rate * max(0, s.total - s.done)
    if s.state == "running" and s.last is not None and s.done:
        left -= now - s.last  # the unit under way has been running that long
    return max(0.0, left)


def estimate(stages: list[Stage], now: float) -> tuple[float | None, list[str]]:
    """(seconds left for the known stages, None when none is known; the stages still being estimated)."""
    known, unknown = 0.0, []
    any_known = False
    for s in stages:
        r = stage_remaining(s, stages, now)
        if r is None:
            unknown.append(s.name)
        else:
            known += r
            any_known = any_known or s.state != "done"
    return (round(known, 1) if any_known or not unknown else None), unknown


class Tracker:
    """A StageSink that keeps the stages and calls ``on_change(summary)`` after every event."""

    def __init__(self, stages: list[Stage], on_change: Callable[[dict[str, Any]], None] | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.stages = {s.name: s for s in stages}
        self.on_change = on_change
        self.clock = clock

    def _stage(self, name: str) -> Stage:
        if name not in self.stages:  # a stage the plan did not foresee: shown all the same
            self.stages[name] = Stage(name, "expert", "epoch")
        return self.stages[name]

    def begin(self, stage: str, total: int | None = None) -> None:
        s = self._stage(stage)
        s.state, s.started, s.done, s.last, s.recent = "running", self.clock(), 0, None, None
        if total is not None:
            s.total = total
        self._changed()

    def advance(self, stage: str, done: int, total: int | None = None, **metrics: float) -> None:
        s = self._stage(stage)
        now = self.clock()
        if s.state == "pending":
            s.state, s.started = "running", now
        since = s.last if s.last is not None else s.started
        if done > s.done and since is not None:
            s.recent = (now - since) / (done - s.done)
        s.done, s.last = done, now
        if total is not None:
            s.total = total
        s.metrics.update({k: round(float(v), 5) for k, v in metrics.items() if v == v})  # NaN: not shown
        self._changed()

    def prior(self, stage: str, seconds_per_unit: float, total: int | None = None) -> None:
        s = self._stage(stage)
        s.prior_s = round(float(seconds_per_unit), 4)
        if total is not None:
            s.total = total
        self._changed()

    def end(self, stage: str) -> None:
        s = self._stage(stage)
        now = self.clock()
        s.state, s.finished = "done", now
        if s.started is None:
            s.started = now
        self._changed()

    def summary(self) -> dict[str, Any]:
        """The status fields: the stage list (with each stage's remaining seconds), the current stage, the
        ETA of the known stages and the names still being estimated."""
        now = self.clock()
        stages = list(self.stages.values())
        eta, unknown = estimate(stages, now)
        current = next((s for s in stages if s.state == "running"), None)
        rows = []
        for s in stages:
            r = stage_remaining(s, stages, now)
            rows.append({**{k: v for k, v in asdict(s).items() if k not in ("last", "recent")},
                         "eta_s": None if r is None else round(r, 1)})
        return {"stages": rows, "stage": current.name if current else None, "eta_s": eta, "estimating": unknown}

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change(self.summary())
