"""Live page: chart with overlays and the Kronos fan, experts, thresholds, trading and system panels.

Updates: one ``dcc.Interval`` tick drives two callbacks. The chart callback sends a ``dash.Patch``
(new candles appended, oldest trimmed, forecast fan and markers replaced only when they changed); the
whole figure goes out only on the first render or after a symbol/timeframe switch. The panels
callback re-sends a panel only when its content signature changed. Both just copy the snapshot
reference (``engine.snapshot()``) and never touch engine locks, so a slow browser never delays a
decision.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import dash_bootstrap_components as dbc
import numpy as np
import pandas as pd
from dash import Dash, Input, Output, Patch, State, dcc, html, no_update

from core.backtest.thresholds import preview_from_decisions, preview_json
from core.market import fmt_local
from core.snapshot import EngineError, EngineSnapshot
from core.types import TIMEFRAME_MS, Thresholds, timeframe_ms
from web import api, experts_api, figures, sessions
from web.auth import who
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
MAX_BARS = 1500
FULL_REDRAW_NEW_BARS = 300  # more new bars than this at once (e.g. after sleep): redraw instead
# the browser's chart grows by appends (no per-bar trimming: Patch deletes cost ~70 bytes per value);
# once it holds MAX_BARS + BROWSER_SLACK bars, one full redraw brings it back to MAX_BARS
BROWSER_SLACK = 1500
# the page's first figure: the visible window (figures.VIEW_BARS) and a little more; the first 1 s update
# brings the rest of the MAX_BARS history (plotly draws every candle, visible or not)
FIRST_BARS = 300
TRACE_TOGGLE = {"vwap": "vwap", "bb_upper": "bollinger", "bb_lower": "bollinger", "bb_mid": "bollinger",
                "sma5": "sma5", "sma21": "sma21", "sma233": "sma233"}


# ---------------------------------------------------------------- pure helpers (benchmarked)


def display_candles(snap: EngineSnapshot, tf: str) -> pd.DataFrame:
    """The chart's candles; a stock's in exchange-local time (web/sessions.py), crypto's in UTC."""
    df = snap.candles.get(tf)
    if df is None:
        return pd.DataFrame({c: pd.Series(dtype="float64") for c in ("ts", "open", "high", "low", "close",
                                                                     "volume")})
    df = df.iloc[-MAX_BARS:]
    if sessions.calendar_of(snap.market) is not None and len(df):
        df = df.assign(ts=sessions.to_local(df["ts"].to_numpy(np.int64), snap.market))
    return df


def decision_markers(snap: EngineSnapshot) -> pd.DataFrame:
    """BUY/SELL decisions placed at the close of the bar they were made on."""
    rows = [(d.ts, str(d.action)) for d in snap.recent_decisions if str(d.action) in ("BUY", "SELL")]
    base = snap.candles.get(snap.timeframe)
    if not rows or base is None or base.empty:
        return pd.DataFrame({"ts": [], "price": [], "action": []})
    d = pd.DataFrame(rows, columns=["ts", "action"])
    closes = base.set_index("ts")["close"]
    d["price"] = d["ts"].map(closes)
    d = d.dropna(subset=["price"])
    return d.assign(ts=sessions.to_local(d["ts"].to_numpy(np.int64), snap.market))


def fill_markers(snap: EngineSnapshot) -> pd.DataFrame:
    return pd.DataFrame({"ts": sessions.to_local([f.ts for f in snap.trades], snap.market),
                         "price": [f.price for f in snap.trades], "side": [f.side for f in snap.trades]})


def fan_for(snap: EngineSnapshot, tf: str) -> figures.Fan | None:
    k = snap.kronos
    base = snap.candles.get(snap.timeframe)
    if k is None or tf != snap.timeframe or base is None or base.empty or not len(k.median):
        return None
    ts = base["ts"].to_numpy(np.int64)
    i = int(np.searchsorted(ts, k.ts))
    anchor = float(base["close"].iloc[i]) if i < len(ts) and ts[i] == k.ts else float(base["close"].iloc[-1])
    loc = sessions.to_local(np.r_[k.ts, np.asarray(k.future_ts, dtype=np.int64)], snap.market)
    return figures.forecast_fan(int(loc[0]), anchor, loc[1:], k.median, k.bands)


def session_view(snap: EngineSnapshot, tf: str, fan: figures.Fan | None) -> sessions.SessionLayout | None:
    """Rangebreaks and session marks over the chart's bars and the forecast after them (stocks)."""
    raw = snap.candles.get(tf)
    if raw is None or raw.empty or sessions.calendar_of(snap.market) is None:
        return None
    ts = raw["ts"].to_numpy(np.int64)[-MAX_BARS:]
    k = snap.kronos
    end = int(max(ts[-1], int(k.future_ts[-1]) if fan is not None and k is not None and len(k.future_ts) else 0))
    return sessions.session_layout(snap.market, int(ts[0]), end + TIMEFRAME_MS.get(tf, 60_000))


def _sig(obj: Any) -> str:
    return hashlib.blake2b(json.dumps(obj, sort_keys=True, default=str).encode(), digest_size=8).hexdigest()


def _visibility_patch(p: Patch, overlays: list[str]) -> None:
    for name, toggle in TRACE_TOGGLE.items():
        p["data"][figures.TRACE[name]]["visible"] = toggle in overlays


def user_zoomed(relayout: dict | None) -> bool:
    """True when the user's last zoom/pan set an x range (a double-click autorange resets it)."""
    if not relayout:
        return False
    if relayout.get("xaxis.autorange"):
        return False
    return "xaxis.range[0]" in relayout or "xaxis.range" in relayout


def chart_update(snap: EngineSnapshot, symbol: str | None, tf: str, overlays: list[str], state: dict | None,
                 force: bool = False, zoomed: bool = False, first_bars: int | None = None) -> tuple[Any, dict]:
    """The chart's 1 s update: a full figure when needed, else a Patch. Returns (figure|Patch, state).
    ``zoomed``: the user set their own x range, so the view no longer follows new candles.
    ``first_bars``: only the newest bars (the page's first figure: the visible window draws sooner); the
    state says so and the next update sends the whole history."""
    df = display_candles(snap, tf)
    partial = first_bars is not None and len(df) > first_bars
    if partial:
        df = df.iloc[-first_bars:]
    last_ts = int(df["ts"].iloc[-1]) if len(df) else None
    fan = fan_for(snap, tf)
    k = snap.kronos
    fan_key = None if fan is None or k is None else [k.ts, k.finished_ms]
    dec = decision_markers(snap)
    fills = fill_markers(snap)
    marks_key = [len(dec), int(dec["ts"].iloc[-1]) if len(dec) else None,
                 len(snap.trades), snap.trades[-1].id if snap.trades else None]
    piv = figures.pivot_levels(df) if "pivots" in overlays else {}
    sv = session_view(snap, tf, fan)
    new_state = {"symbol": snap.symbol, "tf": tf, "last_ts": last_ts, "n": len(df), "fan": fan_key,
                 "marks": marks_key, "pivots": _sig(piv), "overlays": sorted(overlays),
                 "sessions": sv.key if sv else None, "partial": partial}
    prev: dict = state or {}
    full = (force or not prev or prev.get("partial") or prev.get("symbol") != snap.symbol or prev.get("tf") != tf
            or prev.get("last_ts") is None or last_ts is None or prev.get("sessions") != new_state["sessions"])
    n_new = 0
    if not full:
        n_new = int((df["ts"] > prev["last_ts"]).sum())
        full = (n_new > FULL_REDRAW_NEW_BARS or (n_new == 0 and last_ts is not None and last_ts < prev["last_ts"])
                or prev.get("n", 0) + n_new > MAX_BARS + BROWSER_SLACK)
    if full:
        title = f"{snap.symbol} {tf}" + (f" · {snap.market.calendar} {snap.market.session} "
                                         f"({snap.market.tz})" if sv else "")
        fig = figures.candle_figure(df, overlays, fan, dec, fills, title=title, uirevision=f"{snap.symbol}-{tf}",
                                    rangebreaks=sv.rangebreaks if sv else None,
                                    extra_shapes=sv.shapes if sv else None, empty=chart_empty_text(snap, tf))
        return fig, new_state
    p = Patch()
    changed = False
    if n_new:
        payload = figures.append_payload(df, n_new)
        for trace, cols in payload.items():
            for col, vals in cols.items():
                p["data"][figures.TRACE[trace]][col].extend(vals)
        new_state["n"] = prev["n"] + n_new  # bars in the browser
        changed = True
    if (n_new or fan_key != prev.get("fan")) and not zoomed:
        rng = figures.view_range(df["ts"].to_numpy(np.int64), fan)
        if rng:
            p["layout"]["xaxis"]["range"] = rng  # follow the stream unless the user zoomed (uirevision)
    if fan_key != prev.get("fan"):
        _set_fan(p, fan)
        changed = True
    if marks_key != prev.get("marks"):
        bx, by = figures.marker_points(dec[dec["action"] == "BUY"], df)
        sx, sy = figures.marker_points(dec[dec["action"] == "SELL"], df)
        fx, fy = figures.marker_points(fills, df)
        for name, (x, y) in {"buy": (bx, by), "sell": (sx, sy), "fills": (fx, fy)}.items():
            p["data"][figures.TRACE[name]]["x"] = x
            p["data"][figures.TRACE[name]]["y"] = y
        changed = True
    if sorted(overlays) != prev.get("overlays"):
        _visibility_patch(p, overlays)
        changed = True
    if new_state["pivots"] != prev.get("pivots") or sorted(overlays) != prev.get("overlays"):
        p["layout"]["shapes"] = (sv.shapes if sv else []) + figures.pivot_shapes(piv)
        changed = True
    return (p if changed else no_update), new_state


def chart_empty_text(snap: EngineSnapshot, tf: str) -> str:
    """What the main chart says while it has no candle: what it waits for, and where problems show."""
    what = f"No {tf} candles yet for {snap.symbol or 'the symbol'}"
    if not snap.running:
        return f"{what}: the engine is not running; restart main_dashboard.py"
    src = f" from {snap.source_label}" if snap.source_label else ""
    return (f"{what}: waiting for the first bars{src}.<br>"
            "The System panel lists data-source errors; another timeframe may already have bars.")


def _set_fan(p: Patch, fan: figures.Fan | None) -> None:
    empty: list = []
    x = fan.x if fan else empty
    o_hi, o_lo = fan.outer if fan and fan.outer else (empty, empty)
    i_hi, i_lo = fan.inner if fan and fan.inner else (empty, empty)
    for name, y in (("fc_outer_hi", o_hi), ("fc_outer_lo", o_lo), ("fc_inner_hi", i_hi),
                    ("fc_inner_lo", i_lo), ("fc_median", fan.median if fan else empty)):
        p["data"][figures.TRACE[name]]["x"] = x if y else empty
        p["data"][figures.TRACE[name]]["y"] = y


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
        s = _sig(key)
        if sigs.get(name) == s:
            out.append(no_update)
        else:
            sigs[name] = s
            out.append(builders[name]())
    return out, sigs


def equity_update(snap: EngineSnapshot, state: dict | None) -> tuple[Any, dict]:
    eq = snap.equity
    n = 0 if eq is None else len(eq)
    last = int(eq["ts"].iloc[-1]) if n else None
    if n == 0 and state is not None and state.get("n") == 0 and state.get("last") is None:
        return no_update, state  # still empty: the empty state drawn already stays
    if state is None or n == 0 or state.get("last") is None or last < state["last"] or state.get("n", 0) > 5000:
        return figures.equity_figure(eq), {"last": last, "n": n}
    new = eq[eq["ts"] > state["last"]]
    if new.empty:
        return no_update, state
    p = Patch()
    x = figures._x(new["ts"].to_numpy())
    p["data"][0]["x"].extend(x)
    p["data"][0]["y"].extend(figures._clean(new["equity"]))
    if "drawdown" in new:
        p["data"][1]["x"].extend(x)
        p["data"][1]["y"].extend(figures._clean(new["drawdown"]))
    return p, {"last": last, "n": state.get("n", 0) + len(new)}


# ---------------------------------------------------------------- threshold preview

THR_PREVIEW_MS = 5000  # the preview re-counts over the cached decisions every 5 s (not every tick)


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
                _card("Forecast & data", html.Div(id="live-stats")),
                _card("Experts (mixture of experts)", html.Div(id="live-experts")),
            ], width=9),
            dbc.Col([
                _card("Thresholds (applied to the next decision)", [
                    thr_input("thr-buy", "buy P(up) ≥", t.buy),
                    thr_input("thr-sell", "sell P(down) ≥", t.sell),
                    thr_input("thr-minconf", "min confidence", t.min_confidence),
                    dbc.Checkbox(id="thr-force", value=False, className="small",
                                 label="apply even if it would trade nearly every bar"),
                    html.Div(id="thr-current", className="small text-info"),
                    html.Div(id="thr-msg", className="small"),
                    # what each threshold pair would have done over the cached recent decisions
                    dcc.Graph(id="live-thr-preview", config={"displayModeBar": False},
                              figure=figures.threshold_heatmap(None)),
                ]),
                _card("Risk", [html.Div(id="live-kill"),
                               dbc.Button("Reset kill switch", id="kill-reset", size="sm", color="warning"),
                               html.Div(id="kill-msg", className="small")]),
                _card("Equity", dcc.Graph(id="live-equity", config={"displayModeBar": False}, figure=equity0)),
                _card("Trading", html.Div(id="live-trading")),
                _card("System", html.Div(id="live-system")),
            ], width=3),
        ]),
        dcc.Store(id="live-state", data=chart_state0), dcc.Store(id="live-sigs"),
        dcc.Store(id="live-eq-state", data=equity_state0),
        dcc.Interval(id="live-tick", interval=wctx.cfg.dashboard.update_interval_ms),
        dcc.Interval(id="live-thr-tick", interval=THR_PREVIEW_MS),
    ])


# ---------------------------------------------------------------- callbacks


def register(app: Dash, wctx: WebContext) -> None:
    engine = wctx.engine
    first_run.register(app, engine)

    @app.callback(Output("live-chart", "figure"), Output("live-state", "data"),
                  Input("live-tick", "n_intervals"), Input("live-timeframe", "value"),
                  Input("live-overlays", "value"), State("live-state", "data"),
                  State("live-chart", "relayoutData"))
    def _chart(_n: int | None, tf: str, overlays: list[str] | None, state: dict | None,
               relayout: dict | None) -> Component:
        snap = engine.snapshot()
        return chart_update(snap, None, tf, overlays or [], state, zoomed=user_zoomed(relayout))

    @app.callback(Output("live-stats", "children"), Output("live-experts", "children"),
                  Output("live-trading", "children"), Output("live-kill", "children"),
                  Output("live-system", "children"), Output("thr-current", "children"),
                  Output("live-sigs", "data"), Output("live-equity", "figure"), Output("live-eq-state", "data"),
                  Input("live-tick", "n_intervals"), State("live-sigs", "data"), State("live-eq-state", "data"))
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
                  Input("thr-buy", "value"), Input("thr-sell", "value"))
    def _thr_preview(_n: int | None, buy: float | None, sell: float | None) -> Component:
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
