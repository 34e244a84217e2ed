"""``main_backtest.py book record|replay|stats``: raw captures to Parquet, replay at N x, summaries."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

import numpy as np

from core.config import OrderbookConfig, load_config
from core.data.book_buckets import BucketSnapshot
from core.data.book_engine import BookEngine, engine_for_capture, replay_into, summary_row, venue_symbol
from core.data.book_recorder import ParquetRecorder
from core.data.book_replay import capture_files
from core.data.book_source import WsBookSource, make_feed, native_id, public_endpoint


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("book", help="order books: record raw captures, replay them, summarise them")
    sub = p.add_subparsers(dest="book_command", required=True)
    rec = sub.add_parser("record", help="record the venues' raw book streams to Parquet")
    rec.add_argument("--exchanges", default=None, help="comma list, e.g. binance,coinbase,kraken (default: orderbook.venues)")
    rec.add_argument("--symbol", default=None, help="e.g. BTC/USDT (default: orderbook.symbol)")
    rec.add_argument("--minutes", type=float, default=10.0)
    rec.add_argument("--out", default=None, help="folder (default: orderbook.record_dir)")
    rec.set_defaults(func=cmd_record)
    rep = sub.add_parser("replay", help="replay a capture through sync + consolidation (optionally into the store)")
    rep.add_argument("path", help="capture file or folder (*.gz text captures or *.parquet)")
    rep.add_argument("--speed", type=float, default=0.0, help="N x real time (0 = as fast as possible)")
    rep.add_argument("--db", default=None, help="also write book_buckets/book_summary to this DuckDB file")
    rep.set_defaults(func=cmd_replay)
    st = sub.add_parser("stats", help="messages, resyncs, gaps, spread and imbalance summaries of a capture")
    st.add_argument("path")
    st.set_defaults(func=cmd_stats)


def _ob(args: argparse.Namespace) -> OrderbookConfig:
    return load_config(args.config).orderbook


def cmd_record(args: argparse.Namespace) -> int:
    ob = _ob(args)
    venues = args.exchanges.split(",") if args.exchanges else ob.venues
    symbol = args.symbol or ob.symbol
    out = Path(args.out) if args.out else load_config(args.config).resolve(ob.record_dir)
    try:
        targets = [venue_symbol(v.strip(), symbol) for v in venues]
        for t in targets:
            native_id(t.venue, t.symbol)
    except ValueError as exc:
        print(f"book record: {exc}", file=sys.stderr)
        return 2
    recorders = [ParquetRecorder(out, t.venue, t.symbol) for t in targets]
    sources = []
    for t, rec in zip(targets, recorders, strict=True):
        n = native_id(t.venue, t.symbol)
        sources.append(WsBookSource(make_feed(t.venue, {n: t.symbol}), public_endpoint(t.venue, [n]), recorder=rec))

    async def run() -> None:
        stop = asyncio.Event()
        tasks = [asyncio.create_task(s.run(stop)) for s in sources]
        await asyncio.sleep(args.minutes * 60)
        stop.set()
        await asyncio.wait(tasks, timeout=10)

    try:
        asyncio.run(run())
    finally:
        for r in recorders:
            r.close()
    for s, r in zip(sources, recorders, strict=True):
        print(json.dumps({"venue": s.feed.venue, "file": str(r.path), "messages": r.n, **s.status()}))
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    import duckdb

    from core.data.book_store import BookWriter
    from core.data.store import MarketStore

    ob = _ob(args)
    path = Path(args.path)
    try:
        capture_files(path)
        eng = engine_for_capture(path, ob)
    except (FileNotFoundError, ValueError) as exc:
        print(f"book replay: {exc}", file=sys.stderr)
        return 2
    store = None
    if args.db:
        try:
            store = MarketStore(args.db)
        except duckdb.Error as exc:  # e.g. the dashboard holds the file
            print(f"book replay: cannot open {args.db} for writing ({str(exc).splitlines()[0]}); "
                  "stop the dashboard or use another --db", file=sys.stderr)
            return 2
        eng.sink = BookWriter(store, eng.symbol, ob.batch_seconds, ob.retention_days)
    t0 = time.perf_counter()
    try:
        n = replay_into(eng, path, args.speed)
        if isinstance(eng.sink, BookWriter):
            eng.sink.flush()
    finally:
        if store is not None:
            store.close()
    print(json.dumps({"messages": n, "seconds": eng.seconds, "wall_s": round(time.perf_counter() - t0, 2),
                      "venues": eng.status()}))
    return 0


def stats_of(snaps: list[BucketSnapshot], eng: BookEngine, n: int) -> dict:
    rows = [summary_row(s, eng.symbol) for s in snaps]

    def q(name: str) -> dict:
        v = np.array([r[name] for r in rows], dtype=float)
        v = v[np.isfinite(v)]
        if not len(v):
            return {}
        return {"mean": round(float(v.mean()), 6), "p05": round(float(np.quantile(v, 0.05)), 6),
                "median": round(float(np.median(v)), 6), "p95": round(float(np.quantile(v, 0.95)), 6)}

    return {"symbol": eng.symbol, "messages": n, "seconds": len(snaps),
            "venues": [{k: d[k] for k in ("venue", "symbol", "messages", "applied", "dropped_stale", "resyncs",
                                          "gaps", "synced")} for d in eng.status()],
            "spread": q("spread"), "imbalance_all": q("imb_all"), "imbalance_1": q("imb_1"), "ma_60s": q("ma_60s")}


def cmd_stats(args: argparse.Namespace) -> int:
    ob = _ob(args)
    path = Path(args.path)
    try:
        capture_files(path)
        snaps: list[BucketSnapshot] = []
        eng = engine_for_capture(path, ob, sink=snaps.append)
        n = replay_into(eng, path)
    except (FileNotFoundError, ValueError) as exc:
        print(f"book stats: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(stats_of(snaps, eng, n), indent=1))
    return 0
