"""Raw book frames to Parquet (the capture format ``book replay`` reads), written in row groups."""

from __future__ import annotations

import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from core.data.book_replay import RawMessage

SCHEMA = pa.schema([("recv_ns", pa.int64()), ("venue", pa.string()), ("symbol", pa.string()),
                    ("kind", pa.string()), ("payload", pa.string())])


class ParquetRecorder:
    """Raw frames to one Parquet file per venue, written in row groups (never row by row)."""

    def __init__(self, out: Path, venue: str, symbol: str, rows_per_group: int = 5000) -> None:
        out.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        self.path = out / f"{venue}_{symbol.replace('/', '-').replace(':', '_')}_{stamp}.parquet"
        self.symbol = symbol
        self.writer = pq.ParquetWriter(self.path, SCHEMA)
        self.rows: list[RawMessage] = []
        self.n = 0
        self.per_group = rows_per_group

    def __call__(self, m: RawMessage) -> None:
        self.rows.append(RawMessage(m.recv_ns, m.venue, self.symbol, m.kind, m.payload))
        if len(self.rows) >= self.per_group:
            self.flush()

    def flush(self) -> None:
        if not self.rows:
            return
        cols = list(zip(*[(r.recv_ns, r.venue, r.symbol, r.kind, r.payload) for r in self.rows], strict=True))
        self.writer.write_table(pa.Table.from_arrays([pa.array(c) for c in cols], schema=SCHEMA))
        self.n += len(self.rows)
        self.rows.clear()

    def close(self) -> None:
        self.flush()
        self.writer.close()
