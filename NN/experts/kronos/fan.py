"""Fan charts of a forecast: recent history, mean path, p10-p90 and p25-p75 close bands (calibrated
bands when a calibration is given). PNG via matplotlib (headless) and interactive HTML via plotly."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .sampler import Forecast


def fan_bands(fc: Forecast, calibration: Any | None = None) -> dict[str, np.ndarray]:
    close = fc.closes
    if calibration is None:
        q = np.percentile(close, [10, 25, 50, 75, 90], axis=0)
    else:
        from .calibration import path_log_returns

        cq = calibration.quantiles(path_log_returns(close[None], fc.last_close)[0])  # [H, K]
        q = np.stack([fc.last_close * np.exp([np.interp(t, calibration.taus, row) for row in cq])
                      for t in (0.1, 0.25, 0.5, 0.75, 0.9)])
    return {"p10": q[0], "p25": q[1], "p50": q[2], "p75": q[3], "p90": q[4], "mean": close.mean(axis=0)}


def _times(ms: np.ndarray) -> np.ndarray:
    return np.asarray(ms, dtype="datetime64[ms]")


def write_png(fc: Forecast, bands: dict[str, np.ndarray], path: Path, title: str, history_bars: int = 120) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    hx = _times(fc.history_ts[-history_bars:])
    fx = _times(np.concatenate([fc.history_ts[-1:], fc.future_ts]))
    last = fc.last_close

    def ext(a: np.ndarray) -> np.ndarray:
        return np.concatenate([[last], a])

    fig, ax = plt.subplots(figsize=(11, 5), dpi=110)
    ax.plot(hx, fc.history[-history_bars:, 3], color="#333", lw=1.2, label="history (close)")
    ax.fill_between(fx, ext(bands["p10"]), ext(bands["p90"]), color="#1f77b4", alpha=0.18, label="p10–p90")
    ax.fill_between(fx, ext(bands["p25"]), ext(bands["p75"]), color="#1f77b4", alpha=0.35, label="p25–p75")
    ax.plot(fx, ext(bands["mean"]), color="#d62728", lw=1.5, label="mean path")
    ax.plot(fx, ext(bands["p50"]), color="#1f77b4", lw=1.0, ls="--", label="median")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
    fig.autofmt_xdate()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def write_html(fc: Forecast, bands: dict[str, np.ndarray], path: Path, title: str, history_bars: int = 120) -> Path:
    import plotly.graph_objects as go

    hx = _times(fc.history_ts[-history_bars:])
    fx = _times(np.concatenate([fc.history_ts[-1:], fc.future_ts]))
    last = fc.last_close

    def ext(a: np.ndarray) -> list[float]:
        return np.concatenate([[last], a]).tolist()

    fig = go.Figure()
    fig.add_trace(go.Scatter(x=hx, y=fc.history[-history_bars:, 3], name="history (close)",
                             line=dict(color="#333", width=1.2)))
    for lo, hi, alpha in (("p10", "p90", 0.18), ("p25", "p75", 0.35)):
        fig.add_trace(go.Scatter(x=fx, y=ext(bands[hi]), line=dict(width=0), showlegend=False, hoverinfo="skip"))
        fig.add_trace(go.Scatter(x=fx, y=ext(bands[lo]), fill="tonexty", line=dict(width=0),
                                 fillcolor=f"rgba(31,119,180,{alpha})", name=f"{lo}–{hi}"))
    fig.add_trace(go.Scatter(x=fx, y=ext(bands["mean"]), name="mean path", line=dict(color="#d62728", width=1.5)))
    fig.add_trace(go.Scatter(x=fx, y=ext(bands["p50"]), name="median", line=dict(color="#1f77b4", dash="dash")))
    fig.update_layout(title=title, template="plotly_white", hovermode="x unified")
    fig.write_html(str(path), include_plotlyjs=True, full_html=True)
    return path
