"""The engine the dashboard drives: lifecycle and candle path (engine.py), commands (commands.py),
the live-training hook (training.py); its snapshot contract is core/snapshot.py."""

from core.engine.engine import Engine, EngineParts, ReplayConfig, Trading

__all__ = ["Engine", "EngineParts", "ReplayConfig", "Trading"]
