"""Outcome tracking: the feedback loop from inference to training and to the dashboard's accuracy.

Every expert output (``predictions`` table, core/audit.py) and every decision carries a horizon h in
bars. Once the candle opening h bars after the prediction's bar is STORED (the store holds closed
candles only), the realised forward log return r = log(close[ts + h bars] / close[ts]) is known and
the outcome matures: realised class by the label rule (core/labels.py: up if r > dead_zone, down
if r < -dead_zone, else flat). Nothing matures earlier, so no outcome is ever
known before ts + h bars exist (no look-ahead).

Two variants share the metric code (``outcome_metrics``):

* ``OutcomeTracker`` (engine process, owns the writer connection): one vectorised SQL statement
  as-of-joins pending predictions/decisions to stored candles and appends them to ``outcomes``;
  rolling metrics per (expert, horizon) over the last ``window`` matured outcomes. After its first
  scan it reads only rows from a watermark on, so an update costs the same after a day or a year.
* ``LiveOutcomes``: pure in-memory, fed with closed bars and Decisions (the live snapshot; no DB).

The decisions table has no horizon column (core/audit.py): a decision's horizon is the smallest
horizon of the predictions behind it, else ``default_horizon``. Decisions appear as expert "moe".

"Return of the trades it drove": a BUY/SELL decision counts as driven by an expert when the expert
had weight > 0 and its most likely class pointed the same way (up for BUY, down for SELL); the
trade's return is direction * r (a SELL earns -r: the move it avoided or shorted). For "moe" every
BUY/SELL decision counts.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import numpy as np
import pandas as pd

from core.audit import ensure_tables
from core.labels import realised_class
from core.market.calendar import Calendar
from core.scoring import scores
from core.types import Decision, SeriesKey, timeframe_ms

MOE = "moe"  # the fused decision's row name (the gate's name in the checkpoint registry)

OUTCOMES_DDL = """
CREATE TABLE IF NOT EXISTS outcomes (
    run_id VARCHAR NOT NULL, decision_id VARCHAR NOT NULL, expert VARCHAR NOT NULL,
    symbol VARCHAR NOT NULL, ts BIGINT NOT NULL, horizon INTEGER NOT NULL, exit_ts BIGINT NOT NULL,
    entry_close DOUBLE NOT NULL, exit_close DOUBLE NOT NULL, realised_return DOUBLE NOT NULL,
    realised_class INTEGER NOT NULL, p_down DOUBLE, p_flat DOUBLE, p_up DOUBLE, weight DOUBLE,
    action VARCHAR, driven BOOLEAN NOT NULL,
    PRIMARY KEY (run_id, decision_id, expert)
)"""

OUTCOME_COLUMNS = ["run_id", "decision_id", "expert", "symbol", "ts", "horizon", "exit_ts",
                   "entry_close", "exit_close", "realised_return", "realised_class", "p_down",
                   "p_flat", "p_up", "weight", "action", "driven"]


@dataclass(frozen=True, slots=True)
class RollingMetrics:
    """Scores of one (expert, horizon) over its last ``n`` matured outcomes."""

    expert: str
    horizon: int
    n: int
    accuracy: float
    log_loss: float
    brier: float
    ece: float  # top-label expected calibration error
    trades: int  # BUY/SELL decisions it drove among those outcomes
    trade_return: float  # sum of direction * realised log return over those trades
    mean_trade_return: float  # NaN without trades
    last_ts: int  # ts of the newest matured prediction


def trade_direction(action: np.ndarray) -> np.ndarray:
    """BUY +1, SELL -1, anything else 0."""
    a = np.asarray(action, dtype=object)
    return np.where(a == "BUY", 1.0, np.where(a == "SELL", -1.0, 0.0))


def driven_mask(expert: str, action: np.ndarray, probs: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """Which outcomes' trades the expert drove (module docstring)."""
    d = trade_direction(action)
    if expert == MOE:
        return d != 0
    top = np.asarray(probs).argmax(axis=1)
    agree = ((d > 0) & (top == 2)) | ((d < 0) & (top == 0))
    return agree & (np.nan_to_num(np.asarray(weight, dtype=np.float64)) > 0)


def outcome_metrics(expert: str, horizon: int, probs: np.ndarray, realised: np.ndarray,
                    returns: np.ndarray, direction: np.ndarray, driven: np.ndarray,
                    ts: np.ndarray) -> RollingMetrics:
    """Pure: scores of N matured outcomes (probs [N, 3], realised class [N], realised log return [N],
    trade direction [N] (+1/-1/0), driven bool [N], ts [N])."""
    s = scores(probs, realised)
    drv = np.asarray(driven, dtype=bool)
    tr = (np.asarray(direction, dtype=np.float64) * np.asarray(returns, dtype=np.float64))[drv]
    return RollingMetrics(
        expert=expert, horizon=int(horizon), n=int(s["n"]), accuracy=s["accuracy"],
        log_loss=s["log_loss"], brier=s["brier"], ece=s["ece"], trades=int(drv.sum()),
        trade_return=float(tr.sum()), mean_trade_return=float(tr.mean()) if len(tr) else float("nan"),
        last_ts=int(np.max(ts)),
    )


def _window_arrays(df: pd.DataFrame, idx: np.ndarray) -> dict[str, np.ndarray]:
    """The columns outcome_metrics needs, for rows ``idx`` of an outcomes frame."""
    return {"ts": df["ts"].to_numpy(np.int64)[idx],
            "probs": df[["p_down", "p_flat", "p_up"]].to_numpy(np.float64)[idx],
            "realised": df["realised_class"].to_numpy(np.int64)[idx],
            "returns": df["realised_return"].to_numpy(np.float64)[idx],
            "direction": trade_direction(df["action"].to_numpy()[idx]),
            "driven": df["driven"].to_numpy(bool)[idx]}


# ---------------------------------------------------------------- stored variant (DuckDB)

# Every CTE is limited to ts >= $since (the tracker's watermark: all older rows have matured or never
# can), so DuckDB prunes row groups by their ts zone maps and a steady-state update reads only the
# newest rows instead of the whole audit trail.
_PENDING_SQL = """
WITH cs AS (
    SELECT ts, close FROM candles
    WHERE exchange = $exchange AND symbol = $symbol AND timeframe = $tf AND ts >= $since
), last AS (SELECT max(ts) AS last_ts FROM cs),
dh AS (  -- a decision's horizon: the smallest horizon of the outputs behind it
    SELECT run_id, decision_id, min(horizon) AS horizon FROM predictions
    WHERE symbol = $symbol AND ts >= $since GROUP BY run_id, decision_id
),
pending AS (
    SELECT p.run_id, p.decision_id, p.expert, p.symbol, p.ts, p.horizon, p.p_down, p.p_flat, p.p_up,
           p.weight, d.action
    FROM predictions p JOIN decisions d ON d.run_id = p.run_id AND d.id = p.decision_id
    WHERE p.symbol = $symbol AND p.horizon >= 1 AND p.ts >= $since AND d.ts >= $since
    UNION ALL
    SELECT d.run_id, d.id, $moe, d.symbol, d.ts, coalesce(dh.horizon, $default_h), d.p_down,
           d.p_flat, d.p_up, 1.0, d.action
    FROM decisions d LEFT JOIN dh ON dh.run_id = d.run_id AND dh.decision_id = d.id
    WHERE d.symbol = $symbol AND d.ts >= $since
),
todo AS (
    SELECT q.*, q.ts + q.horizon * $bar_ms AS target_ts FROM pending q, last
    WHERE q.ts + q.horizon * $bar_ms <= last.last_ts
      AND NOT EXISTS (SELECT 1 FROM outcomes o WHERE o.ts >= $since AND o.run_id = q.run_id
                      AND o.decision_id = q.decision_id AND o.expert = q.expert)
)
SELECT t.run_id, t.decision_id, t.expert, t.symbol, t.ts, t.horizon, c1.ts AS exit_ts,
       c0.close AS entry_close, c1.close AS exit_close, t.p_down, t.p_flat, t.p_up, t.weight, t.action
FROM todo t
JOIN cs c0 ON c0.ts = t.ts
ASOF JOIN cs c1 ON t.target_ts >= c1.ts
"""

# a market with sessions (stocks): stored bars are session bars, so the exit is the stored bar h ROWS
# after the entry (15:58 + 5 bars -> the next session's 09:33), not h bar lengths of clock time
_PENDING_SESSIONS_SQL = _PENDING_SQL.split("todo AS (")[0].replace(
    "SELECT ts, close FROM candles",
    "SELECT ts, close, row_number() OVER (ORDER BY ts) AS rn FROM candles") + """todo AS (
    SELECT q.* FROM pending q
    WHERE NOT EXISTS (SELECT 1 FROM outcomes o WHERE o.ts >= $since AND o.run_id = q.run_id
                      AND o.decision_id = q.decision_id AND o.expert = q.expert)
)
SELECT t.run_id, t.decision_id, t.expert, t.symbol, t.ts, t.horizon, c1.ts AS exit_ts,
       c0.close AS entry_close, c1.close AS exit_close, t.p_down, t.p_flat, t.p_up, t.weight, t.action
FROM todo t
JOIN cs c0 ON c0.ts = t.ts
JOIN cs c1 ON c1.rn = c0.rn + t.horizon
"""
# the session watermark: the stored bar max_h rows before the newest one
_ROWS_BACK_SQL = """
SELECT ts FROM candles WHERE exchange = $exchange AND symbol = $symbol AND timeframe = $tf AND ts >= $since
ORDER BY ts DESC LIMIT 1 OFFSET $back
"""

# rows of either audit table below a ts (all symbols): if this count changes between two updates, rows
# were written below the watermark (e.g. an event-mode backtest's audit trail) and a full scan follows
_BELOW_SQL = ("SELECT (SELECT count(*) FROM decisions WHERE ts < $t), "
              "(SELECT count(*) FROM predictions WHERE ts < $t)")
_NEWEST_SQL = """
SELECT (SELECT max(ts) FROM candles WHERE exchange = $exchange AND symbol = $symbol AND timeframe = $tf
        AND ts >= $since),
       (SELECT max(horizon) FROM predictions WHERE symbol = $symbol AND ts >= $since)
"""
_FULL = -(2**62)  # "since" of a full scan


class OutcomeTracker:
    """Matures stored predictions/decisions of one series and keeps rolling metrics.

    Call ``update()`` from the engine process (it writes); it is cheap when nothing is due and does not
    grow with the audit trail: after the first (full) scan it reads only rows from a watermark on, the
    oldest ts that may still mature. Rows written later with an older ts are noticed by a count check
    and trigger one full scan. The newest ``window`` outcomes per (expert, horizon) are kept in memory
    and merged with each update (seeded from the table). ``metrics()`` returns an immutable mapping
    swapped by reference (any thread may read it)."""

    def __init__(self, store: Any, key: SeriesKey, dead_zone: float, *, window: int = 500,
                 default_horizon: int = 5, sessions: bool = False) -> None:
        if not dead_zone >= 0:
            raise ValueError(f"dead_zone must be >= 0, got {dead_zone!r}")
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        self.store = store
        self.key = key
        self.dead_zone = float(dead_zone)
        self.window = int(window)
        self.default_horizon = int(default_horizon)
        self.bar_ms = timeframe_ms(key.timeframe)
        # True for a market with sessions: horizons count stored session bars (see _PENDING_SESSIONS_SQL)
        self.sessions = bool(sessions)
        self._metrics: Mapping[tuple[str, int], RollingMetrics] = MappingProxyType({})
        self._recent: dict[tuple[str, int], dict[str, np.ndarray]] = {}  # newest `window` per group
        self._since = _FULL  # watermark: every row older than this has matured or never can
        self._below: tuple[int, int] | None = None  # audit rows below the watermark when it was set
        self._max_h = self.default_horizon
        self.full_scans = 0
        ensure_tables(store)
        store.execute(OUTCOMES_DDL)
        self.refresh_metrics()

    def _params(self, since: int) -> dict[str, Any]:
        p = {"exchange": self.key.exchange, "symbol": self.key.symbol, "tf": self.key.timeframe,
             "default_h": self.default_horizon, "moe": MOE, "since": int(since)}
        return p if self.sessions else {**p, "bar_ms": self.bar_ms}

    def _rows_below(self, ts: int) -> tuple[int, int]:
        row = self.store.query_one(_BELOW_SQL, {"t": int(ts)})
        return int(row[0]), int(row[1])

    def pending_due(self, since: int | None = None) -> pd.DataFrame:
        """Predictions and decisions whose horizon has passed on stored candles, joined (as-of) to
        their entry and exit closes; not yet written. ``since``: only rows from that ts on (default:
        all of them)."""
        sql = _PENDING_SESSIONS_SQL if self.sessions else _PENDING_SQL
        return self.store.query_df(sql, self._params(_FULL if since is None else since))

    def update(self) -> int:
        """Mature everything due, append it to ``outcomes``, update the rolling metrics; returns the
        number of outcomes written."""
        since = self._since
        if since != _FULL and self._rows_below(since) != self._below:
            since = _FULL  # something was written below the watermark: look at everything once
        if since == _FULL:
            self.full_scans += 1
        df = self.pending_due(since)
        n = 0
        if not df.empty:
            df = self._outcome_rows(df)
            self.store.write_df("outcomes", df, mode="append")
            self._merge(df)
            n = len(df)
        self._advance(since)
        return n

    def _outcome_rows(self, df: pd.DataFrame) -> pd.DataFrame:
        bad = ~(np.isfinite(df["entry_close"]) & (df["entry_close"] > 0) & (df["exit_close"] > 0))
        if bad.any():  # a stored candle is broken: report it, never store a meaningless outcome
            raise ValueError(f"outcomes: {int(bad.sum())} predictions join candles with a non-positive "
                             f"close (first ts {int(df.loc[bad, 'ts'].iloc[0])}) in {self.key}")
        r = np.log(df["exit_close"].to_numpy(np.float64) / df["entry_close"].to_numpy(np.float64))
        df["realised_return"] = r
        df["realised_class"] = realised_class(np.asarray(r, dtype=np.float64), self.dead_zone).astype(np.int32)
        probs = df[["p_down", "p_flat", "p_up"]].to_numpy(np.float64)
        driven = np.zeros(len(df), dtype=bool)
        for expert, idx in df.groupby("expert").indices.items():
            driven[idx] = driven_mask(str(expert), df["action"].to_numpy()[idx], probs[idx],
                                      df["weight"].to_numpy()[idx])
        df["driven"] = driven
        return df[OUTCOME_COLUMNS]

    def _advance(self, since: int) -> None:
        """Move the watermark to the oldest ts that may still mature: a row at ts matures once the
        candle h bars later is stored, so everything before newest - max_h bars is done (or has no
        entry candle and never will)."""
        p = self._params(since)
        newest, max_h = self.store.query_one(_NEWEST_SQL, {k: p[k] for k in ("exchange", "symbol", "tf", "since")})
        if max_h is not None:
            self._max_h = max(self._max_h, int(max_h))
        if newest is None:
            return
        if self.sessions:
            row = self.store.query_one(_ROWS_BACK_SQL, {**{k: p[k] for k in ("exchange", "symbol", "tf", "since")},
                                                        "back": self._max_h})
            if row is None:  # fewer than max_h stored bars since the watermark: nothing to move
                return
            self._since = max(since, int(row[0]) + 1)
        else:
            self._since = max(since, int(newest) - self._max_h * self.bar_ms + 1)
        self._below = self._rows_below(self._since)

    def _merge(self, df: pd.DataFrame) -> None:
        """Fold newly matured outcomes into the newest-``window`` arrays; recompute changed groups."""
        metrics = dict(self._metrics)
        for (expert, horizon), idx in df.groupby(["expert", "horizon"], sort=False).indices.items():
            k = (str(expert), int(horizon))
            new = _window_arrays(df, idx)
            old = self._recent.get(k)
            if old is not None:
                new = {c: np.concatenate([old[c], new[c]]) for c in new}
            order = np.argsort(new["ts"], kind="stable")[-self.window:]
            w = self._recent[k] = {c: v[order] for c, v in new.items()}
            metrics[k] = outcome_metrics(k[0], k[1], w["probs"], w["realised"], w["returns"], w["direction"],
                                         w["driven"], w["ts"])
        self._metrics = MappingProxyType(metrics)

    def refresh_metrics(self) -> Mapping[tuple[str, int], RollingMetrics]:
        """Recompute rolling metrics from the newest ``window`` stored outcomes of each (expert,
        horizon) (one window query; ``update`` keeps them current from then on)."""
        df = self.store.query_df(
            "SELECT * FROM (SELECT *, row_number() OVER (PARTITION BY expert, horizon ORDER BY ts DESC) "
            "AS rn FROM outcomes WHERE symbol = ?) WHERE rn <= ? ORDER BY ts", [self.key.symbol, self.window])
        self._recent, self._metrics = {}, MappingProxyType({})
        self._merge(df)
        return self._metrics

    def metrics(self) -> Mapping[tuple[str, int], RollingMetrics]:
        return self._metrics

    def outcomes(self, expert: str | None = None) -> pd.DataFrame:
        sql = "SELECT * FROM outcomes WHERE symbol = ?"
        params: list = [self.key.symbol]
        if expert is not None:
            sql += " AND expert = ?"
            params.append(expert)
        return self.store.query_df(sql + " ORDER BY ts, expert", params)


# ---------------------------------------------------------------- in-memory variant (live snapshot)


@dataclass(frozen=True, slots=True)
class MaturedOutcome:
    expert: str
    ts: int
    horizon: int
    probs: tuple[float, float, float]
    realised_return: float
    realised_class: int
    direction: float
    driven: bool
    decision_id: str
    inputs: tuple[tuple[str, tuple[float, float, float]], ...] = ()  # moe rows: the experts' probs


class LiveOutcomes:
    """In-memory outcome tracking fed by the orchestrator's decisions and the closed bars.

    Call ``on_close(ts, close)`` for every closed base bar BEFORE the decision of that bar is added,
    then ``add(decision)``. Thread-safe; ``metrics()`` is cheap (recomputed on maturity only)."""

    def __init__(self, timeframe: str, dead_zone: float, *, window: int = 500,
                 default_horizon: int = 5, keep_closes: int = 4096, calendar: Calendar | None = None) -> None:
        if not dead_zone >= 0:
            raise ValueError(f"dead_zone must be >= 0, got {dead_zone!r}")
        self.bar_ms = timeframe_ms(timeframe)
        self.timeframe = timeframe
        # a market with sessions: the exit bar is h SESSION bars later (15:58 + 5 -> the next 09:33)
        self.calendar = calendar if calendar is not None and not calendar.always_open else None
        self.dead_zone = float(dead_zone)
        self.window = int(window)
        self.default_horizon = int(default_horizon)
        self._closes: dict[int, float] = {}
        self._close_order: deque[int] = deque(maxlen=keep_closes)
        self._last: tuple[int, float] | None = None
        # pending per horizon, in ts order: (exit_ts, entry_close, rows)
        self._pending: dict[int, deque[tuple[int, float, list[tuple]]]] = {}
        self._done: dict[tuple[str, int], deque[MaturedOutcome]] = {}
        self._metrics: Mapping[tuple[str, int], RollingMetrics] = MappingProxyType({})
        self._lock = threading.Lock()

    def on_close(self, ts: int, close: float) -> list[MaturedOutcome]:
        """A closed bar: matures every pending prediction whose exit bar is at or before ``ts``
        (as-of: a gap uses the last close at or before the exit time)."""
        ts, close = int(ts), float(close)
        if not (np.isfinite(close) and close > 0):
            raise ValueError(f"close of bar {ts} must be finite and > 0, got {close!r}")
        matured: list[MaturedOutcome] = []
        with self._lock:
            if self._last is not None and ts <= self._last[0]:
                return []  # a replayed or out-of-order bar changes nothing
            prev = self._last
            self._last = (ts, close)
            self._closes[ts] = close
            if len(self._close_order) == self._close_order.maxlen:
                self._closes.pop(self._close_order[0], None)
            self._close_order.append(ts)
            for q in self._pending.values():
                while q and q[0][0] <= ts:
                    exit_ts, entry, rows = q.popleft()
                    exit_close = close if exit_ts == ts or prev is None else prev[1]
                    matured.extend(self._mature(entry, exit_close, rows))
            if matured:
                for m in matured:
                    self._done.setdefault((m.expert, m.horizon), deque(maxlen=self.window)).append(m)
                self._metrics = MappingProxyType(self._compute())
        return matured

    def _mature(self, entry: float, exit_close: float, rows: list[tuple]) -> list[MaturedOutcome]:
        r = float(np.log(exit_close / entry))
        y = realised_class(float(r), self.dead_zone)
        out = []
        for expert, ts, h, probs, weight, action, did, inputs in rows:
            d = float(trade_direction(np.array([action]))[0])
            drv = bool(driven_mask(expert, np.array([action]), np.array([probs]), np.array([weight]))[0])
            out.append(MaturedOutcome(expert, ts, h, probs, r, y, d, drv, did, inputs))
        return out

    def add(self, decision: Decision, close: float | None = None) -> None:
        """Record a decision (and the expert outputs behind it) until its horizons pass."""
        ts = int(decision.ts)
        with self._lock:
            entry = self._closes.get(ts) if close is None else float(close)
            if entry is None:
                raise ValueError(f"no close known for decision bar {ts}: call on_close(ts, close) first")
            hs = [o.horizon for o in decision.outputs if o.horizon >= 1]
            moe_h = min(hs) if hs else self.default_horizon
            rows_by_h: dict[int, list[tuple]] = {}
            for o in decision.outputs:
                rows_by_h.setdefault(int(o.horizon), []).append(
                    (o.expert, ts, int(o.horizon), tuple(o.probs), decision.weights.get(o.expert, 0.0),
                     str(decision.action), decision.id, ()))
            inputs = tuple((o.expert, tuple(o.probs)) for o in decision.outputs)
            rows_by_h.setdefault(moe_h, []).append(
                (MOE, ts, moe_h, tuple(decision.probs), 1.0, str(decision.action), decision.id, inputs))
            for h, rows in rows_by_h.items():
                exit_ts = ts + h * self.bar_ms if self.calendar is None else \
                    int(self.calendar.next_bars(ts, h, self.timeframe)[-1])
                self._pending.setdefault(h, deque()).append((exit_ts, entry, rows))

    def _compute(self) -> dict[tuple[str, int], RollingMetrics]:
        out = {}
        for (expert, h), q in self._done.items():
            ms = list(q)
            out[(expert, h)] = outcome_metrics(
                expert, h, np.array([m.probs for m in ms]), np.array([m.realised_class for m in ms]),
                np.array([m.realised_return for m in ms]), np.array([m.direction for m in ms]),
                np.array([m.driven for m in ms]), np.array([m.ts for m in ms]))
        return out

    def metrics(self) -> Mapping[tuple[str, int], RollingMetrics]:
        return self._metrics
