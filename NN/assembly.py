"""Experts and the gate with their best registered weights, built once for every caller.

The engine (through compose.py), the backtester (through compose.py) and ``evaluate`` all need "the
enabled experts with their best checkpoints, and a gate over them"; this is the one place that builds
them. What differs between callers is explicit: whether untrained experts run (the engine flags them,
a backtest runs them only when named), and whether candle experts (Kronos) are wanted.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from core.config import ModelsConfig
from core.types import FeatureSpec
from NN.experts.base import Expert
from NN.experts.registry import build_expert
from NN.moe import MoEGate
from NN.training.checkpoints import CheckpointRegistry

log = logging.getLogger(__name__)


@dataclass
class LoadedExperts:
    experts: dict[str, Expert]  # in models.yml order
    trained: dict[str, bool]  # a registered checkpoint was loaded
    errors: dict[str, str] = field(default_factory=dict)  # name -> "Type: message" (left out)
    skipped: list[str] = field(default_factory=list)  # untrained, left out on purpose


def load_experts(models: ModelsConfig, spec: FeatureSpec, registry: CheckpointRegistry | None,
                 names: list[str] | None = None, *, keep_untrained: bool,
                 candle_experts: bool = True) -> LoadedExperts:
    """``names`` None = every expert enabled in models.yml, else exactly those (unknown names: ValueError).
    An expert that cannot be built or whose checkpoint does not load is left out with its error; one
    without a checkpoint runs untrained when ``keep_untrained``, else it is skipped."""
    if names is not None:
        unknown = [n for n in names if n not in models.experts]
        if unknown:
            raise ValueError(f"unknown expert(s) {unknown}; models.yml has {sorted(models.experts)}")
    wanted = list(names) if names is not None else list(models.enabled())
    out = LoadedExperts({}, {})
    models_dir = registry.models_dir if registry is not None else None
    for name in wanted:
        try:
            ex = build_expert(name, models.experts[name], spec, models_dir)
            if ex.input_kind == "candles" and not candle_experts:
                continue
            trained = bool(registry is not None and registry.load_into(ex))
        except Exception as exc:  # a missing module, a checkpoint of another architecture, ...
            out.errors[name] = f"{type(exc).__name__}: {exc}"
            log.warning("expert %s left out: %s", name, out.errors[name])
            continue
        if not trained and not keep_untrained:
            out.skipped.append(name)
            continue
        out.experts[name] = ex
        out.trained[name] = trained
    return out


def load_gate(models: ModelsConfig, experts: list[str], regime_dim: int,
              registry: CheckpointRegistry | None) -> tuple[MoEGate, str | None]:
    """The best registered gate when it was trained on exactly ``experts``; otherwise an untrained
    (online Hedge) gate over them, with the reason as the second value."""
    gate = MoEGate(experts, models.moe, regime_dim)
    if registry is None:
        return gate, None
    try:
        registry.load_into(gate)
    except ValueError as exc:  # trained for another expert set
        return MoEGate(experts, models.moe, regime_dim), f"gate checkpoint not usable ({exc}): online Hedge gate"
    return gate, None
