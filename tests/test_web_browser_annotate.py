"""Annotate page in headless Chromium on the REAL engine replaying shared BTC/USDT data (whole file stored):
two clicks create an annotation equal to the clicked candles, it shows in the table and the store,
dragging its exit updates the P&L, undo (keyboard) reverts the move and then removes it."""

from __future__ import annotations

import pandas as pd
import pytest
from helpers import CHROMIUM, chromium_page, served_replay, wait_for

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="no Chromium at /usr/bin/chromium (apt-get install chromium)"),
]

GD = "document.querySelector('#ann-chart .js-plotly-plot')"
# page pixel of a (ts ms, price) point on the main chart
TO_PX = ("([t, p]) => { const g = " + GD + "; const r = g.getBoundingClientRect(); "
         "const xa = g._fullLayout.xaxis, ya = g._fullLayout.yaxis; "
         "return [r.left + xa._offset + xa.l2p(t), r.top + ya._offset + ya.l2p(p)]; }")
MIN = 60_000


def ms(iso: str) -> int:
    return int(pd.Timestamp(iso).value // 1_000_000)


@pytest.fixture(scope="module")
def served(shared_data, tmp_path_factory):
    with served_replay(shared_data, tmp_path_factory.mktemp("annotate"), min_bars=20) as served:
        yield served


@pytest.fixture(scope="module")
def page(served):
    with chromium_page(served[2], served[1], viewport={"width": 1600, "height": 1300}) as pg:
        yield pg


def current(eng) -> pd.DataFrame:
    return eng.store.query_df("SELECT * FROM annotations WHERE current AND NOT deleted")


def only(eng, pred=lambda r: True):
    """The one current annotation when it satisfies ``pred``, else None (for wait_for)."""
    d = current(eng)
    return d.iloc[0].to_dict() if len(d) == 1 and pred(d.iloc[0]) else None


def test_click_click_drag_undo(served, page, output_dir) -> None:
    eng, url, _ = served
    page.goto(url + "/annotate")
    page.wait_for_function(f"() => {{ const g = {GD}; return g && g.data && g.data[0] && g.data[0].x.length > 1000; }}",
                           timeout=60_000)
    # the page has settled (the small charts come after the main one): the zoom below must not race a redraw
    page.wait_for_load_state("networkidle")
    t1, t2, t3 = ms("2023-03-21T10:00Z"), ms("2023-03-21T10:20Z"), ms("2023-03-21T10:25Z")
    closes = eng.store.query_df("SELECT ts, close FROM candles WHERE symbol = 'BTC/USDT' AND timeframe = '1m' "
                                "AND ts BETWEEN ? AND ?", [t1, t3]).set_index("ts")["close"]
    # zoom to 09:50..10:40 (as a scroll-zoom would) so each candle is ~30 px wide
    page.evaluate(f"() => Plotly.relayout({GD}, {{'xaxis.range': [{t1 - 10 * MIN}, {t1 + 40 * MIN}]}})")
    page.wait_for_timeout(500)
    for t in (t1, t2):
        x, y = page.evaluate(TO_PX, [t, float(closes[t])])
        page.mouse.move(x, y)
        page.wait_for_timeout(150)
        page.mouse.click(x, y)
        page.wait_for_function("() => /entry at|saved/.test(document.getElementById('ann-msg').innerText)",
                               timeout=10_000)
    a = wait_for(lambda: only(eng), 10, "the stored annotation")
    assert (int(a["entry_ts"]), int(a["exit_ts"])) == (t1, t2)
    assert (a["entry_price"], a["exit_price"]) == (closes[t1], closes[t2])
    page.wait_for_function(f"() => document.querySelector('#ann-table').innerText.includes('{a['id']}')",
                           timeout=10_000)
    pnl = 100 * (1 if closes[t2] >= closes[t1] else -1) * (closes[t2] / closes[t1] - 1)
    assert f"{round(pnl, 3)}" in page.inner_text("#ann-table")
    page.screenshot(path=str(output_dir / "dashboard_annotate.png"), full_page=True)

    # drag the span's right edge (the exit) five bars to the right
    x, y = page.evaluate(TO_PX, [t2 + MIN // 2, float(closes[t2])])
    x_to, _ = page.evaluate(TO_PX, [t3 + MIN // 2, float(closes[t2])])
    page.mouse.move(x - 1, y)
    page.mouse.down()
    for k in range(1, 11):
        page.mouse.move(x - 1 + (x_to - x) * k / 10, y)
        page.wait_for_timeout(20)
    page.mouse.up()
    moved = wait_for(lambda: only(eng, lambda r: int(r.exit_ts) != t2), 10, "the moved exit in the store")
    assert int(moved["exit_ts"]) == t3 and moved["exit_price"] == closes[t3]
    assert int(moved["entry_ts"]) == t1 and int(moved["version"]) == 2
    pnl3 = 100 * (1 if closes[t3] >= closes[t1] else -1) * (closes[t3] / closes[t1] - 1)
    page.wait_for_function(f"() => document.querySelector('#ann-table').innerText.includes('{round(pnl3, 3)}')",
                           timeout=10_000)

    # undo (key u) puts the exit back; undo again removes the annotation (soft delete, history kept)
    page.locator("#ann-chart").click(position={"x": 5, "y": 5})  # focus the page, not a text box
    page.keyboard.press("u")
    wait_for(lambda: only(eng, lambda r: int(r.exit_ts) == t2) is not None, 10, "the undone move")
    page.keyboard.press("u")
    wait_for(lambda: len(current(eng)) == 0, 10, "the undone annotation")
    page.wait_for_function(f"() => !document.querySelector('#ann-table').innerText.includes('{a['id']}')",
                           timeout=10_000)
    hist = eng.store.query_df("SELECT version, deleted FROM annotations WHERE id = ? ORDER BY version", [a['id']])
    assert hist.version.tolist() == [1, 2, 3, 4] and hist.deleted.tolist() == [False, False, False, True]


def test_replay_button_draws_the_timeline_and_metrics(served, page) -> None:
    """Two stored trades on a real day; Replay runs the chosen expert over them (the backtester's code)
    and draws the per-bar decisions under the chart with the metrics."""
    from core.annotations.store import AnnotationStore, snap
    from core.types import SeriesKey

    eng, url, _ = served
    key = SeriesKey(eng.exchange, "BTC/USDT", "1m")
    ann = AnnotationStore(eng.store)
    made = [ann.add(snap(eng.store, key, ms(e), ms(x), tags=("replay-test",)))
            for e, x in (("2023-03-15T09:00Z", "2023-03-15T09:30Z"), ("2023-03-15T13:00Z", "2023-03-15T13:15Z"))]
    try:
        page.goto(url + "/annotate?from=2023-03-15&to=2023-03-15")
        page.wait_for_function("() => /2 annotation\\(s\\) in range/.test((document.getElementById('ann-msg') || {}).innerText)",
                               timeout=60_000)
        # the fused decision needs trained experts: none here, and the page says so
        page.click("#ann-replay")
        page.wait_for_function("() => /replay failed: no expert to run/.test(document.getElementById('ann-metrics')"
                               ".innerText)", timeout=60_000)
        # a named expert runs untrained (as `annotations evaluate --model cnn` does)
        page.locator("#ann-model").click()
        page.get_by_role("option", name="cnn", exact=True).click()
        page.click("#ann-replay")
        page.wait_for_function("() => /precision/.test(document.getElementById('ann-metrics').innerText)",
                               timeout=120_000)
        text = page.inner_text("#ann-metrics")
        assert "cnn: 2 annotation(s), entry tolerance +-2 bars" in text
        assert "confusion (rows annotated, cols predicted): ENTRY HOLD EXIT NO_TRADE" in text
        buys = sum(a.direction == "long" for a in made)
        assert f"annotated {buys} matched" in text.split("BUY:")[1].split("\n")[0]
        pnl = sum(100 * a.sign * (a.exit_price / a.entry_price - 1) for a in made)
        assert f"P&L annotated {pnl:+.3f}%" in text
        tl = "document.querySelector('#ann-timeline .js-plotly-plot')"
        page.wait_for_function(f"() => {{ const g = {tl}; return g && g.data && g.data[0] && g.data[0].x.length > 0; }}",
                               timeout=30_000)
        xs = page.evaluate(f"() => Array.from({tl}.data[0].x)")
        assert page.is_visible("#ann-timeline")
        # the replayed bars cover both annotated periods (+-k bars), one bar per minute
        for a in made:
            assert a.entry_ts in xs and a.exit_ts in xs
        assert set(page.evaluate(f"() => Array.from({tl}.data[0].y)")) <= {-1, 0, 1}
    finally:
        for a in made:
            ann.delete(a.id)
