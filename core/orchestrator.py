"""The orchestrator: one closed candle in, one Decision out.

On each closed base-timeframe candle it builds the features once, asks every enabled expert, lets the
gate fuse their opinions, applies the thresholds (``decide``) and hands the Decision to the executor.
The same object runs live and in event-mode backtests; the fast backtest reuses ``GateRunner`` and
``decide_codes`` so both modes make bit-identical decisions.

Slow experts (``input_kind == "candles"``, i.e. Kronos) forecast every ``kronos_every_bars`` bars:
live on their own worker thread (the freshest finished forecast is used), in backtests synchronously
(through an optional cache) so a replay is deterministic.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from core.audit import AuditWriter
from core.config import RobustConfig
from core.conformal import BandTracker
from core.fusion import FusionStep, RobustFusion, ood_discount
from core.labels import realised_class
from core.slow_worker import KronosWorker
from core.types import (
    Action,
    CandleEvent,
    CheckpointCatalog,
    CheckpointInfo,
    Decision,
    ExpertLike,
    ExpertOutput,
    FeatureBatch,
    Gate,
    Thresholds,
    timeframe_ms,
)

if TYPE_CHECKING:
    from core.backtest.forecast_cache import ForecastCache
    from core.data.store import MarketStore
    from core.execution.executor import Executor
    from core.features import FeatureBuilder

log = logging.getLogger(__name__)

HOLD, BUY, SELL = 0, 1, -1  # action codes shared with the execution kernel
CODE_TO_ACTION = {HOLD: Action.HOLD, BUY: Action.BUY, SELL: Action.SELL}
UNIFORM = np.full(3, 1.0 / 3.0)


# ---------------------------------------------------------------- the decision rule (pure)


def decide(probs: np.ndarray | tuple[float, float, float], thresholds: Thresholds,
           confidence: float = 1.0) -> Action:
    """BUY when P(up) >= buy and confidence >= min_confidence; SELL when P(down) >= sell and
    confidence >= min_confidence; else HOLD. When thresholds <= 0.5 let both fire, the larger
    probability wins and an exact tie holds (no side has the better case)."""
    return CODE_TO_ACTION[int(decide_codes(np.asarray(probs, dtype=np.float64).reshape(1, 3),
                                           np.array([confidence], dtype=np.float64), thresholds)[0])]


def decide_codes(fused: np.ndarray, confidence: np.ndarray, thresholds: Thresholds) -> np.ndarray:
    """Vectorised ``decide`` over N rows -> int8 codes (BUY 1, SELL -1, HOLD 0)."""
    fused = np.asarray(fused, dtype=np.float64)
    ok = np.asarray(confidence, dtype=np.float64) >= thresholds.min_confidence
    up, down = fused[:, 2], fused[:, 0]
    buy = ok & (up >= thresholds.buy)
    sell = ok & (down >= thresholds.sell)
    both = buy & sell
    buy = buy & ~(both & (down >= up))
    sell = sell & ~(both & (up >= down))
    return (buy.astype(np.int8) - sell.astype(np.int8)).astype(np.int8)


def target_position(code: int, current: float, long_size: float, allow_short: bool = False) -> float:
    """BUY -> long ``long_size``; SELL -> flat (or short when allowed); HOLD -> keep ``current``."""
    if code == BUY:
        return float(long_size)
    if code == SELL:
        return -float(long_size) if allow_short else 0.0
    return float(current)


# ---------------------------------------------------------------- gate with matured-only updates


class GateRunner:
    """Feeds the gate's online Hedge update ONLY with matured outcomes: the probabilities recorded at
    bar i are scored at bar i + horizon, before that bar is fused. Used identically live, in event
    and in fast backtests, so the gate's weights are the same in all three.

    Above the gate sits the robust layer (core/fusion.py, ``moe.robust`` in models.yml): the base-rate
    expert, the experts themselves, the gate and its online recalibration, mixed with fixed-share
    weights, so the fused log loss can exceed the best of them only by the regret bound documented
    there. ``ood`` [E] (the experts' out-of-distribution scores, NaN = unknown) discounts experts in
    the gate above ``robust.ood_threshold``. The returned weights are then each expert's effective
    share; ``climatology_weight`` is the base rate's (they sum to 1)."""

    def __init__(self, gate: Gate, horizon: int, dead_zone: float, robust: RobustConfig | None = None) -> None:
        self.gate = gate
        self.horizon = int(horizon)
        self.dead_zone = float(dead_zone)
        self._pending: deque[tuple[float, np.ndarray]] = deque()
        cfg = robust if robust is not None else gate.robust
        self.robust_cfg: RobustConfig | None = cfg if cfg is not None and cfg.enabled else None
        self.robust: RobustFusion | None = None  # built at the first bar (needs the number of experts)
        self.last: FusionStep | None = None  # the robust layer's last bar (dashboard)
        self.last_discount: np.ndarray | None = None  # the OOD multipliers of the last bar
        self.climatology_weight = 0.0  # the base rate's weight at the last bar
        self.climatology_weights: np.ndarray = np.zeros(0)  # per bar of the last run_many

    def _observe(self, close: float, probs: np.ndarray) -> int | None:
        realised = None
        if len(self._pending) >= self.horizon:
            c0, p0 = self._pending.popleft()
            realised = realised_class(math.log(close / c0), self.dead_zone)
            self.gate.observe(p0, realised)
        self._pending.append((float(close), probs.copy()))
        return realised

    def _discount(self, ood: np.ndarray | None) -> np.ndarray | None:
        if ood is None or self.robust_cfg is None:
            return None
        d = ood_discount(ood, self.robust_cfg.ood_threshold)
        return d if (d < 1.0).any() else None

    def _gate(self, probs: np.ndarray, regime: np.ndarray, enabled: np.ndarray, disc: np.ndarray | None
              ) -> tuple[np.ndarray, np.ndarray]:
        if not enabled.any():
            return np.zeros(len(enabled)), UNIFORM.copy()
        if disc is None:
            w, fused = self.gate.fuse(probs[None], regime[None], enabled)
        else:
            w, fused = self.gate.fuse(probs[None], regime[None], enabled, discount=disc)
        return np.asarray(w[0], dtype=np.float64), np.asarray(fused[0], dtype=np.float64)

    def _robust_layer(self, realised: int | None, probs: np.ndarray, enabled: np.ndarray, w: np.ndarray,
                      fused: np.ndarray, learn: bool = True) -> tuple[np.ndarray, np.ndarray]:
        if self.robust_cfg is None:
            return w, fused
        if self.robust is None:
            c = self.robust_cfg
            self.robust = RobustFusion([str(i) for i in range(len(enabled))], self.horizon, alpha=c.share,
                                       climatology_window=c.climatology_window, recal_lr=c.recal_lr)
        fs = (self.robust.step(realised, probs, enabled, fused) if learn
              else self.robust.predict(probs, enabled, fused))
        w_eff, self.climatology_weight = self.robust.expert_weights(fs.member_weights, w)
        self.last = fs
        return w_eff, fs.fused

    def step(self, close: float, probs: np.ndarray, regime: np.ndarray, enabled: np.ndarray,
             ood: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """probs [E, 3], regime [R], enabled bool [E], ood [E] -> (weights [E], fused [3]) for this bar,
        after the outcome that matured at this bar has updated the gate and the robust layer."""
        realised = self._observe(close, probs)
        disc = self.last_discount = self._discount(ood)
        w, fused = self._gate(probs, regime, enabled, disc)
        return self._robust_layer(realised, probs, enabled, w, fused)

    def fuse(self, probs: np.ndarray, regime: np.ndarray, enabled: np.ndarray, ood: np.ndarray | None = None
             ) -> tuple[np.ndarray, np.ndarray]:
        """``step`` without the matured-outcome update (previews: nothing is learnt)."""
        w, fused = self._gate(probs, regime, enabled, self._discount(ood))
        if self.robust is None:  # nothing matured yet: the robust layer has no state to preview with
            return w, fused
        return self._robust_layer(None, probs, enabled, w, fused, learn=False)

    def run_many(self, close: np.ndarray, probs: np.ndarray, regime: np.ndarray, enabled: np.ndarray,
                 progress: Callable[[int, int], None] | None = None, ood: np.ndarray | None = None
                 ) -> tuple[np.ndarray, np.ndarray]:
        """``step`` over N bars (fast backtests): probs [N, E, 3], regime [N, R], enabled [N, E], ood
        [N, E]. A gate whose weights depend on the outcomes matured before each bar (Hedge, or a
        trained gate that adapts online: ``gate.adapts``) is walked bar by bar; a trained gate that
        does not adapt depends on the bar's inputs only, so it is fused in one batch per
        enabled-pattern (the robust layer is then walked over its outputs)."""
        n, e = enabled.shape
        W = np.zeros((n, e))
        F = np.tile(UNIFORM, (n, 1))
        cw = np.zeros(n)
        if self.gate.adapts:
            for j in range(n):
                W[j], F[j] = self.step(close[j], probs[j], regime[j], enabled[j], None if ood is None else ood[j])
                cw[j] = self.climatology_weight
                if progress is not None and j % 4096 == 0:
                    progress(j, n)
            self.climatology_weights = cw
            return W, F
        realised: list[int | None] = []
        for j in range(n):  # keep the matured-outcome bookkeeping identical to the live path
            realised.append(self._observe(close[j], probs[j]))
        patterns, inverse = np.unique(enabled, axis=0, return_inverse=True)
        for k, pat in enumerate(patterns):
            rows = np.flatnonzero(inverse.reshape(-1) == k)
            if not pat.any():
                continue
            for r in rows:  # the OOD discount differs per bar: rows with one are fused singly
                disc = self._discount(None if ood is None else ood[r])
                if disc is not None:
                    W[r], F[r] = self._gate(probs[r], regime[r], pat, disc)
            plain = [r for r in rows if self._discount(None if ood is None else ood[r]) is None]
            if plain:
                w, f = self.gate.fuse(probs[plain], regime[plain], pat)
                W[plain], F[plain] = w, f
        if self.robust_cfg is not None:
            for j in range(n):
                W[j], F[j] = self._robust_layer(realised[j], probs[j], enabled[j], W[j], F[j])
                cw[j] = self.climatology_weight
        self.climatology_weights = cw
        return W, F


# ---------------------------------------------------------------- orchestrator


@dataclass(frozen=True, slots=True)
class OrchestratorSnapshot:
    decision: Decision | None
    outputs: Mapping[str, ExpertOutput]
    weights: Mapping[str, float]
    latency_ms: Mapping[str, float]
    thresholds: Thresholds
    enabled: Mapping[str, bool]
    versions: Mapping[str, str]
    errors: tuple[tuple[int, str, str], ...]  # (ts_ms, where, message), newest last
    decisions: int = 0
    extras: Mapping[str, Any] = field(default_factory=dict)


class Orchestrator:
    """See the module docstring. ``on_candle`` must be called from one thread (the engine's)."""

    def __init__(self, experts: Mapping[str, ExpertLike], gate: Gate, builder: FeatureBuilder,
                 thresholds: Thresholds, store: MarketStore | None, executor: Executor | None, symbol: str,
                 timeframe: str, *,
                 horizon: int = 5, dead_zone: float = 0.002, slow_every_bars: int = 5,
                 slow_async: bool = True, slow_cache: ForecastCache | None = None,
                 sizer: Callable[[FeatureBatch], float] | None = None, allow_short: bool = False,
                 registry: CheckpointCatalog | None = None, swap_every: int = 50, run_id: str = "live",
                 audit_flush_every: int = 500,
                 enabled: Mapping[str, bool] | None = None, keep_errors: int = 50) -> None:
        self.experts = dict(experts)
        self.names = list(self.experts)
        for ex in self.experts.values():
            ex.calendar = builder.calendar  # this market's sessions (future bars of forecasts)
        self.gate = gate
        self.gate_runner = GateRunner(gate, horizon, dead_zone)
        self.builder = builder
        self._thresholds = thresholds
        self.store = store
        self.executor = executor
        self.symbol = symbol
        self.timeframe = timeframe
        self.tf_ms = timeframe_ms(timeframe)
        self.slow_every = int(slow_every_bars)
        self.slow_async = slow_async
        self.slow_cache = slow_cache
        self.sizer = sizer
        self.allow_short = allow_short
        self.registry = registry
        self.swap_every = max(1, int(swap_every))
        self.run_id = run_id
        self.audit = AuditWriter(store, run_id, flush_every=audit_flush_every)
        self._enabled = {n: True for n in self.names}
        if enabled:
            self._enabled.update({k: bool(v) for k, v in enabled.items() if k in self._enabled})
        self._lock = threading.Lock()
        self._errors: deque[tuple[int, str, str]] = deque(maxlen=keep_errors)
        self._slow_latest: dict[str, ExpertOutput] = {}
        self._workers: dict[str, KronosWorker] = {}
        self._band_trackers: dict[str, BandTracker] = {}  # ACI of each candle expert's bands
        self._bands_out: dict[str, tuple[ExpertOutput, ExpertOutput]] = {}  # (raw, adjusted) last forecast
        self._position = 0.0  # target fraction currently held (HOLD keeps it)
        self._count = 0
        self._snap = OrchestratorSnapshot(None, {}, {}, {}, thresholds, dict(self._enabled),
                                          self._versions(), ())
        self._seen_versions: dict[str, str] = {}
        # experts whose weights another authority swaps (the engine's TrainingManager promotions):
        # the registry poll leaves them alone so it cannot revert a promotion
        self.managed: set[str] = set()
        # a managed expert's newly registered best checkpoint goes here (name, CheckpointInfo) instead
        # of being loaded: the authority judges it (TrainingManager.submit_checkpoint)
        self.checkpoint_sink: Callable[[str, CheckpointInfo], None] | None = None
        self.last_batch: FeatureBatch | None = None  # the features of the last decision (training feed)

    # ---- commands (any thread; read at the start of the next decision)
    def set_thresholds(self, t: Thresholds) -> None:
        if not isinstance(t, Thresholds):
            raise TypeError(f"set_thresholds expects Thresholds, got {type(t).__name__}")
        self._thresholds = t  # one reference swap: atomic, applied to the next decision

    @property
    def thresholds(self) -> Thresholds:
        return self._thresholds

    def set_expert_enabled(self, name: str, enabled: bool) -> None:
        if name not in self._enabled:
            raise KeyError(f"unknown expert {name!r}; known: {', '.join(self.names)}")
        with self._lock:
            self._enabled = {**self._enabled, name: bool(enabled)}

    @property
    def enabled(self) -> dict[str, bool]:
        """The current switches (the snapshot holds those of the last decision)."""
        return dict(self._enabled)

    def snapshot(self) -> OrchestratorSnapshot:
        return self._snap

    # ---- the decision path
    def on_candle(self, event: CandleEvent, frames: dict[str, pd.DataFrame],
                  ref: pd.DataFrame | None = None) -> Decision | None:
        key = event.key
        if not event.closed or key.symbol != self.symbol or key.timeframe != self.timeframe:
            return None
        t0 = time.perf_counter()
        thresholds = self._thresholds
        enabled_map = self._enabled
        self._count += 1
        if self.registry is not None and self._count % self.swap_every == 0:
            self._maybe_swap()
        base = frames[self.timeframe]
        if len(base) < self.builder.min_history:
            return None  # warming up: not enough history for a complete feature sample
        batch = self.builder.build_one(frames, ref, symbol=self.symbol)
        if len(batch) == 0 or int(batch.ts[-1]) != event.ts:
            raise ValueError(f"features were built for ts={batch.ts[-1] if len(batch) else None}, "
                             f"not for the closed candle ts={event.ts}: frames are out of date")
        self.last_batch = batch
        outputs, latency = self._ask_experts(batch, base, event.ts, enabled_map)
        return self._finish(event.ts, float(batch.close[-1]), batch, outputs, latency, thresholds,
                            enabled_map, t0)

    def _ask_experts(self, batch: FeatureBatch, base: pd.DataFrame, ts: int, enabled_map: Mapping[str, bool],
                     slow: bool = True) -> tuple[dict[str, ExpertOutput], dict[str, float]]:
        """Every enabled expert's output for this bar; ``slow=False`` only reads the freshest finished
        forecast of slow experts (no new request)."""
        outputs: dict[str, ExpertOutput] = {}
        latency: dict[str, float] = {}
        for name in self.names:
            if not enabled_map.get(name, True):
                continue
            ex = self.experts[name]
            if ex.input_kind == "candles":
                out = self._slow(name, ex, batch, base, ts) if slow else self._slow_output(name)
                if out is not None:
                    out = self._conformal(name, out, base)
                    outputs[name] = out
                    latency[name] = out.latency_ms
                continue
            try:
                t = time.perf_counter()
                out = ex.predict(batch)
                latency[name] = (time.perf_counter() - t) * 1000.0
                if not np.all(np.isfinite(out.probs)):
                    raise ValueError(f"non-finite probabilities {out.probs}")
                outputs[name] = out
            except Exception as exc:  # skipped for this bar and reported; decisions go on
                self._error(f"expert:{name}", exc)
        return outputs, latency

    def _conformal(self, name: str, out: ExpertOutput, base: pd.DataFrame) -> ExpertOutput:
        """A candle expert's forecast with its bands through adaptive conformal inference
        (core/conformal.BandTracker), once per new forecast; later bars reuse the adjusted one."""
        seen = self._bands_out.get(name)
        if seen is not None and seen[0] is out:
            return seen[1]
        tracker = self._band_trackers.get(name)
        if tracker is None:
            tracker = self._band_trackers[name] = BandTracker(out.horizon)
        adj = dataclasses.replace(out, extras=tracker.adjust(
            out.ts, out.extras, base["ts"].to_numpy(np.int64), base["close"].to_numpy(np.float64)))
        self._bands_out[name] = (out, adj)
        return adj

    def _slow_output(self, name: str) -> ExpertOutput | None:
        w = self._workers.get(name)
        return w.latest() if w is not None else self._slow_latest.get(name)

    def _slow(self, name: str, ex: ExpertLike, batch: FeatureBatch, base: pd.DataFrame, ts: int
              ) -> ExpertOutput | None:
        due = (ts // self.tf_ms) % self.slow_every == 0
        if self.slow_async:
            w = self._workers.get(name)
            if w is None:
                w = self._workers[name] = KronosWorker(ex, lambda n, e: self._error(f"expert:{n}", e))
            if due:
                w.submit(batch.take(slice(len(batch) - 1, len(batch))), base.copy())
            return w.latest()
        if due:
            try:
                if self.slow_cache is not None:
                    out = self.slow_cache.get_or_compute(ex, batch, base)
                else:
                    out = ex.predict(batch, base)
                self._slow_latest[name] = out
            except Exception as exc:
                self._error(f"expert:{name}", exc)
        return self._slow_latest.get(name)

    def preview(self, frames: Mapping[str, Any], ref: pd.DataFrame | None = None) -> Decision:
        """The decision the experts would make at the newest bar of ``frames``, with nothing traded,
        audited or learnt: the gate sees no outcome, the position stays, slow experts (Kronos) are
        not asked again (their freshest finished forecast is used), the snapshot is unchanged."""
        base = frames[self.timeframe]
        if len(base) < self.builder.min_history:
            raise RuntimeError(f"not enough history yet: {len(base)} of {self.builder.min_history} bars")
        batch = self.builder.build_one(frames, ref, symbol=self.symbol)
        ts = int(batch.ts[-1])
        outputs, _latency = self._ask_experts(batch, base, ts, self._enabled, slow=False)
        probs, mask, conf, er = self._stack(outputs)
        w, fused = self.gate_runner.fuse(probs, np.asarray(batch.regime[-1], dtype=np.float64), mask,
                                         self._ood(outputs))
        return self._decision(f"preview:{ts}", ts, batch, outputs, w, fused, mask, conf, er, self._thresholds)

    def _ood(self, outputs: Mapping[str, ExpertOutput]) -> np.ndarray:
        """[E] the experts' OOD scores (extras["ood"]; NaN where an expert has none)."""
        return np.array([float(outputs[n].extras.get("ood", np.nan)) if n in outputs else np.nan
                         for n in self.names])

    def _stack(self, outputs: Mapping[str, ExpertOutput]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Outputs by expert -> probs [E, 3] (uniform where missing), mask [E], confidence [E],
        expected return [E], in ``self.names`` order."""
        e = len(self.names)
        probs, mask = np.tile(UNIFORM, (e, 1)), np.zeros(e, dtype=bool)
        conf, er = np.zeros(e), np.zeros(e)
        for i, n in enumerate(self.names):
            o = outputs.get(n)
            if o is not None:
                probs[i], mask[i], conf[i], er[i] = o.probs, True, o.confidence, o.expected_return
        return probs, mask, conf, er

    def _decision(self, did: str, ts: int, batch: FeatureBatch, outputs: Mapping[str, ExpertOutput],
                  w: np.ndarray, fused: np.ndarray, mask: np.ndarray, conf: np.ndarray, er: np.ndarray,
                  thresholds: Thresholds) -> Decision:
        """The thresholds' verdict on the fused probabilities (pure apart from the sizer)."""
        confidence = float(w @ conf)
        code = int(decide_codes(fused[None], np.array([confidence]), thresholds)[0]) if mask.any() else HOLD
        size = self.sizer(batch) if self.sizer is not None else 1.0
        action = CODE_TO_ACTION[code]
        return Decision(
            id=did, ts=int(ts), symbol=self.symbol, action=action,
            probs=(float(fused[0]), float(fused[1]), float(fused[2])), expected_return=float(w @ er),
            weights=decision_weights(self.names, w, mask, self.gate_runner.climatology_weight),
            thresholds=thresholds,
            target_position=target_position(code, self._position, size, self.allow_short),
            reason=explain(action, fused, confidence, thresholds, len(outputs)),
            outputs=tuple(outputs[n] for n in self.names if n in outputs),
        )

    def _finish(self, ts: int, close: float, batch: FeatureBatch, outputs: dict[str, ExpertOutput],
                latency: dict[str, float], thresholds: Thresholds, enabled_map: Mapping[str, bool],
                t0: float) -> Decision:
        probs, mask, conf, er = self._stack(outputs)
        w, fused = self.gate_runner.step(close, probs, np.asarray(batch.regime[-1], dtype=np.float64), mask,
                                         self._ood(outputs))
        decision = self._decision(f"{self.run_id}:{ts}", ts, batch, outputs, w, fused, mask, conf, er, thresholds)
        refuse = getattr(self.executor, "refusal", None)
        why = refuse(decision) if refuse is not None else None
        if why is not None:  # shown and audited with the reason; the executor will not trade it
            decision = replace(decision, reason=f"{decision.reason} · {why}")
        else:
            self._position = decision.target_position
        self.audit.add(decision, float(w @ conf))
        if self.executor is not None:
            self.executor.on_decision(decision)
        latency["total"] = (time.perf_counter() - t0) * 1000.0
        self._snap = OrchestratorSnapshot(
            decision=decision,
            outputs=MappingProxyType(dict(outputs)),
            weights=MappingProxyType(dict(decision.weights)),
            latency_ms=MappingProxyType(latency),
            thresholds=thresholds,
            enabled=MappingProxyType(dict(enabled_map)),
            versions=self._versions(),
            errors=tuple(self._errors),
            decisions=self._count,
        )
        return decision

    # ---- checkpoints, errors, shutdown
    def _maybe_swap(self) -> None:
        """Cheap poll: only when an expert's latest registered version changed do we ask for the
        best one, and load it when it differs from what is running (between two decisions)."""
        reg = self.registry
        if reg is None:
            return
        targets: dict[str, ExpertLike | Gate] = dict(self.experts)
        if self.gate.name not in targets:
            targets[self.gate.name] = self.gate  # a newly trained gate is swapped the same way
        for name, ex in targets.items():
            try:
                latest = reg.latest_version(name)
                if latest is None or latest == self._seen_versions.get(name):
                    continue
                self._seen_versions[name] = latest
                best = reg.best(name)
                if name in self.managed:  # its weights are swapped by another authority
                    if best is not None and best.version != ex.version and self.checkpoint_sink is not None:
                        self.checkpoint_sink(name, best)
                    continue
                if best is not None and best.version != ex.version:
                    if reg.load_into(ex, best.version):
                        log.info("swapped %s weights to %s", name, best.version)
            except Exception as exc:  # a broken checkpoint keeps the old weights
                self._error(f"checkpoint:{name}", exc)

    def _versions(self) -> Mapping[str, str]:
        return MappingProxyType({n: str(e.version) for n, e in self.experts.items()})

    def _error(self, where: str, exc: BaseException) -> None:
        msg = f"{type(exc).__name__}: {exc}"
        log.warning("%s failed: %s", where, msg)
        self._errors.append((int(time.time() * 1000), where, msg))

    @property
    def errors(self) -> list[tuple[int, str, str]]:
        return list(self._errors)

    def close(self) -> None:
        for w in self._workers.values():
            w.stop()
        self._workers.clear()
        self.audit.flush()


def decision_weights(names: list[str], w: np.ndarray, mask: np.ndarray, climatology: float) -> dict[str, float]:
    """Decision.weights: each present expert's effective weight, plus the base rate's under
    "climatology" when the robust layer gave it any."""
    out = {n: float(w[i]) for i, n in enumerate(names) if mask[i]}
    if climatology > 0:
        out["climatology"] = float(climatology)
    return out


def explain(action: Action, fused: np.ndarray, confidence: float, t: Thresholds, n: int) -> str:
    """One line saying why: the numbers the rule compared."""
    if n == 0:
        return "HOLD: no expert output available"
    s = (f"P(up)={fused[2]:.3f} vs buy {t.buy:.2f}, P(down)={fused[0]:.3f} vs sell {t.sell:.2f}, "
         f"confidence {confidence:.3f} vs {t.min_confidence:.2f}, {n} experts")
    return f"{action}: {s}"
