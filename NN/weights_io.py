"""Loading checkpoints without running code: ``torch.load(weights_only=True)``.

A ``.pt`` file is a pickle; ``weights_only=True`` makes torch's unpickler accept only tensors, containers,
numbers, strings and the few globals allow-listed here (what our experts' state dicts hold: numpy arrays
and scalars for calibration and scalers). Anything else - a pickle payload that would run a command -
is refused with ``UnsafeCheckpoint`` before a single object of it is built. A checkpoint path read from
the store must also resolve inside the models directory (``inside_models``).
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch


class UnsafeCheckpoint(ValueError):
    """The file holds objects outside the allowed weight types, or lies outside models/."""


try:  # numpy 2 keeps the pickling helpers in numpy._core
    import numpy._core.multiarray as _mc
except ImportError:  # pragma: no cover - numpy 1.x
    _mc = np.core.multiarray  # type: ignore[attr-defined]


def _allowed_globals() -> list[Any]:
    # numpy arrays and scalars pickle through these; dtypes through their classes
    g: list[Any] = [np.ndarray, np.dtype, _mc._reconstruct, _mc.scalar]
    g += [type(np.dtype(t)) for t in ("float16", "float32", "float64", "int8", "int16", "int32", "int64",
                                       "uint8", "bool", "int64", "complex64", "U1", "O")]
    g += [np.float16, np.float32, np.float64, np.int8, np.int16, np.int32, np.int64, np.uint8, np.bool_]
    return g


ALLOWED = _allowed_globals()


def load_weights(src: str | Path | bytes, map_location: Any = "cpu") -> Any:
    """``torch.load`` of a checkpoint file (or its bytes) that refuses anything but weight data."""
    f: Any = io.BytesIO(src) if isinstance(src, bytes) else Path(src)
    try:
        with torch.serialization.safe_globals(ALLOWED):
            return torch.load(f, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        where = "checkpoint bytes" if isinstance(src, bytes) else f"checkpoint {src}"
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UnsafeCheckpoint(f"{where} refused: it holds objects outside the allowed weight types "
                               f"(nothing in it was run): {first[:300]}") from None


def inside_models(path: str | Path, models_dir: str | Path) -> Path:
    """``path`` resolved, if it lies inside ``models_dir``; UnsafeCheckpoint otherwise (a path read from
    the store may have been written by anyone who could write the database)."""
    p, root = Path(path).resolve(), Path(models_dir).resolve()
    if not p.is_relative_to(root):
        raise UnsafeCheckpoint(f"checkpoint path {path} is outside the models directory {root}: refused")
    return p
