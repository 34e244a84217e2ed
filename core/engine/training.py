"""The engine's side of live training: outcomes, trainers and weight swaps around each decision.

One ``TrainingHook`` per engine; ``attach`` gives it a fresh ``LiveTraining`` (built by the composition
root) and outcome trackers for every stream. The LiveTraining is the ONE authority over the trainable
experts' weights once their training was switched on (``managed``: the orchestrator's registry poll
skips them); its swaps are applied on the engine thread between decisions, and the version string
reaches the audit trail through ``ExpertOutput.model_version``.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from core.data.store import MarketStore
from core.orchestrator import Orchestrator
from core.outcomes import LiveOutcomes, OutcomeTracker, RollingMetrics
from core.snapshot import SwapEvent
from core.types import (
    CandleEvent,
    CheckpointInfo,
    Decision,
    ExpertLike,
    LiveTraining,
    SeriesKey,
    TrainerStatus,
)

log = logging.getLogger(__name__)

OUTCOMES_EVERY = 50  # bars between audit flush + stored outcome maturing
KEEP_SWAPS = 50

TrainingFactory = Callable[[SeriesKey, float], LiveTraining]  # (series, dead zone) -> manager
ErrorSink = Callable[[str, BaseException | str], None]


class TrainingHook:
    def __init__(self, experts: Mapping[str, ExpertLike], trained: dict[str, bool], store: MarketStore,
                 factory: TrainingFactory | None, *, enabled: bool, replay: bool, models_dir: Path,
                 resumed: set[str], default_horizon: int, on_error: ErrorSink) -> None:
        self.experts = experts
        self.trained = trained  # shared with the engine: a promotion makes weights "trained"
        self.store = store
        self.factory = factory
        self.enabled = bool(enabled) and factory is not None
        self.replay = replay
        self.models_dir = models_dir
        self.default_horizon = int(default_horizon)
        self._error = on_error
        self.manager: LiveTraining | None = None
        self.live_outcomes: LiveOutcomes | None = None
        self.outcomes: OutcomeTracker | None = None
        self.wanted: set[str] = set()  # experts the user switched training on for
        # experts whose weights online training ever governed in this engine: the orchestrator's
        # registry poll leaves them alone (a new stream's poll would otherwise revert a promotion)
        self.managed: set[str] = set(resumed)
        self.fed = False  # trainers may start: live/paper at once, a replay after its first fed decision
        self.swaps: deque[SwapEvent] = deque(maxlen=KEEP_SWAPS)
        self.bars = 0
        self._last_ts: int | None = None

    def trainable(self) -> list[str]:
        """Experts that can train online (features experts; candle experts like Kronos train offline)."""
        return [n for n, e in self.experts.items() if e.input_kind == "features"]

    # ---- per stream
    def attach(self, orch: Orchestrator, key: SeriesKey, timeframe: str, dead_zone: float) -> None:
        """A fresh manager and outcome trackers for a new stream (the old ones are closed first)."""
        self.close()
        if self.factory is not None:
            self.manager = self.factory(key, dead_zone)
        self.live_outcomes = LiveOutcomes(timeframe, dead_zone, default_horizon=self.default_horizon,
                                          calendar=orch.builder.calendar)
        self.outcomes = OutcomeTracker(self.store, key, dead_zone, default_horizon=self.default_horizon,
                                       sessions=orch.builder.calendar is not None)
        # the manager seeds an empty buffer from the NEWEST stored candles: live that is the past, in
        # a replay it is the replay's future, so a replay's trainers wait for its first decision
        self.fed = not self.replay
        self.bars = 0
        self._last_ts = None
        orch.managed = set(self.managed)
        orch.checkpoint_sink = self._judge_registered
        self.start_wanted()

    def close(self) -> None:
        if self.manager is not None:
            try:
                self.manager.shutdown()
            except Exception as exc:
                self._error("training", exc)
            self.manager = None

    # ---- around each decision
    @contextmanager
    def deciding(self) -> Iterator[None]:
        """Trainer processes are frozen for the decision's few milliseconds (LiveTraining.deciding)."""
        if self.manager is None:
            yield
            return
        with self.manager.deciding():
            yield

    def after_decision(self, ev: CandleEvent, d: Decision | None, orch: Orchestrator) -> None:
        """Outcomes and training after a bar's decision (never fails the bar: errors are reported)."""
        try:
            if self.live_outcomes is not None:
                self.live_outcomes.on_close(ev.ts, ev.close)  # before this bar's decision is added
                if d is not None:
                    self.live_outcomes.add(d)
            if d is not None:
                self._last_ts = d.ts
                batch = orch.last_batch
                if self.manager is not None and batch is not None and int(batch.ts[-1]) == d.ts:
                    self.manager.feed(batch, position=d.target_position)
                    if not self.fed:
                        self.fed = True
                        self.start_wanted()
            self.poll()
        except Exception as exc:
            self._error("training", exc)
        self.bars += 1
        if self.bars % OUTCOMES_EVERY == 0:
            self.update_outcomes(orch)

    def poll(self) -> bool:
        """Trainer housekeeping on the engine thread; applies promotions/rollbacks (the orchestrator's
        experts ARE the manager's, so the next decision predicts with the new weights and version)."""
        mgr = self.manager
        if mgr is None:
            return False
        before = {n: str(self.experts[n].version) for n in self.trainable()}
        for s in mgr.poll(apply=True):
            v = s.verdict
            self.swaps.append(SwapEvent(int(time.time() * 1000), self._last_ts, s.expert, s.kind, s.version,
                                        before.get(s.expert, "?"),
                                        v.champion_logloss if v is not None else None,
                                        v.challenger_logloss if v is not None else None))
            log.info("live %s of %s: %s -> %s", s.kind, s.expert, before.get(s.expert), s.version)
            before[s.expert] = s.version  # two swaps of one expert in one poll chain their versions
            self.trained[s.expert] = s.version != "untrained"  # promoted weights are trained weights
        return True

    def update_outcomes(self, orch: Orchestrator | None) -> None:
        if self.outcomes is None or orch is None:
            return
        try:
            orch.audit.flush()
            self.outcomes.update()
        except Exception as exc:
            self._error("outcomes", exc)

    # ---- commands (engine thread)
    def switch(self, name: str, on: bool, orch: Orchestrator | None) -> None:
        if on:
            self.wanted.add(name)
            self.managed.add(name)
            if orch is not None:
                orch.managed.add(name)
            self.start_wanted()
        else:
            self.wanted.discard(name)
            if self.manager is not None:
                self.manager.stop(name, timeout=5.0, wait=False)  # never block decisions

    def rollback(self, name: str) -> None:
        if self.manager is not None:
            self.manager.rollback(name)
            self.poll()

    def start_wanted(self) -> None:
        """Start the trainers switched on (in a replay only once a decision's features were fed)."""
        if self.manager is None or not self.fed or not self.enabled:
            return
        for name in sorted(self.wanted):
            try:
                self.manager.start(name)
            except Exception as exc:
                self._error(f"training:{name}", exc)

    # ---- reading (any thread)
    def has_history(self, name: str) -> bool:
        return self.manager is not None and self.manager.has_history(name)

    def status(self) -> Mapping[str, TrainerStatus]:
        return dict(self.manager.status()) if self.manager is not None else {}

    def metrics(self) -> tuple[Mapping[tuple[str, int], RollingMetrics], Mapping[tuple[str, int], RollingMetrics]]:
        """(live, stored) rolling outcome metrics."""
        return (self.live_outcomes.metrics() if self.live_outcomes is not None else {},
                self.outcomes.metrics() if self.outcomes is not None else {})

    def _judge_registered(self, name: str, info: CheckpointInfo) -> None:
        """A newly registered best checkpoint of an expert under online training: judged by the
        manager like a trainer's challenger (it goes live only if it wins on the validation window).
        The manager deletes a losing file, so it judges a copy and the registry's file stays."""
        if self.manager is None:
            return
        dst = self.models_dir / name / "online" / f"registry-{info.version}.pt"
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(info.path, dst)
        self.manager.submit_checkpoint(name, dst, version=str(info.version))
        log.info("registered %s %s submitted to the champion/challenger judge", name, info.version)
