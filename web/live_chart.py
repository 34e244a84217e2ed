"""The Live page's main chart and equity curve as pure functions of an engine snapshot: the first figure,
then ``dash.Patch`` updates (new candles appended, the forecast fan and markers replaced only when they
changed). No Dash callback here: web/pages/live.py wires them; tests and benchmarks call them directly.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import numpy as np
import pandas as pd
from dash import Patch, no_update

from core.snapshot import EngineSnapshot
from core.types import TIMEFRAME_MS
from web import figures, sessions

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


def content_sig(obj: Any) -> str:
    """A short digest of a JSON-able value: the Live page re-sends a panel only when it changed."""
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
    partial = False
    if first_bars is not None and len(df) > first_bars:
        df, partial = df.iloc[-first_bars:], True
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
                 "marks": marks_key, "pivots": content_sig(piv), "overlays": sorted(overlays),
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
