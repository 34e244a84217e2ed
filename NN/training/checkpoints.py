"""Checkpoint registry: weights on disk (models_dir/<expert>/<version>.pt, written atomically), one
metadata row per checkpoint in the DuckDB table ``checkpoints`` and the training curves that produced
it (step, name, value rows) in ``training_metrics``; keeps the best N per expert by the validation
metric and prunes the rest from disk and both tables.

Works for anything with ``state_dict`` / ``load_state_dict`` and a ``version`` attribute (experts and
the MoE gate, registered under the name "moe").
"""

from __future__ import annotations

import builtins
import json
import logging
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from core.config import CheckpointPolicy
from core.data.store import MarketStore
from core.types import CheckpointInfo
from NN.experts.base import save_atomic
from NN.weights_io import inside_models, load_weights

log = logging.getLogger(__name__)

TABLE = "checkpoints"
_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS {TABLE} (
    expert VARCHAR NOT NULL,
    version VARCHAR NOT NULL,
    path VARCHAR NOT NULL,
    metric DOUBLE NOT NULL,
    created_at TIMESTAMP NOT NULL,
    meta JSON,
    PRIMARY KEY (expert, version)
)
"""
METRICS_TABLE = "training_metrics"
_METRICS_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS {METRICS_TABLE} (
    expert VARCHAR NOT NULL,
    version VARCHAR NOT NULL,
    step BIGINT NOT NULL,
    name VARCHAR NOT NULL,
    value DOUBLE,
    PRIMARY KEY (expert, version, step, name)
)
"""
METRIC_COLUMNS = ["step", "name", "value"]
_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


class CheckpointRegistry:
    def __init__(self, store: MarketStore, models_dir: Path) -> None:
        self.store = store
        self.models_dir = Path(models_dir)
        if not store.read_only:
            store.execute(_SCHEMA)
            store.execute(_METRICS_SCHEMA)

    # ---------------------------------------------------------------- queries

    def _rows(self, expert: str) -> list[CheckpointInfo]:
        if not self._table_exists(TABLE):
            return []
        df = self.store.query_df(
            f"SELECT expert, version, path, metric, created_at, meta FROM {TABLE} WHERE expert = ? "
            "ORDER BY created_at, version",
            [expert],
        )
        return [
            CheckpointInfo(
                expert=r.expert,
                version=r.version,
                path=Path(r.path),
                metric=float(r.metric),
                created_at=r.created_at.to_pydatetime() if hasattr(r.created_at, "to_pydatetime") else r.created_at,
                meta=json.loads(r.meta) if isinstance(r.meta, str) else (r.meta or {}),
            )
            for r in df.itertuples(index=False)
        ]

    def _table_exists(self, table: str) -> bool:
        row = self.store.query_one(
            "SELECT count(*) FROM information_schema.tables WHERE table_name = ?", [table]
        )
        return bool(row and row[0])

    def list(self, expert: str) -> list[CheckpointInfo]:
        """Every registered checkpoint of ``expert``, oldest first."""
        return self._rows(expert)

    def best(self, expert: str) -> CheckpointInfo | None:
        rows = self._rows(expert)
        if not rows:
            return None
        mode = rows[-1].meta.get("mode", "min")
        return _ranked(rows, mode)[0]

    def latest_version(self, expert: str) -> str | None:
        rows = self._rows(expert)
        return rows[-1].version if rows else None

    def metrics(self, expert: str) -> pd.DataFrame:
        """Training curves (columns step, name, value; by name, then step) of ``expert``'s newest
        surviving checkpoint that has any: online promotions record none, so their offline ancestor's
        curves are what the Models page shows. Empty when none were recorded (older checkpoints)."""
        if not (self._table_exists(TABLE) and self._table_exists(METRICS_TABLE)):
            return pd.DataFrame(columns=METRIC_COLUMNS)
        return self.store.query_df(
            f"""SELECT step, name, value FROM {METRICS_TABLE} WHERE expert = ? AND version = (
                    SELECT c.version FROM {TABLE} c WHERE c.expert = ? AND EXISTS (
                        SELECT 1 FROM {METRICS_TABLE} m WHERE m.expert = c.expert AND m.version = c.version)
                    ORDER BY c.created_at DESC, c.version DESC LIMIT 1)
                ORDER BY name, step""",
            [expert, expert],
        )

    def get(self, expert: str, version: str) -> CheckpointInfo:
        for r in self._rows(expert):
            if r.version == version:
                return r
        raise KeyError(f"no checkpoint {version!r} registered for expert {expert!r}")

    # ---------------------------------------------------------------- writes

    def register(self, expert: str, state: dict, metric: float, policy: CheckpointPolicy, meta: dict,
                 metrics: pd.DataFrame | None = None, version: str | None = None) -> str:
        """Write ``state`` atomically, record it with its training ``metrics`` (columns step, name,
        value: one batched insert), prune to the best ``policy.keep_best``; returns the new version
        (which may itself be pruned at once if it is not among the best). ``version``: keep this name
        (a checkpoint adopted from another registry, e.g. Train now's job) unless it is taken."""
        if not _NAME.match(expert):
            raise ValueError(f"bad expert name {expert!r} (letters, digits, _ . - only)")
        if not np.isfinite(metric):
            raise ValueError(f"checkpoint metric for {expert} must be finite, got {metric!r}")
        curves = _metric_rows(expert, metrics)
        created = datetime.now(UTC).replace(tzinfo=None)
        existing = {r.version for r in self._rows(expert)}
        if version is not None and not _NAME.match(version):
            raise ValueError(f"bad checkpoint version {version!r} (letters, digits, _ . - only)")
        version = version or created.strftime("%Y%m%dT%H%M%S%f")
        while version in existing:  # two registrations in the same microsecond
            version += "b"
        path = (self.models_dir / expert / f"{version}.pt").resolve()
        state = dict(state)
        state["version"] = version
        save_atomic(state, path)
        full_meta = {**meta, "metric_name": policy.metric, "mode": policy.mode}
        try:
            with self.store.transaction():  # the checkpoint row and its curves, or neither
                self.store.execute(
                    f"INSERT INTO {TABLE} (expert, version, path, metric, created_at, meta) VALUES (?, ?, ?, ?, ?, ?)",
                    [expert, version, str(path), float(metric), created, json.dumps(full_meta, default=str)],
                )
                if curves is not None:
                    self.store.write_df(METRICS_TABLE, curves.assign(version=version))
        except Exception:
            path.unlink(missing_ok=True)  # no orphan file without its row
            raise
        self.prune(expert, policy)
        return version

    def prune(self, expert: str, policy: CheckpointPolicy) -> builtins.list[str]:  # `list` is a method here
        """Delete all but the best ``keep_best`` checkpoints (rows and files); returns removed versions."""
        rows = self._rows(expert)
        ranked = _ranked(rows, policy.mode)
        removed = []
        metrics = self._table_exists(METRICS_TABLE)
        for info in ranked[policy.keep_best :]:
            self.store.execute(f"DELETE FROM {TABLE} WHERE expert = ? AND version = ?", [expert, info.version])
            if metrics:
                self.store.execute(f"DELETE FROM {METRICS_TABLE} WHERE expert = ? AND version = ?",
                                   [expert, info.version])
            info.path.unlink(missing_ok=True)
            removed.append(info.version)
        if removed:
            log.info("pruned %s checkpoints of %s: %s", len(removed), expert, ", ".join(removed))
        return removed

    # ---------------------------------------------------------------- loading

    def load_into(self, expert_obj: Any, version: str | None = None) -> bool:
        """Load ``version`` (default: the best) into ``expert_obj``; False when nothing is registered."""
        name = expert_obj.name if hasattr(expert_obj, "name") else "moe"
        info = self.get(name, version) if version is not None else self.best(name)
        if info is None:
            return False
        path = inside_models(info.path, self.models_dir)  # the row may point anywhere
        if not path.exists():
            raise FileNotFoundError(f"checkpoint file of {name} {info.version} is missing: {info.path}")
        device = getattr(expert_obj, "device", "cpu")
        state = load_weights(path, map_location=device)
        expert_obj.load_state_dict(state)
        expert_obj.version = info.version
        return True


def _metric_rows(expert: str, metrics: pd.DataFrame | None) -> pd.DataFrame | None:
    """``metrics`` checked and shaped as ``training_metrics`` rows (version added at insert)."""
    if metrics is None or metrics.empty:
        return None
    missing = [c for c in METRIC_COLUMNS if c not in metrics.columns]
    if missing:
        raise ValueError(f"training metrics of {expert} lack columns {missing} (need {METRIC_COLUMNS})")
    rows = pd.DataFrame({"expert": expert, "step": metrics["step"].astype(np.int64),
                         "name": metrics["name"].astype(str), "value": metrics["value"].astype(np.float64)})
    dup = rows.duplicated(["step", "name"])
    if dup.any():
        r = rows[dup].iloc[0]
        raise ValueError(f"training metrics of {expert}: {r['name']!r} appears twice at step {r['step']}")
    return rows


def _ranked(rows: list[CheckpointInfo], mode: str) -> list[CheckpointInfo]:
    """Best first; ties go to the newer checkpoint."""
    sign = 1.0 if mode == "min" else -1.0
    return sorted(rows, key=lambda r: (sign * r.metric, -r.created_at.timestamp(), r.version), reverse=False)
