"""Protective orders ON THE EXCHANGE for an exchange account's long position (an Executor mixin).

Where the broker supports them (``protective_support``: Binance spot 'oco' or 'stop'), the stop-loss and
take-profit of the open position rest on the exchange: an OCO list (LIMIT_MAKER take-profit above,
STOP_LOSS_LIMIT stop below, one quantity) or a single STOP_LOSS_LIMIT. They fire even while the engine is
down. Their clientOrderIds derive from (account, symbol, timeframe, bar ts, leg) of the bar that placed
them, their intents are committed before the request (one transaction for both legs), and like every
intent they are looked up by clientOrderId before each bar and at restart: a filled leg is booked as the
exit (its sibling expires on the exchange), a canceled / expired one is closed. Every other exit (a SELL
decision, the kill switch, an engine stop) first cancels the resting legs and resolves them, so the
position is never sold twice. A position change replaces them; a leg the exchange refuses leaves that
level to the engine, which otherwise enforces whatever the exchange does not hold (``protection``
'engine': paper accounts, Alpaca, venues without stop orders; 'off': no stop-loss / take-profit set).
"""

from __future__ import annotations

import logging
import math
from dataclasses import replace
from typing import Any

import numpy as np

from core.execution import kernel as K
from core.execution.intents import PROTECTIVE, Booked, IntentJournal
from core.execution.ledger import UNRESOLVED, Intent

log = logging.getLogger(__name__)


class ProtectiveOrders(IntentJournal):
    params: np.ndarray
    halt_reason: str
    protection: str  # exchange | engine | off
    _support: str  # the broker's protective_support: oco | stop | ''
    _stop_offset: float  # the stop-limit's limit price sits this fraction below its trigger
    _refused_pos: float  # a position whose protective orders the exchange refused (not retried each bar)

    def client_id(self, bar_ts: int, action: str) -> str:
        raise NotImplementedError

    def _init_protection(self, execution: Any, broker: Any) -> None:
        sl, tp = float(self.params[K.P_STOP_LOSS]), float(self.params[K.P_TAKE_PROFIT])
        self._support, self._refused_pos = "", math.nan
        self._stop_offset = float(getattr(execution, "stop_limit_offset_bps", 50.0)) / 1e4
        self.protection = "off" if sl <= 0 and tp <= 0 else "engine"
        fn = getattr(broker, "protective_support", None)
        if self.protection == "off" or sl <= 0 or fn is None or \
                getattr(execution, "protective_orders", "exchange") != "exchange":
            return
        try:
            self._support = str(fn(self.symbol) or "")
        except Exception as exc:  # markets unavailable: the engine enforces the levels
            log.warning("protective orders: cannot ask the exchange (%s); the engine enforces stops", type(exc).__name__)
        if self._support:
            self.protection = "exchange"

    def _open_legs(self) -> list[Intent]:
        return [it for it in self._mem_intents.values() if it.reason in PROTECTIVE and it.status in UNRESOLVED]

    def _covered(self) -> bool:
        """Every configured level rests on the exchange: the engine does not check them itself."""
        have = {it.reason for it in self._open_legs()}
        need = {"stop_loss"} | ({"take_profit"} if self.params[K.P_TAKE_PROFIT] > 0 else set())
        return bool(have) and need <= have

    def _legs_crossed(self, price: float, out: Booked) -> None:
        """A trade price through a resting leg's level (at or under the stop, at or over the take-profit):
        the legs are looked up now, so an exchange exit is booked within the bar, not at its close."""
        legs = self._open_legs()
        if any((it.reason == "stop_loss" and price <= float(it.price or 0.0)) or
               (it.reason == "take_profit" and price >= float(it.price or math.inf)) for it in legs):
            self._resolve(legs, out)

    def _lift_protection(self, out: Booked) -> None:
        """Cancel the resting legs and resolve them (a leg that filled meanwhile is booked: the position
        it closed is not sold again)."""
        legs = self._open_legs()
        if not legs:
            return
        assert self.live_broker is not None
        unsent = [it for it in legs if not it.order_id]
        if unsent:  # sent but unconfirmed: learn their exchange ids first
            self._resolve(unsent, out)
            legs = self._open_legs()
        for it in legs:
            try:
                self.live_broker.cancel_order(it.order_id, self.symbol)
            except Exception as exc:  # already filled / expired / canceled with its OCO sibling
                log.info("cancel %s: %s", it.client_order_id, type(exc).__name__)
        self._resolve(self._open_legs(), out)
        self._check_intents = True

    def _ensure_protection(self, bar_ts: int, price: float, out: Booked) -> None:
        """After the bar's orders: the long position's stop-loss / take-profit rest on the exchange."""
        if self.protection != "exchange" or self.blocked or self.halt_reason:
            return
        pos = float(self.state[K.S_POS])
        legs = self._open_legs()
        if legs and any(abs(it.amount - pos) > 1e-12 * max(1.0, abs(pos)) for it in legs):
            self._lift_protection(out)  # the position changed (or closed): replaced below
            pos = float(self.state[K.S_POS])
            legs = self._open_legs()
        if legs or pos <= 0 or pos == self._refused_pos:
            return
        entry = float(self.state[K.S_ENTRY])
        stop = entry * (1.0 - float(self.params[K.P_STOP_LOSS]))
        tp = float(self.params[K.P_TAKE_PROFIT])
        take = entry * (1.0 + tp) if tp > 0 and self._support == "oco" else None
        if not price > stop or (take is not None and not price < take):
            return  # already through a level: the engine's check exits at this price
        cids = {k: self.client_id(bar_ts, f"protect-{k}") for k in ("sl", "tp", "list")}
        intents = [Intent(cids["sl"], "", self.symbol, "sell", "stop_loss_limit", pos, stop, int(bar_ts), "stop_loss")]
        if take is not None:
            intents.append(Intent(cids["tp"], "", self.symbol, "sell", "limit_maker", pos, take, int(bar_ts),
                                  "take_profit"))
        known = [self.ledger.intent(it.client_order_id) if self.ledger is not None
                 else self._mem_intents.get(it.client_order_id) for it in intents]
        if any(k is not None and k.status not in UNRESOLVED for k in known):
            return  # this bar placed them before a restart and they are resolved: not placed twice
        if self.ledger is not None:
            self.ledger.write_intents(intents)  # committed before the request leaves
        for it in intents:
            self._mem_intents[it.client_order_id] = it
        self._check_intents = True
        broker: Any = self.live_broker  # a broker with protective_support (CcxtBroker)
        try:
            orders = broker.create_protective(self.symbol, pos, stop=stop, stop_limit=stop * (1.0 - self._stop_offset),
                                              take=take, cids=cids,
                                              fresh=self.ledger is not None and all(k is None for k in known))
        except Exception as exc:  # state unknown: the legs stay pending, looked up before the next bar
            log.warning("protective orders %s: %s; looked up next bar", cids["sl"], type(exc).__name__)
            self._emit("error", {"where": "protective_orders", "clientOrderId": cids["sl"],
                                 "error": type(exc).__name__})
            return
        by_cid = {o.clientOrderId: o for o in orders}
        for it in intents:
            o = by_cid.get(it.client_order_id)
            if o is None:
                continue  # not in the answer: stays pending, looked up next bar
            if o.status == "rejected":
                new = replace(it, status="rejected", note=o.reason)
                self._mem_intents[it.client_order_id] = new
                out[3].append(new)
                self._refused_pos = pos
                log.warning("protective %s refused: %s; the engine enforces it", it.reason, o.reason)
                self._emit("rejected", {"clientOrderId": it.client_order_id, "side": "sell", "reason": o.reason,
                                        "protective": it.reason})
            else:
                self._settle(it, o, out)
