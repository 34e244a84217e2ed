"""The "untrained, not traded" rule: decisions that rest on untrained experts are shown and audited,
never turned into orders (unless ``execution.allow_untrained``).

An expert is untrained when its output carries the version "untrained" (random weights: no registered
checkpoint was loaded). A decision rests on it when the gate gave it a positive weight. One pure
function serves the engine (live/paper/replay) and event-mode backtests, which both hand decisions to
``Executor.on_decision``.
"""

from __future__ import annotations

from collections.abc import Iterable

from core.types import Decision

UNTRAINED = "untrained"
MARK = "untrained, not traded"


def untrained_experts(decision: Decision) -> list[str]:
    """Experts with a positive gate weight whose model version is untrained, in output order."""
    return [o.expert for o in decision.outputs
            if o.model_version == UNTRAINED and decision.weights.get(o.expert, 0.0) > 0.0]


def refusal(decision: Decision, allow_untrained: bool) -> str | None:
    """Why ``decision`` may not trade ("untrained, not traded: cnn, dqn"), or None when it may."""
    if allow_untrained:
        return None
    names = untrained_experts(decision)
    return f"{MARK}: {', '.join(names)}" if names else None


def untrained_names(versions: Iterable[tuple[str, str]]) -> list[str]:
    """(name, version) pairs -> the names still untrained (for banners)."""
    return [n for n, v in versions if v == UNTRAINED]
