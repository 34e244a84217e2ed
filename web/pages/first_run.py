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
        return f"Train now ({preset}): " + running_text(st)
    if state == "done":
        kronos = f" · Kronos: {st['kronos']}" if st.get("kronos") else ""
        return (f"Train now ({preset}) finished: {', '.join(st.get('adopted') or []) or 'nothing'} swapped in"
                + kronos)
    return f"Train now ({preset}) failed: {st.get('error', 'unknown error')}"


def stage_list(stages: list[dict[str, Any]]) -> str:
    """"kronos ✓, features ✓, cnn ✓, transformer 2/4, dqn, gate" (the Models page's line)."""
    parts = []
    for s in stages:
        if s.get("state") == "done":
            parts.append(f"{s['name']} ✓")
        elif s.get("state") == "running":
            total = s.get("total")
            unit = {"row": " rows", "epoch": ""}.get(s.get("unit", ""), "")
            if s.get("done") and total:
                parts.append(f"{s['name']} {s['done']}/{total}{unit}")
            elif s.get("done"):
                parts.append(f"{s['name']} {s['done']}{unit}")
            else:
                parts.append(f"{s['name']} …")
        else:
            parts.append(str(s["name"]))
    return ", ".join(parts)


def eta_text(st: dict[str, Any]) -> str:
    """"ETA 40 s" | "ETA ≥ 40 s (gate still estimating)" | "ETA estimating" (no stage measured yet)."""
    eta, unknown = st.get("eta_s"), list(st.get("estimating") or [])
    if not isinstance(eta, int | float):
        return "ETA estimating"
    if unknown:
        return f"ETA ≥ {eta:.0f} s ({', '.join(unknown)} still estimating)"
    return f"ETA {eta:.0f} s"


def running_text(st: dict[str, Any]) -> str:
    """The running job: its stage list, the current stage's losses, the ETA and the Kronos it uses."""
    stages = st.get("stages") or []
    if not stages:
        return "preparing ..."
    cur = next((s for s in stages if s.get("name") == st.get("stage")), None)
    m = (cur or {}).get("metrics") or {}
    losses = "".join(f", {label} {m[k]:.4f}" for k, label in (("loss", "loss"), ("val_logloss", "val log loss"),
                                                              ("val_loss", "val loss"))
                     if isinstance(m.get(k), int | float))
    kronos = f" · Kronos: {st['kronos']}" if st.get("kronos") else ""
    return f"{stage_list(stages)}{losses} · {eta_text(st)}{kronos}"


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
