"""Build experts from models.yml entries: ``class`` is a dotted import path to an Expert subclass."""

from __future__ import annotations

import importlib
from pathlib import Path

from core.config import ConfigError, ExpertConfig
from core.types import FeatureSpec
from NN.experts.base import Expert


def expert_class(name: str, cfg: ExpertConfig) -> type[Expert]:
    module_name, _, cls_name = cfg.class_.rpartition(".")
    if not module_name:
        raise ConfigError(f"models.yml: bad value for 'experts.{name}.class': {cfg.class_!r} "
                          "(a dotted path like NN.experts.cnn.CNNExpert)")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"models.yml: bad value for 'experts.{name}.class': {cfg.class_!r} "
                          f"(cannot import {module_name}: {exc})") from None
    cls = getattr(module, cls_name, None)
    if not (isinstance(cls, type) and issubclass(cls, Expert)):
        raise ConfigError(f"models.yml: bad value for 'experts.{name}.class': {cfg.class_!r} "
                          "(not an Expert subclass)")
    return cls


def build_expert(name: str, cfg: ExpertConfig, spec: FeatureSpec, models_dir: Path | None = None) -> Expert:
    """Instantiate the expert ``name``; its params are validated by the class (ConfigError if bad).

    ``models_dir`` (config training.models_dir) is where experts that find their own weights on disk
    (Kronos ``nano``) look, unless models.yml names a directory for that expert explicitly."""
    expert = expert_class(name, cfg)(name, cfg, spec)
    if models_dir is not None and "models_dir" not in cfg.params and hasattr(expert, "use_models_dir"):
        expert.use_models_dir(Path(models_dir))
    return expert
