"""Live path end to end on a real recording served locally: LiveBooks (websocket + REST snapshot) into a
BookEngine while recording the raw frames to Parquet; replaying that Parquet rebuilds the same book,
and `book stats` / `book replay` run on it."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq

from core.data.book_buckets import Consolidator
from core.data.book_engine import BookEngine, VenueSymbol, engine_for_capture, replay_into
from core.data.book_live import LiveBooks
from core.data.book_source import Endpoint
from main_backtest import main as cli_main
from tests.orderbook_recordings import book_conns, load_recording, serve_recording, snapshot_paths


def test_live_books_record_then_replay_same_book(shared_data: Path, tmp_path: Path, capsys) -> None:
    import asyncio

    rec = load_recording(shared_data / "orderbook" / "ws-recordings" / "BINANCE.jsonl.gz")
    conn = book_conns(rec)[0]
    paths = snapshot_paths(rec)
    eng = BookEngine("NKN/USDT", [VenueSymbol("binance", "NKN/USDT")], Consolidator(0.001, 20))
    out = tmp_path / "books"

    async def run() -> LiveBooks:
        async with serve_recording(rec, conn) as (ws_url, http_base):
            ep = Endpoint(ws_url, list(conn.sends), http_base, lambda n: paths[n])
            live = LiveBooks(eng, record_dir=out, endpoints={"binance": ep}, reconnect=False)
            live.start()
            assert live.thread is not None
            await asyncio.get_running_loop().run_in_executor(None, live.thread.join, 60)
            return live

    live = asyncio.run(run())
    sync = eng.feeds["binance"].syncs["NKN/USDT"]
    assert sync.synced and sync.stats.resync_count == 0 and sync.stats.applied > 100
    assert live.status()[0]["connects"] == 1
    st = eng.status()[0]
    assert st["source"] == "disconnected" and st["messages"] > 100  # the local server closed after the recording
    files = list(out.glob("*.parquet"))
    assert len(files) == 1
    table = pq.read_table(files[0])
    assert table.num_rows == len(conn.frames) + 1  # every frame + the REST snapshot
    assert set(table.column("kind").to_pylist()) == {"ws", "http"}
    # the recording replays to exactly the live book
    again = engine_for_capture(files[0], _ob(bucket=0.001))
    replay_into(again, files[0])
    s2 = again.feeds["binance"].syncs["NKN/USDT"]
    assert s2.book.bids == sync.book.bids and s2.book.asks == sync.book.asks
    assert cli_main(["--config", str(_config(tmp_path)), "book", "stats", str(files[0])]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["venues"][0]["applied"] == sync.stats.applied and stats["venues"][0]["resyncs"] == {}
    db = tmp_path / "b.duckdb"
    assert cli_main(["--config", str(_config(tmp_path)), "book", "replay", str(files[0]), "--db", str(db)]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["messages"] == table.num_rows
    from core.data.store import MarketStore

    with MarketStore(db, read_only=True) as st:
        assert st.query_one("SELECT count(*) FROM book_summary")[0] == rep["seconds"]  # type: ignore[index]


def test_book_cli_bad_path_is_one_line(tmp_path: Path, capsys) -> None:
    assert cli_main(["book", "stats", str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no such file or folder" in err[0]


def _ob(bucket: float):  # type: ignore[no-untyped-def]
    from core.config import load_config

    ob = load_config().orderbook
    return ob.model_copy(update={"bucket_size": {"NKN": bucket}})


def _config(tmp: Path) -> Path:
    """config.yaml with a bucket size for NKN (a hand-written config for this small coin)."""
    src = Path(__file__).resolve().parent.parent / "config.yaml"
    text = src.read_text().replace("bucket_size: {BTC: 10, ETH: 1}", "bucket_size: {BTC: 10, ETH: 1, NKN: 0.001}")
    p = tmp / "config.yaml"
    p.write_text(text)
    return p
