"""A new user's first run: a temporary copy of the repository (no store, no models), the network
blocked, ``main_dashboard.py`` with no arguments. It must replay the bundled sample, print "Dashboard
ready", place no order while the experts are untrained (banner in the browser), finish Train now's quick
preset, and the next decisions must come from trained versions (banner gone). The Backtest page's empty
state is words, not axes; the CLI names the dashboard that holds the store."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import CHROMIUM, CHROMIUM_ARGS, http_json, wait_for

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "fresh-clone-test-token-7f3a9c2e"  # the dashboard always needs a credential (web/auth.py)

# every connection that does not go to this machine fails at once, as on a machine without internet
BLOCK_NETWORK = '''
import socket
_connect = socket.socket.connect
def _local_only(self, address):
    host = address[0] if isinstance(address, tuple) else address
    if isinstance(host, str) and host not in ("127.0.0.1", "localhost", "::1") and not host.startswith("/"):
        raise OSError(101, "network blocked by the fresh-clone test")
    return _connect(self, address)
socket.socket.connect = _local_only
_gai = socket.getaddrinfo
def _gai_local(host, *a, **kw):
    if host not in (None, "127.0.0.1", "localhost", "::1"):
        raise socket.gaierror(-2, "Name or service not known (network blocked)")
    return _gai(host, *a, **kw)
socket.getaddrinfo = _gai_local
'''


def _fresh_clone(dst: Path) -> Path:
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True,
                           text=True, check=True).stdout.splitlines()
    for f in files:
        src = ROOT / f
        if src.is_file() and not f.startswith(("test-output/", "docs/")):
            (dst / f).parent.mkdir(parents=True, exist_ok=True)
            (dst / f).write_bytes(src.read_bytes())
    assert not (dst / "data" / "moe.duckdb").exists() and not any((dst / "models").glob("*/*"))
    return dst


@pytest.fixture(scope="module")
def dashboard(tmp_path_factory):
    repo = _fresh_clone(tmp_path_factory.mktemp("clone"))
    site = tmp_path_factory.mktemp("site")
    (site / "sitecustomize.py").write_text(BLOCK_NETWORK)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "MOE_"))}
    env["PYTHONPATH"] = str(site)
    env["DASHBOARD_TOKEN"] = TOKEN
    env["HOME"] = str(tmp_path_factory.mktemp("home"))  # an empty Hugging Face cache
    proc = subprocess.Popen([sys.executable, "main_dashboard.py", "--port", "0", "--speed", "300"], cwd=repo,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    url = None
    t0 = time.monotonic()
    assert proc.stdout is not None
    while time.monotonic() - t0 < 180:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        m = re.search(r"Dashboard ready at (http://\S+?)/? ", line)
        if m:
            url = m.group(1)
            break
    if url is None:
        proc.kill()
        pytest.fail("no 'Dashboard ready' line:\n" + "".join(lines[-30:]))
    import threading

    threading.Thread(target=lambda: [lines.append(ln) for ln in proc.stdout], daemon=True).start()  # type: ignore[union-attr]
    yield repo, url, proc, lines
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.mark.browser
@pytest.mark.timeout(1800)  # ~2 min on an idle 2-core machine; other jobs on the box can stretch it a lot
@pytest.mark.skipif(not CHROMIUM.exists(), reason="no Chromium at /usr/bin/chromium")
def test_fresh_clone_offline_reaches_a_trained_dashboard_with_one_button(dashboard, output_dir) -> None:
    from playwright.sync_api import sync_playwright

    repo, url, proc, lines = dashboard
    head = "".join(lines)
    assert "offline" in head and "bundled sample" in head and "Traceback" not in head
    # decisions come, from untrained experts, and none is traded
    st = wait_for(lambda: (lambda r: r[1] if r[1]["not_traded"] >= 3 else None)(http_json(url + "/api/train_now", token=TOKEN)),
                  120, "three decisions not traded")
    assert st["untrained"] == ["cnn", "transformer", "dqn"]
    _, pred = http_json(url + "/api/latest_prediction", token=TOKEN)
    assert "untrained, not traded" in pred["decision"]["reason"]
    _, trades = http_json(url + "/api/trades", token=TOKEN)
    assert trades["trades"] == [] and trades["open_orders"] == []
    _, experts = http_json(url + "/api/experts", token=TOKEN)
    kronos = next(e for e in experts["experts"] if e["name"] == "kronos")
    assert "not available" in str(kronos) and "huggingface-cli download" in str(kronos)
    # the store is the dashboard's: the CLI says so in one line
    r = subprocess.run([sys.executable, "main_backtest.py", "data", "list"], cwd=repo, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines() == [
        f"error: the dashboard (pid {proc.pid}) holds data/moe.duckdb; stop it or pass --db"]

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        # a logged-in context; the page is read with JS strings, which the dashboard's CSP blocks
        page = browser.new_context(bypass_csp=True, viewport={"width": 1600, "height": 1100}).new_page()
        page.goto(url + "/?token=" + TOKEN)  # the login URL: a session cookie
        # the Backtest page with no reports: words, no axes
        page.goto(url + "/backtest")
        page.wait_for_selector("#bt-compare-graph .js-plotly-plot", timeout=30_000)
        page.get_by_text("No backtest reports yet").first.wait_for(timeout=15_000)
        assert page.locator("#bt-compare-graph .xtick").count() == 0
        assert page.locator("#bt-compare-graph .ytick").count() == 0
        # the Live page: the banner with Train now
        page.goto(url + "/")
        page.wait_for_selector("#live-banner", state="visible", timeout=30_000)
        page.wait_for_function("() => { const g = document.querySelector('#live-chart .js-plotly-plot'); "
                               "return g && g.data && g.data[0] && g.data[0].x.length > 0; }", timeout=60_000)
        assert "Untrained experts: cnn, transformer, dqn" in page.inner_text("#live-banner")
        assert "replay of bundled sample" in page.inner_text("#live-source")
        page.screenshot(path=str(output_dir / "first_run_untrained.png"))
        page.click("#train-now-quick")
        page.wait_for_function("() => document.querySelector('#live-banner-text').innerText.includes('Train now')",
                               timeout=30_000)
        # progress on the Models page: the stages (Kronos first, each expert, the gate) and the ETA
        page.goto(url + "/models")
        page.wait_for_function("() => (document.querySelector('#models-offline') || {innerText: ''})"
                               ".innerText.includes('Train now (quick)')", timeout=30_000)
        page.wait_for_function("() => (document.querySelector('#models-offline') || {innerText: ''})"
                               ".innerText.includes('ETA')", timeout=900_000)
        page.wait_for_function("() => { const t = (document.querySelector('#models-offline') || {innerText: ''})"
                               ".innerText; return t.includes('kronos ✓') && t.includes('gate') && /\\d+\\/\\d+/.test(t); }",
                               timeout=900_000)  # Kronos done, then an expert's epochs or the gate's rows
        page.screenshot(path=str(output_dir / "first_run_models.png"))
        # on an idle 2-core machine the quick preset takes about a minute; other jobs can slow it a lot
        wait_for(lambda: http_json(url + "/api/train_now", token=TOKEN)[1]["training"]["state"] in ("done", "failed"), 900,
                 "Train now to finish", every=2)
        page.goto(url + "/")
        page.wait_for_selector("#live-banner", state="hidden", timeout=30_000)
        page.screenshot(path=str(output_dir / "first_run_trained.png"))
        browser.close()
    st = http_json(url + "/api/train_now", token=TOKEN)[1]
    assert st["training"]["state"] == "done" and st["untrained"] == []
    # every expert AND the gate (trained over exactly the engine's experts, Kronos included) swapped in
    assert set(st["training"]["adopted"]) == {"cnn", "transformer", "dqn", "kronos", "moe"}
    versions = http_json(url + "/api/status", token=TOKEN)[1]["versions"]
    assert versions["gate"] not in ("hedge", "untrained"), versions
    assert all(versions[n] != "untrained" for n in ("cnn", "transformer", "dqn", "kronos")), versions
    # the next decisions come from trained versions and may trade
    first_ts = http_json(url + "/api/latest_prediction", token=TOKEN)[1]["decision"]["ts"]

    def newer() -> dict | None:
        d = http_json(url + "/api/latest_prediction", token=TOKEN)[1]
        return d if d["decision"]["ts"] > first_ts + 60_000 else None

    pred = wait_for(newer, 60, "a decision after the swap")
    assert "untrained" not in pred["decision"]["reason"]
    assert {o["model_version"] for o in pred["experts"].values()}.isdisjoint({"untrained"})
    assert {o["model_version"] for o in pred["experts"].values()} <= set(versions.values())
    assert http_json(url + "/api/status", token=TOKEN)[1]["versions"]["gate"] == versions["gate"]
    # Kronos got weights (the quick nano) and draws the forecast fan
    pred = wait_for(lambda: (lambda d: d if d.get("kronos") else None)(http_json(url + "/api/latest_prediction", token=TOKEN)[1]),
                    90, "a Kronos forecast")
    assert pred["kronos"]["model_version"].startswith("nano-quick-")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        page = browser.new_context(bypass_csp=True, viewport={"width": 1600, "height": 1100}).new_page()
        page.goto(url + "/?token=" + TOKEN)
        page.wait_for_function("() => { const g = document.querySelector('#live-chart .js-plotly-plot'); "
                               "return g && g.data && g.data.some(t => t.name === 'forecast median' && t.x && t.x.length > 0); }",
                               timeout=60_000)
        page.screenshot(path=str(output_dir / "first_run_fan.png"))
        page.goto(url + "/backtest")  # the trained experts are the default selection now
        page.wait_for_selector("#bt-compare-graph .js-plotly-plot", timeout=30_000)
        page.screenshot(path=str(output_dir / "first_run_backtest.png"))
        browser.close()
    assert "Traceback" not in "".join(lines)
