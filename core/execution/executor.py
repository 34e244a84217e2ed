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

Exchange accounts (restart-safe idempotency): every order's clientOrderId derives only from (account,
symbol, timeframe, bar ts, action); its intent is committed to the ledger (status ``pending``) BEFORE
``create_order``; unresolved intents are looked up on the exchange by clientOrderId at start and before
every bar, and their fills booked, before any new order (an interrupted bar is completed and never
re-traded). Bars older than ``max_bar_age_s`` (a backfill after downtime) are recorded, never traded.
The intent side lives in core/execution/intents.py (IntentJournal: recover, lookup, settlement) and the
stop-loss / take-profit orders resting on the exchange in core/execution/protective.py (ProtectiveOrders);
the Executor is both (mixins over its state).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pandas as pd

from core.execution import kernel as K
from core.execution.broker import client_order_id, order_key
from core.execution.ccxt_broker import quote_fee
from core.execution.intents import PROTECTIVE
from core.execution.ledger import UNRESOLVED, Intent, Ledger
from core.execution.paper import PaperBroker
from core.execution.protective import ProtectiveOrders
from core.execution.reconcile import Baseline, ReconcileResult, make_baseline, reconcile
from core.execution.risk import RiskManager
from core.execution.untrained import refusal
from core.types import Broker, CandleEvent, Decision, Fill, Order, timeframe_ms

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
    unresolved: int = 0  # exchange intents not yet confirmed (orders are held while > 0 at a bar)
    stale_bars: int = 0  # bars recorded but not traded: older than max_bar_age_s
    halt_reason: str = ""  # "reconcile": orders held until the user acknowledges
    protection: str = "off"  # stop-loss / take-profit: exchange (resting orders) | engine | off
    protective_orders: int = 0  # protective legs resting on the exchange now
    reconcile: ReconcileResult | None = None  # the last comparison with the exchange


class Executor(ProtectiveOrders):
    def __init__(self, execution: Any, risk: Any, symbol: str, timeframe: str, *, ledger: Ledger | None = None,
                 broker: Broker | None = None, session_flat: Callable[[int], bool] | None = None,
                 bars_per_year: float | None = None, max_bar_age_s: float = 0.0,
                 clock: Callable[[], float] = time.time,
                 on_event: Callable[[str, dict[str, Any]], None] | None = None,
                 reconcile_every_bars: int = 0, reconcile_tolerance: float = 1e-6) -> None:
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
        self.account = ledger.account if ledger is not None else f"{self.mode}:{symbol}"
        self._max_age_ms = float(max_bar_age_s) * 1000.0
        self._clock = clock
        self._tf_ms = timeframe_ms(timeframe)
        self.stale_bars = 0
        self._on_event = on_event  # (kind, details): fills, rejections, recoveries -> alerts
        self._mem_intents: dict[str, Intent] = {}  # ledger-less exchange runs (tests)
        self._mem_fills: list[Fill] = []
        self._carry: tuple[list[Order], list[Fill], list[str], list[Intent]] = ([], [], [], [])
        self._check_intents = True  # unresolved intents may exist (the ledger is asked)
        self._initial_cash = float(execution.initial_cash)
        self._reconcile_every = int(reconcile_every_bars)  # 0: never (paper)
        self._reconcile_tol = float(reconcile_tolerance)
        self._bars_since_reconcile = 0
        self.last_reconcile: ReconcileResult | None = None
        self.halt_reason = ""  # "reconcile": new orders held until the user acknowledges (reset)
        self._trades_cache: list[dict[str, Any]] = []  # the account's trades seen by reconcile (incremental)
        self._trade_ids: set[str] = set()
        self._trades_from: int | None = None
        self._baseline: dict[str, Any] | None = (ledger.meta if ledger is not None else {}).get("baseline")
        self.blocked = ""  # why new orders are held (an intent the exchange could not confirm)
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
        self._init_protection(execution, broker)  # stops resting on the exchange, or enforced here
        self._snap = self._make_snapshot()
        if broker is not None:
            self.recover()
            if self._reconcile_every:
                self.reconcile()

    # ------------------------------------------------------------ reconciliation

    def reconcile(self) -> ReconcileResult | None:
        """Compare the ledger with the exchange now (start-up, every N bars, on demand)."""
        with self._lock:
            res = self._reconcile_locked()
            self._snap = self._make_snapshot()
            return res

    def _reconcile_locked(self, extra_fills: list[Fill] | None = None) -> ReconcileResult | None:
        b = self.live_broker
        if b is None or not hasattr(b, "fetch_my_trades"):
            return None  # paper: the ledger is the account
        self._bars_since_reconcile = 0
        t0 = time.perf_counter()
        try:
            balance = b.fetch_balance()
            open_orders = b.fetch_open_orders(self.symbol)
            base = Baseline.from_json(self._baseline_json())
            if base is None:
                base = make_baseline(balance, self.symbol, float(self.state[K.S_POS]),
                                     float(self.state[K.S_CASH]) - self._initial_cash, int(self._clock() * 1000))
                self._baseline = base.to_json()
            trades = self._trades_since(b, base.since_ms)
        except Exception as exc:  # unreachable: compared next time; nothing is halted on a network error
            self.last_reconcile = ReconcileResult(int(self._clock() * 1000), ok=True, error=type(exc).__name__)
            log.warning("reconcile: %s", type(exc).__name__)
            return self.last_reconcile
        fills = self.ledger.fills() if self.ledger is not None else pd.DataFrame(
            [{"order_id": f.order_id, "amount": f.amount, "fee": f.fee, "ts": f.ts} for f in self._mem_fills])
        if extra_fills:  # this bar's fills, not committed yet
            fills = pd.concat([fills[["order_id", "amount", "fee", "ts"]], pd.DataFrame(
                [{"order_id": f.order_id, "amount": f.amount, "fee": f.fee, "ts": f.ts} for f in extra_fills])])
        open_cids = [it.client_order_id for it in self._mem_intents.values() if it.status == "open"]
        res = reconcile(symbol=self.symbol, ledger_fills=fills, ledger_open=open_cids,
                        position=float(self.state[K.S_POS]), cash_change=float(self.state[K.S_CASH]) - self._initial_cash,
                        trades=trades, open_orders=open_orders, balance=balance, baseline=base,
                        tolerance=self._reconcile_tol, cash_scale=abs(float(self.state[K.S_CASH])),
                        fee_of=lambda t: quote_fee([t["fee"]] if t.get("fee") else [], self.symbol, t.get("price")))
        res = replace(res, elapsed_ms=(time.perf_counter() - t0) * 1000.0)
        self.last_reconcile = res
        if not res.ok and not self.halt_reason:
            self.halt_reason = "reconcile"
            log.warning("reconcile: %s; new orders halted until acknowledged", res.summary())
            self._emit("reconcile", {"differences": [d.detail for d in res.differences]})
            self._emit("kill_switch", {"reason": "reconcile", "detail": res.summary()})
        return res

    def _baseline_json(self) -> dict[str, Any] | None:
        return self._baseline

    def _trades_since(self, b: Any, since: int) -> list[dict[str, Any]]:
        """Every account trade since the baseline; after the first call only the new ones are fetched
        (from the newest seen timestamp, de-duplicated by trade id), so a check stays cheap as history grows."""
        if self._trades_from != since:  # first call, or a new baseline
            self._trades_cache, self._trade_ids, self._trades_from = [], set(), since
        start = max([since, *(int(t.get("timestamp") or 0) for t in self._trades_cache[-1:])])
        for t in self._all_trades(b, start):
            tid = str(t.get("id") or (t.get("order"), t.get("timestamp"), t.get("amount")))
            if tid not in self._trade_ids:
                self._trade_ids.add(tid)
                self._trades_cache.append(t)
        return self._trades_cache

    def _all_trades(self, b: Any, since: int) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        while True:
            page = b.fetch_my_trades(self.symbol, since, 1000)
            out += page
            if len(page) < 1000:
                return out
            since = int(page[-1]["timestamp"]) + 1

    def acknowledge(self) -> None:
        """The user saw the reconcile differences: they are absorbed into the baseline (persisted with
        the next bar) and new orders may go again; a NEW difference halts again."""
        with self._lock:
            self._acknowledge_locked()
            self._snap = self._make_snapshot()

    def _acknowledge_locked(self) -> None:
        res, base = self.last_reconcile, Baseline.from_json(self._baseline_json())
        if self.halt_reason == "reconcile" and res is not None and base is not None:
            self._baseline = base.acknowledged(res).to_json()
            self._emit("acknowledged", {"differences": [d.detail for d in res.differences]})
        self.halt_reason = ""

    def _meta(self) -> dict[str, Any]:
        base = self.ledger.meta if self.ledger is not None else {}
        out = {**base, "pending_cid": self._pending_cid, "order_seq": self._order_seq}
        if self._baseline:
            out["baseline"] = self._baseline
        return out

    def _emit(self, kind: str, details: dict[str, Any]) -> None:
        if self._on_event is not None:
            try:
                self._on_event(kind, {"symbol": self.symbol, "account": self.account, **details})
            except Exception as exc:  # an alert sink never stops trading
                log.warning("event %s: %s", kind, type(exc).__name__)

    def is_stale(self, bar_ts: int) -> bool:
        """The bar closed longer ago than max_bar_age_s (a backfill after downtime): never traded."""
        if self._max_age_ms <= 0:
            return False
        return self._clock() * 1000.0 - (bar_ts + self._tf_ms) > self._max_age_ms

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
        # paper and exchange accounts alike: the id derives from (account, symbol, timeframe, bar, action)
        cid = self.client_id(bar.ts, decision.action.value.lower()) if decision is not None else None
        resolved: list[Intent] = []
        with self._lock:
            if self.is_stale(bar.ts):
                # fills resolved since the last record (a restart's lookups, intrabar exits) are booked
                # with this bar even though it trades nothing: the state carries them already
                orders, fills, reasons, resolved = self._carry
                self._carry = ([], [], [], [])
                self._stale_bar(bar)
            elif self.live_broker is None:
                orders, fills, reasons = self._paper_bar(bar, signal, vol, cid)
            else:
                action = decision.action.value.lower() if decision is not None else "none"
                orders, fills, reasons, resolved = self._live_bar(bar, signal, vol, action,
                                                                  decision.id if decision is not None else "")
            if self.ledger is not None:
                self.ledger.record_bar(bar.ts, self.symbol, bar.close, self.state, orders, fills, reasons,
                                       meta=self._meta(), resolved=resolved)
                if resolved:  # committed: the ledger remembers them; memory keeps the unresolved only
                    self._mem_intents = {c: it for c, it in self._mem_intents.items() if it.status in UNRESOLVED}
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
                c = self.client_id(bar.ts, reason)
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
                self._pending_cid = self.client_id(bar.ts, "kill_switch")
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

    def on_tick(self, price: float, ts_ms: int, bar_ts: int | None = None) -> list[Fill]:
        """A trade / ticker price inside the open bar (exchange accounts): stop-loss, take-profit and the
        daily-loss kill switch act NOW, not at the bar's close (a paper account's kernel already models
        the bar's high/low). The exit is keyed to the open bar, so a re-sent tick cannot double it; its
        fill is committed with that bar (its intent before the order, as every order). ``ts_ms``: when
        the price traded; ``bar_ts``: the open bar it belongs to (default: ts_ms floored to the timeframe)."""
        if self.live_broker is None or not (math.isfinite(price) and price > 0):
            return []
        with self._lock:
            if self.blocked or self.halt_reason or self.is_stale(ts_ms - self._tf_ms):
                return []
            bar_ts = int(ts_ms) // self._tf_ms * self._tf_ms if bar_ts is None else int(bar_ts)
            if self._last_ts is not None and bar_ts <= self._last_ts:
                return []  # a late tick of a bar already booked
            orders, fills, reasons, resolved = self._carry
            out = (orders, fills, reasons, resolved)
            n = len(fills)
            self._show_price(price)
            self._legs_crossed(price, out)  # a resting leg the price went through: its fill booked now
            hit = None if self._covered() else self.risk.check_stops(price, price, price)
            if hit is not None:
                self._submit(-self.state[K.S_POS], bar_ts, hit[1], hit[1], "", out, price)
                self.risk.start_cooldown()  # counted from this bar, as a stop found at the close
            equity = self.state[K.S_CASH] + self.state[K.S_POS] * price
            if self.state[K.S_POS] != 0 and self.risk.check_daily_loss(equity):
                self._emit("kill_switch", {"reason": "daily_loss", "equity": float(equity), "intrabar": True})
                self._submit(-self.state[K.S_POS], bar_ts, "kill_switch", "kill_switch", "", out, price)
            self._carry = out
            self._snap = self._make_snapshot()
            return fills[n:]

    def _show_price(self, price: float) -> None:
        """A simulated exchange (PaperExchange) fills at the price the market shows now."""
        on_price = getattr(self.live_broker, "on_price", None)
        if on_price is not None:
            on_price(float(price), int(self._clock() * 1000))

    def _stale_bar(self, bar: CandleEvent) -> None:
        """A backfilled bar: its price is recorded (equity, volatility), nothing is traded."""
        self.stale_bars += 1
        self.state[K.S_LAST_PRICE] = bar.close
        self.state[K.S_EQUITY] = self.state[K.S_CASH] + self.state[K.S_POS] * bar.close
        self.paper.now_ms = bar.ts

    def _live_bar(self, bar: CandleEvent, signal: float, vol: float, action: str, decision_id: str):
        """The kernel's phases with exchange fills (market orders fill now, at the live price). First the
        intents of earlier bars still unconfirmed; while one cannot be confirmed, nothing new is sent."""
        orders, fills, reasons, resolved = self._carry
        self._carry = ([], [], [], [])
        self._show_price(bar.close)
        if self._check_intents:  # only after an order the exchange left unconfirmed (no query per bar)
            o2, f2, r2, res2 = self._resolve_unresolved()
            orders, fills, reasons, resolved = orders + o2, fills + f2, reasons + r2, resolved + res2
        self._bars_since_reconcile += 1
        if self._reconcile_every and self._bars_since_reconcile >= self._reconcile_every:
            self._reconcile_locked(extra_fills=fills)
        if self.blocked or self.halt_reason:
            self.state[K.S_LAST_PRICE] = bar.close
            self.state[K.S_EQUITY] = self.state[K.S_CASH] + self.state[K.S_POS] * bar.close
            return orders, fills, reasons, resolved
        risk = self.risk
        risk.new_bar(bar.ts)
        out = (orders, fills, reasons, resolved)
        # levels resting on the exchange fire there (booked when their intent resolves); the rest here
        hit = None if self._covered() else risk.check_stops(bar.open, bar.high, bar.low)
        if hit is not None:
            self._submit(-self.state[K.S_POS], bar.ts, hit[1], hit[1], decision_id, out, hit[0])
            risk.start_cooldown()
        equity = self.state[K.S_CASH] + self.state[K.S_POS] * bar.close
        self.state[K.S_EQUITY] = equity
        if risk.check_daily_loss(equity) and self.state[K.S_POS] != 0:
            self._emit("kill_switch", {"reason": "daily_loss", "equity": float(equity)})
            self._submit(-self.state[K.S_POS], bar.ts, "kill_switch", "kill_switch", decision_id, out, bar.close)
        target = risk.gate(risk.size(signal, vol))
        if target == target:
            qty = risk.order_qty(target, bar.close)
            if qty != 0.0:
                self._submit(qty, bar.ts, action, "signal", decision_id, out, bar.close)
        risk.tick_cooldown()
        self._ensure_protection(bar.ts, bar.close, out)
        self.state[K.S_EQUITY] = self.state[K.S_CASH] + self.state[K.S_POS] * bar.close
        self.state[K.S_LAST_PRICE] = bar.close
        return orders, fills, reasons, resolved

    def client_id(self, bar_ts: int, action: str) -> str:
        """The clientOrderId of this account's order for (bar, action): the same after any restart."""
        return client_order_id(order_key(self.account, self.symbol, self.timeframe, bar_ts, action))

    def _submit(self, qty: float, bar_ts: int, action: str, reason: str, decision_id: str,
                out: tuple[list[Order], list[Fill], list[str], list[Intent]], ref_price: float) -> None:
        """Intent (committed) -> create_order -> fill booked into the state; the intent's resolution is
        committed with the bar. A BrokerError leaves the intent pending: looked up before the next bar."""
        orders, fills, reasons, resolved = out
        if qty < 0 and self._open_legs():
            # the resting stop / take-profit hold the coins and may have fired: cancelled and resolved
            # first, and only what is still held is sold
            self._lift_protection(out)
            qty = max(qty, -max(float(self.state[K.S_POS]), 0.0))
            if qty >= 0:
                return
        side = "buy" if qty > 0 else "sell"
        cid = self.client_id(bar_ts, action)
        assert self.live_broker is not None  # _submit runs only with a live broker
        known = self.ledger.intent(cid) if self.ledger is not None else self._mem_intents.get(cid)
        if known is not None and known.status not in UNRESOLVED:
            log.info("order %s (%s) was already resolved as %s: not sent again", cid, reason, known.status)
            return
        intent = Intent(client_order_id=cid, decision_id=decision_id, symbol=self.symbol, side=side,
                        type="market", amount=abs(float(qty)), price=None, bar_ts=int(bar_ts), reason=reason)
        if self.ledger is not None:
            self.ledger.write_intent(intent)
        self._mem_intents[cid] = intent
        try:
            order = self.live_broker.create_order(self.symbol, "market", side, abs(float(qty)), None,
                                                  {"clientOrderId": cid, "refPrice": ref_price,
                                                   "moeFresh": known is None and self.ledger is not None})
        except Exception as exc:  # state unknown: stays pending, resolved by lookup before the next order
            log.warning("%s order %s %s: %s; the intent stays pending", reason, side, cid, type(exc).__name__)
            self._check_intents = True
            self._emit("error", {"where": "create_order", "clientOrderId": cid, "error": type(exc).__name__})
            return
        orders.append(order)
        if order.status == "rejected" or order.filled <= 0:
            status = "open" if order.status == "open" else "rejected"
            resolved.append(replace(intent, status=status, order_id=order.id, note=order.reason))
            self._mem_intents[cid] = resolved[-1]
            self._check_intents = self._check_intents or status == "open"
            if status == "rejected":
                log.warning("%s order %s %s rejected: %s", reason, side, cid, order.reason)
                self.state[K.S_REJECTED] += 1
                self._emit("rejected", {"clientOrderId": cid, "side": side, "reason": order.reason})
            return
        if order.status == "open":  # partly filled, still working: booked when it completes
            resolved.append(replace(intent, status="open", order_id=order.id))
            self._mem_intents[cid] = resolved[-1]
            self._check_intents = True
            return
        fills.append(self._book(order, side))
        reasons.append(reason)
        resolved.append(replace(intent, status="filled", order_id=order.id))
        self._mem_intents[cid] = resolved[-1]
        self._emit("exit" if reason != "signal" else ("entry" if side == "buy" else "exit"),
                   {"clientOrderId": cid, "side": side, "amount": order.filled, "price": order.price,
                    "fee": order.fee, "reason": reason})

    # ------------------------------------------------------------ commands / views

    def reset_kill_switch(self) -> None:
        """The user's reset: the daily-loss kill switch and an acknowledged reconcile halt."""
        with self._lock:
            self._acknowledge_locked()
            self.risk.reset()
            if self.ledger is not None and self.ledger.restored:
                self.ledger.save_state(self.state)
            self._snap = self._make_snapshot()

    def snapshot(self) -> ExecutionSnapshot:
        return self._snap

    def open_orders(self) -> list[Order]:
        """Working orders: the paper account's, and the protective legs resting on the exchange."""
        with self._lock:
            legs = [Order(id=it.order_id, clientOrderId=it.client_order_id, symbol=it.symbol, side=it.side,
                          type=it.type, amount=it.amount, price=it.price, status="open", filled=0.0, fee=0.0,
                          ts=it.bar_ts, reason=it.reason) for it in self._open_legs()]
            return [*self.paper.fetch_open_orders(self.symbol), *legs]

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
            cooldown=int(s[K.S_COOLDOWN]), pending_target=None if pend != pend else pend,
            unresolved=sum(1 for it in self._mem_intents.values() if it.status in UNRESOLVED
                           and it.reason not in PROTECTIVE),
            stale_bars=self.stale_bars, halt_reason=self.halt_reason, reconcile=self.last_reconcile,
            protection=self.protection, protective_orders=len(self._open_legs()))

