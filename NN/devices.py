"""Device selection shared by every expert: auto -> cuda (NVIDIA and ROCm builds) -> mps -> cpu; and the
host-to-device conversion of their numpy inputs (pinned, non-blocking on cuda)."""

from __future__ import annotations

import numpy as np
import torch


def pick_device(requested: str = "auto") -> torch.device:
    if requested == "auto":
        if torch.cuda.is_available():  # also true on ROCm builds of torch
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if requested == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' requested but torch.cuda.is_available() is False "
                           "(install a CUDA or ROCm build of torch, or use device: auto/cpu)")
    if requested == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise RuntimeError("device 'mps' requested but this torch build has no MPS backend")
    if requested not in ("cpu", "cuda", "mps"):
        raise ValueError(f"unknown device {requested!r}; allowed: auto, cpu, cuda, mps")
    return torch.device(requested)


def to_device(array: np.ndarray, device: torch.device, dtype: np.dtype | type | None = None) -> torch.Tensor:
    """A numpy array as a tensor on ``device`` (``dtype``: numpy dtype to convert to; None keeps it).

    cpu: ``torch.from_numpy`` of a C-contiguous array, sharing memory when no conversion is needed, as
    ``torch.as_tensor`` did (no behaviour change). cuda: the host tensor is staged in pinned
    (page-locked) memory and copied with ``non_blocking=True``: a DMA the host thread does not wait
    for; kernels that read the tensor are queued after it on the same stream, and torch's pinned
    allocator keeps the staging block until the copy has finished. Other devices (mps): a plain copy."""
    host = torch.from_numpy(np.ascontiguousarray(array, dtype=dtype))
    if device.type == "cpu":
        return host
    if device.type == "cuda":
        return host.pin_memory().to(device, non_blocking=True)
    return host.to(device)
