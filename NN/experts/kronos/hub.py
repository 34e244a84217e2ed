"""Load and save Kronos networks in the released on-disk layout (config.json + model.safetensors),
from a local directory or the Hugging Face hub (honouring HF_HUB_OFFLINE)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, TypeVar

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from .config import PredictorConfig, TokenizerConfig
from .model import KronosModel
from .tokenizer import KronosTokenizer

FILES = ("config.json", "model.safetensors")
M = TypeVar("M", KronosTokenizer, KronosModel)


class CheckpointNotFound(FileNotFoundError):
    """A checkpoint file is neither on disk nor obtainable; the message says how to get it."""


_REACHABLE: dict[str, bool] = {}


def hub_reachable(host: str = "huggingface.co", timeout: float = 2.0) -> bool:
    """One short TCP probe per process: without it the hub client retries with back-off for ~25 s
    before a machine without internet falls back to the cache."""
    if host not in _REACHABLE:
        import socket

        try:
            with socket.create_connection((host, 443), timeout=timeout):
                _REACHABLE[host] = True
        except OSError:
            _REACHABLE[host] = False
    return _REACHABLE[host]


def resolve_files(path_or_id: str | Path) -> dict[str, Path]:
    """Local paths of config.json and model.safetensors for a directory or a hub repo id."""
    p = Path(path_or_id).expanduser()
    if p.is_dir():
        missing = [f for f in FILES if not (p / f).is_file()]
        if missing:
            raise CheckpointNotFound(
                f"{p}: missing {', '.join(missing)}; a Kronos checkpoint directory holds config.json "
                "and model.safetensors (save_pretrained writes them)")
        return {f: p / f for f in FILES}
    repo = str(path_or_id)
    if repo.count("/") != 1 or repo.startswith((".", "/", "~")):
        raise CheckpointNotFound(f"{repo}: no such directory, and not a hub id of the form owner/name")
    # a machine without internet must fail fast, not wait out the hub client's default timeouts
    os.environ.setdefault("HF_HUB_ETAG_TIMEOUT", "3")
    os.environ.setdefault("HF_HUB_DOWNLOAD_TIMEOUT", "10")
    try:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import LocalEntryNotFoundError
    except ImportError as exc:  # pragma: no cover - dependency is declared
        raise CheckpointNotFound(f"{repo}: huggingface_hub is not installed ({exc})") from None
    env_offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")
    offline = env_offline or not hub_reachable()
    out: dict[str, Path] = {}
    for f in FILES:
        try:
            out[f] = Path(hf_hub_download(repo_id=repo, filename=f, local_files_only=offline))
        except LocalEntryNotFoundError:
            raise CheckpointNotFound(
                f"{repo}/{f} is not in the local Hugging Face cache and "
                + ("HF_HUB_OFFLINE=1 forbids downloading it" if env_offline
                   else "the hub cannot be reached" if offline else "could not be downloaded")
                + f"; obtain it with `huggingface-cli download {repo}` on a machine with internet (then copy "
                "the cache or the directory here), or pass a local directory holding config.json and "
                "model.safetensors") from None
        except Exception as exc:  # repo missing, network error, auth: keep the cause in one line
            cause = str(exc).splitlines()[0] if str(exc) else ""
            raise CheckpointNotFound(
                f"{repo}/{f} could not be obtained from the hub ({type(exc).__name__}: {cause}); obtain it with "
                f"`huggingface-cli download {repo}` where the hub is reachable, or pass a local directory holding "
                "config.json and model.safetensors") from None
    return out


def _load(cls: type[M], cfg_cls: Any, path_or_id: str | Path, device: torch.device | str) -> M:
    files = resolve_files(path_or_id)
    cfg = cfg_cls.from_dict(json.loads(files["config.json"].read_text()))
    net = cls(cfg)
    state = load_file(str(files["model.safetensors"]))
    ours = net.state_dict()
    missing = sorted(set(ours) - set(state))
    extra = sorted(set(state) - set(ours))
    bad = sorted(k for k in set(ours) & set(state) if tuple(ours[k].shape) != tuple(state[k].shape))
    if missing or extra or bad:
        raise ValueError(f"{path_or_id}: state dict does not fit {cls.__name__}({cfg}): "
                         f"missing {missing[:5]}, unexpected {extra[:5]}, wrong shape {bad[:5]}")
    net.load_state_dict(state, strict=True)
    return net.to(device).eval()


def load_tokenizer(path_or_id: str | Path, device: torch.device | str = "cpu") -> KronosTokenizer:
    return _load(KronosTokenizer, TokenizerConfig, path_or_id, device)


def load_predictor(path_or_id: str | Path, device: torch.device | str = "cpu") -> KronosModel:
    return _load(KronosModel, PredictorConfig, path_or_id, device)


def save_pretrained(net: nn.Module, directory: str | Path) -> Path:
    """Write config.json + model.safetensors (atomically per file)."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    cfg = net.config.to_dict()  # type: ignore[union-attr,operator]  # the Kronos modules' own config
    tmp = d / "config.json.tmp"
    tmp.write_text(json.dumps(cfg, indent=2, sort_keys=True))
    os.replace(tmp, d / "config.json")
    state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    tmp = d / "model.safetensors.tmp"
    save_file(state, str(tmp))
    os.replace(tmp, d / "model.safetensors")
    return d


def _attach(cls: type) -> None:
    loader = load_tokenizer if cls is KronosTokenizer else load_predictor
    cls.from_pretrained = staticmethod(loader)  # type: ignore[attr-defined]
    cls.save_pretrained = save_pretrained  # type: ignore[attr-defined]


_attach(KronosTokenizer)
_attach(KronosModel)
