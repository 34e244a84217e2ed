"""Live page: chart with overlays and the Kronos fan, experts, thresholds, trading and system panels.

Updates: one ``dcc.Interval`` tick drives two callbacks. The chart callback sends a ``dash.Patch``
(new candles appended, oldest trimmed, forecast fan and markers replaced only when they changed); the
whole figure goes out only on the first render or after a symbol/timeframe switch. The panels
callback re-sends a panel only when its content signature changed. Both just copy the snapshot
reference (``engine.snapshot()``) and never touch engine locks, so a slow browser never delays a
decision.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import dash_bootstrap_components as dbc
import numpy as np
import pandas as pd
from dash import Dash, Input, Output, State, dcc, html, no_update

from core.backtest.thresholds import preview_from_decisions, preview_json
from core.market import fmt_local
from core.snapshot import EngineError, EngineSnapshot
from core.types import TIMEFRAME_MS, Thresholds, timeframe_ms
from web import api, experts_api, figures, sessions
from web.auth import who

# the main chart and the equity curve are pure functions in web/live_chart.py
from web.live_chart import FIRST_BARS, chart_update, content_sig, equity_update, user_zoomed
from web.pages import first_run

if TYPE_CHECKING:
    from web.app import WebContext

Component = Any  # a Dash component or no_update: Dash ships no types, so this is the boundary

TIMEFRAMES = ("1m", "5m", "1h", "1d")
OVERLAY_OPTIONS = [
    {"label": "VWAP", "value": "vwap"}, {"label": "Bollinger", "value": "bollinger"},
    {"label": "SMA 5", "value": "sma5"}, {"label": "SMA 21", "value": "sma21"},
    {"label": "SMA 233", "value": "sma233"}, {"label": "Pivots", "value": "pivots"},
]
DEFAULT_OVERLAYS = ["vwap", "sma5", "sma21"]
def _pct(v: float | None, digits: int = 1) -> str:
    return "—" if v is None else f"{100 * v:.{digits}f}%"


def _num(v: float | None, fmt: str = "{:,.2f}") -> str:
    return "—" if v is None or v != v else fmt.format(v)


def _ts(ms: int | None) -> str:
    return "—" if ms is None else pd.Timestamp(int(ms), unit="ms").strftime("%Y-%m-%d %H:%M")


def _table(header: list[str], rows: list[list[Any]], tid: str) -> dbc.Table:
    return dbc.Table([html.Thead(html.Tr([html.Th(h) for h in header])),
                      html.Tbody([html.Tr([html.Td(c) for c in r]) for r in rows])],
                     id=tid, size="sm", striped=True, className="mb-1 small")


def stats_panel(snap: EngineSnapshot, now_ms: int) -> Component:
    k = api.kronos_json(snap.kronos, now_ms)
    d = snap.decision
    last = api.last_candle_ts(snap)
    tf_ms = TIMEFRAME_MS.get(snap.timeframe, 0)
    lag = [float(x) for x in (api.source_json(v).get("lag_ms") for v in snap.sources.values())
           if isinstance(x, int | float)]
    if snap.mode == "replay":
        # wall clock vs. replayed time means nothing: show where the replay is and the feed's lag
        cal = sessions.calendar_of(snap.market)  # a stock's replay clock in its exchange's time
        when = _ts(last) if cal is None or last is None else fmt_local(last, cal, "%Y-%m-%d %H:%M %Z")
        fresh = f"replay at {when}" + (f" · lag {lag[0] / 1000:.1f}s" if lag else "")
    else:
        fresh = (f"lag {lag[0] / 1000:.1f}s" if lag else
                 (f"{(now_ms - last - tf_ms) / 1000:.0f}s old" if last is not None else "—"))
    items = [
        ("P(up) fused", _pct(d.probs[2]) if d else "—"),
        ("P(up) Kronos", _pct(k["p_up"]) if k else "—"),
        ("Expected return", _pct(k["expected_return"], 3) if k else (_pct(d.expected_return, 3) if d else "—")),
        ("Band width", _pct(k["band_width"], 2) if k and k["band_width"] is not None else "—"),
        ("Forecast age", f"{k['age_s']:.0f}s" if k and k["age_s"] is not None else "—"),
        ("Data freshness", fresh),
    ]
    if sessions.calendar_of(snap.market) is not None:  # stocks: open / closed, next open
        items.append(("Market", sessions.market_text(snap.market)))
    row = dbc.Row([dbc.Col([html.Div(n, className="text-muted small"), html.Div(v, className="fw-bold")])
                   for n, v in items], className="g-2")
    if k:
        return row
    return html.Div([row, html.Div(kronos_empty_text(snap), id="kronos-empty", className="small text-muted")])


def kronos_empty_text(snap: EngineSnapshot) -> str:
    """Why there is no forecast fan, and the next step."""
    st = snap.experts.get("kronos")
    if st is None:
        return "No forecast fan: Kronos is not enabled in models.yml."
    if st.version == "unavailable" and st.last_error:
        return f"No forecast fan: Kronos is {st.last_error}"
    if not st.enabled:
        return "No forecast fan: Kronos is switched off (Models page)."
    return "No forecast fan yet: Kronos forecasts every few closed candles once it has enough history."


def experts_panel(snap: EngineSnapshot) -> Component:
    """Latest outputs and gate weights; "acc (n)" = the engine's live accuracy over the n calls that
    matured since the stream started (core/outcomes.LiveOutcomes), log loss beside it."""
    rows = []
    for e in experts_api.experts_json(snap):
        m = e["live_metrics"]
        o = e["latest"]
        pr = o["probs"] if o else None
        rows.append([e["name"], "on" if e["enabled"] else "off",
                     _num(pr and pr["down"], "{:.2f}"), _num(pr and pr["flat"], "{:.2f}"),
                     _num(pr and pr["up"], "{:.2f}"), _num(o and o["confidence"], "{:.2f}"),
                     _num(e["gate_weight"], "{:.3f}"), _num(e["ood"], "{:.2f}"),
                     f"{_pct(m['accuracy'], 0)} ({m['n']})" if m else "-", _num(m and m["log_loss"], "{:.3f}"),
                     e["version"]])
    d = snap.decision
    dec = (html.Div([html.Span("Fused decision: ", className="text-muted"),
                     dbc.Badge(str(d.action), color={"BUY": "success", "SELL": "danger"}.get(str(d.action),
                                                                                            "secondary"),
                               id="decision-action"),
                     html.Span(f" at {_ts(d.ts)}  P(down/flat/up) = "
                               f"{d.probs[0]:.2f}/{d.probs[1]:.2f}/{d.probs[2]:.2f}  "
                               f"thresholds buy {d.thresholds.buy:.2f} sell {d.thresholds.sell:.2f} "
                               f"min conf {d.thresholds.min_confidence:.2f}  — {d.reason}",
                               className="small")])
           if d else html.Div("No decision yet (waiting for enough history).", className="text-muted"))
    cw = snap.gate_weights.get("climatology")
    if cw is not None:  # the base-rate expert (core/fusion.py) takes the rest of the weight
        rows.append(["climatology (base rate)", "always", "-", "-", "-", "-", _num(cw, "{:.3f}"), "-", "-", "-",
                     "rolling"])
    return html.Div([_table(["expert", "enabled", "P(down)", "P(flat)", "P(up)", "conf", "gate w", "OOD",
                             "live acc (n)", "log loss", "version"], rows, "experts-table"), dec])


def trading_panel(snap: EngineSnapshot) -> Component:
    pos = [[p.symbol, _num(p.amount, "{:.6f}"), _num(p.avg_price), _num(p.realised_pnl), _num(p.unrealised_pnl)]
           for p in snap.positions]
    orders = [[o.side, o.type, _num(o.amount, "{:.6f}"), _num(o.price), o.status, _ts(o.ts)]
              for o in snap.open_orders]
    trades = [[_ts(f.ts), f.side, _num(f.amount, "{:.6f}"), _num(f.price), _num(f.fee, "{:.4f}")]
              for f in reversed(snap.trades[-10:])]
    eq = snap.equity
    pnl = "—"
    if eq is not None and len(eq):
        first, last = float(eq["equity"].iloc[0]), float(eq["equity"].iloc[-1])
        pnl = f"equity {last:,.2f}  PnL {last - first:+,.2f} ({(last / first - 1) * 100:+.2f}%)"
    why = (f"No trades: decisions of untrained experts ({', '.join(snap.untrained)}) are not traded; "
           "Train now on the banner above." if snap.untrained and not snap.allow_untrained else
           "No trades yet: an order follows the first BUY or SELL decision.")
    return html.Div([
        html.Div(pnl, id="live-pnl", className="fw-bold mb-1"),
        html.H6("Positions"), _table(["symbol", "amount", "avg price", "realised", "unrealised"], pos,
                                     "positions-table") if pos else html.Div("flat (no position)",
                                                                             className="small text-muted"),
        html.H6("Open orders"), _table(["side", "type", "amount", "price", "status", "time"], orders,
                                       "orders-table") if orders else html.Div("none", className="small text-muted"),
        html.H6(f"Trades (last 10 of {len(snap.trades)})"),
        _table(["time", "side", "amount", "price", "fee"], trades, "trades-table") if trades else
        html.Div(why, id="trades-empty", className="small text-muted"),
    ])


def kill_panel(snap: EngineSnapshot) -> Component:
    k = snap.kill_switch
    t = snap.trading
    rec = reconcile_line(snap)
    if k.active:
        body: list[Any] = [html.B("Kill switch ACTIVE: "), f"{k.reason} since {_ts(k.since_ms)}"]
        if k.reason == "reconcile":  # the differences with the exchange; Reset acknowledges them
            body += [html.Ul([html.Li(d) for d in t.differences[:8]], className="small mb-0", id="reconcile-diffs"),
                     html.Div("Reset acknowledges these differences.", className="small")]
        return html.Div([dbc.Alert(body, color="danger", className="py-1 mb-1", id="kill-badge"), rec])
    return html.Div([dbc.Alert("Kill switch off: trading allowed", color="success", className="py-1 mb-1",
                               id="kill-badge"), rec])


def reconcile_line(snap: EngineSnapshot) -> Component:
    """Exchange accounts: the last comparison with the exchange and what waits for confirmation."""
    t = snap.trading
    if t.broker == "paper":
        return html.Div()
    state = "not yet" if t.reconcile_ok is None else ("agrees" if t.reconcile_ok else "DIFFERS")
    return html.Div(f"{t.mode} account {t.account} · exchange {state} ({_ts(t.reconcile_ts_ms)}) · "
                    f"unconfirmed orders {t.unresolved_intents} · backfilled bars not traded {t.stale_bars} · "
                    f"stops {_protection_text(t.protection, t.protective_orders)}",
                    className="small", id="reconcile-line")


def _protection_text(protection: str, legs: int) -> str:
    if protection == "exchange":
        return f"on the exchange ({legs} resting)"
    return "enforced by the engine" if protection == "engine" else "off"


def distinct_errors(errors: Sequence[EngineError]) -> list[tuple[str, str, int, int]]:
    """(where, message, count, last ts) per distinct error, most recent first: a failing expert
    repeats the same error every bar, which would otherwise flood the panel."""
    seen: dict[tuple[str, str], list[int]] = {}
    for e in errors:
        k = (e.where, e.message)
        c = seen.setdefault(k, [0, 0])
        c[0] += 1
        c[1] = max(c[1], int(e.ts_ms))
    rows = [(w, m, n, ts) for (w, m), (n, ts) in seen.items()]
    return sorted(rows, key=lambda r: r[3], reverse=True)


def system_panel(snap: EngineSnapshot, now_ms: int) -> Component:
    rows = []
    for name, s in snap.sources.items():
        j = api.source_json(s)
        lm = j.get("last_message_ms")
        rows.append([name, "yes" if j.get("connected") else "no",
                     _ts(lm) if isinstance(lm, int) else "—",
                     _num(j.get("lag_ms"), "{:,.0f} ms"), j.get("reconnects", "—"),
                     j.get("rejected_rows", "—"), j.get("error") or ""])
    lat = snap.inference_latency_ms
    errs = [html.Li(f"{_ts(ts)} {where}: {msg[:160]}" + (f"  (×{n})" if n > 1 else ""))
            for where, msg, n, ts in distinct_errors(snap.errors)[:5]]
    return html.Div([
        _table(["source", "connected", "last message", "lag", "reconnects", "rejected rows", "error"], rows,
               "sources-table"),
        html.Div(f"mode {snap.mode} · streaming {snap.streaming} · inference latency "
                 + ", ".join(f"{k} {v:.1f} ms" for k, v in lat.items()), className="small"),
        html.Div([html.Span(f"errors ({len(snap.errors)}):", className="small text-muted"),
                  html.Ul(errs, className="small mb-0")] if errs else "no errors", className="small"),
    ])


def panels_update(snap: EngineSnapshot, sigs: dict | None, now_ms: int | None = None) -> tuple[list[Any], dict]:
    """Each panel's content only when its signature changed (else no_update)."""
    now_ms = now_ms or int(time.time() * 1000)
    sigs = dict(sigs or {})
    out: list[Any] = []
    k = snap.kronos
    keys = {
        "stats": [snap.decision.id if snap.decision else None, k and k.finished_ms, api.last_candle_ts(snap),
                  now_ms // 5000],
        "experts": [snap.decision.id if snap.decision else None,
                    {n: (s.enabled, s.version) for n, s in snap.experts.items()}],
        "trading": [len(snap.trades), [(p.amount, p.unrealised_pnl) for p in snap.positions],
                    [o.id for o in snap.open_orders], len(snap.equity)],
        "kill": [snap.kill_switch.active, snap.kill_switch.reason, snap.trading.reconcile_ts_ms,
                 snap.trading.unresolved_intents, snap.trading.stale_bars, snap.trading.protective_orders],
        # the sources' last-message/lag values move every message: refresh those every 5 s only
        "system": [[getattr(s, k, None) for k in ("connected", "reconnects", "rejected_rows", "error")]
                   for s in snap.sources.values()] + [len(snap.errors), snap.streaming, now_ms // 5000],
        "thr": api.thresholds_json(snap.thresholds),
    }
    builders = {
        "stats": lambda: stats_panel(snap, now_ms), "experts": lambda: experts_panel(snap),
        "trading": lambda: trading_panel(snap), "kill": lambda: kill_panel(snap),
        "system": lambda: system_panel(snap, now_ms),
        "thr": lambda: (f"engine thresholds: buy {snap.thresholds.buy:.2f} · sell {snap.thresholds.sell:.2f} "
                        f"· min confidence {snap.thresholds.min_confidence:.2f}"),
    }
    for name, key in keys.items():
        s = content_sig(key)
        if sigs.get(name) == s:
            out.append(no_update)
        else:
            sigs[name] = s
            out.append(builders[name]())
    return out, sigs


# ---------------------------------------------------------------- threshold preview

THR_PREVIEW_MS = 5000  # the preview re-counts over the cached decisions every 5 s (not every tick)
THR_FIRST_MS = 1500  # the first count, once the page's first chart is drawn


def live_threshold_preview(snap: EngineSnapshot) -> dict[str, Any] | None:
    """The threshold preview (core/backtest/thresholds.py) over the engine's cached recent decisions;
    None before any decision."""
    decs = [d for d in snap.recent_decisions if d.outputs]
    base = snap.candles.get(snap.timeframe) if snap.timeframe else None
    if not decs or base is None or not len(base):
        return None
    horizon = int(decs[-1].outputs[0].horizon)
    close = dict(zip(base["ts"].to_numpy(np.int64).tolist(), base["close"].to_numpy(np.float64).tolist(),
                     strict=True))
    return preview_json(preview_from_decisions(decs, close, horizon, timeframe_ms(snap.timeframe),
                                               snap.thresholds.min_confidence))


# ---------------------------------------------------------------- layout


def _card(title: str, body: Any, **kw: Any) -> dbc.Card:
    return dbc.Card([dbc.CardHeader(title, className="py-1"), dbc.CardBody(body, className="p-2")],
                    className="mb-2", **kw)


def layout(wctx: WebContext) -> Component:
    snap = wctx.engine.snapshot()
    # crypto and stock symbols from config (data.symbols, then markets)
    choices = wctx.cfg.symbol_choices()
    symbols = list(dict.fromkeys([*choices, snap.symbol] if snap.symbol else choices))
    t = snap.thresholds
    tf0 = snap.timeframe if snap.timeframe in TIMEFRAMES else TIMEFRAMES[0]
    # the first chart and equity curve are in the page itself: no callback round trip before candles show
    chart0, chart_state0 = chart_update(snap, None, tf0, DEFAULT_OVERLAYS, None, first_bars=FIRST_BARS)
    equity0, equity_state0 = equity_update(snap, None)
    # the panels too: no callback fires when the page loads (the first tick, 1 s later, updates them all),
    # so nothing competes with drawing the first chart
    (stats0, experts0, trading0, kill0, system0, thr0), sigs0 = panels_update(snap, None)

    def thr_input(tid: str, label: str, value: float) -> Component:
        return dbc.InputGroup([dbc.InputGroupText(label), dbc.Input(
            id=tid, type="number", min=0, max=1, step=0.01, value=value, debounce=True)], size="sm",
            className="mb-1")

    controls = dbc.Row([
        dbc.Col(dcc.Dropdown(id="live-symbol", options=symbols, value=snap.symbol or symbols[0],
                             clearable=False, className="text-dark"), width=2),
        dbc.Col(dbc.RadioItems(id="live-timeframe", options=list(TIMEFRAMES), value=tf0, inline=True), width=3),
        dbc.Col(dbc.Checklist(id="live-overlays", options=OVERLAY_OPTIONS, value=DEFAULT_OVERLAYS,
                              inline=True, switch=True), width=7),
    ], className="mb-1 align-items-center")
    return html.Div([
        html.Div(snap.source_label, id="live-source", className="small text-info mb-1"),
        first_run.banner_component(snap),
        controls,
        dbc.Row([
            dbc.Col([
                dcc.Graph(id="live-chart", config={"displaylogo": False, "scrollZoom": True}, figure=chart0),
                _card("Forecast & data", html.Div(stats0, id="live-stats")),
                _card("Experts (mixture of experts)", html.Div(experts0, id="live-experts")),
            ], width=9),
            dbc.Col([
                _card("Thresholds (applied to the next decision)", [
                    thr_input("thr-buy", "buy P(up) ≥", t.buy),
                    thr_input("thr-sell", "sell P(down) ≥", t.sell),
                    thr_input("thr-minconf", "min confidence", t.min_confidence),
                    dbc.Checkbox(id="thr-force", value=False, className="small",
                                 label="apply even if it would trade nearly every bar"),
                    html.Div(thr0, id="thr-current", className="small text-info"),
                    html.Div(id="thr-msg", className="small"),
                    # what each threshold pair would have done over the cached recent decisions
                    dcc.Graph(id="live-thr-preview", config={"displayModeBar": False},
                              figure=figures.threshold_heatmap(None)),
                ]),
                _card("Risk", [html.Div(kill0, id="live-kill"),
                               dbc.Button("Reset kill switch", id="kill-reset", size="sm", color="warning"),
                               html.Div(id="kill-msg", className="small")]),
                _card("Equity", dcc.Graph(id="live-equity", config={"displayModeBar": False}, figure=equity0)),
                _card("Trading", html.Div(trading0, id="live-trading")),
                _card("System", html.Div(system0, id="live-system")),
            ], width=3),
        ]),
        dcc.Store(id="live-state", data=chart_state0), dcc.Store(id="live-sigs", data=sigs0),
        dcc.Store(id="live-eq-state", data=equity_state0),
        dcc.Interval(id="live-tick", interval=wctx.cfg.dashboard.update_interval_ms),
        dcc.Interval(id="live-thr-tick", interval=THR_PREVIEW_MS),
        dcc.Interval(id="live-thr-first", interval=THR_FIRST_MS, max_intervals=1),
    ])


# ---------------------------------------------------------------- callbacks


def register(app: Dash, wctx: WebContext) -> None:
    engine = wctx.engine
    first_run.register(app, engine)

    @app.callback(Output("live-chart", "figure"), Output("live-state", "data"),
                  Input("live-tick", "n_intervals"), Input("live-timeframe", "value"),
                  Input("live-overlays", "value"), State("live-state", "data"),
                  State("live-chart", "relayoutData"), prevent_initial_call=True)
    def _chart(_n: int | None, tf: str, overlays: list[str] | None, state: dict | None,
               relayout: dict | None) -> Component:
        snap = engine.snapshot()
        return chart_update(snap, None, tf, overlays or [], state, zoomed=user_zoomed(relayout))

    @app.callback(Output("live-stats", "children"), Output("live-experts", "children"),
                  Output("live-trading", "children"), Output("live-kill", "children"),
                  Output("live-system", "children"), Output("thr-current", "children"),
                  Output("live-sigs", "data"), Output("live-equity", "figure"), Output("live-eq-state", "data"),
                  Input("live-tick", "n_intervals"), State("live-sigs", "data"), State("live-eq-state", "data"),
                  prevent_initial_call=True)
    def _panels(_n: int | None, sigs: dict | None, eq_state: dict | None) -> Component:
        # one request per tick for every panel and the equity curve (Dash's per-callback overhead is a
        # good part of the update time); both read the same snapshot reference
        snap = engine.snapshot()
        out, sigs = panels_update(snap, sigs)
        eq, eq_state = equity_update(snap, eq_state)
        return (*out, sigs, eq, eq_state)

    @app.callback(Output("thr-msg", "children"),
                  Input("thr-buy", "value"), Input("thr-sell", "value"), Input("thr-minconf", "value"),
                  State("thr-force", "value"), prevent_initial_call=True)
    def _thresholds(buy: float | None, sell: float | None, minc: float | None, force: bool | None = False
                    ) -> Component:
        if buy is None or sell is None or minc is None:
            return html.Span("not applied: every threshold needs a number in [0, 1]", className="text-danger")
        try:
            t = Thresholds(buy=float(buy), sell=float(sell), min_confidence=float(minc))
        except (TypeError, ValueError) as exc:
            return html.Span(f"not applied: {exc}", className="text-danger")
        problem = api.threshold_problem(t, wctx.cfg.dashboard.threshold_floor)
        if problem and not force:  # the same rule as PUT /api/thresholds
            return html.Span(f"not applied: {problem.replace('send force: true', 'tick the box')}",
                             className="text-danger")
        engine.set_thresholds(t)
        audit = wctx.extra.get("control_audit")
        if audit is not None:
            audit.record(who(), "set_thresholds", buy=t.buy, sell=t.sell, min_confidence=t.min_confidence,
                         forced=bool(problem), via="ui")
        return html.Span(f"sent: buy {t.buy:.2f} · sell {t.sell:.2f} · min conf {t.min_confidence:.2f}",
                         className="text-success")

    @app.callback(Output("live-thr-preview", "figure"), Input("live-thr-tick", "n_intervals"),
                  Input("live-thr-first", "n_intervals"), Input("thr-buy", "value"), Input("thr-sell", "value"),
                  prevent_initial_call=True)
    def _thr_preview(_n: int | None, _first: int | None, buy: float | None, sell: float | None) -> Component:
        snap = engine.snapshot()
        t = snap.thresholds
        return figures.threshold_heatmap(live_threshold_preview(snap), buy if buy is not None else t.buy,
                                         sell if sell is not None else t.sell)

    @app.callback(Output("kill-msg", "children"), Input("kill-reset", "n_clicks"), prevent_initial_call=True)
    def _reset(_n: int | None) -> Component:
        engine.reset_kill_switch()
        audit = wctx.extra.get("control_audit")
        if audit is not None:
            audit.record(who(), "reset_kill_switch", via="ui")
        return "reset sent"

    @app.callback(Output("live-symbol", "className"), Input("live-symbol", "value"),
                  prevent_initial_call=True)
    def _symbol(symbol: str) -> Component:
        snap = engine.snapshot()
        if symbol and symbol != snap.symbol:
            engine.start_stream(symbol, snap.timeframe or wctx.cfg.data.base_timeframe)
        return "text-dark"
