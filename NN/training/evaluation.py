"""Evaluation of the current checkpoints on a market's test split, with the online parts running.

The gate's Hedge adaptation, the robust layer (base rate, fixed-share weights, online recalibration,
core/fusion.py) and the OOD discount walk every bar from ``warmup`` bars before the test split (all
preceding bars by default) through the test split, bar by bar with matured outcomes only, exactly as
live and in backtests (core/orchestrator.GateRunner). Nothing is trained. Scores are over the test
split's labelled samples. ``walk`` > 1 also scores consecutive windows of the test split.

``evaluate_markets`` runs that per market and summarises: per market the fused output against the
base rate and the best single expert, and the worst market; it says plainly where fused loses.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from core.config import RobustConfig
from core.orchestrator import GateRunner
from core.scoring import scores
from NN.experts.base import Expert
from NN.moe import MoEGate


def _known_idx(y: np.ndarray, r: np.ndarray, part: slice) -> np.ndarray:
    idx = np.arange(part.start, part.stop)
    return idx[(y[idx] >= 0) & np.isfinite(r[idx])]


def train_climatology(y: np.ndarray, train: slice) -> np.ndarray:
    """Class frequencies of the market's own train split (+1 Laplace): the static base rate."""
    part = y[train]
    counts = np.bincount(part[part >= 0], minlength=3).astype(np.float64) + 1.0
    return counts / counts.sum()


def evaluate_online(experts: dict[str, Expert], gate: MoEGate, prep: Any, robust: RobustConfig,
                    *, warmup: int | None = None, walk: int = 0,
                    candles: pd.DataFrame | None = None) -> dict[str, Any]:
    """See the module docstring. ``prep`` is NN.training.prepared.Prepared; the gate is mutated (its
    Hedge state walks the bars), so pass a freshly loaded one per market."""
    names = list(gate.experts)
    missing = [n for n in names if n not in experts]
    if missing:
        raise ValueError(f"gate was trained on {names} but {missing} could not be loaded")
    hs = {experts[n].horizon for n in names}
    if len(hs) != 1:
        raise ValueError(f"the gate fuses experts of one horizon; got {hs}")
    h = hs.pop()
    y, r = prep.labels(h)
    t0 = 0 if warmup is None else max(0, prep.test.start - int(warmup))
    sub = prep.batch.take(slice(t0, prep.test.stop))
    n, E = len(sub), len(names)
    outs = {nm: experts[nm].predict_many(sub, candles if experts[nm].input_kind == "candles" else None)
            for nm in names}
    probs = np.stack([outs[nm].probs for nm in names], axis=1).astype(np.float64)
    ood = np.stack([np.asarray(outs[nm].extras.get("ood", np.full(n, np.nan)), dtype=np.float64)
                    for nm in names], axis=1)
    regime = np.asarray(sub.regime, dtype=np.float64)
    close = np.asarray(sub.close, dtype=np.float64)
    runner = GateRunner(gate, h, prep.dead_zone, robust)
    enabled = np.ones(E, dtype=bool)
    F = np.zeros((n, 3))
    W = np.zeros((n, E))
    CW = np.zeros(n)
    members = np.zeros((n, E + 3, 3)) if robust.enabled else None
    MW = np.zeros((n, E + 3)) if robust.enabled else None
    for j in range(n):
        W[j], F[j] = runner.step(close[j], probs[j], regime[j], enabled, ood[j])
        CW[j] = runner.climatology_weight
        if members is not None and MW is not None and runner.last is not None:
            members[j], MW[j] = runner.last.members, runner.last.member_weights
    test = _known_idx(y, r, prep.test)
    loc = test - t0
    yt = y[test]
    clim = train_climatology(y, prep.train)
    out: dict[str, Any] = {"experts": {}, "baseline": {}, "horizon": h,
                           "warmup_bars": int(prep.test.start - t0)}
    for e, nm in enumerate(names):
        o = ood[loc, e]
        out["experts"][nm] = {"horizon": h, "version": experts[nm].version, **scores(probs[loc, e], yt),
                              "mean_ood": float(np.nanmean(o)) if np.isfinite(o).any() else None}
    out["baseline"][f"climatology_h{h}"] = {"horizon": h, "train_freq": clim.tolist(),
                                            **scores(np.tile(clim, (len(loc), 1)), yt)}
    mean_w = {nm: float(W[loc, e].mean()) for e, nm in enumerate(names)}
    if robust.enabled:
        mean_w["climatology"] = float(CW[loc].mean())
    out["fused"] = {"horizon": h, "version": gate.version, "gate": "learned" if gate.trained else "hedge",
                    "online": True, "robust": robust.enabled,
                    "mean_weights": {k: round(v, 4) for k, v in mean_w.items()}, **scores(F[loc], yt)}
    if members is not None and MW is not None:
        out["baseline"]["climatology_rolling"] = {"horizon": h, "window": robust.climatology_window,
                                                  **scores(members[loc, E + 2], yt)}
        out["members"] = {
            "gate": {"horizon": h, **scores(members[loc, E], yt)},
            "recalibrated": {"horizon": h, **scores(members[loc, E + 1], yt)},
            "mean_member_weights": dict(zip([*names, "gate", "recalibrated", "climatology"],
                                            MW[loc].mean(axis=0).round(4).tolist(), strict=True)),
        }
    if walk and walk > 1:
        out["walk"] = []
        for part in np.array_split(np.arange(len(loc)), walk):
            if len(part) == 0:
                continue
            lp, yp = loc[part], yt[part]
            best_n, best_s = min(((nm, scores(probs[lp, e], yp)) for e, nm in enumerate(names)),
                                 key=lambda t: t[1]["log_loss"])
            out["walk"].append({
                "from_ts": int(sub.ts[lp[0]]), "to_ts": int(sub.ts[lp[-1]]), "n": int(len(part)),
                "fused": scores(F[lp], yp), "climatology": scores(np.tile(clim, (len(lp), 1)), yp),
                **({"climatology_rolling": scores(members[lp, E + 2], yp)} if members is not None else {}),
                "best_expert": {"name": best_n, **best_s},
            })
    return out


def market_summary(market: str, rep: dict[str, Any]) -> dict[str, Any]:
    """One row of the cross-market table: fused vs the base rates vs the best expert."""
    fused = rep["fused"]
    base = rep["baseline"]
    clim = next(v for k, v in base.items() if k.startswith("climatology_h"))
    best_n, best = min(rep["experts"].items(), key=lambda kv: kv[1]["log_loss"])
    row = {
        "market": market, "n": fused["n"],
        "fused_log_loss": fused["log_loss"], "fused_ece": fused["ece"], "fused_brier": fused["brier"],
        "fused_accuracy": fused["accuracy"],
        "climatology_log_loss": clim["log_loss"], "climatology_ece": clim["ece"],
        "best_expert": best_n, "best_expert_log_loss": best["log_loss"], "best_expert_ece": best["ece"],
        "climatology_weight": fused["mean_weights"].get("climatology", 0.0),
    }
    if "climatology_rolling" in base:
        row["rolling_climatology_log_loss"] = base["climatology_rolling"]["log_loss"]
    row["fused_minus_climatology"] = row["fused_log_loss"] - row["climatology_log_loss"]
    row["loses_to_climatology"] = bool(row["fused_minus_climatology"] > 0)
    return row


def verdicts(rows: list[dict[str, Any]]) -> list[str]:
    """Plain sentences: where the fused output is worse than the base rate, and the worst market."""
    lines = []
    for r in rows:
        if "error" in r:
            lines.append(f"{r['market']}: not evaluated ({r['error']})")
        elif r["loses_to_climatology"]:
            lines.append(f"{r['market']}: fused log loss {r['fused_log_loss']:.4f} is WORSE than climatology "
                         f"{r['climatology_log_loss']:.4f} by {r['fused_minus_climatology']:.4f}")
        else:
            lines.append(f"{r['market']}: fused {r['fused_log_loss']:.4f} <= climatology "
                         f"{r['climatology_log_loss']:.4f}")
    ok = [r for r in rows if "error" not in r]
    if ok:
        w = max(ok, key=lambda r: r["fused_minus_climatology"])
        lines.append(f"worst market: {w['market']} (fused - climatology = {w['fused_minus_climatology']:+.4f}, "
                     f"fused ECE {w['fused_ece']:.4f})")
    return lines
