"""PaperExchange: a simulated exchange ACCOUNT behind the same executor path as a real one (intent ->
create_order -> fill -> ledger), so paper trading is live trading minus the exchange.

Unlike the kernel-path paper account (Executor without a broker: the backtester's exact arithmetic),
this one is a separate party: its orders live in their own DuckDB table (``paper_exchange``), committed
when the order is accepted, exactly as an exchange books an order before answering. A crash between
that commit and the ledger's is then the same situation as with a real exchange, and the executor
resolves it the same way (lookup by clientOrderId). Market orders fill at once at the last price the
executor showed it (``on_price``) with slippage and the taker fee; a clientOrderId seen before returns
the booked order (never a second one). Limit orders are not simulated here (rejected with a reason).
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

from core.execution import kernel as K
from core.execution.reconcile import split_symbol
from core.types import Order

_DDL = """CREATE TABLE IF NOT EXISTS paper_exchange (
    account VARCHAR, id VARCHAR, client_order_id VARCHAR, symbol VARCHAR, side VARCHAR, amount DOUBLE,
    price DOUBLE, fee DOUBLE, ts BIGINT, PRIMARY KEY (account, client_order_id))"""


class PaperExchange:
    mode = "paper"

    def __init__(self, store: Any, account: str, symbol: str, *, initial_cash: float = 10_000.0,
                 taker_fee_bps: float = 10.0, slippage_bps: float = 2.0) -> None:
        if isinstance(store, str | Path):
            from core.data.store import MarketStore

            store = MarketStore(store)
        self.store = store
        self.account = account
        self.symbol = symbol
        self.initial_cash = float(initial_cash)
        self.fee = taker_fee_bps / 1e4
        self.slip = slippage_bps / 1e4
        self.price = math.nan
        self.now_ms = 0
        self.submissions = 0
        store.execute(_DDL)

    def on_price(self, price: float, ts_ms: int) -> None:
        """The market moved (each bar's close, each tick): market orders fill here."""
        self.price = float(price)
        self.now_ms = int(ts_ms)

    # ------------------------------------------------------------ ccxt-shaped API

    def create_order(self, symbol: str, type: str, side: str, amount: float, price: float | None = None,
                     params: dict | None = None) -> Order:
        cid = str((params or {}).get("clientOrderId") or "")
        if not cid:
            raise ValueError("create_order needs params['clientOrderId']")
        found = self.fetch_order_by_client_id(cid, symbol)
        if found is not None:
            return found
        reject = self._reject(symbol, type, side, float(amount))
        if reject:
            return Order(id="", clientOrderId=cid, symbol=symbol, side=side, type=type, amount=float(amount),
                         price=price, status="rejected", filled=0.0, fee=0.0, ts=self.now_ms, reason=reject)
        qty = float(amount)
        px = float(K.fill_price(self.price, qty if side == "buy" else -qty, self.slip))
        fee = qty * px * self.fee
        self.submissions += 1
        oid = f"px-{cid[-12:]}"
        ts = self.now_ms or int(time.time() * 1000)
        with self.store.transaction() as con:
            con.execute("INSERT INTO paper_exchange VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                        [self.account, oid, cid, symbol, side, qty, px, fee, ts])
        found = self.fetch_order_by_client_id(cid, symbol)
        assert found is not None
        return found

    def fetch_order_by_client_id(self, client_order_id: str, symbol: str | None = None) -> Order | None:
        df = self.store.query_df("SELECT * FROM paper_exchange WHERE account = ? AND client_order_id = ?",
                                 [self.account, client_order_id])
        if not len(df):
            return None
        r = df.iloc[0]
        return Order(id=str(r["id"]), clientOrderId=str(r["client_order_id"]), symbol=str(r["symbol"]),
                     side=str(r["side"]), type="market", amount=float(r["amount"]), price=float(r["price"]),
                     status="closed", filled=float(r["amount"]), fee=float(r["fee"]), ts=int(r["ts"]))

    def fetch_order(self, id: str, symbol: str | None = None) -> Order:
        o = self.fetch_order_by_client_id(id, symbol)
        if o is None:
            raise ValueError(f"paper exchange: order {id!r} not found")
        return o

    def cancel_order(self, id: str, symbol: str | None = None) -> Order:
        return self.fetch_order(id, symbol)  # market orders are never open

    def fetch_open_orders(self, symbol: str | None = None) -> list[Order]:
        return []

    def fetch_my_trades(self, symbol: str, since: int | None = None, limit: int | None = None) -> list[dict]:
        """ccxt-shaped trades (order, side, amount, price, fee in the quote currency, timestamp)."""
        quote = split_symbol(symbol)[1]
        df = self.store.query_df("SELECT * FROM paper_exchange WHERE account = ? AND symbol = ? AND ts >= ? "
                                 "ORDER BY ts, id LIMIT ?", [self.account, symbol, int(since or 0),
                                                             int(limit or 1_000_000)])
        return [{"order": str(r.id), "side": r.side, "amount": float(r.amount), "price": float(r.price),
                 "fee": {"cost": float(r.fee), "currency": quote}, "timestamp": int(r.ts)}
                for r in df.itertuples(index=False)]

    def fetch_balance(self) -> dict[str, Any]:
        base, quote = split_symbol(self.symbol)
        cash, pos = self._account()
        return {base: {"free": pos, "used": 0.0, "total": pos}, quote: {"free": cash, "used": 0.0, "total": cash}}

    # ------------------------------------------------------------ internals

    def _account(self) -> tuple[float, float]:
        df = self.store.query_df(
            "SELECT COALESCE(SUM(CASE WHEN side = 'buy' THEN -(amount * price) - fee ELSE amount * price - fee END), 0) "
            "AS flow, COALESCE(SUM(CASE WHEN side = 'buy' THEN amount ELSE -amount END), 0) AS pos "
            "FROM paper_exchange WHERE account = ? AND symbol = ?", [self.account, self.symbol])
        return self.initial_cash + float(df["flow"].iloc[0]), float(df["pos"].iloc[0])

    def _reject(self, symbol: str, type: str, side: str, amount: float) -> str:
        if symbol != self.symbol:
            return f"paper exchange trades {self.symbol}, not {symbol}"
        if type != "market":
            return "paper exchange: only market orders are simulated"
        if not (math.isfinite(amount) and amount > 0):
            return f"amount {amount!r}: expected a positive number"
        if not self.price > 0:
            return "paper exchange: no price yet"
        cash, pos = self._account()
        if side == "buy" and amount * self.price * (1 + self.slip) * (1 + self.fee) > cash + 1e-9:
            return f"insufficient cash: has {cash:.8g}"
        if side == "sell" and amount > pos + 1e-12:
            return f"insufficient position: holds {pos:.8g}"
        return ""
