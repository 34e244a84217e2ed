"""Recorded raw book captures: reading them and playing them back at N x through the live interface.

Two layouts are read:
- text captures (gzip, one ``<receive time ns> <raw JSON>`` per line; the shared Binance recording and
  what the Binance REST snapshot looks like inside it), venue and symbol from the file name;
- Parquet captures written by ``book record`` (columns ``recv_ns, venue, symbol, kind, payload``; kind is
  ``ws`` for a websocket frame, ``http`` for a REST snapshot answer).
Messages of several files are merged by receive time, so venues recorded on one host replay together.
"""

from __future__ import annotations

import gzip
import heapq
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq


@dataclass(frozen=True, slots=True)
class RawMessage:
    recv_ns: int
    venue: str
    symbol: str
    kind: str  # "ws" frame or "http" snapshot answer
    payload: str


# file-name prefix of the Binance text captures -> (ccxt venue id, ccxt symbol)
_TEXT_PREFIXES: dict[str, tuple[str, str]] = {
    "spot_btcusdt": ("binance", "BTC/USDT"),
    "usdm_btcusdt": ("binanceusdm", "BTC/USDT:USDT"),
    "cm_btcusd_perp": ("binancecoinm", "BTC/USD:BTC"),
}


def text_capture_key(path: Path) -> tuple[str, str]:
    for prefix, key in _TEXT_PREFIXES.items():
        if path.name.startswith(prefix + "_"):
            return key
    raise ValueError(f"book capture {path.name}: unknown file name (expected one of {sorted(_TEXT_PREFIXES)}_*.gz)")


def read_text_capture(path: Path, venue: str, symbol: str) -> Iterator[RawMessage]:
    with gzip.open(path, "rt") as fh:
        for n, line in enumerate(fh, 1):
            ts, sep, payload = line.partition(" ")
            if not sep or not ts.isdigit():
                raise ValueError(f"{path.name} line {n}: expected '<receive ns> <json>'")
            kind = "http" if payload.startswith('{"lastUpdateId"') else "ws"
            yield RawMessage(int(ts), venue, symbol, kind, payload.rstrip("\n"))


def read_parquet_capture(path: Path) -> Iterator[RawMessage]:
    table = pq.read_table(path, columns=["recv_ns", "venue", "symbol", "kind", "payload"])
    cols = table.to_pydict()
    for ts, v, s, k, p in zip(cols["recv_ns"], cols["venue"], cols["symbol"], cols["kind"], cols["payload"],
                              strict=True):
        yield RawMessage(int(ts), v, s, k, p)


def capture_files(path: Path) -> list[Path]:
    """The capture files of a path (a file, or a folder of ``*.gz`` / ``*.parquet`` captures)."""
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise FileNotFoundError(f"book capture {path}: no such file or folder")
    files = sorted([*path.glob("*.gz"), *path.glob("*.parquet")])
    if not files:
        raise FileNotFoundError(f"book capture {path}: no *.gz or *.parquet capture files in it")
    return files


def read_capture(path: Path, venues: Iterable[str] | None = None) -> Iterator[RawMessage]:
    """Every message under ``path`` merged by receive time (files of one venue continue each other)."""
    wanted = set(venues) if venues else None
    streams: list[Iterator[RawMessage]] = []
    for f in capture_files(path):
        if f.suffix == ".parquet":
            streams.append(read_parquet_capture(f))
            continue
        venue, symbol = text_capture_key(f)
        if wanted is None or venue in wanted:
            streams.append(read_text_capture(f, venue, symbol))
    it = heapq.merge(*streams, key=lambda m: m.recv_ns)
    if wanted is None:
        return it
    return (m for m in it if m.venue in wanted)


def play(messages: Iterable[RawMessage], sink: Callable[[RawMessage], None], speed: float = 0.0,
         sleep: Callable[[float], object] = time.sleep) -> int:
    """Feed messages to ``sink`` keeping their spacing divided by ``speed`` (0 = as fast as possible)."""
    n = 0
    t0_rec: int | None = None
    t0_wall = time.monotonic()
    for m in messages:
        if speed > 0:
            if t0_rec is None:
                t0_rec = m.recv_ns
            due = (m.recv_ns - t0_rec) / 1e9 / speed - (time.monotonic() - t0_wall)
            if due > 0:
                sleep(due)
        sink(m)
        n += 1
    return n


def capture_venues(path: Path) -> list[tuple[str, str]]:
    """(venue, ccxt symbol) of every book in a capture, without reading the messages."""
    out: list[tuple[str, str]] = []
    for f in capture_files(path):
        if f.suffix == ".parquet":
            t = pq.read_table(f, columns=["venue", "symbol"]).group_by(["venue", "symbol"]).aggregate([])
            keys = list(zip(t.column("venue").to_pylist(), t.column("symbol").to_pylist(), strict=True))
        else:
            keys = [text_capture_key(f)]
        out += [k for k in keys if k not in out]
    return out
