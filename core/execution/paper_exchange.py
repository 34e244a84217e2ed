"""PaperExchange: a simulated exchange ACCOUNT behind the same executor path as a real one (intent ->
create_order -> fill -> ledger), so paper trading is live trading minus the exchange.

Unlike the kernel-path paper account (Executor without a broker: the backtester's exact arithmetic),
this one is a separate party: its orders live in their own DuckDB table (``paper_exchange``), committed
when the order is accepted, exactly as an exchange books an order before answering. A crash between
that commit and the ledger's is then the same situation as with a real exchange, and the executor
resolves it the same way (lookup by clientOrderId). Market orders fill at once at the last price the
executor showed it (``on_price``) with slippage and the taker fee; a clientOrderId seen before returns
the booked order (never a second one). Limit orders are not simulated here (rejected with a reason).

Protective orders as on Binance spot (``protective_support`` 'oco'): a stop-loss leg and an optional
take-profit leg resting on the account (table ``paper_exchange_legs``), their quantity locked (a market
sell of locked coins is rejected, as the exchange would); a price shown through a level fills that leg
(stop: at the price shown, with slippage; take-profit: at its limit) and expires its sibling; cancelling
one leg cancels the pair.
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
_LEGS_DDL = """CREATE TABLE IF NOT EXISTS paper_exchange_legs (
    account VARCHAR, id VARCHAR, client_order_id VARCHAR, list_id VARCHAR, symbol VARCHAR, leg VARCHAR,
    amount DOUBLE, level DOUBLE, status VARCHAR, ts BIGINT, PRIMARY KEY (account, client_order_id))"""


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
        store.execute(_LEGS_DDL)

    def on_price(self, price: float, ts_ms: int) -> None:
        """The market moved (each bar's close, each tick): market orders fill here, and a resting leg
        the price went through fills now."""
        self.price = float(price)
        self.now_ms = int(ts_ms)
        for leg in self._legs("open"):
            hit = (leg["leg"] == "sl" and self.price <= leg["level"]) or (leg["leg"] == "tp" and self.price >= leg["level"])
            if hit:
                self._fill_leg(leg)

    # ------------------------------------------------------------ protective orders

    def protective_support(self, symbol: str) -> str:
        return "oco" if symbol == self.symbol else ""

    def create_protective(self, symbol: str, amount: float, *, stop: float | None, stop_limit: float | None,
                          take: float | None, cids: dict[str, str], fresh: bool = False) -> list[Order]:
        """The legs (idempotent by clientOrderId); refused when the prices are already crossed or the
        free position does not cover the amount."""
        legs = ["sl", "tp"] if take is not None else ["sl"]
        found = [o for o in (self.fetch_order_by_client_id(cids[g], symbol) for g in legs) if o is not None]
        if found:
            return found
        levels = {"sl": float(stop or 0.0), "tp": float(take or 0.0)}
        _, pos = self._account()
        why = ""
        if symbol != self.symbol or not self.price > levels["sl"] or (take is not None and not self.price < take):
            why = "paper exchange: the prices are already crossed"
        elif amount > pos - self._locked() + 1e-12:
            why = f"insufficient position: holds {pos:.8g}"
        if why:
            return [Order(id="", clientOrderId=cids[g], symbol=symbol, side="sell", type="limit", amount=float(amount),
                          price=levels[g], status="rejected", filled=0.0, fee=0.0, ts=self.now_ms, reason=why)
                    for g in legs]
        self.submissions += 1
        with self.store.transaction() as con:
            for g in legs:
                con.execute("INSERT INTO paper_exchange_legs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                            "ON CONFLICT DO NOTHING",
                            [self.account, f"pl-{cids[g][-12:]}", cids[g], cids["list"], symbol, g, float(amount),
                             levels[g], "open", self.now_ms])
        out = [self.fetch_order_by_client_id(cids[g], symbol) for g in legs]
        return [o for o in out if o is not None]

    def _legs(self, status: str | None = None, **where: str) -> list[dict[str, Any]]:
        sql = "SELECT * FROM paper_exchange_legs WHERE account = ?"
        args: list[Any] = [self.account]
        for k, v in ({"status": status} if status else {}).items() | where.items():
            sql += f" AND {k} = ?"
            args.append(v)
        return self.store.query_df(sql, args).to_dict("records")

    def _locked(self) -> float:
        return float(sum({leg["list_id"]: leg["amount"] for leg in self._legs("open")}.values()))

    def _fill_leg(self, leg: dict[str, Any]) -> None:
        qty = float(leg["amount"])
        px = float(K.fill_price(self.price, -qty, self.slip)) if leg["leg"] == "sl" else float(leg["level"])
        ts = self.now_ms or int(time.time() * 1000)
        with self.store.transaction() as con:
            con.execute("INSERT INTO paper_exchange VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                        [self.account, leg["id"], leg["client_order_id"], leg["symbol"], "sell", qty, px,
                         qty * px * self.fee, ts])
            con.execute("UPDATE paper_exchange_legs SET status = CASE WHEN client_order_id = ? THEN 'closed' "
                        "ELSE 'expired' END WHERE account = ? AND list_id = ? AND status = 'open'",
                        [leg["client_order_id"], self.account, leg["list_id"]])

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
            legs = self._legs(client_order_id=client_order_id)
            return self._leg_order(legs[0]) if legs else None
        r = df.iloc[0]
        return Order(id=str(r["id"]), clientOrderId=str(r["client_order_id"]), symbol=str(r["symbol"]),
                     side=str(r["side"]), type="market", amount=float(r["amount"]), price=float(r["price"]),
                     status="closed", filled=float(r["amount"]), fee=float(r["fee"]), ts=int(r["ts"]))

    def _leg_order(self, leg: dict[str, Any]) -> Order:
        return Order(id=str(leg["id"]), clientOrderId=str(leg["client_order_id"]), symbol=str(leg["symbol"]),
                     side="sell", type="stop_loss_limit" if leg["leg"] == "sl" else "limit_maker",
                     amount=float(leg["amount"]), price=float(leg["level"]),
                     status="open" if leg["status"] == "open" else str(leg["status"]), filled=0.0, fee=0.0,
                     ts=int(leg["ts"]))

    def fetch_order(self, id: str, symbol: str | None = None) -> Order:
        o = self.fetch_order_by_client_id(id, symbol)
        if o is None:
            raise ValueError(f"paper exchange: order {id!r} not found")
        return o

    def cancel_order(self, id: str, symbol: str | None = None) -> Order:
        """A protective leg (by its id): the pair is cancelled; market orders are never open."""
        legs = self._legs(id=id)
        if not legs:
            return self.fetch_order(id, symbol)
        self.store.execute("UPDATE paper_exchange_legs SET status = 'canceled' WHERE account = ? AND list_id = ? "
                           "AND status = 'open'", [self.account, legs[0]["list_id"]])
        return self._leg_order(self._legs(id=id)[0])

    def fetch_open_orders(self, symbol: str | None = None) -> list[Order]:
        return [self._leg_order(leg) for leg in self._legs("open")]

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
        if side == "sell" and amount > pos - self._locked() + 1e-12:
            return f"insufficient position: holds {pos:.8g}, {self._locked():.8g} of it locked by resting orders"
        return ""
