"""The intent journal: an append-only file beside the DuckDB ledger that makes an order's intent durable
before the order leaves, at the cost of one small write + fdatasync (about 3 ms on this box, against
12 ms p50 / 37 ms p99 for a DuckDB commit; see bench/bench_execution.py).

One JSON line per intent. The ledger imports the file into ``exec_intents`` at start (ON CONFLICT DO
NOTHING: an import repeated after a crash changes nothing) and with every bar's commit, then empties it.
A torn last line (a crash inside the write, so before the fdatasync returned and before the order was
sent) is ignored.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def journal_path(db_path: str, account: str) -> Path | None:
    """The journal of one ledger account beside its database file (None for an in-memory store)."""
    if not db_path or db_path == ":memory:":
        return None
    tag = hashlib.sha256(account.encode()).hexdigest()[:12]
    return Path(f"{db_path}.intents-{tag}.jsonl")


class IntentFile:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None  # opened at the first intent (paper accounts never write one)

    def _open(self) -> int:
        if self._fd is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
        return self._fd

    def append(self, records: list[dict[str, Any]]) -> None:
        """Durable when this returns (write + fdatasync): only then may the order be sent."""
        fd = self._open()
        data = b"".join(json.dumps(r, separators=(",", ":")).encode() + b"\n" for r in records)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fdatasync(fd)

    def read(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        if not self.path.exists():
            return out
        with open(self.path, "rb") as f:
            for n, line in enumerate(f):
                try:
                    rec = json.loads(line)
                    if not isinstance(rec, dict):
                        raise ValueError("not a record")
                    out.append(rec)
                except (ValueError, TypeError):  # a torn last line: its order was never sent
                    log.warning("intent journal %s: line %d unreadable, ignored", self.path.name, n + 1)
        return out

    def clear(self) -> None:
        """After the intents are committed to the ledger (a crash before this only re-imports them)."""
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
        elif self.path.exists():
            os.truncate(self.path, 0)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
