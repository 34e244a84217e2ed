"""Browser tests: headless Chromium (Playwright) against the REAL engine replaying shared BTC/USDT data.

The Dash server runs in a background thread (waitress on 127.0.0.1, port 0, logged in via helpers). Screenshots
of each page go to test-output/ (the ``output_dir`` fixture).
"""

from __future__ import annotations

import time

import pytest
from helpers import CHROMIUM, chromium_page, served_replay, wait_for

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="no Chromium at /usr/bin/chromium (apt-get install chromium)"),
]

# JS helpers reading the plotly graph div that dcc.Graph renders
N_CANDLES = "() => { const g = document.querySelector('#live-chart .js-plotly-plot'); " \
            "return g && g.data && g.data[0] ? g.data[0].x.length : 0; }"
LAST_X = "() => { const g = document.querySelector('#live-chart .js-plotly-plot'); " \
         "return g && g.data && g.data[0] && g.data[0].x.length ? g.data[0].x[g.data[0].x.length - 1] : null; }"


@pytest.fixture(scope="module")
def served(shared_data, tmp_path_factory):
    with served_replay(shared_data, tmp_path_factory.mktemp("browser"), speed=600.0) as served:
        yield served


@pytest.fixture(scope="module")
def page(served):
    with chromium_page(served[2], served[1], viewport={"width": 1600, "height": 1150}) as pg:
        yield pg


def test_live_page_shows_candles_and_updates_without_reload(served, page, output_dir) -> None:
    eng, url, _ = served
    page.goto(url + "/")
    page.wait_for_function(f"({N_CANDLES})() > 10", timeout=30_000)
    assert page.locator("#live-chart .candlestick, #live-chart g.trace.boxes").count() >= 1
    page.evaluate("() => { window.__noReload = 42; }")
    first = page.evaluate(LAST_X)
    # the replay closes a new 1m candle every second at 60x: it must appear by Patch, no reload
    page.wait_for_function(f"({LAST_X})() !== {first!r}", timeout=20_000)
    assert page.evaluate("() => window.__noReload") == 42
    snap_last = eng.snapshot().candles["1m"]["ts"].iloc[-1]
    assert page.evaluate(N_CANDLES) > 10 and snap_last > 0
    page.wait_for_selector("#experts-table", timeout=20_000)
    # the threshold preview heatmap over the cached decisions (refreshed every 5 s)
    page.wait_for_function("() => { const g = document.querySelector('#live-thr-preview .js-plotly-plot'); "
                           "return g && g.data && g.data.length > 0 && g.data[0].type === 'heatmap'; }",
                           timeout=30_000)
    time.sleep(1.0)
    page.screenshot(path=str(output_dir / "dashboard_live.png"), full_page=True)


def test_buy_threshold_reaches_engine_and_next_decision(served, page) -> None:
    eng, url, _ = served
    page.goto(url + "/")
    box = page.locator("#thr-buy")
    box.wait_for(timeout=20_000)
    box.fill("0.73")
    box.press("Enter")
    wait_for(lambda: abs(eng.snapshot().thresholds.buy - 0.73) < 1e-9, 15, "engine buy threshold 0.73")
    wait_for(lambda: (d := eng.snapshot().decision) is not None and abs(d.thresholds.buy - 0.73) < 1e-9, 60,
             "a decision made with buy threshold 0.73")
    page.wait_for_selector("text=buy 0.73", timeout=15_000)


def test_toggling_expert_changes_next_gate_weights(served, page, output_dir) -> None:
    eng, url, _ = served
    wait_for(lambda: eng.snapshot().decision is not None, 60, "a first decision")
    snap = eng.snapshot()
    enabled = [n for n, s in snap.experts.items() if s.enabled]
    assert len(enabled) >= 2, f"need two enabled experts to see weights move, have {enabled}"
    name = enabled[0]
    page.goto(url + "/models")
    page.wait_for_selector(f"#expert-card-{name}", timeout=20_000)
    page.screenshot(path=str(output_dir / "dashboard_models.png"), full_page=True)
    before = snap.decision.id
    page.locator(f"#expert-card-{name} input[type=checkbox]").first.click()
    page.wait_for_selector("#models-ack", timeout=10_000)
    wait_for(lambda: eng.snapshot().experts[name].enabled is False, 15, f"{name} disabled in the engine")
    d = wait_for(lambda: (x := eng.snapshot().decision) is not None and x.id != before
                 and x.weights.get(name, 0.0) == 0.0 and x, 60, f"a decision without {name}")
    others = [w for n, w in d.weights.items() if n != name]
    assert sum(others) == pytest.approx(1.0, abs=1e-6)
    page.locator(f"#expert-card-{name} input[type=checkbox]").first.click()
    wait_for(lambda: eng.snapshot().experts[name].enabled is True, 15, f"{name} enabled again")


def test_backtest_page_runs_a_backtest_and_plots_its_report(served, page, output_dir) -> None:
    """The whole page through the browser: the form is prefilled from the store (the replayed file's
    first/last day, the engine's experts), Run starts a real backtest on the engine's store, its
    report appears in the stored-reports list, and ticking it plots its equity curve."""
    eng, url, _ = served
    page.goto(url + "/backtest")
    page.wait_for_selector("#bt-run", timeout=20_000)
    dom = page.evaluate("() => { const r = [...document.querySelectorAll('[id^=bt-range]')]; "
                        "return r.map(e => e.outerHTML.slice(0, 400)).join(' | '); }")
    values = page.evaluate("() => [...document.querySelectorAll('[id^=bt-range], [id^=bt-range] input')]"
                           ".filter(e => e.tagName === 'INPUT').map(e => e.value)")
    assert any("2023" in v and ("03-01" in v or "03/01" in v or "Mar 1" in v) for v in values), (values, dom)
    boxes = page.locator("#bt-experts input[type=checkbox]")
    assert boxes.count() == len(eng.snapshot().experts) >= 1
    page.click("#bt-run")
    wait_for(lambda: "finished" in page.inner_text("#bt-job-msg") or "failed" in page.inner_text("#bt-job-msg"),
             240, "the backtest job to end")
    assert "finished" in page.inner_text("#bt-job-msg"), page.inner_text("#bt-job-msg")
    option = page.locator("#bt-compare input[type=checkbox]").first
    option.wait_for(timeout=20_000)
    option.check()
    page.wait_for_function("() => { const g = document.querySelector('#bt-compare-graph .js-plotly-plot'); "
                           "return g && g.data && g.data.length > 0 && g.data[0].x.length > 100; }",
                           timeout=20_000)
    # the report's threshold preview heatmap (core/backtest/thresholds.py), its counts in the cells
    page.wait_for_function("() => { const g = document.querySelector('#bt-threshold-graph .js-plotly-plot'); "
                           "return g && g.data && g.data.length > 0 && g.data[0].type === 'heatmap' "
                           "&& g.data[0].y.length === 12; }", timeout=20_000)
    page.screenshot(path=str(output_dir / "dashboard_backtest.png"), full_page=True)
