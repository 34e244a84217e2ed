"""Who changed what: every control change made through the dashboard or the API (thresholds, expert
switches, stream, kill switch) with when and who (a session label or ``token``, never the credential).

Rows go to the DuckDB table ``control_changes`` of the engine's store (beside the decisions audit trail)
and to the log; a store-less app (tests, backtests) keeps them in memory.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

CONTROL_DDL = """
CREATE TABLE IF NOT EXISTS control_changes (
    ts_ms BIGINT NOT NULL, who VARCHAR NOT NULL, action VARCHAR NOT NULL, detail VARCHAR
)"""


@dataclass(frozen=True)
class ControlChange:
    ts_ms: int
    who: str
    action: str
    detail: dict[str, Any]


class ControlAudit:
    def __init__(self, store: Any | None) -> None:
        self.store = store
        self._lock = threading.Lock()
        self.recent: list[ControlChange] = []  # the newest 500, also without a store
        if store is not None:
            try:
                store.execute(CONTROL_DDL)
            except Exception as exc:  # a read-only store: keep the log and memory trail
                log.warning("control audit not stored: %s", exc)
                self.store = None

    def record(self, who: str, action: str, **detail: Any) -> ControlChange:
        c = ControlChange(int(time.time() * 1000), who, action, detail)
        with self._lock:
            self.recent = [*self.recent[-499:], c]
        log.info("control change by %s: %s %s", who, action, json.dumps(detail, sort_keys=True))
        if self.store is not None:
            try:
                self.store.execute("INSERT INTO control_changes VALUES (?, ?, ?, ?)",
                                   [c.ts_ms, who, action, json.dumps(detail, sort_keys=True)])
            except Exception as exc:  # the change itself was applied; a failed audit row is logged
                log.error("control audit row not stored: %s", exc)
        return c
