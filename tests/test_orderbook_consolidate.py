"""Consolidation of Binance spot + USD-M + COIN-M BTC books (real recorded levels), imbalance MAs by
hand, and the 1 s snapshots of a replay written in batches to DuckDB."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest

from core.data.book import L2Book
from core.data.book_buckets import Consolidator, ImbalanceMA, VenueBook, check_quotes
from core.data.book_engine import BookEngine, VenueSymbol
from core.data.book_replay import read_capture
from core.data.book_store import BookWriter, load_summary
from core.data.store import MarketStore

REF = {"binance": "binance_spot_BTCUSDT", "binanceusdm": "binance-futures_BTCUSDT",
       "binancecoinm": "binance-delivery_BTCUSD_PERP"}
VENUES = [VenueSymbol("binance", "BTC/USDT"), VenueSymbol("binanceusdm", "BTC/USDT:USDT"),
          VenueSymbol("binancecoinm", "BTC/USD:BTC")]


def _ref_rows(shared_data: Path, venue: str) -> dict[int, list[str]]:
    path = shared_data / "orderbook" / "binance-2024-08-08" / "reference" / f"{REF[venue]}_book_snapshot_25_1s.csv"
    with open(path) as fh:
        return {int(r[3]) // 1000: r for r in list(csv.reader(fh))[1:]}


def test_bucket_volumes_equal_sum_of_venue_books(shared_data: Path) -> None:
    refs = {v: _ref_rows(shared_data, v) for v in REF}
    common = sorted(set.intersection(*(set(r) for r in refs.values())))
    assert len(common) > 100
    cons = Consolidator(bucket_size=10.0, n_buckets=20)
    for ts in common[::25]:
        books = []
        levels = {}
        for vs in VENUES:
            row = refs[vs.venue][ts]
            asks = [(row[4 + 4 * k], row[5 + 4 * k]) for k in range(25)]
            bids = [(row[6 + 4 * k], row[7 + 4 * k]) for k in range(25)]
            b = L2Book()
            b.load_str(bids, asks)
            books.append(VenueBook(vs.venue, vs.symbol, b, vs.contract_size))
            levels[vs.venue] = (bids, asks)
        snap = cons.snapshot(ts, books)
        assert snap is not None
        # independent: loop over every level, convert COIN-M contracts (100 USD each) to BTC, bucket by floor
        mid = (max(float(levels[v][0][0][0]) for v in levels) + min(float(levels[v][1][0][0]) for v in levels)) / 2
        assert snap.mid == pytest.approx(mid)
        lo = (math.floor(mid / 10) - 20) * 10
        for i, vs in enumerate(VENUES):
            for side, arr in ((0, snap.bid[i]), (1, snap.ask[i])):
                exp = np.zeros(41)
                for p_s, q_s in levels[vs.venue][side]:
                    p, q = float(p_s), float(q_s)
                    if vs.venue == "binancecoinm":
                        q = q * 100.0 / p
                    k = math.floor(p / 10) * 10
                    if lo <= k < lo + 410:
                        exp[int(round((k - lo) / 10))] += q
                np.testing.assert_allclose(arr, exp, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(snap.bid_total, snap.bid.sum(axis=0))
        tot_b, tot_a = snap.bid_total, snap.ask_total
        j = int(np.argmax(tot_b + tot_a))
        assert snap.imbalance[j] == pytest.approx((tot_b[j] - tot_a[j]) / (tot_b[j] + tot_a[j]))
        assert snap.best_bid == {v: float(levels[v][0][0][0]) for v in levels}
        assert snap.spread == pytest.approx(min(snap.best_ask.values()) - max(snap.best_bid.values()))
        for w in snap.walls:  # every wall is >= 10x its venue's median level size in the window
            assert w.amount > 0 and w.distance_bps >= 0


def test_imbalance_moving_averages_by_hand() -> None:
    # hand-written samples (ms, value): windows are (now - w, now]
    ma = ImbalanceMA((1, 5))
    for ts, v in [(0, 0.5), (400, -0.1), (1000, 0.2), (1500, 0.7), (5200, -0.4)]:
        ma.update(ts, v)
    m = ma.means()
    assert m[1] == pytest.approx(-0.4)  # only 5200 in (4200, 5200]
    assert m[5] == pytest.approx((-0.1 + 0.2 + 0.7 - 0.4) / 4)  # (200, 5200]: the sample at 0 has left
    ma2 = ImbalanceMA((1,))
    for ts, v in [(0, 1.0), (300, 0.0), (999, 0.5)]:
        ma2.update(ts, v)
    assert ma2.means()[1] == pytest.approx(0.5)


def test_quotes_must_match_unless_configured() -> None:
    with pytest.raises(ValueError, match="usd_equivalent"):
        check_quotes(["BTC/USDT", "BTC/USD:BTC"], usd_equivalent=False)
    check_quotes(["BTC/USDT", "BTC/USD:BTC", "BTC/USDC"], usd_equivalent=True)
    with pytest.raises(ValueError, match="base coins"):
        check_quotes(["BTC/USDT", "ETH/USDT"], usd_equivalent=True)


def test_replay_snapshots_written_in_batches(shared_data: Path, tmp_path: Path) -> None:
    store = MarketStore(tmp_path / "b.duckdb")
    writer = BookWriter(store, "BTC/USDT", batch_seconds=30)
    eng = BookEngine("BTC/USDT", VENUES, Consolidator(10.0, 20), usd_equivalent=True, sink=writer)
    raw = shared_data / "orderbook" / "binance-2024-08-08" / "raw"
    for m in read_capture(raw):
        if m.recv_ns > 1723161256_000_000_000 + 150 * 10**9:  # 2.5 minutes is enough here
            break
        eng.on_message(m)
    writer.flush()
    hist = eng.snapshot_history()
    assert 140 <= len(hist) <= 152
    assert all(s.venues == ("binance", "binanceusdm", "binancecoinm") for s in hist[5:])
    summary = load_summary(store, "BTC/USDT")
    assert len(summary) == len(hist)
    assert summary["mid"].between(61_556, 61_856).all()
    assert np.all(np.diff(summary["ts"].to_numpy()) >= 1000)
    per = store.query_df("SELECT ts, venue = 'all' AS is_all, sum(bid) AS b, sum(ask) AS a FROM book_buckets "
                         "GROUP BY ts, is_all ORDER BY ts, is_all")
    allv = per[per["is_all"]].set_index("ts")
    ven = per[~per["is_all"]].set_index("ts")
    np.testing.assert_allclose(allv["b"], ven.loc[allv.index, "b"], rtol=1e-9)
    np.testing.assert_allclose(allv["a"], ven.loc[allv.index, "a"], rtol=1e-9)
    for vb in eng.venue_books():  # the price window each book keeps for consolidation == its full book cut
        assert vb.book.window is not None
        lo, hi = vb.book.window
        assert vb.book.win_bids == {p: q for p, q in vb.book.bids.items() if lo <= p < hi}
        assert vb.book.win_asks == {p: q for p, q in vb.book.asks.items() if lo <= p < hi}
        assert vb.book.win_bids and vb.book.win_asks
    status = {d["venue"]: d for d in eng.status()}
    assert all(d["synced"] and d["resync_count"] == 0 for d in status.values())
    assert len(eng.trades) > 100
    store.close()
