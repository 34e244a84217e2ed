"""Annotations on real shared data: storage (versions, soft deletes, refusals), cases (== build_one, hand-checked
outcomes), export/import round trips (cases JSONL, trades CSV, Label Studio JSON)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from core.annotations import io
from core.annotations.cases import make_cases, outcome
from core.annotations.model import Annotation, LabelSpan
from core.annotations.store import AnnotationError, AnnotationStore, check, snap
from core.config import FeaturesConfig
from core.data.files import load_file
from core.data.store import MarketStore
from core.features import FeatureBuilder, resample_candles
from core.labels import DOWN, FLAT, UP
from core.types import SeriesKey, timeframe_ms

KEY = SeriesKey("binanceus", "BTC/USDT", "1m")
N_BARS = 6000
MIN = 60_000


def ms(iso: str) -> int:
    return int(pd.Timestamp(iso).value // 1_000_000)


@pytest.fixture(scope="module")
def btc(shared_data: Path) -> pd.DataFrame:
    return load_file(shared_data / "binanceus" / "BTC_USDT-1m.csv").iloc[:N_BARS].reset_index(drop=True)


@pytest.fixture()
def store(btc: pd.DataFrame):
    s = MarketStore(":memory:")
    s.upsert_candles(KEY, btc)
    yield s
    s.close()


@pytest.fixture(scope="module")
def builder() -> FeatureBuilder:
    return FeatureBuilder(FeaturesConfig(), "1m")


def test_snap_stores_versions_and_soft_deletes(store: MarketStore) -> None:
    ann = AnnotationStore(store)
    # clicks inside the 02:00 and 02:07 candles snap to those bars and their closes (CSV rows, 2023-03-03)
    a = snap(store, KEY, ms("2023-03-03T02:00:31Z"), ms("2023-03-03T02:07:59Z"), author="t")
    assert (a.entry_ts, a.exit_ts, a.entry_price, a.exit_price) == (
        ms("2023-03-03T02:00Z"), ms("2023-03-03T02:07Z"), 22235.23, 22292.6)
    assert a.direction == "long" and [s.label for s in a.spans] == ["ENTRY", "HOLD", "EXIT"]
    a = ann.add(a)
    assert [x.id for x in ann.list("BTC/USDT")] == [a.id]
    b = ann.update(a.id, exit_ts=ms("2023-03-03T02:10Z"), exit_price=22245.04, notes="held longer")
    assert b.version == 2 and ann.get(a.id).exit_ts == ms("2023-03-03T02:10Z")
    assert ann.get(a.id).spans[-1] == LabelSpan("EXIT", b.exit_ts, b.exit_ts)  # spans follow the moved exit
    ann.delete(a.id)
    assert ann.list() == [] and [x.id for x in ann.list(include_deleted=True)] == [a.id]
    hist = ann.history(a.id)
    assert [h.version for h in hist] == [1, 2, 3] and hist[0].exit_price == 22292.6 and hist[2].deleted
    with pytest.raises(KeyError):
        ann.get(a.id)


def test_refusals_name_the_reason(store: MarketStore, shared_data: Path) -> None:
    ann = AnnotationStore(store)
    first = ms("2023-03-01T00:00Z")
    with pytest.raises(AnnotationError, match="outside the stored data"):
        ann.add(Annotation("binanceus", "BTC/USDT", "1m", first - 5 * MIN, first + 5 * MIN, 23000.0, 23100.0,
                           "long"))
    with pytest.raises(AnnotationError, match="outside its candle's range"):  # 02:00 low..high = 22107.26..22254.79
        ann.add(Annotation("binanceus", "BTC/USDT", "1m", ms("2023-03-03T02:00Z"), ms("2023-03-03T02:07Z"),
                           22300.0, 22292.6, "long"))
    with pytest.raises(AnnotationError, match="no stored 1m candles"):
        ann.add(Annotation("binanceus", "ETH/USDT", "1m", first, first + MIN, 1.0, 1.0, "long"))
    # XRP/ETH 1m (a thin market) has real gaps: an annotation across one is refused, nothing is stored
    xrp = load_file(shared_data / "freqtrade" / "XRP_ETH-1m.csv")
    xkey = SeriesKey("binance", "XRP/ETH", "1m")
    store.upsert_candles(xkey, xrp)
    gap = store.gaps(xkey)[0]
    before, after = gap.start_ms - MIN, gap.end_ms
    c = store.candles(xkey, before, after + MIN)
    with pytest.raises(AnnotationError, match="spans a gap"):
        ann.add(Annotation("binance", "XRP/ETH", "1m", before, after, float(c.close.iloc[0]),
                           float(c.close.iloc[-1]), "long"))
    assert ann.list(include_deleted=True) == []
    with pytest.raises(ValueError, match="exit .* before entry"):
        Annotation("binanceus", "BTC/USDT", "1m", first + MIN, first, 1.0, 1.0, "long")


def test_outcomes_checked_by_hand(store: MarketStore) -> None:
    # long 02:00 -> 02:07 (closes 22235.23 -> 22292.6); highs of 02:01..02:07 peak at 22326.79 (02:07),
    # lows bottom at 22203.2 (02:02): numbers read off the CSV rows of 2023-03-03
    a = snap(store, KEY, ms("2023-03-03T02:00Z"), ms("2023-03-03T02:07Z"))
    o = outcome(a, check(store, a))
    assert o.holding_bars == 7 and o.holding_ms == 7 * MIN
    assert o.pnl_pct == pytest.approx(100 * 57.37 / 22235.23)
    assert o.mfe_pct == pytest.approx(100 * (22326.79 - 22235.23) / 22235.23)
    assert o.mae_pct == pytest.approx(-100 * (22235.23 - 22203.2) / 22235.23)
    # short 02:07 -> 02:10 (22292.6 -> 22245.04); lows of 02:08..02:10 reach 22237.24, highs 22316.36
    s = snap(store, KEY, ms("2023-03-03T02:07Z"), ms("2023-03-03T02:10Z"))
    assert s.direction == "short"
    o = outcome(s, check(store, s))
    assert o.pnl_pct == pytest.approx(100 * (22292.6 - 22245.04) / 22292.6)
    assert o.mfe_pct == pytest.approx(100 * (22292.6 - 22237.24) / 22292.6)
    assert o.mae_pct == pytest.approx(-100 * (22316.36 - 22292.6) / 22292.6)
    # a typed exit price inside the bar counts instead of the close
    t = snap(store, KEY, ms("2023-03-03T02:00Z"), ms("2023-03-03T02:07Z"), exit_price=22320.0)
    assert outcome(t, check(store, t)).pnl_pct == pytest.approx(100 * (22320.0 - 22235.23) / 22235.23)


def _live_frames(builder: FeatureBuilder, candles: pd.DataFrame, i: int, bars: int = 1500) -> dict:
    """What the DataProvider caches at the close of bar i (closed bars only), as in test_features."""
    hist = candles.iloc[: i + 1]
    now = int(hist.ts.iloc[-1]) + builder.base_ms
    out = {}
    for tf in builder.timeframes:
        r = hist if tf == builder.base_timeframe else resample_candles(hist, tf)
        out[tf] = r[r.ts + timeframe_ms(tf) <= now].tail(bars).reset_index(drop=True)
    return out


def test_cases_equal_build_one_and_labels(store: MarketStore, btc: pd.DataFrame, builder: FeatureBuilder) -> None:
    long_ = snap(store, KEY, ms("2023-03-03T02:00Z"), ms("2023-03-03T02:07Z"))
    short = snap(store, KEY, ms("2023-03-04T10:00Z"), ms("2023-03-04T10:03Z"), direction="short",
                 exit_price=float(btc.set_index("ts").loc[ms("2023-03-04T10:03Z"), "low"]))
    idle = snap(store, KEY, ms("2023-03-02T05:00Z"), ms("2023-03-02T05:02Z"), direction="none")
    cases = make_cases(builder, btc, [long_, short, idle])
    assert len(cases) == 8 + 4 + 3
    assert list(cases.batch.ts) == sorted(cases.batch.ts)
    by_ts = dict(zip(cases.batch.ts.tolist(), zip(cases.label, cases.target, strict=True), strict=True))
    assert by_ts[long_.entry_ts] == ("ENTRY", UP) and by_ts[long_.entry_ts + MIN] == ("HOLD", UP)
    assert by_ts[long_.exit_ts] == ("EXIT", FLAT) and by_ts[short.entry_ts] == ("ENTRY", DOWN)
    assert by_ts[idle.entry_ts] == ("NO_TRADE", FLAT)
    ts = btc.ts.to_numpy()
    for k in (0, 7, 8, 14):
        i = int(np.searchsorted(ts, cases.batch.ts[k]))
        one = builder.build_one(_live_frames(builder, btc, i))
        np.testing.assert_allclose(cases.batch.windows[k], one.windows[0], atol=1e-5, rtol=0)
        np.testing.assert_allclose(cases.batch.flat[k], one.flat[0], atol=1e-5, rtol=0)
        np.testing.assert_allclose(cases.batch.regime[k], one.regime[0], atol=1e-5, rtol=0)
    assert cases.outcomes[idle.id].pnl_pct == 0.0


def test_round_trips(store: MarketStore, btc: pd.DataFrame, builder: FeatureBuilder, tmp_path: Path) -> None:
    ann = AnnotationStore(store)
    made = [ann.add(snap(store, KEY, ms("2023-03-03T02:00Z"), ms("2023-03-03T02:07Z"), notes="breakout, \"quoted\"",
                         tags=("breakout", "asia"), author="me")),
            ann.add(snap(store, KEY, ms("2023-03-02T05:00Z"), ms("2023-03-02T05:04Z"), direction="none")),
            ann.add(snap(store, KEY, ms("2023-03-04T10:00Z"), ms("2023-03-04T10:30Z"), direction="short"))]
    made[0] = ann.update(made[0].id, notes="edited")
    cases = make_cases(builder, btc, made)
    p = tmp_path / "cases.jsonl"
    assert io.write_cases_jsonl(p, cases, made) == len(cases)
    line = json.loads(p.read_text().splitlines()[0])
    assert line["features"]["flat"]["1m:close"] == pytest.approx(float(cases.batch.flat[0][
        builder.spec.flat_features.index("1m:close")]))
    assert sorted(io.read_jsonl_annotations(p), key=lambda a: a.id) == sorted(made, key=lambda a: a.id)
    ls = json.loads(json.dumps(io.to_label_studio(made)))
    assert ls[0]["annotations"][0]["result"][0]["type"] == "timeserieslabels"
    assert io.from_label_studio(ls) == made
    # importing them into an empty store gives the same annotations; a second import changes nothing
    other = MarketStore(":memory:")
    other.upsert_candles(KEY, btc)
    o = AnnotationStore(other)
    for a in io.from_label_studio(ls):
        o.upsert(a)
    for a in io.read_jsonl_annotations(p):
        o.upsert(a)
    assert [(a.id, a.version, a.notes) for a in o.list()] == [(a.id, 1, a.notes) for a in sorted(
        made, key=lambda a: a.entry_ts)]
    # a task made in Label Studio itself (no moe fields): series from the task, prices from the stored closes
    foreign = [{"data": {"exchange": "binanceus", "symbol": "BTC/USDT", "timeframe": "1m", "direction": "long"},
                "annotations": [{"result": [
                    {"type": "timeserieslabels", "value": {"start": "2023-03-03T02:00:00Z",
                                                           "end": "2023-03-03T02:00:00Z",
                                                           "timeserieslabels": ["ENTRY"]}},
                    {"type": "timeserieslabels", "value": {"start": ms("2023-03-03T02:07Z"),
                                                           "end": ms("2023-03-03T02:07Z"),
                                                           "timeserieslabels": ["EXIT"]}}]}]}]
    got = io.from_label_studio(foreign, snap_fn=lambda ser, e0, e1, d, spans: snap(
        other, SeriesKey(ser["exchange"], ser["symbol"], ser["timeframe"]), e0, e1, direction=d, spans=spans))
    assert (got[0].entry_price, got[0].exit_price, [s.label for s in got[0].spans]) == (22235.23, 22292.6,
                                                                                     ["ENTRY", "EXIT"])
    csv_path = tmp_path / "trades.csv"
    io.write_trades_csv(csv_path, [(a, cases.outcomes[a.id]) for a in made])
    back = io.read_trades_csv(csv_path)
    keep = ("id", "entry_ts", "exit_ts", "entry_price", "exit_price", "direction", "tags", "notes")
    assert [tuple(getattr(a, k) for k in keep) for a in back] == [tuple(getattr(a, k) for k in keep) for a in made]
    other.close()
