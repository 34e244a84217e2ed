"""REST API (web/api.py) and auth (web/auth.py) against the REAL engine replaying shared BTC/USDT data.

Every endpoint, malformed bodies (hand-written bad JSON: the edge cases under test), and the token
rules on and off loopback. Flask test client; the engine runs its own threads meanwhile.
"""

from __future__ import annotations

import json

import pytest
from helpers import api_client, auth_policy, replay_engine, ui_client, wait_for  # tests/ is on sys.path

from core.config import Secrets
from web.app import create_app
from web.auth import COOKIE, BindRefused

TOKEN = "t0k3n-for-tests-only"


@pytest.fixture(scope="module")
def running(shared_data, tmp_path_factory):
    eng, cfg, models = replay_engine(shared_data, tmp_path_factory.mktemp("api"))
    yield eng, cfg
    eng.stop()


@pytest.fixture(scope="module")
def engine(running):
    return running[0]


@pytest.fixture(scope="module")
def cfg(running):
    return running[1]


@pytest.fixture(scope="module")
def client(engine, cfg):
    return api_client(create_app(engine, cfg, host="127.0.0.1", secrets=Secrets()))


def test_status(client, engine) -> None:
    r = client.get("/api/status")
    assert r.status_code == 200
    j = r.get_json()
    assert j["mode"] == "replay" and j["symbol"] == "BTC/USDT" and j["timeframe"] == "1m"
    assert j["running"] is True
    assert isinstance(j["last_candle_ts"], int)
    assert set(j["kill_switch"]) == {"active", "reason", "since_ms"}
    assert isinstance(j["sources"], dict) and j["sources"]


def test_initial_data_matches_engine_candles(client, engine) -> None:
    r = client.get("/api/initial_data?limit=200")
    assert r.status_code == 200
    j = r.get_json()
    c = j["candles"]
    assert len(c["ts"]) == len(c["close"]) == 200
    assert c["ts"] == sorted(c["ts"])
    snap = engine.snapshot()
    df = snap.candles["1m"]
    # the same real candles the engine holds (the stream may have moved on by a bar or two)
    row = df[df["ts"] == c["ts"][-1]]
    assert len(row) == 1 and row["close"].iloc[0] == pytest.approx(c["close"][-1])
    assert set(j["prediction"]) >= {"decision", "experts", "gate_weights", "kronos"}


@pytest.mark.parametrize("query,status", [
    ("timeframe=7x", 400), ("limit=abc", 400), ("limit=0", 400), ("limit=999999", 400),
    ("symbol=ETH/USDT", 404), ("timeframe=1w", 404),
])
def test_initial_data_bad_query(client, query: str, status: int) -> None:
    r = client.get(f"/api/initial_data?{query}")
    assert r.status_code == status
    assert r.get_json()["message"]


def test_latest_and_generate_prediction(client, engine) -> None:
    wait_for(lambda: engine.snapshot().decision is not None, 60, "a first decision")
    j = client.get("/api/latest_prediction").get_json()
    d = j["decision"]
    assert d["action"] in ("BUY", "SELL", "HOLD")
    assert sum(d["probs"].values()) == pytest.approx(1.0, abs=1e-6)
    # + the base-rate expert's weight (core/fusion.py)
    assert set(d["weights"]) - {"climatology"} <= set(j["experts"]) | set(engine.snapshot().experts)
    r = client.get("/api/generate_prediction")
    assert r.status_code == 200
    p = r.get_json()
    assert p["decision"]["id"] == f"preview:{p['decision']['ts']}"
    assert p["decision"]["ts"] >= d["ts"] and set(p["decision"]["weights"]) - {"climatology"} <= set(p["experts"])
    assert sum(p["decision"]["probs"].values()) == pytest.approx(1.0, abs=1e-6)


def test_thresholds_roundtrip_reaches_engine(client, engine) -> None:
    r = client.put("/api/thresholds", json={"buy": 0.71, "sell": 0.66, "min_confidence": 0.05})
    assert r.status_code == 200, r.get_json()
    wait_for(lambda: engine.snapshot().thresholds.buy == pytest.approx(0.71), 20, "thresholds applied")
    assert client.get("/api/thresholds").get_json() == {"buy": 0.71, "sell": 0.66, "min_confidence": 0.05}


@pytest.mark.parametrize("body,status", [
    ("not json", 400), ("[0.5, 0.5]", 400), ('{"buy": 0.5}', 422), ('{"buy": 1.5, "sell": 0.5}', 422),
    ('{"buy": -0.1, "sell": 0.5}', 422), ('{"buy": "0.5", "sell": 0.5}', 422), ('{"buy": true, "sell": 0.5}', 422),
    ('{"buy": 0.5, "sell": 0.5, "extra": 1}', 422),
])
def test_thresholds_malformed(client, engine, body: str, status: int) -> None:
    before = engine.snapshot().thresholds
    r = client.put("/api/thresholds", data=body, content_type="application/json")
    assert r.status_code == status
    assert r.get_json()["error"] and r.get_json()["message"]
    assert engine.snapshot().thresholds == before  # nothing applied


def test_experts_and_patch(client, engine) -> None:
    j = client.get("/api/experts").get_json()
    names = [e["name"] for e in j["experts"]]
    assert names and set(names) == set(engine.snapshot().experts)
    name = names[0]
    # this engine runs with training=False (--no-training): the engine's reason comes back as a 409
    r = client.patch(f"/api/experts/{name}", json={"training": True})
    assert r.status_code == 409 and "training is disabled" in r.get_json()["message"]
    assert engine.snapshot().experts[name].training is False
    assert client.get("/api/experts").get_json()["experts"][0]["trainable"] is False
    # training is disabled in this engine: no expert's trainer is running
    assert all(e["trainer"] is None or e["trainer"]["running"] is False
               for e in client.get("/api/experts").get_json()["experts"])
    assert client.patch("/api/experts/nope", json={"enabled": False}).status_code == 404
    assert client.patch(f"/api/experts/{name}", json={}).status_code == 422
    assert client.patch(f"/api/experts/{name}", json={"enabled": "no"}).status_code == 422
    assert client.patch(f"/api/experts/{name}", data="{", content_type="application/json").status_code == 400
    r = client.patch(f"/api/experts/{name}", json={"enabled": False})
    assert r.status_code == 200
    wait_for(lambda: engine.snapshot().experts[name].enabled is False, 20, f"{name} disabled")
    assert client.patch(f"/api/experts/{name}", json={"enabled": True}).status_code == 200
    wait_for(lambda: engine.snapshot().experts[name].enabled is True, 20, f"{name} enabled again")


def test_trades_and_equity(client) -> None:
    j = client.get("/api/trades?limit=5").get_json()
    assert set(j) == {"trades", "open_orders", "positions"} and len(j["trades"]) <= 5
    assert client.get("/api/trades?limit=x").status_code == 400
    e = client.get("/api/equity").get_json()
    assert len(e["ts"]) == len(e["equity"])


def test_unknown_route_and_method_are_json(client) -> None:
    r = client.get("/api/nope")
    assert r.status_code == 404 and r.get_json()["error"] == "not_found"
    r = client.delete("/api/thresholds")
    assert r.status_code == 405 and r.get_json()["message"]


def test_stream_stop_and_start(client, engine) -> None:
    assert client.post("/api/start_stream", json={"symbol": "BTCUSDT", "timeframe": "1m"}).status_code == 422
    assert client.post("/api/start_stream", json={"symbol": "BTC/USDT", "timeframe": "2x"}).status_code == 422
    assert client.post("/api/start_stream", json={"symbol": "BTC/USDT"}).status_code == 422
    assert client.post("/api/stop_stream", json={}).status_code == 200
    wait_for(lambda: not engine.snapshot().streaming, 20, "stream stopped")
    r = client.post("/api/start_stream", json={"symbol": "BTC/USDT", "timeframe": "1m"})
    assert r.status_code == 200, r.get_json()
    wait_for(lambda: engine.snapshot().streaming, 20, "stream restarted")


# ---------------------------------------------------------------- auth


def test_refuses_public_bind_without_token(engine, cfg) -> None:
    with pytest.raises(BindRefused, match="DASHBOARD_TOKEN"):
        create_app(engine, cfg, host="0.0.0.0", secrets=Secrets())


def test_main_refuses_public_bind_without_token(monkeypatch, capsys) -> None:
    import main_dashboard

    monkeypatch.delenv("DASHBOARD_TOKEN", raising=False)
    assert main_dashboard.main(["--host", "0.0.0.0", "--replay-db"]) == 2
    assert "DASHBOARD_TOKEN" in capsys.readouterr().err


def test_off_loopback_every_call_needs_token(engine, cfg) -> None:
    app = create_app(engine, cfg, host="0.0.0.0", secrets=Secrets(dashboard_token=TOKEN))
    assert auth_policy(app).generated is False and auth_policy(app).token == TOKEN
    c = app.server.test_client()
    assert c.get("/api/status").status_code == 401
    assert c.get("/api/status", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert c.get("/api/status", headers={"X-Dashboard-Token": "wrong"}).status_code == 401
    ok = c.get("/api/status", headers={"Authorization": f"Bearer {TOKEN}"})
    assert ok.status_code == 200 and TOKEN not in ok.get_data(as_text=True)
    assert c.get("/api/experts", headers={"X-Dashboard-Token": TOKEN}).status_code == 200
    assert c.put("/api/thresholds", json={"buy": 0.6, "sell": 0.6}).status_code == 403  # no Origin
    assert c.put("/api/thresholds", json={"buy": 0.6, "sell": 0.6},
                 headers={"Origin": "http://localhost"}).status_code == 401
    # the UI: redirected to the login page; a wrong token is refused; the right one sets a cookie
    r = c.get("/")
    assert r.status_code == 302 and "/login" in r.headers["Location"]
    assert c.post("/_dash-update-component", json={}, headers={"Origin": "http://localhost"}).status_code == 401
    assert c.post("/login", data={"token": "wrong"}).status_code == 401
    r = c.post("/login", data={"token": TOKEN, "next": "/models"})
    assert r.status_code == 302 and r.headers["Location"].endswith("/models")
    cookie = r.headers["Set-Cookie"]
    assert COOKIE in cookie and TOKEN not in cookie and "HttpOnly" in cookie and "SameSite=Strict" in cookie
    assert "Max-Age=43200" in cookie  # dashboard.session_hours: 12
    assert c.get("/").status_code == 200  # cookie now sent by the test client
    assert c.get("/api/status").status_code == 200


def test_loopback_without_token_still_needs_a_credential(engine, cfg) -> None:
    app = create_app(engine, cfg, host="127.0.0.1", secrets=Secrets())
    pol = auth_policy(app)
    assert pol.generated and len(pol.token) >= 32
    c = app.server.test_client()
    for path in ("/api/status", "/api/trades", "/api/thresholds", "/_dash-layout", "/_dash-dependencies"):
        assert c.get(path).status_code == 401, path
    assert c.get("/").status_code == 302  # pages go to the login form
    assert c.put("/api/thresholds", json={"buy": 0.6, "sell": 0.6},
                 headers={"Origin": "http://localhost"}).status_code == 401
    assert c.post("/api/kill_switch/reset", json={}, headers={"Origin": "http://localhost"}).status_code == 401
    h = c.get("/api/health")  # the only open route, and it carries no data
    assert h.status_code == 200 and h.get_json() == {"ok": True}
    # the printed one-time URL: sets a session cookie and redirects to the same page without the token
    r = c.get(f"/models?token={pol.token}")
    assert r.status_code == 302 and r.headers["Location"] == "/models" and pol.token not in r.headers["Location"]
    assert COOKIE in r.headers["Set-Cookie"] and pol.token not in r.headers["Set-Cookie"]
    assert c.get("/api/status").status_code == 200
    # two logins, two different random session ids (never a constant derived from the token)
    c2 = ui_client(app)
    sid1 = c.get_cookie(COOKIE).value
    sid2 = c2.get_cookie(COOKIE).value
    assert sid1 != sid2 and len(sid1) >= 32
    # log out: that session is gone, the other still works
    assert c.post("/logout", headers={"Origin": "http://localhost"}).status_code == 302
    c.set_cookie(COOKIE, sid1)
    assert c.get("/api/status").status_code == 401
    assert c2.get("/api/status").status_code == 200


def test_sessions_expire_and_logins_are_rate_limited(engine, cfg) -> None:
    import time

    dash = cfg.dashboard.model_copy(update={"session_hours": 2 / 3600, "login_attempts_per_min": 3})
    app = create_app(engine, cfg.model_copy(update={"dashboard": dash}), host="127.0.0.1",
                     secrets=Secrets(dashboard_token=TOKEN))
    c = ui_client(app)
    assert c.get("/api/status").status_code == 200
    time.sleep(2.3)  # past the two-second lifetime
    assert c.get("/api/status").status_code == 401
    bad = app.server.test_client()
    codes = [bad.post("/login", data={"token": f"guess-{i}-xxxxxxxxxx"}).status_code for i in range(5)]
    assert codes == [401, 401, 401, 429, 429]
    r = bad.post("/login", data={"token": TOKEN})  # even the right token waits: the client is locked out
    assert r.status_code == 429 and int(r.headers["Retry-After"]) > 0
    # wrong bearer tokens count as guesses too; the right one is never locked out
    h = {"Authorization": "Bearer " + "g" * 40}
    assert bad.get("/api/status", headers=h).status_code == 429
    assert bad.get("/api/status", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200


def test_short_token_refused(engine, cfg, monkeypatch, capsys) -> None:
    from web.auth import MIN_TOKEN_LEN

    with pytest.raises(BindRefused, match=f"at least {MIN_TOKEN_LEN}"):
        create_app(engine, cfg, host="127.0.0.1", secrets=Secrets(dashboard_token="short-token"))
    import main_dashboard

    monkeypatch.setenv("DASHBOARD_TOKEN", "abc")
    assert main_dashboard.main(["--replay-db"]) == 2
    err = capsys.readouterr().err
    assert "DASHBOARD_TOKEN is 3 characters" in err and "abc" not in err


def test_thresholds_that_trade_every_bar_need_force(client, engine) -> None:
    before = engine.snapshot().thresholds
    for body in ({"buy": 0, "sell": 0}, {"buy": 0.3, "sell": 0.9}, {"buy": 0.5, "sell": 0.5}):
        r = client.put("/api/thresholds", json=body)
        assert r.status_code == 422 and r.get_json()["error"] == "unsafe_thresholds", body
        assert "force" in r.get_json()["message"]
    assert engine.snapshot().thresholds == before
    r = client.put("/api/thresholds", json={"buy": 0.45, "sell": 0.7, "force": True})
    assert r.status_code == 200
    wait_for(lambda: engine.snapshot().thresholds.buy == pytest.approx(0.45), 20, "forced thresholds applied")
    audit = client.application.config["moe_ctx"].extra["control_audit"]
    last = audit.recent[-1]
    assert last.action == "set_thresholds" and last.who == "token" and last.detail["forced"] is True
    store = engine.store
    rows = store.query_df("SELECT who, action, detail FROM control_changes WHERE action = 'set_thresholds'")
    assert len(rows) and TOKEN not in rows.to_string()
    assert client.put("/api/thresholds", json={"buy": 0.6, "sell": 0.6}).status_code == 200


@pytest.mark.parametrize("body", [
    '{"buy": 1' + "0" * 400 + ', "sell": 0.6}', '{"buy": 1e999, "sell": 0.6}', '{"buy": NaN, "sell": 0.6}',
    '{"buy": Infinity, "sell": 0.6}', "[" * 50_000 + "]" * 50_000, '{"a":' * 20_000 + "1" + "}" * 20_000,
])
def test_absurd_bodies_are_422_not_500(client, engine, body: str) -> None:
    # hand-written hostile bodies: a 401-digit number, overflow, non-finite constants, deep nesting
    before = engine.snapshot().thresholds
    r = client.put("/api/thresholds", data=body, content_type="application/json")
    assert r.status_code in (400, 413, 422), (r.status_code, r.get_data(as_text=True)[:200])
    assert r.get_json()["message"]
    assert engine.snapshot().thresholds == before


def test_start_stream_unknown_symbol_keeps_the_stream(client, engine) -> None:
    # after test_stream_stop_and_start the source reconnects a moment after the engine's restart
    wait_for(lambda: client.get("/api/status").get_json()["streaming"], 20, "the source streaming")
    r = client.post("/api/start_stream", json={"symbol": "NOPE/USDT", "timeframe": "1m"})
    assert r.status_code == 422 and "NOPE/USDT" in r.get_json()["message"]
    assert "BTC/USDT" in r.get_json()["message"]  # names what is stored
    snap = engine.snapshot()
    assert snap.streaming and snap.symbol == "BTC/USDT"
    assert client.get("/api/status").get_json()["streaming"] is True


@pytest.mark.parametrize("host,loop", [("127.0.0.1", True), ("localhost", True), ("::1", True),
                                       ("127.0.0.2", True), ("0.0.0.0", False), ("192.168.1.5", False),
                                       ("::", False), ("example.com", False)])
def test_is_loopback(host: str, loop: bool) -> None:
    from web.auth import check_bind, is_loopback

    assert is_loopback(host) is loop
    if loop:
        check_bind(host, None)
    else:
        with pytest.raises(BindRefused):
            check_bind(host, None)
        check_bind(host, TOKEN)  # a token makes it allowed


def test_secrets_never_in_repr() -> None:
    s = Secrets(dashboard_token=TOKEN)
    assert TOKEN not in repr(s) and TOKEN not in str(s)


def test_trainer_json_reports_live_status_without_nan() -> None:
    from core.types import TrainerStatus
    from web.experts_api import trainer_json

    t = trainer_json(TrainerStatus(running=True, steps=12, samples_per_s=850.5, live_version="online-1",
                                   challenger_score=0.71, champion_score=0.74, promotions=1))
    assert t["running"] is True and t["steps"] == 12 and t["promotions"] == 1
    assert t["loss"] is None  # NaN before the first step is sent as null, never as invalid JSON
    assert t["challenger_score"] == 0.71 and t["champion_score"] == 0.74
    assert trainer_json(None) is None


def test_trainer_json_history_is_columnar_with_nulls() -> None:
    # hand-written rounds: a NaN loss and a round without validation scores become JSON nulls
    from core.types import TrainerStatus, TrainingPoint
    from web.experts_api import trainer_json

    pts = (TrainingPoint(1_000, 10, 0.91, 900.0, 0.95, 0.97, "online-a-1"),
           TrainingPoint(2_000, 20, float("nan"), 950.0, None, None, "online-a-2"))
    st = TrainerStatus(running=True, steps=20, history=pts)
    assert trainer_json(st)["rounds"] == 2 and "history" not in trainer_json(st)
    h = trainer_json(st, history=True)["history"]
    assert h["ts"] == [1_000, 2_000] and h["steps"] == [10, 20] and h["loss"] == [0.91, None]
    assert h["val_challenger"] == [0.95, None] and h["val_champion"] == [0.97, None]
    assert h["version"] == ["online-a-1", "online-a-2"]
    json.dumps(h, allow_nan=False)


def test_expert_training_and_rollback_endpoints(client, engine) -> None:
    # this engine runs with training off: the curve is empty and a rollback is refused with the reason
    r = client.get("/api/experts/cnn/training")
    assert r.status_code == 200
    j = r.get_json()
    assert j["name"] == "cnn" and j["training"] is False and j["swaps"] == []
    t = j["trainer"]
    assert t is None or (t["running"] is False and t["rounds"] == 0 and t["history"]["loss"] == [])
    assert j["version"] == engine.snapshot().experts["cnn"].version and j["can_rollback"] is False
    assert client.get("/api/experts/nope/training").status_code == 404
    r = client.post("/api/experts/cnn/rollback", json={})
    assert r.status_code == 409 and "disabled" in r.get_json()["message"]
    assert client.post("/api/experts/nope/rollback", json={}).status_code == 404
    assert client.get("/api/experts").get_json()["experts"][0]["can_rollback"] is False


def _thr_callback(c, buy: float, sell: float, force: bool) -> str:
    body = {"output": "thr-msg.children", "outputs": {"id": "thr-msg", "property": "children"},
            "inputs": [{"id": "thr-buy", "property": "value", "value": buy},
                       {"id": "thr-sell", "property": "value", "value": sell},
                       {"id": "thr-minconf", "property": "value", "value": 0.0}],
            "state": [{"id": "thr-force", "property": "value", "value": force}],
            "changedPropIds": ["thr-buy.value"]}
    r = c.post("/_dash-update-component", json=body)
    assert r.status_code == 200, r.get_data(as_text=True)[:300]
    return json.dumps(r.get_json()["response"]["thr-msg"]["children"])


def test_ui_threshold_sanity_and_audit_through_the_dash_callback(engine, cfg) -> None:
    app = create_app(engine, cfg, host="127.0.0.1", secrets=Secrets())
    c = ui_client(app)  # a logged-in browser: session cookie + own Origin
    before = engine.snapshot().thresholds
    assert "not applied" in _thr_callback(c, 0.2, 0.9, False)
    assert engine.snapshot().thresholds == before
    assert "sent: buy 0.45" in _thr_callback(c, 0.45, 0.7, True)
    wait_for(lambda: engine.snapshot().thresholds.buy == pytest.approx(0.45), 20, "forced UI thresholds")
    last = app.server.config["moe_ctx"].extra["control_audit"].recent[-1]
    assert last.who.startswith("session:") and last.detail["forced"] is True and last.detail["via"] == "ui"
    assert "sent: buy 0.60" in _thr_callback(c, 0.6, 0.6, False)
    # the same callback from another origin, or from the right origin without the cookie: refused
    c.environ_base["HTTP_ORIGIN"] = "http://evil.example"
    with pytest.raises(AssertionError):
        _thr_callback(c, 0.9, 0.9, False)
    wait_for(lambda: engine.snapshot().thresholds.buy == pytest.approx(0.6), 20, "thresholds back to 0.6")


@pytest.mark.parametrize("raw,want", [
    ("/models", "/models"), ("/backtest?x=1", "/backtest?x=1"), ("//evil.example", "/"), ("/\\evil.example", "/"),
    ("/\t/evil.example", "/"), ("https:evil.example", "/"), ("https://evil.example/", "/"), ("", "/"), (None, "/"),
    ("javascript:alert(1)", "/"), ("/ok\n", "/"),
])
def test_safe_next(raw, want: str) -> None:
    from web.auth import safe_next

    assert safe_next(raw) == want


@pytest.mark.parametrize("header,name", [("127.0.0.1:8050", "127.0.0.1"), ("[::1]:8050", "::1"), ("[::1]", "::1"),
                                         ("LOCALHOST", "localhost"), ("evil.example:80", "evil.example")])
def test_host_name_and_allow_list(header: str, name: str) -> None:
    from web.auth import host_allow_list, host_name

    assert host_name(header) == name
    allowed = host_allow_list("127.0.0.1", ["Dash.Example"])
    assert {"127.0.0.1", "localhost", "::1", "dash.example"} <= allowed and "evil.example" not in allowed
    assert "0.0.0.0" not in host_allow_list("0.0.0.0")


def test_status_streaming_tells_the_truth() -> None:
    # hand-built snapshots: the engine wants a stream, but is a source delivering it?
    from dataclasses import replace

    from core.data.source_base import SourceStatus
    from core.snapshot import EngineSnapshot
    from web.api import status_json

    snap = replace(EngineSnapshot.empty("NOPE/USDT", "1m", "replay"), running=True, streaming=True)
    down = replace(snap, sources={"replay": SourceStatus("replay", connected=False, error="no candles stored")})
    up = replace(snap, sources={"replay": SourceStatus("replay", connected=True)})
    assert status_json(down)["streaming"] is False
    assert status_json(up)["streaming"] is True
    assert status_json(replace(up, streaming=False))["streaming"] is False
