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
import time
from datetime import timedelta
from typing import Any

import dash_bootstrap_components as dbc
import numpy as np
import pandas as pd
from dash import ClientsideFunction, Dash, Input, Output, Patch, State, ctx, dcc, html, no_update

from core.annotations.cases import Outcome, outcome, outcome_of_arrays
from core.annotations.model import Annotation
from core.annotations.store import AnnotationError, AnnotationStore, check, snap
from core.features import resample_candles
from core.types import TIMEFRAME_MS, SeriesKey
from web import figures
from web.annotate_figures import (
    MINI_MIN_BARS,
    N_BASE_TRACES,
    annotation_shapes,
    empty_mini,
    main_figure,
    marker_traces,
    mini_figure,
    mini_range,
    pending_shape,
    span_traces,
    timeline_figure,
)

TIMEFRAMES = ("1m", "5m", "1h", "1d")
MAX_EDITABLE_SPANS = 60  # more spans in view are drawn static (each draggable span costs the browser ~10 ms);
# narrow the day range to drag them
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


def deep_link(path: str | None, search: str | None) -> tuple[str, str] | None:
    """/annotate?from=YYYY-MM-DD[&to=YYYY-MM-DD] -> (from, to); None without one or when malformed."""
    from urllib.parse import parse_qs

    q = parse_qs((search or "").lstrip("?"))
    if path != "/annotate" or "from" not in q:
        return None
    start, end = q["from"][0], q.get("to", q["from"])[0]
    try:
        pd.Timestamp(start), pd.Timestamp(end)
    except ValueError:
        return None
    return start, end


def _in_window(anns: list[Annotation], s: int, e: int) -> list[Annotation]:
    return [a for a in anns if a.exit_ts >= s and a.entry_ts < e]


def _with_outcomes(store: Any, anns: list[Annotation], candles: pd.DataFrame | None = None
                   ) -> list[tuple[Annotation, Outcome | None]]:
    """Outcomes from the already loaded ``candles`` where they cover the trade (one store read per trade
    otherwise); the store checked each trade when it was saved, so nothing is re-validated here."""
    have = candles is not None and len(candles) > 0
    ts = candles["ts"].to_numpy(np.int64) if have else np.zeros(0, np.int64)  # type: ignore[index]
    hi = candles["high"].to_numpy(np.float64) if have else ts  # type: ignore[index]
    lo = candles["low"].to_numpy(np.float64) if have else ts  # type: ignore[index]
    out: list[tuple[Annotation, Outcome | None]] = []
    for a in anns:
        if len(ts) and ts[0] <= a.entry_ts and a.exit_ts <= ts[-1]:
            i0, i1 = np.searchsorted(ts, [a.entry_ts, a.exit_ts])
            sl = slice(int(i0), int(i1) + 1)
            out.append((a, outcome_of_arrays(a, ts[sl], hi[sl], lo[sl])))
            continue
        period = store.candles(SeriesKey(a.exchange, a.symbol, a.timeframe), a.entry_ts,
                               a.exit_ts + TIMEFRAME_MS[a.timeframe])
        out.append((a, outcome(a, period) if len(period) else None))
    return out


def _other_frames(store: Any, key: SeriesKey, s: int, e: int) -> dict[str, pd.DataFrame]:
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
                  figure={"data": [], "layout": {"template": figures.DARK, "height": 560}}),
        dcc.Loading(html.Div([dcc.Graph(id="ann-timeline", style={"display": "none"}),
                              html.Pre(id="ann-metrics", className="small")])),
        dbc.Row([dbc.Col(dcc.Graph(id=m, figure={"data": [], "layout": {
            "template": figures.DARK, "height": 200}}), width=4) for m in MINI], className="g-1"),
        dbc.Row([dbc.Col([dbc.Label("Selected"), dbc.Select(id="ann-selected", options=[], value=None, size="sm")], width=4)]),
        table,
        dcc.Store(id="ann-pending"), dcc.Store(id="ann-undo-stack", data=[]), dcc.Store(id="ann-ids", data=[]),
        dcc.Store(id="ann-version", data=0), dcc.Store(id="ann-mini-tfs", data=[]),
        dcc.Store(id="ann-mini-req"), dcc.Store(id="ann-mini-go"),
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
        Output("ann-range", "start_date", allow_duplicate=True), Output("ann-range", "end_date", allow_duplicate=True),
        Output("ann-mini-req", "data"),
        Input("ann-series", "value"), Input("ann-range", "start_date"), Input("ann-range", "end_date"),
        Input("ann-version", "data"), State("url", "pathname"), State("url", "search"),
        prevent_initial_call="initial_duplicate")
    def _load(series: str | None, start: str | None, end: str | None, _v: int, path: str | None,
              search: str | None) -> tuple:
        key = _key(series)
        minis: list[Any] = [no_update] * len(MINI)
        days: tuple[Any, Any] = (no_update, no_update)
        link = deep_link(path, search) if ctx.triggered_id is None else None
        if link is not None:  # the first draw already on the linked days (one round trip, one figure)
            start, end = days = link
        if key is None or not start or not end or wctx.store is None:
            return (no_update, *minis, [], [], [], "no stored candles: import some (main_backtest.py data import)",
                    no_update, *days, no_update)
        s, e = _window(start, end)
        candles = wctx.store.candles(key, s, e)
        if candles.empty:
            return (no_update, *minis, [], [], [], f"no {key.timeframe} candles stored between {start} and {end}",
                    no_update, *days, no_update)
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
            others = _other_frames(wctx.store, key, s, e)
            for tf in [t for t in TIMEFRAMES if t != key.timeframe][: len(MINI)]:
                o = others.get(tf)
                if o is None:
                    patches.append(no_update)
                    continue
                mp = Patch()
                for k, tr in enumerate(span_traces(shown, float(o["low"].min()), float(o["high"].max()))):
                    mp["data"][1 + k] = tr
                patches.append(mp)
            return (spans, *patches, [a.id for a in shown], _table_children(rows), opts, no_update, no_update, *days,
                    no_update)
        fig = main_figure(candles, f"{key.symbol} {key.timeframe}", f"ann:{series}:{start}:{end}", [s, e],
                          annotation_shapes(shown) if editable else [])
        fig["data"] += marker_traces(shown) + main_spans
        # the smaller charts come in a second callback (_minis), so the main chart is drawn first
        mini_tfs = [t for t in TIMEFRAMES if t != key.timeframe][: len(MINI)]
        request = {"series": series, "start": start, "end": end, "rev": fig["layout"]["uirevision"], "at": time.time()}
        return (fig, *minis, [a.id for a in shown], _table_children(rows), opts,
                f"{len(candles)} candles, {len(shown)} annotation(s) in range", mini_tfs, *days, request)

    # the mini request waits in the browser until the main chart is drawn (assets/annotate.js)
    app.clientside_callback(ClientsideFunction("annotate", "afterMain"), Output("ann-mini-go", "data"),
                            Input("ann-mini-req", "data"), prevent_initial_call=True)

    @app.callback(*[Output(m, "figure", allow_duplicate=True) for m in MINI],
                  Input("ann-mini-go", "data"), prevent_initial_call=True)
    def _minis(req: dict | None) -> tuple:
        """The other timeframes of the main chart's period with the same spans (after the main chart)."""
        key = _key((req or {}).get("series"))
        if key is None or req is None or wctx.store is None:
            return (no_update,) * len(MINI)
        s, e = _window(req["start"], req["end"])
        shown = _in_window([a for a in ann_store().list(key.symbol, key.timeframe) if a.exchange == key.exchange],
                           s, e)
        others = _other_frames(wctx.store, key, s, e)
        minis: list[Any] = []
        for tf in [t for t in TIMEFRAMES if t != key.timeframe][: len(MINI)]:
            o = others.get(tf)
            if o is None:
                minis.append(empty_mini(tf))
                continue
            spans_tf = span_traces(shown, float(o["low"].min()), float(o["high"].max()))
            minis.append(mini_figure(o, tf, spans_tf, mini_range(s, e, tf)))
        return (*minis, *[no_update] * (len(MINI) - len(minis)))

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
