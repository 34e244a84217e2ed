"""Figures of the Annotate page (pure functions, no Dash): the main chart, the smaller charts of the other
timeframes, annotation spans and markers, the replayed-decision timeline.

Built for a week of minutes with hundreds of annotations: every long series goes out as a numpy array
(orjson serialises it in one pass; NaN -> null breaks a path), all spans of a direction are ONE filled
path and all markers of a kind ONE trace with a single style (hundreds of layout shapes, or per-point
marker styles, cost the browser seconds), and candles beyond a few thousand are drawn as a close line.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from core.annotations.model import Annotation
from core.types import TIMEFRAME_MS
from web import figures

COLORS = {"long": "rgba(38,166,154,0.18)", "short": "rgba(239,83,80,0.18)", "none": "rgba(158,158,158,0.18)"}
EDGE = {"long": "#26a69a", "short": "#ef5350", "none": "#9e9e9e"}
MAX_DRAWN_CANDLES = 3000  # beyond this the main chart draws a close line and a volume area (SVG candles and
# bars cost seconds per 10,000 in the browser); clicks still snap to the stored candles
MAX_MINI_CANDLES = 400  # the same rule for the smaller charts (they are a third of the width)
MINI_MIN_BARS = 30  # a smaller chart always shows at least this many of its bars
OVERLAYS = ("sma21",)  # the main chart's line overlays (the others of the Live page stay empty)
_EMPTY = pd.DataFrame({c: pd.Series(dtype="float64") for c in ("ts", "open", "high", "low", "close", "volume")})
N_BASE_TRACES = 2 + len(OVERLAYS)  # price, volume, overlays; then the markers and the spans
MARKER_KINDS = (("long", "triangle-up"), ("short", "triangle-down"), ("none", "circle-open"))


def short(a: np.ndarray) -> np.ndarray:
    """Rounded to 7 significant digits (of the largest value): short numbers on the wire."""
    a = np.asarray(a, dtype=np.float64)
    top = np.nanmax(np.abs(a)) if np.isfinite(a).any() else 0.0
    return a if top == 0 else np.round(a, max(0, 6 - int(np.floor(np.log10(top)))))


def _regular_x(tr: dict[str, Any], ts: np.ndarray) -> None:
    """x as x0 + dx when the steps are all equal (a few bytes instead of 10,000 numbers), else the array."""
    steps = np.diff(ts)
    if len(steps) and (steps == steps[0]).all():
        tr.pop("x", None)  # an x array, even empty, would win over x0 / dx
        tr.update(x0=int(ts[0]), dx=int(steps[0]))
    else:
        tr["x"] = ts


def main_figure(candles: pd.DataFrame, title: str, uirevision: str, x_range: list[int],
                shapes: list[dict] | None = None) -> dict:
    """Candles (or, beyond MAX_DRAWN_CANDLES, a close line) + volume + SMA 21 in the Live page's layout,
    without the Live page's empty traces and legend (each costs a draw; a legend also re-lays the margins
    out, which draws the whole plot twice)."""
    fig = figures.candle_figure(_EMPTY, title=title, uirevision=uirevision, extra_shapes=shapes)
    ts = candles["ts"].to_numpy(np.int64)
    close = candles["close"].to_numpy(np.float64)
    px, vol = fig["data"][0], fig["data"][1]
    if len(candles) > MAX_DRAWN_CANDLES:
        for k in ("open", "high", "low", "close", "increasing", "decreasing"):
            px.pop(k, None)
        px.update(type="scatter", mode="lines", y=short(close), line={"color": "#90caf9", "width": 1})
        _regular_x(px, ts)
        vol.update(type="scatter", mode="lines", fill="tozeroy", line={"shape": "hv", "width": 0},
                   fillcolor="rgba(120,144,156,0.5)", y=short(candles["volume"].to_numpy(np.float64)))
        vol.pop("marker", None)
        _regular_x(vol, ts)
    else:
        px.update(x=ts, **{k: candles[k].to_numpy(np.float64) for k in ("open", "high", "low", "close")})
        vol.update(x=ts, y=short(candles["volume"].to_numpy(np.float64)))
    cols = figures.indicator_columns(candles) if len(candles) else {}
    lines = []
    for i, name in enumerate(figures.LINE_TRACES):
        if name in OVERLAYS:
            tr = fig["data"][2 + i]
            tr.update(visible=True, y=short(cols[name]) if name in cols else [])
            _regular_x(tr, ts)
            lines.append(tr)
    fig["data"] = [px, vol, *lines]
    lay = fig["layout"]
    lay.pop("legend", None)
    lay.update(showlegend=False, hovermode="x", dragmode="pan", title={"text": title, "x": 0.01, "font": {"size": 13}})
    lay["margin"] = {**lay["margin"], "autoexpand": False}
    lay["xaxis"]["range"] = x_range
    return fig


def annotation_shapes(anns: list[Annotation], editable: bool = True) -> list[dict]:
    """One shaded rectangle per annotation, full height (paper y), entry..exit bar close."""
    out = []
    for a in anns:
        bar = TIMEFRAME_MS[a.timeframe]
        shape = {"type": "rect", "xref": "x", "yref": "paper", "x0": a.entry_ts, "x1": a.exit_ts + bar // 2,
                 "y0": 0.25 if editable else 0, "y1": 1.0, "fillcolor": COLORS[a.direction],
                 "line": {"color": EDGE[a.direction], "width": 1}, "layer": "above" if editable else "below"}
        if editable:  # the main chart: drag / resize to edit
            shape.update(name=a.id, editable=True)
        out.append(shape)
    return out


def marker_traces(anns: list[Annotation]) -> list[dict]:
    """Entry arrows (one trace per direction: up green long, down red short, grey no-trade) and exit
    crosses (one trace) at the trade's prices; each trace has one marker style."""
    out = []
    for d, symbol in MARKER_KINDS:
        sel = [a for a in anns if a.direction == d]
        out.append({"type": "scatter", "mode": "markers", "name": f"{d} entries",
                    "x": np.asarray([a.entry_ts for a in sel], dtype=np.int64),
                    "y": np.asarray([a.entry_price for a in sel], dtype=np.float64),
                    "text": [a.id for a in sel], "hoverinfo": "text+y",
                    "marker": {"symbol": symbol, "size": 11, "color": EDGE[d]}})
    out.append({"type": "scatter", "mode": "markers", "name": "exits",
                "x": np.asarray([a.exit_ts for a in anns], dtype=np.int64),
                "y": np.asarray([a.exit_price for a in anns], dtype=np.float64),
                "text": [a.id for a in anns], "hoverinfo": "text+y",
                "marker": {"symbol": "x", "size": 9, "color": "#ffffff"}})
    return out


def span_traces(anns: list[Annotation], y0: float, y1: float) -> list[dict]:
    """All spans of a direction (long, short, no-trade) as ONE filled path: rectangles separated by
    NaN gaps (null on the wire)."""
    out = []
    for d in ("long", "short", "none"):
        sel = [a for a in anns if a.direction == d]
        x0 = np.asarray([a.entry_ts for a in sel], dtype=np.float64)
        x1 = np.asarray([a.exit_ts + TIMEFRAME_MS[a.timeframe] // 2 for a in sel], dtype=np.float64)
        nan = np.full(len(sel), np.nan)
        xs = np.stack([x0, x0, x1, x1, x0, nan], axis=1).ravel()
        ys = np.tile(np.asarray([y0, y1, y1, y0, y0, np.nan], dtype=np.float64), len(sel))
        out.append({"type": "scatter", "mode": "lines", "x": xs, "y": ys, "fill": "toself", "fillcolor": COLORS[d],
                    "line": {"width": 1, "color": EDGE[d]}, "hoverinfo": "skip", "showlegend": False,
                    "name": f"{d} spans", "connectgaps": False})
    return out


def pending_shape(ts: int | None) -> list[dict]:
    if ts is None:
        return []
    return [{"type": "line", "xref": "x", "yref": "paper", "x0": ts, "x1": ts, "y0": 0, "y1": 1, "name": "pending",
             "line": {"color": "#ffc107", "width": 2, "dash": "dot"}, "editable": False}]


def mini_figure(candles: pd.DataFrame, tf: str, spans: list[dict], x_range: list[int] | None) -> dict:
    ts = candles["ts"].to_numpy(np.int64)
    if len(candles) > MAX_MINI_CANDLES:
        price: dict[str, Any] = {"type": "scatter", "mode": "lines", "name": tf,
                                 "y": short(candles["close"].to_numpy(np.float64)),
                                 "line": {"color": "#90caf9", "width": 1}}
        _regular_x(price, ts)
    else:
        price = {"type": "candlestick", "x": ts, "name": tf,
                 **{k: candles[k].to_numpy(np.float64) for k in ("open", "high", "low", "close")},
                 "increasing": {"line": {"color": "#26a69a"}}, "decreasing": {"line": {"color": "#ef5350"}}}
    fig: dict[str, Any] = {
        "data": [price, *spans],
        "layout": {"template": figures.DARK, "height": 200, "margin": {"l": 45, "r": 10, "t": 24, "b": 20},
                   "title": {"text": tf, "font": {"size": 12}, "x": 0.01}, "showlegend": False,
                   "hovermode": "x", "uirevision": tf,
                   "xaxis": {"type": "date", "rangeslider": {"visible": False}, "showspikes": True,
                             "spikemode": "across", "spikethickness": 1},
                   "yaxis": {"fixedrange": False}}}
    if x_range:
        fig["layout"]["xaxis"]["range"] = x_range
    return fig


def empty_mini(tf: str) -> dict:
    return {"data": [], "layout": {"template": figures.DARK, "height": 200,
                                   "title": {"text": f"{tf}: not stored", "font": {"size": 12}}}}


def timeline_figure(ts: np.ndarray, codes: np.ndarray, x_range: list[int] | None) -> dict:
    """The replayed decisions under the chart: BUY +1, SELL -1, HOLD 0 per bar."""
    colors = np.where(codes > 0, "#00e676", np.where(codes < 0, "#ff1744", "#607d8b")).tolist()
    fig: dict[str, Any] = {
        "data": [{"type": "bar", "x": np.asarray(ts, dtype=np.int64).tolist(),
                  "y": np.asarray(codes, dtype=float).tolist(), "marker": {"color": colors}, "name": "decision"}],
        "layout": {"template": figures.DARK, "height": 140, "margin": {"l": 45, "r": 10, "t": 20, "b": 20},
                   "title": {"text": "replayed decisions (BUY +1 / SELL -1)", "font": {"size": 12}, "x": 0.01},
                   "xaxis": {"type": "date"}, "yaxis": {"range": [-1.2, 1.2], "tickvals": [-1, 0, 1]}}}
    if x_range:
        fig["layout"]["xaxis"]["range"] = x_range
    return fig


def mini_range(lo: int, hi: int, tf: str) -> list[int]:
    """The main chart's x range, widened around its middle to at least MINI_MIN_BARS bars of ``tf``."""
    width = max(hi - lo, MINI_MIN_BARS * TIMEFRAME_MS[tf])
    mid = (lo + hi) // 2
    return [mid - width // 2, mid + width // 2]
