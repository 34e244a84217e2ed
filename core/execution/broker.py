"""Brokers with one ccxt-shaped interface (create_order / cancel_order / fetch_order / fetch_open_orders),
so the paper and the exchange account are interchangeable: PaperBroker (paper.py), CcxtBroker
(ccxt_broker.py) and AlpacaBroker (alpaca_broker.py: stocks, Alpaca's paper account unless live), plus the deterministic clientOrderId every order carries."""

from __future__ import annotations

import hashlib


def client_order_id(decision_id: str, leg: str = "0") -> str:
    """Deterministic clientOrderId for a decision (and an optional leg): the same decision always maps to
    the same id, so a retried submission can be recognised instead of doubled. 32 characters of
    [a-z0-9-], within every major exchange's limit (Binance: 36, [A-Za-z0-9-_])."""
    if not decision_id:
        raise ValueError("client_order_id needs a non-empty decision id")
    digest = hashlib.sha256(f"{decision_id}|{leg}".encode()).hexdigest()
    return f"moe-{digest[:28]}"


def order_key(account: str, symbol: str, timeframe: str, bar_ts: int, action: str) -> str:
    """The identity of one order intent: ONLY (account, symbol, timeframe, bar ts, action), nothing of
    the process (no run id, no counter, no clock), so a bar re-processed after a crash or restart maps
    to the same key, hence the same clientOrderId, and the exchange lookup finds the first order."""
    return f"{account}|{symbol}|{timeframe}|{int(bar_ts)}|{action}"


from core.execution.alpaca_broker import AlpacaBroker, alpaca_mode  # noqa: E402
from core.execution.ccxt_broker import BrokerError, CcxtBroker, LiveTradingRefused, check_live_allowed  # noqa: E402
from core.execution.paper import OrderError, PaperBroker  # noqa: E402

__all__ = ["AlpacaBroker", "BrokerError", "CcxtBroker", "LiveTradingRefused", "OrderError", "PaperBroker",
           "alpaca_mode", "check_live_allowed", "client_order_id", "order_key"]
