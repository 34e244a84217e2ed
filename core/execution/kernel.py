"""Per-bar paper execution and risk arithmetic, compiled with numba.

ONE implementation serves both backtest modes: the event-mode Executor calls ``step`` once per closed
bar, the fast backtester calls ``simulate`` which runs the same ``step`` for every bar inside njit.

Everything lives in two small float64 arrays so the compiled code needs no Python objects:

* ``params`` (``P_*`` indices, built by ``make_params``): fee and slippage rates, fill model, sizing,
  stops, daily-loss limit, cooldown.
* ``state`` (``S_*`` indices, built by ``new_state``): cash, signed position (base units), average
  entry price, realised PnL, fees, kill switch, cooldown, the pending next-open target, counters.

Semantics (docs/INTERFACES.md, README "Execution and risk"):

* A decision at the CLOSE of bar t is a ``signal`` in [-1, 1] (NaN = HOLD: no order). Sizing turns it
  into a target fraction of equity: ``signal * size`` where size is ``fraction`` (fixed_fraction) or
  ``target_vol_annual / vol[t]`` (volatility_target), capped at ``max_position_fraction``. Spot is
  long-only unless ``allow_short``: negative signals become 0 (flat).
* ``fill_at=next_open``: the order for that target fills at bar t+1's OPEN; ``last_price``: at bar t's
  CLOSE. Buys pay ``ref * (1 + slippage)``, sells receive ``ref * (1 - slippage)``; the taker fee is
  ``fee_rate * |qty| * fill_price`` (in quote currency), paid from cash.
* Orders are for the difference between the target and the current position, marked at the reference
  price. Changes smaller than ``min_trade_fraction`` of equity are skipped (except a full flatten).
  A buy that cash (incl. fee) cannot pay for is SIZED DOWN to what cash can pay; if that leaves less than
  the minimum trade it is rejected (counted in ``S_REJECTED``).
* Stops (on the average entry price, which includes slippage): while a position is open, each bar's
  low/high are checked: stop-loss first (conservative when both are touched), then take-profit. The
  exit fills at the stop level, or at the OPEN when the bar gaps through it, with slippage and fee.
  After a stop, entries are refused for ``cooldown_bars`` decisions, starting with the stop bar's own.
* Daily loss: the UTC day's starting equity is the equity at the previous bar's close when the first
  bar of a new day arrives. When the equity at a close is more than ``max_daily_loss_pct`` below it,
  the kill switch trips: the position is flattened (with the same fill model as decisions) and only
  flattening targets are accepted until ``reset_kill`` (manual) or, with ``kill_reset_next_day``, the
  first bar of the next UTC day.

Order of work inside one bar: day rollover -> pending next-open order at the open -> stops against
low/high -> mark at the close -> kill switch -> the decision -> cooldown countdown -> mark.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from core.types import timeframe_ms

# ---------------------------------------------------------------- params indices
P_FEE = 0  # taker fee rate (bps / 1e4)
P_SLIP = 1  # slippage rate (bps / 1e4)
P_NEXT_OPEN = 2  # 1: fill at next bar's open, 0: at this bar's close
P_ALLOW_SHORT = 3  # 1: signals in [-1, 1]; 0: spot long-only
P_SIZING = 4  # 0 fixed_fraction, 1 volatility_target
P_FRACTION = 5
P_TARGET_VOL = 6
P_MAX_POS = 7
P_STOP_LOSS = 8  # fraction, 0 = off
P_TAKE_PROFIT = 9  # fraction, 0 = off
P_MAX_DAILY_LOSS = 10  # fraction
P_COOLDOWN = 11  # bars
P_KILL_RESET_NEXT_DAY = 12  # 1: auto-reset at the next UTC day
P_MIN_TRADE = 13  # skip rebalances smaller than this fraction of equity
PARAM_SIZE = 14

# ---------------------------------------------------------------- state indices
S_CASH = 0
S_POS = 1  # signed base units
S_ENTRY = 2  # average entry price of the open position (0 when flat)
S_REALISED = 3  # realised PnL, before fees
S_FEES = 4
S_TURNOVER = 5  # traded notional in quote currency
S_TRADES = 6  # fills
S_DAY = 7  # UTC day number of the last bar (-1 before the first)
S_DAY_START_EQ = 8
S_KILL = 9  # 1 while the kill switch is tripped
S_COOLDOWN = 10  # decisions still refused after a stop
S_PENDING = 11  # target fraction to fill at the next open (NaN: none)
S_PENDING_REASON = 12
S_EQUITY = 13  # equity at the last close
S_STOPS = 14
S_REJECTED = 15
S_KILLS = 16
S_LAST_PRICE = 17
S_REFUSED = 18  # decisions refused by the kill switch / cooldown
STATE_SIZE = 19

# ---------------------------------------------------------------- fill records
F_TS = 0
F_SIDE = 1  # +1 buy, -1 sell
F_QTY = 2  # base units, > 0
F_PRICE = 3  # fill price incl. slippage
F_FEE = 4  # quote currency
F_REASON = 5  # R_* code
F_CASH = 6  # cash after the fill
F_POS = 7  # position after the fill
F_REALISED = 8  # realised PnL after the fill
FILL_SIZE = 9
MAX_FILLS_PER_BAR = 4  # open fill, stop, kill flatten, close fill

R_SIGNAL = 1
R_STOP_LOSS = 2
R_TAKE_PROFIT = 3
R_KILL_SWITCH = 4
REASONS: dict[int, str] = {
    R_SIGNAL: "signal",
    R_STOP_LOSS: "stop_loss",
    R_TAKE_PROFIT: "take_profit",
    R_KILL_SWITCH: "kill_switch",
}

DAY_MS = 86_400_000


# ---------------------------------------------------------------- construction (Python)


def make_params(
    *,
    taker_fee_bps: float = 10.0,
    slippage_bps: float = 2.0,
    fill_at: str = "next_open",
    allow_short: bool = False,
    sizing: str = "fixed_fraction",
    fraction: float = 0.5,
    target_vol_annual: float = 0.5,
    max_position_fraction: float = 1.0,
    stop_loss_pct: float = 0.0,
    take_profit_pct: float = 0.0,
    max_daily_loss_pct: float = 0.05,
    cooldown_bars: int = 0,
    kill_switch_reset: str = "manual",
    min_trade_fraction: float = 0.01,
) -> np.ndarray:
    """The params array; every value checked, a clear error naming a bad one."""
    if fill_at not in ("next_open", "last_price"):
        raise ValueError(f"fill_at={fill_at!r}: allowed next_open, last_price")
    if sizing not in ("fixed_fraction", "volatility_target"):
        raise ValueError(f"sizing={sizing!r}: allowed fixed_fraction, volatility_target")
    if kill_switch_reset not in ("manual", "next_day"):
        raise ValueError(f"kill_switch_reset={kill_switch_reset!r}: allowed manual, next_day")
    checks = {
        "taker_fee_bps": (taker_fee_bps, 0.0, 1000.0),
        "slippage_bps": (slippage_bps, 0.0, 1000.0),
        "fraction": (fraction, 0.0, 1.0),
        "max_position_fraction": (max_position_fraction, 0.0, 1.0),
        "stop_loss_pct": (stop_loss_pct, 0.0, 0.999999),
        "take_profit_pct": (take_profit_pct, 0.0, 1e6),
        "max_daily_loss_pct": (max_daily_loss_pct, 1e-12, 0.999999),
        "min_trade_fraction": (min_trade_fraction, 0.0, 1.0),
        "target_vol_annual": (target_vol_annual, 1e-12, 1e6),
        "cooldown_bars": (float(cooldown_bars), 0.0, 1e9),
    }
    for name, (v, lo, hi) in checks.items():
        if not (lo <= float(v) <= hi):
            raise ValueError(f"{name}={v!r} must be within [{lo}, {hi}]")
    p = np.zeros(PARAM_SIZE, dtype=np.float64)
    p[P_FEE] = taker_fee_bps / 1e4
    p[P_SLIP] = slippage_bps / 1e4
    p[P_NEXT_OPEN] = 1.0 if fill_at == "next_open" else 0.0
    p[P_ALLOW_SHORT] = 1.0 if allow_short else 0.0
    p[P_SIZING] = 0.0 if sizing == "fixed_fraction" else 1.0
    p[P_FRACTION] = fraction
    p[P_TARGET_VOL] = target_vol_annual
    p[P_MAX_POS] = max_position_fraction
    p[P_STOP_LOSS] = stop_loss_pct
    p[P_TAKE_PROFIT] = take_profit_pct
    p[P_MAX_DAILY_LOSS] = max_daily_loss_pct
    p[P_COOLDOWN] = float(int(cooldown_bars))
    p[P_KILL_RESET_NEXT_DAY] = 1.0 if kill_switch_reset == "next_day" else 0.0
    p[P_MIN_TRADE] = min_trade_fraction
    return p


def params_from_config(execution, risk) -> np.ndarray:
    """params from the validated ``execution`` and ``risk`` config sections (core.config)."""
    return make_params(
        taker_fee_bps=execution.taker_fee_bps,
        slippage_bps=execution.slippage_bps,
        fill_at=execution.fill_at,
        allow_short=execution.allow_short,
        sizing=risk.sizing,
        fraction=risk.fraction,
        target_vol_annual=risk.target_vol_annual,
        max_position_fraction=risk.max_position_fraction,
        stop_loss_pct=risk.stop_loss_pct,
        take_profit_pct=risk.take_profit_pct,
        max_daily_loss_pct=risk.max_daily_loss_pct,
        cooldown_bars=risk.cooldown_bars,
        kill_switch_reset=risk.kill_switch_reset,
        min_trade_fraction=execution.min_trade_fraction,
    )


def new_state(initial_cash: float) -> np.ndarray:
    if not (initial_cash > 0 and math.isfinite(initial_cash)):
        raise ValueError(f"initial_cash={initial_cash!r} must be a positive number")
    s = np.zeros(STATE_SIZE, dtype=np.float64)
    s[S_CASH] = initial_cash
    s[S_DAY] = -1.0
    s[S_DAY_START_EQ] = initial_cash
    s[S_PENDING] = np.nan
    s[S_EQUITY] = initial_cash
    return s


# ---------------------------------------------------------------- compiled building blocks


@njit(cache=True, inline="always")
def fill_price(ref: float, qty: float, slip: float) -> float:
    """Buys (qty > 0) pay more, sells receive less."""
    return ref * (1.0 + slip) if qty > 0.0 else ref * (1.0 - slip)


@njit(cache=True, inline="always")
def fee_for(qty: float, price: float, fee_rate: float) -> float:
    return abs(qty) * price * fee_rate


@njit(cache=True)
def apply_fill(state: np.ndarray, qty: float, price: float, fee: float) -> None:
    """Book one fill (qty signed: + buy, - sell) at ``price`` with ``fee``: cash, position, average
    entry price (average-cost method), realised PnL, fees, turnover. Used for paper fills here and for
    real exchange fills by the live Executor."""
    pos = state[S_POS]
    entry = state[S_ENTRY]
    state[S_CASH] -= qty * price + fee
    if pos == 0.0 or (pos > 0.0) == (qty > 0.0):
        new_abs = abs(pos) + abs(qty)
        state[S_ENTRY] = (abs(pos) * entry + abs(qty) * price) / new_abs
    else:
        closing = min(abs(qty), abs(pos))
        sign = 1.0 if pos > 0.0 else -1.0
        state[S_REALISED] += closing * (price - entry) * sign
        if abs(qty) > abs(pos):
            state[S_ENTRY] = price  # flipped: the rest opens at this price
        elif abs(qty) == abs(pos):
            state[S_ENTRY] = 0.0
    new_pos = pos + qty
    if new_pos == 0.0:
        state[S_ENTRY] = 0.0
    state[S_POS] = new_pos
    state[S_FEES] += fee
    state[S_TURNOVER] += abs(qty) * price
    state[S_TRADES] += 1.0


@njit(cache=True)
def order_for_target(state: np.ndarray, params: np.ndarray, target: float, ref: float) -> float:
    """Signed quantity that moves the position to ``target`` (fraction of equity marked at ``ref``);
    0.0 when no trade is due. Buys are sized down to what cash can pay (incl. fee)."""
    pos = state[S_POS]
    cash = state[S_CASH]
    equity = cash + pos * ref
    if target == 0.0 or equity <= 0.0:
        return -pos  # full flatten is always allowed and exact
    delta = target * equity / ref - pos
    min_notional = params[P_MIN_TRADE] * equity
    if abs(delta) * ref < min_notional or delta == 0.0:
        return 0.0
    if delta > 0.0:
        px = ref * (1.0 + params[P_SLIP])
        affordable = cash / (px * (1.0 + params[P_FEE])) if cash > 0.0 else 0.0
        if delta > affordable:
            delta = affordable
            if delta * ref < min_notional or delta <= 0.0:
                state[S_REJECTED] += 1.0
                return 0.0
    return delta


@njit(cache=True)
def _record(fills: np.ndarray, nf: int, state: np.ndarray, ts: float, qty: float, px: float,
            fee: float, reason: int) -> int:
    fills[nf, F_TS] = ts
    fills[nf, F_SIDE] = 1.0 if qty > 0.0 else -1.0
    fills[nf, F_QTY] = abs(qty)
    fills[nf, F_PRICE] = px
    fills[nf, F_FEE] = fee
    fills[nf, F_REASON] = reason
    fills[nf, F_CASH] = state[S_CASH]
    fills[nf, F_POS] = state[S_POS]
    fills[nf, F_REALISED] = state[S_REALISED]
    return nf + 1


@njit(cache=True)
def execute(state: np.ndarray, params: np.ndarray, qty: float, ref: float, ts: float, reason: int,
            fills: np.ndarray, nf: int) -> int:
    """Paper market order of ``qty`` at reference price ``ref`` (slippage, taker fee); returns the new
    number of fill records."""
    if qty == 0.0:
        return nf
    px = fill_price(ref, qty, params[P_SLIP])
    fee = fee_for(qty, px, params[P_FEE])
    apply_fill(state, qty, px, fee)
    return _record(fills, nf, state, ts, qty, px, fee, reason)


@njit(cache=True)
def stop_exit(state: np.ndarray, params: np.ndarray, o: float, h: float, low: float) -> tuple[float, int]:
    """(reference exit price, reason) when this bar hits the stop-loss or take-profit of the open
    position, else (nan, 0). Stop-loss is checked first; a gap through a level exits at the open."""
    pos = state[S_POS]
    if pos == 0.0:
        return np.nan, 0
    entry = state[S_ENTRY]
    sl = params[P_STOP_LOSS]
    tp = params[P_TAKE_PROFIT]
    if pos > 0.0:
        if sl > 0.0:
            lvl = entry * (1.0 - sl)
            if o <= lvl:
                return o, R_STOP_LOSS
            if low <= lvl:
                return lvl, R_STOP_LOSS
        if tp > 0.0:
            lvl = entry * (1.0 + tp)
            if o >= lvl:
                return o, R_TAKE_PROFIT
            if h >= lvl:
                return lvl, R_TAKE_PROFIT
    else:
        if sl > 0.0:
            lvl = entry * (1.0 + sl)
            if o >= lvl:
                return o, R_STOP_LOSS
            if h >= lvl:
                return lvl, R_STOP_LOSS
        if tp > 0.0:
            lvl = entry * (1.0 - tp)
            if o <= lvl:
                return o, R_TAKE_PROFIT
            if low <= lvl:
                return lvl, R_TAKE_PROFIT
    return np.nan, 0


@njit(cache=True)
def size_target(state: np.ndarray, params: np.ndarray, signal: float, vol: float) -> float:
    """Target fraction of equity for ``signal`` (NaN stays NaN = no order). Volatility targeting with
    an unknown (NaN/<=0) volatility sizes to 0: no entries before the volatility window has filled."""
    if signal != signal:
        return np.nan
    s = min(1.0, max(-1.0, signal))
    if s < 0.0 and params[P_ALLOW_SHORT] == 0.0:
        s = 0.0
    if params[P_SIZING] == 0.0:
        size = params[P_FRACTION]
    elif vol > 0.0 and vol == vol:
        size = params[P_TARGET_VOL] / vol
    else:
        size = 0.0
    return s * min(size, params[P_MAX_POS])


@njit(cache=True)
def gate_target(state: np.ndarray, target: float) -> float:
    """While the kill switch or a cooldown is active only flattening (target 0) is accepted."""
    if target != target:
        return target
    if (state[S_KILL] != 0.0 or state[S_COOLDOWN] > 0.0) and target != 0.0:
        state[S_REFUSED] += 1.0
        return np.nan
    return target


@njit(cache=True)
def roll_day(state: np.ndarray, params: np.ndarray, ts: float) -> None:
    day = math.floor(ts / DAY_MS)
    if day != state[S_DAY]:
        state[S_DAY] = day
        state[S_DAY_START_EQ] = state[S_EQUITY]
        if params[P_KILL_RESET_NEXT_DAY] != 0.0:
            state[S_KILL] = 0.0


@njit(cache=True)
def check_kill(state: np.ndarray, params: np.ndarray, equity: float) -> bool:
    """Trip the kill switch when equity is more than max_daily_loss below the day's start."""
    if state[S_KILL] == 0.0 and equity < state[S_DAY_START_EQ] * (1.0 - params[P_MAX_DAILY_LOSS]):
        state[S_KILL] = 1.0
        state[S_KILLS] += 1.0
        return True
    return False


@njit(cache=True)
def reset_kill(state: np.ndarray) -> None:
    """Manual reset: trading resumes and today's loss is measured from the equity now."""
    state[S_KILL] = 0.0
    state[S_DAY_START_EQ] = state[S_EQUITY]


# ---------------------------------------------------------------- one bar, and the whole loop


@njit(cache=True)
def step(state: np.ndarray, params: np.ndarray, ts: float, o: float, h: float, low: float, c: float,
         signal: float, vol: float, fills: np.ndarray) -> int:
    """Process one CLOSED bar (open time ``ts`` ms) and the decision taken at its close.
    Writes up to MAX_FILLS_PER_BAR rows into ``fills`` and returns how many."""
    nf = 0
    roll_day(state, params, ts)
    next_open = params[P_NEXT_OPEN] != 0.0

    # 1. the order decided at the previous close fills at this open
    pend = state[S_PENDING]
    if pend == pend:
        state[S_PENDING] = np.nan
        qty = order_for_target(state, params, pend, o)
        nf = execute(state, params, qty, o, ts, int(state[S_PENDING_REASON]), fills, nf)

    # 2. stops against this bar's range
    px, why = stop_exit(state, params, o, h, low)
    if why != 0:
        nf = execute(state, params, -state[S_POS], px, ts, why, fills, nf)
        state[S_STOPS] += 1.0
        state[S_COOLDOWN] = params[P_COOLDOWN]

    # 3. mark at the close; daily loss limit
    equity = state[S_CASH] + state[S_POS] * c
    state[S_EQUITY] = equity
    if check_kill(state, params, equity) and state[S_POS] != 0.0:
        if next_open:
            state[S_PENDING] = 0.0
            state[S_PENDING_REASON] = R_KILL_SWITCH
        else:
            nf = execute(state, params, -state[S_POS], c, ts, R_KILL_SWITCH, fills, nf)

    # 4. the decision at this close
    target = gate_target(state, size_target(state, params, signal, vol))
    if target == target:
        if next_open:
            if not (state[S_KILL] != 0.0 and state[S_PENDING] == state[S_PENDING]):
                state[S_PENDING] = target
                state[S_PENDING_REASON] = R_SIGNAL
        else:
            qty = order_for_target(state, params, target, c)
            nf = execute(state, params, qty, c, ts, R_SIGNAL, fills, nf)

    if state[S_COOLDOWN] > 0.0:  # the stop bar's own decision counts as the first refused
        state[S_COOLDOWN] -= 1.0
    state[S_EQUITY] = state[S_CASH] + state[S_POS] * c
    state[S_LAST_PRICE] = c
    return nf


@njit(cache=True)
def simulate(ts: np.ndarray, o: np.ndarray, h: np.ndarray, low: np.ndarray, c: np.ndarray,
             signal: np.ndarray, vol: np.ndarray, params: np.ndarray, state: np.ndarray
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``step`` over every bar. Returns (equity at each close, position after each bar, fills [k,
    FILL_SIZE]); ``state`` is updated in place so a run can continue bar by bar afterwards.
    Inputs must be validated first (``check_bars``): float64, equal lengths, finite positive prices."""
    n = c.shape[0]
    equity = np.empty(n)
    position = np.empty(n)
    cap = 64 + n // 8
    out = np.empty((cap, FILL_SIZE))
    buf = np.empty((MAX_FILLS_PER_BAR, FILL_SIZE))
    k = 0
    for i in range(n):
        nf = step(state, params, float(ts[i]), o[i], h[i], low[i], c[i], signal[i], vol[i], buf)
        if nf > 0:
            if k + nf > cap:
                cap = cap * 2 + nf
                bigger = np.empty((cap, FILL_SIZE))
                bigger[:k] = out[:k]
                out = bigger
            out[k:k + nf] = buf[:nf]
            k += nf
        equity[i] = state[S_EQUITY]
        position[i] = state[S_POS]
    return equity, position, out[:k].copy()


# ---------------------------------------------------------------- Python helpers


def check_bars(ts, o, h, low, c, signal, vol) -> tuple[np.ndarray, ...]:
    """Validated float64 contiguous copies/views; a clear error naming what is wrong."""
    arrays = {"ts": ts, "open": o, "high": h, "low": low, "close": c, "signal": signal, "vol": vol}
    out = {k: np.ascontiguousarray(v, dtype=np.float64) for k, v in arrays.items()}
    n = out["close"].shape[0]
    for k, v in out.items():
        if v.ndim != 1 or v.shape[0] != n:
            raise ValueError(f"{k}: expected a 1-d array of {n} values, got shape {v.shape}")
    for k in ("open", "high", "low", "close"):
        bad = ~(np.isfinite(out[k]) & (out[k] > 0))
        if bad.any():
            i = int(np.argmax(bad))
            raise ValueError(f"{k}[{i}]={out[k][i]!r}: prices must be finite and > 0")
    if n > 1 and not (np.diff(out["ts"]) > 0).all():
        i = int(np.argmax(np.diff(out["ts"]) <= 0)) + 1
        raise ValueError(f"ts[{i}] is not after ts[{i - 1}]: bars must be in increasing time order")
    if (np.abs(out["signal"][np.isfinite(out["signal"])]) > 1).any():
        raise ValueError("signal values must be within [-1, 1] (NaN = hold)")
    return tuple(out.values())


def run(ts, o, h, low, c, signal, vol=None, *, params: np.ndarray, initial_cash: float = 10_000.0,
        state: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Validate and simulate. Returns (equity, position, fills, final state)."""
    if vol is None:
        vol = np.full(np.shape(c), np.nan)
    arrs = check_bars(ts, o, h, low, c, signal, vol)
    st = new_state(initial_cash) if state is None else state
    equity, position, fills = simulate(*arrs, params, st)  # type: ignore[call-arg]  # numba dispatcher stub
    return equity, position, fills, st


@njit(cache=True)
def vol_at(close: np.ndarray, t: int, window: int, bars_per_year: float) -> float:
    """Annualised volatility at bar t from the ``window`` log returns ending at t (closes up to t only:
    no look-ahead); NaN before ``window`` returns exist. The live Executor calls this on its recent
    closes and the fast backtester through ``realised_vol``: one formula, identical numbers."""
    if window < 2 or t < window:
        return np.nan
    mean = 0.0
    for j in range(t - window + 1, t + 1):
        mean += math.log(close[j] / close[j - 1])
    mean /= window
    ss = 0.0
    for j in range(t - window + 1, t + 1):
        d = math.log(close[j] / close[j - 1]) - mean
        ss += d * d
    return math.sqrt(ss / (window - 1) * bars_per_year)


@njit(cache=True)
def _realised_vol(close: np.ndarray, window: int, bars_per_year: float) -> np.ndarray:
    out = np.empty(close.shape[0])
    for t in range(close.shape[0]):
        out[t] = vol_at(close, t, window, bars_per_year)
    return out


def realised_vol(close: np.ndarray, window: int, bars_per_year: float) -> np.ndarray:
    """``vol_at`` for every bar (NaN until ``window`` returns exist)."""
    return _realised_vol(np.ascontiguousarray(close, dtype=np.float64), int(window), float(bars_per_year))


def bars_per_year(timeframe: str) -> float:
    return 365.0 * DAY_MS / timeframe_ms(timeframe)


def signal_for(action: str, target_position: float | None = None) -> float:
    """The kernel's signal for a Decision: BUY -> +1, SELL -> -1 (flat on spot: the kernel maps negative
    signals to 0 unless allow_short), HOLD -> NaN (no order). Only the DIRECTION is used: the size comes
    from the risk sizing inside the kernel, exactly as in the fast backtester (Decision.target_position is
    already a sized fraction for display and must not be sized twice)."""
    a = str(action)
    if a == "BUY":
        return 1.0
    if a == "SELL":
        return -1.0
    if a == "HOLD":
        return float("nan")
    raise ValueError(f"action {action!r}: expected BUY, SELL or HOLD")
