"""REST routes of the annotations (``/api/annotations``) on the dashboard's Flask server.

They read and write the engine's store (the single writer connection, shared under its lock) and
answer the same error shape as web/api.py; auth is the server-wide policy (web/auth.py).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from flask import Blueprint, Response, jsonify, request
from pydantic import Field

from core.annotations import io
from core.annotations.cases import Outcome
from core.annotations.model import DIRECTIONS, Annotation, LabelSpan
from core.annotations.service import cases_of, outcome_of
from core.annotations.store import AnnotationError, AnnotationStore, snap
from core.config import FeaturesConfig
from core.types import TIMEFRAME_MS, SeriesKey
from web.api import ApiError, _Body, parse_body


class SpanBody(_Body):
    label: str
    start_ts: int
    end_ts: int


class AnnotationBody(_Body):
    symbol: str = Field(min_length=1, max_length=40)
    timeframe: str
    exchange: str | None = None
    entry_ts: int
    exit_ts: int
    entry_price: float | None = Field(None, gt=0)
    exit_price: float | None = Field(None, gt=0)
    direction: str | None = None
    spans: list[SpanBody] | None = None
    notes: str = Field("", max_length=4000)
    tags: list[str] = Field(default_factory=list, max_length=32)
    author: str = Field("", max_length=100)


class AnnotationPatch(_Body):
    entry_ts: int | None = None
    exit_ts: int | None = None
    entry_price: float | None = Field(None, gt=0)
    exit_price: float | None = Field(None, gt=0)
    direction: str | None = None
    spans: list[SpanBody] | None = None
    notes: str | None = Field(None, max_length=4000)
    tags: list[str] | None = Field(None, max_length=32)


def outcome_json(o: Outcome) -> dict[str, Any]:
    return {"pnl_pct": o.pnl_pct, "holding_bars": o.holding_bars, "holding_ms": o.holding_ms,
            "mfe_pct": o.mfe_pct, "mae_pct": o.mae_pct}


def annotation_json(a: Annotation, o: Outcome | None) -> dict[str, Any]:
    return {**a.to_dict(), "outcome": outcome_json(o) if o is not None else None}


def _spans(body: list[SpanBody] | None) -> tuple[LabelSpan, ...]:
    try:
        return tuple(LabelSpan(s.label, s.start_ts, s.end_ts) for s in body or ())
    except ValueError as exc:
        raise ApiError(422, f"spans: {exc}") from None


def _check_choice(name: str, v: str | None, allowed: tuple[str, ...]) -> None:
    if v is not None and v not in allowed:
        raise ApiError(422, f"{name}: must be one of {', '.join(allowed)}")


def build_annotations_blueprint(engine: Any) -> Blueprint:
    bp = Blueprint("annotations_api", __name__, url_prefix="/api/annotations")

    def store_() -> AnnotationStore:
        store = getattr(engine, "store", None)
        if store is None:
            raise ApiError(409, "this engine has no store: annotations need one", "conflict")
        return AnnotationStore(store)

    def features() -> FeaturesConfig:
        models = getattr(engine, "models", None)  # models.yml holds the feature settings
        return models.features if models is not None else FeaturesConfig()

    def exchange_for(ann: AnnotationStore, symbol: str, timeframe: str) -> str:
        for k in ann.store.series():
            if k.symbol == symbol and k.timeframe == timeframe:
                return k.exchange
        raise ApiError(404, f"no stored {timeframe} candles for {symbol}", "not_found")

    def get_or_404(ann: AnnotationStore, ann_id: str) -> Annotation:
        try:
            return ann.get(ann_id)
        except KeyError:
            raise ApiError(404, f"no annotation {ann_id!r}", "not_found") from None

    def with_outcome(ann: AnnotationStore, a: Annotation) -> dict[str, Any]:
        try:
            return annotation_json(a, outcome_of(ann.store, a))
        except AnnotationError:  # candles changed under it since: still listed, without figures
            return annotation_json(a, None)

    @bp.get("")
    def list_annotations() -> Response:
        ann = store_()
        rows = ann.list(request.args.get("symbol") or None, request.args.get("timeframe") or None,
                        tag=request.args.get("tag") or None,
                        include_deleted=request.args.get("include_deleted") in ("1", "true"))
        return jsonify(annotations=[with_outcome(ann, a) for a in rows])

    @bp.post("")
    def create() -> tuple[Response, int]:
        body: AnnotationBody = parse_body(AnnotationBody)
        if body.timeframe not in TIMEFRAME_MS:
            raise ApiError(422, f"timeframe: must be one of {', '.join(TIMEFRAME_MS)}")
        _check_choice("direction", body.direction, DIRECTIONS)
        ann = store_()
        key = SeriesKey(body.exchange or exchange_for(ann, body.symbol, body.timeframe), body.symbol, body.timeframe)
        try:
            a = snap(ann.store, key, body.entry_ts, body.exit_ts, entry_price=body.entry_price,
                     exit_price=body.exit_price, direction=body.direction, spans=_spans(body.spans),
                     notes=body.notes, tags=tuple(body.tags), author=body.author)
            a = ann.add(a)
        except (AnnotationError, ValueError) as exc:
            raise ApiError(422, str(exc)) from None
        return jsonify(with_outcome(ann, a)), 201

    @bp.patch("/<ann_id>")
    def patch(ann_id: str) -> Response:
        body: AnnotationPatch = parse_body(AnnotationPatch)
        _check_choice("direction", body.direction, DIRECTIONS)
        ann = store_()
        old = get_or_404(ann, ann_id)
        changes: dict[str, Any] = {k: v for k, v in body.model_dump(exclude_unset=True).items() if v is not None}
        if "spans" in changes:
            changes["spans"] = _spans(body.spans)
        if "tags" in changes:
            changes["tags"] = tuple(changes["tags"])
        bar = TIMEFRAME_MS[old.timeframe]
        for end in ("entry", "exit"):  # a moved end snaps to its bar and, unless typed, to its close
            if f"{end}_ts" in changes:
                t = int(changes[f"{end}_ts"])
                changes[f"{end}_ts"] = t - t % bar
                if f"{end}_price" not in changes:
                    c = ann.store.candles(SeriesKey(old.exchange, old.symbol, old.timeframe), t - t % bar,
                                          t - t % bar + bar)
                    if c.empty:
                        raise ApiError(422, f"{end}_ts: no stored candle at {t}")
                    changes[f"{end}_price"] = float(c["close"].iloc[0])
        if "direction" not in changes and old.direction != "none" and ({"entry_price", "exit_price"} & set(changes)):
            new = replace(old, **{k: v for k, v in changes.items() if k in ("entry_price", "exit_price")})
            changes["direction"] = "long" if new.exit_price >= new.entry_price else "short"
        try:
            a = ann.update(ann_id, **changes)
        except (AnnotationError, ValueError) as exc:
            raise ApiError(422, str(exc)) from None
        return jsonify(with_outcome(ann, a))

    @bp.delete("/<ann_id>")
    def delete(ann_id: str) -> Response:
        ann = store_()
        get_or_404(ann, ann_id)
        a = ann.delete(ann_id)
        return jsonify(ok=True, id=a.id, version=a.version, deleted=True)

    @bp.get("/<ann_id>/case")
    def case(ann_id: str) -> Response:
        ann = store_()
        a = get_or_404(ann, ann_id)
        try:
            sets = cases_of(ann.store, features(), [a])
        except (AnnotationError, ValueError) as exc:
            raise ApiError(422, str(exc)) from None
        return jsonify(id=a.id, cases=list(io.case_lines(sets[0], {a.id: a})))

    return bp
