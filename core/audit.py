"""The audit trail: every decision with every expert output and the gate weights behind it.

Two DuckDB tables, ``decisions`` (one row per decision) and ``predictions`` (one row per expert output
used by a decision, with the weight the gate gave it), answer "why did it trade?". Rows are buffered
in memory and written in bulk (one DataFrame insert per flush), never row by row on the hot path.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from core.types import Decision

if TYPE_CHECKING:
    from core.data.store import MarketStore

DECISIONS_DDL = """
CREATE TABLE IF NOT EXISTS decisions (
    run_id VARCHAR NOT NULL, id VARCHAR NOT NULL, ts BIGINT NOT NULL, symbol VARCHAR NOT NULL,
    action VARCHAR NOT NULL, p_down DOUBLE, p_flat DOUBLE, p_up DOUBLE, expected_return DOUBLE,
    confidence DOUBLE, buy_threshold DOUBLE, sell_threshold DOUBLE, min_confidence DOUBLE,
    target_position DOUBLE, reason VARCHAR, weights VARCHAR, n_experts INTEGER
)"""

PREDICTIONS_DDL = """
CREATE TABLE IF NOT EXISTS predictions (
    run_id VARCHAR NOT NULL, decision_id VARCHAR NOT NULL, ts BIGINT NOT NULL, symbol VARCHAR NOT NULL,
    expert VARCHAR NOT NULL, model_version VARCHAR, horizon INTEGER, p_down DOUBLE, p_flat DOUBLE,
    p_up DOUBLE, expected_return DOUBLE, confidence DOUBLE, latency_ms DOUBLE, weight DOUBLE,
    extras VARCHAR
)"""

DECISION_COLUMNS = ["run_id", "id", "ts", "symbol", "action", "p_down", "p_flat", "p_up",
                    "expected_return", "confidence", "buy_threshold", "sell_threshold",
                    "min_confidence", "target_position", "reason", "weights", "n_experts"]
PREDICTION_COLUMNS = ["run_id", "decision_id", "ts", "symbol", "expert", "model_version", "horizon",
                      "p_down", "p_flat", "p_up", "expected_return", "confidence", "latency_ms",
                      "weight", "extras"]


MEMORY_ROWS = 200_000  # decisions a store-less writer keeps (backtests fit; a live run stays bounded)


def ensure_tables(store: MarketStore) -> None:
    store.execute(DECISIONS_DDL)
    store.execute(PREDICTIONS_DDL)


def _jsonable(v: Any) -> Any:
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_jsonable(x) for x in v]
    return v


def decision_confidence(d: Decision) -> float:
    """Gate-weighted confidence of the experts behind ``d`` (what min_confidence was checked on)."""
    return float(sum(d.weights.get(o.expert, 0.0) * o.confidence for o in d.outputs))


class AuditWriter:
    """Buffers decisions + expert outputs; ``flush`` writes them with two bulk inserts.

    ``store`` None keeps the rows in memory only (``frames()`` still works), used by backtests
    without a database. Thread-safe: the engine thread adds, anyone may flush."""

    def __init__(self, store: MarketStore | None, run_id: str, flush_every: int = 500) -> None:
        self.store = store
        self.run_id = run_id
        self.flush_every = max(1, int(flush_every))
        self._dec: list[tuple] = []
        self._pred: list[tuple] = []
        self._lock = threading.Lock()
        self.written = 0
        if store is not None:
            ensure_tables(store)

    def add(self, d: Decision, confidence: float | None = None) -> None:
        conf = decision_confidence(d) if confidence is None else float(confidence)
        t = d.thresholds
        row = (self.run_id, d.id, int(d.ts), d.symbol, str(d.action), *map(float, d.probs),
               float(d.expected_return), conf, t.buy, t.sell, t.min_confidence,
               float(d.target_position), d.reason, json.dumps(d.weights, sort_keys=True), len(d.outputs))
        preds = [
            (self.run_id, d.id, int(d.ts), d.symbol, o.expert, o.model_version, int(o.horizon),
             *map(float, o.probs), float(o.expected_return), float(o.confidence),
             float(o.latency_ms), float(d.weights.get(o.expert, 0.0)),
             json.dumps(_jsonable(o.extras), sort_keys=True) if o.extras else None)
            for o in d.outputs
        ]
        with self._lock:
            self._dec.append(row)
            self._pred.extend(preds)
            due = len(self._dec) >= self.flush_every
            if self.store is None and len(self._dec) > MEMORY_ROWS:  # memory-only: keep the newest
                drop = len(self._dec) - MEMORY_ROWS
                gone = {r[1] for r in self._dec[:drop]}
                self._dec = self._dec[drop:]
                self._pred = [p for p in self._pred if p[1] not in gone]
        if due:
            self.flush()

    def frames(self) -> tuple[pd.DataFrame, pd.DataFrame]:
        """The buffered (not yet flushed) rows as (decisions, predictions) DataFrames."""
        with self._lock:
            return (pd.DataFrame(self._dec, columns=DECISION_COLUMNS),
                    pd.DataFrame(self._pred, columns=PREDICTION_COLUMNS))

    def flush(self) -> int:
        """Write buffered rows (decisions, then predictions) in bulk; returns decisions written.
        Memory-only writers keep their rows (``frames()`` sees everything)."""
        if self.store is None:
            return 0
        with self._lock:
            dec, pred = self._dec, self._pred
            self._dec, self._pred = [], []
        if not dec:
            return 0
        n = write_frames(self.store, pd.DataFrame(dec, columns=DECISION_COLUMNS),
                         pd.DataFrame(pred, columns=PREDICTION_COLUMNS))
        self.written += n
        return n


def write_frames(store: MarketStore, decisions: pd.DataFrame, predictions: pd.DataFrame) -> int:
    """Bulk-write already-shaped audit frames (the fast backtest builds them vectorised)."""
    ensure_tables(store)
    n = 0
    if len(decisions):
        n += store.write_df("decisions", decisions[DECISION_COLUMNS], mode="append")
    if len(predictions):
        store.write_df("predictions", predictions[PREDICTION_COLUMNS], mode="append")
    return n


def frames_from_arrays(run_id: str, symbol: str, names: Sequence[str], ts: np.ndarray, actions: np.ndarray,
                       fused: np.ndarray, weights: np.ndarray, confidence: np.ndarray,
                       expected_return: np.ndarray, thresholds: tuple[float, float, float], target: np.ndarray,
                       reasons: Sequence[str], probs: np.ndarray, conf: np.ndarray, er: np.ndarray,
                       mask: np.ndarray, versions: Sequence[str], horizons: Sequence[int],
                       extras: Sequence[dict[str, np.ndarray]], climatology: np.ndarray | None = None
                       ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The rows ``AuditWriter.add`` would write for N decisions, built column-wise (fast backtests).
    probs [N, E, 3], conf/er/weights/mask [N, E]; only experts with mask set have a prediction row;
    climatology [N] the base rate's weight (Decision.weights["climatology"] when > 0)."""
    n = len(ts)
    ids = [f"{run_id}:{int(t)}" for t in ts]
    cw = np.zeros(n) if climatology is None or len(climatology) != n else climatology

    def wdict(j: int) -> dict[str, float]:
        d = {names[e]: float(weights[j, e]) for e in range(len(names)) if mask[j, e]}
        if cw[j] > 0:
            d["climatology"] = float(cw[j])
        return d

    wj = [json.dumps(wdict(j), sort_keys=True) for j in range(n)]
    dec = pd.DataFrame({
        "run_id": run_id, "id": ids, "ts": np.asarray(ts, dtype=np.int64), "symbol": symbol,
        "action": list(actions), "p_down": fused[:, 0], "p_flat": fused[:, 1], "p_up": fused[:, 2],
        "expected_return": expected_return, "confidence": confidence, "buy_threshold": thresholds[0],
        "sell_threshold": thresholds[1], "min_confidence": thresholds[2], "target_position": target,
        "reason": list(reasons), "weights": wj, "n_experts": mask.sum(axis=1).astype(np.int64),
    })[DECISION_COLUMNS]
    J, E = np.nonzero(mask)  # decision-major, experts in order: the order add() writes them
    ex_json = []
    for j, e in zip(J.tolist(), E.tolist(), strict=True):
        ex = extras[e]
        ex_json.append(json.dumps({k: _jsonable(v[j]) for k, v in ex.items()}, sort_keys=True) if ex else None)
    pred = pd.DataFrame({
        "run_id": run_id, "decision_id": [ids[j] for j in J.tolist()], "ts": np.asarray(ts, np.int64)[J],
        "symbol": symbol, "expert": [names[e] for e in E.tolist()],
        "model_version": [versions[e] for e in E.tolist()],
        "horizon": np.asarray(horizons, dtype=np.int64)[E], "p_down": probs[J, E, 0], "p_flat": probs[J, E, 1],
        "p_up": probs[J, E, 2], "expected_return": er[J, E], "confidence": conf[J, E], "latency_ms": 0.0,
        "weight": weights[J, E], "extras": ex_json,
    })[PREDICTION_COLUMNS]
    return dec, pred
