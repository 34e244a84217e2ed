"""The done-when of the stocks issue in a browser: the real engine replays the shared AMZN minutes (as
``make run ARGS="--replay ../shared/data/stocks/AMZN-1m-alpaca-2025-01-13_2025-01-17.csv --symbol AMZN"``
does), and the Live page shows an RTH-only chart in New York time with the gaps between sessions hidden,
the session marks, a Kronos forecast fan, decisions, and the market's state. Kronos is a freshly seeded
tiny bundle (the test checks the plumbing, not forecast skill). Screenshot: test-output/dashboard_stock.png."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from helpers import CHROMIUM, CHROMIUM_ARGS, logged_in_page, serve, tiny_kronos_dir, web_config

import compose
from compose import backtest_components
from core.config import Secrets
from core.engine import ReplayConfig
from core.market import SessionCalendar
from web.app import create_app

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="no Chromium at /usr/bin/chromium (apt-get install chromium)"),
]

FIG = "() => { const g = document.querySelector('#live-chart .js-plotly-plot'); " \
      "return g && g.data && g.data[0] && g.data[0].x.length ? " \
      "{x: g.data[0].x, names: g.data.map(t => [t.name, (t.x || []).length]), " \
      "breaks: (g.layout.xaxis.rangebreaks || []).length, shapes: (g.layout.shapes || []).length} : null; }"


def test_amzn_replay_shows_an_rth_chart_with_forecast_and_decisions(shared_data: Path, tmp_path: Path,
                                                                    output_dir: Path) -> None:
    from playwright.sync_api import sync_playwright

    cfg, models = web_config(tmp_path)
    experts = dict(models.experts)
    experts["kronos"] = experts["kronos"].model_copy(update={
        "enabled": True, "device": "cpu",
        "params": {"model": str(tiny_kronos_dir(tmp_path)), "lookback": 64, "samples": 8, "calibrated": False}})
    models = models.model_copy(update={"experts": experts})
    # from 13:00 ET on the first day to 11:00 ET on the second, as fast as possible: the chart then holds
    # two sessions (one night to hide) and the engine has decided and forecast on both sides of it
    def et(s: str) -> int:
        return int(pd.Timestamp(s, tz="America/New_York").tz_convert("UTC").value // 1_000_000)

    eng = compose.build_engine(cfg, models, symbol="AMZN", training=False,
                               replay=ReplayConfig(speed=None, start_ms=et("2025-01-13 13:00"),
                                                   end_ms=et("2025-01-14 11:00")),
                               replay_path=shared_data / "stocks" / "AMZN-1m-alpaca-2025-01-13_2025-01-17.csv")
    assert (eng.symbol, eng.exchange) == ("AMZN", "alpaca")
    eng.start()
    srv = None
    try:
        assert eng.wait_idle(240)
        snap = eng.snapshot()
        assert snap.kronos is not None and len(snap.recent_decisions) > 5
        assert len(snap.candles["1m"]) == 180 + 90 and snap.market.is_open
        assert snap.market.calendar == "XNYS" and snap.market.session == "rth"
        assert SessionCalendar("XNYS", "rth").contains(snap.candles["1m"]["ts"].to_numpy(), 60_000).all()
        app = create_app(eng, cfg, models_cfg=models, host="127.0.0.1", secrets=Secrets(),
                         backtest_components=backtest_components)
        srv, url = serve(app)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
            page = logged_in_page(browser, app, url, viewport={"width": 1600, "height": 1150})
            page.goto(url + "/")
            page.wait_for_function(f"({FIG})() !== null", timeout=60_000)
            page.wait_for_function(f"({FIG})().names.some(n => n[0] === 'forecast median' && n[1] > 1)",
                                   timeout=60_000)
            fig = page.evaluate(FIG)
            page.wait_for_selector("text=Market", timeout=20_000)
            page.wait_for_selector("#experts-table", timeout=20_000)
            page.screenshot(path=str(output_dir / "dashboard_stock.png"), full_page=True)
            browser.close()
        # candles in New York wall time, all inside 09:30-15:59; the gaps between sessions hidden
        x = pd.to_datetime(pd.Series(fig["x"]), unit="ms") if isinstance(fig["x"][0], int | float) \
            else pd.to_datetime(pd.Series(fig["x"]))
        hm = x.dt.strftime("%H:%M")
        assert ((hm >= "09:30") & (hm <= "15:59")).all() and len(x) == 270
        assert fig["breaks"] >= 1 and fig["shapes"] >= 2  # rangebreaks; open/close lines
    finally:
        if srv is not None:
            srv.shutdown()
        eng.stop()
