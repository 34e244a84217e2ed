"""Executor: the façade the orchestrator / engine / event-mode backtester call once per closed bar.

risk -> broker -> ledger:

* paper (no broker given): the kernel's ``step`` is the paper exchange AND the risk rules, exactly the
  code the fast backtester runs in ``simulate``; its fills become ccxt-shaped Order/Fill records in the
  PaperBroker's book and the ledger.
* ccxt (a CcxtBroker given): the same kernel phases (day rollover, stops, daily-loss kill switch,
  sizing, gating, order quantity) decide; market orders go to the exchange with a clientOrderId derived
  from the decision id, and the exchange's fills are booked into the state with ``kernel.apply_fill``.

Each bar's orders, fills and resulting state are committed to the ledger in one transaction; on start
the state of the last committed bar is restored, and bars at or before it are skipped (a replay after a
restart cannot book anything twice).
"""

from __future__ import annotations

import logging
import math
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from core.execution import kernel as K
from core.execution.broker import client_order_id
from core.execution.ledger import Ledger
from core.execution.paper import PaperBroker
from core.execution.risk import RiskManager
from core.execution.untrained import refusal
from core.types import Broker, CandleEvent, Decision, Fill, Order

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ExecutionSnapshot:
    ts: int | None
    symbol: str
    mode: str  # paper | sandbox | live
    cash: float
    position: float
    avg_price: float
    last_price: float
    equity: float
    realised_pnl: float
    unrealised_pnl: float
    fees: float
    trades: int
    kill_switch: bool
    cooldown: int
    pending_target: float | None


class Executor:
    def __init__(self, execution: Any, risk: Any, symbol: str, timeframe: str, *, ledger: Ledger | None = None,
                 broker: Broker | None = None, session_flat: Callable[[int], bool] | None = None,
                 bars_per_year: float | None = None) -> None:
        self.symbol = symbol
        self.timeframe = timeframe
        self.params = K.params_from_config(execution, risk)
        self.ledger = ledger
        restored = ledger.restore() if ledger is not None else None
        self.state = restored if restored is not None else K.new_state(float(execution.initial_cash))
        self.risk = RiskManager(self.params, self.state)
        self.live_broker = broker
        self.paper = PaperBroker(self.params, self.state, symbol, maker_fee_bps=execution.maker_fee_bps)
        self.mode = "paper" if broker is None else getattr(broker, "mode", "ccxt")
        self._vol_window = int(risk.vol_window)
        # the venue's bars per year (session bars for stocks) for volatility sizing; None = 24x7
        self._bpy = K.bars_per_year(timeframe) if bars_per_year is None else float(bars_per_year)
        self._session_flat = session_flat  # execution.flat_at_session_end (core.market.SessionFlat)
        self._vol_sizing = risk.sizing == "volatility_target"
        self._closes: deque[float] = deque(maxlen=self._vol_window + 1)
        self._last_ts: int | None = ledger.last_ts if ledger is not None else None
        meta = ledger.meta if ledger is not None else {}
        self._pending_cid: str | None = meta.get("pending_cid")
        self._order_seq = int(meta.get("order_seq", 0))
        if ledger is not None and self._vol_sizing and ledger.restored:
            self._closes.extend(ledger.recent_closes(self._vol_window + 1).tolist())
        self._buf = np.zeros((K.MAX_FILLS_PER_BAR, K.FILL_SIZE))
        self._lock = threading.RLock()
        self._decided: dict[int, Decision] = {}
        self.late_decisions = 0
        # decisions resting on untrained experts are never traded unless execution.allow_untrained
        self.allow_untrained = bool(getattr(execution, "allow_untrained", False))
        self.refused_untrained = 0
        self.last_refusal: str | None = None
        self._snap = self._make_snapshot()

    # ------------------------------------------------------------ per bar

    def refusal(self, decision: Decision) -> str | None:
        """Why this executor will not trade ``decision`` (core/execution/untrained.py), or None."""
        return refusal(decision, self.allow_untrained)

    def on_decision(self, decision: Decision) -> None:
        """Orchestrator hook: keep the decision until its bar arrives through ``on_candle``. A decision
        resting on untrained experts is dropped (its bar is booked as if no decision came: stops and the
        kill switch still act, no new order) unless ``execution.allow_untrained``."""
        if decision.symbol != self.symbol:
            raise ValueError(f"decision {decision.id} is for {decision.symbol}; this executor trades {self.symbol}")
        why = self.refusal(decision)
        with self._lock:
            if why is not None:
                self.refused_untrained += 1
                self.last_refusal = why
                return
            if self._last_ts is not None and decision.ts <= self._last_ts:
                log.warning("decision %s arrived after its bar %s was booked: dropped", decision.id, decision.ts)
                self.late_decisions += 1
                return
            self._decided[decision.ts] = decision

    def on_candle(self, event: CandleEvent) -> list[Fill]:
        """DataProvider subscriber, subscribed AFTER the orchestrator so the decision taken at this close
        is already in: books the bar with that decision (or none). Other series and open bars are ignored."""
        if not event.closed or event.key.symbol != self.symbol or event.key.timeframe != self.timeframe:
            return []
        with self._lock:
            decision = self._decided.pop(event.ts, None)
            for ts in [t for t in self._decided if t < event.ts]:
                log.warning("decision for %s never got its bar: dropped", ts)
                del self._decided[ts]
        return self.on_bar(event, decision)

    def on_bar(self, bar: CandleEvent, decision: Decision | None) -> list[Fill]:
        """One CLOSED bar of this executor's symbol and the decision taken at its close (None = none)."""
        self._check_bar(bar, decision)
        if self._last_ts is not None and bar.ts <= self._last_ts:
            log.debug("bar %s already booked: skipped", bar.ts)
            return []
        signal = math.nan if decision is None else K.signal_for(decision.action)
        if self._session_flat is not None and self._session_flat(int(bar.ts)):
            signal = 0.0  # flat into the session's close: nothing is held over the night
        self._closes.append(float(bar.close))
        vol = self._vol()
        cid = client_order_id(decision.id) if decision is not None else None
        with self._lock:
            if self.live_broker is None:
                orders, fills, reasons = self._paper_bar(bar, signal, vol, cid)
            else:
                orders, fills, reasons = self._live_bar(bar, signal, vol, cid)
            if self.ledger is not None:
                self.ledger.record_bar(bar.ts, self.symbol, bar.close, self.state, orders, fills, reasons,
                                       meta={"pending_cid": self._pending_cid, "order_seq": self._order_seq})
            self._last_ts = bar.ts
            self._snap = self._make_snapshot()
        return fills

    def _paper_bar(self, bar: CandleEvent, signal: float, vol: float, cid: str | None):
        nf = K.step(self.state, self.params, float(bar.ts), float(bar.open), float(bar.high), float(bar.low),
                    float(bar.close), signal, vol, self._buf)
        orders: list[Order] = []
        fills: list[Fill] = []
        reasons: list[str] = []
        pending_cid = self._pending_cid
        for row in self._buf[:nf]:
            reason = K.REASONS[int(row[K.F_REASON])]
            if reason == "signal":
                # the decision id behind the order: this bar's (last_price) or the previous close's (next_open)
                c = (pending_cid if self.params[K.P_NEXT_OPEN] else cid) or f"bar-{bar.ts}"
                pending_cid = None
            else:
                c = client_order_id(f"{self.symbol}:{reason}:{bar.ts}")
            order, fill = self._records(row, c, reason, "market")
            self.paper.record(order, fill)
            orders.append(order)
            fills.append(fill)
            reasons.append(reason)
        if self.params[K.P_NEXT_OPEN]:
            pend = self.state[K.S_PENDING]
            if pend != pend:
                self._pending_cid = None
            elif self.state[K.S_PENDING_REASON] == K.R_SIGNAL:
                self._pending_cid = cid
            else:
                self._pending_cid = client_order_id(f"{self.symbol}:kill_switch:{bar.ts}")
        self.paper.now_ms = bar.ts
        return orders, fills, reasons

    def _records(self, row: np.ndarray, cid: str, reason: str, type_: str) -> tuple[Order, Fill]:
        self._order_seq += 1
        oid = f"paper-{self._order_seq}"
        side = "buy" if row[K.F_SIDE] > 0 else "sell"
        ts = int(row[K.F_TS])
        order = Order(id=oid, clientOrderId=cid, symbol=self.symbol, side=side, type=type_,
                      amount=float(row[K.F_QTY]), price=float(row[K.F_PRICE]), status="closed",
                      filled=float(row[K.F_QTY]), fee=float(row[K.F_FEE]), ts=ts, reason=reason)
        fill = Fill(id=f"{oid}-f", order_id=oid, clientOrderId=cid, symbol=self.symbol, side=side,
                    amount=float(row[K.F_QTY]), price=float(row[K.F_PRICE]), fee=float(row[K.F_FEE]), ts=ts)
        return order, fill

    def _live_bar(self, bar: CandleEvent, signal: float, vol: float, cid: str | None):
        """The kernel's phases with exchange fills (market orders fill now, at the live price)."""
        orders: list[Order] = []
        fills: list[Fill] = []
        reasons: list[str] = []
        risk = self.risk
        risk.new_bar(bar.ts)
        hit = risk.check_stops(bar.open, bar.high, bar.low)
        if hit is not None:
            self._submit(-self.state[K.S_POS], client_order_id(f"{self.symbol}:{hit[1]}:{bar.ts}"), hit[1],
                         orders, fills, reasons)
            risk.start_cooldown()
        equity = self.state[K.S_CASH] + self.state[K.S_POS] * bar.close
        self.state[K.S_EQUITY] = equity
        if risk.check_daily_loss(equity) and self.state[K.S_POS] != 0:
            self._submit(-self.state[K.S_POS], client_order_id(f"{self.symbol}:kill_switch:{bar.ts}"),
                         "kill_switch", orders, fills, reasons)
        target = risk.gate(risk.size(signal, vol))
        if target == target:
            qty = risk.order_qty(target, bar.close)
            if qty != 0.0:
                self._submit(qty, cid or client_order_id(f"{self.symbol}:signal:{bar.ts}"), "signal",
                             orders, fills, reasons)
        risk.tick_cooldown()
        self.state[K.S_EQUITY] = self.state[K.S_CASH] + self.state[K.S_POS] * bar.close
        self.state[K.S_LAST_PRICE] = bar.close
        return orders, fills, reasons

    def _submit(self, qty: float, cid: str, reason: str, orders: list, fills: list, reasons: list) -> None:
        side = "buy" if qty > 0 else "sell"
        assert self.live_broker is not None  # _submit runs only with a live broker
        order = self.live_broker.create_order(self.symbol, "market", side, abs(float(qty)), None,
                                              {"clientOrderId": cid})
        orders.append(order)
        if order.status == "rejected" or order.filled <= 0:
            log.warning("%s order %s %s rejected: %s", reason, side, cid, order.reason)
            self.state[K.S_REJECTED] += 1
            return
        px = float(order.price or 0.0)
        signed = order.filled if side == "buy" else -order.filled
        K.apply_fill(self.state, signed, px, float(order.fee))
        fills.append(Fill(id=f"{order.id}-f", order_id=order.id, clientOrderId=order.clientOrderId,
                          symbol=self.symbol, side=side, amount=order.filled, price=px, fee=float(order.fee),
                          ts=order.ts))
        reasons.append(reason)

    # ------------------------------------------------------------ commands / views

    def reset_kill_switch(self) -> None:
        with self._lock:
            self.risk.reset()
            if self.ledger is not None and self.ledger.restored:
                self.ledger.save_state(self.state)
            self._snap = self._make_snapshot()

    def snapshot(self) -> ExecutionSnapshot:
        return self._snap

    def _vol(self) -> float:
        if not self._vol_sizing or len(self._closes) <= self._vol_window:
            return math.nan
        arr = np.fromiter(self._closes, dtype=np.float64)
        return float(K.vol_at(arr, arr.shape[0] - 1, self._vol_window, self._bpy))

    def _check_bar(self, bar: CandleEvent, decision: Decision | None) -> None:
        if bar.key.symbol != self.symbol:
            raise ValueError(f"bar for {bar.key.symbol}: this executor trades {self.symbol}")
        if not bar.closed:
            raise ValueError(f"bar {bar.ts} is not closed: the executor acts on closed bars only")
        vals = (bar.open, bar.high, bar.low, bar.close)
        if not all(math.isfinite(v) and v > 0 for v in vals) or bar.low > min(bar.open, bar.close) or \
                bar.high < max(bar.open, bar.close):
            raise ValueError(f"bad bar {bar.ts}: open/high/low/close {vals} (need finite, > 0, low <= o,c <= high)")
        if decision is not None and (decision.symbol != self.symbol or decision.ts != bar.ts):
            raise ValueError(f"decision {decision.id} is for {decision.symbol}@{decision.ts}, "
                             f"not this bar {self.symbol}@{bar.ts}")

    def _make_snapshot(self) -> ExecutionSnapshot:
        s = self.state
        last = float(s[K.S_LAST_PRICE])
        pos = float(s[K.S_POS])
        pend = float(s[K.S_PENDING])
        return ExecutionSnapshot(
            ts=self._last_ts, symbol=self.symbol, mode=self.mode, cash=float(s[K.S_CASH]), position=pos,
            avg_price=float(s[K.S_ENTRY]), last_price=last, equity=float(s[K.S_EQUITY]),
            realised_pnl=float(s[K.S_REALISED]),
            unrealised_pnl=0.0 if pos == 0 else pos * (last - float(s[K.S_ENTRY])),
            fees=float(s[K.S_FEES]), trades=int(s[K.S_TRADES]), kill_switch=bool(s[K.S_KILL]),
            cooldown=int(s[K.S_COOLDOWN]), pending_target=None if pend != pend else pend)
