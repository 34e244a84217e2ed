"""Property-based fuzzing of the whole API described by web/openapi.yaml (Hypothesis), in-process on the
REAL engine replaying shared BTC/USDT data.

For every operation of the spec, generated requests mix schema-shaped bodies and queries with hostile
ones (wrong types, huge / non-finite numbers, deep nesting, junk bytes, wrong content types, odd path
names) and with / without a credential. Every answer must be: below 500; a status the spec documents for
the operation (or one of its ``x-common-responses``); JSON ``{error, message}`` for API errors; and a 200
body that validates against the documented schema. Without a credential everything but /api/health is
401. Counts go to test-output/api_fuzz.json (requests, per status class, schema violations).
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import pytest
import yaml
from helpers import auth_policy, replay_engine, wait_for
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.config import Secrets
from web.app import create_app

SPEC = yaml.safe_load((Path(__file__).resolve().parent.parent / "web" / "openapi.yaml").read_text())
COMMON = set(SPEC["x-common-responses"]["codes"])
# generate_prediction runs every expert on the engine thread (tens of ms): fewer examples there
EXAMPLES = {"/api/generate_prediction": 15}
DEFAULT_EXAMPLES = 90
COUNTS: Counter[str] = Counter()
FAILURES: list[str] = []


def _ops() -> list[tuple[str, str]]:
    return [(p, m) for p, item in SPEC["paths"].items() for m in item if m in ("get", "put", "post", "patch")]


# ---------------------------------------------------------------- a small OpenAPI 3.0 schema checker


def _resolve(ref: str) -> dict:
    node: Any = SPEC
    for part in ref.removeprefix("#/").split("/"):
        node = node[part]
    return node


def schema_errors(v: Any, schema: dict, where: str = "$") -> list[str]:
    """Violations of the OpenAPI 3.0 subset the spec uses ($ref, allOf, type, nullable, enum, bounds,
    properties, required, additionalProperties, items)."""
    if "$ref" in schema:
        return schema_errors(v, _resolve(schema["$ref"]), where)
    if v is None:
        return [] if schema.get("nullable") or not schema else [f"{where}: null not allowed"]
    errs: list[str] = []
    for sub in schema.get("allOf", []):
        errs += schema_errors(v, sub, where)
    t = schema.get("type")
    ok = {"object": isinstance(v, dict), "array": isinstance(v, list), "string": isinstance(v, str),
          "boolean": isinstance(v, bool), "integer": isinstance(v, int) and not isinstance(v, bool),
          "number": isinstance(v, int | float) and not isinstance(v, bool)}
    if t and not ok[t]:
        return errs + [f"{where}: {type(v).__name__} is not {t}"]
    if "enum" in schema and v not in schema["enum"]:
        errs.append(f"{where}: {v!r} not in {schema['enum']}")
    if isinstance(v, int | float) and not isinstance(v, bool):
        if "minimum" in schema and v < schema["minimum"] or "maximum" in schema and v > schema["maximum"]:
            errs.append(f"{where}: {v} out of bounds")
    if isinstance(v, dict):
        props = schema.get("properties", {})
        errs += [f"{where}: missing {k}" for k in schema.get("required", []) if k not in v]
        extra = schema.get("additionalProperties", True)
        for k, x in v.items():
            if k in props:
                errs += schema_errors(x, props[k], f"{where}.{k}")
            elif extra is False:
                errs.append(f"{where}: unexpected key {k}")
            elif isinstance(extra, dict):
                errs += schema_errors(x, extra, f"{where}.{k}")
    if isinstance(v, list) and "items" in schema:
        for i, x in enumerate(v[:50]):
            errs += schema_errors(x, schema["items"], f"{where}[{i}]")
    return errs


# ---------------------------------------------------------------- request strategies

JSON_ANY = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=10), c, max_size=4),
    max_leaves=12)
HOSTILE_BODIES = st.sampled_from([
    b'{"buy": 1' + b"0" * 400 + b', "sell": 0.6}', b'{"buy": 1e999, "sell": 0.6}', b'{"buy": NaN, "sell": 0.6}',
    b'{"buy": -Infinity, "sell": 0.6}', b"[" * 30_000 + b"]" * 30_000, b'{"a":' * 5_000 + b"1" + b"}" * 5_000,
    b"\xff\xfe\x00junk", b"", b"null", b"0", b'"text"', b'{"symbol": "' + b"A/" * 20_000 + b'"}',
    b"x" * 70_000,
])


def from_schema(schema: dict) -> st.SearchStrategy[Any]:
    """Values shaped like ``schema`` (within and at its edges), sometimes of the wrong type."""
    if "$ref" in schema:
        return from_schema(_resolve(schema["$ref"]))
    t = schema.get("type")
    if "enum" in schema:
        base: st.SearchStrategy[Any] = st.sampled_from(schema["enum"])
    elif t == "number":
        lo, hi = schema.get("minimum", -1e6), schema.get("maximum", 1e6)
        base = st.floats(lo, hi) | st.sampled_from([lo, hi, (lo + hi) / 2]) | st.integers(-3, 3)
    elif t == "integer":
        base = st.integers(schema.get("minimum", -10**6) - 1, schema.get("maximum", 10**6) + 1)
    elif t == "boolean":
        base = st.booleans()
    elif t == "string":
        ex = schema.get("example")
        base = st.text(max_size=30) | (st.just(ex) if ex is not None else st.nothing())
    elif t == "object":
        props = schema.get("properties", {})
        base = st.fixed_dictionaries({k: from_schema(v) for k, v in props.items() if k in schema.get("required", [])},
                                     optional={k: from_schema(v) for k, v in props.items()
                                               if k not in schema.get("required", [])})
    else:
        base = JSON_ANY
    return base | JSON_ANY if t != "object" else base


def _body_strategy(op: dict) -> st.SearchStrategy[tuple[bytes | None, str | None]]:
    content = op.get("requestBody", {}).get("content", {})
    js = content.get("application/json", {}).get("schema")
    shaped = from_schema(js).map(lambda v: (json.dumps(v).encode(), "application/json")) if js \
        else st.just((b"{}", "application/json"))
    junk = st.tuples(st.one_of(HOSTILE_BODIES, JSON_ANY.map(lambda v: json.dumps(v).encode())),
                     st.sampled_from(["application/json", "text/plain", "application/x-www-form-urlencoded",
                                      None]))
    return st.one_of(shaped, shaped, junk, st.just((None, None)))


def _param_value(p: dict, names: list[str]) -> st.SearchStrategy[str]:
    if p["in"] == "path":
        return st.sampled_from(names) | st.text(min_size=1, max_size=30)
    sch = p.get("schema", {})
    return from_schema(sch).map(lambda v: v if isinstance(v, str) else json.dumps(v)) | st.text(max_size=12)


def request_strategy(path: str, method: str, names: list[str]) -> st.SearchStrategy[dict]:
    op = SPEC["paths"][path][method]
    params = op.get("parameters", [])
    return st.fixed_dictionaries({
        "params": st.fixed_dictionaries({p["name"]: _param_value(p, names) for p in params if p["in"] == "path"},
                                        optional={p["name"]: _param_value(p, names) for p in params
                                                  if p["in"] == "query"}),
        "body": _body_strategy(op) if method != "get" else st.just((None, None)),
        "auth": st.sampled_from(["bearer", "bearer", "bearer", "bearer", "none", "wrong"]),
    })


# ---------------------------------------------------------------- the run


@pytest.fixture(scope="module")
def fuzz_app(shared_data, tmp_path_factory):
    eng, cfg, _ = replay_engine(shared_data, tmp_path_factory.mktemp("fuzz"), speed=600.0)
    # hold the replay where it is (the cache keeps its 200+ real candles): on a loaded machine a 600x
    # replay queues candles faster than the engine decides, and a preview queued behind them would wait
    eng.stop_stream()
    wait_for(lambda: not eng.snapshot().streaming, 30, "the replay held")
    app = create_app(eng, cfg, host="127.0.0.1", secrets=Secrets())
    yield app, eng
    eng.stop()
    out = Path(__file__).resolve().parent.parent / "test-output"
    out.mkdir(exist_ok=True)
    (out / "api_fuzz.json").write_text(json.dumps({**COUNTS, "failures": FAILURES[:50]}, indent=1))


def _send(client: Any, path: str, method: str, req: dict, token: str) -> Any:
    url = path
    for k, v in req["params"].items():
        if "{" + k + "}" in url:
            url = url.replace("{" + k + "}", quote(v, safe=""))
    query = {k: v for k, v in req["params"].items() if "{" + k + "}" not in path}
    if query:
        url += "?" + urlencode(query)
    headers = {"Origin": "http://localhost"}
    if req["auth"] == "bearer":
        headers["Authorization"] = f"Bearer {token}"
    elif req["auth"] == "wrong":
        headers["Authorization"] = "Bearer " + "x" * 43
    data, ctype = req["body"]
    kw: dict[str, Any] = {"headers": headers}
    if data is not None:
        kw["data"] = data
    if ctype is not None:
        kw["content_type"] = ctype
    return client.open(url, method=method.upper(), **kw)


def _check(path: str, method: str, req: dict, r: Any) -> list[str]:
    op = SPEC["paths"][path][method]
    code = str(r.status_code)
    COUNTS["requests"] += 1
    COUNTS[f"{code[0]}xx"] += 1
    problems = []
    if r.status_code >= 500:
        problems.append(f"{r.status_code} {r.get_data(as_text=True)[:200]}")
    if code not in op["responses"] and code not in COMMON:
        problems.append(f"status {code} not documented")
    public = op.get("security") == []
    page_redirect = r.status_code == 302 and not path.startswith(("/api/", "/_dash"))  # to /login
    if req["auth"] != "bearer" and not public and r.status_code not in (401, 403, 429) and not page_redirect:
        problems.append(f"{code} without a credential")
    if path.startswith("/api/") and r.status_code >= 400:
        j = r.get_json(silent=True)
        if not isinstance(j, dict) or not j.get("error") or not j.get("message"):
            problems.append("error body is not {error, message}")
    if code == "200":
        sch = op["responses"]["200"].get("content", {}).get("application/json", {}).get("schema")
        if sch is not None:
            problems += schema_errors(r.get_json(silent=True), sch)[:3]
    if problems:
        COUNTS["schema_or_status_violations"] += 1
        FAILURES.append(f"{method.upper()} {path} {req!r:.300}: {problems}")
    return problems


@pytest.mark.parametrize("path,method", _ops())
def test_fuzz_operation(fuzz_app, path: str, method: str) -> None:
    app, eng = fuzz_app
    client = app.server.test_client()
    token = auth_policy(app).token
    names = list(eng.snapshot().experts)
    n = EXAMPLES.get(path, DEFAULT_EXAMPLES)

    @settings(max_examples=n, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(req=request_strategy(path, method, names))
    def run(req: dict) -> None:
        r = _send(client, path, method, req, token)
        problems = _check(path, method, req, r)
        assert not problems, problems

    run()


def test_fuzz_totals(fuzz_app) -> None:
    """Runs last in this file: the totals the issue's closing note quotes."""
    assert COUNTS["requests"] >= 1000, COUNTS
    assert COUNTS["5xx"] == 0 and COUNTS["schema_or_status_violations"] == 0, FAILURES[:5]
    print(f"\napi fuzz: {COUNTS['requests']} requests, 2xx {COUNTS['2xx']}, 3xx {COUNTS['3xx']}, "
          f"4xx {COUNTS['4xx']}, 5xx {COUNTS['5xx']}, violations {COUNTS['schema_or_status_violations']}")
