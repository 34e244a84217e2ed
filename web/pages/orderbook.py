"""Order book page: consolidated liquidity heatmap, depth ladders, imbalance gauges, source status.

The page reads the BookEngine (core/data/book_engine.py) the dashboard was started with
(``create_app(..., book=...)``): its 1 s bucket snapshots (history), trades and per-venue status. The
heatmap is time x absolute price buckets (colour = resting base volume of the selected venues), trades
as dots sized by amount, the consolidated mid as a line. Each second ``heatmap_update`` sends a
``dash.Patch`` appending one column (transposed z: one list per second), the new trades and the mid;
a full figure only on the first render, a venue change, or when the mid leaves the price grid.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import dash_bootstrap_components as dbc
import numpy as np
import plotly.graph_objects as go
from dash import Dash, Input, Output, Patch, State, dcc, html, no_update

from core.config import OrderbookConfig
from core.data.book_buckets import BucketSnapshot
from web import figures

GRID_MARGIN = 20  # extra buckets either side of the first render's range before a re-render
MAX_DOTS = 3000  # trades drawn on the heatmap (the newest)


def _venue_mask(snap: BucketSnapshot, venues: list[str] | None) -> np.ndarray:
    return np.array([venues is None or v in venues for v in snap.venues], dtype=bool)


def column(snap: BucketSnapshot, grid_lo: float, size: float, ny: int, venues: list[str] | None) -> list:
    """One heatmap column on the fixed grid: bid + ask volume of the selected venues (None = no data)."""
    m = _venue_mask(snap, venues)
    vol = snap.bid[m].sum(axis=0) + snap.ask[m].sum(axis=0)
    out: list = [None] * ny
    idx = np.rint((snap.prices - grid_lo) / size).astype(int)
    for i, v in zip(idx, vol, strict=True):
        if 0 <= i < ny:
            out[i] = round(float(v), 4)
    return out


def _ts(ms: int) -> str:
    return np.datetime_as_string(np.datetime64(int(ms), "ms"), unit="s").replace("T", " ")


def heatmap_figure(snaps: list[BucketSnapshot], trades: Sequence[tuple], venues: list[str] | None) -> tuple[dict, dict]:
    """The full heatmap of ``snaps`` (a plain figure dict: plotly's object validation would cost seconds on
    15 minutes of columns) and the state the Patch updates continue from."""
    size = snaps[-1].bucket_size
    lo = min(float(s.prices[0]) for s in snaps) - GRID_MARGIN * size
    hi = max(float(s.prices[-1]) for s in snaps) + GRID_MARGIN * size
    ny = int(round((hi - lo) / size)) + 1
    ys = [round(lo + k * size, 8) for k in range(ny)]
    cols = [column(s, lo, size, ny, venues) for s in snaps]
    x = [_ts(s.ts_ms) for s in snaps]
    t0 = snaps[0].ts_ms
    tr = [t for t in trades if t[0] >= t0 and (venues is None or t[4] in venues)][-MAX_DOTS:]
    fig = {
        "data": [
            {"type": "heatmap", "x": x, "y": ys, "z": cols, "transpose": True, "colorscale": "Viridis",
             "colorbar": {"title": {"text": "size"}}, "hoverongaps": False, "name": "resting"},
            {"type": "scatter", "x": [_ts(t[0]) for t in tr], "y": [t[1] for t in tr], "mode": "markers",
             "name": "trades", "marker": {"size": [float(min(4 + 6 * np.sqrt(t[2]), 24)) for t in tr],
                                          "color": ["#2ca02c" if t[3] == "buy" else "#d62728" for t in tr],
                                          "opacity": 0.7}},
            {"type": "scatter", "x": x, "y": [round(s.mid, 4) for s in snaps], "mode": "lines", "name": "mid",
             "line": {"color": "white", "width": 1}},
        ],
        "layout": {"paper_bgcolor": "#111", "plot_bgcolor": "#111", "font": {"color": "#ddd"},
                   "xaxis": {"gridcolor": "#333"}, "yaxis": {"gridcolor": "#333"},
                   "height": 520, "margin": {"l": 60, "r": 10, "t": 30, "b": 30}, "uirevision": "heatmap",
                   "title": {"text": "Consolidated liquidity"}, "legend": {"orientation": "h"}},
    }
    state = {"last_ts": snaps[-1].ts_ms, "lo": lo, "ny": ny, "size": size, "venues": venues,
             "trade_ts": tr[-1][0] if tr else t0, "n_trades": len(trades)}
    return fig, state


def heatmap_update(snaps: list[BucketSnapshot], trades: Sequence[tuple], venues: list[str] | None,
                   state: dict | None) -> tuple[Any, dict | None]:
    """The heatmap's 1 s update: Patch appending the new columns/trades/mid, or a full figure (dict)."""
    if not snaps:
        return no_update, state
    if state is None or state.get("venues") != venues or state.get("size") != snaps[-1].bucket_size:
        return heatmap_figure(snaps, trades, venues)
    new = [s for s in snaps[-120:] if s.ts_ms > state["last_ts"]]
    if not new:
        return no_update, state
    lo, ny, size = state["lo"], state["ny"], state["size"]
    if any(s.prices[0] < lo or s.prices[-1] > lo + (ny - 1) * size for s in new):
        return heatmap_figure(snaps, trades, venues)
    p = Patch()
    for s in new:
        x = _ts(s.ts_ms)
        p["data"][0]["x"].append(x)
        p["data"][0]["z"].append(column(s, lo, size, ny, venues))
        p["data"][2]["x"].append(x)
        p["data"][2]["y"].append(round(s.mid, 4))
    tr = _trades_after(trades, state["trade_ts"], venues)[-200:]
    for t in tr:
        p["data"][1]["x"].append(_ts(t[0]))
        p["data"][1]["y"].append(t[1])
        p["data"][1]["marker"]["size"].append(float(min(4 + 6 * np.sqrt(t[2]), 24)))
        p["data"][1]["marker"]["color"].append("#2ca02c" if t[3] == "buy" else "#d62728")
    state = {**state, "last_ts": new[-1].ts_ms, "trade_ts": tr[-1][0] if tr else state["trade_ts"]}
    return p, state


def _trades_after(trades: Sequence[tuple], ts: int, venues: list[str] | None) -> list[tuple]:
    """Trades newer than ``ts`` (the list is in receive order: walk back from the end, not through it all)."""
    out = []
    for t in reversed(trades):
        if t[0] <= ts:
            break
        if venues is None or t[4] in venues:
            out.append(t)
    out.reverse()
    return out


def ladder_figure(snap: BucketSnapshot, venues: list[str] | None, mode: str) -> go.Figure:
    """Depth ladder of the latest second: bids left (negative), asks right, per venue stacked or overlaid."""
    fig = go.Figure()
    for i, v in enumerate(snap.venues):
        if venues is not None and v not in venues:
            continue
        fig.add_bar(y=snap.prices, x=-snap.bid[i], orientation="h", name=f"{v} bid", opacity=0.8)
        fig.add_bar(y=snap.prices, x=snap.ask[i], orientation="h", name=f"{v} ask", opacity=0.8)
    fig.update_layout(template=figures.DARK, barmode="relative" if mode == "stacked" else "overlay", height=520,
                      margin={"l": 60, "r": 10, "t": 30, "b": 30}, title="Depth ladder (bid < 0 < ask)",
                      uirevision="ladder", legend={"orientation": "h"})
    return fig


def imbalance_figure(snap: BucketSnapshot) -> go.Figure:
    names = ["±1 bucket", "±5 buckets", "all", *[f"MA {w}s" for w in snap.imbalance_ma]]
    vals = [snap.total_imbalance(1), snap.total_imbalance(5), snap.total_imbalance(), *snap.imbalance_ma.values()]
    fig = go.Figure(go.Bar(x=vals, y=names, orientation="h",
                           marker={"color": ["#2ca02c" if v >= 0 else "#d62728" for v in vals]}))
    fig.update_layout(template=figures.DARK, height=300, xaxis={"range": [-1, 1]},
                      margin={"l": 90, "r": 10, "t": 30, "b": 30}, title="Imbalance (bid−ask)/(bid+ask)")
    return fig


def status_table(status: list[dict], snap: BucketSnapshot | None) -> dbc.Table:
    head = html.Thead(html.Tr([html.Th(h) for h in ("venue", "source", "synced", "messages", "resyncs", "gaps",
                                                    "lag ms", "best bid", "best ask")]))
    rows = []
    for d in status:
        v = d["venue"]
        rows.append(html.Tr([html.Td(v), html.Td(d.get("source", "")), html.Td("yes" if d["synced"] else "NO"),
                             html.Td(d["messages"]),
                             html.Td(d["resync_count"]), html.Td(d["gaps"]), html.Td(d["lag_ms"]),
                             html.Td(f"{snap.best_bid[v]:,.2f}" if snap and v in snap.best_bid else "–"),
                             html.Td(f"{snap.best_ask[v]:,.2f}" if snap and v in snap.best_ask else "–")]))
    return dbc.Table([head, html.Tbody(rows)], size="sm", bordered=True, id="ob-status-table", color="dark")


BOOK_WAIT = ("No order-book snapshot yet: waiting for the venues' books to sync<br>"
             "(the status table lists each venue's messages, gaps and resyncs)")


def _book(wctx: Any) -> Any:
    return wctx.extra.get("book")


def empty_hint(ob: OrderbookConfig) -> list[Any]:
    """What to do when the dashboard has no book source: the exchanges' live books (the configured venues),
    or a capture the user recorded (into ``orderbook.record_dir``) replayed."""
    venues = ", ".join(ob.venues)
    return ["No order book source in this dashboard. For the exchanges' live order books (",
            html.Code(ob.symbol), " on ", venues, ": config.yaml ", html.Code("orderbook.venues"), " / ",
            html.Code("orderbook.symbol"), "; needs internet) start it with ",
            html.Code("python main_dashboard.py --book live"), " (or ", html.Code('make run ARGS="--book live"'),
            "). To replay books you recorded: ", html.Code("python main_backtest.py book record --minutes 10"),
            " writes a capture to ", html.Code(ob.record_dir), ", then ",
            html.Code(f"python main_dashboard.py --book {ob.record_dir}"), " (any folder or file of a capture)."]


def layout(wctx: Any) -> Any:
    book = _book(wctx)
    if book is None:
        return dbc.Alert(empty_hint(wctx.cfg.orderbook), color="secondary", id="ob-empty")
    venues = [v.venue for v in book.venues]
    return html.Div([
        dbc.Row([
            dbc.Col(dcc.Checklist(id="ob-venues", options=venues, value=venues, inline=True,
                                  inputStyle={"margin-right": "4px", "margin-left": "12px"}, labelStyle={"color": "#ddd"}), width="auto"),
            dbc.Col(dcc.RadioItems(id="ob-mode", options=[{"label": "stacked", "value": "stacked"},
                                                          {"label": "per venue (overlaid)", "value": "overlay"}],
                                   value="stacked", inline=True,
                                   inputStyle={"margin-right": "4px", "margin-left": "12px"}, labelStyle={"color": "#ddd"}), width="auto"),
            dbc.Col(html.Span(f"{book.symbol} · bucket {book.consolidator.size:g}", id="ob-title"), width="auto"),
        ], className="mb-2"),
        # until the first synced snapshot, the graphs say what they wait for (no bare axes)
        dbc.Row([dbc.Col(dcc.Graph(id="ob-heatmap", figure=figures.empty_figure(BOOK_WAIT, 520)), md=8),
                 dbc.Col(dcc.Graph(id="ob-ladder", figure=figures.empty_figure("No depth ladder yet", 520)), md=4)]),
        dbc.Row([dbc.Col(dcc.Graph(id="ob-imbalance", figure=figures.empty_figure("No imbalance yet", 240)), md=5),
                 dbc.Col(html.Div(id="ob-status"), md=7)]),
        dcc.Interval(id="ob-tick", interval=1000),
        dcc.Store(id="ob-state"),
    ])


def register(app: Dash, wctx: Any) -> None:
    @app.callback(Output("ob-heatmap", "figure"), Output("ob-state", "data"),
                  Input("ob-tick", "n_intervals"), Input("ob-venues", "value"), State("ob-state", "data"))
    def _heatmap(_n: int | None, venues: list[str] | None, state: dict | None) -> Any:
        book = _book(wctx)
        if book is None:
            return no_update, no_update
        fig, st = heatmap_update(book.snapshot_history(), list(book.trades), sorted(venues or []), state)
        return fig, st

    @app.callback(Output("ob-ladder", "figure"), Output("ob-imbalance", "figure"), Output("ob-status", "children"),
                  Input("ob-tick", "n_intervals"), Input("ob-venues", "value"), Input("ob-mode", "value"))
    def _panels(_n: int | None, venues: list[str] | None, mode: str) -> Any:
        book = _book(wctx)
        if book is None:
            return no_update, no_update, no_update
        hist = book.snapshot_history()
        snap = hist[-1] if hist else None
        table = status_table(book.status(), snap)
        if snap is None:
            return no_update, no_update, table
        return ladder_figure(snap, venues or [], mode), imbalance_figure(snap), table
