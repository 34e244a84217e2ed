"""Order book page on a replay of the recorded Binance BTC books: the pure heatmap update (one column
per second by Patch, small), and in headless Chromium the page showing the heatmap and appending a
column without a reload."""

from __future__ import annotations

import json
import time
from pathlib import Path

import plotly.graph_objects as go
import pytest
from dash import Patch
from helpers import CHROMIUM, CHROMIUM_ARGS, logged_in_page, replay_engine, serve, wait_for

from core.config import load_config
from core.data.book_engine import engine_for_capture, replay_into, start_replay
from core.data.book_replay import read_capture
from web.pages.orderbook import heatmap_update, ladder_figure


@pytest.fixture(scope="module")
def raw(shared_data: Path) -> Path:
    return shared_data / "orderbook" / "binance-2024-08-08" / "raw"


def test_heatmap_full_then_one_column_patches(raw: Path) -> None:
    eng = engine_for_capture(raw, load_config().orderbook)
    stop_ns = 1723161256_000_000_000 + 120 * 10**9
    for m in read_capture(raw):
        if m.recv_ns > stop_ns:
            break
        eng.on_message(m)
    snaps = eng.snapshot_history()
    assert len(snaps) > 100
    venues = sorted(v.venue for v in eng.venues)
    fig, state = heatmap_update(snaps[:-3], list(eng.trades), venues, None)
    assert isinstance(fig, dict) and state is not None
    go.Figure(fig)  # a valid plotly figure
    z = fig["data"][0]["z"]
    assert len(z) == len(snaps) - 3 and fig["data"][0]["type"] == "heatmap"
    # each column sums the selected venues' bid + ask volume of its buckets
    last = snaps[-4]
    assert sum(v for v in z[-1] if v) == pytest.approx(float(last.bid.sum() + last.ask.sum()), rel=1e-3)
    for k in (3, 2, 1):  # one new second each time: exactly one column appended
        p, state = heatmap_update(snaps[: len(snaps) - k + 1], list(eng.trades), venues, state)
        assert isinstance(p, Patch)
        ops = p.to_plotly_json()["operations"]
        z_ops = [o for o in ops if o["location"] == ["data", 0, "z"]]
        assert len(z_ops) == 1 and z_ops[0]["operation"] == "Append"
        assert len(json.dumps(p.to_plotly_json())) < 10_000
    only_spot, st2 = heatmap_update(snaps, list(eng.trades), ["binance"], state)
    assert isinstance(only_spot, dict)  # a venue switch re-renders
    assert sum(v for v in only_spot["data"][0]["z"][-1] if v) == pytest.approx(float(snaps[-1].bid[1].sum()
                                                                              + snaps[-1].ask[1].sum()), rel=1e-3)
    stacked = ladder_figure(snaps[-1], venues, "stacked")
    assert stacked.layout.barmode == "relative" and len(stacked.data) == 6
    assert ladder_figure(snaps[-1], ["binance"], "overlay").layout.barmode == "overlay"


@pytest.mark.browser
@pytest.mark.skipif(not CHROMIUM.exists(), reason="no Chromium at /usr/bin/chromium")
def test_orderbook_page_heatmap_appends_without_reload(shared_data: Path, raw: Path, tmp_path: Path,
                                                       output_dir: Path) -> None:
    from playwright.sync_api import sync_playwright

    from core.config import Secrets
    from web.app import create_app

    cfg = load_config()
    book = engine_for_capture(raw, cfg.orderbook)
    th, stop = start_replay(book, raw, speed=4.0)
    eng, cfg2, models = replay_engine(shared_data, tmp_path, speed=600.0, min_bars=100)
    app = create_app(eng, cfg2, models_cfg=models, host="127.0.0.1", secrets=Secrets(), book=book)
    srv, url = serve(app)
    n_cols = "() => { const g = document.querySelector('#ob-heatmap .js-plotly-plot'); " \
             "return g && g.data && g.data[0] && g.data[0].z ? g.data[0].z.length : 0; }"
    try:
        wait_for(lambda: len(book.history) >= 3, 60, "3 replayed book seconds")
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
            page = logged_in_page(browser, app, url, viewport={"width": 1600, "height": 1100})
            page.goto(url.rstrip("/") + "/orderbook")
            page.wait_for_function(f"({n_cols})() >= 3", timeout=60_000)
            assert page.locator("#ob-heatmap .heatmaplayer, #ob-heatmap g.hm").count() >= 1
            page.evaluate("() => { window.__noReload = 7; }")
            first = page.evaluate(n_cols)
            page.wait_for_function(f"({n_cols})() > {first}", timeout=30_000)
            assert page.evaluate("() => window.__noReload") == 7
            page.wait_for_selector("#ob-status-table", timeout=10_000)
            status = page.inner_text("#ob-status-table")
            assert "binancecoinm" in status and "replay" in status
            time.sleep(1.0)
            page.screenshot(path=str(output_dir / "dashboard_orderbook.png"), full_page=True)
            browser.close()
    finally:
        stop.set()
        srv.shutdown()
        eng.stop()
    _ = replay_into  # the same replay the CLI uses
