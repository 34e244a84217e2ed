"""web/figures.py and the Live page's pure update functions on REAL candles (shared BTC/USDT 1m).

The snapshots here are the engine's own ``EngineSnapshot`` contract filled with real candles through
``dataclasses.replace`` — they exercise the pure chart/patch functions only; the engine itself is
exercised in test_api.py and test_web_browser.py.
"""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pandas as pd
import plotly
import plotly.graph_objects as go
import pytest

from core import indicators as ind
from core.data.files import load_file
from core.snapshot import EngineSnapshot, KronosSummary
from web import figures, live_chart
from web.pages import live


@pytest.fixture(scope="module")
def btc(shared_data) -> pd.DataFrame:
    return load_file(shared_data / "binanceus" / "BTC_USDT-1m.csv")


def _snap(candles: pd.DataFrame, kronos: KronosSummary | None = None) -> EngineSnapshot:
    return replace(EngineSnapshot.empty("BTC/USDT", "1m", mode="replay"), candles={"1m": candles}, kronos=kronos)


def test_trace_order_and_overlay_visibility(btc: pd.DataFrame) -> None:
    df = btc.iloc[:1500]
    fig = figures.candle_figure(df, ["sma5", "pivots"])
    go.Figure(fig)  # a valid plotly figure (validated here once; the app skips validation for speed)
    data, lay = fig["data"], fig["layout"]
    assert len(data) == len(figures.TRACE_NAMES)
    assert data[figures.TRACE["candles"]]["type"] == "candlestick"
    assert len(data[0]["x"]) == 1500 and data[0]["x"][0] == int(df["ts"].iloc[0])
    assert data[figures.TRACE["volume"]]["type"] == "bar"
    assert data[figures.TRACE["sma5"]]["visible"] is True
    assert data[figures.TRACE["sma21"]]["visible"] is False
    assert data[figures.TRACE["sma5"]]["line"]["color"] == "orange"
    assert data[figures.TRACE["sma21"]]["line"]["color"] == "red"
    assert data[figures.TRACE["sma233"]]["line"]["color"] == "grey"
    assert lay["hovermode"] == "x unified" and lay["xaxis"]["showspikes"]
    # pivots: classic floor pivots of the previous complete UTC day, as layout lines
    assert len(lay["shapes"]) == 7


def test_indicators_match_core_indicators_and_are_past_only(btc: pd.DataFrame) -> None:
    df = btc.iloc[:600]
    cols = figures.indicator_columns(df)
    close = df["close"].to_numpy(float)
    np.testing.assert_allclose(cols["sma21"], ind.sma(close, 21), equal_nan=True)
    # no look-ahead: values on a prefix equal values on the full frame
    cols_prefix = figures.indicator_columns(df.iloc[:400])
    for name in figures.LINE_TRACES:
        np.testing.assert_allclose(cols_prefix[name], cols[name][:400], equal_nan=True, rtol=1e-12)


def test_pivots_from_previous_day(btc: pd.DataFrame) -> None:
    df = btc.iloc[:1500]  # 2023-03-01 00:00 .. 2023-03-02 00:59
    lv = figures.pivot_levels(df)
    day1 = df[df["ts"] < df["ts"].iloc[0] + 86_400_000]
    h, lo, c = day1["high"].max(), day1["low"].min(), day1["close"].iloc[-1]
    assert lv["P"] == pytest.approx((h + lo + c) / 3)
    assert lv["S1"] < lv["P"] < lv["R1"] < lv["R2"] < lv["R3"]
    assert figures.pivot_levels(df.iloc[:100]) == {}  # no complete previous day


def test_append_payload_equals_full_figure_tail(btc: pd.DataFrame) -> None:
    df = btc.iloc[:1501]
    full = figures.candle_figure(df, figures.OVERLAYS)
    pay = figures.append_payload(df, 1)
    assert pay["candles"]["close"] == [full["data"][0]["close"][-1]]
    for name in figures.LINE_TRACES:
        assert pay[name]["y"] == [full["data"][figures.TRACE[name]]["y"][-1]]


def test_chart_update_patches_new_candle_and_fan(btc: pd.DataFrame) -> None:
    s1 = _snap(btc.iloc[:1500])
    fig, st = live_chart.chart_update(s1, None, "1m", list(figures.OVERLAYS), None)
    assert "data" in fig and st["n"] == 1500
    # nothing new -> no update at all
    same, st_same = live_chart.chart_update(s1, None, "1m", list(figures.OVERLAYS), st)
    assert same is live.no_update and st_same["last_ts"] == st["last_ts"]
    # one new real candle and a forecast -> a Patch: extend + trim + fan, never a whole figure
    df2 = btc.iloc[1:1501]
    last = df2.iloc[-1]
    fut = int(last.ts) + 60_000 * np.arange(1, 6)
    med = np.full(5, float(last.close))
    k = KronosSummary(ts=int(last.ts), model_version="v", horizon=5, samples=8, p_up=0.5, expected_return=0.0,
                      future_ts=fut, median=med, bands={"q05": med * 0.99, "q25": med * 0.995,
                                                        "q75": med * 1.005, "q95": med * 1.01}, finished_ms=1)
    p, st2 = live_chart.chart_update(_snap(df2, k), None, "1m", list(figures.OVERLAYS), st)
    payload = json.loads(json.dumps(p, cls=plotly.utils.PlotlyJSONEncoder))
    ops = payload["operations"]
    kinds = {o["operation"] for o in ops}
    assert {"Extend", "Assign"} <= kinds and "Delete" not in kinds
    ext = [o for o in ops if o["operation"] == "Extend" and o["location"] == ["data", 0, "close"]]
    assert ext[0]["params"]["value"] == [float(f"{last.close:.8g}")]
    fan_y = [o for o in ops if o["location"] == ["data", figures.TRACE["fc_median"], "y"]]
    assert fan_y and fan_y[0]["params"]["value"][0] == pytest.approx(float(last.close))
    assert st2["last_ts"] == int(last.ts) and st2["n"] == 1501  # the browser grows, no per-bar trimming
    assert len(json.dumps(payload)) < 20_000


def test_timeframe_switch_redraws(btc: pd.DataFrame) -> None:
    s = _snap(btc.iloc[:1500])
    _, st = live_chart.chart_update(s, None, "1m", [], None)
    s1h = replace(s, candles={"1m": btc.iloc[:1500], "1h": btc.iloc[:1500:60]})
    fig, st2 = live_chart.chart_update(s1h, None, "1h", [], st)
    assert "data" in fig and st2["tf"] == "1h" and st2["n"] == 25


def test_experts_table_shows_the_engines_live_metrics(btc: pd.DataFrame) -> None:
    """Expert outputs are hand-made (two opposite calls); the outcome comes from the real closes through
    the engine's own LiveOutcomes, and the API/table show exactly its metrics (no second scoring)."""
    from core.outcomes import LiveOutcomes
    from core.snapshot import ExpertState, by_expert
    from core.types import Action, Decision, ExpertOutput, Thresholds
    from web import experts_api as api

    df = btc.iloc[:400]
    close = df["close"].to_numpy(float)
    h, dz = 5, 0.0005
    # a bar whose real 5-bar move left the dead zone, and the last bar (not matured yet)
    r = np.log(close[h:] / close[:-h])
    i = int(np.flatnonzero(np.abs(r) > dz)[0])
    up = r[i] > 0
    ts_i, ts_last = int(df["ts"].iloc[i]), int(df["ts"].iloc[-1])

    def out(name: str, ts: int, p_up: float) -> ExpertOutput:
        return ExpertOutput(name, "v", "BTC/USDT", ts, h, (1 - p_up - 0.1, 0.1, p_up), 0.0, 0.5, 1.0)

    right, wrong = (0.8, 0.1) if up else (0.1, 0.8)
    d1 = Decision("d1", ts_i, "BTC/USDT", Action.HOLD, (0.3, 0.4, 0.3), 0.0, {"good": 0.5, "bad": 0.5},
                  Thresholds(), 0.0, "", (out("good", ts_i, right), out("bad", ts_i, wrong)))
    d2 = Decision("d2", ts_last, "BTC/USDT", Action.HOLD, (0.3, 0.4, 0.3), 0.0, {"good": 0.5, "bad": 0.5},
                  Thresholds(), 0.0, "", (out("good", ts_last, wrong), out("bad", ts_last, right)))
    live_outcomes = LiveOutcomes("1m", dz, default_horizon=h)
    for k, (t, c) in enumerate(zip(df["ts"].to_numpy(np.int64), close, strict=True)):
        live_outcomes.on_close(int(t), float(c))
        if k == i:
            live_outcomes.add(d1)
    live_outcomes.add(d2)  # its horizon has not passed: it must not count
    experts = {n: ExpertState(n, True, False, "v", False, "features") for n in ("good", "bad", "idle")}
    snap = replace(_snap(df), recent_decisions=(d1, d2), experts=experts,
                   live_metrics=by_expert(live_outcomes.metrics()))
    rows = {e["name"]: e for e in api.experts_json(snap)}
    assert rows["good"]["live_metrics"]["n"] == 1 and rows["good"]["recent_accuracy"] == 1.0
    assert rows["bad"]["live_metrics"]["n"] == 1 and rows["bad"]["recent_accuracy"] == 0.0
    assert rows["idle"]["live_metrics"] is None and rows["idle"]["recent_accuracy"] is None
    assert rows["good"]["live_metrics"]["log_loss"] == pytest.approx(-np.log(0.8))
    table = str(live.experts_panel(snap))
    assert "100% (1)" in table and "0% (1)" in table


def test_browser_window_is_redrawn_after_slack(btc: pd.DataFrame) -> None:
    s = _snap(btc.iloc[:1500])
    _, st = live_chart.chart_update(s, None, "1m", [], None)
    st = {**st, "n": live_chart.MAX_BARS + live_chart.BROWSER_SLACK}
    fig, st2 = live_chart.chart_update(_snap(btc.iloc[1:1501]), None, "1m", [], st)
    assert isinstance(fig, dict) and st2["n"] == 1500


def test_online_loss_figure_and_models_page_redraw_only_on_new_rounds() -> None:
    # hand-written trainer rounds and one promotion (the trainer process itself is tested in
    # test_online_training.py; here only the chart and when the Models page resends it)
    from core.snapshot import SwapEvent
    from core.types import TrainerStatus, TrainingPoint
    from web.pages import models as models_page

    pts = tuple(TrainingPoint(1_700_000_000_000 + 30_000 * i, 20 * (i + 1), 1.1 - 0.1 * i, 800.0,
                              0.9 - 0.01 * i, 0.92, f"online-x-{i + 1}") for i in range(3))
    swap = SwapEvent(1_700_000_061_000, None, "cnn", "promote", "online-x-3", "untrained", 0.92, 0.88)
    snap = replace(EngineSnapshot.empty("BTC/USDT", "1m"),
                   trainers={"cnn": TrainerStatus(running=True, steps=60, history=pts)}, swaps=(swap,))
    fig = models_page.online_figure(snap, "cnn")
    names = [t.name for t in fig.data]
    assert names == ["train loss", "val challenger", "val live", "swaps"]
    assert list(fig.data[0].y) == pytest.approx([1.1, 1.0, 0.9]) and list(fig.data[0].x) == [p.ts_ms for p in pts]
    assert list(fig.data[3].y) == [0.88] and "promote online-x-3" in fig.data[3].text[0]
    json.dumps(fig.to_plotly_json(), cls=plotly.utils.PlotlyJSONEncoder)
    # no rounds yet: an empty chart that says how to get one
    empty = models_page.online_figure(EngineSnapshot.empty("BTC/USDT", "1m"), "cnn")
    assert len(empty.data) == 0 and "switch training on" in empty.layout.annotations[0].text
    # the page redraws only when a round or a swap is added
    mark = models_page.online_mark(snap, "cnn")
    assert mark == [3, 1] and models_page.online_mark(replace(snap, swaps=()), "cnn") == [3, 0]
    assert models_page.online_mark(EngineSnapshot.empty(), "cnn") == [0, 0]
