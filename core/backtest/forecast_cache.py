"""DuckDB cache of slow-expert (Kronos) forecasts for backtests.

Sampling hundreds of Monte-Carlo paths is the slowest thing a backtest does, so each forecast is
stored once, keyed by (expert, model version, symbol, ts, params hash); a rerun with the same model and
parameters reads it back instead of sampling again. ``hits`` / ``misses`` count what happened.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import numpy as np
import pandas as pd

from core.types import ExpertBatchOutput, ExpertOutput, FeatureBatch

DDL = """
CREATE TABLE IF NOT EXISTS forecast_cache (
    expert VARCHAR NOT NULL, model_version VARCHAR NOT NULL, symbol VARCHAR NOT NULL, ts BIGINT NOT NULL,
    params_hash VARCHAR NOT NULL, horizon INTEGER, p_down DOUBLE, p_flat DOUBLE, p_up DOUBLE,
    expected_return DOUBLE, confidence DOUBLE, extras VARCHAR,
    PRIMARY KEY (expert, model_version, symbol, ts, params_hash)
)"""


def params_hash(expert: Any) -> str:
    """Hash of everything besides the weights that changes a forecast: class, horizon, params."""
    cfg = expert.cfg
    blob = json.dumps({"class": cfg.class_, "horizon": cfg.horizon, "params": cfg.params},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


class ForecastCache:
    def __init__(self, store: Any) -> None:
        self.store = store
        self.hits = 0
        self.misses = 0
        store.execute(DDL)

    @staticmethod
    def _resolve_version(expert: Any) -> None:
        """KronosExpert loads its model (and learns its version) lazily on first use; the cache key
        needs the real version BEFORE the lookup, so trigger that load here."""
        if isinstance(getattr(type(expert), "bundle", None), property):
            expert.bundle  # noqa: B018 - the property loads the model and sets expert.version

    def _lookup(self, expert: Any, symbol: str, ts: np.ndarray) -> pd.DataFrame:
        self._resolve_version(expert)
        if len(ts) == 0:
            return pd.DataFrame()
        return self.store.query_df(
            "SELECT * FROM forecast_cache WHERE expert = ? AND model_version = ? AND symbol = ? "
            "AND params_hash = ? AND ts BETWEEN ? AND ? ORDER BY ts",
            [expert.name, str(expert.version), symbol, params_hash(expert), int(ts.min()), int(ts.max())])

    def predict_many(self, expert: Any, batch: FeatureBatch, candles: pd.DataFrame) -> ExpertBatchOutput:
        """Cached rows where present, the expert's ``predict_many`` for the rest (then stored)."""
        ts = np.asarray(batch.ts, dtype=np.int64)
        got = self._lookup(expert, batch.symbol, ts)
        got = got[got["ts"].isin(ts)] if len(got) else got
        have = set(got["ts"].tolist()) if len(got) else set()
        need = np.array([t not in have for t in ts], dtype=bool)
        self.hits += int((~need).sum())
        self.misses += int(need.sum())
        if need.any():
            sub = batch.take(np.flatnonzero(need))
            out = expert.predict_many(sub, candles)
            self._store(expert, batch.symbol, out)
            got = self._lookup(expert, batch.symbol, ts)
            got = got[got["ts"].isin(ts)]
        got = got.set_index("ts").loc[ts]
        extras: dict[str, np.ndarray] = {}
        if got["extras"].notna().any():
            rows = [json.loads(e) if isinstance(e, str) else {} for e in got["extras"]]
            for k in rows[0]:
                extras[k] = np.asarray([r.get(k) for r in rows])
        return ExpertBatchOutput(
            expert=expert.name, model_version=str(expert.version), horizon=int(expert.horizon), ts=ts,
            probs=got[["p_down", "p_flat", "p_up"]].to_numpy(np.float64),
            expected_return=got["expected_return"].to_numpy(np.float64),
            confidence=got["confidence"].to_numpy(np.float64), extras=extras)

    def get_or_compute(self, expert: Any, batch: FeatureBatch, candles: pd.DataFrame) -> ExpertOutput:
        """The single-sample path (event mode): the forecast for the LAST sample of ``batch``."""
        last = batch.take(slice(len(batch) - 1, len(batch)))
        out = self.predict_many(expert, last, candles)
        p = out.probs[0]
        return ExpertOutput(
            expert=expert.name, model_version=str(expert.version), symbol=batch.symbol,
            ts=int(out.ts[0]), horizon=int(expert.horizon),
            probs=(float(p[0]), float(p[1]), float(p[2])),
            expected_return=float(out.expected_return[0]), confidence=float(out.confidence[0]),
            latency_ms=0.0, extras={k: v[0].tolist() if isinstance(v[0], np.ndarray) else v[0]
                                    for k, v in out.extras.items()})

    def _store(self, expert: Any, symbol: str, out: ExpertBatchOutput) -> None:
        n = len(out.ts)
        extras: list[str | None] = [None] * n
        if out.extras:
            extras = [json.dumps({k: np.asarray(v[i]).tolist() for k, v in out.extras.items()})
                      for i in range(n)]
        df = pd.DataFrame({
            "expert": expert.name, "model_version": str(expert.version), "symbol": symbol,
            "ts": np.asarray(out.ts, dtype=np.int64), "params_hash": params_hash(expert),
            "horizon": int(out.horizon), "p_down": out.probs[:, 0], "p_flat": out.probs[:, 1],
            "p_up": out.probs[:, 2], "expected_return": out.expected_return,
            "confidence": out.confidence, "extras": extras})
        self.store.write_df("forecast_cache", df, mode="upsert")
