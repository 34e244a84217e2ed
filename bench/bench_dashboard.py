"""Dashboard benchmark: prints ONE JSON object of medians / p95s.

- update_p95_ms / update_p50_ms: server time of one 1 s Live-page update (the chart Patch callback +
  the panels/equity callback, through Dash's real /_dash-update-component route) with 1,500 candles
  and every overlay on, while the REAL engine replays shared BTC/USDT 1m data (default 600x, i.e.
  10 new candles per update; the engine keeps deciding on every bar meanwhile).
- chart_p95_ms: the chart callback alone.
- update_bytes: median response bytes of one update (all three callbacks).
- first_chart_s: headless Chromium, navigation start -> candles drawn (median of 3 fresh contexts,
  empty cache); first_chart_warm_s: the same after a reload (JS bundles cached).

    .venv/bin/python bench/bench_dashboard.py [--ticks 40] [--speed 60]
Targets: update_p95_ms <= 50, update_bytes <= 20000, first_chart_s <= 1.5, first_chart_warm_s <= 0.8.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from core.config import Secrets, load_config, load_models  # noqa: E402
from core.paths import shared_data_dir  # noqa: E402
from web import figures  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--no-first-run", "--disable-sync"]
N_CANDLES = ("() => { const r = document.getElementById('live-chart'); const g = r && (r.classList.contains("
             "'js-plotly-plot') ? r : r.querySelector('.js-plotly-plot')); "
             "return g && g.data && g.data[0] ? g.data[0].x.length : 0; }")


def _post(client, outputs: list[tuple[str, str]], inputs: list[tuple[str, str, object]],
          state: list[tuple[str, str, object]], changed: str) -> tuple[dict, int, float]:
    body = {
        # Dash's wire format: "id.prop" for one output, "..a.x...b.y.." for several
        "output": (".." + "...".join(f"{i}.{p}" for i, p in outputs) + "..") if len(outputs) > 1
        else f"{outputs[0][0]}.{outputs[0][1]}",
        "outputs": [{"id": i, "property": p} for i, p in outputs],
        "inputs": [{"id": i, "property": p, "value": v} for i, p, v in inputs],
        "state": [{"id": i, "property": p, "value": v} for i, p, v in state],
        "changedPropIds": [changed],
    }
    t0 = time.perf_counter()
    r = client.post("/_dash-update-component", json=body)
    dt = (time.perf_counter() - t0) * 1000.0
    if r.status_code == 204:
        return {}, 0, dt
    if r.status_code != 200:
        raise RuntimeError(f"callback failed {r.status_code}: {r.get_data(as_text=True)[:300]}")
    raw = r.get_data()
    return json.loads(raw)["response"], len(raw), dt


def measure_updates(app, ticks: int) -> dict:
    client = app.server.test_client()  # authenticated like any client (web/auth.py): the bearer token
    client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {app.server.extensions['moe_auth'].token}"
    overlays = list(figures.OVERLAYS)
    chart_state = sigs = eq_state = None
    chart_ms, total_ms, sizes = [], [], []
    for n in range(ticks + 1):
        resp1, b1, t1 = _post(client, [("live-chart", "figure"), ("live-state", "data")],
                              [("live-tick", "n_intervals", n), ("live-timeframe", "value", "1m"),
                               ("live-overlays", "value", overlays)],
                              [("live-state", "data", chart_state), ("live-chart", "relayoutData", None)],
                              "live-tick.n_intervals")
        chart_state = resp1.get("live-state", {}).get("data", chart_state)
        outs = [("live-stats", "children"), ("live-experts", "children"), ("live-trading", "children"),
                ("live-kill", "children"), ("live-system", "children"), ("thr-current", "children"),
                ("live-sigs", "data"), ("live-equity", "figure"), ("live-eq-state", "data")]
        resp2, b2, t2 = _post(client, outs, [("live-tick", "n_intervals", n)],
                              [("live-sigs", "data", sigs), ("live-eq-state", "data", eq_state)],
                              "live-tick.n_intervals")
        sigs = resp2.get("live-sigs", {}).get("data", sigs)
        eq_state = resp2.get("live-eq-state", {}).get("data", eq_state)
        b3 = t3 = 0
        if n == 0:
            first_bytes = b1 + b2 + b3
        else:  # tick 0 is the first render (whole figures); updates are what follows
            chart_ms.append(t1)
            total_ms.append(t1 + t2 + t3)
            sizes.append(b1 + b2 + b3)
        time.sleep(max(0.0, 1.0 - (t1 + t2 + t3) / 1000.0))
    return {
        "update_p95_ms": round(float(np.percentile(total_ms, 95)), 2),
        "update_p50_ms": round(float(np.median(total_ms)), 2),
        "chart_p95_ms": round(float(np.percentile(chart_ms, 95)), 2),
        "update_bytes": int(np.median(sizes)),
        "update_bytes_p95": int(np.percentile(sizes, 95)),
        "first_render_bytes": int(first_bytes),
        "ticks": ticks,
    }


def measure_first_chart(app, runs: int = 3) -> tuple[float | None, float | None]:
    """(cold, warm): median time to the first drawn candles in a fresh browser context (empty HTTP
    cache), and for a reload in a context that has loaded the page once (cached JS bundles)."""
    if not Path(CHROMIUM).exists():
        return None, None
    from playwright.sync_api import sync_playwright

    from web.server import serve_in_thread

    srv = serve_in_thread(app.server, "127.0.0.1", 0)  # the server main_dashboard.py runs (waitress)
    # the login URL sets the session cookie (web/auth.py); the test reads the chart with a JS predicate,
    # which the dashboard's CSP (no eval) would block, hence bypass_csp
    url = f"http://127.0.0.1:{srv.server_port}/?token={app.server.extensions['moe_auth'].token}"
    times, warm = [], []
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
            for _ in range(runs):
                ctx = browser.new_context(viewport={"width": 1600, "height": 1000}, bypass_csp=True)  # cold cache
                page = ctx.new_page()
                t0 = time.perf_counter()
                page.goto(url)
                page.wait_for_function(f"({N_CANDLES})() > 0", timeout=60_000)
                times.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                page.reload()
                page.wait_for_function(f"({N_CANDLES})() > 0", timeout=60_000)
                warm.append(time.perf_counter() - t0)
                ctx.close()
            browser.close()
    finally:
        srv.shutdown()
    return round(float(np.median(times)), 3), round(float(np.median(warm)), 3)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ticks", type=int, default=40)
    ap.add_argument("--speed", type=float, default=600.0,
                    help="replay speed; 600x = 10 new candles per 1 s update (a harsher case than 60x), and "
                         "reaches 1,500 candles in ~150 s")
    args = ap.parse_args()
    import logging

    logging.basicConfig(level=logging.WARNING)
    import core.engine
    from main_dashboard import build_engine
    from web.app import create_app

    # the engine publishes SNAPSHOT_BARS (500) candles per timeframe; the benchmark's case is 1,500
    core.engine.engine.SNAPSHOT_BARS = max(core.engine.engine.SNAPSHOT_BARS, 1500)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config()
        cfg = cfg.model_copy(update={
            "data": cfg.data.model_copy(update={"db_path": str(Path(tmp) / "bench.duckdb")}),
            "training": cfg.training.model_copy(update={"runs_dir": str(Path(tmp) / "runs"),
                                                        "models_dir": str(Path(tmp) / "models")})})
        models = load_models()
        eng = build_engine(cfg, models, replay_path=shared_data_dir() / "binanceus" / "BTC_USDT-1m.csv",
                           speed=args.speed, training=False)
        eng.start()
        try:
            t0 = time.monotonic()
            while len(eng.snapshot().candles.get("1m", ())) < 1500:
                if time.monotonic() - t0 > 300:
                    raise SystemExit("the engine did not show 1,500 candles within 300 s")
                time.sleep(0.2)
            app = create_app(eng, cfg, models_cfg=models, host="127.0.0.1", secrets=Secrets())
            out = {"candles": len(eng.snapshot().candles["1m"]), "overlays": len(figures.OVERLAYS),
                   "speed": args.speed}
            out.update(measure_updates(app, args.ticks))
            out["first_chart_s"], out["first_chart_warm_s"] = measure_first_chart(app)
        finally:
            eng.stop()
    out["load_avg_1m"] = round(os.getloadavg()[0], 2)
    out["targets"] = {"update_p95_ms": 50, "update_bytes": 20_000, "first_chart_s": 1.5, "first_chart_warm_s": 0.8}
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
