"""``create_app(engine)``: the Dash app (Live, Models, Backtest pages) and the REST API on one server.

The app never owns trading state: callbacks read ``engine.snapshot()`` (an immutable reference) and
send commands (``set_thresholds``, ``set_expert_enabled``...) that the engine applies between candles.
Pages are plain modules with ``layout(ctx)`` and ``register(app, ctx)``; a small router picks the page
from the URL, which keeps several apps in one process (tests) independent of Dash's page registry.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dash_bootstrap_components as dbc
from dash import ClientsideFunction, Dash, Input, Output, State, dcc, html

from core.backtest.engine import ComponentsFactory
from core.config import AppConfig, ModelsConfig, Secrets
from core.types import CheckpointCatalog
from web import api, auth, figures
from web.compress import install_compression
from web.control_audit import ControlAudit
from web.page_shell import LeanDash, page_path
from web.pages import annotate, backtest, live, models, orderbook

ASSETS = Path(__file__).resolve().parent / "assets"
PAGES = {"/": ("Live", live), "/models": ("Models", models), "/backtest": ("Backtest", backtest),
         "/orderbook": ("Order book", orderbook), "/annotate": ("Annotate", annotate)}


@dataclass
class WebContext:
    """What pages need besides the engine: config, an optional read path to the store, jobs."""

    engine: Any
    cfg: AppConfig
    models_cfg: ModelsConfig | None = None
    store: Any | None = None  # MarketStore (backtests: candles in, reports and backtest_runs out)
    backtest_components: ComponentsFactory | None = None  # experts for the Backtest page (compose.py)
    registry: CheckpointCatalog | None = None  # checkpoints and training curves (Models page)
    extra: dict[str, Any] = field(default_factory=dict)


def _warm_up(engine: Any) -> None:
    """Compile/load the numba indicator kernels now, not on the first page view (~0.8 s)."""
    snap = engine.snapshot()
    df = snap.candles.get(snap.timeframe) if snap.timeframe else None
    if df is not None and len(df):
        figures.indicator_columns(df.iloc[-50:])


BANNER_CLASS = {"live": "mode-banner mode-live", "testnet": "mode-banner mode-testnet"}


def mode_banner(snap: Any) -> html.Div:
    """The account traded, fixed for the process (red LIVE, amber TESTNET, grey PAPER / REPLAY); the UI
    only shows it: no control switches modes."""
    t = getattr(snap, "trading", None)
    mode = str(getattr(t, "mode", None) or getattr(snap, "mode", "paper"))
    broker = getattr(t, "broker", "paper")
    words = {"live": f"LIVE: real money ({broker})", "testnet": f"TESTNET ({broker} test account)",
             "replay": "REPLAY: paper account on stored data"}.get(mode, "PAPER: simulated account")
    return html.Div(words, id="mode-banner", className=BANNER_CLASS.get(mode, "mode-banner mode-paper"),
                    title="set at start-up by config, --live and the environment")


DASH_CALLBACK = "/_dash-update-component"


def callback_problem(body: Any, known_outputs: Any) -> str | None:
    """Why a Dash callback request is malformed (the browser's own requests never are), or None."""
    if not isinstance(body, dict):
        return "callback body must be a JSON object"
    if not isinstance(body.get("output"), str) or body["output"] not in known_outputs:
        return "unknown callback output"
    for key in ("inputs", "state", "changedPropIds"):
        if key in body and not isinstance(body[key], list):
            return f"callback {key} must be a list"
    if not isinstance(body.get("inputs"), list):
        return "callback inputs missing"
    for item in [*body["inputs"], *body.get("state", [])]:
        entries = item if isinstance(item, list) else [item]  # pattern-matching ids send lists
        if not all(isinstance(e, dict) and "id" in e and isinstance(e.get("property"), str) for e in entries):
            return "callback inputs/state must be {id, property, value} objects"
    return None


def _guard_callbacks(app: Dash) -> None:
    """Malformed callback requests answer 422 before Dash sees them; an exception a callback raises on
    client-sent values answers 422 too (logged with its traceback), never a 500."""
    from flask import g, jsonify, request

    log = logging.getLogger("web.callbacks")

    @app.server.before_request
    def _shape() -> Any:
        if request.path != DASH_CALLBACK or request.method != "POST" or not getattr(g, "moe_who", None) \
                or g.moe_who == "anonymous":
            return None  # unauthenticated requests were answered by the auth guard
        try:
            body = api.loads_strict(request.get_data(cache=True))
        except api.ApiError as exc:
            return jsonify(error="bad_request", message=exc.message), exc.status
        problem = callback_problem(body, app.callback_map)
        if problem:
            return jsonify(error="unprocessable", message=problem), 422
        return None

    endpoint = next(r.endpoint for r in app.server.url_map.iter_rules() if r.rule.endswith(DASH_CALLBACK))
    view = app.server.view_functions[endpoint]

    def guarded(*args: Any, **kwargs: Any) -> Any:
        try:
            return view(*args, **kwargs)
        except (KeyError, TypeError, ValueError, IndexError, AttributeError, OverflowError) as exc:
            log.warning("a callback rejected client-sent values: %s: %s", type(exc).__name__, exc, exc_info=True)
            return jsonify(error="unprocessable", message=f"callback input rejected ({type(exc).__name__})"), 422

    app.server.view_functions[endpoint] = guarded


def create_app(engine: Any, cfg: AppConfig | None = None, *, models_cfg: ModelsConfig | None = None,
               store: Any | None = None, host: str | None = None, secrets: Secrets | None = None,
               backtest_components: ComponentsFactory | None = None, book: Any | None = None) -> Dash:
    """Build the Dash app for ``engine`` (anything with the Engine interface of docs/INTERFACES.md).

    ``host`` is where it will be bound: off loopback it refuses to build without DASHBOARD_TOKEN.
    ``book``: a core.data.book_engine.BookEngine for the Order book page (None: the page says how to start one)."""
    cfg = cfg or AppConfig()
    host = host or cfg.dashboard.host
    secrets = secrets or Secrets.from_env()
    auth.check_bind(host, secrets.dashboard_token)
    token = secrets.dashboard_token or auth.new_token()  # a credential always (printed by main_dashboard)
    if store is None:
        store = getattr(engine, "store", None)
    models_cfg = models_cfg or getattr(engine, "models", None)
    ctx = WebContext(engine=engine, cfg=cfg, models_cfg=models_cfg, store=store,
                     backtest_components=backtest_components, registry=getattr(engine, "registry", None))
    if book is not None:
        ctx.extra["book"] = book

    app = LeanDash(__name__, assets_folder=str(ASSETS), suppress_callback_exceptions=True,
               title="MoE Trader", update_title="", serve_locally=True)
    dcfg = cfg.dashboard
    policy = auth.AuthPolicy(token=token, allowed_hosts=auth.host_allow_list(host, dcfg.allowed_hosts),
                             sessions=auth.SessionStore(dcfg.session_hours * 3600),
                             limiter=auth.LoginLimiter(dcfg.login_attempts_per_min),
                             generated=secrets.dashboard_token is None)
    auth.install_auth(app.server, policy)
    ctx.extra["control_audit"] = control = ControlAudit(store)
    api.install_api(app.server, engine, dcfg.threshold_floor, control)
    install_compression(app.server)  # gzip + long-lived caching of fingerprinted assets (first chart)

    nav = dbc.NavbarSimple(
        brand="MoE Trader", color="dark", dark=True, fluid=True, className="mb-2",
        children=[*(dbc.NavItem(dbc.NavLink(title, href=path, id=f"nav-{mod.__name__.rsplit('.', 1)[-1]}"))
                    for path, (title, mod) in PAGES.items()),
                  # a plain form POST: the server drops the session and clears the cookie
                  dbc.NavItem(html.Form(html.Button("Log out", id="logout", type="submit",
                                                    className="btn btn-sm btn-outline-light ms-3 mt-1"),
                                        action=auth.LOGOUT_PATH, method="post"))],
    )
    def page(path: str) -> Any:
        entry = PAGES.get(path)
        if entry is None:
            return dbc.Alert(f"No page at {path}. Pages: {', '.join(PAGES)}", color="warning")
        return entry[1].layout(ctx)

    def shell() -> html.Div:
        # the page the browser is on comes with the layout: no callback round trip before the first chart
        path = page_path()
        return html.Div([dcc.Location(id="url"), dcc.Store(id="page-path", data=path), dcc.Store(id="page-want"),
                         mode_banner(engine.snapshot()), nav, dbc.Container(page(path), id="page", fluid=True)])

    app.layout = shell
    # a page other than the one in the layout (navigation, or a layout request that named none): the
    # browser asks for it; on the first load it matches and nothing is sent
    app.clientside_callback(ClientsideFunction("shell", "wanted"), Output("page-want", "data"),
                            Input("url", "pathname"), State("page-path", "data"))

    @app.callback(Output("page", "children"), Output("page-path", "data"), Input("page-want", "data"),
                  prevent_initial_call=True)
    def _route(path: str | None) -> Any:
        return page(path or "/"), path

    for _, mod in PAGES.values():
        mod.register(app, ctx)
    _guard_callbacks(app)
    policy.csp = auth.default_csp(app.csp_hashes())  # Dash's inline bootstrap script, by hash
    _warm_up(engine)
    app.server.config["moe_ctx"] = ctx
    return app
