"""Walk-forward backtests: retrain on a sliding window, trade the next window, stitch the folds.

Fold k trains on candles with ``train_start_k <= ts < train_end_k`` ONLY (features, labels, early
stopping and the gate fit all come from those bars: the injected ``FoldTrainer`` never sees a later
one), then its models decide every bar of ``[train_end_k, train_end_k + test)`` through the same fast
backtester as ``run`` (the test segment carries the feature warm-up before ``train_end_k``: past data).
The folds' per-bar signals are stitched and traded ONCE by the execution kernel, so the out-of-sample
equity curve is continuous (a position may stay open across a fold boundary, as it would live) and its
metrics come from one definition. Each fold's predictions are cached (``fold_K.npz``) and so is the
stitched range (``predictions.npz``): core/backtest/retune.py re-trades new thresholds and risk
settings from them without retraining.

Model age at a decision = its bar time - the train end of the models that made it.
"""

from __future__ import annotations

import dataclasses
import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd

from core.backtest.attribution import attribute
from core.backtest.engine import Backtester, BacktestSpec, Components, Progress, fills_frame, vol_series
from core.backtest.metrics import compute_metrics
from core.config import ExecutionConfig, RiskConfig
from core.execution import kernel as K
from core.labels import make_labels
from core.scoring import scores
from core.types import CANDLE_COLUMNS, timeframe_ms

_DUR = re.compile(r"^(\d+)([mhdw])$")
_UNIT_MS = {"m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 7 * 86_400_000}


def parse_duration(text: str) -> int:
    """'7d' / '12h' / '90m' / '2w' -> milliseconds."""
    m = _DUR.match(str(text).strip())
    if not m or int(m.group(1)) <= 0:
        raise ValueError(f"duration {text!r}: expected a positive number and a unit m|h|d|w, e.g. 7d, 12h, 90m")
    return int(m.group(1)) * _UNIT_MS[m.group(2)]


@dataclass(frozen=True)
class Fold:
    index: int
    train_start: int  # ms, inclusive
    train_end: int  # ms, exclusive = test start
    test_end: int  # ms, exclusive

    @property
    def test_start(self) -> int:
        return self.train_end


def make_folds(ts: np.ndarray, timeframe: str, train_ms: int, test_ms: int, step_ms: int | None = None,
               max_folds: int | None = None) -> list[Fold]:
    """Sliding windows from the first bar: fold k trains on [t0 + k*step, t0 + k*step + train) and tests
    on the next ``test_ms``; only folds whose test window lies inside the data are made."""
    step = test_ms if step_ms is None else step_ms
    if min(train_ms, test_ms, step) <= 0:
        raise ValueError("walk-forward: train, test and step must be positive")
    ts = np.asarray(ts, dtype=np.int64)
    if len(ts) == 0:
        raise ValueError("walk-forward: no candles")
    end = int(ts[-1]) + timeframe_ms(timeframe)
    folds: list[Fold] = []
    k = 0
    while True:
        s = int(ts[0]) + k * step
        if s + train_ms + test_ms > end or (max_folds is not None and k >= max_folds):
            break
        folds.append(Fold(k, s, s + train_ms, s + train_ms + test_ms))
        k += 1
    if not folds:
        span_h = (end - int(ts[0])) / 3_600_000
        raise ValueError(f"walk-forward: {span_h:.1f} h of candles cannot hold one train + test window "
                         f"({(train_ms + test_ms) / 3_600_000:.1f} h); shorten --train/--test or widen --from/--to")
    return folds


class FoldTrainer(Protocol):
    """Trains a fold's experts and gate on ``train_candles`` (nothing later exists for it); ``previous``
    is the last fold's components when warm-starting, else None (compose.walkforward_trainer)."""

    def __call__(self, train_candles: pd.DataFrame, fold: Fold, previous: Components | None) -> Components: ...


@dataclass
class FoldResult:
    fold: Fold
    bars: int
    info: dict[str, dict[str, Any]]
    train_s: float
    test_s: float
    metrics: dict[str, Any] = field(default_factory=dict)


@dataclass
class WalkForwardResult:
    run_id: str
    spec: BacktestSpec
    candles: pd.DataFrame  # the stitched test bars
    names: list[str]
    fold_of: np.ndarray  # int [N] fold index of each bar
    model_age_ms: np.ndarray  # int64 [N]
    decided: np.ndarray
    codes: np.ndarray
    fused: np.ndarray
    weights: np.ndarray
    confidence: np.ndarray
    expert_probs: np.ndarray  # [N, E, 3]
    signal: np.ndarray
    equity: np.ndarray
    position: np.ndarray
    fills: pd.DataFrame
    state: np.ndarray
    folds: list[FoldResult]
    metrics: dict[str, Any]
    baselines: dict[str, Any]
    attribution: dict[str, Any]

    def summary(self) -> dict[str, Any]:
        """The JSON report (no per-bar arrays)."""
        return {
            "run_id": self.run_id, "kind": "walkforward",
            "spec": {"exchange": self.spec.exchange, "symbol": self.spec.symbol, "timeframe": self.spec.timeframe,
                     "thresholds": dataclasses.asdict(self.spec.thresholds), "horizon": self.spec.horizon,
                     "dead_zone": self.spec.dead_zone},
            "experts": self.names, "bars": len(self.candles),
            "from_ts": int(self.candles["ts"].iloc[0]), "to_ts": int(self.candles["ts"].iloc[-1]),
            "metrics": self.metrics, "baselines": self.baselines, "attribution": self.attribution,
            "model_age_min": {"median": float(np.median(self.model_age_ms) / 60_000),
                              "max": float(self.model_age_ms.max() / 60_000)},
            "folds": [{"index": f.fold.index, "train_start": f.fold.train_start, "train_end": f.fold.train_end,
                       "test_end": f.fold.test_end, "bars": f.bars, "train_s": round(f.train_s, 3),
                       "test_s": round(f.test_s, 3), "models": f.info, "metrics": f.metrics} for f in self.folds],
        }


def _test_segment(candles: pd.DataFrame, fold: Fold, comps: Components, timeframe: str) -> pd.DataFrame:
    """The fold's test bars plus enough earlier bars for the features' warm-up and the alignment to the
    longest feature timeframe (Backtester.run drops bars before its first bucket boundary)."""
    ts = candles["ts"].to_numpy(np.int64)
    a, b = int(np.searchsorted(ts, fold.test_start)), int(np.searchsorted(ts, fold.test_end))
    longest = max(timeframe_ms(t) for t in comps.builder.timeframes) // timeframe_ms(timeframe)
    lo = a - (comps.builder.min_history - 1) - longest
    if lo < 0:
        raise ValueError(f"fold {fold.index}: {a} bars before its test window, the features need "
                         f"{a - lo}; start the walk-forward later or shorten the feature windows")
    return candles.iloc[lo:b]


def fold_predictions(candles: pd.DataFrame, fold: Fold, comps: Components, spec: BacktestSpec,
                     execution: ExecutionConfig, risk: RiskConfig) -> dict[str, np.ndarray]:
    """The fold's models over its test window, through the fast backtester's decision code: per test bar
    ts, codes, fused, weights, confidence, expert_probs, mask, signal."""
    seg = _test_segment(candles, fold, comps, spec.timeframe)
    res = Backtester(comps, spec, execution, risk, store=None, keep_decisions=False).run(seg, "fast")
    ts = res.candles["ts"].to_numpy(np.int64)
    sel = ts >= fold.test_start
    if not res.decided[sel].all():
        raise RuntimeError(f"fold {fold.index}: not every test bar was decided (warm-up too short)")
    assert res.expert_probs is not None and res.expert_mask is not None
    return {"ts": ts[sel], "codes": res.codes[sel], "fused": res.fused[sel], "weights": res.weights[sel],
            "confidence": res.confidence[sel], "expert_probs": res.expert_probs[sel],
            "mask": res.expert_mask[sel], "signal": res.signal[sel]}


def trade(candles: pd.DataFrame, signal: np.ndarray, spec: BacktestSpec, params: np.ndarray
          ) -> tuple[np.ndarray, np.ndarray, pd.DataFrame, np.ndarray]:
    """One kernel pass over the stitched bars -> (equity, position, fills, state)."""
    a = {c: candles[c].to_numpy(np.float64) for c in CANDLE_COLUMNS}
    equity, position, fills, state = K.run(a["ts"], a["open"], a["high"], a["low"], a["close"], signal,
                                           vol_series(a["close"], spec), params=params,
                                           initial_cash=spec.initial_cash)
    return equity, position, fills_frame(fills), state


def forecast_baselines(close_all: np.ndarray, ts_all: np.ndarray, folds: list[Fold], test_ts: np.ndarray,
                       fused: np.ndarray, horizon: int, dead_zone: float) -> dict[str, Any]:
    """Fused probabilities vs climatology (each fold's train-window class frequencies, Laplace-smoothed)
    on the test bars whose label is known; labels from the whole series (evaluation only: a label at t
    uses close[t + h], never a feature)."""
    y_all = make_labels(close_all, horizon, dead_zone)
    pos = np.searchsorted(ts_all, test_ts)
    y = y_all[pos]
    clim = np.zeros_like(fused)
    for f in folds:
        tr = (ts_all >= f.train_start) & (ts_all < f.train_end)
        # a train label is known at train end only if its horizon ends before it
        idx = np.flatnonzero(tr)[:-horizon] if tr.sum() > horizon else np.array([], dtype=np.int64)
        yy = y_all[idx]
        counts = np.bincount(yy[yy >= 0], minlength=3).astype(np.float64) + 1.0
        rows = (test_ts >= f.test_start) & (test_ts < f.test_end)
        clim[rows] = counts / counts.sum()
    ok = y >= 0
    out: dict[str, Any] = {"n_scored": int(ok.sum())}
    if ok.any():
        out["fused"] = scores(fused[ok], y[ok])
        out["climatology"] = scores(clim[ok], y[ok])
    return out


def run_walkforward(candles: pd.DataFrame, folds: list[Fold], trainer: FoldTrainer, spec: BacktestSpec,
                    execution: ExecutionConfig, risk: RiskConfig, *, warm_start: bool = False,
                    run_id: str = "walkforward", cache_dir: Path | None = None,
                    progress: Progress | None = None) -> WalkForwardResult:
    """Train, test and stitch every fold (see the module doc); ``cache_dir`` receives the per-fold and
    stitched predictions and the JSON report."""
    progress = progress or (lambda stage, done, total: None)
    candles = candles[list(CANDLE_COLUMNS)].reset_index(drop=True)
    ts_all = candles["ts"].to_numpy(np.int64)
    preds: list[dict[str, np.ndarray]] = []
    fold_results: list[FoldResult] = []
    prev: Components | None = None
    names: list[str] = []
    for f in folds:
        progress("folds", f.index, len(folds))
        t0 = time.perf_counter()
        # the ONLY candles the trainer sees: nothing at or after the fold's train end
        train = candles[(ts_all >= f.train_start) & (ts_all < f.train_end)].reset_index(drop=True)
        comps = trainer(train, f, prev if warm_start else None)
        t1 = time.perf_counter()
        p = fold_predictions(candles, f, comps, spec, execution, risk)
        names = list(comps.experts)
        if cache_dir is not None:
            cache_dir.mkdir(parents=True, exist_ok=True)
            arrays: dict[str, Any] = {"train_end": np.int64(f.train_end), "names": np.array(names), **p}
            np.savez(cache_dir / f"fold_{f.index}.npz", **arrays)
        preds.append(p)
        fold_results.append(FoldResult(f, len(p["ts"]), comps.info, t1 - t0, time.perf_counter() - t1))
        prev = comps
    progress("folds", len(folds), len(folds))
    cat = {k: np.concatenate([p[k] for p in preds]) for k in preds[0]}
    if not (np.diff(cat["ts"]) > 0).all():
        raise ValueError("walk-forward: fold test windows overlap (use --step >= --test)")
    bars = candles.iloc[np.searchsorted(ts_all, cat["ts"])].reset_index(drop=True)
    fold_of = np.concatenate([np.full(len(p["ts"]), i) for i, p in enumerate(preds)])
    age = cat["ts"] - np.concatenate([np.full(len(p["ts"]), folds[i].train_end) for i, p in enumerate(preds)])
    params = K.params_from_config(execution, risk)
    equity, position, fills, state = trade(bars, cat["signal"], spec, params)
    decided = np.ones(len(bars), dtype=bool)
    metrics = compute_metrics(bars, equity, position, fills, state, spec.initial_cash, spec.timeframe,
                              cat["codes"], spec.horizon, decided=decided, fused=cat["fused"],
                              dead_zone=spec.dead_zone, periods_per_year=spec.bars_per_year)
    close = bars["close"].to_numpy(np.float64)
    baselines = {"buy_and_hold_return": metrics["buy_and_hold"],
                 **forecast_baselines(candles["close"].to_numpy(np.float64), ts_all, folds, cat["ts"],
                                      cat["fused"], spec.horizon, spec.dead_zone)}
    attr = attribute(equity, spec.initial_cash, cat["codes"], cat["weights"], cat["expert_probs"], names,
                     groups=fold_of, lag=1 if execution.fill_at == "next_open" else 0)
    for i, fr in enumerate(fold_results):
        rows = fold_of == i
        e0 = spec.initial_cash if i == 0 else float(equity[np.flatnonzero(rows)[0] - 1])
        fts = bars["ts"].to_numpy(np.int64)[rows]
        nf = fills[(fills["ts"] >= fts[0]) & (fills["ts"] <= fts[-1])]
        fr.metrics = {"return": float(equity[rows][-1] / e0 - 1.0), "fills": len(nf),
                      "buy_decisions": int((cat["codes"][rows] == 1).sum()),
                      "sell_decisions": int((cat["codes"][rows] == -1).sum()),
                      "buy_and_hold_return": float(close[rows][-1] / float(bars["open"][rows].iloc[0]) - 1.0),
                      "attribution": attr["groups"].get(i, {})}
    if cache_dir is not None:
        stitched: dict[str, Any] = {"fold_of": fold_of, "model_age_ms": age, "names": np.array(names), **cat}
        np.savez(cache_dir / "predictions.npz", **stitched)
        bars.to_parquet(cache_dir / "candles.parquet")
    res = WalkForwardResult(run_id, spec, bars, names, fold_of, age, decided, cat["codes"], cat["fused"],
                            cat["weights"], cat["confidence"], cat["expert_probs"], cat["signal"], equity,
                            position, fills, state, fold_results, metrics, baselines, attr)
    if cache_dir is not None:
        (cache_dir / "report.json").write_text(json.dumps(res.summary(), indent=2, default=_jsonable))
    return res


def _jsonable(v: Any) -> Any:
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, float) and not np.isfinite(v):
        return None
    return str(v)
