"""The page shell (web/page_shell.py): the scripts the index loads, the page held by the first layout,
and navigation between pages, on the real engine built over the bundled sample (not started: these
tests are about the page, not the data)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from helpers import CHROMIUM, chromium_page, serve, ui_client, web_config

from web.page_shell import lean_scripts

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "data" / "sample" / "BTC_USDT-1m.csv"
SHIM = ROOT / "web" / "assets" / "00-regenerator.js"
SCRIPT_SRC = re.compile(r'<script src="([^"]+)"></script>')


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    from core.config import Secrets
    from main_dashboard import build_engine
    from web.app import create_app

    cfg, models = web_config(tmp_path_factory.mktemp("shell"))
    eng = build_engine(cfg, models, replay_path=SAMPLE, speed=60.0, training=False)
    try:
        yield create_app(eng, cfg, models_cfg=models, host="127.0.0.1", secrets=Secrets())
    finally:
        eng.store.close()


def _ids(node: Any) -> dict[str, dict]:
    """Every component with a string id in a /_dash-layout tree: id -> props."""
    out: dict[str, dict] = {}
    if isinstance(node, dict):
        props = node.get("props")
        if isinstance(props, dict) and isinstance(props.get("id"), str):
            out[props["id"]] = props
        for v in (props or node).values() if isinstance(props, dict) else node.values():
            out.update(_ids(v))
    elif isinstance(node, list):
        for v in node:
            out.update(_ids(v))
    return out


def test_lean_scripts_drops_the_polyfill_and_dash_table_and_adds_dcc_chunks() -> None:
    # hand-written tags in Dash's format (the real index is checked below)
    tags = "\n".join(f'<script src="/_dash-component-suites/{p}"></script>' for p in (
        "dash/deps/polyfill@7.v4_4_1m1.12.1.min.js", "dash/deps/react@18.v4_4_1m1.3.1.min.js",
        "dash/dcc/dash_core_components.v4_4_1m17.js", "dash/dash_table/bundle.v7_4_1m17.js"))
    out = SCRIPT_SRC.findall(lean_scripts(tags))
    assert out == ["/_dash-component-suites/dash/deps/react@18.v4_4_1m1.3.1.min.js",
                   "/_dash-component-suites/dash/dcc/dash_core_components.v4_4_1m17.js",
                   "/_dash-component-suites/dash/dcc/async-graph.v4_4_1m17.js",
                   "/_dash-component-suites/dash/dcc/async-dropdown.v4_4_1m17.js"]


def test_index_serves_every_script_it_names_and_needs_only_mark_and_wrap(app) -> None:
    c = ui_client(app)
    html = c.get("/").get_data(as_text=True)
    srcs = SCRIPT_SRC.findall(html)
    assert not [s for s in srcs if "polyfill" in s or "dash_table" in s]
    assert any("/assets/00-regenerator.js" in s for s in srcs) and any("/assets/shell.js" in s for s in srcs)
    chunks = [s for s in srcs if "/dcc/async-" in s]
    assert len(chunks) == 2 and all(re.search(r"\.v[\d_]+m\d+\.js$", s) for s in chunks), chunks
    used: set[str] = set()
    for src in srcs:
        r = c.get(src)
        assert r.status_code == 200, src
        if src in chunks:  # fingerprinted like dcc's own bundle: cached for a year, never revalidated
            assert (r.cache_control.max_age or 0) >= 31_536_000, (src, r.headers.get("Cache-Control"))
        if "00-regenerator" not in src:
            used |= set(re.findall(r"regeneratorRuntime\.(\w+)", r.get_data(as_text=True)))
    # the shim provides exactly these; a Dash upgrade that needs more fails here, not in a user's browser
    assert used <= {"mark", "wrap"}, used


@pytest.mark.parametrize(("referer", "path", "marker"), [
    ("http://localhost/", "/", "live-chart"),
    ("http://localhost/models", "/models", "models-list"),
    ("http://localhost/backtest", "/backtest", "bt-run"),
    ("http://elsewhere.example/models", "/", "live-chart"),  # another site's page names nothing here
    (None, "/", "live-chart"),
])
def test_first_layout_holds_the_page_the_browser_is_on(app, referer, path, marker) -> None:
    c = ui_client(app)
    r = c.get("/_dash-layout", headers={"Referer": referer} if referer else {})
    assert r.status_code == 200
    ids = _ids(json.loads(r.get_data(as_text=True)))
    assert ids["page-path"]["data"] == path
    assert marker in ids, sorted(ids)[:40]


@pytest.mark.browser
@pytest.mark.skipif(not CHROMIUM.exists(), reason="no Chromium at /usr/bin/chromium (apt-get install chromium)")
@pytest.mark.timeout(240)
def test_pages_open_directly_and_by_navigation_and_the_shim_runs_generators(app) -> None:
    srv, url = serve(app)
    try:
        with chromium_page(app, url, viewport={"width": 1400, "height": 1000}) as page:
            routes: list[str] = []
            page.on("request", lambda q: routes.append(q.url) if "_dash-update-component" in q.url
                    and 'page.children' in (q.post_data or "") else None)
            page.goto(url + "/models")
            page.wait_for_selector("#models-list", timeout=30_000)
            page.wait_for_timeout(1000)
            assert routes == []  # the first layout held the Models page: no page callback
            page.click("#nav-backtest")
            page.wait_for_selector("#bt-run", timeout=30_000)
            assert len(routes) == 1
            page.go_back()
            page.wait_for_selector("#models-list", timeout=30_000)
            page.goto(url + "/no-such-page")
            page.wait_for_selector("text=No page at /no-such-page", timeout=30_000)

            # the regenerator shim on its own (a bundle may define the full runtime first): a
            # hand-written generator in regenerator's compiled form, as Dash's bundles use it
            page.goto("about:blank")
            page.add_script_tag(content=SHIM.read_text())
            got = page.evaluate("""() => {
                const R = window.regeneratorRuntime, seen = [];
                const g = R.mark(function g() { return R.wrap(function (c) {
                    for (;;) switch (c.prev = c.next) {
                        case 0: return c.next = 2, 'first';
                        case 2: seen.push(c.sent); if (c.sent === 'stop') return c.abrupt('return', 7);
                        case 4: case 'end': return c.stop(); } }, g); });
                const a = g(), b = g();
                const out = [a.next(), a.next('x'), a.next(), b.next(), b.next('stop')];
                let thrown = null;
                try { g().throw(new Error('boom')); } catch (e) { thrown = e.message; }
                return {out, seen, thrown, iter: a[Symbol.iterator]() === a};
            }""")
            assert got["out"] == [{"value": "first", "done": False}, {"value": None, "done": True},
                                  {"value": None, "done": True},
                                  {"value": "first", "done": False}, {"value": 7, "done": True}]
            assert got["seen"] == ["x", "stop"] and got["thrown"] == "boom" and got["iter"]
    finally:
        srv.shutdown()
