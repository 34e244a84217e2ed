"""Restart-safe order intents of an exchange account (the Executor's journal side, a mixin).

Every exchange order's clientOrderId derives only from (account, symbol, timeframe, bar ts, action); its
intent is committed to the ledger (status ``pending``) BEFORE the order leaves. At start and before every
bar while one is unconfirmed, each unresolved intent (pending, or an open order such as a resting
protective stop) is looked up on the exchange by clientOrderId and resolved: filled (its fill booked into
the state), still open, canceled / expired, rejected, or absent (never sent). An intent the exchange
cannot be asked about stays unresolved and holds new orders (``blocked``).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import replace
from typing import Any

import numpy as np

from core.execution import kernel as K
from core.execution.ledger import UNRESOLVED, Intent, Ledger
from core.execution.risk import RiskManager
from core.types import Broker, Fill, Order

log = logging.getLogger(__name__)

PROTECTIVE = ("stop_loss", "take_profit")  # the reasons of resting protective orders on the exchange

Booked = tuple[list[Order], list[Fill], list[str], list[Intent]]  # orders, fills, reasons, resolved intents


class IntentJournal:
    """Recovery and resolution of intents; the Executor provides the state these methods share."""

    ledger: Ledger | None
    live_broker: Broker | None
    state: np.ndarray
    symbol: str
    risk: RiskManager
    blocked: str
    _mem_intents: dict[str, Intent]
    _mem_fills: list[Fill]
    _check_intents: bool
    _carry: Booked
    _last_ts: int | None
    _lock: threading.RLock
    _snap: Any

    def _meta(self) -> dict[str, Any]:
        raise NotImplementedError

    def _emit(self, kind: str, details: dict[str, Any]) -> None:
        raise NotImplementedError

    def _make_snapshot(self) -> Any:
        raise NotImplementedError

    def recover(self) -> None:
        """Start-up: every unresolved intent looked up on the exchange by clientOrderId and resolved
        before any new decision. The fills of a bar that crashed between ``create_order`` and its ledger
        write complete that bar (recorded now, so its re-delivery is skipped, never re-traded)."""
        with self._lock:
            orders, fills, reasons, resolved = self._resolve_unresolved()
            if not resolved:
                return
            last = max(it.bar_ts for it in resolved)
            if self.ledger is not None and (self._last_ts is None or last > self._last_ts):
                px = fills[-1].price if fills else float(self.state[K.S_LAST_PRICE])
                if px > 0:
                    self.state[K.S_LAST_PRICE] = px
                self.state[K.S_EQUITY] = self.state[K.S_CASH] + self.state[K.S_POS] * float(self.state[K.S_LAST_PRICE])
                self.ledger.record_bar(last, self.symbol, px, self.state, orders, fills, reasons,
                                       meta=self._meta(), resolved=resolved)
                self._last_ts = last
            else:  # intents of bars already recorded: booked with the next bar
                self._carry = (orders, fills, reasons, resolved)
            for f in fills:
                self._emit("recovered_fill", {"clientOrderId": f.clientOrderId, "side": f.side,
                                              "amount": f.amount, "price": f.price})
            self._snap = self._make_snapshot()

    def _unresolved(self) -> list[Intent]:
        """Unresolved in the ledger and not settled in memory since: an intent settled within the open
        bar (an intrabar exit, say) waits for that bar's commit and must not be looked up and booked again."""
        if self.ledger is not None:
            mem = self._mem_intents
            return [it for it in self.ledger.unresolved_intents()
                    if it.client_order_id not in mem or mem[it.client_order_id].status in UNRESOLVED]
        return [it for it in self._mem_intents.values() if it.status in UNRESOLVED]

    def _resolve_unresolved(self) -> Booked:
        """Look every unresolved intent up; book the fills of those the exchange says filled."""
        self.blocked = ""
        out = self._resolve(self._unresolved())
        self._check_intents = any(it.status in UNRESOLVED for it in self._mem_intents.values())
        return out

    def _resolve(self, intents: list[Intent], out: Booked | None = None) -> Booked:
        out = out if out is not None else ([], [], [], [])
        assert self.live_broker is not None
        for it in intents:
            try:
                o = lookup(self.live_broker, it.client_order_id, it.symbol)
            except Exception as exc:  # unreachable: the order's fate is unknown, nothing new is sent
                self.blocked = f"intent {it.client_order_id} unconfirmed ({type(exc).__name__})"
                log.warning("cannot resolve %s: %s", it.client_order_id, type(exc).__name__)
                continue
            self._settle(it, o, out)
        return out

    def _settle(self, it: Intent, o: Order | None, out: Booked) -> Intent:
        """The intent after the exchange's answer ``o`` (None: positively unknown to the exchange);
        a fill is booked into the state and ``out``; a changed intent is added to ``out``'s resolved."""
        orders, fills, reasons, resolved = out
        if o is None:
            new = replace(it, status="absent", note="not on the exchange: never sent")
        elif o.status == "open":  # resting (a protective stop), or partly filled: booked once it is done
            new = replace(it, status="open", order_id=o.id)
        elif o.filled > 0:
            orders.append(o)
            fills.append(self._book(o, it.side))
            reasons.append(it.reason)
            new = replace(it, status="filled", order_id=o.id)
            if it.reason in PROTECTIVE:  # the exchange closed the position at its stop / take-profit
                self.risk.start_cooldown()
                self._emit("exit", {"clientOrderId": it.client_order_id, "side": it.side, "amount": o.filled,
                                    "price": o.price, "fee": o.fee, "reason": it.reason, "on_exchange": True})
        else:
            orders.append(o)
            new = replace(it, status="rejected" if o.status == "rejected" else "canceled",
                          order_id=o.id, note=o.reason or o.status)
        self._mem_intents[it.client_order_id] = new
        if new.status != it.status or new.order_id != it.order_id:
            resolved.append(new)
        return new

    def _book(self, order: Order, side: str) -> Fill:
        """The exchange's fill into the state. A fee taken in the base asset (Binance buys) shrinks what
        the position receives; ``order.fee`` is the whole fee valued in quote, so cash moves by exactly
        the gross cost plus the quote part, as on the exchange."""
        px = float(order.price or 0.0)
        signed = (order.filled if side == "buy" else -order.filled) - float(order.fee_base)
        K.apply_fill(self.state, signed, px, float(order.fee))
        fill = Fill(id=f"{order.id}-f", order_id=order.id, clientOrderId=order.clientOrderId, symbol=self.symbol,
                    side=side, amount=order.filled, price=px, fee=float(order.fee), ts=order.ts)
        if self.ledger is None:
            self._mem_fills.append(fill)
        return fill


def lookup(broker: Any, client_order_id_: str, symbol: str) -> Order | None:
    """The exchange's order for a clientOrderId, or None when it positively does not exist."""
    by_cid = getattr(broker, "fetch_order_by_client_id", None)
    if by_cid is not None:
        return by_cid(client_order_id_, symbol)
    try:
        return broker.fetch_order(client_order_id_, symbol)
    except Exception as exc:
        if type(exc).__name__ in ("OrderError", "OrderNotFound"):  # positively unknown to the account
            return None
        raise
