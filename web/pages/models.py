"""Models page: per expert — enabled switch, live-training switch with the trainer's live status
(steps, loss, samples/s, promotions, challenger vs champion score, restarts), version, a rollback
button, its registered checkpoints (version, metric, created, validation metrics), offline loss curves,
the live loss curve of its online trainer (refreshed only when a round was published), and a
TensorBoard link.

Checkpoints and their training curves come from the engine's checkpoint registry through its read API
(``CheckpointCatalog`` of core/types.py: ``list``, ``best``, ``metrics``); curves of checkpoints that
recorded none (registered before the registry kept them) fall back to the TensorBoard scalars of
``training.runs_dir``. An expert without either shows "none recorded yet".
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import dash_bootstrap_components as dbc
import pandas as pd
from dash import ALL, Dash, Input, Output, State, ctx, dcc, html, no_update

from core.types import CheckpointCatalog, CheckpointInfo
from web import experts_api, figures
from web.pages import first_run

TRAINING_OFF = "Live training is off for this engine (started with --no-training or training.enabled: false)"
TRAINING_CANDLES = "Candle experts (Kronos) train offline: main_backtest.py train --experts kronos"
NONE_YET = "none recorded yet"
METRIC_COLUMNS = ["step", "name", "value"]


def checkpoints_for(registry: CheckpointCatalog | None, expert: str) -> list[CheckpointInfo]:
    """Registered checkpoints of ``expert``, newest first (none without a registry)."""
    return [] if registry is None else list(reversed(registry.list(expert)))


def checkpoint_table(infos: list[CheckpointInfo], best: str | None) -> pd.DataFrame:
    """One row per checkpoint: version, validation metric, creation time (UTC), the best one starred."""
    return pd.DataFrame([{"version": i.version, "metric": f"{i.metric:.5g}",
                          "created": i.created_at.strftime("%Y-%m-%d %H:%M:%S"),
                          "best": "★" if i.version == best else ""} for i in infos],
                        columns=["version", "metric", "created", "best"])


def tensorboard_scalars(runs_dir: Path, expert: str) -> pd.DataFrame:
    """Scalars tagged '<expert>/<metric>' from the TensorBoard runs the trainers write (the offline
    trainer logs train/val losses there). Columns step, name, value; newest run last."""
    if not runs_dir.is_dir():
        return pd.DataFrame(columns=METRIC_COLUMNS)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    frames = []
    for run in sorted({p.parent for p in runs_dir.rglob("events.out.tfevents.*")}, key=lambda p: p.stat().st_mtime):
        acc = EventAccumulator(str(run), size_guidance={"scalars": 2000})
        try:
            acc.Reload()
        except Exception:  # noqa: BLE001 - a half-written event file is skipped, not fatal
            continue
        for tag in acc.Tags().get("scalars", []):
            if tag.startswith(f"{expert}/"):
                ev = acc.Scalars(tag)
                frames.append(pd.DataFrame({"step": [e.step for e in ev], "name": tag.split("/", 1)[1],
                                            "value": [e.value for e in ev]}))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=METRIC_COLUMNS)


def metrics_for(registry: CheckpointCatalog | None, expert: str, runs_dir: Path | None = None) -> pd.DataFrame:
    """Offline training curves (step, name, value) of ``expert``: what the registry recorded for its
    newest checkpoint, else the TensorBoard runs (older checkpoints), else empty."""
    mt = registry.metrics(expert) if registry is not None else pd.DataFrame(columns=METRIC_COLUMNS)
    if len(mt) or runs_dir is None:
        return mt
    return tensorboard_scalars(runs_dir, expert)


def validation_metrics(info: CheckpointInfo | None) -> dict[str, Any]:
    """The registry's policy metric plus any 'val*' entries of the checkpoint's meta (not the split's
    '*_ts' bounds)."""
    if info is None:
        return {}
    return {"metric": info.metric, **{k: v for k, v in info.meta.items()
                                      if str(k).startswith("val") and not str(k).endswith("_ts")}}


def checkpoint_block(registry: CheckpointCatalog | None, expert: str) -> list[Any]:
    """Last checkpoint, its validation metrics and the table of registered checkpoints."""
    infos = checkpoints_for(registry, expert)
    last = infos[0] if infos else None
    val = validation_metrics(last)
    best = registry.best(expert) if registry is not None and infos else None
    table = checkpoint_table(infos, best.version if best else None)
    return [
        html.Div("last checkpoint: " + (last.version if last else "none"), className="small"),
        html.Div("validation metrics: " + (", ".join(f"{k}={_short(v)}" for k, v in val.items()) or "—"),
                 className="small mb-1"),
        dbc.Table.from_dataframe(table.head(5), size="sm", striped=True, className="small mb-1") if len(table)
        else html.Div(f"checkpoints: {NONE_YET}", className="text-muted small"),
    ]


def loss_block(registry: CheckpointCatalog | None, expert: str, runs_dir: Path | None) -> Any:
    """The offline loss curves of ``expert``, or a line saying there are none yet."""
    mt = metrics_for(registry, expert, runs_dir)
    if not len(mt):
        return html.Div(f"offline training metrics: {NONE_YET} (Train now on the Live page, or "
                        "`python main_backtest.py train`)", className="text-muted small")
    return dcc.Graph(figure=figures.loss_figure(mt, "offline loss curves"), config={"displayModeBar": False})


def _short(v: Any) -> str:
    return f"{v:.5g}" if isinstance(v, float) else json.dumps(v) if isinstance(v, dict | list) else str(v)


def expert_card(wctx: Any, e: dict[str, Any], snap: Any = None) -> Any:
    name = e["name"]
    snap = snap if snap is not None else wctx.engine.snapshot()
    registry = wctx.registry
    o = e["latest"]
    header = dbc.Row([
        dbc.Col(html.H5(name, className="mb-0"), width=3),
        dbc.Col(dbc.Switch(id={"type": "expert-enabled", "name": name}, label="enabled", value=e["enabled"]),
                width=2),
        dbc.Col([html.Span(dbc.Switch(id={"type": "expert-training", "name": name}, label="training",
                                      value=e["training"], disabled=not e["trainable"]), id=f"training-wrap-{name}"),
                 dbc.Tooltip("Train online from live bars; promotions hot-swap the weights between decisions"
                             if e["trainable"] else (TRAINING_CANDLES if e["input_kind"] == "candles"
                                                     else TRAINING_OFF),
                             target=f"training-wrap-{name}")], width=2),
        dbc.Col(html.Span(f"version {e['version']}", id={"type": "expert-version", "name": name},
                          className="small"), width=3),
        dbc.Col(html.Span(f"gate w {e['gate_weight']:.3f}" if e["gate_weight"] is not None else "gate w —",
                          className="small"), width=1),
        dbc.Col(dbc.Button("roll back", id={"type": "expert-rollback", "name": name}, size="sm",
                           color="warning", outline=True, disabled=not e.get("can_rollback"),
                           title="put the previous live version back (exact weights)")
                if e["trainable"] else None, width=1),
    ], className="align-items-center")
    body = dbc.Row([
        dbc.Col([
            html.Div(f"input: {e['input_kind']} · trained: {e['trained']}"
                     + (f" · last error: {e['last_error']}" if e["last_error"] else ""), className="small"),
            html.Div("latest: " + (f"P(down/flat/up) {o['probs']['down']:.2f}/{o['probs']['flat']:.2f}/"
                                   f"{o['probs']['up']:.2f} · conf {o['confidence']:.2f}" if o else "no output yet"),
                     className="small"),
            html.Div(trainer_line(e.get("trainer")), id={"type": "trainer-status", "name": name},
                     className="small"),
            *checkpoint_block(registry, name),
        ], width=6),
        dbc.Col([
            loss_block(registry, name, wctx.cfg.resolve(wctx.cfg.training.runs_dir)),
            dcc.Graph(id={"type": "online-loss", "name": name}, config={"displayModeBar": False},
                      figure=online_figure(snap, name)) if e["trainable"] else None,
        ], width=6),
    ])
    return dbc.Card([dbc.CardHeader(header), dbc.CardBody(body, className="p-2")], className="mb-2",
                    id=f"expert-card-{name}")


def online_figure(snap: Any, name: str) -> Any:
    """The live loss curve of ``name``'s online trainer, with the swaps applied to it."""
    t = experts_api.trainer_json(getattr(snap, "trainers", {}).get(name), history=True)
    swaps = [experts_api.swap_json(s) for s in getattr(snap, "swaps", ()) if s.expert == name]
    return figures.online_loss_figure(t["history"] if t else None, swaps, f"{name}: live training")


def online_mark(snap: Any, name: str) -> list[int]:
    """What the live curve of ``name`` shows: (published rounds, swaps) - redraw only when it moves."""
    t = getattr(snap, "trainers", {}).get(name)
    return [len(getattr(t, "history", ())) if t is not None else 0,
            sum(1 for s in getattr(snap, "swaps", ()) if s.expert == name)]


def trainer_line(t: dict[str, Any] | None) -> str:
    """One line of live trainer status for an expert card."""
    if not t:
        return "trainer: not started"
    def num(v: Any, fmt: str) -> str:
        return format(v, fmt) if v is not None else "—"
    line = (f"trainer: {'running' if t['running'] else 'stopped'} · steps {t['steps']} · loss {num(t['loss'], '.4f')}"
            f" · {num(t['samples_per_s'], '.0f')} samples/s · promotions {t['promotions']}"
            f" · challenger {num(t['challenger_score'], '.4f')} vs live {num(t['champion_score'], '.4f')}"
            f" · restarts {t['restarts']}")
    return line + (f" · error: {t['error']}" if t.get("error") else "")


def layout(wctx: Any) -> Any:
    snap = wctx.engine.snapshot()
    experts = experts_api.experts_json(snap)
    tb = wctx.cfg.dashboard.tensorboard_url
    return html.Div([
        dbc.Row([
            dbc.Col(html.H4("Models"), width=6),
            dbc.Col(html.A("Open TensorBoard ↗", href=tb, target="_blank", id="tensorboard-link",
                           className="btn btn-outline-info btn-sm float-end"), width=6),
        ]),
        first_run.models_panel(),
        html.Div(id="models-msg", className="small mb-2"),
        html.Div(id="models-train-msg", className="small mb-2"),
        html.Div(id="models-rollback-msg", className="small mb-2"),
        dcc.Store(id="online-marks", data={e["name"]: online_mark(snap, e["name"]) for e in experts}),
        dcc.Interval(id="models-interval", interval=wctx.cfg.dashboard.update_interval_ms),
        html.Div([expert_card(wctx, e, snap) for e in experts] or
                 dbc.Alert("The engine has no experts configured (models.yml).", color="warning"),
                 id="models-list"),
    ])


def register(app: Dash, wctx: Any) -> None:
    engine = wctx.engine
    first_run.register_models(app, engine)

    @app.callback(Output({"type": "trainer-status", "name": ALL}, "children"),
                  Output({"type": "expert-version", "name": ALL}, "children"),
                  Output({"type": "expert-rollback", "name": ALL}, "disabled"),
                  Output({"type": "online-loss", "name": ALL}, "figure"),
                  Output("online-marks", "data"),
                  Input("models-interval", "n_intervals"),
                  State({"type": "trainer-status", "name": ALL}, "id"),
                  State({"type": "expert-rollback", "name": ALL}, "id"),
                  State({"type": "online-loss", "name": ALL}, "id"),
                  State("online-marks", "data"))
    def _trainer_status(_n: int, ids: list[dict], rb_ids: list[dict], fig_ids: list[dict],
                        marks: dict | None) -> Any:
        snap = engine.snapshot()
        rows = {e["name"]: e for e in experts_api.experts_json(snap)}
        names = [i["name"] for i in ids]
        marks = dict(marks or {})
        figs = []
        for i in fig_ids:  # a figure goes over the wire only when a round or a swap was added
            n = i["name"]
            m = online_mark(snap, n)
            figs.append(no_update if marks.get(n) == m else online_figure(snap, n))
            marks[n] = m
        return ([trainer_line(rows.get(n, {}).get("trainer")) for n in names],
                [f"version {rows[n]['version']}" if n in rows else "" for n in names],
                [not rows.get(i["name"], {}).get("can_rollback", False) for i in rb_ids],
                figs, marks)

    @app.callback(Output("models-rollback-msg", "children"),
                  Input({"type": "expert-rollback", "name": ALL}, "n_clicks"), prevent_initial_call=True)
    def _rollback(clicks: list[int | None]) -> Any:
        trig = ctx.triggered_id
        if not isinstance(trig, dict) or not any(clicks):
            return no_update
        name = trig["name"]
        try:
            engine.rollback(name)
        except (ValueError, AttributeError) as exc:
            return dbc.Alert(f"not rolled back: {exc}", color="warning", className="py-1")
        return dbc.Alert(f"{name}: rolling back to the previous version before the next decision",
                         color="info", className="py-1", id="rollback-ack")

    @app.callback(Output("models-msg", "children"),
                  Input({"type": "expert-enabled", "name": ALL}, "value"),
                  State({"type": "expert-enabled", "name": ALL}, "id"), prevent_initial_call=True)
    def _toggle(values: list[bool], ids: list[dict]) -> Any:
        trig = ctx.triggered_id
        if not isinstance(trig, dict):
            return no_update
        name = trig["name"]
        value = next(v for v, i in zip(values, ids, strict=True) if i["name"] == name)
        try:
            engine.set_expert_enabled(name, bool(value))
        except ValueError as exc:  # e.g. Kronos "not available": the fix is in the message
            return dbc.Alert(str(exc), color="warning", className="py-1", id="models-ack")
        return dbc.Alert(f"{name} {'enabled' if value else 'disabled'}: applied to the next decision",
                         color="info", className="py-1", id="models-ack")

    @app.callback(Output("models-train-msg", "children"),
                  Input({"type": "expert-training", "name": ALL}, "value"),
                  State({"type": "expert-training", "name": ALL}, "id"), prevent_initial_call=True)
    def _train(values: list[bool], ids: list[dict]) -> Any:
        trig = ctx.triggered_id
        if not isinstance(trig, dict):
            return no_update
        name = trig["name"]
        value = bool(next(v for v, i in zip(values, ids, strict=True) if i["name"] == name))
        try:
            engine.set_training(name, value)
        except (ValueError, AttributeError) as exc:
            return dbc.Alert(f"training not changed: {exc}", color="warning", className="py-1")
        return dbc.Alert(f"{name}: live training {'started' if value else 'stopped'}", color="info",
                         className="py-1")
