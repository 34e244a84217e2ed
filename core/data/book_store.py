"""Order-book tables in the DuckDB store, written in batches (never row by row).

``book_buckets``: one row per (second, symbol, venue or 'all', bucket) with bid/ask base volume.
``book_summary``: one row per (second, symbol) with the consolidated figures the features read.
Rows older than ``retention_days`` are deleted when a batch is flushed (0 keeps everything).
"""

from __future__ import annotations

import pandas as pd

from core.data.book_buckets import BucketSnapshot
from core.data.book_engine import SUMMARY_COLUMNS, bucket_rows, summary_row
from core.data.store import MarketStore

_SCHEMA = """
CREATE TABLE IF NOT EXISTS book_buckets (
    ts BIGINT NOT NULL, symbol VARCHAR NOT NULL, venue VARCHAR NOT NULL, bucket DOUBLE NOT NULL,
    bid DOUBLE NOT NULL, ask DOUBLE NOT NULL
);
CREATE TABLE IF NOT EXISTS book_summary (
    ts BIGINT NOT NULL, symbol VARCHAR NOT NULL, mid DOUBLE, best_bid DOUBLE, best_ask DOUBLE, spread DOUBLE,
    imb_1 DOUBLE, imb_5 DOUBLE, imb_all DOUBLE, ma_1s DOUBLE, ma_5s DOUBLE, ma_15s DOUBLE, ma_60s DOUBLE,
    depth_bid_10bps DOUBLE, depth_ask_10bps DOUBLE, depth_bid_50bps DOUBLE, depth_ask_50bps DOUBLE,
    wall_bid_bps DOUBLE, wall_ask_bps DOUBLE
);
"""


def ensure_tables(store: MarketStore) -> None:
    for stmt in _SCHEMA.split(";"):
        if stmt.strip():
            store.execute(stmt)


class BookWriter:
    """Collects 1 s snapshots and writes them every ``batch_seconds`` seconds as two DataFrames."""

    def __init__(self, store: MarketStore, symbol: str, batch_seconds: int = 60, retention_days: float = 0) -> None:
        ensure_tables(store)
        self.store = store
        self.symbol = symbol
        self.batch_seconds = max(1, int(batch_seconds))
        self.retention_ms = int(retention_days * 86_400_000)
        self._buckets: list[pd.DataFrame] = []
        self._summary: list[dict] = []
        self.rows_written = 0

    def __call__(self, snap: BucketSnapshot) -> None:
        self._buckets.append(bucket_rows(snap, self.symbol))
        self._summary.append(summary_row(snap, self.symbol))
        if len(self._summary) >= self.batch_seconds:
            self.flush()

    def flush(self) -> int:
        if not self._summary:
            return 0
        buckets = pd.concat(self._buckets, ignore_index=True)
        summary = pd.DataFrame(self._summary, columns=list(SUMMARY_COLUMNS))
        last_ts = int(summary["ts"].iloc[-1])
        with self.store.transaction():
            n = self.store.write_df("book_buckets", buckets) + self.store.write_df("book_summary", summary)
            if self.retention_ms:
                cut = last_ts - self.retention_ms
                self.store.execute("DELETE FROM book_buckets WHERE ts < ?", [cut])
                self.store.execute("DELETE FROM book_summary WHERE ts < ?", [cut])
        self._buckets.clear()
        self._summary.clear()
        self.rows_written += n
        return n


def load_summary(store: MarketStore, symbol: str, start_ms: int | None = None,
                 end_ms: int | None = None) -> pd.DataFrame:
    """Stored per-second book figures of ``symbol`` ascending by ts (empty frame when none recorded)."""
    exists = store.query_one("SELECT count(*) FROM information_schema.tables WHERE table_name = 'book_summary'")
    if not exists or not exists[0]:
        return pd.DataFrame(columns=list(SUMMARY_COLUMNS))
    return store.query_df(
        "SELECT * FROM book_summary WHERE symbol = ? AND ts >= ? AND ts <= ? ORDER BY ts",
        [symbol, start_ms if start_ms is not None else -(2**62), end_ms if end_ms is not None else 2**62])
