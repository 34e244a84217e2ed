"""Reconciliation: the ledger against the exchange's own view of the account (pure comparison).

The exchange is the truth. Three views are compared:
* fills: the account's trades (``fetch_my_trades``) summed per order against the ledger's fills per
  order: an exchange fill the ledger lacks, a ledger fill the exchange does not confirm, or a different
  amount / fee (fees in the quote currency);
* open orders (``fetch_open_orders``): one of ours (clientOrderId prefix ``moe-``) the ledger does not
  hold as open, or one the ledger holds open that the exchange does not;
* balances (``fetch_balance`` totals): the change since the account's baseline (the balances when this
  ledger first met the exchange) against the ledger's position and cash change.
Any difference beyond the tolerance makes the result not ``ok``; the executor then halts new orders
(kill switch reason ``reconcile``) until the user acknowledges it.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

OUR_PREFIX = "moe-"  # core/execution/broker.client_order_id


@dataclass(frozen=True, slots=True)
class Difference:
    what: str  # fill_missing_in_ledger | fill_not_on_exchange | fill_amount | fill_fee | open_order | balance_*
    detail: str
    ledger: float = 0.0
    exchange: float = 0.0
    ref: str = ""  # the exchange order id (fills) or clientOrderId (open orders)


@dataclass(frozen=True, slots=True)
class Baseline:
    """The account's balances when this ledger first met the exchange (persisted in the ledger meta)."""

    base: float
    quote: float
    since_ms: int
    ignored: tuple[str, ...] = ()  # order ids / clientOrderIds whose differences the user acknowledged

    def to_json(self) -> dict[str, Any]:
        return {"base": self.base, "quote": self.quote, "since_ms": self.since_ms, "ignored": list(self.ignored)}

    @staticmethod
    def from_json(d: dict[str, Any] | None) -> Baseline | None:
        if not d:
            return None
        return Baseline(float(d["base"]), float(d["quote"]), int(d["since_ms"]), tuple(d.get("ignored", ())))

    def acknowledged(self, res: ReconcileResult) -> Baseline:
        """The baseline after the user acknowledged ``res``: its balance differences absorbed, its
        orders no longer compared (a manual trade on the account, say)."""
        base, quote = self.base, self.quote
        for d in res.differences:
            if d.what == "balance_base":
                base += d.exchange - d.ledger
            elif d.what == "balance_quote":
                quote += d.exchange - d.ledger
        refs = tuple(dict.fromkeys([*self.ignored, *(d.ref for d in res.differences if d.ref)]))
        return Baseline(base, quote, self.since_ms, refs)


@dataclass(frozen=True, slots=True)
class ReconcileResult:
    ts_ms: int
    ok: bool
    differences: tuple[Difference, ...] = ()
    fills_checked: int = 0
    open_checked: int = 0
    elapsed_ms: float = 0.0
    error: str = ""  # the exchange could not be asked (nothing compared)
    counts: dict[str, int] = field(default_factory=dict)

    def summary(self) -> str:
        if self.error:
            return f"reconcile not run: {self.error}"
        if self.ok:
            return f"reconciled: {self.fills_checked} fills, {self.open_checked} open orders, balances agree"
        return "; ".join(d.detail for d in self.differences[:5]) + (
            f" (+{len(self.differences) - 5} more)" if len(self.differences) > 5 else "")


def _total(balance: dict[str, Any], cur: str) -> float:
    b = balance.get(cur)
    if isinstance(b, dict):
        return float(b.get("total") or 0.0)
    tot = balance.get("total")
    return float((tot or {}).get(cur) or 0.0) if isinstance(tot, dict) else 0.0


def make_baseline(balance: dict[str, Any], symbol: str, position: float, cash_change: float,
                  now_ms: int) -> Baseline:
    """The balances the account would have had without this ledger's trades."""
    base, quote = split_symbol(symbol)
    return Baseline(_total(balance, base) - position, _total(balance, quote) - cash_change, now_ms)


def split_symbol(symbol: str) -> tuple[str, str]:
    """(base, quote); a stock ticker (no quote) trades against USD."""
    base, _, quote = symbol.partition("/")
    return base, quote.split(":")[0] or "USD"


def reconcile(*, symbol: str, ledger_fills: pd.DataFrame, ledger_open: Iterable[str], position: float,
              cash_change: float, trades: list[dict[str, Any]], open_orders: Iterable[Any],
              balance: dict[str, Any], baseline: Baseline, tolerance: float, cash_scale: float = 1.0,
              fee_of: Any = None) -> ReconcileResult:
    """Compare (pure). ``ledger_fills``: columns order_id, amount, fee, ts; ``ledger_open``: the
    clientOrderIds the ledger holds as open; ``trades``: ccxt trade dicts (order, amount, fee);
    ``open_orders``: core.types.Order; ``fee_of(trade) -> quote fee``; ``cash_scale``: the quote
    tolerance is ``tolerance * cash_scale``."""
    t0 = time.perf_counter()
    diffs: list[Difference] = []
    qtol = tolerance * max(1.0, cash_scale)
    ex_amt: dict[str, float] = {}
    ex_fee: dict[str, float] = {}
    ignored = set(baseline.ignored)
    for t in trades:
        oid = str(t.get("order") or "")
        if int(t.get("timestamp") or 0) < baseline.since_ms or oid in ignored:
            continue
        ex_amt[oid] = ex_amt.get(oid, 0.0) + float(t.get("amount") or 0.0)
        ex_fee[oid] = ex_fee.get(oid, 0.0) + (float(fee_of(t)) if fee_of is not None else 0.0)
    if len(ledger_fills):
        ledger_fills = ledger_fills[(ledger_fills["ts"] >= baseline.since_ms)
                                    & ~ledger_fills["order_id"].astype(str).isin(ignored)]
    led = ledger_fills.groupby("order_id")[["amount", "fee"]].sum() if len(ledger_fills) else \
        pd.DataFrame(columns=["amount", "fee"])
    led_amt = {str(k): float(v) for k, v in led["amount"].items()}
    led_fee = {str(k): float(v) for k, v in led["fee"].items()}
    for oid in sorted(set(ex_amt) - set(led_amt)):
        diffs.append(Difference("fill_missing_in_ledger", f"exchange fill of order {oid} "
                                f"({ex_amt[oid]:.8g}) is not in the ledger", 0.0, ex_amt[oid], oid))
    for oid in sorted(set(led_amt) - set(ex_amt)):
        diffs.append(Difference("fill_not_on_exchange", f"ledger fill of order {oid} ({led_amt[oid]:.8g}) "
                                "is not confirmed by the exchange", led_amt[oid], 0.0, oid))
    for oid in sorted(set(led_amt) & set(ex_amt)):
        if abs(led_amt[oid] - ex_amt[oid]) > tolerance:
            diffs.append(Difference("fill_amount", f"order {oid}: ledger filled {led_amt[oid]:.8g}, "
                                    f"exchange {ex_amt[oid]:.8g}", led_amt[oid], ex_amt[oid], oid))
        if fee_of is not None and abs(led_fee[oid] - ex_fee[oid]) > qtol:
            diffs.append(Difference("fill_fee", f"order {oid}: ledger fee {led_fee[oid]:.8g}, exchange "
                                    f"{ex_fee[oid]:.8g}", led_fee[oid], ex_fee[oid], oid))
    ours_open = {o.clientOrderId for o in open_orders
                 if str(o.clientOrderId).startswith(OUR_PREFIX) and o.clientOrderId not in ignored}
    mine = set(ledger_open) - ignored
    for cid in sorted(ours_open - mine):
        diffs.append(Difference("open_order", f"open order {cid} on the exchange is not open in the ledger",
                                ref=cid))
    for cid in sorted(mine - ours_open):
        diffs.append(Difference("open_order", f"ledger order {cid} is not open on the exchange", ref=cid))
    base, quote = split_symbol(symbol)
    d_base = _total(balance, base) - baseline.base
    d_quote = _total(balance, quote) - baseline.quote
    if abs(d_base - position) > tolerance:
        diffs.append(Difference("balance_base", f"{base}: ledger position {position:.8g}, exchange change "
                                f"{d_base:.8g} since the baseline", position, d_base))
    if abs(d_quote - cash_change) > qtol:
        diffs.append(Difference("balance_quote", f"{quote}: ledger cash change {cash_change:.8g}, exchange "
                                f"change {d_quote:.8g} since the baseline", cash_change, d_quote))
    return ReconcileResult(ts_ms=int(time.time() * 1000), ok=not diffs, differences=tuple(diffs),
                           fills_checked=len(ex_amt), open_checked=len(ours_open),
                           elapsed_ms=(time.perf_counter() - t0) * 1000.0)
