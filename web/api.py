"""REST API on the Dash app's Flask server, plus the snapshot -> JSON views the pages share.

Every endpoint reads one immutable ``EngineSnapshot`` (one reference copy, no engine lock held) or
sends one command to the engine. Bodies are validated with pydantic (extra keys forbidden); bad input
answers 4xx with a message, and anything unexpected becomes a JSON 500 without internals. Shapes are
documented in web/openapi.yaml and the README.
"""

from __future__ import annotations

import json
import logging
import math
import queue
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
from flask import Blueprint, Flask, Response, current_app, jsonify, request
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from werkzeug.exceptions import HTTPException

from core.data.source_base import SourceStatus
from core.outcomes import RollingMetrics
from core.snapshot import EngineSnapshot, KronosSummary
from core.types import TIMEFRAME_MS, Decision, ExpertOutput, Fill, Order, Position, Thresholds
from web.auth import who
from web.control_audit import ControlAudit

log = logging.getLogger(__name__)

MAX_CANDLES = 5000


class ApiError(Exception):
    def __init__(self, status: int, message: str, error: str = "bad_request") -> None:
        super().__init__(message)
        self.status, self.message, self.error = status, message, error


# ---------------------------------------------------------------- request bodies


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class ThresholdsBody(_Body):
    buy: float = Field(ge=0, le=1)
    sell: float = Field(ge=0, le=1)
    min_confidence: float = Field(0.0, ge=0, le=1)
    force: bool = False  # apply thresholds that would trade (nearly) every bar

    @field_validator("buy", "sell", "min_confidence", mode="before")
    @classmethod
    def _num(cls, v: Any) -> Any:
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise ValueError("must be a number in [0, 1]")
        try:
            x = float(v)
        except OverflowError:
            raise ValueError("must be a number in [0, 1]") from None
        if not math.isfinite(x):
            raise ValueError("must be a finite number in [0, 1]")
        return x


def threshold_problem(t: Thresholds, floor: float) -> str | None:
    """Why thresholds would trade (nearly) every bar, or None. BUY fires on P(up) >= buy and SELL on
    P(down) >= sell: below ``floor`` a side fires on weak evidence, and with buy + sell <= 1 both
    sides can fire on the same bar (the bands cross)."""
    low = [f"{n} {v:g}" for n, v in (("buy", t.buy), ("sell", t.sell)) if v < floor]
    if low:
        return (f"{' and '.join(low)} below the floor {floor:g} (dashboard.threshold_floor) would trade "
                "on weak evidence, nearly every bar; send force: true to apply anyway")
    if t.buy + t.sell <= 1.0:
        return (f"buy {t.buy:g} + sell {t.sell:g} <= 1: the BUY and SELL bands cross, so a bar can trigger "
                "both; send force: true to apply anyway")
    return None


class StreamBody(_Body):
    symbol: str
    timeframe: str

    @field_validator("symbol")
    @classmethod
    def _sym(cls, v: str) -> str:
        if "/" not in v or v.startswith("/") or v.endswith("/") or len(v) > 40:
            raise ValueError("must be a ccxt symbol like BTC/USDT")
        return v

    @field_validator("timeframe")
    @classmethod
    def _tf(cls, v: str) -> str:
        if v not in TIMEFRAME_MS:
            raise ValueError(f"must be one of {', '.join(TIMEFRAME_MS)}")
        return v


MAX_INT_DIGITS = 30  # no field needs more; a 400-digit integer would overflow float()


def _big_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise ValueError(f"integer with {len(text)} digits")
    return int(text)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _float(text: str) -> float:
    x = float(text)
    if not math.isfinite(x):
        raise ValueError(f"number {text[:40]} out of range")
    return x


def loads_strict(data: bytes) -> Any:
    """JSON without NaN/Infinity, overflowing numbers or absurd nesting; ApiError(422) says which."""
    try:
        return json.loads(data, parse_int=_big_int, parse_float=_float, parse_constant=_no_constant)
    except RecursionError:
        raise ApiError(422, "request body nested too deeply") from None
    except UnicodeDecodeError:
        raise ApiError(400, "request body is not UTF-8 JSON") from None
    except json.JSONDecodeError as exc:
        raise ApiError(400, f"request body is not valid JSON: {exc.msg} at {exc.pos}") from None
    except ValueError as exc:
        raise ApiError(422, f"request body: {exc}") from None


def parse_body(model: type[_Body]) -> Any:
    data = request.get_data(cache=True)  # capped by the guard (request.max_content_length -> 413)
    if not data.strip():
        raise ApiError(400, "request body must be a JSON object (Content-Type: application/json)")
    raw = loads_strict(data)
    if not isinstance(raw, dict):
        raise ApiError(400, f"request body must be a JSON object, got {type(raw).__name__}")
    try:
        return model.model_validate(raw)
    except ValidationError as err:
        e = err.errors()[0]
        where = ".".join(str(p) for p in e["loc"]) or "(body)"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = f"unknown field; allowed: {', '.join(model.model_fields)}"
        raise ApiError(422, f"{where}: {msg}") from None


# ---------------------------------------------------------------- snapshot -> JSON views


def _f(v: Any) -> float | None:
    try:
        x = float(v)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(x) or math.isinf(x) else x


def _jsonable(v: Any) -> Any:
    if isinstance(v, np.ndarray):
        return [_jsonable(x) for x in v.tolist()]
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float):
        return _f(v)
    if isinstance(v, Mapping):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_jsonable(x) for x in v]
    if isinstance(v, str | int | bool) or v is None:
        return v
    return str(v)


def candles_json(df: pd.DataFrame | None, limit: int | None = None) -> dict[str, list]:
    """Columnar candles (compact on the wire): {ts: [...], open: [...], ...}."""
    cols = ("ts", "open", "high", "low", "close", "volume")
    if df is None or df.empty:
        return {c: [] for c in cols}
    d = df.iloc[-limit:] if limit else df
    out: dict[str, list] = {"ts": [int(t) for t in d["ts"].to_numpy(np.int64)]}
    for c in cols[1:]:
        out[c] = [_f(v) for v in d[c].to_numpy(float)]
    return out


def thresholds_json(t: Thresholds) -> dict[str, float]:
    return {"buy": t.buy, "sell": t.sell, "min_confidence": t.min_confidence}


def output_json(o: ExpertOutput) -> dict[str, Any]:
    return {
        "expert": o.expert, "model_version": o.model_version, "ts": int(o.ts), "horizon": o.horizon,
        "probs": {"down": _f(o.probs[0]), "flat": _f(o.probs[1]), "up": _f(o.probs[2])},
        "expected_return": _f(o.expected_return), "confidence": _f(o.confidence),
        "latency_ms": _f(o.latency_ms),
    }


def decision_json(d: Decision | None) -> dict[str, Any] | None:
    if d is None:
        return None
    return {
        "id": d.id, "ts": int(d.ts), "symbol": d.symbol, "action": str(d.action),
        "probs": {"down": _f(d.probs[0]), "flat": _f(d.probs[1]), "up": _f(d.probs[2])},
        "expected_return": _f(d.expected_return),
        "weights": {k: _f(v) for k, v in d.weights.items()},
        "thresholds": thresholds_json(d.thresholds), "target_position": _f(d.target_position),
        "reason": d.reason,
    }


def kronos_json(k: KronosSummary | None, now_ms: int) -> dict[str, Any] | None:
    if k is None:
        return None
    return {
        "ts": int(k.ts), "model_version": k.model_version, "horizon": int(k.horizon),
        "samples": int(k.samples), "p_up": _f(k.p_up), "expected_return": _f(k.expected_return),
        "future_ts": [int(t) for t in np.asarray(k.future_ts, dtype=np.int64)],
        "median": _jsonable(np.asarray(k.median, dtype=float)),
        "bands": {q: _jsonable(np.asarray(v, dtype=float)) for q, v in k.bands.items()},
        "band_width": band_width(k), "latency_ms": _f(k.latency_ms),
        "age_s": _f((now_ms - k.finished_ms) / 1000.0) if k.finished_ms else None,
    }


def band_width(k: KronosSummary | None) -> float | None:
    """Relative width of the widest band at the horizon's end: (hi - lo) / median."""
    if k is None or not len(k.median):
        return None
    keys = sorted(k.bands)
    if len(keys) < 2:
        return None
    lo, hi = np.asarray(k.bands[keys[0]], float), np.asarray(k.bands[keys[-1]], float)
    m = float(np.asarray(k.median, float)[-1])
    return _f((hi[-1] - lo[-1]) / m) if m else None


def latest_prediction_json(snap: EngineSnapshot) -> dict[str, Any]:
    return {
        "symbol": snap.symbol, "timeframe": snap.timeframe,
        "decision": decision_json(snap.decision),
        "experts": {n: output_json(o) for n, o in snap.expert_outputs.items()},
        "gate_weights": {k: _f(v) for k, v in snap.gate_weights.items()},
        "kronos": kronos_json(snap.kronos, snap.ts_ms),
    }


def source_json(s: SourceStatus) -> dict[str, Any]:
    if isinstance(s, Mapping):
        return _jsonable(s)
    fields = getattr(s, "__dataclass_fields__", None)
    if fields:
        return {k: _jsonable(getattr(s, k)) for k in fields}
    return {"status": str(s)}


def last_candle_ts(snap: EngineSnapshot) -> int | None:
    df = snap.candles.get(snap.timeframe) if snap.timeframe else None
    return int(df["ts"].iloc[-1]) if df is not None and len(df) else None


def streaming_now(snap: EngineSnapshot) -> bool:
    """The engine wants a stream AND a source delivers it: a stream whose sources all dropped (a failed
    symbol, a replay that reached its end) is not reported as streaming."""
    up = [bool(getattr(s, "connected", True)) for s in snap.sources.values()]
    return bool(snap.streaming) and (not up or any(up))


def status_json(snap: EngineSnapshot) -> dict[str, Any]:
    last = last_candle_ts(snap)
    return {
        "ts_ms": int(snap.ts_ms), "mode": snap.mode, "running": snap.running, "streaming": streaming_now(snap),
        "symbol": snap.symbol, "timeframe": snap.timeframe, "last_candle_ts": last,
        "sources": {n: source_json(s) for n, s in snap.sources.items()},
        "inference_latency_ms": {k: _f(v) for k, v in snap.inference_latency_ms.items()},
        "kill_switch": {"active": snap.kill_switch.active, "reason": snap.kill_switch.reason,
                        "since_ms": snap.kill_switch.since_ms},
        "errors": [{"ts_ms": e.ts_ms, "where": e.where, "message": e.message} for e in snap.errors[-20:]],
        "versions": dict(snap.versions),
        "market": market_json(snap),
        "broker": snap.trading.broker,
        "trading": trading_json(snap),
    }


def trading_json(snap: EngineSnapshot) -> dict[str, Any]:
    """The account traded (mode and broker are fixed at start: no route changes them) and its last
    reconciliation with the exchange."""
    t = snap.trading
    return {"mode": t.mode, "broker": t.broker, "account": t.account, "unresolved_intents": t.unresolved_intents,
            "stale_bars": t.stale_bars, "halted": t.halted or None, "protection": t.protection,
            "protective_orders": t.protective_orders,
            "reconcile": {"ok": t.reconcile_ok, "ts_ms": t.reconcile_ts_ms, "summary": t.reconcile_summary,
                          "differences": list(t.differences)}}


def market_json(snap: EngineSnapshot) -> dict[str, Any]:
    """The active symbol's venue and session; open / next open at the engine's clock."""
    m = snap.market
    return {"exchange": m.exchange, "kind": m.kind, "session": m.session, "calendar": m.calendar, "tz": m.tz,
            "is_open": m.is_open, "clock_ms": m.clock_ms, "session_open_ms": m.session_open_ms,
            "session_close_ms": m.session_close_ms, "next_open_ms": m.next_open_ms}


def metrics_json(m: RollingMetrics | None) -> dict[str, Any] | None:
    """The engine's rolling outcome metrics of one expert (core/outcomes.RollingMetrics): scores of
    its last ``n`` matured calls by the label rule of core/labels.py. None before any call matured."""
    if m is None:
        return None
    return {"n": int(m.n), "horizon": int(m.horizon), "accuracy": _f(m.accuracy), "log_loss": _f(m.log_loss),
            "brier": _f(m.brier), "ece": _f(m.ece), "trades": int(m.trades), "trade_return": _f(m.trade_return),
            "last_ts": int(m.last_ts)}


def fill_json(f: Fill) -> dict[str, Any]:
    return {"id": f.id, "order_id": f.order_id, "symbol": f.symbol, "side": f.side,
            "amount": _f(f.amount), "price": _f(f.price), "fee": _f(f.fee), "ts": int(f.ts)}


def order_json(o: Order) -> dict[str, Any]:
    return {"id": o.id, "symbol": o.symbol, "side": o.side, "type": o.type, "amount": _f(o.amount),
            "price": _f(o.price), "status": o.status, "filled": _f(o.filled), "ts": int(o.ts)}


def position_json(p: Position) -> dict[str, Any]:
    return {"symbol": p.symbol, "amount": _f(p.amount), "avg_price": _f(p.avg_price),
            "realised_pnl": _f(p.realised_pnl), "unrealised_pnl": _f(p.unrealised_pnl)}


def equity_json(eq: pd.DataFrame) -> dict[str, list]:
    cols = [c for c in ("ts", "equity", "cash", "drawdown") if c in eq.columns]
    out: dict[str, list] = {}
    for c in cols:
        out[c] = [int(v) for v in eq[c].to_numpy(np.int64)] if c == "ts" else [_f(v) for v in eq[c]]
    return out


# ---------------------------------------------------------------- endpoints


def _int_arg(name: str, default: int, lo: int, hi: int) -> int:
    raw = request.args.get(name)
    if raw is None:
        return default
    try:
        v = int(raw)
    except ValueError:
        raise ApiError(400, f"query parameter {name!r} must be an integer") from None
    if not lo <= v <= hi:
        raise ApiError(400, f"query parameter {name!r} must be within [{lo}, {hi}]")
    return v


def stream_problem(engine: Any, symbol: str, timeframe: str) -> str | None:
    """Why the engine could not stream ``symbol`` (checked before the running stream is touched): a
    replay needs the series in the store; live/paper needs it stored or configured (data.symbols,
    markets)."""
    base = getattr(engine, "timeframe", timeframe)
    if timeframe != base:
        return (f"timeframe {timeframe!r}: the engine streams its base timeframe {base} "
                "(higher timeframes are resampled from it)")
    store = getattr(engine, "store", None)
    stored = set()
    if store is not None:
        try:
            stored = {k.symbol for k in store.series() if k.timeframe == timeframe}
        except Exception as exc:  # a store that cannot answer: say so rather than guess
            return f"cannot check the store for {symbol}: {exc}"
    if getattr(engine, "mode", "") == "replay":
        if symbol in stored:
            return None
        return (f"symbol {symbol!r} has no stored {timeframe} candles to replay; stored: "
                f"{', '.join(sorted(stored)) or 'none'}")
    cfg = getattr(engine, "cfg", None)
    configured = set(cfg.data.symbols) | set(cfg.markets) if cfg is not None else set()
    if symbol in stored or symbol in configured:
        return None
    return (f"symbol {symbol!r} is neither stored nor configured (data.symbols / markets); known: "
            f"{', '.join(sorted(stored | configured)) or 'none'}")


def build_blueprint(engine: Any, threshold_floor: float = 0.5, audit: ControlAudit | None = None
                    ) -> Blueprint:
    bp = Blueprint("api", __name__, url_prefix="/api")
    audit = audit or ControlAudit(None)

    @bp.get("/initial_data")
    def initial_data() -> Response:
        snap = engine.snapshot()
        tf = request.args.get("timeframe", snap.timeframe)
        if tf not in TIMEFRAME_MS:
            raise ApiError(400, f"timeframe must be one of {', '.join(TIMEFRAME_MS)}")
        symbol = request.args.get("symbol", snap.symbol)
        if symbol != snap.symbol:
            raise ApiError(404, f"symbol {symbol!r} is not streaming (active: {snap.symbol!r})", "not_found")
        if tf not in snap.candles:
            raise ApiError(404, f"no {tf} candles cached (available: {', '.join(snap.candles) or 'none'})",
                           "not_found")
        limit = _int_arg("limit", 1500, 1, MAX_CANDLES)
        return jsonify(symbol=snap.symbol, timeframe=tf, candles=candles_json(snap.candles[tf], limit),
                       prediction=latest_prediction_json(snap))

    @bp.get("/latest_prediction")
    def latest_prediction() -> Response:
        return jsonify(latest_prediction_json(engine.snapshot()))

    @bp.get("/generate_prediction")
    def generate_prediction() -> Response:
        try:
            d = engine.generate_prediction()
        except (RuntimeError, ValueError) as exc:  # e.g. not enough history yet
            raise ApiError(409, f"cannot generate a prediction now: {exc}", "conflict") from None
        except queue.Empty:  # the engine thread did not answer in time (busy machine): try again later
            raise ApiError(409, "cannot generate a prediction now: the engine did not answer in time",
                           "conflict") from None
        return jsonify(decision=decision_json(d), experts={o.expert: output_json(o) for o in d.outputs})

    @bp.post("/start_stream")
    def start_stream() -> Response:
        body = parse_body(StreamBody)
        problem = stream_problem(engine, body.symbol, body.timeframe)
        if problem:  # refused before the running stream is stopped
            raise ApiError(422, problem)
        try:
            engine.start_stream(body.symbol, body.timeframe)
        except ValueError as exc:
            raise ApiError(422, str(exc)) from None
        audit.record(who(), "start_stream", symbol=body.symbol, timeframe=body.timeframe)
        return jsonify(ok=True, symbol=body.symbol, timeframe=body.timeframe)

    @bp.post("/stop_stream")
    def stop_stream() -> Response:
        engine.stop_stream()
        audit.record(who(), "stop_stream")
        return jsonify(ok=True)

    @bp.get("/status")
    def status() -> Response:
        return jsonify(status_json(engine.snapshot()))

    @bp.route("/thresholds", methods=["GET", "PUT"])
    def thresholds() -> Response:
        if request.method == "PUT":
            body = parse_body(ThresholdsBody)
            t = Thresholds(buy=body.buy, sell=body.sell, min_confidence=body.min_confidence)
            problem = threshold_problem(t, threshold_floor)
            if problem and not body.force:
                raise ApiError(422, problem, "unsafe_thresholds")
            engine.set_thresholds(t)
            audit.record(who(), "set_thresholds", buy=t.buy, sell=t.sell, min_confidence=t.min_confidence,
                         forced=bool(problem))
            return jsonify(ok=True, thresholds=thresholds_json(t),
                           note="applied to the next decision")
        return jsonify(thresholds_json(engine.snapshot().thresholds))

    @bp.get("/trades")
    def trades() -> Response:
        snap = engine.snapshot()
        limit = _int_arg("limit", 200, 1, 10_000)
        return jsonify(trades=[fill_json(f) for f in snap.trades[-limit:]],
                       open_orders=[order_json(o) for o in snap.open_orders],
                       positions=[position_json(p) for p in snap.positions])

    @bp.get("/equity")
    def equity() -> Response:
        snap = engine.snapshot()
        return jsonify(equity_json(snap.equity))

    @bp.post("/kill_switch/reset")
    def reset_kill_switch() -> Response:
        engine.reset_kill_switch()
        audit.record(who(), "reset_kill_switch")
        return jsonify(ok=True)

    @bp.route("/<path:rest>", methods=["GET", "POST", "PUT", "PATCH", "DELETE"])
    def unknown(rest: str) -> Response:
        # without this, Dash's catch-all page route would answer unknown /api/ paths with HTML 200
        adapter = current_app.url_map.bind_to_environ(request.environ)
        allowed = []
        for m in ("GET", "PUT", "POST", "PATCH"):
            try:
                endpoint, _ = adapter.match(request.path, method=m)
            except HTTPException:
                continue
            if endpoint != "api.unknown":
                allowed.append(m)
        if allowed:
            raise ApiError(405, f"{request.method} not allowed on /api/{rest}; allowed: {', '.join(allowed)}",
                           "method_not_allowed")
        raise ApiError(404, f"no endpoint /api/{rest}; see web/openapi.yaml", "not_found")

    return bp


def install_api(server: Flask, engine: Any, threshold_floor: float = 0.5, audit: ControlAudit | None = None
                ) -> None:
    from web.annotations_api import build_annotations_blueprint  # these modules import this one
    from web.experts_api import build_experts_blueprint

    server.register_blueprint(build_blueprint(engine, threshold_floor, audit))
    server.register_blueprint(build_experts_blueprint(engine, audit))
    server.register_blueprint(build_annotations_blueprint(engine))

    @server.errorhandler(ApiError)
    def _api_error(exc: ApiError) -> tuple[Response, int]:
        return jsonify(error=exc.error, message=exc.message), exc.status

    @server.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Response | HTTPException:
        if not request.path.startswith("/api/"):
            return exc
        resp = jsonify(error=(exc.name or "error").lower().replace(" ", "_"), message=exc.description)
        resp.status_code = exc.code or 500
        return resp

    @server.errorhandler(RecursionError)
    @server.errorhandler(OverflowError)
    def _bad_numbers(exc: Exception) -> tuple[Response, int]:
        # a body parsed outside parse_body (Dash's callbacks): absurd nesting or numbers are bad input
        return jsonify(error="unprocessable", message=f"request body rejected: {type(exc).__name__}"), 422

    @server.errorhandler(Exception)
    def _unexpected(exc: Exception) -> tuple[Response, int]:
        # log the details server-side; the client learns only that it failed
        log.exception("unhandled error on %s %s", request.method, request.path)
        return jsonify(error="internal_error", message="internal error; see the server log"), 500
