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
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from core.execution import kernel as K
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
"""


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
                   meta: dict[str, Any] | None = None) -> None:
        """Orders, fills, state and the equity point of one bar in ONE transaction."""
        if state.shape != (K.STATE_SIZE,):
            raise ValueError(f"state must have {K.STATE_SIZE} values, got {state.shape}")
        if self._last_ts is not None and ts <= self._last_ts:
            raise ValueError(f"ledger {self.account}: bar ts {ts} is not after the last recorded {self._last_ts}")
        reasons = reasons or [""] * len(fills)
        seq = self._seq + 1
        meta_json = json.dumps(meta or {}, sort_keys=True)
        st = [float(x) for x in state]
        with self.store.transaction() as con:
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
            con.execute("INSERT INTO exec_equity VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        [self.account, int(ts), symbol, seq, float(price), st[K.S_CASH], st[K.S_POS],
                         st[K.S_EQUITY], st[K.S_REALISED], st[K.S_FEES], st, meta_json])
        self._state = np.asarray(st, dtype=np.float64)
        self._seq = seq
        self._last_ts = int(ts)
        self._meta = dict(meta or {})

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

    def close(self) -> None:
        if self._owns:
            self.store.close()
