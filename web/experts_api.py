"""REST routes of the experts, their training and Train now (``/api/experts``, ``/api/train_now``), and
the expert/trainer JSON views the pages share; same error shape and auth as web/api.py."""

from __future__ import annotations

from typing import Any, Literal

from flask import Blueprint, Response, jsonify, request

from core.snapshot import EngineSnapshot, SwapEvent
from core.types import TrainerStatus
from web.api import ApiError, _Body, _f, metrics_json, output_json, parse_body
from web.auth import who
from web.control_audit import ControlAudit

TRAINING_UNAVAILABLE = "this engine has no online trainer (it cannot start training or roll back)"


class TrainNowBody(_Body):
    preset: Literal["quick", "full"] = "quick"


class ExpertPatchBody(_Body):
    enabled: bool | None = None
    training: bool | None = None


def experts_json(snap: EngineSnapshot) -> list[dict[str, Any]]:
    rows = []
    for name, st in snap.experts.items():
        o = snap.expert_outputs.get(name)
        live = snap.live_metrics.get(name)
        rows.append({
            "name": name, "enabled": st.enabled, "training": st.training, "version": st.version,
            "trained": st.trained, "input_kind": st.input_kind, "last_error": st.last_error,
            "trainable": st.trainable and snap.training_enabled,
            "gate_weight": _f(snap.gate_weights.get(name)),
            "ood": _f(o.extras.get("ood")) if o is not None else None,
            "recent_accuracy": _f(live.accuracy) if live is not None else None,
            "live_metrics": metrics_json(live), "stored_metrics": metrics_json(snap.stored_metrics.get(name)),
            "latest": output_json(o) if o is not None else None,
            "trainer": trainer_json(snap.trainers.get(name)),
            "can_rollback": st.can_rollback,
        })
    return rows


def trainer_json(t: TrainerStatus | None, history: bool = False) -> dict[str, Any] | None:
    """Live status of an expert's online trainer (None when it never ran in this stream); with
    ``history`` also every published round (the live loss curve), columnar, oldest first."""
    if t is None:
        return None
    out: dict[str, Any] = {"running": bool(t.running), "steps": int(t.steps), "loss": _f(t.loss),
           "samples_per_s": _f(t.samples_per_s), "last_publish": t.last_publish,
           "live_version": t.live_version, "challenger_score": _f(t.challenger_score),
           "champion_score": _f(t.champion_score), "promotions": int(t.promotions),
           "restarts": int(t.restarts), "last_verdict": t.last_verdict, "error": t.error,
           "rounds": len(t.history)}
    if history:
        pts = t.history
        out["history"] = {
            "ts": [p.ts_ms for p in pts], "steps": [p.steps for p in pts], "loss": [_f(p.loss) for p in pts],
            "samples_per_s": [_f(p.samples_per_s) for p in pts],
            "val_challenger": [_f(p.val_challenger) for p in pts],
            "val_champion": [_f(p.val_champion) for p in pts], "version": [p.version for p in pts]}
    return out


def swap_json(s: SwapEvent) -> dict[str, Any]:
    return {"ts": int(s.ts_ms), "bar_ts": s.bar_ts, "expert": s.expert, "kind": s.kind, "version": s.version,
            "previous": s.previous, "champion_score": _f(s.champion_score),
            "challenger_score": _f(s.challenger_score)}


def build_experts_blueprint(engine: Any, audit: ControlAudit | None = None) -> Blueprint:
    bp = Blueprint("experts_api", __name__, url_prefix="/api")
    audit = audit or ControlAudit(None)

    @bp.get("/experts")
    def experts() -> Response:
        snap = engine.snapshot()
        return jsonify(experts=experts_json(snap), climatology_weight=_f(snap.gate_weights.get("climatology")))

    @bp.patch("/experts/<name>")
    def patch_expert(name: str) -> Response:
        body = parse_body(ExpertPatchBody)
        snap = engine.snapshot()
        if name not in snap.experts:
            raise ApiError(404, f"unknown expert {name!r}; known: {', '.join(snap.experts)}", "not_found")
        if body.enabled is None and body.training is None:
            raise ApiError(422, "send at least one of 'enabled', 'training'")
        if body.training is not None:
            if not hasattr(engine, "set_training"):
                if body.training:
                    raise ApiError(409, TRAINING_UNAVAILABLE, "conflict")
            else:
                try:  # the engine says why not: --no-training, a candle expert (trains offline), ...
                    engine.set_training(name, body.training)
                except ValueError as exc:
                    raise ApiError(409, str(exc), "conflict") from None
        if body.enabled is not None:
            try:
                engine.set_expert_enabled(name, body.enabled)
            except ValueError as exc:  # an expert without weights (Kronos "not available")
                raise ApiError(409, str(exc), "conflict") from None
        audit.record(who(), "patch_expert", name=name, enabled=body.enabled, training=body.training)
        return jsonify(ok=True, name=name, enabled=body.enabled, training=body.training)

    @bp.get("/experts/<name>/training")
    def expert_training(name: str) -> Response:
        snap = engine.snapshot()
        if name not in snap.experts:
            raise ApiError(404, f"unknown expert {name!r}; known: {', '.join(snap.experts)}", "not_found")
        st = snap.experts[name]
        return jsonify(name=name, training=bool(st.training), version=st.version,
                       can_rollback=bool(getattr(st, "can_rollback", False)),
                       trainer=trainer_json(getattr(snap, "trainers", {}).get(name), history=True),
                       swaps=[swap_json(s) for s in getattr(snap, "swaps", ()) if s.expert == name])

    @bp.post("/experts/<name>/rollback")
    def rollback_expert(name: str) -> Response:
        snap = engine.snapshot()
        if name not in snap.experts:
            raise ApiError(404, f"unknown expert {name!r}; known: {', '.join(snap.experts)}", "not_found")
        if not hasattr(engine, "rollback"):
            raise ApiError(409, TRAINING_UNAVAILABLE, "conflict")
        try:  # no previous version, a candle expert, training off: the engine's reason
            engine.rollback(name)
        except ValueError as exc:
            raise ApiError(409, str(exc), "conflict") from None
        audit.record(who(), "rollback", name=name)
        return jsonify(ok=True, name=name, replacing=snap.experts[name].version)

    @bp.route("/train_now", methods=["GET", "POST"])
    def train_now() -> Response:
        """Train now: POST starts offline training of the enabled experts and the gate (quick | full)
        in a background process; GET (and the POST's answer) is the job's progress."""
        if request.method == "POST":
            body = parse_body(TrainNowBody)
            if not hasattr(engine, "train_now"):
                raise ApiError(409, "train now is not available in this engine", "conflict")
            try:
                engine.train_now(body.preset)
            except ValueError as exc:
                raise ApiError(409, str(exc), "conflict") from None
        snap = engine.snapshot()
        return jsonify(training=dict(getattr(snap, "offline_training", {})),
                       untrained=list(getattr(snap, "untrained", ())),
                       not_traded=int(getattr(snap, "not_traded", 0)))

    return bp
