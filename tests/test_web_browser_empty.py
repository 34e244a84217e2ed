"""Empty states in Chromium: a dashboard whose engine has no candle, no decision, no equity, no report
and no training curve yet. Every graph must say in words what is missing and what to do (no bare axes,
no tick labels)."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import CHROMIUM, chromium_page, serve, web_config

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="no Chromium at /usr/bin/chromium (apt-get install chromium)"),
]

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "data" / "sample" / "BTC_USDT-1m.csv"

# the annotation text of a graph and how many axis tick labels it draws
GRAPH = ("(sel) => { const g = document.querySelector(sel + ' .js-plotly-plot'); if (!g) return null; "
         "const a = [...g.querySelectorAll('.annotation-text')].map(t => t.textContent).join(' | '); "
         "return {text: a, ticks: g.querySelectorAll('.xtick, .ytick, .y2tick').length}; }")


@pytest.fixture(scope="module")
def empty_dashboard(tmp_path_factory):
    """The real engine on the bundled sample, built but not started: nothing replayed yet."""
    from compose import backtest_components
    from core.config import Secrets
    from main_dashboard import build_engine
    from web.app import create_app

    cfg, models = web_config(tmp_path_factory.mktemp("empty"))
    eng = build_engine(cfg, models, replay_path=SAMPLE, speed=60.0, training=False)
    try:
        app = create_app(eng, cfg, models_cfg=models, host="127.0.0.1", secrets=Secrets(),
                         backtest_components=backtest_components)
        srv, url = serve(app)
        try:
            yield app, url
        finally:
            srv.shutdown()
    finally:
        eng.store.close()


def _graph(page, sel: str) -> dict:
    page.wait_for_function(f"({GRAPH})('{sel}') && ({GRAPH})('{sel}').text.length > 0", timeout=30_000)
    return page.evaluate(f"({GRAPH})('{sel}')")


@pytest.mark.timeout(300)
def test_every_empty_graph_says_what_is_missing_in_words(empty_dashboard, output_dir) -> None:
    app, url = empty_dashboard
    with chromium_page(app, url, viewport={"width": 1600, "height": 1100}) as page:
        page.goto(url + "/")
        chart = _graph(page, "#live-chart")
        assert "No 1m candles yet for BTC/USDT" in chart["text"] and chart["ticks"] == 0
        equity = _graph(page, "#live-equity")
        assert "No equity yet" in equity["text"] and equity["ticks"] == 0
        preview = _graph(page, "#live-thr-preview")
        assert "No threshold preview yet" in preview["text"] and preview["ticks"] == 0
        page.screenshot(path=str(output_dir / "empty_live.png"))

        page.goto(url + "/backtest")
        compare = _graph(page, "#bt-compare-graph")
        assert "No backtest reports yet" in compare["text"] and compare["ticks"] == 0
        for sel, words in (("#bt-sweep-parcoords", "No completed sweep trials yet"),
                           ("#bt-sweep-heatmap", "No heatmap"), ("#bt-wf-attr", "No walk-forward selected"),
                           ("#bt-threshold-graph", "No threshold preview yet")):
            g = _graph(page, sel)
            assert words in g["text"] and g["ticks"] == 0, (sel, g)
        page.screenshot(path=str(output_dir / "empty_backtest.png"), full_page=True)

        page.goto(url + "/models")
        page.get_by_text("offline training metrics: none recorded yet (Train now").first.wait_for(timeout=30_000)
        assert page.locator("#page .js-plotly-plot .xtick").count() == 0  # no graph with bare axes

        page.goto(url + "/orderbook")  # no book source: what to start, with what a user has
        page.locator("#ob-empty").wait_for(timeout=30_000)
        hint = page.locator("#ob-empty").inner_text()
        assert "python main_dashboard.py --book live" in hint and "book record" in hint and "shared" not in hint
