"""Backtest reports: one JSON file (metrics + the series behind them) and one self-contained HTML page
(plotly inlined: equity and drawdown, price with trade markers, calibration, gate weights over time).

The JSON alone is enough to regenerate the HTML (``main_backtest.py report ID``).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

REPORT_VERSION = 1


def _clean(v: Any) -> Any:
    """JSON-safe: numpy -> python, NaN/inf -> None (JSON has no NaN)."""
    if isinstance(v, dict):
        return {str(k): _clean(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_clean(x) for x in v]
    if isinstance(v, np.ndarray):
        return _clean(v.tolist())
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def write_json(report: dict[str, Any], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(_clean({"report_version": REPORT_VERSION, **report}), indent=None))
    tmp.replace(path)
    return path


def read_json(path: Path) -> dict[str, Any]:
    if not path.exists():
        raise FileNotFoundError(f"backtest report not found: {path}")
    return json.loads(path.read_text())


def calibration_table(p_up: np.ndarray, realised_up: np.ndarray, bins: int = 10) -> pd.DataFrame:
    """Predicted P(up) binned against the realised frequency of 'up' (rows with an unknown outcome,
    realised < 0, are ignored)."""
    p_up = np.asarray(p_up, dtype=np.float64)
    r = np.asarray(realised_up, dtype=np.float64)
    ok = np.isfinite(p_up) & (r >= 0)
    p_up, r = p_up[ok], r[ok]
    edges = np.linspace(0.0, 1.0, bins + 1)
    idx = np.clip(np.digitize(p_up, edges) - 1, 0, bins - 1)
    rows = []
    for b in range(bins):
        m = idx == b
        if m.any():
            rows.append((float(p_up[m].mean()), float(r[m].mean()), int(m.sum())))
    return pd.DataFrame(rows, columns=["predicted", "realised", "count"])


def build_html(report: dict[str, Any]) -> str:
    s = report["series"]
    ts = pd.to_datetime(np.asarray(s["ts"], dtype="int64"), unit="ms", utc=True)
    equity = np.asarray(s["equity"], dtype=np.float64)
    peak = np.maximum.accumulate(equity)
    dd = equity / peak - 1.0
    figs: list[go.Figure] = []

    f1 = make_subplots(rows=2, cols=1, shared_xaxes=True, row_heights=[0.7, 0.3], vertical_spacing=0.04,
                       subplot_titles=("Equity", "Drawdown"))
    f1.add_trace(go.Scattergl(x=ts, y=equity, name="equity", line={"width": 1.2}), row=1, col=1)
    f1.add_trace(go.Scattergl(x=ts, y=dd * 100, name="drawdown %", fill="tozeroy",
                              line={"width": 1, "color": "#c0392b"}), row=2, col=1)
    f1.update_layout(height=520, margin={"t": 40, "b": 20})
    figs.append(f1)

    f2 = go.Figure()
    f2.add_trace(go.Scattergl(x=ts, y=s["close"], name="close", line={"width": 1, "color": "#555"}))
    fills = pd.DataFrame(report.get("fills", []))
    if len(fills):
        ft = pd.to_datetime(fills["ts"].astype("int64"), unit="ms", utc=True)
        for side, color, sym in (("buy", "#27ae60", "triangle-up"), ("sell", "#c0392b", "triangle-down")):
            m = (fills["side"] == side).to_numpy()
            f2.add_trace(go.Scattergl(x=ft[m], y=fills["price"][m], mode="markers", name=side,
                                      marker={"symbol": sym, "size": 9, "color": color}))
    f2.update_layout(title="Price and trades", height=420, margin={"t": 40, "b": 20})
    figs.append(f2)

    cal = calibration_table(np.asarray(s["p_up"], dtype=np.float64),
                            np.asarray(s["realised_up"], dtype=np.float64))
    f3 = go.Figure()
    f3.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", name="perfect",
                            line={"dash": "dash", "color": "#999"}))
    f3.add_trace(go.Scatter(x=cal["predicted"], y=cal["realised"], mode="lines+markers",
                            name="fused P(up)", text=[f"n={c}" for c in cal["count"]]))
    f3.update_layout(title=f"Calibration of fused P(up) at horizon {report.get('horizon', '?')} bars",
                     xaxis_title="predicted", yaxis_title="realised frequency", height=420,
                     margin={"t": 40, "b": 20})
    figs.append(f3)

    f4 = go.Figure()
    step = max(1, len(ts) // 5000)  # stacked areas are SVG: thin them to keep the page light
    for name, w in s.get("weights", {}).items():
        w = np.asarray(w, dtype=np.float64)
        f4.add_trace(go.Scatter(x=ts[::step], y=w[::step], name=name, mode="lines", stackgroup="w"))
    f4.update_layout(title="Gate weights over time", height=380, margin={"t": 40, "b": 20},
                     yaxis={"range": [0, 1]})
    figs.append(f4)

    m = report.get("metrics", {})
    rows = "".join(f"<tr><td>{k}</td><td>{_fmt(v)}</td></tr>" for k, v in m.items())
    experts = "".join(
        f"<tr><td>{n}</td><td>{info.get('version')}</td><td>{'trained' if info.get('trained') else 'untrained'}"
        f"</td></tr>" for n, info in report.get("experts", {}).items())
    spec = report.get("spec", {})
    head = (f"<h1>Backtest {report['run_id']}</h1><p>{spec.get('exchange')} {spec.get('symbol')} "
            f"{spec.get('timeframe')} · mode {spec.get('mode')} · {report.get('bars')} bars · "
            f"{report.get('start')} → {report.get('end')}</p>"
            f"<table><tr><th>metric</th><th>value</th></tr>{rows}</table>"
            f"<h3>Experts</h3><table><tr><th>expert</th><th>version</th><th>state</th></tr>{experts}</table>")
    parts = [f.to_html(full_html=False, include_plotlyjs=(i == 0)) for i, f in enumerate(figs)]
    style = ("body{font-family:sans-serif;margin:20px}table{border-collapse:collapse;margin:8px 0}"
             "td,th{border:1px solid #ddd;padding:3px 8px;text-align:left}")
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>Backtest {report['run_id']}</title>"
            f"<style>{style}</style></head><body>{head}{''.join(parts)}</body></html>")


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


def write_html(report: dict[str, Any], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".html.tmp")
    tmp.write_text(build_html(report), encoding="utf-8")
    tmp.replace(path)
    return path
