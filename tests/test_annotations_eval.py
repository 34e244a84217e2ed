"""Replay metrics against annotations, checked against values counted by hand on a small set."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from core.annotations.evaluate import evaluate
from core.annotations.store import snap
from core.data.files import load_file
from core.data.store import MarketStore
from core.types import SeriesKey

KEY = SeriesKey("binanceus", "BTC/USDT", "1m")


def ms(iso: str) -> int:
    return int(pd.Timestamp(iso).value // 1_000_000)


@pytest.fixture(scope="module")
def window(shared_data: Path):
    btc = load_file(shared_data / "binanceus" / "BTC_USDT-1m.csv").iloc[:4000]
    store = MarketStore(":memory:")
    store.upsert_candles(KEY, btc)
    c = store.candles(KEY, ms("2023-03-03T01:50Z"), ms("2023-03-03T03:00Z"))  # 70 real bars, index 0 = 01:50
    anns = [snap(store, KEY, ms("2023-03-03T02:00Z"), ms("2023-03-03T02:07Z"), direction="long"),   # bars 10..17
            snap(store, KEY, ms("2023-03-03T02:20Z"), ms("2023-03-03T02:25Z"), direction="short"),  # bars 30..35
            snap(store, KEY, ms("2023-03-03T02:40Z"), ms("2023-03-03T02:44Z"), direction="none")]   # bars 50..54
    yield c, anns
    store.close()


def test_metrics_equal_hand_counts(window) -> None:
    c, anns = window
    assert len(c) == 70
    # hand-written decision codes (the edge cases under test), BUY 1 / SELL -1 / HOLD 0
    codes = np.zeros(70, dtype=np.int8)
    codes[5] = 1  # BUY onset outside every evaluated window (A1's is bars 8..19): ignored
    codes[9] = codes[10] = 1  # one BUY onset at 9: one bar before A1's entry -> matched (k = 2)
    codes[15] = -1  # SELL onset inside A1, no short entry near: a false SELL; A1's model trade exits here
    codes[28] = -1  # SELL onset two bars before A2's (short) entry -> matched
    codes[31] = 1  # BUY onset inside A2: a false BUY; the model goes long there
    codes[52] = 1  # BUY onset inside the NO_TRADE span: a false BUY
    ev = evaluate(anns, c.ts.to_numpy(), c.close.to_numpy(), codes, candles=c, k=2)
    t = ev.totals()
    assert (t["BUY"]["predicted"], t["BUY"]["annotated"], t["BUY"]["matched"]) == (3, 1, 1)
    assert t["BUY"]["precision"] == pytest.approx(1 / 3) and t["BUY"]["recall"] == 1.0
    assert t["BUY"]["f1"] == pytest.approx(0.5)
    assert (t["SELL"]["predicted"], t["SELL"]["annotated"], t["SELL"]["matched"]) == (2, 1, 1)
    assert t["SELL"]["precision"] == 0.5 and t["SELL"]["f1"] == pytest.approx(2 / 3)
    # rows annotated ENTRY, HOLD, EXIT, NO_TRADE; columns predicted (counted bar by bar in the module doc's walk)
    assert t["confusion"]["rows_annotated_cols_predicted"] == [[1, 0, 0, 1],
                                                               [1, 7, 1, 1],
                                                               [0, 1, 0, 1],
                                                               [1, 2, 0, 2]]
    assert t["label_accuracy"] == pytest.approx(10 / 19)
    close = c.set_index("ts").close
    a1, a2, a3 = ev.per_annotation
    assert [a1["entry_signal_offset"], a2["entry_signal_offset"], a3["entry_signal_offset"]] == [-1, -2, None]
    # A1: long at 02:00's close, out at 02:05's (the SELL); A2: long at 02:21, closed at A2's end 02:25
    assert a1["captured_pnl_pct"] == pytest.approx(100 * (22277.72 / 22235.23 - 1))
    assert a2["captured_pnl_pct"] == pytest.approx(100 * (close[ms("2023-03-03T02:25Z")]
                                                          / close[ms("2023-03-03T02:21Z")] - 1))
    assert a3["captured_pnl_pct"] == pytest.approx(100 * (close[ms("2023-03-03T02:44Z")]
                                                          / close[ms("2023-03-03T02:42Z")] - 1))
    assert a1["annotated_pnl_pct"] == pytest.approx(100 * 57.37 / 22235.23) and a3["annotated_pnl_pct"] == 0.0
    assert a2["annotated_pnl_pct"] == pytest.approx(-100 * (close[ms("2023-03-03T02:25Z")]
                                                            / close[ms("2023-03-03T02:20Z")] - 1))
    assert t["captured_pnl_pct"] == pytest.approx(sum(x["captured_pnl_pct"] for x in (a1, a2, a3)))
    assert len(ev.timeline_ts) == 12 + 10 + 9  # the evaluated bars: 8..19, 28..37, 48..56 (periods +-2)


def test_bars_outside_the_replay_are_refused(window) -> None:
    c, anns = window
    with pytest.raises(ValueError, match="not in the replayed range"):
        evaluate(anns, c.ts.to_numpy()[:20], c.close.to_numpy()[:20], np.zeros(20, dtype=np.int8), k=2)
