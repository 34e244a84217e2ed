"""PaperBroker: a ccxt-shaped simulated exchange account over the kernel state.

Market orders fill at the next bar's OPEN (``fill_at=next_open``: they wait for ``on_bar``) or at the
last price (``last_price``: immediately), with slippage (buys pay more, sells receive less) and the
taker fee. Limit orders rest until a bar trades through the limit and fill at the limit (or at the open
when the bar opens beyond it) with the maker fee and no slippage. An order the account cannot pay for
(cash for amount * price * (1 + fee); spot sells beyond the position) is REJECTED with a reason, never
sized down. The same clientOrderId twice returns the existing order (idempotent submission).

The arithmetic (fill price, fee, booking) is the kernel's, shared with the Executor and the backtester.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import replace

import numpy as np

from core.execution import kernel as K
from core.types import Fill, Order


class OrderError(ValueError):
    """A malformed order (bad side/type/amount/price, unknown id)."""


class PaperBroker:
    def __init__(self, params: np.ndarray, state: np.ndarray, symbol: str, *, maker_fee_bps: float = 10.0,
                 id_prefix: str = "paper") -> None:
        self.params = params
        self.state = state
        self.symbol = symbol
        self.maker_fee = maker_fee_bps / 1e4
        self._orders: dict[str, Order] = {}
        self._by_client: dict[str, str] = {}
        self._fills: list[Fill] = []
        self._ids = itertools.count(1)
        self._prefix = id_prefix
        self.now_ms = 0

    # ------------------------------------------------------------ ccxt-shaped API

    def create_order(self, symbol: str, type: str, side: str, amount: float, price: float | None = None,
                     params: dict | None = None) -> Order:
        cid = str((params or {}).get("clientOrderId") or "")
        if cid and cid in self._by_client:
            return self._orders[self._by_client[cid]]  # a retried submission never doubles an order
        self._check(symbol, type, side, amount, price)
        oid = f"{self._prefix}-{next(self._ids)}"
        order = Order(id=oid, clientOrderId=cid or oid, symbol=symbol, side=side, type=type,
                      amount=float(amount), price=None if price is None else float(price), status="open",
                      filled=0.0, fee=0.0, ts=self.now_ms)
        why = self._unaffordable(side, float(amount), self._estimate(type, side, price))
        if why:
            order = replace(order, status="rejected", reason=why)
        self._store(order)
        if order.status == "open" and type == "market" and not self.params[K.P_NEXT_OPEN]:
            last = float(self.state[K.S_LAST_PRICE])
            if not last > 0:
                return self._store(replace(order, status="rejected", reason="no last price yet"))
            order = self._fill(order, last, taker=True)
        return order

    def cancel_order(self, id: str, symbol: str | None = None) -> Order:
        o = self.fetch_order(id)
        if o.status != "open":
            return o
        return self._store(replace(o, status="canceled"))

    def fetch_order(self, id: str, symbol: str | None = None) -> Order:
        if id in self._orders:
            return self._orders[id]
        if id in self._by_client:
            return self._orders[self._by_client[id]]
        raise OrderError(f"order {id!r} not found")

    def fetch_open_orders(self, symbol: str | None = None) -> list[Order]:
        return [o for o in self._orders.values()
                if o.status == "open" and (symbol is None or o.symbol == symbol)]

    def fetch_balance(self) -> dict[str, float]:
        return {"cash": float(self.state[K.S_CASH]), "position": float(self.state[K.S_POS])}

    def fetch_my_trades(self) -> list[Fill]:
        return list(self._fills)

    # ------------------------------------------------------------ the simulated market

    def on_bar(self, ts: int, o: float, h: float, low: float, c: float) -> list[Fill]:
        """A closed bar: open market orders fill at its open; resting limits fill if it trades through."""
        self.now_ms = int(ts)
        before = len(self._fills)
        for order in list(self.fetch_open_orders()):
            if order.type == "market":
                self._fill(order, o, taker=True)
            else:
                lim = float(order.price or 0.0)  # limit orders always carry a price (_check)
                if order.side == "buy" and low <= lim:
                    self._fill(order, min(o, lim), taker=False)
                elif order.side == "sell" and h >= lim:
                    self._fill(order, max(o, lim), taker=False)
        self.state[K.S_LAST_PRICE] = c
        return self._fills[before:]

    def record(self, order: Order, fill: Fill | None) -> None:
        """Register an order the Executor filled through the kernel's ``step`` (same account)."""
        self._store(order)
        if fill is not None:
            self._fills.append(fill)

    # ------------------------------------------------------------ internals

    def _store(self, order: Order) -> Order:
        self._orders[order.id] = order
        self._by_client[order.clientOrderId] = order.id
        return order

    def _check(self, symbol: str, type: str, side: str, amount: float, price: float | None) -> None:
        if symbol != self.symbol:
            raise OrderError(f"symbol {symbol!r}: this paper account trades {self.symbol}")
        if side not in ("buy", "sell"):
            raise OrderError(f"side {side!r}: expected buy or sell")
        if type not in ("market", "limit"):
            raise OrderError(f"type {type!r}: expected market or limit")
        try:
            ok = math.isfinite(float(amount)) and float(amount) > 0
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise OrderError(f"amount {amount!r}: expected a positive number")
        if type == "limit" and not (price is not None and math.isfinite(float(price)) and float(price) > 0):
            raise OrderError(f"limit order needs a positive price, got {price!r}")

    def _estimate(self, type: str, side: str, price: float | None) -> float:
        if type == "limit" and price is not None:
            return float(price)
        last = float(self.state[K.S_LAST_PRICE])
        return K.fill_price(last, 1.0 if side == "buy" else -1.0, self.params[K.P_SLIP]) if last > 0 else 0.0

    def _unaffordable(self, side: str, amount: float, px: float) -> str:
        fee_rate = max(self.params[K.P_FEE], self.maker_fee)
        if side == "buy" and px > 0:
            cost = amount * px * (1.0 + fee_rate)
            cash = float(self.state[K.S_CASH])
            if cost > cash:
                return f"insufficient cash: needs {cost:.8g} incl. fee, has {cash:.8g}"
        if side == "sell" and not self.params[K.P_ALLOW_SHORT]:
            pos = float(self.state[K.S_POS])
            if amount > pos * (1 + 1e-12):
                return f"insufficient position: sells {amount:.8g}, holds {pos:.8g} (spot, no shorts)"
        return ""

    def _fill(self, order: Order, ref: float, *, taker: bool) -> Order:
        qty = order.amount if order.side == "buy" else -order.amount
        px = K.fill_price(ref, qty, self.params[K.P_SLIP]) if taker else ref
        fee = K.fee_for(qty, px, self.params[K.P_FEE] if taker else self.maker_fee)
        why = self._unaffordable(order.side, order.amount, px)
        if why:  # prices moved since submission
            return self._store(replace(order, status="rejected", reason=why))
        K.apply_fill(self.state, qty, px, fee)
        done = self._store(replace(order, status="closed", filled=order.amount, fee=fee, price=px,
                                   ts=self.now_ms))
        self._fills.append(Fill(id=f"{order.id}-f", order_id=order.id, clientOrderId=order.clientOrderId,
                                symbol=order.symbol, side=order.side, amount=order.amount, price=px,
                                fee=fee, ts=self.now_ms))
        return done
