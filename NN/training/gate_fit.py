"""The MoE gate's training data and fit: every member expert's probabilities on the validation rows
(``expert_probs``), the fit (``train_gate``), which experts a gate is trained over (``gate_members``), and a
probe of what the gate will cost before it starts (``gate_probe``, for Train now's ETA)."""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import pandas as pd

from core.config import ModelsConfig
from core.types import FeatureBatch
from NN.assembly import load_experts
from NN.experts.base import Expert
from NN.moe import MoEGate
from NN.training.checkpoints import CheckpointRegistry
from NN.training.prepared import Prepared, known_rows

GATE_NAME = "moe"  # the gate's name in the checkpoint registry and in --experts


def expert_probs(experts: dict[str, Expert], batch: FeatureBatch, candles: pd.DataFrame | None = None,
                 on_rows: Callable[[int, int], None] | None = None) -> np.ndarray:
    """[N, E, 3] probabilities of every expert, in dict order. ``on_rows(done, total)``: the rows are
    forecast in chunks (a small first one, so a rate is measured early) and reported after each."""
    def probs(b: FeatureBatch) -> np.ndarray:
        return np.stack([e.predict_many(b, candles if e.input_kind == "candles" else None).probs
                         for e in experts.values()], axis=1)

    n = len(batch)
    if on_rows is None or n == 0:
        return probs(batch)
    bounds = [0, *range(min(10, n), n, 50), n]
    out = []
    for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
        out.append(probs(batch.take(np.arange(lo, hi))))
        on_rows(hi, n)
    return np.concatenate(out, axis=0)


def train_gate(experts: dict[str, Expert], prep: Prepared, models: ModelsConfig, horizon: int,
               candles: pd.DataFrame | None = None, max_rows: int | None = None,
               on_rows: Callable[[int, int], None] | None = None) -> tuple[MoEGate, dict[str, float]]:
    """Fit the gate (and fused calibration) on the validation split's expert outputs. ``max_rows``:
    at most that many validation rows, evenly spaced in time (a candle expert such as Kronos samples a
    forecast per row: Train now's quick preset caps them)."""
    y, r = prep.labels(horizon)
    idx = known_rows(y, r, prep.val)
    if max_rows is not None and len(idx) > max_rows:
        idx = idx[np.unique(np.linspace(0, len(idx) - 1, max_rows).astype(np.int64))]
    vb = prep.batch.take(idx)
    probs = expert_probs(experts, vb, candles, on_rows)
    gate = MoEGate(list(experts), models.moe, len(prep.batch.spec.regime_features))
    info = gate.fit(probs, vb.regime, y[idx])
    return gate, info


def gate_probe(models: ModelsConfig, prep: Prepared, registry: CheckpointRegistry, names: list[str] | None,
               candle_models: dict[str, str], candles: pd.DataFrame, max_rows: int | None, k: int = 5
               ) -> tuple[float, int] | None:
    """(seconds per gate row, gate rows) before the gate is trained: the candle experts of the gate
    (Kronos samples a forecast per row: nearly all of the gate's time) timed row by row on ``k``
    validation rows, the median (one busy moment on a shared machine does not set it); None when the
    gate has no candle expert or one cannot forecast yet (the gate then measures itself)."""
    if not names:  # a gate over the features experts only: fast, nothing worth probing
        return None
    loaded = load_experts(models, prep.batch.spec, registry, names, keep_untrained=True)
    slow = {n: e for n, e in loaded.experts.items() if e.input_kind == "candles"}
    if not slow or loaded.errors:
        return None
    y, r = prep.labels(common_horizon(dict(loaded.experts)))
    n_rows = len(known_rows(y, r, prep.val))
    n_rows = min(n_rows, max_rows) if max_rows is not None else n_rows
    rows = np.arange(prep.val.stop - k, prep.val.stop)
    per_row = np.zeros(k)
    try:
        for name, ex in slow.items():
            if name in candle_models and hasattr(ex, "use_model"):
                ex.use_model(candle_models[name])
            ex.predict_many(prep.batch.take(rows[:1]), candles)  # loads the weights, warms up: not timed
            for i in range(k):
                t0 = time.perf_counter()
                ex.predict_many(prep.batch.take(rows[i:i + 1]), candles)
                per_row[i] += time.perf_counter() - t0
    except (FileNotFoundError, ValueError):  # no weights yet: the gate's own first rows will tell
        return None
    return float(np.median(per_row)), n_rows


def gate_members(models: ModelsConfig, prep: Prepared, registry: CheckpointRegistry, names: list[str] | None,
                 candle_models: dict[str, str]) -> dict[str, Expert]:
    """The experts a gate is trained over. ``names`` None: every enabled features expert with a
    checkpoint. Given: exactly those, in that order (the running engine's gate), each with trained
    weights: features experts their best checkpoint, candle experts the weights in ``candle_models``
    (else their configured model); one without weights is a ValueError naming it."""
    if names is None:
        experts = load_experts(models, prep.batch.spec, registry, keep_untrained=False, candle_experts=False).experts
        if not experts:
            raise ValueError("no trained experts to gate: train some experts first")
        return dict(experts)
    loaded = load_experts(models, prep.batch.spec, registry, names, keep_untrained=True)
    if loaded.errors:
        raise ValueError("gate: " + "; ".join(f"{n}: {e}" for n, e in loaded.errors.items()))
    out: dict[str, Expert] = {}
    for name in names:
        ex = loaded.experts[name]
        if ex.input_kind == "candles":
            if name in candle_models and hasattr(ex, "use_model"):
                ex.use_model(candle_models[name])
            try:
                _ = ex.bundle  # type: ignore[attr-defined]
            except FileNotFoundError as exc:  # CheckpointNotFound: no weights to forecast with
                raise ValueError(f"gate: {name} has no weights ({str(exc).splitlines()[0]})") from None
        elif not loaded.trained[name]:
            raise ValueError(f"gate: {name} has no trained checkpoint; train it with the gate "
                             f"(--experts {name},{GATE_NAME})")
        out[name] = ex
    return out


def common_horizon(experts: dict[str, Expert]) -> int:
    hs = {e.horizon for e in experts.values()}
    if len(hs) != 1:
        raise ValueError(f"the gate fuses experts of one horizon; got {dict((n, e.horizon) for n, e in experts.items())}")
    return hs.pop()
