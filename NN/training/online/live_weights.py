"""Live weights across restarts: models/<expert>/online/live.pt holds the online-trained weights left
live when the engine stopped, with the version they descend from ("base").

``resume_live`` runs at start-up (the composition root, before the engine starts). ``LiveWriter``
writes the file on its own background thread (never on the decision thread, which only queues the
record); the newest record per file wins and ``close`` drains the queue.
"""

from __future__ import annotations

import copy
import logging
import queue
import threading
from pathlib import Path
from typing import Any

from NN.experts.base import Expert, save_atomic
from NN.training.online.feed import drain
from NN.weights_io import load_weights

log = logging.getLogger(__name__)

LIVE_FILE = "live.pt"  # models/<expert>/online/live.pt: the online-trained weights left live at exit


def live_path(models_dir: str | Path, name: str) -> Path:
    return Path(models_dir) / name / "online" / LIVE_FILE


def resume_live(expert: Expert, models_dir: str | Path) -> tuple[str, dict[str, Any]] | None:
    """Put the online-trained weights an earlier run left live (``live_path``) into ``expert`` when
    they descend from the weights it holds now (the registered best it loaded, or "untrained"): a newer
    offline checkpoint wins over them. Returns (version, exact state) of those base weights - where a
    rollback goes - or None when nothing was resumed. An incompatible file (features or architecture
    changed) raises ValueError and leaves the expert as it was."""
    path = live_path(models_dir, expert.name)
    if not path.exists():
        return None
    rec = load_weights(path)
    base_version = str(expert.version)
    if rec.get("base") != base_version:
        log.info("%s: %s descends from %s, not the live %s: not resumed", expert.name, path, rec.get("base"),
                 base_version)
        return None
    base = copy.deepcopy(expert.state_dict())
    try:
        expert.load_state_dict(rec["state"])  # loaded just now: nothing else holds it
    except Exception as exc:
        expert.load_state_dict(base)
        expert.version = base_version
        raise ValueError(f"{expert.name}: cannot resume online weights {path}: {exc}") from exc
    expert.version = str(rec["version"])
    return base_version, base


class LiveWriter:
    """Writes the live weights of online-trained experts on a background thread (never on the
    decision thread): the newest record per file wins; ``close`` drains it."""

    def __init__(self) -> None:
        self._q: queue.Queue = queue.Queue()
        self._t: threading.Thread | None = None

    def put(self, path: Path, record: dict[str, Any] | None) -> None:
        """Save ``record`` atomically to ``path`` (None: delete the file)."""
        self._q.put((path, record))
        if self._t is None or not self._t.is_alive():
            self._t = threading.Thread(target=self._run, name="live-weights-writer", daemon=True)
            self._t.start()

    def _run(self) -> None:
        while True:
            items = drain(self._q, None)
            newest = {it[0]: it[1] for it in items if it is not None}  # later records replace earlier
            self._write(newest)
            if any(it is None for it in items):  # close(): everything queued before it is written
                return

    @staticmethod
    def _write(newest: dict) -> None:
        for path, record in newest.items():
            try:
                if record is None:
                    path.unlink(missing_ok=True)
                    continue
                save_atomic(record, path)
            except Exception:  # a full disk must not stop training or trading
                log.exception("cannot write live weights %s", path)

    def close(self, timeout: float = 10.0) -> None:
        if self._t is not None and self._t.is_alive():
            self._q.put(None)
            self._t.join(timeout)
