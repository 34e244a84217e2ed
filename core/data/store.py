"""DuckDB market store: candles and trades, plus thread-safe helpers other modules use for their tables.

The candles key (exchange, symbol, timeframe, ts) is enforced by ``upsert_candles`` (the only writer of
that table: validated batches hold no duplicate ts, changed rows are deleted then re-inserted) rather
than by a DuckDB PRIMARY KEY: its ART index made a 1M-row import ~4x slower, and range/last-N queries
use the ts min/max of each row group, which sorted inserts keep tight.

DuckDB allows one writer process; inside a process every ``MarketStore`` opened on the same file shares
ONE connection guarded by ONE RLock (so the engine, the orchestrator and the ledger can each hold a store
object). Bulk writes go through a registered DataFrame (Arrow-backed scan), never row by row. Upserts are
idempotent: rows identical to what is stored are anti-joined away first, so re-importing the same file
writes nothing and returns 0.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import duckdb
import numpy as np
import pandas as pd

from core.data.validate import validate_candles, validate_trades
from core.market.calendar import Calendar
from core.types import CANDLE_COLUMNS, TIMEFRAME_MS, SeriesKey, timeframe_ms

log = logging.getLogger(__name__)

TRADE_COLUMNS: tuple[str, ...] = ("ts", "id", "side", "price", "amount")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS candles (
    exchange VARCHAR NOT NULL, symbol VARCHAR NOT NULL, timeframe VARCHAR NOT NULL, ts BIGINT NOT NULL,
    open DOUBLE NOT NULL, high DOUBLE NOT NULL, low DOUBLE NOT NULL, close DOUBLE NOT NULL,
    volume DOUBLE NOT NULL
);
CREATE TABLE IF NOT EXISTS trades (
    exchange VARCHAR NOT NULL, symbol VARCHAR NOT NULL, id VARCHAR NOT NULL, ts BIGINT NOT NULL,
    side VARCHAR, price DOUBLE NOT NULL, amount DOUBLE NOT NULL,
    PRIMARY KEY (exchange, symbol, id)
);
"""

_SMALL_BATCH = 64  # up to this many rows, upserts skip DataFrame registration (live candles)
_EPOCH_FLOOR_MS = -(10**15)  # widening stops once the window reaches back this far
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def session_gaps(ts: np.ndarray, timeframe: str, calendar: Calendar) -> list[Gap]:
    """Gaps of ascending bar times counted in the calendar's session bars (pure: tests, store)."""
    if len(ts) < 2:
        return []
    idx = calendar.bar_index(ts, timeframe)
    jump = np.flatnonzero(np.diff(idx) > 1)
    out = []
    for j in jump:
        missing = int(idx[j + 1] - idx[j] - 1)
        start = int(calendar.next_bars(int(ts[j]), 1, timeframe)[0])
        out.append(Gap(start, int(ts[j + 1]), missing))
    return out


@dataclass(frozen=True, slots=True)
class Gap:
    """Missing candles ``[start_ms, end_ms)``: start = first missing open time, end = the next stored one."""

    start_ms: int
    end_ms: int
    missing_bars: int


def _ascending(df: pd.DataFrame) -> bool:
    ts = df["ts"].to_numpy()
    return bool(len(ts) < 2 or (ts[1:] > ts[:-1]).all())


class _Shared:
    """One connection + lock per database file in this process."""

    def __init__(self, con: duckdb.DuckDBPyConnection, read_only: bool) -> None:
        self.con = con
        self.read_only = read_only
        self.lock = threading.RLock()
        self.users = 0
        self.tx_depth = 0
        # newest ts per series, kept by upsert_candles; dropped on any generic write (which could delete)
        self.max_ts: dict[SeriesKey, int] = {}


_REGISTRY: dict[str, _Shared] = {}
_REGISTRY_LOCK = threading.Lock()


def _count(con: duckdb.DuckDBPyConnection, sql: str, params: list | None = None) -> int:
    """The single number a count(*) query returns."""
    row = con.execute(sql, params or []).fetchone()
    return int(row[0]) if row else 0


class StoreLocked(RuntimeError):
    """Another process holds the DuckDB file (DuckDB allows one writer, and no reader beside it)."""


def locked_message(path: str, error: str) -> str:
    """One sentence naming who holds ``path`` (the PID DuckDB reports; "the dashboard" when that
    process runs main_dashboard.py) and what to do."""
    import os

    m = re.search(r"PID (\d+)", error)
    try:
        shown = os.path.relpath(path)
        shown = path if shown.startswith("..") else shown
    except ValueError:
        shown = path
    if m is None:
        return f"cannot open {shown}: {error.splitlines()[0]}; is another process using it? stop it or pass --db"
    pid = m.group(1)
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        cmd = ""
    who = f"the dashboard (pid {pid})" if "main_dashboard" in cmd else f"process {pid}"
    return f"{who} holds {shown}; stop it or pass --db"


def _open(path: str, read_only: bool) -> _Shared:
    if path == ":memory:":
        mem = _Shared(duckdb.connect(":memory:"), False)
        mem.users = 1
        return mem
    with _REGISTRY_LOCK:
        shared = _REGISTRY.get(path)
        if shared is not None and shared.read_only and not read_only:
            raise RuntimeError(f"{path} is already open read-only in this process; close it first")
        if shared is None:
            if not read_only:
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            elif not Path(path).exists():
                raise FileNotFoundError(f"database {path} does not exist")
            try:
                con = duckdb.connect(path, read_only=read_only)
            except duckdb.IOException as exc:
                raise StoreLocked(locked_message(path, str(exc))) from None
            shared = _REGISTRY[path] = _Shared(con, read_only)
        shared.users += 1
        return shared


class MarketStore:
    def __init__(self, path: str | Path, read_only: bool = False):
        self.path = str(path) if str(path) == ":memory:" else str(Path(path).resolve())
        self.read_only = read_only
        self._shared = _open(self.path, read_only)
        self._closed = False
        if not self._shared.read_only:
            with self._shared.lock:
                self._shared.con.execute(_SCHEMA)

    # ------------------------------------------------------------ generic, thread-safe helpers

    @property
    def lock(self) -> threading.RLock:
        return self._shared.lock

    def _con(self) -> duckdb.DuckDBPyConnection:
        if self._closed:
            raise RuntimeError("MarketStore is closed")
        return self._shared.con

    def _check_writable(self) -> None:
        if self.read_only:
            raise PermissionError(f"MarketStore {self.path} was opened read-only")

    def execute(self, sql: str, params: list | tuple | None = None) -> None:
        with self.lock:
            self._con().execute(sql, params)
            self._shared.max_ts.clear()

    def query_df(self, sql: str, params: list | tuple | None = None) -> pd.DataFrame:
        with self.lock:
            if not sql.lstrip()[:6].upper().startswith(("SELECT", "WITH", "PRAGMA", "DESCRI", "SHOW")):
                self._shared.max_ts.clear()
            return self._con().execute(sql, params).df()

    def query_one(self, sql: str, params: list | tuple | None = None) -> tuple | None:
        with self.lock:
            return self._con().execute(sql, params).fetchone()

    @contextmanager
    def transaction(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """BEGIN/COMMIT (ROLLBACK on error) under the lock. Nested use joins the outer transaction."""
        with self.lock:
            con = self._con()
            sh = self._shared
            if sh.tx_depth:
                sh.tx_depth += 1
                try:
                    yield con
                finally:
                    sh.tx_depth -= 1
                return
            con.execute("BEGIN TRANSACTION")
            sh.tx_depth = 1
            sh.max_ts.clear()  # whatever runs inside may write candles
            try:
                yield con
            except BaseException:
                sh.tx_depth = 0
                con.execute("ROLLBACK")
                raise
            sh.tx_depth = 0
            con.execute("COMMIT")

    def write_df(self, table: str, df: pd.DataFrame, mode: Literal["append", "upsert"] = "append") -> int:
        """Append (creating the table from ``df`` if it does not exist) or upsert by the table's primary
        key (the table must exist with one). Columns are matched by name. Returns rows written."""
        self._check_writable()
        if not _IDENT.match(table):
            raise ValueError(f"bad table name {table!r}")
        if table.lower() in ("candles", "trades"):
            raise ValueError(f"write_df: use upsert_{table.lower()} for {table} (it keeps the key unique)")
        if mode not in ("append", "upsert"):
            raise ValueError(f"write_df mode must be 'append' or 'upsert', got {mode!r}")
        if df.empty:
            return 0
        view = f"_write_{threading.get_ident()}"
        with self.transaction() as con:
            con.register(view, df)
            try:
                exists = _count(con, "SELECT count(*) FROM information_schema.tables WHERE table_name = ?",
                                [table])
                if not exists:
                    if mode == "upsert":
                        raise ValueError(f"write_df upsert: table {table} does not exist (create it with a key)")
                    con.execute(f"CREATE TABLE {table} AS SELECT * FROM {view}")
                    return len(df)
                verb = "INSERT OR REPLACE" if mode == "upsert" else "INSERT"
                con.execute(f"{verb} INTO {table} BY NAME SELECT * FROM {view}")
                return len(df)
            finally:
                con.unregister(view)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        sh = self._shared
        with _REGISTRY_LOCK:
            sh.users -= 1
            if sh.users <= 0:
                with sh.lock:
                    sh.con.close()
                _REGISTRY.pop(self.path, None)

    def __enter__(self) -> MarketStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------ candles

    def upsert_candles(self, key: SeriesKey, df: pd.DataFrame, *, validate: bool = True) -> int:
        """Insert new and changed candles of one series; identical rows are skipped. Returns rows
        inserted or changed. With ``validate`` (default) a batch holding ANY invalid row is refused
        whole with a ValueError naming the reasons, so nothing partial is written (callers that want to
        keep the good rows validate first and pass ``result.valid`` with validate=False)."""
        self._check_writable()
        timeframe_ms(key.timeframe)
        if df.empty:
            return 0
        if validate:
            data = _valid_or_refuse(
                validate_candles(df, key.timeframe, source=f"{key.exchange} {key.symbol}"),
                f"upsert_candles {key.exchange} {key.symbol} {key.timeframe}", "candles", len(df))
        else:
            data = df[list(CANDLE_COLUMNS)]
        view = f"_candles_{threading.get_ident()}"
        lo, hi = int(data["ts"].min()), int(data["ts"].max())
        params = [key.exchange, key.symbol, key.timeframe]
        with self.lock:  # held across the transaction so the max-ts cache is updated consistently
            known = dict(self._shared.max_ts)
            if len(data) <= _SMALL_BATCH:
                with self.transaction() as con:
                    written = self._upsert_small(con, params, data, lo, hi)
                if key in known:
                    known[key] = max(known[key], hi)
                self._shared.max_ts.update(known)
                return written
            with self.transaction() as con:
                con.register(view, data)
                try:
                    existing = _count(con, "SELECT count(*) FROM candles WHERE exchange = ? AND symbol = ? "
                                      "AND timeframe = ? AND ts BETWEEN ? AND ?", params + [lo, hi])
                    if existing == 0:
                        # fresh range: a plain insert (no conflict handling needed)
                        con.execute(
                            f"INSERT INTO candles SELECT ?, ?, ?, ts, open, high, low, close, volume FROM {view}"
                            + ("" if _ascending(data) else " ORDER BY ts"),
                            params,
                        )
                        written = len(data)
                    else:
                        written = self._replace_changed(con, view, params, lo, hi)
                finally:
                    con.unregister(view)
            # committed: only this series changed, and its newest ts moved to at least hi
            if key in known:
                known[key] = max(known[key], hi)
            self._shared.max_ts.update(known)
        return written

    @staticmethod
    def _upsert_small(con: duckdb.DuckDBPyConnection, params: list, data: pd.DataFrame, lo: int, hi: int) -> int:
        """Live path (a few candles): compare with the stored rows in Python and write with plain
        parameterised statements; registering a DataFrame costs more than the write itself here."""
        cols = list(CANDLE_COLUMNS)
        new = data[cols].to_numpy(dtype=np.float64)
        new_ts = data["ts"].to_numpy(dtype=np.int64)
        old = con.execute(
            "SELECT ts, open, high, low, close, volume FROM candles WHERE exchange = ? AND symbol = ? "
            "AND timeframe = ? AND ts BETWEEN ? AND ?", params + [lo, hi]
        ).fetchall()
        stored = {int(r[0]): tuple(float(x) for x in r[1:]) for r in old}
        changed: list[int] = []
        for i, t in enumerate(new_ts.tolist()):
            prev = stored.get(t)
            if prev is None or prev != tuple(new[i, 1:].tolist()):
                changed.append(i)
        if not changed:
            return 0
        replaced = [int(new_ts[i]) for i in changed if int(new_ts[i]) in stored]
        if replaced:
            con.execute(
                "DELETE FROM candles WHERE exchange = ? AND symbol = ? AND timeframe = ? AND ts IN ("
                + ", ".join("?" * len(replaced)) + ")", params + replaced,
            )
        values = ", ".join(["(?, ?, ?, ?, ?, ?, ?, ?, ?)"] * len(changed))
        flat: list = []
        for i in changed:
            flat += params + [int(new_ts[i]), *new[i, 1:].tolist()]
        con.execute("INSERT INTO candles VALUES " + values, flat)
        return len(changed)

    @staticmethod
    def _replace_changed(con: duckdb.DuckDBPyConnection, view: str, params: list, lo: int, hi: int) -> int:
        """Upsert only the rows that are new or differ from what is stored (idempotent re-imports):
        the stored versions of changed rows are deleted, then the new ones inserted."""
        con.execute(
            f"""
            CREATE OR REPLACE TEMP TABLE _changed AS
            SELECT d.ts, d.open, d.high, d.low, d.close, d.volume
            FROM {view} d ANTI JOIN (
                SELECT ts, open, high, low, close, volume FROM candles
                WHERE exchange = ? AND symbol = ? AND timeframe = ? AND ts BETWEEN ? AND ?
            ) c ON d.ts = c.ts AND d.open = c.open AND d.high = c.high AND d.low = c.low
                AND d.close = c.close AND d.volume = c.volume
            """,
            params + [lo, hi],
        )
        try:
            n = _count(con, "SELECT count(*) FROM _changed")
            if n:
                con.execute(
                    "DELETE FROM candles WHERE exchange = ? AND symbol = ? AND timeframe = ? AND ts BETWEEN ? AND ? "
                    "AND ts IN (SELECT ts FROM _changed)", params + [lo, hi],
                )
                con.execute("INSERT INTO candles SELECT ?, ?, ?, ts, open, high, low, close, volume FROM _changed "
                            "ORDER BY ts", params)
            return int(n)
        finally:
            con.execute("DROP TABLE IF EXISTS _changed")

    def candles(self, key: SeriesKey, start_ms: int | None = None, end_ms: int | None = None) -> pd.DataFrame:
        """Candles of ``key`` with start_ms <= ts < end_ms (None = open end), ts ascending."""
        sql = ("SELECT ts, open, high, low, close, volume FROM candles "
               "WHERE exchange = ? AND symbol = ? AND timeframe = ?")
        params: list = [key.exchange, key.symbol, key.timeframe]
        if start_ms is not None:
            sql += " AND ts >= ?"
            params.append(int(start_ms))
        if end_ms is not None:
            sql += " AND ts < ?"
            params.append(int(end_ms))
        return self._candle_frame(self.query_df(sql + " ORDER BY ts", params))

    def last_candles(self, key: SeriesKey, n: int) -> pd.DataFrame:
        """The newest ``n`` candles of ``key``, ts ascending."""
        if n <= 0:
            return self._candle_frame(pd.DataFrame(columns=list(CANDLE_COLUMNS)))
        params = [key.exchange, key.symbol, key.timeframe]
        with self.lock:
            con = self._con()
            last = self._shared.max_ts.get(key)
            if last is None:
                row = con.execute(
                    "SELECT max(ts) FROM candles WHERE exchange = ? AND symbol = ? AND timeframe = ?", params
                ).fetchone()
                if not row or row[0] is None:
                    return self._candle_frame(pd.DataFrame(columns=list(CANDLE_COLUMNS)))
                last = self._shared.max_ts[key] = int(row[0])
            # A ts range instead of ORDER BY/LIMIT: DuckDB skips row groups by their ts min/max, and the
            # primary key means (last - n*tf, last] holds at most n rows; widen only if gaps made it short.
            span = timeframe_ms(key.timeframe) * n
            while True:
                got = con.execute(
                    "SELECT ts, open, high, low, close, volume FROM candles WHERE exchange = ? AND symbol = ? "
                    "AND timeframe = ? AND ts > ? AND ts <= ?",
                    params + [last - span, last],
                ).fetchnumpy()
                if len(got["ts"]) >= n or span > last - _EPOCH_FLOOR_MS:
                    break
                span *= 4
        ts = np.asarray(got["ts"])
        if len(ts) > 1 and not (ts[1:] > ts[:-1]).all():  # scans usually keep insertion (ts) order
            order = np.argsort(ts, kind="stable")[-n:]
            return pd.DataFrame({c: np.asarray(got[c])[order] for c in CANDLE_COLUMNS}, copy=False)
        return pd.DataFrame({c: np.asarray(got[c])[-n:] for c in CANDLE_COLUMNS}, copy=False)

    @staticmethod
    def _candle_frame(df: pd.DataFrame) -> pd.DataFrame:
        df = df.reset_index(drop=True)
        out = pd.DataFrame({"ts": df["ts"].to_numpy(dtype=np.int64)})
        for c in CANDLE_COLUMNS[1:]:
            out[c] = df[c].to_numpy(dtype=np.float64)
        return out

    def series(self) -> list[SeriesKey]:
        rows = self.query_df(
            "SELECT DISTINCT exchange, symbol, timeframe FROM candles ORDER BY exchange, symbol, timeframe"
        )
        return [SeriesKey(r.exchange, r.symbol, r.timeframe) for r in rows.itertuples(index=False)]

    def gaps(self, key: SeriesKey, calendar: Calendar | None = None) -> list[Gap]:
        """Missing bars of one series. With a session ``calendar`` (stocks) nights, weekends, holidays and
        early closes are not gaps: a gap is a session bar the calendar expects and the store lacks
        (counted in session bars; end = the next stored bar)."""
        tf = timeframe_ms(key.timeframe)
        if calendar is not None and not calendar.always_open:
            ts = self.query_df("SELECT ts FROM candles WHERE exchange = ? AND symbol = ? AND timeframe = ? "
                               "ORDER BY ts", [key.exchange, key.symbol, key.timeframe])["ts"].to_numpy(np.int64)
            return session_gaps(ts, key.timeframe, calendar)
        df = self.query_df(
            """
            SELECT prev + ? AS start_ms, ts AS end_ms, (ts - prev) // ? - 1 AS missing
            FROM (SELECT ts, lag(ts) OVER (ORDER BY ts) AS prev FROM candles
                  WHERE exchange = ? AND symbol = ? AND timeframe = ?)
            WHERE ts - prev > ? ORDER BY ts
            """,
            [tf, tf, key.exchange, key.symbol, key.timeframe, tf],
        )
        return [Gap(int(r.start_ms), int(r.end_ms), int(r.missing)) for r in df.itertuples(index=False)]

    def coverage(self, calendars: Callable[[SeriesKey], Calendar | None] | None = None) -> pd.DataFrame:
        """One row per series: exchange, symbol, timeframe, rows, first, last (ts ms), gaps, missing_bars.
        ``calendars`` gives a series' market calendar: session series count gaps in session bars."""
        df = self._coverage()
        if calendars is None:
            return df
        for i, r in enumerate(df.itertuples(index=False)):
            key = SeriesKey(r.exchange, r.symbol, r.timeframe)
            try:
                cal = calendars(key)
            except ValueError:
                continue  # a series the config cannot place: the plain count stands
            if cal is not None and not cal.always_open:
                g = self.gaps(key, cal)
                df.loc[i, "gaps"], df.loc[i, "missing_bars"] = len(g), sum(x.missing_bars for x in g)
        return df

    def _coverage(self) -> pd.DataFrame:
        tfs = pd.DataFrame({"timeframe": list(TIMEFRAME_MS), "tf_ms": list(TIMEFRAME_MS.values())})
        view = f"_tfs_{threading.get_ident()}"
        with self.lock:
            con = self._con()
            con.register(view, tfs)
            try:
                df = con.execute(
                    f"""
                    SELECT exchange, symbol, timeframe, count(*) AS rows, min(ts) AS first, max(ts) AS last,
                           count(*) FILTER (WHERE ts - prev > tf_ms) AS gaps,
                           coalesce(sum((ts - prev) // tf_ms - 1) FILTER (WHERE ts - prev > tf_ms), 0)
                               AS missing_bars
                    FROM (SELECT c.exchange, c.symbol, c.timeframe, c.ts, t.tf_ms,
                                 lag(c.ts) OVER (PARTITION BY c.exchange, c.symbol, c.timeframe ORDER BY c.ts)
                                     AS prev
                          FROM candles c JOIN {view} t USING (timeframe))
                    GROUP BY exchange, symbol, timeframe ORDER BY exchange, symbol, timeframe
                    """
                ).df()
            finally:
                con.unregister(view)
        for c in ("rows", "first", "last", "gaps", "missing_bars"):
            df[c] = df[c].astype(np.int64)
        return df

    def candle_count(self, key: SeriesKey | None = None) -> int:
        if key is None:
            row = self.query_one("SELECT count(*) FROM candles")
        else:
            row = self.query_one(
                "SELECT count(*) FROM candles WHERE exchange = ? AND symbol = ? AND timeframe = ?",
                [key.exchange, key.symbol, key.timeframe],
            )
        return int(row[0]) if row else 0

    # ------------------------------------------------------------ trades

    def upsert_trades(self, exchange: str, symbol: str, df: pd.DataFrame, *, validate: bool = True) -> int:
        """Insert new and changed trades (key: exchange, symbol, id). A batch with invalid trades is
        refused whole (ValueError naming the reasons). Returns rows inserted or changed."""
        self._check_writable()
        if df.empty:
            return 0
        if validate:
            data = _valid_or_refuse(validate_trades(df, source=f"{exchange} {symbol}"),
                                    f"upsert_trades {exchange} {symbol}", "trades", len(df))
        else:
            data = df[list(TRADE_COLUMNS)]
        view = f"_trades_{threading.get_ident()}"
        with self.transaction() as con:
            con.register(view, data)
            try:
                n = con.execute(
                    f"""
                    INSERT OR REPLACE INTO trades
                    SELECT ?, ?, d.id, d.ts, d.side, d.price, d.amount FROM {view} d
                    ANTI JOIN (SELECT id, ts, side, price, amount FROM trades WHERE exchange = ? AND symbol = ?) t
                    ON d.id = t.id AND d.ts = t.ts AND d.side IS NOT DISTINCT FROM t.side
                       AND d.price = t.price AND d.amount = t.amount
                    """,
                    [exchange, symbol, exchange, symbol],
                ).fetchone()
                return int(n[0]) if n else 0
            finally:
                con.unregister(view)

    def trades(self, exchange: str, symbol: str, start_ms: int | None = None,
               end_ms: int | None = None) -> pd.DataFrame:
        sql = "SELECT ts, id, side, price, amount FROM trades WHERE exchange = ? AND symbol = ?"
        params: list = [exchange, symbol]
        if start_ms is not None:
            sql += " AND ts >= ?"
            params.append(int(start_ms))
        if end_ms is not None:
            sql += " AND ts < ?"
            params.append(int(end_ms))
        # ids are numeric strings on most exchanges: order numerically where possible
        return self.query_df(sql + " ORDER BY ts, TRY_CAST(id AS BIGINT), id", params)


def _valid_or_refuse(res: Any, what: str, kind: str, n: int) -> pd.DataFrame:
    """The validated rows, or a ValueError naming every rejection reason: a batch with any bad row is
    refused whole so nothing already stored is touched by it."""
    if res.counts:
        raise ValueError(f"{what}: refused batch of {n} rows with invalid {kind} {res.counts}; nothing written")
    return res.valid
