"""Recalibration of sampled bands and of P(up), fitted on a held-out chronological period.

Bands: split-conformal on a normalised residual. For each forecast origin and step h, the paths give
a median m and a spread s (p90 - p10 of the path log returns). On the calibration period we collect
e = (y - m) / s for the realised log return y and store, per step, the empirical quantiles of e on a
grid of levels; the calibrated τ-quantile is then m + Q_e(τ)·s. This widens bands that are too
narrow and removes a bias of the median, while keeping the paths' own sense of volatility.
P(up): isotonic regression (pool-adjacent-violators) of the outcome y > 0 on the raw path share
P(close > last close), per step. Both are stored as JSON beside the model."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

TAUS = np.round(np.linspace(0.01, 0.99, 99), 2)
LEVELS = (0.5, 0.8, 0.9)
MIN_SPREAD = 1e-6  # log-return floor so identical paths (greedy) still give a finite residual


# ---------------------------------------------------------------- helpers (pure)


def path_log_returns(paths_close: np.ndarray, last_close: float | np.ndarray) -> np.ndarray:
    return np.log(np.clip(paths_close, 1e-300, None) / np.asarray(last_close)[..., None, None])


def center_spread(r: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """r [..., N, H] path returns -> median and p90-p10 spread over paths, each [..., H]."""
    q10, q50, q90 = np.quantile(r, [0.1, 0.5, 0.9], axis=-2)
    return q50, np.maximum(q90 - q10, MIN_SPREAD)


def pav(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Isotonic (non-decreasing) least-squares fit of y on x; returns knots (x, fitted y)."""
    order = np.argsort(x, kind="mergesort")
    xs, ys = x[order].astype(float), y[order].astype(float)
    vals, wts, ends = [], [], []
    for i, v in enumerate(ys):
        vals.append(v)
        wts.append(1.0)
        ends.append(i)
        while len(vals) > 1 and vals[-2] > vals[-1]:
            w = wts[-2] + wts[-1]
            vals[-2] = (vals[-2] * wts[-2] + vals[-1] * wts[-1]) / w
            wts[-2] = w
            ends[-2] = ends[-1]
            vals.pop()
            wts.pop()
            ends.pop()
    fitted = np.empty_like(ys)
    start = 0
    for v, e in zip(vals, ends, strict=True):
        fitted[start:e + 1] = v
        start = e + 1
    ux = np.unique(xs)
    fx = np.array([fitted[xs == u].mean() for u in ux])  # repeated x: one knot, mean value
    return ux, fx


def pinball_crps(q: np.ndarray, y: np.ndarray, taus: np.ndarray = TAUS) -> np.ndarray:
    """CRPS approximated by 2·mean over the τ grid of the pinball loss. q [..., K], y [...]."""
    d = y[..., None] - q
    return 2.0 * np.mean(np.maximum(taus * d, (taus - 1.0) * d), axis=-1)


# ---------------------------------------------------------------- the stored recalibration


@dataclass
class Calibration:
    horizon: int
    taus: np.ndarray  # [K]
    resid_q: np.ndarray  # [H, K] quantiles of e per step
    iso_x: list[np.ndarray]  # per step: knots of raw P(up)
    iso_y: list[np.ndarray]  # per step: calibrated P(up)
    n_fit: int
    report: dict[str, Any] = field(default_factory=dict)

    # -- fitting
    @classmethod
    def fit(cls, r: np.ndarray, y: np.ndarray) -> Calibration:
        """r [M, N, H] path log returns at M origins; y [M, H] realised log returns."""
        if r.ndim != 3 or y.shape != (r.shape[0], r.shape[2]):
            raise ValueError(f"calibration needs r [M, N, H] and y [M, H], got {r.shape} and {y.shape}")
        if r.shape[0] < 20:
            raise ValueError(f"calibration needs at least 20 held-out forecasts, got {r.shape[0]}")
        m, s = center_spread(r)
        e = (y - m) / s
        resid_q = np.quantile(e, TAUS, axis=0).T  # [H, K]
        raw_up = np.mean(r > 0, axis=1)  # [M, H]
        iso_x, iso_y = [], []
        for h in range(r.shape[2]):
            kx, ky = pav(raw_up[:, h], (y[:, h] > 0).astype(float))
            iso_x.append(kx)
            iso_y.append(ky)
        return cls(horizon=r.shape[2], taus=TAUS.copy(), resid_q=resid_q, iso_x=iso_x, iso_y=iso_y,
                   n_fit=int(r.shape[0]))

    # -- applying
    def _check(self, h: int) -> None:
        if h > self.horizon:
            raise ValueError(f"calibration was fitted for horizons up to {self.horizon} bars, asked for {h}")

    def quantiles(self, r: np.ndarray) -> np.ndarray:
        """Calibrated log-return quantiles [..., H, K] at ``self.taus`` from paths r [..., N, H]."""
        self._check(r.shape[-1])
        m, s = center_spread(r)
        q = m[..., None] + self.resid_q[: r.shape[-1]] * s[..., None]
        return np.maximum.accumulate(q, axis=-1)

    def cdf(self, r: np.ndarray, x: np.ndarray) -> np.ndarray:
        """Calibrated P(log return <= x) per step; r [N, H] (one origin) or [M, N, H], x [..., H]."""
        q = self.quantiles(r)
        flat_q = q.reshape(-1, q.shape[-1])
        flat_x = np.broadcast_to(x, q.shape[:-1]).reshape(-1)
        out = np.array([np.interp(v, qq, self.taus, left=0.0, right=1.0) for v, qq in zip(flat_x, flat_q, strict=True)])
        return out.reshape(q.shape[:-1])

    def p_up(self, raw_up: np.ndarray) -> np.ndarray:
        """Isotonic map of raw P(up) [..., H] per step."""
        self._check(raw_up.shape[-1])
        out = np.empty_like(raw_up, dtype=float)
        for h in range(raw_up.shape[-1]):
            out[..., h] = np.interp(raw_up[..., h], self.iso_x[h], self.iso_y[h])
        return out

    def summarize(self, fc: Any) -> dict[str, Any]:
        """Calibrated bands and P(up) per step for one Forecast, in price units."""
        r = path_log_returns(fc.closes[None], fc.last_close)[0]  # [N, H]
        q = self.quantiles(r)  # [H, K]
        up = self.p_up(np.mean(r > 0, axis=0))
        idx = {p: int(np.argmin(np.abs(self.taus - p / 100))) for p in (10, 25, 50, 75, 90)}
        steps = [{"ts": int(fc.future_ts[t]), "p_up": float(up[t]),
                  "close": {f"p{p}": float(fc.last_close * np.exp(q[t, k])) for p, k in idx.items()}}
                 for t in range(r.shape[1])]
        return {"method": "split-conformal normalised residual bands; isotonic P(up)",
                "n_fit": self.n_fit, "at_horizon": steps[-1], "steps": steps}

    # -- storage
    def to_dict(self) -> dict[str, Any]:
        return {"horizon": self.horizon, "taus": self.taus.tolist(), "resid_q": self.resid_q.tolist(),
                "iso_x": [a.tolist() for a in self.iso_x], "iso_y": [a.tolist() for a in self.iso_y],
                "n_fit": self.n_fit, "report": self.report}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Calibration:
        return cls(horizon=int(d["horizon"]), taus=np.asarray(d["taus"]), resid_q=np.asarray(d["resid_q"]),
                   iso_x=[np.asarray(a) for a in d["iso_x"]], iso_y=[np.asarray(a) for a in d["iso_y"]],
                   n_fit=int(d["n_fit"]), report=d.get("report", {}))

    def save(self, path: str | Path) -> Path:
        p = Path(path)
        tmp = p.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.to_dict()))
        os.replace(tmp, p)
        return p

    @classmethod
    def load(cls, path: str | Path) -> Calibration:
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"{p}: no calibration stored with this model (train_kronos writes it)")
        return cls.from_dict(json.loads(p.read_text()))


# ---------------------------------------------------------------- evaluation


def evaluate(r: np.ndarray, y: np.ndarray, cal: Calibration | None = None) -> dict[str, Any]:
    """Raw (and calibrated) scores on forecasts r [M, N, H] with outcomes y [M, H]: coverage of the
    central 50/80/90% bands (all steps and at the horizon), PIT histogram (10 bins, all steps),
    CRPS (quantile-grid approximation) and Brier score of P(up)."""
    raw_q = np.moveaxis(np.quantile(r, TAUS, axis=1), 0, -1)  # [M, H, K]
    out: dict[str, Any] = {"n": int(r.shape[0]), "samples": int(r.shape[1]), "horizon": int(r.shape[2])}
    variants: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    raw_pit = (np.sum(r < y[:, None, :], axis=1) + 0.5 * np.sum(r == y[:, None, :], axis=1)) / r.shape[1]
    variants["raw"] = (raw_q, raw_pit, np.mean(r > 0, axis=1))
    if cal is not None:
        cq = cal.quantiles(r)
        cpit = np.array([[np.interp(y[i, h], cq[i, h], cal.taus, left=0.0, right=1.0)
                          for h in range(y.shape[1])] for i in range(y.shape[0])])
        variants["calibrated"] = (cq, cpit, cal.p_up(np.mean(r > 0, axis=1)))
    up = (y > 0).astype(float)
    for name, (q, pit, pu) in variants.items():
        cov = {}
        for lvl in LEVELS:
            lo = int(np.argmin(np.abs(TAUS - (1 - lvl) / 2)))
            hi = int(np.argmin(np.abs(TAUS - (1 + lvl) / 2)))
            inside = (y >= q[..., lo]) & (y <= q[..., hi])
            cov[f"{int(lvl * 100)}"] = {"all_steps": float(inside.mean()), "at_horizon": float(inside[:, -1].mean())}
        crps = pinball_crps(q, y)
        hist, _ = np.histogram(pit.ravel(), bins=10, range=(0.0, 1.0))
        out[name] = {
            "coverage": cov,
            "pit_hist": (hist / max(1, hist.sum())).round(4).tolist(),
            "crps": {"all_steps": float(crps.mean()), "at_horizon": float(crps[:, -1].mean())},
            "brier_up": {"all_steps": float(np.mean((pu - up) ** 2)),
                         "at_horizon": float(np.mean((pu[:, -1] - up[:, -1]) ** 2))},
        }
    return out


def collect_forecasts(sampler: Any, candles: Any, origins: np.ndarray, lookback: int, horizon: int,
                      cfg: Any, step_ms: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Forecast at each origin row index i (context = rows i-lookback+1 .. i, nothing later) and pair
    the paths with what happened next. Returns r [M, N, H] path log returns, y [M, H] realised log
    returns, ts [M] origin timestamps. Origins need lookback-1 rows before and horizon rows after."""
    close = candles["close"].to_numpy(np.float64)
    rs, ys, ts = [], [], []
    for i in np.asarray(origins, dtype=np.int64):
        if i - lookback + 1 < 0 or i + horizon >= len(candles):
            raise ValueError(f"origin row {i} lacks {lookback} bars of context or {horizon} bars of outcome")
        ctx = candles.iloc[i - lookback + 1: i + 1]
        fc = sampler.forecast(ctx, horizon, cfg, step_ms=step_ms)
        rs.append(path_log_returns(fc.closes[None], fc.last_close)[0])
        ys.append(np.log(close[i + 1: i + 1 + horizon] / close[i]))
        ts.append(int(candles["ts"].iloc[i]))
    return np.stack(rs), np.stack(ys), np.asarray(ts, dtype=np.int64)
