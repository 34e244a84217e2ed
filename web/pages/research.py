"""The Backtest page's research views (pure builders, no callbacks): a sweep's trials (table, parallel
coordinates, a two-parameter heatmap) with the results that do not survive the deflated-Sharpe correction
or the minimum-trades rule marked, and walk-forward runs side by side (metrics and per-expert P&L).

Sweeps are read from their summary JSON (``sweeps/NAME.json`` next to the DuckDB file, written by
core/backtest/sweep.py), walk-forwards from ``reports_dir/walkforward/ID/report.json``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import plotly.graph_objects as go

from web import figures

MAX_BYTES = 64 * 1024 * 1024  # as the page's report cap


def _read(p: Path) -> dict[str, Any] | None:
    """A listed file (the browser sends names/paths that are matched against these listings only)."""
    try:
        if not p.is_file() or p.stat().st_size > MAX_BYTES:
            return None
        r = json.loads(p.read_text())
    except (OSError, ValueError):
        return None
    return r if isinstance(r, dict) else None


def list_sweeps(sweeps_dir: Path) -> list[dict[str, Any]]:
    """Sweep summaries, newest first."""
    if not sweeps_dir.is_dir():
        return []
    out = []
    for p in sorted(sweeps_dir.glob("*.json"), key=lambda q: q.stat().st_mtime, reverse=True):
        r = _read(p)
        if r is not None and "all" in r and "name" in r:
            out.append(r)
    return out


def sweep_table(summary: dict[str, Any]) -> pd.DataFrame:
    """One row per trial: number, each parameter, sharpe, return, trades, DSR, and ``verdict``:
    'survives', 'fails DSR' or 'too few trades'."""
    rows = []
    for r in summary.get("all", []):
        verdict = ("survives" if r["survives"] else "too few trades" if not r["enough_trades"] else "fails DSR")
        rows.append({"trial": r["number"], **{k: round(float(v), 4) for k, v in r["params"].items()},
                     "sharpe": r["sharpe"], "return": r["total_return"], "trades": r["trades"],
                     "dsr": r["dsr"], "verdict": verdict})
    return pd.DataFrame(rows)


def sweep_parcoords(summary: dict[str, Any]) -> go.Figure:
    df = sweep_table(summary)
    fig = go.Figure()
    if df.empty:
        return figures.empty_state(fig, "No completed sweep trials yet: run `python main_backtest.py sweep SPACE.yml`")
    params = [c for c in df.columns if c not in ("trial", "sharpe", "return", "trades", "dsr", "verdict")]
    dims = [{"label": c, "values": df[c].tolist()} for c in params + ["sharpe", "trades"]]
    dims.append({"label": "survives", "values": (df["verdict"] == "survives").astype(int).tolist(),
                 "tickvals": [0, 1], "ticktext": ["no", "yes"]})
    fig.add_trace(go.Parcoords(line={"color": df["sharpe"].tolist(), "colorscale": "Viridis", "showscale": True},
                               dimensions=dims))
    pruned = len(summary.get("pruned") or [])  # training sweeps: trials the pruner stopped early
    title = f"sweep {summary.get('name')}: {len(df)} trials" + (f" ({pruned} more pruned)" if pruned else "")
    return fig.update_layout(title=title, height=360,
                             margin={"l": 60, "r": 40, "t": 60, "b": 30})


def sweep_heatmap(summary: dict[str, Any], x: str | None = None, y: str | None = None, bins: int = 8) -> go.Figure:
    """Mean Sharpe over a bins x bins grid of two parameters (default: the first two); markers show the
    trials, an X those that do not survive."""
    df = sweep_table(summary)
    params = [c for c in df.columns if c not in ("trial", "sharpe", "return", "trades", "dsr", "verdict")]
    fig = go.Figure()
    if df.empty or len(params) < 2:
        return figures.empty_state(fig, "No heatmap: it needs a sweep of at least two parameters")
    x, y = x or params[0], y or params[1]
    fig.add_trace(go.Histogram2d(x=df[x], y=df[y], z=df["sharpe"], histfunc="avg", nbinsx=bins, nbinsy=bins,
                                 colorscale="RdBu", colorbar={"title": "mean Sharpe"}))
    ok = df["verdict"] == "survives"
    fig.add_trace(go.Scatter(x=df[x][ok], y=df[y][ok], mode="markers", name="survives",
                             marker={"symbol": "circle", "color": "black"}))
    fig.add_trace(go.Scatter(x=df[x][~ok], y=df[y][~ok], mode="markers", name="does not survive",
                             marker={"symbol": "x", "color": "grey"}))
    return fig.update_layout(title=f"{x} x {y}", xaxis_title=x, yaxis_title=y, height=360)


def list_walkforwards(reports_dir: Path) -> list[dict[str, Any]]:
    base = reports_dir / "walkforward"
    if not base.is_dir():
        return []
    out = []
    for p in sorted(base.glob("*/report.json"), key=lambda q: q.stat().st_mtime, reverse=True):
        r = _read(p)
        if r is not None and r.get("kind") == "walkforward":
            r["path"] = str(p)
            out.append(r)
    return out


def compare_walkforwards(reports: list[dict[str, Any]]) -> pd.DataFrame:
    """Runs side by side: one column per run, rows = key metrics, baselines and P&L per expert."""
    cols: dict[str, dict[str, Any]] = {}
    for r in reports:
        m, b, a = r.get("metrics", {}), r.get("baselines", {}), r.get("attribution", {})
        c: dict[str, Any] = {"folds": len(r.get("folds", [])), "bars": r.get("bars"),
                             "total_return": m.get("total_return"), "buy_and_hold": b.get("buy_and_hold_return"),
                             "sharpe": m.get("sharpe"), "max_drawdown": m.get("max_drawdown"),
                             "trades": m.get("n_trades"),
                             "fused_log_loss": (b.get("fused") or {}).get("log_loss"),
                             "climatology_log_loss": (b.get("climatology") or {}).get("log_loss")}
        c.update({f"pnl {k}": v for k, v in (a.get("experts") or {}).items()})
        cols[r["run_id"]] = c
    return pd.DataFrame(cols)


def attribution_figure(reports: list[dict[str, Any]]) -> go.Figure:
    """Grouped bars: P&L per expert, one group per run (per fold for a single run)."""
    fig = go.Figure()
    if len(reports) == 1:
        folds = reports[0].get("folds", [])
        names = sorted({k for f in folds for k in f.get("metrics", {}).get("attribution", {})})
        for n in names:
            fig.add_trace(go.Bar(name=n, x=[f"fold {f['index']}" for f in folds],
                                 y=[f["metrics"]["attribution"].get(n, 0.0) for f in folds]))
    else:
        names = sorted({k for r in reports for k in (r.get("attribution") or {}).get("experts", {})})
        for n in names:
            fig.add_trace(go.Bar(name=n, x=[r["run_id"] for r in reports],
                                 y=[r["attribution"]["experts"].get(n, 0.0) for r in reports]))
    fig.update_layout(barmode="group", title="P&L by expert (quote currency)", height=320)
    if not fig.data:
        figures.empty_state(fig, "No walk-forward selected: tick a run above, or start one with "
                                 "`python main_backtest.py walkforward`")
    return fig
