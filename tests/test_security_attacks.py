"""Attack tests on a running replay dashboard: real HTTP on 127.0.0.1 (waitress, as main_dashboard.py
serves it) and a real Chromium for framing and the CSP. The engine replays real BTC/USDT candles.

Each probe must answer 4xx (or, for redirects, stay on this site) and change nothing: after each one the
engine's thresholds, kill switch, stream and experts are compared with their state before. The attack
payloads (foreign origins, rebinding hosts, redirect targets, traversal paths, huge or deep bodies) are
hand-written edge cases, as the standards allow.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests
from helpers import CHROMIUM, CHROMIUM_ARGS, auth_policy, browser_context, http_session, replay_engine, serve

from compose import backtest_components
from core.config import Secrets
from web.app import create_app
from web.auth import COOKIE

EVIL = "http://evil.example"
PROBES: dict[str, int] = {"tried": 0, "through": 0}


@pytest.fixture(scope="module")
def site(shared_data, tmp_path_factory):
    eng, cfg, models = replay_engine(shared_data, tmp_path_factory.mktemp("attacks"), speed=600.0)
    app = create_app(eng, cfg, models_cfg=models, host="127.0.0.1", secrets=Secrets(),
                     backtest_components=backtest_components)
    srv, url = serve(app)
    yield eng, app, url, cfg
    srv.shutdown()
    eng.stop()
    print(f"\nattack probes: {PROBES['tried']} tried, {PROBES['through']} got through")


def _state(eng: Any) -> tuple:
    s = eng.snapshot()
    return (s.thresholds, s.kill_switch.active, s.streaming, s.symbol,
            tuple((n, e.enabled, e.training) for n, e in s.experts.items()))


def _refused(eng: Any, r: requests.Response, what: str, codes: tuple[int, ...] = (400, 401, 403, 413, 415, 422)
             ) -> None:
    PROBES["tried"] += 1
    if r.status_code not in codes:
        PROBES["through"] += 1
    assert r.status_code in codes, f"{what}: {r.status_code} {r.text[:200]}"


def _cookie_session(app: Any, url: str) -> requests.Session:
    """A browser-like session: the login cookie, no bearer header (what a victim's browser holds)."""
    s = requests.Session()
    sid, _ = auth_policy(app).sessions.new()
    s.cookies.set(COOKIE, sid, domain="127.0.0.1", path="/")
    return s


def test_cross_site_control_is_refused(site) -> None:
    eng, app, url, _ = site
    victim = _cookie_session(app, url)
    assert victim.get(url + "/api/status").status_code == 200  # the cookie itself works
    before = _state(eng)
    bodies = [
        ("POST", "/api/kill_switch/reset", {"data": "{}", "headers": {"Content-Type": "text/plain"}}),
        ("POST", "/api/stop_stream", {"data": "", "headers": {"Content-Type": "text/plain"}}),
        ("PUT", "/api/thresholds", {"data": '{"buy":0,"sell":0,"force":true}',
                                    "headers": {"Content-Type": "text/plain"}}),
        ("PUT", "/api/thresholds", {"json": {"buy": 0, "sell": 0, "force": True}}),
        ("PATCH", "/api/experts/cnn", {"json": {"enabled": False}}),
        ("POST", "/api/start_stream", {"data": {"symbol": "BTC/USDT", "timeframe": "1m"}}),  # a form body
        ("POST", "/_dash-update-component", {"json": {"output": "kill-msg.children", "inputs": []}}),
        ("POST", "/logout", {"data": ""}),
    ]
    for method, path, kw in bodies:
        for origin_hdr in ({"Origin": EVIL}, {"Origin": "null"}, {"Referer": EVIL + "/page"}, {}):
            h = {**kw.get("headers", {}), **origin_hdr}
            r = victim.request(method, url + path, **{**kw, "headers": h}, allow_redirects=False)
            _refused(eng, r, f"{method} {path} {origin_hdr}")
    # the dashboard's own origin but a text/plain body (what a form/no-cors fetch can send): 415
    r = victim.post(url + "/api/kill_switch/reset", data="{}", headers={"Origin": url, "Content-Type": "text/plain"})
    _refused(eng, r, "text/plain from own origin", (415,))
    time.sleep(0.5)  # anything queued would have been applied by now
    assert _state(eng) == before
    assert victim.get(url + "/api/status").status_code == 200  # the session was not logged out


def test_dns_rebinding_host_is_refused(site) -> None:
    eng, app, url, _ = site
    s = http_session(app, url)  # even with the token
    before = _state(eng)
    for host in ("evil.example", "evil.example:" + url.rsplit(":", 1)[1], "127.0.0.1.evil.example", "[::2]"):
        for path in ("/api/status", "/api/trades", "/_dash-layout", "/", "/api/health"):
            _refused(eng, s.get(url + path, headers={"Host": host}, allow_redirects=False), f"GET {path} Host {host}")
        r = s.put(url + "/api/thresholds", json={"buy": 0, "sell": 0, "force": True},
                  headers={"Host": host, "Origin": f"http://{host}"})
        _refused(eng, r, f"PUT thresholds Host {host}")
    assert _state(eng) == before
    for ok_host in ("127.0.0.1", "localhost", f"localhost:{url.rsplit(':', 1)[1]}"):
        assert s.get(url + "/api/health", headers={"Host": ok_host}).status_code == 200


@pytest.mark.parametrize("target", ["//evil.example", "/\\evil.example", "/%09/evil.example", "https:evil.example",
                                    "https://evil.example", "/%5Cevil.example", "//%2F%2Fevil.example",
                                    "/\t/evil.example", " //evil.example", "javascript:alert(1)"])
def test_login_next_never_leaves_the_site(site, target: str) -> None:
    eng, app, url, _ = site
    token = auth_policy(app).token
    raw = url + "/login?next=" + target  # sent as written (the %-escapes reach the server as such)
    r = requests.post(raw, data={"token": token}, allow_redirects=False, headers={"Origin": url})
    loc = r.headers.get("Location", "")
    PROBES["tried"] += 1
    through = not (r.status_code == 302 and loc.startswith("/") and not loc.startswith("//")
                   and "\\" not in loc and "evil" not in loc)
    PROBES["through"] += through
    assert not through, (target, r.status_code, loc)
    # the one-time token URL cannot be turned into a redirect either
    r = requests.get(url + "/?token=" + token + "&next=" + target, allow_redirects=False)
    loc = r.headers["Location"]
    assert r.status_code == 302 and loc.startswith("/") and not loc.startswith("//") and "\\" not in loc
    assert not urlsplit(loc).netloc and not urlsplit(loc).scheme


def test_bodies_too_large_or_deep_are_refused_fast(site) -> None:
    eng, app, url, _ = site
    s = http_session(app, url)
    before = _state(eng)
    t0 = time.monotonic()
    big = b'{"buy": 0.7, "sell": 0.7, "pad": "' + b"x" * (30 * 1024 * 1024) + b'"}'
    try:
        r = s.put(url + "/api/thresholds", data=big, headers={"Content-Type": "application/json"})
        _refused(eng, r, "30 MB body", (413,))
    except requests.ConnectionError:  # the server may close the socket after its 413
        PROBES["tried"] += 1
    assert time.monotonic() - t0 < 30
    for body in ("[" * 50_000 + "]" * 50_000, '{"buy": 1' + "0" * 400 + ', "sell": 0.7}', '{"buy": 1e999, "sell": 1}'):
        r = s.put(url + "/api/thresholds", data=body, headers={"Content-Type": "application/json"})
        _refused(eng, r, f"hostile body {body[:20]}")
    r = s.post(url + "/_dash-update-component", data="[" * 50_000 + "]" * 50_000,
               headers={"Content-Type": "application/json"})
    _refused(eng, r, "deep Dash callback body")
    r = s.post(url + "/api/start_stream", json={"symbol": "NOPE/USDT", "timeframe": "1m"})
    _refused(eng, r, "unknown symbol")
    time.sleep(0.5)
    assert _state(eng) == before and s.get(url + "/api/status").json()["streaming"] is True


def test_report_paths_outside_reports_dir_are_not_read(site, tmp_path) -> None:
    eng, app, url, cfg = site
    s = http_session(app, url)
    # a report-shaped JSON file outside the reports folder (hand-written: the traversal target)
    outside = tmp_path / "stolen.json"
    outside.write_text(json.dumps({"series": {"ts": [1, 2, 3], "equity": [1.0, 2.0, 3.0]}, "spec": {}}))
    rdir = cfg.resolve(cfg.backtest.reports_dir)
    for value in ([str(outside)], [f"{rdir}/../../{outside.parent.name}/stolen.json"], ["/dev/zero"],
                  ["/etc/passwd"], ["../" * 12 + "etc/passwd"], [str(outside)] * 50):
        body = {"output": "bt-compare-graph.figure", "outputs": {"id": "bt-compare-graph", "property": "figure"},
                "inputs": [{"id": "bt-compare", "property": "value", "value": value}],
                "changedPropIds": ["bt-compare.value"], "state": []}
        t0 = time.monotonic()
        r = s.post(url + "/_dash-update-component", json=body, timeout=20)
        assert time.monotonic() - t0 < 10  # /dev/zero is never read
        assert r.status_code == 200, r.text[:200]
        fig = r.json()["response"]["bt-compare-graph"]["figure"]
        PROBES["tried"] += 1
        if fig.get("data"):
            PROBES["through"] += 1
        assert not fig.get("data"), value  # nothing plotted from outside reports_dir


class _FramingPage(BaseHTTPRequestHandler):
    target = ""

    def do_GET(self) -> None:  # noqa: N802 - http.server API
        page = f'<html><body><iframe id="f" src="{self.target}" width="800" height="600"></iframe></body></html>'
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.end_headers()
        self.wfile.write(page.encode())

    def log_message(self, *_a: Any) -> None:
        pass


@pytest.mark.browser
@pytest.mark.skipif(not CHROMIUM.exists(), reason="no Chromium at /usr/bin/chromium")
def test_framing_refused_and_pages_work_under_the_csp(site, output_dir) -> None:
    from playwright.sync_api import sync_playwright

    eng, app, url, _ = site
    # another origin (a different port is a different origin) framing the dashboard
    _FramingPage.target = url + "/"
    evil = ThreadingHTTPServer(("127.0.0.1", 0), _FramingPage)
    threading.Thread(target=evil.serve_forever, daemon=True).start()
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
            # the victim is logged in (session cookie) and runs the real CSP (no bypass)
            ctx = browser_context(browser, app, url, bypass_csp=False, viewport={"width": 1400, "height": 1000})
            violations: list[str] = []
            page = ctx.new_page()
            page.on("console", lambda m: violations.append(m.text) if "Content Security Policy" in m.text else None)
            page.goto(url + "/")
            page.wait_for_selector("#live-chart .js-plotly-plot .main-svg", timeout=60_000)
            page.wait_for_selector("#experts-table", timeout=30_000)
            assert page.locator("#live-chart .js-plotly-plot").count() == 1
            for path in ("/models", "/backtest", "/orderbook"):  # every page renders under the CSP too
                page.goto(url + path)
                page.wait_for_selector("#page > *", timeout=30_000)
                page.wait_for_timeout(1000)
            assert violations == [], violations[:3]
            page.goto(f"http://127.0.0.1:{evil.server_port}/")
            page.wait_for_timeout(2500)
            frame = page.frame_locator("#f")
            PROBES["tried"] += 1
            framed = frame.locator("#live-chart").count() + frame.locator("#nav-live").count()
            PROBES["through"] += bool(framed)
            assert framed == 0  # X-Frame-Options DENY / frame-ancestors 'none': nothing of the UI inside
            page.screenshot(path=str(output_dir / "security_framing.png"))
            browser.close()
    finally:
        evil.shutdown()


@pytest.mark.browser
@pytest.mark.skipif(not CHROMIUM.exists(), reason="no Chromium at /usr/bin/chromium")
def test_first_minute_login_url_then_logout(site, output_dir) -> None:
    """What a new user does: open the printed URL, land on the Live page without the token in the address
    bar, log out with the navbar button, and be asked for the token again."""
    from playwright.sync_api import sync_playwright

    eng, app, url, _ = site
    token = auth_policy(app).token
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        ctx = browser.new_context(viewport={"width": 1400, "height": 1000})  # no cookie, the real CSP
        page = ctx.new_page()
        page.goto(url + "/")
        assert "/login" in page.url  # not logged in yet
        page.goto(f"{url}/?token={token}")
        page.wait_for_selector("#live-chart .js-plotly-plot .main-svg", timeout=60_000)
        assert token not in page.url and page.url.rstrip("/") == url
        (cookie,) = [c for c in ctx.cookies() if c["name"] == COOKIE]
        assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and token not in cookie["value"]
        page.click("#logout")
        page.wait_for_url("**/login*", timeout=20_000)
        assert not [c for c in ctx.cookies() if c["name"] == COOKIE]
        page.goto(url + "/models")
        assert "/login" in page.url
        page.fill("#token", token)
        page.click("#login")
        page.wait_for_url("**/models", timeout=20_000)
        page.wait_for_selector("#nav-models", timeout=20_000)
        browser.close()


def test_security_headers_on_every_kind_of_answer(site) -> None:
    eng, app, url, _ = site
    s = http_session(app, url)
    for r in (s.get(url + "/"), s.get(url + "/api/status"), requests.get(url + "/api/status"),
              requests.get(url + "/login"), s.get(url + "/_dash-layout")):
        h = r.headers
        assert h["X-Frame-Options"] == "DENY" and h["X-Content-Type-Options"] == "nosniff"
        assert h["Referrer-Policy"] == "same-origin"
        csp = h["Content-Security-Policy"]
        assert "frame-ancestors 'none'" in csp and "unsafe-eval" not in csp and "script-src 'self' 'sha256-" in csp


def test_probe_totals(site) -> None:
    assert PROBES["tried"] >= 75 and PROBES["through"] == 0, PROBES  # every probe above ran; none got through
