"""Which account the engine trades, decided once at start-up from config, the command line and the
environment (nothing at runtime can change it: no API route or UI control switches modes).

    paper    the in-process paper account (execution.broker: paper; every replay)
    testnet  an exchange's test account: ccxt sandbox (execution.sandbox: true) or Alpaca's paper account
    live     real money: config execution.live: true AND the --live flag AND keys in the environment

``execution.live: true`` without ``--live`` is never live: with the paper broker it paper-trades (and
says "paper"); with an exchange broker it is refused, naming the missing switch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from core.config import Secrets
from core.execution.alpaca_broker import alpaca_mode
from core.execution.ccxt_broker import LiveTradingRefused, check_live_allowed, require_live_switches

MODES = ("paper", "testnet", "live")


@dataclass(frozen=True, slots=True)
class TradingMode:
    mode: str  # paper | testnet | live (replays: "replay", never an exchange)
    broker: str  # paper | paper_exchange | ccxt | alpaca

    @property
    def label(self) -> str:
        """The banner text: what the account is, in capitals."""
        return {"live": "LIVE", "testnet": "TESTNET", "replay": "REPLAY"}.get(self.mode, "PAPER")


def trading_mode(execution: Any, *, live_flag: bool, secrets: Secrets, stock: bool = False,
                 replay: bool = False) -> TradingMode:
    """The mode and broker, or LiveTradingRefused naming every missing switch. ``stock``: the stream is
    an Alpaca stock (an exchange broker then means Alpaca)."""
    name = str(execution.broker)
    if replay:
        if live_flag:
            raise LiveTradingRefused("live trading refused: --live cannot be combined with a replay "
                                     "(a replay trades a paper account on stored data)")
        return TradingMode("replay", "paper")
    if name in ("paper", "paper_exchange"):
        if live_flag:
            missing = [f"execution.broker is {name} (set ccxt or alpaca)"]
            try:
                keys = secrets.has_alpaca_keys if stock else secrets.has_exchange_keys
                require_live_switches(execution, live_flag, keys, "exchange keys (MOE_EXCHANGE_API_KEY, "
                                      "MOE_EXCHANGE_SECRET)" if not stock else "Alpaca keys")
            except LiveTradingRefused as exc:
                missing.append(str(exc).split(": ", 1)[1])
            raise LiveTradingRefused("live trading refused: " + "; ".join(missing))
        return TradingMode("paper", name)
    if name == "alpaca" or stock:
        m = alpaca_mode(execution, live_flag, secrets)
        return TradingMode("live" if m == "live" else "testnet", "alpaca")
    m = check_live_allowed(execution, live_flag, secrets)
    return TradingMode("live" if m == "live" else "testnet", "ccxt")
