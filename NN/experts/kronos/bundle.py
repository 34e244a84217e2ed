"""A ready-to-sample Kronos: tokenizer + predictor (+ stored calibration), resolved from a model spec:

- ``nano``: the best checkpoint train_kronos wrote under ``<models_dir>/kronos/`` (lowest validation loss);
- a local directory holding ``tokenizer/`` and ``model/`` (what train_kronos writes; calibration.json
  beside them is used when present);
- a hub id of a released predictor (``NeoQuasar/Kronos-small`` ...), paired with its released tokenizer.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from core.paths import PROJECT_ROOT

from .calibration import Calibration
from .config import HUB_TOKENIZER_FOR, MAX_CONTEXT
from .hub import CheckpointNotFound, load_predictor, load_tokenizer
from .model import KronosModel
from .sampler import KronosSampler
from .tokenizer import KronosTokenizer

DEFAULT_MODELS_DIR = PROJECT_ROOT / "models"


@dataclass
class KronosBundle:
    tokenizer: KronosTokenizer
    model: KronosModel
    calibration: Calibration | None
    max_context: int
    version: str
    path: Path | None = None
    anchor: str | None = None  # the sampler's path anchoring (meta.json "anchor"; see sampler.anchor_paths)

    def sampler(self) -> KronosSampler:
        return KronosSampler(self.tokenizer, self.model, anchor=self.anchor)


def nano_runs(models_dir: Path) -> list[tuple[float, Path]]:
    """(validation loss, directory) of every finished checkpoint under models_dir/kronos."""
    root = Path(models_dir) / "kronos"
    out = []
    for meta in root.glob("*/meta.json") if root.is_dir() else []:
        try:
            m = json.loads(meta.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if (meta.parent / "model" / "model.safetensors").is_file() and m.get("val_loss") is not None:
            out.append((float(m["val_loss"]), meta.parent))
    return sorted(out)


def best_nano(models_dir: Path) -> Path:
    runs = nano_runs(models_dir)
    if not runs:
        raise CheckpointNotFound(
            f"no trained Kronos checkpoint under {Path(models_dir) / 'kronos'}; train one with "
            "`python main_backtest.py train --experts kronos` (offline, a few minutes on CPU)")
    return runs[0][1]


AUTO_HUB_DEFAULT = "NeoQuasar/Kronos-small"


def not_available(hub_id: str, reasons: list[str]) -> str:
    """The one state line of a Kronos that cannot be had, with the commands that fix it."""
    tok = HUB_TOKENIZER_FOR.get(hub_id, "NeoQuasar/Kronos-Tokenizer-base")
    return (f"not available: {hub_id} is neither in the Hugging Face cache nor downloadable, and no nano "
            f"checkpoint is trained ({'; '.join(reasons)}). Fix: `huggingface-cli download {hub_id}` and "
            f"`huggingface-cli download {tok}` (on a machine with internet, then copy ~/.cache/huggingface), "
            "or press Train now (a quick nano Kronos) / `python main_backtest.py train --experts kronos`")


def load_bundle(spec: str, models_dir: Path | None = None, device: torch.device | str = "cpu",
                hub_model: str = AUTO_HUB_DEFAULT) -> KronosBundle:
    """``spec``: ``auto`` (the released ``hub_model`` from the hub cache, downloaded when possible, else
    the best local nano checkpoint, else CheckpointNotFound saying how to get one) | ``nano`` | a
    directory | a hub id of a released predictor."""
    models_dir = Path(models_dir) if models_dir else DEFAULT_MODELS_DIR
    if spec == "auto":
        reasons = []
        for candidate in (hub_model, "nano"):
            try:
                return load_bundle(candidate, models_dir, device)
            except CheckpointNotFound as exc:
                reasons.append(str(exc).split(";")[0])
        raise CheckpointNotFound(not_available(hub_model, reasons))
    path: Path | None
    if spec == "nano":
        path = best_nano(models_dir)
    else:
        p = Path(spec).expanduser()
        path = p if p.is_dir() else None
    if path is not None:
        if not (path / "tokenizer").is_dir() or not (path / "model").is_dir():
            raise CheckpointNotFound(f"{path}: a Kronos directory needs tokenizer/ and model/ sub-directories "
                                     "(each with config.json and model.safetensors)")
        meta = json.loads((path / "meta.json").read_text()) if (path / "meta.json").is_file() else {}
        cal = Calibration.load(path / "calibration.json") if (path / "calibration.json").is_file() else None
        return KronosBundle(load_tokenizer(path / "tokenizer", device), load_predictor(path / "model", device),
                            cal, int(meta.get("max_context", 512)), meta.get("version", path.name), path,
                            meta.get("anchor"))
    tok_id = HUB_TOKENIZER_FOR.get(spec)
    if tok_id is None:
        raise CheckpointNotFound(f"{spec!r}: not 'nano', not a directory, and not a released Kronos predictor "
                                 f"({', '.join(HUB_TOKENIZER_FOR)})")
    name = spec.split("/")[-1]
    return KronosBundle(load_tokenizer(tok_id, device), load_predictor(spec, device), None,
                        MAX_CONTEXT.get(name, 512), spec, None)
