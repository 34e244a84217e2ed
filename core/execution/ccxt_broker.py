"""CcxtBroker: orders on a real exchange account (testnet or live) through ccxt.

Safety: ``check_live_allowed`` decides the mode before any exchange object exists.
* live (real money) needs ALL of: config ``execution.live: true``, the ``--live`` flag, and keys in the
  environment (MOE_EXCHANGE_API_KEY, MOE_EXCHANGE_SECRET); the error names every missing condition.
* otherwise the broker runs on the exchange's testnet (ccxt ``set_sandbox_mode(True)``), which needs
  ``execution.sandbox: true`` and testnet keys in the same environment variables.
Keys are handed to ccxt and never logged, printed or stored; log lines carry exception TYPES only.

Idempotency: every order carries a clientOrderId (deterministic from the decision id). After a timeout
or network error the order is first looked up by that clientOrderId; only when the exchange positively
says it does not exist is it submitted again, so a retry never doubles an order.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import replace
from typing import Any

from core.config import Secrets
from core.types import Order

log = logging.getLogger(__name__)


class LiveTradingRefused(RuntimeError):
    """Trading on an exchange account was asked for without every required condition."""


class BrokerError(RuntimeError):
    """The exchange could not be reached or answered something unusable."""


_KEY_VARS = "MOE_EXCHANGE_API_KEY, MOE_EXCHANGE_SECRET"


def require_live_switches(execution: Any, live_flag: bool, has_keys: bool, what_keys: str) -> None:
    """Real money needs ALL three switches (config execution.live, the --live flag, keys in the
    environment): LiveTradingRefused naming each missing one (every broker: ccxt, Alpaca)."""
    missing = []
    if not execution.live:
        missing.append("config execution.live is not true")
    if not live_flag:
        missing.append("the --live flag was not given")
    if not has_keys:
        missing.append(f"{what_keys} are not in the environment")
    if missing:
        raise LiveTradingRefused("live trading refused: " + "; ".join(missing))


def check_live_allowed(execution: Any, live_flag: bool, secrets: Secrets) -> str:
    """'live' or 'sandbox', or LiveTradingRefused naming each missing condition."""
    if execution.live or live_flag:
        require_live_switches(execution, live_flag, secrets.has_exchange_keys, f"exchange keys ({_KEY_VARS})")
        return "live"
    if not execution.sandbox:
        raise LiveTradingRefused(
            "ccxt broker refused: execution.sandbox is false but live trading was not asked for "
            "(real money needs execution.live: true, the --live flag and keys in the environment)")
    if not secrets.has_exchange_keys:
        raise LiveTradingRefused(f"testnet trading refused: exchange keys are not in the environment ({_KEY_VARS})")
    return "sandbox"


class CcxtBroker:
    def __init__(self, execution: Any, exchange_id: str, *, live_flag: bool = False,
                 secrets: Secrets | None = None, exchange: Any | None = None, timeout_ms: int = 10_000,
                 retries: int = 3, retry_delay_s: float = 1.0) -> None:
        secrets = secrets if secrets is not None else Secrets.from_env()
        self.mode = check_live_allowed(execution, live_flag, secrets)
        if exchange is None:
            import ccxt

            if not hasattr(ccxt, exchange_id):
                raise ValueError(f"unknown ccxt exchange id {exchange_id!r}")
            exchange = getattr(ccxt, exchange_id)({"enableRateLimit": True, "timeout": int(timeout_ms)})
        exchange.apiKey = secrets.exchange_api_key
        exchange.secret = secrets.exchange_secret
        if secrets.exchange_password:
            exchange.password = secrets.exchange_password
        if self.mode == "sandbox":
            try:
                exchange.set_sandbox_mode(True)
            except Exception as exc:  # ccxt.NotSupported: the exchange has no testnet
                raise LiveTradingRefused(
                    f"{exchange.id} has no testnet in ccxt ({type(exc).__name__}); "
                    "only live trading (with all three conditions) is possible there") from None
        self.ex = exchange
        self.time_in_force = str(getattr(execution, "time_in_force", "GTC"))
        self.retries = max(1, int(retries))
        self.retry_delay_s = float(retry_delay_s)
        self.submissions = 0  # create_order requests sent (tests prove retries do not double orders)

    # ------------------------------------------------------------ ccxt-shaped API

    def create_order(self, symbol: str, type: str, side: str, amount: float, price: float | None = None,
                     params: dict | None = None) -> Order:
        import ccxt

        params = dict(params or {})
        ref_price = params.pop("refPrice", None)  # the executor's last price: min-cost check of market orders
        # the executor's ledger proves this clientOrderId was never sent before (a fresh intent): the first
        # attempt needs no lookup (one round trip less); every retry still looks first
        fresh = bool(params.pop("moeFresh", False))
        cid = params.get("clientOrderId")
        if not cid:
            raise ValueError("create_order needs params['clientOrderId'] (deterministic from the decision id)")
        if side not in ("buy", "sell") or type not in ("market", "limit"):
            raise ValueError(f"order side/type {side!r}/{type!r}: expected buy|sell and market|limit")
        if not (math.isfinite(amount) and amount > 0):
            raise ValueError(f"order amount {amount!r}: expected a positive number")
        try:
            amount, price, why = self._apply_rules(symbol, type, amount, price, ref_price)
        except ccxt.OperationFailed as exc:
            raise BrokerError(f"create_order {cid}: markets unavailable ({type_name(exc)})") from None
        if why:  # the exchange would refuse it: skipped with the reason, nothing sent
            return Order(id="", clientOrderId=cid, symbol=symbol, side=side, type=type, amount=float(amount),
                         price=price, status="rejected", filled=0.0, fee=0.0, ts=int(time.time() * 1000),
                         reason=why)
        if type == "limit":
            params.setdefault("timeInForce", self.time_in_force)
        last: Exception | None = None
        for attempt in range(self.retries):
            if attempt:
                time.sleep(self.retry_delay_s * 2 ** (attempt - 1))
            # Look first, every attempt: after a timeout the request may have arrived, and after a restart
            # the same decision may already be on the book (Binance only rejects a reused clientOrderId
            # while the first order is still open, so a filled one would be doubled).
            try:
                found = None if fresh and not attempt else self._lookup(symbol, cid)
            except ccxt.OperationFailed as exc:  # cannot tell whether it exists: do not submit blindly
                last = exc
                continue
            if found is not None:
                if attempt:
                    log.info("order %s found after %s: not re-submitted", cid, type_name(last))
                return found
            try:
                self.submissions += 1
                return self._order(self.ex.create_order(symbol, type, side, amount, price, params))
            except ccxt.DuplicateOrderId:
                found = self._lookup(symbol, cid)
                if found is not None:
                    return found
                raise BrokerError(f"order {cid}: exchange reports a duplicate it cannot find") from None
            except (ccxt.InsufficientFunds, ccxt.InvalidOrder, ccxt.BadSymbol) as exc:
                return Order(id="", clientOrderId=cid, symbol=symbol, side=side, type=type, amount=float(amount),
                             price=price, status="rejected", filled=0.0, fee=0.0, ts=int(time.time() * 1000),
                             reason=f"{type_name(exc)}: {_short(exc)}")
            except ccxt.OperationFailed as exc:  # RequestTimeout included: the request may have arrived
                last = exc
                log.warning("create_order %s: %s on attempt %d; looking it up before any retry",
                            cid, type_name(exc), attempt + 1)
        try:
            found = self._lookup(symbol, cid)
        except ccxt.OperationFailed:
            found = None
        if found is not None:
            return found
        raise BrokerError(f"create_order {cid}: exchange unreachable after {self.retries} attempts "
                          f"({type_name(last)}); order state unknown, look it up by clientOrderId")

    # ------------------------------------------------------------ protective orders

    def protective_support(self, symbol: str) -> str:
        """How the exchange itself can hold a spot long's stop-loss / take-profit: 'oco' (Binance order
        lists: a LIMIT_MAKER take-profit and a STOP_LOSS_LIMIT stop sharing one quantity), 'stop'
        (STOP_LOSS_LIMIT orders only), or '' (the engine enforces both on prices it sees)."""
        if self.ex.id != "binance":  # other venues: their stop params differ; the engine enforces
            return ""
        info = (self._retry(self.ex.load_markets).get(symbol) or {}).get("info") or {}
        types = info.get("orderTypes") or []
        if "STOP_LOSS_LIMIT" not in types:
            return ""
        return "oco" if info.get("ocoAllowed") and "LIMIT_MAKER" in types else "stop"

    def create_protective(self, symbol: str, amount: float, *, stop: float | None, stop_limit: float | None,
                          take: float | None, cids: dict[str, str], fresh: bool = False) -> list[Order]:
        """The protective SELL orders of a long position: an OCO list when both levels are given
        (``cids``: 'sl', 'tp', 'list'), else one STOP_LOSS_LIMIT ('sl'). Idempotent like create_order:
        the legs are looked up by clientOrderId before every attempt but a fresh first one, so a retry
        or a restart never places them twice. A leg the exchange refuses comes back ``rejected`` with
        the reason (the engine then enforces that level)."""
        import ccxt

        legs = ["sl", "tp"] if stop is not None and take is not None else ["sl"]
        if stop is None or stop_limit is None:
            raise ValueError("create_protective needs a stop price and its limit price")
        amt, px, why = self._apply_rules(symbol, "limit", amount, stop_limit, None)
        now = int(time.time() * 1000)

        def rejected(reason: str) -> list[Order]:
            return [Order(id="", clientOrderId=cids[leg], symbol=symbol, side="sell", type="limit", amount=amt,
                          price=px, status="rejected", filled=0.0, fee=0.0, ts=now, reason=reason) for leg in legs]

        if why:
            return rejected(why)
        m = self.ex.market(symbol)
        stop_s = self.ex.price_to_precision(symbol, stop)

        def send() -> list[Order]:
            if legs == ["sl"]:
                return [self._order(self.ex.create_order(symbol, "STOP_LOSS_LIMIT", "sell", amt, px, {
                    "stopPrice": stop_s, "clientOrderId": cids["sl"], "timeInForce": "GTC"}))]
            raw = self.ex.privatePostOrderListOco({
                "symbol": m["id"], "side": "SELL", "quantity": self.ex.amount_to_precision(symbol, amt),
                "listClientOrderId": cids["list"], "aboveType": "LIMIT_MAKER", "aboveClientOrderId": cids["tp"],
                "abovePrice": self.ex.price_to_precision(symbol, take), "belowType": "STOP_LOSS_LIMIT",
                "belowClientOrderId": cids["sl"], "belowStopPrice": stop_s,
                "belowPrice": self.ex.price_to_precision(symbol, px), "belowTimeInForce": "GTC"})
            got = {o.clientOrderId: o for o in (self._order(self.ex.parse_order(r, m)) for r in raw["orderReports"])}
            return [got[cids[leg]] for leg in legs]

        last: Exception | None = None
        for attempt in range(self.retries):
            if attempt:
                time.sleep(self.retry_delay_s * 2 ** (attempt - 1))
            try:
                found = [] if fresh and not attempt else [o for o in (self._lookup(symbol, cids[g]) for g in legs) if o]
            except ccxt.OperationFailed as exc:
                last = exc
                continue
            if found:
                return found
            try:
                self.submissions += 1
                return send()
            except ccxt.OperationFailed as exc:  # may have arrived: looked up before any retry
                last = exc
                log.warning("protective orders %s: %s on attempt %d", cids["sl"], type_name(exc), attempt + 1)
            except ccxt.ExchangeError as exc:  # refused (prices already crossed, balance, filters)
                return rejected(f"{type_name(exc)}: {_short(exc)}")
        raise BrokerError(f"protective orders {cids['sl']}: exchange unreachable after {self.retries} attempts "
                          f"({type_name(last)}); look them up by clientOrderId")

    def cancel_order(self, id: str, symbol: str | None = None) -> Order:
        return self._order(self._retry(self.ex.cancel_order, id, symbol))

    def fetch_order(self, id: str, symbol: str | None = None) -> Order:
        return self._order(self._retry(self.ex.fetch_order, id, symbol))

    def fetch_order_by_client_id(self, client_order_id: str, symbol: str) -> Order | None:
        return self._retry(self._lookup, symbol, client_order_id)

    def fetch_open_orders(self, symbol: str | None = None) -> list[Order]:
        return [self._order(o) for o in self._retry(self.ex.fetch_open_orders, symbol)]

    def fetch_balance(self) -> dict[str, Any]:
        return self._retry(self.ex.fetch_balance)

    def fetch_my_trades(self, symbol: str, since: int | None = None, limit: int | None = None) -> list[dict]:
        """The account's fills (ccxt trade dicts: order, side, amount, price, fee in its currency)."""
        return self._retry(self.ex.fetch_my_trades, symbol, since, limit)

    # ------------------------------------------------------------ internals

    def _retry(self, fn: Any, *args: Any) -> Any:
        """Reads are safe to repeat: 429 / 5xx / timeouts and Binance's "unknown status" internal errors
        (ccxt OperationFailed, NetworkError's parent) retried with back-off."""
        import ccxt

        for attempt in range(self.retries):
            try:
                return fn(*args)
            except ccxt.OperationFailed as exc:
                if attempt + 1 >= self.retries:
                    raise
                log.warning("%s: %s; retry %d", getattr(fn, "__name__", "call"), type_name(exc), attempt + 1)
                time.sleep(self.retry_delay_s * 2 ** attempt)
        raise AssertionError("unreachable")

    def _apply_rules(self, symbol: str, type: str, amount: float, price: float | None,
                     ref_price: float | None) -> tuple[float, float | None, str]:
        """Amount and price rounded to the market's precision; min amount / min cost checked.
        Returns (amount, price, skip reason or '')."""
        import ccxt

        markets = self._retry(self.ex.load_markets)
        m = markets.get(symbol)
        if m is None:
            return amount, price, f"unknown market {symbol} on {self.ex.id}"
        try:
            amt = float(self.ex.amount_to_precision(symbol, amount))
        except ccxt.InvalidOrder:
            amt = 0.0
        px = None if price is None else float(self.ex.price_to_precision(symbol, price))
        limits = m.get("limits") or {}
        min_amt = (limits.get("amount") or {}).get("min")
        if amt <= 0 or (min_amt is not None and amt < float(min_amt)):
            return amt, px, f"below the exchange's minimum amount {min_amt} {m.get('base', '')}: skipped"
        ref = px if px is not None else ref_price
        min_cost = (limits.get("cost") or {}).get("min")
        if ref is not None and min_cost is not None and amt * float(ref) < float(min_cost):
            return amt, px, (f"below the exchange's minimum order value {min_cost} {m.get('quote', '')} "
                             f"({amt * float(ref):.4g}): skipped")
        return amt, px, ""

    def _lookup(self, symbol: str, cid: str) -> Order | None:
        import ccxt

        try:
            raw = self.ex.fetch_order(cid, symbol, {"clientOrderId": cid})
        except ccxt.OrderNotFound:
            return None
        o = self._order(raw)
        if o.filled > 0 and not (raw.get("fee") or raw.get("fees")):
            # an order query carries no fills (Binance): the fee comes from the account's trades of it
            trades = self.ex.fetch_order_trades(o.id, symbol)
            fees = [t["fee"] for t in trades if t.get("fee")]
            base = symbol.partition("/")[0]
            o = replace(o, fee=quote_fee(fees, symbol, o.price),
                        fee_base=float(sum(float(f.get("cost") or 0.0) for f in fees if f.get("currency") == base)))
        return o

    @staticmethod
    def _order(o: dict) -> Order:
        fee = o.get("fee") or {}
        fees = o.get("fees") or ([fee] if fee else [])
        price = o.get("average") or o.get("price")
        sym = str(o.get("symbol") or "")
        fee_cost = quote_fee(fees, sym, None if price is None else float(price))
        base = sym.partition("/")[0]
        fee_base = float(sum(float(f.get("cost") or 0.0) for f in fees if f.get("currency") == base))
        return Order(id=str(o.get("id") or ""), clientOrderId=str(o.get("clientOrderId") or ""),
                     symbol=str(o.get("symbol")), side=str(o.get("side")), type=str(o.get("type")),
                     amount=float(o.get("amount") or 0.0), price=None if price is None else float(price),
                     status=str(o.get("status") or "open"), filled=float(o.get("filled") or 0.0), fee=fee_cost,
                     ts=int(o.get("timestamp") or 0), fee_base=fee_base)


def quote_fee(fees: list[dict], symbol: str, price: float | None) -> float:
    """The fees of a fill in the QUOTE currency: a fee charged in the base asset (Binance takes it from
    what a buy receives) is converted at the fill price; other currencies (BNB) cannot be and count 0."""
    base, _, quote = symbol.partition("/")
    quote = quote.split(":")[0]
    total = 0.0
    for f in fees:
        cost = float(f.get("cost") or 0.0)
        cur = f.get("currency")
        if cur in (None, quote):
            total += cost
        elif cur == base and price:
            total += cost * price
        elif cost:
            log.warning("fee of %s in %s cannot be valued in %s: not booked", symbol, cur, quote)
    return total


def type_name(exc: BaseException | None) -> str:
    return type(exc).__name__ if exc is not None else "no error"


def _short(exc: BaseException) -> str:
    """The exchange's message without anything that could echo request parameters."""
    msg = str(exc)
    for marker in ("signature=", "apiKey", "X-MBX-APIKEY"):
        if marker in msg:
            return "exchange rejected the order"
    return msg[:200]
