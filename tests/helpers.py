"""Shared helpers of the web tests (no tests here): a REAL engine replaying shared BTC/USDT data into a
temporary DuckDB store, built exactly as ``main_dashboard.py --replay`` builds it."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from core.config import AppConfig, ModelsConfig, load_config, load_models

REPLAY_FILE = ("binanceus", "BTC_USDT-1m.csv")
CHROMIUM = Path("/usr/bin/chromium")
# headless Chromium on a machine without a network: no background traffic, no sandbox (root in CI)
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--disable-sync"]


def web_config(tmp: Path) -> tuple[AppConfig, ModelsConfig]:
    """The project's config.yaml/models.yml with every written path moved under ``tmp``."""
    cfg = load_config()
    cfg = cfg.model_copy(update={
        "data": cfg.data.model_copy(update={"db_path": str(tmp / "moe.duckdb")}),
        "backtest": cfg.backtest.model_copy(update={"reports_dir": str(tmp / "reports")}),
        "training": cfg.training.model_copy(update={"runs_dir": str(tmp / "runs"),
                                                    "models_dir": str(tmp / "models")}),
        # the web tests show trades of untrained experts on purpose (the rule itself: test_first_run.py)
        "execution": cfg.execution.model_copy(update={"allow_untrained": True}),
    })
    return cfg, load_models()


def binanceus_minutes(shared_data: Path, skip: int = 0, nrows: int | None = None) -> Any:
    """Real BTC/USDT minutes of the shared Binance.US file from data row ``skip`` on, with ``ts`` (ms)."""
    import pandas as pd

    df = pd.read_csv(shared_data.joinpath(*REPLAY_FILE), skiprows=range(1, skip + 1), nrows=nrows)
    df["ts"] = pd.to_datetime(df["timestamp"]).dt.as_unit("ms").astype("int64")
    return df


def wait_for(pred: Callable[[], Any], timeout: float, what: str, every: float = 0.1) -> Any:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        v = pred()
        if v:
            return v
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def replay_engine(shared_data: Path, tmp: Path, speed: float = 600.0, min_bars: int = 200
                  ) -> tuple[Any, AppConfig, ModelsConfig]:
    """Start the real engine on a replay of the shared file (from its first bar, at ``speed`` x real
    time); returns (engine, cfg, models) once ``min_bars`` candles and a first decision exist."""
    from main_dashboard import build_engine

    cfg, models = web_config(tmp)
    eng = build_engine(cfg, models, replay_path=shared_data.joinpath(*REPLAY_FILE), speed=speed,
                       training=False)
    eng.start()
    try:
        wait_for(lambda: len(eng.snapshot().candles.get("1m", ())) >= min_bars
                 and eng.snapshot().decision is not None, 180, f"{min_bars} replayed candles and a decision")
    except BaseException:
        eng.stop()
        raise
    return eng, cfg, models


def tiny_kronos_dir(root: Path) -> Path:
    """A freshly seeded, tiny Kronos bundle (tokenizer/ + model/), the fixture's layer sizes."""
    import torch

    from NN.experts.kronos.config import PredictorConfig, TokenizerConfig
    from NN.experts.kronos.hub import save_pretrained
    from NN.experts.kronos.model import KronosModel
    from NN.experts.kronos.tokenizer import KronosTokenizer

    torch.manual_seed(0)
    tok = KronosTokenizer(TokenizerConfig(d_model=16, n_heads=2, ff_dim=32, n_enc_layers=1, n_dec_layers=1,
                                          s1_bits=4, s2_bits=4))
    model = KronosModel(PredictorConfig(s1_bits=4, s2_bits=4, n_layers=1, d_model=16, n_heads=2, ff_dim=32))
    d = root / "kronos-tiny"
    save_pretrained(tok, d / "tokenizer")
    save_pretrained(model, d / "model")
    return d


# ---------------------------------------------------------------- talking to the dashboard (auth in one place)
# Every test that calls the dashboard goes through these: the server always needs a credential
# (web/auth.py), state-changing calls need the dashboard's own Origin and JSON bodies.


def auth_policy(app: Any) -> Any:
    """The running app's ``web.auth.AuthPolicy`` (its token, sessions, limiter)."""
    return app.server.extensions["moe_auth"]


def auth_headers(app: Any) -> dict[str, str]:
    return {"Authorization": f"Bearer {auth_policy(app).token}"}


def api_client(app: Any) -> Any:
    """A Flask test client of ``app`` that sends the bearer token with every request."""
    c = app.server.test_client()
    c.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {auth_policy(app).token}"
    return c


def ui_client(app: Any) -> Any:
    """A Flask test client logged in like a browser: a session cookie from POST /login and the
    dashboard's own Origin on every request (what a browser sends for its own pages)."""
    c = app.server.test_client()
    c.environ_base["HTTP_ORIGIN"] = "http://localhost"
    r = c.post("/login", data={"token": auth_policy(app).token, "next": "/"})
    assert r.status_code == 302, r.get_data(as_text=True)[:200]
    return c


def http_session(app: Any, base_url: str) -> Any:
    """A ``requests.Session`` for a served app: bearer token, the server's own Origin."""
    import requests

    s = requests.Session()
    s.headers.update({**auth_headers(app), "Origin": base_url.rstrip("/")})
    return s


def serve(app: Any) -> tuple[Any, str]:
    """Serve ``app`` on 127.0.0.1 (random port) with the production server main_dashboard.py uses;
    returns (server, base url without a trailing slash); stop with ``server.shutdown()``."""
    from web.server import serve_in_thread

    srv = serve_in_thread(app.server, "127.0.0.1", 0, threads=8)
    return srv, f"http://127.0.0.1:{srv.server_port}"


def browser_context(browser: Any, app: Any, base_url: str, *, bypass_csp: bool = True, **kwargs: Any) -> Any:
    """A Playwright browser context already logged in (a fresh session cookie for ``base_url``).

    ``bypass_csp``: the UI tests read the page with JavaScript strings (``wait_for_function``), which the
    dashboard's CSP (no 'unsafe-eval') rightly blocks; tests/test_security_attacks.py opens the pages
    with the CSP enforced."""
    ctx = browser.new_context(bypass_csp=bypass_csp, **kwargs)
    sid, _ = auth_policy(app).sessions.new()
    from web.auth import COOKIE

    ctx.add_cookies([{"name": COOKIE, "value": sid, "url": base_url + "/", "httpOnly": True,
                      "sameSite": "Strict"}])
    return ctx


def logged_in_page(browser: Any, app: Any, base_url: str, **kwargs: Any) -> Any:
    """A new page in a logged-in context (``browser.new_page`` replacement)."""
    return browser_context(browser, app, base_url, **kwargs).new_page()


def http_json(url: str, method: str = "GET", body: dict | None = None, timeout: float = 30.0,
              token: str | None = None) -> tuple[int, Any]:
    """One HTTP request to a dashboard served by another process (main_dashboard.py) -> (status,
    parsed JSON), with its bearer ``token`` and its own Origin."""
    import json
    import urllib.error
    import urllib.request
    from urllib.parse import urlsplit

    data = json.dumps(body).encode() if body is not None else None
    parts = urlsplit(url)
    headers = {"Origin": f"{parts.scheme}://{parts.netloc}"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    if data is not None:
        headers["Content-Type"] = "application/json"
    req = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


@contextmanager
def served_replay(shared_data: Path, tmp: Path, **replay_kw: Any) -> Iterator[tuple[Any, str, Any]]:
    """The real engine on a replay of the shared file (``replay_engine``), its dashboard served on
    127.0.0.1; yields (engine, base url, app) and stops both after."""
    from compose import backtest_components
    from core.config import Secrets
    from web.app import create_app

    eng, cfg, models = replay_engine(shared_data, tmp, **replay_kw)
    try:
        app = create_app(eng, cfg, models_cfg=models, host="127.0.0.1", secrets=Secrets(),
                         backtest_components=backtest_components)
        srv, url = serve(app)
        try:
            yield eng, url, app
        finally:
            srv.shutdown()
    finally:
        eng.stop()


@contextmanager
def chromium_page(app: Any, base_url: str, **page_kw: Any) -> Iterator[Any]:
    """A logged-in page in headless Chromium (/usr/bin/chromium); the browser closes after."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            yield logged_in_page(browser, app, base_url, **page_kw)
        finally:
            browser.close()
