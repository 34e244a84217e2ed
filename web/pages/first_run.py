"""First run: the "untrained, not traded" banner with Train now (Live page) and Train-now progress
(Models page). The texts are pure functions of the snapshot, so tests read them without a browser."""

from __future__ import annotations

from typing import Any

import dash_bootstrap_components as dbc
from dash import Dash, Input, Output, ctx, html, no_update

from core.snapshot import EngineSnapshot

Component = Any


def training_line(snap: EngineSnapshot) -> str:
    """Train now's progress in one line ("" when no job was started)."""
    st = dict(snap.offline_training)
    state = st.get("state", "idle")
    if state == "idle":
        return ""
    preset = st.get("preset", "")
    if state == "starting":
        return f"Train now ({preset}): starting on {st.get('bars', '?')} stored candles ..."
    if state == "finishing":
        return f"Train now ({preset}): swapping the new weights in ..."
    if state == "running":
        if not st.get("expert"):
            return f"Train now ({preset}): preparing features ..."
        if not st.get("epoch"):
            return f"Train now ({preset}): training {st['expert']} ..."
        loss = st.get("loss")
        eta = st.get("eta_s")
        return (f"Train now ({preset}): {st['expert']} epoch {st.get('epoch')}/{st.get('epochs')}"
                + (f", loss {loss:.4f}" if isinstance(loss, int | float) else "")
                + (f", val log loss {st['val_logloss']:.4f}" if isinstance(st.get("val_logloss"), int | float) else "")
                + (f", ETA {eta:.0f} s" if isinstance(eta, int | float) else "")
                + f" · done: {', '.join(st.get('done') or []) or 'none yet'}")
    if state == "done":
        return f"Train now ({preset}) finished: {', '.join(st.get('adopted') or []) or 'nothing'} swapped in"
    return f"Train now ({preset}) failed: {st.get('error', 'unknown error')}"


def banner(snap: EngineSnapshot) -> tuple[str, str, bool]:
    """(text, colour, show the Train-now buttons); text "" = no banner."""
    running = dict(snap.offline_training).get("state") in ("starting", "running", "finishing")
    if running:
        return training_line(snap), "info", False
    if snap.untrained and not snap.allow_untrained:
        return (f"Untrained experts: {', '.join(snap.untrained)}. Their decisions are shown, marked "
                f"\"untrained, not traded\" ({snap.not_traded} so far); no order is placed until they are "
                "trained. Train now learns from the stored candles (quick: about 3 minutes).", "warning", True)
    if snap.untrained:
        return (f"Trading on untrained experts ({', '.join(snap.untrained)}): execution.allow_untrained is "
                "true.", "danger", True)
    if dict(snap.offline_training).get("state") == "failed":
        return training_line(snap), "danger", True
    return "", "info", False


def banner_component(snap: EngineSnapshot) -> Component:
    """The banner as the snapshot has it when the page loads (the tick callback keeps it current)."""
    text, colour, buttons = banner(snap)
    return dbc.Alert([
        html.Span(text, id="live-banner-text"),
        html.Span([
            dbc.Button("Train now (quick)", id="train-now-quick", size="sm", color="primary", className="ms-2"),
            dbc.Button("Train now (full)", id="train-now-full", size="sm", color="secondary", className="ms-2"),
        ], id="live-banner-buttons", style={} if buttons else {"display": "none"}),
        html.Div(id="train-now-msg", className="small"),
    ], id="live-banner", color=colour, className="py-2 mb-2", style={} if text else {"display": "none"})


def register(app: Dash, engine: Any) -> None:
    @app.callback(Output("live-banner-text", "children"), Output("live-banner", "color"),
                  Output("live-banner", "style"), Output("live-banner-buttons", "style"),
                  Output("live-source", "children"),
                  Input("live-tick", "n_intervals"), prevent_initial_call=True)  # the layout has the banner
    def _banner(_n: int | None) -> Component:
        snap = engine.snapshot()
        text, colour, buttons = banner(snap)
        source = snap.source_label
        return (text, colour, {} if text else {"display": "none"}, {} if buttons else {"display": "none"},
                source)

    @app.callback(Output("train-now-msg", "children"),
                  Input("train-now-quick", "n_clicks"), Input("train-now-full", "n_clicks"),
                  prevent_initial_call=True)
    def _train_now(_q: int | None, _f: int | None) -> Component:
        preset = "full" if ctx.triggered_id == "train-now-full" else "quick"
        try:
            engine.train_now(preset)
        except (ValueError, RuntimeError) as exc:
            return html.Span(f"not started: {exc}", className="text-danger")
        return no_update


def models_panel() -> Component:
    return html.Div(id="models-offline", className="small mb-2")


def register_models(app: Dash, engine: Any) -> None:
    @app.callback(Output("models-offline", "children"), Input("models-interval", "n_intervals"))
    def _progress(_n: int | None) -> Component:
        line = training_line(engine.snapshot())
        return dbc.Alert(line, color="info", className="py-1 mb-0") if line else ""
