"""RiskManager: position sizing, stops, daily-loss kill switch and cooldown as a thin Python view over
the kernel's params/state arrays, so the live Executor, the paper Executor and the fast backtester
apply the very same rules (core/execution/kernel.py holds the arithmetic)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from core.execution import kernel as K


@dataclass(frozen=True, slots=True)
class RiskStatus:
    kill_switch: bool
    kill_switch_reset: str  # manual | next_day
    cooldown_bars: int  # decisions still refused after a stop
    day_start_equity: float
    stops: int
    kills: int
    refused: int
    rejected: int


class RiskManager:
    def __init__(self, params: np.ndarray, state: np.ndarray) -> None:
        if params.shape != (K.PARAM_SIZE,) or state.shape != (K.STATE_SIZE,):
            raise ValueError("RiskManager needs kernel params and state arrays (kernel.make_params/new_state)")
        self.params = params
        self.state = state

    @classmethod
    def from_config(cls, execution, risk, state: np.ndarray) -> RiskManager:
        return cls(K.params_from_config(execution, risk), state)

    def size(self, signal: float, vol: float = math.nan) -> float:
        """Target fraction of equity for a signal in [-1, 1] (NaN = hold), before kill/cooldown gating."""
        return float(K.size_target(self.state, self.params, float(signal), float(vol)))

    def gate(self, target: float) -> float:
        """The target, or NaN when the kill switch / a cooldown refuses it (only 0 passes then)."""
        return float(K.gate_target(self.state, float(target)))

    def order_qty(self, target: float, price: float) -> float:
        """Signed base quantity that moves the position to ``target`` at ``price`` (0: no trade)."""
        return float(K.order_for_target(self.state, self.params, float(target), float(price)))

    def check_stops(self, o: float, h: float, low: float) -> tuple[float, str] | None:
        """(reference exit price, 'stop_loss' | 'take_profit') when this bar hits a level, else None."""
        px, why = K.stop_exit(self.state, self.params, float(o), float(h), float(low))
        return None if why == 0 else (float(px), K.REASONS[int(why)])

    def start_cooldown(self) -> None:
        self.state[K.S_STOPS] += 1.0
        self.state[K.S_COOLDOWN] = self.params[K.P_COOLDOWN]

    def tick_cooldown(self) -> None:
        if self.state[K.S_COOLDOWN] > 0:
            self.state[K.S_COOLDOWN] -= 1.0

    def new_bar(self, ts_ms: int) -> None:
        """UTC-day rollover: the day's starting equity, the next-day kill switch reset."""
        K.roll_day(self.state, self.params, float(ts_ms))

    def check_daily_loss(self, equity: float) -> bool:
        """True when this equity trips the kill switch now."""
        return bool(K.check_kill(self.state, self.params, float(equity)))

    @property
    def kill_switch(self) -> bool:
        return bool(self.state[K.S_KILL])

    @property
    def cooldown(self) -> int:
        return int(self.state[K.S_COOLDOWN])

    def reset(self) -> None:
        """Manual kill-switch reset; today's loss is measured from the equity now."""
        K.reset_kill(self.state)

    def status(self) -> RiskStatus:
        s = self.state
        return RiskStatus(
            kill_switch=self.kill_switch,
            kill_switch_reset="next_day" if self.params[K.P_KILL_RESET_NEXT_DAY] else "manual",
            cooldown_bars=self.cooldown, day_start_equity=float(s[K.S_DAY_START_EQ]),
            stops=int(s[K.S_STOPS]), kills=int(s[K.S_KILLS]), refused=int(s[K.S_REFUSED]),
            rejected=int(s[K.S_REJECTED]))
