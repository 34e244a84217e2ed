"""``create_app(engine)``: the Dash app (Live, Models, Backtest pages) and the REST API on one server.

The app never owns trading state: callbacks read ``engine.snapshot()`` (an immutable reference) and
send commands (``set_thresholds``, ``set_expert_enabled``...) that the engine applies between candles.
Pages are plain modules with ``layout(ctx)`` and ``register(app, ctx)``; a small router picks the page
from the URL, which keeps several apps in one process (tests) independent of Dash's page registry.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dash_bootstrap_components as dbc
from dash import Dash, Input, Output, dcc, html

from core.backtest.engine import ComponentsFactory
from core.config import AppConfig, ModelsConfig, Secrets
from core.types import CheckpointCatalog
from web import api, auth, figures
from web.compress import install_compression
from web.pages import backtest, live, models

ASSETS = Path(__file__).resolve().parent / "assets"
PAGES = {"/": ("Live", live), "/models": ("Models", models), "/backtest": ("Backtest", backtest)}


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


def create_app(engine: Any, cfg: AppConfig | None = None, *, models_cfg: ModelsConfig | None = None,
               store: Any | None = None, host: str | None = None, secrets: Secrets | None = None,
               backtest_components: ComponentsFactory | None = None) -> Dash:
    """Build the Dash app for ``engine`` (anything with the Engine interface of docs/INTERFACES.md).

    ``host`` is where it will be bound: off loopback it refuses to build without DASHBOARD_TOKEN."""
    cfg = cfg or AppConfig()
    host = host or cfg.dashboard.host
    secrets = secrets or Secrets.from_env()
    auth.check_bind(host, secrets.dashboard_token)
    if store is None:
        store = getattr(engine, "store", None)
    models_cfg = models_cfg or getattr(engine, "models", None)
    ctx = WebContext(engine=engine, cfg=cfg, models_cfg=models_cfg, store=store,
                     backtest_components=backtest_components, registry=getattr(engine, "registry", None))

    app = Dash(__name__, assets_folder=str(ASSETS), suppress_callback_exceptions=True,
               title="MoE Trader", update_title="", serve_locally=True)
    auth.install_auth(app.server, auth.AuthPolicy(token=secrets.dashboard_token,
                                                  loopback=auth.is_loopback(host)))
    api.install_api(app.server, engine)
    install_compression(app.server)  # gzip + long-lived caching of fingerprinted assets (first chart)

    nav = dbc.NavbarSimple(
        brand="MoE Trader", color="dark", dark=True, fluid=True, className="mb-2",
        children=[dbc.NavItem(dbc.NavLink(title, href=path, id=f"nav-{mod.__name__.rsplit('.', 1)[-1]}"))
                  for path, (title, mod) in PAGES.items()],
    )
    app.layout = html.Div([dcc.Location(id="url"), nav, dbc.Container(id="page", fluid=True)])

    @app.callback(Output("page", "children"), Input("url", "pathname"))
    def _route(path: str | None) -> Any:
        entry = PAGES.get(path or "/")
        if entry is None:
            return dbc.Alert(f"No page at {path}. Pages: {', '.join(PAGES)}", color="warning")
        return entry[1].layout(ctx)

    for _, mod in PAGES.values():
        mod.register(app, ctx)
    _warm_up(engine)
    app.server.config["moe_ctx"] = ctx
    return app
