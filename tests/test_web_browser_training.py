"""Live training through the UI, in headless Chromium (Playwright): the dashboard replays real BTC/USDT
1m candles (../shared/data) with training allowed; switching the CNN's training on on the Models page
starts its trainer process, the card's live loss curve fills with falling training loss, its version
advances to a promoted online checkpoint while decisions keep flowing, and "roll back" puts the
previous version back. Screenshot: test-output/dashboard_models_training.png.

Online settings are shrunk so this happens in about a minute: a round every 0.5 s on 32-sample
mini-batches, a 60-bar validation window, margin 0 (any lower validation log loss promotes).
"""

from __future__ import annotations

import time

import pytest
from helpers import CHROMIUM, CHROMIUM_ARGS, REPLAY_FILE, logged_in_page, serve, wait_for, web_config

from core.config import Secrets
from web.app import create_app

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="no Chromium at /usr/bin/chromium (apt-get install chromium)"),
]

CARD = "#expert-card-cnn"
# the card's online loss curve (the last plotly graph in the card: no offline runs in this temp dir)
LOSS = ("() => { const g = [...document.querySelectorAll('#expert-card-cnn .js-plotly-plot')].pop(); "
        "return g && g.data && g.data[0] ? g.data[0].y : []; }")


@pytest.fixture(scope="module")
def served(shared_data, tmp_path_factory):
    from main_dashboard import build_engine

    cfg, models = web_config(tmp_path_factory.mktemp("browser_training"))
    experts = {}
    for n, e in models.experts.items():
        online = e.online.model_copy(update={"cadence_s": 0.5, "replay_bars": 600, "val_bars": 60,
                                             "batch_size": 32, "lr": 1e-3, "promote_margin": 0.0,
                                             "promote_z": 0.0})
        experts[n] = e.model_copy(update={"device": "cpu", "online": online})
    models = models.model_copy(update={"experts": experts})
    eng = build_engine(cfg, models, replay_path=shared_data.joinpath(*REPLAY_FILE), speed=300.0, training=True)
    eng.start()
    app = create_app(eng, cfg, models_cfg=models, host="127.0.0.1", secrets=Secrets())
    srv, url = serve(app)
    try:
        wait_for(lambda: eng.snapshot().decision is not None, 180, "a first decision")
        yield eng, url, app
    finally:
        srv.shutdown()
        eng.stop()


def test_training_switch_shows_falling_loss_version_advance_and_rollback(served, output_dir) -> None:
    from playwright.sync_api import sync_playwright

    eng, url, app = served
    before = eng.snapshot().experts["cnn"].version
    assert not before.startswith("online-")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            page = logged_in_page(browser, app, url, viewport={"width": 1600, "height": 1400})
            page.goto(url + "/models")
            page.wait_for_selector(CARD, timeout=30_000)
            assert page.evaluate(LOSS) == []  # no round yet: the empty curve
            # nothing to roll back to for an expert that never swapped
            assert page.locator("#expert-card-transformer button:has-text('roll back')").is_disabled()
            page.locator("#training-wrap-cnn input[type=checkbox]").click()
            page.wait_for_selector("text=cnn: live training started", timeout=15_000)
            wait_for(lambda: eng.snapshot().experts["cnn"].training, 60, "the cnn trainer process to run")
            d0 = eng.snapshot().decision.ts

            # the version shown on the card advances to a promoted online checkpoint ...
            page.wait_for_function(
                f"() => document.querySelector('{CARD}').innerText.includes('version online-')", timeout=150_000)
            promoted = eng.snapshot().experts["cnn"].version
            assert promoted.startswith("online-")
            assert any(s.expert == "cnn" and s.kind == "promote" and s.version == promoted
                       for s in eng.snapshot().swaps)
            # ... the live curve has a point per published round and the training loss falls ...
            page.wait_for_function(f"({LOSS})().filter(v => v !== null).length >= 4", timeout=60_000)
            loss = [v for v in page.evaluate(LOSS) if v is not None]
            rounds = len(eng.snapshot().trainers["cnn"].history)
            assert len(loss) <= rounds and loss[-1] < loss[0], f"training loss did not fall: {loss}"
            # ... while the engine keeps deciding on new bars
            wait_for(lambda: eng.snapshot().decision.ts > d0 + 10 * 60_000, 30, "decisions during training")
            page.wait_for_selector("text=trainer: running", timeout=10_000)
            time.sleep(1.5)  # one more interval so the screenshot shows the freshest status line
            page.screenshot(path=str(output_dir / "dashboard_models_training.png"), full_page=True)

            # stop training so no new promotion races the rollback, then roll back from the card
            page.locator("#training-wrap-cnn input[type=checkbox]").click()
            wait_for(lambda: not eng.snapshot().experts["cnn"].training, 30, "the trainer to stop")
            live = eng.snapshot().experts["cnn"].version
            button = page.locator("#expert-card-cnn button:has-text('roll back')")
            page.wait_for_function(
                "() => { const b = [...document.querySelectorAll('#expert-card-cnn button')]"
                ".find(x => x.innerText.includes('roll back')); return b && !b.disabled; }", timeout=15_000)
            button.click()
            page.wait_for_selector("#rollback-ack", timeout=10_000)
            sw = wait_for(lambda: next((s for s in reversed(eng.snapshot().swaps) if s.kind == "rollback"), None),
                          30, "the rollback swap")
            assert sw.expert == "cnn" and sw.previous == live and eng.snapshot().experts["cnn"].version == sw.version
            assert sw.version != live
            page.wait_for_function(
                f"() => document.querySelector('{CARD}').innerText.includes('version {sw.version}')", timeout=15_000)
        finally:
            browser.close()
