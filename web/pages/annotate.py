"""Annotate page: mark trades on stored candles, list them with their outcomes, replay a model against them.

* Pick a stored series and a day range (date picker = jump to date; Previous / Next day buttons, keys
  ArrowLeft / ArrowRight; a link /annotate?from=2023-03-14&to=2023-03-20 opens on those days). The main chart (candles + volume, the Live page's figure code) is in the
  chosen timeframe; smaller charts show the other timeframes of the same period; zooming or panning
  the main chart moves them too, and the hover cursor is drawn on all of them.
* Click 1 on a candle sets the entry (its close), click 2 the exit (its close, or the typed exit price);
  the direction comes from the two prices unless chosen (long / short / none = a NO_TRADE span).
  Escape cancels a pending entry; u (or Ctrl+Z) undoes the last add / edit / delete; Delete removes the
  selected annotation (soft delete).
* Every annotation is a shaded span (green long, red short, grey no-trade) with entry/exit arrows on
  every chart; dragging or resizing a span on the main chart moves its entry / exit (a new version,
  snapped to the candles' closes). The table lists P&L %, holding time, MFE / MAE.
* "Replay" runs the chosen expert or the fused decision over the annotated periods of the range (the
  backtester's decision code) and draws the prediction timeline under the chart with the metrics.

The callbacks only call the store through core.annotations (the same code as the API and the CLI).
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

import dash_bootstrap_components as dbc
import numpy as np
import pandas as pd
from dash import Dash, Input, Output, Patch, State, ctx, dcc, html, no_update

from core.annotations.cases import Outcome, outcome
from core.annotations.model import Annotation
from core.annotations.store import AnnotationError, AnnotationStore, check, snap
from core.features import resample_candles
from core.types import TIMEFRAME_MS, SeriesKey
from web import figures

TIMEFRAMES = ("1m", "5m", "1h", "1d")
COLORS = {"long": "rgba(38,166,154,0.18)", "short": "rgba(239,83,80,0.18)", "none": "rgba(158,158,158,0.18)"}
EDGE = {"long": "#26a69a", "short": "#ef5350", "none": "#9e9e9e"}
MAX_DRAWN_CANDLES = 3000  # beyond this the main chart draws a close line and a volume area (SVG candles and
# bars cost seconds per 10,000 in the browser); clicks still snap to the stored candles
MAX_EDITABLE_SPANS = 60  # more spans in view are drawn static (each draggable span costs the browser ~10 ms);
# narrow the day range to drag them
MINI_MIN_BARS = 30  # a smaller chart always shows at least this many of its bars
MAX_UNDO = 50
MINI = ("ann-mini-0", "ann-mini-1", "ann-mini-2")  # slots for the other three timeframes


# ---------------------------------------------------------------- pure helpers


def to_ms(x: Any) -> int:
    """A plotly date-axis value (epoch ms number or 'YYYY-MM-DD HH:MM[:SS.fff]' UTC string) -> ms."""
    if isinstance(x, int | float) and not isinstance(x, bool):
        return int(x)
    t = pd.Timestamp(str(x))
    t = t.tz_localize("UTC") if t.tzinfo is None else t.tz_convert("UTC")
    return int(t.value // 1_000_000)


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
    """Entry (triangles) and exit (crosses) markers at the trade's prices: two scatter traces (cheap to
    draw for hundreds of trades, unlike one layout annotation per arrow)."""
    def side(ts: list[int], px: list[float], name: str, symbols: list[str]) -> dict:
        return {"type": "scatter", "mode": "markers", "name": name, "x": np.asarray(ts, dtype=np.int64),
                "y": np.asarray(px, dtype=np.float64), "text": [a.id for a in anns], "hoverinfo": "text+y",
                "marker": {"symbol": symbols, "size": 11, "color": [EDGE[a.direction] for a in anns],
                           "line": {"width": 1, "color": "#000"}}}
    return [side([a.entry_ts for a in anns], [a.entry_price for a in anns], "entries",
                 ["triangle-down" if a.direction == "short" else "triangle-up" for a in anns]),
            side([a.exit_ts for a in anns], [a.exit_price for a in anns], "exits", ["x"] * len(anns))]


def _short(a: np.ndarray) -> np.ndarray:
    """Rounded to 7 significant digits (of the largest value): short numbers on the wire."""
    a = np.asarray(a, dtype=np.float64)
    top = np.nanmax(np.abs(a)) if np.isfinite(a).any() else 0.0
    return a if top == 0 else np.round(a, max(0, 6 - int(np.floor(np.log10(top)))))


def span_traces(anns: list[Annotation], y0: float, y1: float) -> list[dict]:
    """Static spans as three filled scatter traces (long, short, no-trade): one SVG path each, where
    hundreds of layout shapes would cost the browser seconds."""
    out = []
    for d in ("long", "short", "none"):
        xs: list[int | None] = []
        ys: list[float | None] = []
        for a in anns:
            if a.direction != d:
                continue
            x1 = a.exit_ts + TIMEFRAME_MS[a.timeframe] // 2
            xs += [a.entry_ts, a.entry_ts, x1, x1, a.entry_ts, None]
            ys += [y0, y1, y1, y0, y0, None]
        out.append({"type": "scatter", "mode": "lines", "x": xs, "y": ys, "fill": "toself", "fillcolor": COLORS[d],
                    "line": {"width": 1, "color": EDGE[d]}, "hoverinfo": "skip", "showlegend": False,
                    "name": f"{d} spans", "connectgaps": False})
    return out


def lean(fig: dict) -> dict:
    """The page's figure for the wire: hidden overlays emptied, long series as numpy arrays (serialised by
    orjson in one pass instead of plotly's per-value walk over Python lists), volume and overlay lines
    rounded, and a regular time axis sent as x0 + dx where the trace type allows it."""
    for tr in fig["data"]:
        if tr.get("visible") is False:
            tr.update(x=[], y=[])
            continue
        x = tr.get("x")
        if isinstance(x, list) and len(x) > MAX_DRAWN_CANDLES:
            if tr.get("type") == "candlestick":
                close = tr["close"]
                for k in ("open", "high", "low", "close", "increasing", "decreasing"):
                    tr.pop(k, None)
                tr.update(type="scatter", mode="lines", y=close, line={"color": "#90caf9", "width": 1})
            elif tr.get("type") == "bar":
                tr.update(type="scatter", mode="lines", fill="tozeroy", line={"shape": "hv", "width": 0},
                          fillcolor="rgba(120,144,156,0.5)")
                tr.pop("marker", None)
        if not (isinstance(x, list) and len(x) > 100):
            continue
        xs = np.asarray(x, dtype=np.int64)
        for k in ("open", "high", "low", "close"):
            if k in tr:
                tr[k] = np.asarray(tr[k], dtype=np.float64)
        if "y" in tr:
            tr["y"] = _short(np.asarray(tr["y"], dtype=np.float64))  # None -> NaN -> null
        steps = np.diff(xs)
        if tr.get("type") in ("bar", "scatter") and len(steps) and (steps == steps[0]).all():
            del tr["x"]
            tr.update(x0=int(xs[0]), dx=int(steps[0]))
        else:
            tr["x"] = xs
    return fig


N_BASE_TRACES = len(figures.candle_figure(pd.DataFrame({c: pd.Series(dtype="float64") for c in
                                                        ("ts", "open", "high", "low", "close", "volume")}))["data"])


def pending_shape(ts: int | None) -> list[dict]:
    if ts is None:
        return []
    return [{"type": "line", "xref": "x", "yref": "paper", "x0": ts, "x1": ts, "y0": 0, "y1": 1, "name": "pending",
             "line": {"color": "#ffc107", "width": 2, "dash": "dot"}, "editable": False}]


def table_rows(items: list[tuple[Annotation, Outcome | None]]) -> list[dict[str, Any]]:
    rows = []
    for a, o in items:
        fmt = "%Y-%m-%d %H:%M"
        rows.append({
            "id": a.id, "v": a.version, "dir": a.direction,
            "entry": pd.Timestamp(a.entry_ts, unit="ms").strftime(fmt), "entry_price": f"{a.entry_price:g}",
            "exit": pd.Timestamp(a.exit_ts, unit="ms").strftime(fmt), "exit_price": f"{a.exit_price:g}",
            "pnl_pct": None if o is None else round(o.pnl_pct, 3),
            "holding": None if o is None else str(timedelta(milliseconds=o.holding_ms)),
            "mfe_pct": None if o is None else round(o.mfe_pct, 3),
            "mae_pct": None if o is None else round(o.mae_pct, 3),
            "tags": ",".join(a.tags), "notes": a.notes,
        })
    return rows


def mini_figure(candles: pd.DataFrame, tf: str, spans: list[dict], x_range: list[int] | None) -> dict:
    x = candles["ts"].to_numpy(np.int64)
    fig: dict[str, Any] = {"data": [{"type": "candlestick", "x": x, "open": candles["open"].to_numpy(np.float64),
                     "high": candles["high"].to_numpy(np.float64), "low": candles["low"].to_numpy(np.float64),
                     "close": candles["close"].to_numpy(np.float64), "name": tf,
                     "increasing": {"line": {"color": "#26a69a"}}, "decreasing": {"line": {"color": "#ef5350"}}},
                    *spans],
           "layout": {"template": figures.PLOTLY_DARK, "height": 200, "margin": {"l": 45, "r": 10, "t": 24, "b": 20},
                      "title": {"text": tf, "font": {"size": 12}, "x": 0.01}, "showlegend": False,
                      "hovermode": "x", "uirevision": tf,
                      "xaxis": {"type": "date", "rangeslider": {"visible": False}, "showspikes": True,
                                "spikemode": "across", "spikethickness": 1},
                      "yaxis": {"fixedrange": False}}}
    if x_range:
        fig["layout"]["xaxis"]["range"] = x_range
    return fig


def timeline_figure(ts: np.ndarray, codes: np.ndarray, x_range: list[int] | None) -> dict:
    """The replayed decisions under the chart: BUY +1, SELL -1, HOLD 0 per bar."""
    colors = np.where(codes > 0, "#00e676", np.where(codes < 0, "#ff1744", "#607d8b")).tolist()
    fig: dict[str, Any] = {"data": [{"type": "bar", "x": np.asarray(ts, dtype=np.int64).tolist(),
                     "y": np.asarray(codes, dtype=float).tolist(), "marker": {"color": colors}, "name": "decision"}],
           "layout": {"template": figures.PLOTLY_DARK, "height": 140, "margin": {"l": 45, "r": 10, "t": 20, "b": 20},
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


def relayout_range(r: dict[str, Any]) -> list[int] | None:
    """The new x range of a zoom / pan relayout event (either key style plotly sends), else None."""
    if "xaxis.range[0]" in r and "xaxis.range[1]" in r:
        return [to_ms(r["xaxis.range[0]"]), to_ms(r["xaxis.range[1]"])]
    if isinstance(r.get("xaxis.range"), list | tuple) and len(r["xaxis.range"]) == 2:
        return [to_ms(r["xaxis.range"][0]), to_ms(r["xaxis.range"][1])]
    return None


_SHAPE_KEY = re.compile(r"^shapes\[(\d+)\]\.(x0|x1)$")


def shape_edits(relayout: dict[str, Any] | None) -> dict[int, dict[str, int]]:
    """{shape index: {'x0'|'x1': ms}} from a plotly relayout event (a dragged or resized span)."""
    out: dict[int, dict[str, int]] = {}
    for k, v in (relayout or {}).items():
        m = _SHAPE_KEY.match(k)
        if m:
            out.setdefault(int(m.group(1)), {})[m.group(2)] = to_ms(v)
    return out


# ---------------------------------------------------------------- data access


def _key(value: str | None) -> SeriesKey | None:
    if not value:
        return None
    ex, sym, tf = value.split("|")
    return SeriesKey(ex, sym, tf)


def _series_options(store: Any) -> list[dict[str, str]]:
    if store is None:
        return []
    return [{"label": f"{k.symbol} {k.timeframe} ({k.exchange})", "value": f"{k.exchange}|{k.symbol}|{k.timeframe}"}
            for k in sorted(store.series(), key=lambda k: (k.symbol, TIMEFRAME_MS.get(k.timeframe, 0)))
            if k.timeframe in TIMEFRAME_MS]


def _bounds(store: Any, key: SeriesKey) -> tuple[int, int] | None:
    row = store.query_one("SELECT min(ts), max(ts) FROM candles WHERE exchange = ? AND symbol = ? AND timeframe = ?",
                          [key.exchange, key.symbol, key.timeframe])
    return None if row is None or row[0] is None else (int(row[0]), int(row[1]))


def _day(ms: int) -> str:
    return pd.Timestamp(ms, unit="ms").strftime("%Y-%m-%d")


def _window(start: str, end: str) -> tuple[int, int]:
    """[start day 00:00, end day + 1 00:00) in ms UTC."""
    s = int(pd.Timestamp(start, tz="UTC").value // 1_000_000)
    e = int((pd.Timestamp(end, tz="UTC") + pd.Timedelta(days=1)).value // 1_000_000)
    return s, e


def _in_window(anns: list[Annotation], s: int, e: int) -> list[Annotation]:
    return [a for a in anns if a.exit_ts >= s and a.entry_ts < e]


def _with_outcomes(store: Any, anns: list[Annotation], candles: pd.DataFrame | None = None
                   ) -> list[tuple[Annotation, Outcome | None]]:
    """Outcomes from the already loaded ``candles`` where they cover the trade (one store read per trade
    otherwise); the store checked each trade when it was saved, so nothing is re-validated here."""
    ts = candles["ts"].to_numpy(np.int64) if candles is not None and len(candles) else np.zeros(0, np.int64)
    out: list[tuple[Annotation, Outcome | None]] = []
    for a in anns:
        if len(ts) and ts[0] <= a.entry_ts and a.exit_ts <= ts[-1]:
            i0, i1 = np.searchsorted(ts, [a.entry_ts, a.exit_ts])
            period = candles.iloc[int(i0) : int(i1) + 1] if candles is not None else None
        else:
            period = store.candles(SeriesKey(a.exchange, a.symbol, a.timeframe), a.entry_ts,
                                   a.exit_ts + TIMEFRAME_MS[a.timeframe])
        out.append((a, outcome(a, period) if period is not None and len(period) else None))
    return out


def _other_frames(store: Any, key: SeriesKey, candles: pd.DataFrame, s: int, e: int) -> dict[str, pd.DataFrame]:
    """The other timeframes of the period: stored when the store has them, else resampled from the
    chosen one (longer timeframes only), widened to show at least MINI_MIN_BARS bars."""
    out = {}
    for tf in TIMEFRAMES:
        if tf == key.timeframe:
            continue
        ms = TIMEFRAME_MS[tf]
        lo = min(s, e - MINI_MIN_BARS * ms)
        k2 = SeriesKey(key.exchange, key.symbol, tf)
        df = store.candles(k2, lo, e)
        if df.empty and ms > TIMEFRAME_MS[key.timeframe]:
            base = store.candles(key, lo, e)
            df = resample_candles(base, tf) if len(base) else base
        if len(df):
            out[tf] = df
    return out


# ---------------------------------------------------------------- layout


def layout(wctx: Any) -> Any:
    store = wctx.store
    options = _series_options(store)
    snap_ = wctx.engine.snapshot()
    default = next((o["value"] for o in options if o["value"].split("|")[1:] == [snap_.symbol, snap_.timeframe]),
                   options[0]["value"] if options else None)
    key = _key(default)
    bounds = _bounds(store, key) if key is not None else None
    last_day = _day(bounds[1]) if bounds else None
    models = list(wctx.models_cfg.enabled()) if wctx.models_cfg is not None else []
    controls = dbc.Row([
        dbc.Col([dbc.Label("Series"), dcc.Dropdown(id="ann-series", options=options, value=default,
                                                   clearable=False)], width=3),
        dbc.Col([dbc.Label("Days (UTC)"), dcc.DatePickerRange(
            id="ann-range", start_date=last_day, end_date=last_day,
            min_date_allowed=_day(bounds[0]) if bounds else None, max_date_allowed=last_day)], width=3),
        dbc.Col([dbc.Label("Navigate"), dbc.ButtonGroup([
            dbc.Button("◀ day", id="ann-prev", size="sm", color="secondary"),
            dbc.Button("day ▶", id="ann-next", size="sm", color="secondary"),
            dbc.Button("Undo", id="ann-undo", size="sm", color="warning"),
            dbc.Button("Delete", id="ann-delete", size="sm", color="danger"),
            dbc.Button("Cancel", id="ann-cancel", size="sm", color="secondary"),
        ])], width=3),
        dbc.Col([dbc.Label("Direction"), dbc.RadioItems(
            id="ann-direction", inline=True, value="auto",
            options=[{"label": x, "value": x} for x in ("auto", "long", "short", "none")])], width=3),
    ], className="g-2")
    details = dbc.Row([
        dbc.Col(dbc.Input(id="ann-exit-price", type="number", placeholder="exit price (blank: close)", size="sm"),
                width=2),
        dbc.Col(dbc.Input(id="ann-notes", placeholder="notes", size="sm"), width=4),
        dbc.Col(dbc.Input(id="ann-tags", placeholder="tags, comma separated", size="sm"), width=2),
        dbc.Col(dcc.Dropdown(id="ann-model", options=["fused", *models], value="fused", clearable=False), width=2),
        dbc.Col(dbc.Button("Replay", id="ann-replay", size="sm", color="primary"), width=1),
    ], className="g-2 mt-1")
    table = html.Div(id="ann-table")
    return html.Div([
        html.H4("Annotate"), controls, details,
        html.Div(id="ann-msg", className="small mt-1"),
        dcc.Graph(id="ann-chart", config={"scrollZoom": True, "displaylogo": False, "edits": {"shapePosition": True}},
                  figure={"data": [], "layout": {"template": figures.PLOTLY_DARK, "height": 560}}),
        dcc.Loading(html.Div([dcc.Graph(id="ann-timeline", style={"display": "none"}),
                              html.Pre(id="ann-metrics", className="small")])),
        dbc.Row([dbc.Col(dcc.Graph(id=m, figure={"data": [], "layout": {
            "template": figures.PLOTLY_DARK, "height": 200}}), width=4) for m in MINI], className="g-1"),
        dbc.Row([dbc.Col([dbc.Label("Selected"), dcc.Dropdown(id="ann-selected", options=[], value=None)], width=4)]),
        table,
        dcc.Store(id="ann-pending"), dcc.Store(id="ann-undo-stack", data=[]), dcc.Store(id="ann-ids", data=[]),
        dcc.Store(id="ann-version", data=0), dcc.Store(id="ann-mini-tfs", data=[]),
        dcc.Location(id="ann-url", refresh=False),
    ])


TABLE_COLUMNS = ("id", "v", "dir", "entry", "entry_price", "exit", "exit_price", "pnl_pct", "holding", "mfe_pct",
                 "mae_pct", "tags", "notes")


def _cell(v: Any) -> str:
    return "" if v is None else str(v).replace("|", "/").replace("\n", " ")


def _table_children(rows: list[dict[str, Any]]) -> Any:
    """The annotations table as one Markdown component (hundreds of rows as thousands of Dash components
    would cost seconds to serialise and render)."""
    if not rows:
        return html.Div("no annotations in this range yet: click a candle for the entry, another for the exit",
                        className="text-muted small")
    lines = ["| " + " | ".join(TABLE_COLUMNS) + " |", "|" + "---|" * len(TABLE_COLUMNS)]
    lines += ["| " + " | ".join(_cell(r[c]) for c in TABLE_COLUMNS) + " |" for r in rows]
    return dcc.Markdown("\n".join(lines), className="ann-table small")


# ---------------------------------------------------------------- callbacks


def register(app: Dash, wctx: Any) -> None:
    def ann_store() -> AnnotationStore:
        if wctx.store is None:
            raise AnnotationError("this dashboard has no store: annotations need one")
        return AnnotationStore(wctx.store)

    def listing(key: SeriesKey, s: int, e: int, candles: pd.DataFrame | None = None
                ) -> tuple[list[Annotation], list[dict], list[dict]]:
        anns = [a for a in ann_store().list(key.symbol, key.timeframe) if a.exchange == key.exchange]
        shown = _in_window(anns, s, e)
        rows = table_rows(_with_outcomes(wctx.store, shown, candles))
        opts = [{"label": f"{r['entry']} {r['dir']} {r['pnl_pct']}%", "value": r["id"]} for r in rows]
        return shown, rows, opts

    @app.callback(
        Output("ann-range", "start_date", allow_duplicate=True), Output("ann-range", "end_date", allow_duplicate=True),
        Input("ann-url", "search"), State("ann-url", "pathname"), prevent_initial_call="initial_duplicate")
    def _deep_link(search: str | None, path: str | None) -> tuple[Any, Any]:
        """/annotate?from=YYYY-MM-DD&to=YYYY-MM-DD opens on those days."""
        from urllib.parse import parse_qs

        q = parse_qs((search or "").lstrip("?"))
        if path != "/annotate" or "from" not in q:
            return no_update, no_update
        start = q["from"][0]
        return start, q.get("to", [start])[0]

    @app.callback(
        Output("ann-range", "start_date"), Output("ann-range", "end_date"),
        Input("ann-prev", "n_clicks"), Input("ann-next", "n_clicks"),
        State("ann-range", "start_date"), State("ann-range", "end_date"), prevent_initial_call=True)
    def _shift(_p: Any, _n: Any, start: str, end: str) -> tuple[str, str]:
        d = -1 if ctx.triggered_id == "ann-prev" else 1
        return ((pd.Timestamp(start) + pd.Timedelta(days=d)).strftime("%Y-%m-%d"),
                (pd.Timestamp(end) + pd.Timedelta(days=d)).strftime("%Y-%m-%d"))

    @app.callback(
        Output("ann-chart", "figure"), *[Output(m, "figure") for m in MINI],
        Output("ann-ids", "data"), Output("ann-table", "children"), Output("ann-selected", "options"),
        Output("ann-msg", "children"), Output("ann-mini-tfs", "data"),
        Input("ann-series", "value"), Input("ann-range", "start_date"), Input("ann-range", "end_date"),
        Input("ann-version", "data"))
    def _load(series: str | None, start: str | None, end: str | None, _v: int) -> tuple:
        key = _key(series)
        minis: list[Any] = [no_update] * len(MINI)
        if key is None or not start or not end or wctx.store is None:
            return (no_update, *minis, [], [], [], "no stored candles: import some (main_backtest.py data import)",
                    no_update)
        s, e = _window(start, end)
        candles = wctx.store.candles(key, s, e)
        if candles.empty:
            return (no_update, *minis, [], [], [], f"no {key.timeframe} candles stored between {start} and {end}",
                    no_update)
        shown, rows, opts = listing(key, s, e, candles)
        editable = len(shown) <= MAX_EDITABLE_SPANS
        y0, y1 = float(candles["low"].min()), float(candles["high"].max())
        main_spans = span_traces([] if editable else shown, y0, y1)
        if ctx.triggered_id == "ann-version":  # an edit: redraw only the spans, keep the user's zoom
            spans = Patch()
            spans["layout"]["shapes"] = annotation_shapes(shown) if editable else []
            for k, tr in enumerate(marker_traces(shown) + main_spans):
                spans["data"][N_BASE_TRACES + k] = tr
            patches: list[Any] = []
            others = _other_frames(wctx.store, key, candles, s, e)
            for tf in [t for t in TIMEFRAMES if t != key.timeframe][: len(MINI)]:
                o = others.get(tf)
                if o is None:
                    patches.append(no_update)
                    continue
                mp = Patch()
                for k, tr in enumerate(span_traces(shown, float(o["low"].min()), float(o["high"].max()))):
                    mp["data"][1 + k] = tr
                patches.append(mp)
            return (spans, *patches, [a.id for a in shown], _table_children(rows), opts, no_update, no_update)
        fig = figures.candle_figure(candles, overlays=("sma21",), title=f"{key.symbol} {key.timeframe}",
                                    uirevision=f"ann:{series}:{start}:{end}",
                                    extra_shapes=annotation_shapes(shown) if editable else [])
        fig = lean(fig)
        fig["data"] += marker_traces(shown) + main_spans
        fig["layout"]["xaxis"]["range"] = [s, e]
        fig["layout"]["hovermode"] = "x"
        fig["layout"]["dragmode"] = "pan"
        others = _other_frames(wctx.store, key, candles, s, e)
        minis = []
        mini_tfs = [t for t in TIMEFRAMES if t != key.timeframe][: len(MINI)]
        for tf in mini_tfs:
            o = others.get(tf)
            spans_tf = span_traces(shown, float(o["low"].min()), float(o["high"].max())) if o is not None else []
            minis.append(mini_figure(others[tf], tf, spans_tf, mini_range(s, e, tf)) if tf in others else
                         {"data": [], "layout": {"template": figures.PLOTLY_DARK, "height": 200,
                                                 "title": {"text": f"{tf}: not stored", "font": {"size": 12}}}})
        minis += [no_update] * (len(MINI) - len(minis))
        return (fig, *minis, [a.id for a in shown], _table_children(rows), opts,
                f"{len(candles)} candles, {len(shown)} annotation(s) in range", mini_tfs)

    @app.callback(
        Output("ann-pending", "data"), Output("ann-undo-stack", "data"), Output("ann-version", "data"),
        Output("ann-msg", "children", allow_duplicate=True), Output("ann-selected", "value"),
        Output("ann-chart", "figure", allow_duplicate=True),
        Input("ann-chart", "clickData"), Input("ann-chart", "relayoutData"), Input("ann-undo", "n_clicks"),
        Input("ann-delete", "n_clicks"), Input("ann-cancel", "n_clicks"),
        State("ann-pending", "data"), State("ann-undo-stack", "data"), State("ann-version", "data"),
        State("ann-series", "value"), State("ann-direction", "value"), State("ann-exit-price", "value"),
        State("ann-notes", "value"), State("ann-tags", "value"), State("ann-selected", "value"),
        State("ann-ids", "data"), prevent_initial_call=True)
    def _edit(click: Any, relayout: Any, _u: Any, _d: Any, _c: Any, pending: dict | None, undo: list,
              version: int, series: str | None, direction: str, exit_price: float | None, notes: str | None,
              tags: str | None, selected: str | None, ids: list[str]) -> tuple:
        key = _key(series)
        trig = ctx.triggered_id
        keep = (no_update,) * 6
        if key is None:
            return keep
        try:
            ann = ann_store()
            if trig == "ann-cancel":
                p = Patch()
                p["layout"]["shapes"] = _shapes_without_pending(ann, key, ids)
                return None, no_update, no_update, "entry cancelled", no_update, p
            if trig == "ann-chart" and ctx.triggered[0]["prop_id"].endswith("clickData"):
                pt = (click or {}).get("points", [{}])[0]
                if "x" not in pt:
                    return keep
                t = to_ms(pt["x"])
                if pending is None:
                    bar = TIMEFRAME_MS[key.timeframe]
                    t -= t % bar
                    c = wctx.store.candles(key, t, t + bar)
                    if c.empty:
                        return None, no_update, no_update, "no stored candle there", no_update, no_update
                    p = Patch()
                    p["layout"]["shapes"].append(pending_shape(t)[0])
                    return ({"ts": t, "price": float(c["close"].iloc[0])}, no_update, no_update,
                            f"entry at {pd.Timestamp(t, unit='ms')} {float(c['close'].iloc[0]):g}: click the exit",
                            no_update, p)
                a = snap(ann.store, key, int(pending["ts"]), t, exit_price=exit_price,
                         direction=None if direction == "auto" else direction, notes=notes or "",
                         tags=tuple(x.strip() for x in (tags or "").split(",") if x.strip()))
                a = ann.add(a)
                undo = ([*undo, {"op": "add", "id": a.id}])[-MAX_UNDO:]
                o = outcome(a, check(ann.store, a))
                return (None, undo, version + 1, f"saved {a.direction} {a.id}: P&L {o.pnl_pct:+.3f}%", a.id,
                        no_update)
            if trig == "ann-chart":  # relayout: a dragged / resized span
                edits = shape_edits(relayout)
                if not edits:
                    return keep
                changed = []
                for i, xs in edits.items():
                    if i >= len(ids):
                        continue
                    old = ann.get(ids[i])
                    bar = TIMEFRAME_MS[old.timeframe]
                    new_entry = xs.get("x0", old.entry_ts)
                    new_exit = xs.get("x1", old.exit_ts + bar // 2) - bar // 2
                    e0, e1 = (x - x % bar for x in sorted((round(new_entry / bar) * bar, round(new_exit / bar) * bar)))
                    if (e0, e1) == (old.entry_ts, old.exit_ts):
                        continue
                    moved = snap(ann.store, key, e0, e1, direction=None if old.direction != "none" else "none")
                    new = ann.update(old.id, entry_ts=moved.entry_ts, exit_ts=moved.exit_ts,
                                     entry_price=moved.entry_price, exit_price=moved.exit_price,
                                     direction=moved.direction)
                    undo = [*undo, {"op": "update", "id": old.id, "prev": {
                        "entry_ts": old.entry_ts, "exit_ts": old.exit_ts, "entry_price": old.entry_price,
                        "exit_price": old.exit_price, "direction": old.direction}}][-MAX_UNDO:]
                    changed.append(new)
                if not changed:
                    return keep
                o = outcome(changed[-1], check(ann.store, changed[-1]))
                return (no_update, undo, version + 1, f"moved {changed[-1].id}: P&L {o.pnl_pct:+.3f}%",
                        changed[-1].id, no_update)
            if trig == "ann-delete":
                if not selected:
                    return no_update, no_update, no_update, "select an annotation to delete", no_update, no_update
                ann.delete(selected)
                undo = [*undo, {"op": "delete", "id": selected}][-MAX_UNDO:]
                return no_update, undo, version + 1, f"deleted {selected}", None, no_update
            if trig == "ann-undo":
                if not undo:
                    return no_update, no_update, no_update, "nothing to undo", no_update, no_update
                last, undo = undo[-1], undo[:-1]
                if last["op"] == "add":
                    ann.delete(last["id"])
                elif last["op"] == "delete":
                    ann.restore(last["id"])
                else:
                    ann.update(last["id"], **last["prev"])
                return None, undo, version + 1, f"undid {last['op']} of {last['id']}", None, no_update
        except (AnnotationError, ValueError, KeyError) as exc:
            return None, no_update, version + 1, f"refused: {str(exc).strip(chr(39))}", no_update, no_update
        return keep

    def _shapes_without_pending(ann: AnnotationStore, key: SeriesKey, ids: list[str]) -> list[dict]:
        anns = []
        for i in ids:
            try:
                anns.append(ann.get(i))
            except KeyError:
                continue
        return annotation_shapes(anns)

    # the smaller charts follow the main chart's zoom / pan and show its hover cursor
    for slot in MINI:
        @app.callback(Output(slot, "figure", allow_duplicate=True),
                      Input("ann-chart", "relayoutData"), Input("ann-chart", "hoverData"),
                      State("ann-mini-tfs", "data"), prevent_initial_call=True)
        def _sync(relayout: Any, hover: Any, tfs: list[str] | None, _k: int = MINI.index(slot)) -> Any:
            tf = (tfs or [])[_k] if _k < len(tfs or []) else ""
            if tf not in TIMEFRAME_MS:
                return no_update
            p = Patch()
            if ctx.triggered[0]["prop_id"].endswith("hoverData"):
                pt = (hover or {}).get("points", [{}])[0]
                if "x" not in pt:
                    return no_update
                t = to_ms(pt["x"])
                p["layout"]["annotations"] = [{"x": t, "xref": "x", "yref": "paper", "y": 1, "text": "",
                                               "showarrow": True, "ax": 0, "ay": -10, "arrowcolor": "#ffc107"}]
                return p
            rng = relayout_range(relayout or {})
            if rng is None:
                return no_update
            p["layout"]["xaxis"]["range"] = mini_range(rng[0], rng[1], tf)
            return p

    @app.callback(Output("ann-timeline", "figure"), Output("ann-timeline", "style"), Output("ann-metrics", "children"),
                  Input("ann-replay", "n_clicks"), State("ann-series", "value"), State("ann-range", "start_date"),
                  State("ann-range", "end_date"), State("ann-model", "value"), prevent_initial_call=True)
    def _replay(_n: Any, series: str | None, start: str, end: str, model: str) -> tuple:
        from core.annotations.replay import replay

        key = _key(series)
        if key is None or wctx.backtest_components is None or wctx.models_cfg is None:
            return no_update, no_update, "replay needs the store, models.yml and the composition root"
        s, e = _window(start, end)
        shown, _, _ = listing(key, s, e)
        if not shown:
            return no_update, no_update, "no annotations in range to replay against"
        try:
            ev, _c, _info = replay(shown, cfg=wctx.cfg, models=wctx.models_cfg, store=wctx.store,
                                   components=wctx.backtest_components, model=model)
        except (ValueError, AnnotationError) as exc:
            return no_update, no_update, f"replay failed: {exc}"
        t = ev.totals()
        lines = [f"{model}: {t['annotations']} annotation(s), entry tolerance +-{t['k']} bars"]
        for side in ("BUY", "SELL"):
            x = t[side]
            lines.append(f"{side}: predicted {x['predicted']} annotated {x['annotated']} matched {x['matched']} "
                         f"precision {_f(x['precision'])} recall {_f(x['recall'])} F1 {_f(x['f1'])}")
        labels = t["confusion"]["labels"]
        lines.append("confusion (rows annotated, cols predicted): " + " ".join(labels))
        lines += [f"  {n:8} " + " ".join(f"{v:5d}" for v in row)
                  for n, row in zip(labels, t["confusion"]["rows_annotated_cols_predicted"], strict=True)]
        lines.append(f"P&L annotated {t['annotated_pnl_pct']:+.3f}%  captured {t['captured_pnl_pct']:+.3f}%")
        return timeline_figure(ev.timeline_ts, ev.timeline_code, [s, e]), {"display": "block"}, "\n".join(lines)


def _f(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}"
