"""Ledger: orders, fills, cash/position state and the equity curve of one account, persisted in DuckDB.

Every bar's orders, fills, the resulting kernel state (cash, position, entry, PnL, risk flags) and the
equity point are written in ONE transaction (``record_bar``), so a crash (even kill -9) leaves either
the whole bar or none of it; ``restore`` returns exactly the state of the last committed bar. The state
rides on the bar's equity row (append-only, one INSERT per bar: upserts cost more in DuckDB and every
bar pays a durable commit).

Tables (created if missing; every row carries ``account``):
  exec_orders(account, id, client_order_id, symbol, side, type, amount, price, status, filled, fee, ts, reason)
  exec_fills(account, id, order_id, client_order_id, symbol, side, amount, price, fee, ts, reason)
  exec_equity(account, ts, symbol, seq, price, cash, position, equity, realised, fees, state DOUBLE[], meta)
      -- one row per bar; the newest row's state is what ``restore`` returns
  exec_intents(account, client_order_id, decision_id, symbol, side, type, amount, price, bar_ts, reason,
               status, order_id, created_ms, resolved_ms, note)
      -- an exchange order's intent, durable BEFORE create_order (status pending); resolved later to
         filled | open | absent | rejected | canceled by a lookup of its clientOrderId (restart-safe idempotency)

Intents are made durable by the intent journal (core/execution/journal.py: one appended line + fdatasync
beside the database file, a few ms) and reach ``exec_intents`` with the bar's commit (or at the next
start, after a crash); the unresolved ones and every known clientOrderId are also held in memory, so the
order path reads nothing from DuckDB. An in-memory store has no journal: intents are committed directly.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from core.execution import kernel as K
from core.execution.journal import IntentFile, journal_path
from core.types import Fill, Order, Position

_SCHEMA = """
CREATE TABLE IF NOT EXISTS exec_orders (
    account VARCHAR, id VARCHAR, client_order_id VARCHAR, symbol VARCHAR, side VARCHAR, type VARCHAR,
    amount DOUBLE, price DOUBLE, status VARCHAR, filled DOUBLE, fee DOUBLE, ts BIGINT, reason VARCHAR,
    PRIMARY KEY (account, id));
CREATE TABLE IF NOT EXISTS exec_fills (
    account VARCHAR, id VARCHAR, order_id VARCHAR, client_order_id VARCHAR, symbol VARCHAR, side VARCHAR,
    amount DOUBLE, price DOUBLE, fee DOUBLE, ts BIGINT, reason VARCHAR, PRIMARY KEY (account, id));
CREATE TABLE IF NOT EXISTS exec_equity (
    account VARCHAR, ts BIGINT, symbol VARCHAR, seq BIGINT, price DOUBLE, cash DOUBLE, position DOUBLE,
    equity DOUBLE, realised DOUBLE, fees DOUBLE, state DOUBLE[], meta VARCHAR, PRIMARY KEY (account, ts));
CREATE TABLE IF NOT EXISTS exec_intents (
    account VARCHAR, client_order_id VARCHAR, decision_id VARCHAR, symbol VARCHAR, side VARCHAR, type VARCHAR,
    amount DOUBLE, price DOUBLE, bar_ts BIGINT, reason VARCHAR, status VARCHAR, order_id VARCHAR,
    created_ms BIGINT, resolved_ms BIGINT, note VARCHAR, PRIMARY KEY (account, client_order_id));
"""

UNRESOLVED = ("pending", "open")  # intents whose outcome the exchange has not confirmed yet


@dataclass(frozen=True, slots=True)
class Intent:
    """An order the executor is about to send (or sent): what, why, for which bar, and its state."""

    client_order_id: str
    decision_id: str
    symbol: str
    side: str
    type: str
    amount: float
    price: float | None
    bar_ts: int
    reason: str
    status: str = "pending"
    order_id: str = ""
    note: str = ""


def _open_store(store: Any) -> Any:
    if isinstance(store, str | Path):
        from core.data.store import MarketStore

        return MarketStore(store)
    for name in ("execute", "query_df", "transaction"):
        if not hasattr(store, name):
            raise TypeError(f"ledger store must be a MarketStore or a path, got {type(store).__name__}")
    return store


class Ledger:
    def __init__(self, store: Any, account: str = "paper", initial_cash: float = 10_000.0,
                 symbol: str | None = None) -> None:
        self.store = _open_store(store)
        self._owns = isinstance(store, str | Path)
        self.account = account
        self.initial_cash = float(initial_cash)
        self.symbol = symbol
        with self.store.transaction() as con:
            for stmt in _SCHEMA.split(";"):
                if stmt.strip():
                    con.execute(stmt)
        jp = journal_path(str(getattr(self.store, "path", "") or ""), account)
        self._journal = IntentFile(jp) if jp is not None else None
        self._journaled: dict[str, Intent] = {}  # durable in the journal, not yet in exec_intents
        if self._journal is not None:  # intents of a run that ended before its bar's commit
            self._journaled = {r["client_order_id"]: Intent(**r) for r in self._journal.read()}
            self._flush_journal()
        known = self.store.query_df("SELECT client_order_id, status FROM exec_intents WHERE account = ?", [account])
        self._status: dict[str, str] = dict(zip(known["client_order_id"], known["status"], strict=True))
        self._open: dict[str, Intent] = {it.client_order_id: it for it in _intents(self.store.query_df(
            "SELECT * FROM exec_intents WHERE account = ? AND status IN ('pending', 'open') "
            "ORDER BY bar_ts, created_ms", [account]))}
        row = self.store.query_df(
            "SELECT ts, symbol, seq, state, meta FROM exec_equity WHERE account = ? ORDER BY ts DESC LIMIT 1",
            [account])
        if len(row):
            self._state = np.asarray(row["state"].iloc[0], dtype=np.float64)
            if self._state.shape != (K.STATE_SIZE,):
                raise ValueError(f"ledger {account}: stored state has {self._state.size} values, the kernel "
                                 f"expects {K.STATE_SIZE} (written by another version)")
            self._seq = int(row["seq"].iloc[0])
            self._last_ts: int | None = int(row["ts"].iloc[0])
            self._meta: dict[str, Any] = json.loads(row["meta"].iloc[0] or "{}")
            if symbol and row["symbol"].iloc[0] != symbol:
                raise ValueError(f"ledger {account} holds {row['symbol'].iloc[0]}, not {symbol}")
        else:
            self._state = K.new_state(self.initial_cash)
            self._seq = 0
            self._last_ts = None
            self._meta = {}

    # ------------------------------------------------------------ restore / record

    @property
    def restored(self) -> bool:
        return self._last_ts is not None

    def restore(self) -> np.ndarray | None:
        """A copy of the kernel state of the last committed bar (None for a fresh account)."""
        return self._state.copy() if self.restored else None

    @property
    def last_ts(self) -> int | None:
        return self._last_ts

    @property
    def meta(self) -> dict[str, Any]:
        return dict(self._meta)

    def record_bar(self, ts: int, symbol: str, price: float, state: np.ndarray, orders: list[Order],
                   fills: list[Fill], reasons: list[str] | None = None,
                   meta: dict[str, Any] | None = None, resolved: list[Intent] | None = None) -> None:
        """Orders, fills, state, the equity point and the intents this bar resolved in ONE transaction."""
        if state.shape != (K.STATE_SIZE,):
            raise ValueError(f"state must have {K.STATE_SIZE} values, got {state.shape}")
        if self._last_ts is not None and ts <= self._last_ts:
            raise ValueError(f"ledger {self.account}: bar ts {ts} is not after the last recorded {self._last_ts}")
        reasons = reasons or [""] * len(fills)
        seq = self._seq + 1
        meta_json = json.dumps(meta or {}, sort_keys=True)
        st = [float(x) for x in state]
        with self.store.transaction() as con:
            self._insert_journaled(con)
            if orders:
                con.executemany(
                    "INSERT OR REPLACE INTO exec_orders VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [[self.account, o.id, o.clientOrderId, o.symbol, o.side, o.type, o.amount, o.price,
                      o.status, o.filled, o.fee, o.ts, o.reason] for o in orders])
            if fills:
                con.executemany(
                    "INSERT INTO exec_fills VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [[self.account, f.id, f.order_id, f.clientOrderId, f.symbol, f.side, f.amount, f.price,
                      f.fee, f.ts, r] for f, r in zip(fills, reasons, strict=True)])
            self._resolve(con, resolved or [])
            con.execute("INSERT INTO exec_equity VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        [self.account, int(ts), symbol, seq, float(price), st[K.S_CASH], st[K.S_POS],
                         st[K.S_EQUITY], st[K.S_REALISED], st[K.S_FEES], st, meta_json])
        self._after_commit(resolved or [])
        self._state = np.asarray(st, dtype=np.float64)
        self._seq = seq
        self._last_ts = int(ts)
        self._meta = dict(meta or {})

    # ------------------------------------------------------------ order intents

    def write_intent(self, intent: Intent) -> None:
        """Commit the intent (status pending) BEFORE the order leaves: a crash at any later point
        leaves a record that the next start looks up by clientOrderId. Writing the same clientOrderId
        again (a re-processed bar) keeps the first record."""
        self.write_intents([intent])

    def write_intents(self, intents: list[Intent]) -> None:
        """Several intents made durable at once (the legs of a protective OCO list): one journal append
        + fdatasync, or one transaction without a journal. A clientOrderId already known is skipped."""
        new = [it for it in intents if it.client_order_id not in self._status]
        if not new:
            return
        if self._journal is not None:
            self._journal.append([asdict(it) for it in new])
            self._journaled.update((it.client_order_id, it) for it in new)
        else:
            with self.store.transaction() as con:
                self._insert(con, new)
        for it in new:
            self._status[it.client_order_id] = it.status
            if it.status in UNRESOLVED:
                self._open[it.client_order_id] = it

    def _insert(self, con: Any, intents: list[Intent]) -> None:
        now = int(time.time() * 1000)
        for it in intents:
            con.execute(
                "INSERT INTO exec_intents VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT DO NOTHING",
                [self.account, it.client_order_id, it.decision_id, it.symbol, it.side, it.type,
                 float(it.amount), it.price, int(it.bar_ts), it.reason, it.status, it.order_id, now, None,
                 it.note])

    def _insert_journaled(self, con: Any) -> None:
        if self._journaled:
            self._insert(con, list(self._journaled.values()))

    def _after_commit(self, resolved: list[Intent]) -> None:
        """The journaled intents are in exec_intents now: the journal is emptied; the memory follows."""
        if self._journaled and self._journal is not None:
            self._journal.clear()
        self._journaled = {}
        for it in resolved:
            self._status[it.client_order_id] = it.status
            if it.status in UNRESOLVED:
                self._open[it.client_order_id] = it
            else:
                self._open.pop(it.client_order_id, None)

    def _flush_journal(self) -> None:
        if self._journaled:
            with self.store.transaction() as con:
                self._insert_journaled(con)
            self._after_commit([])

    def intent(self, client_order_id: str) -> Intent | None:
        if client_order_id not in self._status:
            return None  # never written: the order path's usual case, answered from memory
        if client_order_id in self._open:
            return self._open[client_order_id]
        self._flush_journal()
        df = self.store.query_df("SELECT * FROM exec_intents WHERE account = ? AND client_order_id = ?",
                                 [self.account, client_order_id])
        return _intents(df)[0] if len(df) else None

    def unresolved_intents(self) -> list[Intent]:
        """Intents the exchange has not confirmed (pending, or open orders), oldest bar first (memory)."""
        return sorted(self._open.values(), key=lambda it: it.bar_ts)

    def intents(self) -> pd.DataFrame:
        self._flush_journal()
        return self.store.query_df("SELECT * EXCLUDE (account) FROM exec_intents WHERE account = ? "
                                   "ORDER BY bar_ts, created_ms", [self.account])

    def resolve_intents(self, intents: list[Intent]) -> None:
        """Status changes that book nothing (an open order still open, an absent one) between bars."""
        if intents:
            with self.store.transaction() as con:
                self._insert_journaled(con)
                self._resolve(con, intents)
            self._after_commit(intents)

    def _resolve(self, con: Any, intents: list[Intent]) -> None:
        now = int(time.time() * 1000)
        for it in intents:
            con.execute("UPDATE exec_intents SET status = ?, order_id = ?, note = ?, resolved_ms = ? "
                        "WHERE account = ? AND client_order_id = ?",
                        [it.status, it.order_id, it.note, None if it.status in UNRESOLVED else now,
                         self.account, it.client_order_id])

    def save_state(self, state: np.ndarray) -> None:
        """Persist a state change between bars (a manual kill-switch reset) for the last recorded bar."""
        if not self.restored:
            raise ValueError(f"ledger {self.account}: no bar recorded yet")
        st = [float(x) for x in state]
        with self.store.transaction() as con:
            con.execute("UPDATE exec_equity SET state = ? WHERE account = ? AND ts = ?",
                        [st, self.account, self._last_ts])
        self._state = np.asarray(st, dtype=np.float64)

    # ------------------------------------------------------------ views

    @property
    def cash(self) -> float:
        return float(self._state[K.S_CASH])

    @property
    def realised_pnl(self) -> float:
        return float(self._state[K.S_REALISED])

    @property
    def fees(self) -> float:
        return float(self._state[K.S_FEES])

    def unrealised_pnl(self, price: float | None = None) -> float:
        px = float(self._state[K.S_LAST_PRICE]) if price is None else float(price)
        pos = float(self._state[K.S_POS])
        return 0.0 if pos == 0 else pos * (px - float(self._state[K.S_ENTRY]))

    def equity(self, price: float | None = None) -> float:
        px = float(self._state[K.S_LAST_PRICE]) if price is None else float(price)
        return self.cash + float(self._state[K.S_POS]) * px

    def positions(self, price: float | None = None) -> list[Position]:
        pos = float(self._state[K.S_POS])
        if pos == 0 or self.symbol is None:
            return []
        return [Position(symbol=self.symbol, amount=pos, avg_price=float(self._state[K.S_ENTRY]),
                         realised_pnl=self.realised_pnl, unrealised_pnl=self.unrealised_pnl(price))]

    def equity_curve(self) -> pd.DataFrame:
        return self.store.query_df(
            "SELECT ts, price, cash, position, equity, realised, fees FROM exec_equity "
            "WHERE account = ? ORDER BY ts", [self.account])

    def fills(self) -> pd.DataFrame:
        return self.store.query_df(
            "SELECT * EXCLUDE (account) FROM exec_fills WHERE account = ? ORDER BY ts, id", [self.account])

    def orders(self) -> pd.DataFrame:
        return self.store.query_df(
            "SELECT * EXCLUDE (account) FROM exec_orders WHERE account = ? ORDER BY ts, id", [self.account])

    def recent_closes(self, n: int) -> np.ndarray:
        """The last ``n`` recorded closes, oldest first (volatility sizing after a restart)."""
        df = self.store.query_df(
            "SELECT price FROM (SELECT ts, price FROM exec_equity WHERE account = ? ORDER BY ts DESC LIMIT ?) "
            "ORDER BY ts", [self.account, int(n)])
        return df["price"].to_numpy(np.float64)

    def set_meta(self, **kv: Any) -> None:
        """Merge keys into the last recorded bar's meta (e.g. the reconciliation baseline)."""
        if not self.restored:
            raise ValueError(f"ledger {self.account}: no bar recorded yet")
        meta = {**self._meta, **kv}
        with self.store.transaction() as con:
            con.execute("UPDATE exec_equity SET meta = ? WHERE account = ? AND ts = ?",
                        [json.dumps(meta, sort_keys=True), self.account, self._last_ts])
        self._meta = meta

    def close(self) -> None:
        if self._journal is not None:
            self._journal.close()
        if self._owns:
            self.store.close()


def _intents(df: pd.DataFrame) -> list[Intent]:
    out = []
    for r in df.itertuples(index=False):
        price = None if r.price is None or r.price != r.price else float(r.price)
        out.append(Intent(client_order_id=str(r.client_order_id), decision_id=str(r.decision_id or ""),
                          symbol=str(r.symbol), side=str(r.side), type=str(r.type), amount=float(r.amount),
                          price=price, bar_ts=int(r.bar_ts), reason=str(r.reason or ""), status=str(r.status),
                          order_id=str(r.order_id or ""), note=str(r.note or "")))
    return out
