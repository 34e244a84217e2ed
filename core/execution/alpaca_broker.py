"""AlpacaBroker: stock (and crypto) orders on an Alpaca account through alpaca-py's ``TradingClient``, behind
the same ccxt-shaped ``Broker`` interface as ``CcxtBroker`` (core/types.py).

Safety, the same three switches as ccxt: real money needs config ``execution.live: true``, the ``--live``
flag AND keys in the environment; otherwise orders go to Alpaca's PAPER account
(``TradingClient(paper=True)``, paper keys in the same APCA_API_KEY_ID / APCA_API_SECRET_KEY). The
refusal names every missing condition. Keys go to the client only; never logged, printed or stored.

Idempotency: every order carries the deterministic client order id (core/execution/broker.client_order_id);
before each submission, and after a timeout or server error, the order is looked up by it
(``GET /v2/orders:by_client_order_id``), so a retried or replayed decision never doubles an order.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import pandas as pd

from core.config import Secrets
from core.execution.ccxt_broker import BrokerError, LiveTradingRefused, require_live_switches
from core.types import Order

log = logging.getLogger(__name__)

_KEY_VARS = "APCA_API_KEY_ID, APCA_API_SECRET_KEY"
_STATUS = {"new": "open", "accepted": "open", "pending_new": "open", "partially_filled": "open",
           "accepted_for_bidding": "open", "pending_replace": "open", "held": "open", "calculated": "open",
           "done_for_day": "open", "filled": "closed", "canceled": "canceled", "pending_cancel": "open",
           "expired": "canceled", "replaced": "canceled", "stopped": "open", "suspended": "open",
           "rejected": "rejected"}


def alpaca_mode(execution: Any, live_flag: bool, secrets: Secrets) -> str:
    """'live' or 'paper', or LiveTradingRefused naming each missing condition."""
    if execution.live or live_flag:
        require_live_switches(execution, live_flag, secrets.has_alpaca_keys, f"Alpaca keys ({_KEY_VARS})")
        return "live"
    if not secrets.has_alpaca_keys:
        raise LiveTradingRefused(f"Alpaca paper trading refused: paper keys are not in the environment ({_KEY_VARS})")
    return "paper"


def _f(v: Any, default: float = 0.0) -> float:
    try:
        x = float(v)
    except (TypeError, ValueError):
        return default
    return x if math.isfinite(x) else default


def to_order(o: dict[str, Any]) -> Order:
    """An Alpaca order (JSON) -> the ccxt-shaped Order."""
    ts = o.get("submitted_at") or o.get("created_at")
    price = o.get("filled_avg_price") or o.get("limit_price")
    return Order(id=str(o.get("id")), clientOrderId=str(o.get("client_order_id") or ""),
                 symbol=str(o.get("symbol") or ""), side=str(o.get("side") or ""),
                 type=str(o.get("order_type") or o.get("type") or ""), amount=_f(o.get("qty")),
                 price=None if price in (None, "") else _f(price), status=_STATUS.get(str(o.get("status")), "open"),
                 filled=_f(o.get("filled_qty")), fee=_f(o.get("commission")),
                 ts=int(pd.Timestamp(ts).value // 1_000_000) if ts else 0, reason=str(o.get("status") or ""))


class AlpacaBroker:
    def __init__(self, execution: Any, *, live_flag: bool = False, secrets: Secrets | None = None,
                 paper_url: str | None = None, live_url: str | None = None, client: Any | None = None,
                 retries: int = 3, retry_delay_s: float = 1.0) -> None:
        secrets = secrets if secrets is not None else Secrets.from_env()
        self.mode = alpaca_mode(execution, live_flag, secrets)
        if client is None:
            from alpaca.trading.client import TradingClient

            paper = self.mode == "paper"
            client = TradingClient(secrets.alpaca_key_id, secrets.alpaca_secret_key, paper=paper, raw_data=True,
                                   url_override=paper_url if paper else live_url)
        self.client: Any = client  # raw_data=True: JSON dicts, mapped by to_order
        self.retries = max(1, int(retries))
        self.retry_delay_s = float(retry_delay_s)
        self.submissions = 0  # POST /v2/orders sent (tests prove retries do not double orders)

    # ------------------------------------------------------------ lookups
    def _by_client_id(self, cid: str) -> Order | None:
        from alpaca.common.exceptions import APIError

        try:
            return to_order(self.client.get_order_by_client_id(cid))
        except APIError as exc:
            if getattr(exc, "status_code", None) == 404:
                return None
            raise

    # ------------------------------------------------------------ ccxt-shaped API
    def fetch_order_by_client_id(self, client_order_id: str, symbol: str | None = None) -> Order | None:
        return self._by_client_id(client_order_id)

    def create_order(self, symbol: str, type: str, side: str, amount: float, price: float | None = None,
                     params: dict[str, Any] | None = None) -> Order:
        from alpaca.common.exceptions import APIError
        from alpaca.trading.enums import OrderSide, TimeInForce
        from alpaca.trading.requests import LimitOrderRequest, MarketOrderRequest

        cid = (params or {}).get("clientOrderId")
        if not cid:
            raise ValueError("create_order needs params['clientOrderId'] (deterministic from the decision id)")
        if side not in ("buy", "sell") or type not in ("market", "limit"):
            raise ValueError(f"order side/type {side!r}/{type!r}: expected buy|sell and market|limit")
        if not (math.isfinite(amount) and amount > 0):
            raise ValueError(f"order amount {amount!r}: expected a positive number")
        if type == "limit" and not (price is not None and price > 0):
            raise ValueError("a limit order needs a positive price")
        tif = TimeInForce.GTC if "/" in symbol else TimeInForce.DAY  # crypto: gtc; stocks: day
        common = {"symbol": symbol, "qty": amount, "side": OrderSide(side), "time_in_force": tif,
                  "client_order_id": cid}
        req = MarketOrderRequest(**common) if type == "market" else LimitOrderRequest(**common, limit_price=price)
        last: Exception | None = None
        for attempt in range(self.retries):
            if attempt:
                time.sleep(self.retry_delay_s * 2 ** (attempt - 1))
            try:
                known = self._by_client_id(cid)  # look first, every attempt: the request may have arrived
                if known is not None:
                    return known
                self.submissions += 1
                return to_order(self.client.submit_order(req))
            except APIError as exc:
                code = getattr(exc, "status_code", None)
                if code is not None and code < 500 and code != 429:
                    raise BrokerError(f"alpaca refused the order ({code}): {str(exc)[:200]}") from None
                last = exc
            except (OSError, TimeoutError) as exc:  # requests' ConnectionError/Timeout are OSErrors
                last = exc
            log.warning("alpaca create_order %s: %s; looking it up before any retry", cid, last.__class__.__name__)
        raise BrokerError(f"alpaca order {cid} not confirmed after {self.retries} attempts "
                          f"({last.__class__.__name__})")

    def cancel_order(self, id: str, symbol: str | None = None) -> Order:
        self.client.cancel_order_by_id(id)
        return self.fetch_order(id, symbol)

    def fetch_order(self, id: str, symbol: str | None = None) -> Order:
        return to_order(self.client.get_order_by_id(id))

    def fetch_open_orders(self, symbol: str | None = None) -> list[Order]:
        from alpaca.trading.enums import QueryOrderStatus
        from alpaca.trading.requests import GetOrdersRequest

        req = GetOrdersRequest(status=QueryOrderStatus.OPEN, symbols=[symbol] if symbol else None)
        return [to_order(o) for o in self.client.get_orders(filter=req)]

    def fetch_balance(self) -> dict[str, Any]:
        """ccxt-shaped: {"USD": {"free": cash, "total": cash}, <each held symbol>: {"free": qty available,
        "total": qty}, "equity": ..., "buying_power": ..., "info": <the account>} (positions from
        GET /v2/positions; a crypto position also under its base, e.g. BTC for BTCUSD)."""
        a = self.client.get_account()
        cur = str(a.get("currency") or "USD")
        cash = _f(a.get("cash"))
        out: dict[str, Any] = {cur: {"free": cash, "used": 0.0, "total": cash}, "equity": _f(a.get("equity")),
                               "buying_power": _f(a.get("buying_power")), "info": a}
        for p in self.client.get_all_positions():
            qty = _f(p.get("qty"))
            bal = {"free": _f(p.get("qty_available"), qty), "total": qty}
            sym = str(p.get("symbol") or "")
            out[sym] = bal
            if p.get("asset_class") == "crypto" and sym.endswith(cur):
                out[sym[: -len(cur)]] = bal
        return out

    def fetch_my_trades(self, symbol: str, since: int | None = None, limit: int | None = None) -> list[dict]:
        """The account's fills of ``symbol`` since ``since`` (ms), ccxt trade-shaped, one per order that
        filled (Alpaca reports fills per order: closed orders with their filled_qty, filled_avg_price and
        commission, in USD), oldest first; every page of GET /v2/orders?status=closed is read."""
        from alpaca.common.enums import Sort
        from alpaca.trading.enums import QueryOrderStatus
        from alpaca.trading.requests import GetOrdersRequest

        after = pd.Timestamp(int(since), unit="ms", tz="UTC").to_pydatetime() if since else None
        out: list[dict] = []
        seen: set[str] = set()
        while True:
            req = GetOrdersRequest(status=QueryOrderStatus.CLOSED, symbols=[symbol], after=after, limit=500,
                                   direction=Sort.ASC)
            page = self._read(self.client.get_orders, req)
            for o in page:
                oid = str(o.get("id"))
                if oid in seen or _f(o.get("filled_qty")) <= 0:
                    continue
                seen.add(oid)
                ts = o.get("filled_at") or o.get("updated_at") or o.get("submitted_at")
                out.append({"id": oid, "order": oid, "symbol": symbol, "side": str(o.get("side")),
                            "amount": _f(o.get("filled_qty")), "price": _f(o.get("filled_avg_price")),
                            "fee": {"cost": _f(o.get("commission")), "currency": None},
                            "timestamp": int(pd.Timestamp(ts).value // 1_000_000) if ts else 0})
            if len(page) < 500:
                return out
            after = pd.Timestamp(page[-1].get("submitted_at")).to_pydatetime()

    def _read(self, fn: Any, req: Any) -> Any:
        """A read, retried with back-off on 429 / 5xx / connection errors."""
        from alpaca.common.exceptions import APIError

        for attempt in range(self.retries):
            try:
                return fn(filter=req)
            except APIError as exc:
                code = getattr(exc, "status_code", None)
                if (code is not None and code < 500 and code != 429) or attempt + 1 >= self.retries:
                    raise
            except (OSError, TimeoutError):
                if attempt + 1 >= self.retries:
                    raise
            time.sleep(self.retry_delay_s * 2 ** attempt)
        raise AssertionError("unreachable")
