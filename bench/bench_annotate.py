"""Annotation benchmark: prints ONE JSON object.

- page_first_chart_s: headless Chromium, navigation start -> the Annotate page's main chart drawn with
  10,080 real BTC/USDT 1m candles (7 days, /annotate?from=2023-03-14&to=2023-03-20) and 500 annotation
  spans on it; median of 3 fresh browser contexts (empty cache). The three smaller charts are asked for
  once the main chart is drawn, so they are not in this figure.
- click_to_saved_ms_p50 / _p95: server time of the second click (the exit) through Dash's real
  /_dash-update-component route -- snapped to the candle, checked against the store (gap / range /
  price), stored as a new row, outcome computed -- over 100 new annotations.
- cases_per_s: make_cases over the 500 annotations (every labelled bar a case with the FeatureBuilder
  rows of the whole stored history before it); median of 3 runs.

    .venv/bin/python bench/bench_annotate.py
Targets: page_first_chart_s <= 2, click_to_saved_ms_p95 <= 100, cases_per_s >= 1000.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from core.config import Secrets, load_config, load_models  # noqa: E402
from core.paths import shared_data_dir  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--no-first-run", "--disable-sync"]
DAYS = ("2023-03-14", "2023-03-20")
N_ANN = 500
MIN = 60_000
DRAWN = ("() => { const g = document.querySelector('#ann-chart .js-plotly-plot'); return !!(g && g.data && g.data[0]"
         " && (g.data[0].x || g.data[0].y).length >= 10000"
         " && g.data.slice(-3).reduce((n, t) => n + (t.x ? t.x.length : 0), 0) >= 6 * 500); }")  # 500 spans


def ms(day: str) -> int:
    return int(pd.Timestamp(day, tz="UTC").value // 1_000_000)


def _post(client, output: str, inputs, state, changed):
    """One callback through Dash's route; ``output`` is the callback's key in app.callback_map."""
    outs = [o.rsplit(".", 1) for o in output.strip(".").split("...")]
    body = {"output": output, "outputs": [{"id": i, "property": p} for i, p in outs],
            "inputs": [{"id": i, "property": p, "value": v} for i, p, v in inputs],
            "state": [{"id": i, "property": p, "value": v} for i, p, v in state], "changedPropIds": [changed]}
    t0 = time.perf_counter()
    r = client.post("/_dash-update-component", json=body)
    dt = (time.perf_counter() - t0) * 1000.0
    if r.status_code not in (200, 204):
        raise RuntimeError(f"callback failed {r.status_code}: {r.get_data(as_text=True)[:300]}")
    return dt


def main() -> int:
    from compose import backtest_components
    from core.annotations.cases import make_cases
    from core.annotations.store import AnnotationStore, snap
    from core.features import FeatureBuilder
    from core.types import SeriesKey
    from main_dashboard import build_engine
    from web.app import create_app
    from web.auth import COOKIE

    tmp = Path(tempfile.mkdtemp(prefix="bench_annotate_"))
    cfg, models = load_config(), load_models()
    cfg = cfg.model_copy(update={
        "data": cfg.data.model_copy(update={"db_path": str(tmp / "moe.duckdb")}),
        "training": cfg.training.model_copy(update={"runs_dir": str(tmp / "runs"), "models_dir": str(tmp / "models")}),
    })
    eng = build_engine(cfg, models, replay_path=shared_data_dir() / "binanceus" / "BTC_USDT-1m.csv", training=False)
    store = eng.store
    key = SeriesKey(eng.exchange, "BTC/USDT", "1m")
    ann = AnnotationStore(store)
    lo, hi = ms(DAYS[0]), ms(DAYS[1]) + 86_400_000
    starts = np.linspace(lo, hi - 30 * MIN, N_ANN).astype(np.int64) // MIN * MIN
    anns = [ann.add(snap(store, key, int(t), int(t) + 10 * MIN, tags=("bench",))) for t in starts]

    # cases
    builder = FeatureBuilder(models.features, "1m")
    history = store.candles(key, None, hi)
    runs = []
    for _ in range(3):
        t0 = time.perf_counter()
        cases = make_cases(builder, history, anns)
        runs.append(time.perf_counter() - t0)
    cases_per_s = len(cases) / float(np.median(runs))

    app = create_app(eng, cfg, models_cfg=models, host="127.0.0.1", secrets=Secrets(),
                     backtest_components=backtest_components)
    policy = app.server.extensions["moe_auth"]
    client = app.server.test_client()  # authenticated like any client (web/auth.py): the bearer token
    client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {policy.token}"
    series = f"{key.exchange}|{key.symbol}|{key.timeframe}"
    outs = next(k for k in app.callback_map if "ann-pending.data" in k and "ann-undo-stack.data" in k)
    saved = []
    free = ms("2023-03-21")  # a day without the bench's spans: new annotations there
    for k in range(100):
        t_entry, t_exit = free + (k * 12) * MIN, free + (k * 12 + 8) * MIN

        def state(pending, k=k):
            return [("ann-pending", "data", pending), ("ann-undo-stack", "data", []), ("ann-version", "data", k),
                    ("ann-series", "value", series), ("ann-direction", "value", "auto"),
                    ("ann-exit-price", "value", None), ("ann-notes", "value", ""), ("ann-tags", "value", ""),
                    ("ann-selected", "value", None), ("ann-ids", "data", [])]

        def inputs(t):
            return [("ann-chart", "clickData", {"points": [{"x": int(t)}]}), ("ann-chart", "relayoutData", None),
                    ("ann-undo", "n_clicks", None), ("ann-delete", "n_clicks", None), ("ann-cancel", "n_clicks", None)]

        close = float(store.candles(key, t_entry, t_entry + MIN)["close"].iloc[0])
        _post(client, outs, inputs(t_entry), state(None), "ann-chart.clickData")
        saved.append(_post(client, outs, inputs(t_exit), state({"ts": t_entry, "price": close}),
                           "ann-chart.clickData"))
    n_after = len(ann.list())
    if n_after != N_ANN + 100:
        raise RuntimeError(f"expected {N_ANN + 100} stored annotations, found {n_after}")
    for a in ann.list(tag=None):  # keep exactly the 500 for the page figure
        if "bench" not in a.tags:
            ann.delete(a.id)

    # first chart in Chromium
    from playwright.sync_api import sync_playwright
    from werkzeug.serving import make_server

    srv = make_server("127.0.0.1", 0, app.server, threaded=True)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{srv.server_port}/annotate?from={DAYS[0]}&to={DAYS[1]}"
    firsts = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        for _ in range(3):
            # logged in (a session cookie); bypass_csp only lets this script's JS probe read the figure
            c = browser.new_context(viewport={"width": 1600, "height": 1200}, bypass_csp=True)
            sid, _ = policy.sessions.new()
            c.add_cookies([{"name": COOKIE, "value": sid, "url": url.split("/annotate")[0] + "/", "httpOnly": True,
                            "sameSite": "Strict"}])
            page = c.new_page()
            page.goto(url)
            end = time.monotonic() + 120
            while not page.evaluate(DRAWN):
                if time.monotonic() > end:
                    raise RuntimeError("the Annotate chart was not drawn in 120 s")
                page.wait_for_timeout(20)
            firsts.append(page.evaluate("() => performance.now()") / 1000.0)
            c.close()
        browser.close()
    srv.shutdown()
    candles_on_page = len(store.candles(key, lo, hi))
    store.close()
    print(json.dumps({
        "page_first_chart_s": round(float(np.median(firsts)), 3),
        "click_to_saved_ms_p50": round(float(np.percentile(saved, 50)), 2),
        "click_to_saved_ms_p95": round(float(np.percentile(saved, 95)), 2),
        "cases_per_s": round(cases_per_s, 1),
        "cases": len(cases), "annotations": N_ANN, "candles_on_page": candles_on_page, "clicks": len(saved),
        "load_avg_1m": round(os.getloadavg()[0], 2), "cpus": os.cpu_count(),
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
