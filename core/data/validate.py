"""Candle validation: every row is checked against the rules below, vectorised over the batch.

Nothing is repaired and nothing is invented: a row that breaks a rule is moved to ``rejected`` with
the FIRST rule it breaks as its ``reason``; the caller stores only ``valid``. Rules, in order:

- ``missing_value``     NaN or +-inf in any of open/high/low/close/volume (or a missing ts)
- ``non_positive_price`` open, high, low or close <= 0
- ``high_below_low``     high < low
- ``high_below_body``    high < max(open, close)
- ``low_above_body``     low > min(open, close)
- ``negative_volume``    volume < 0
- ``off_grid``           ts not a multiple of the timeframe (1w: not a Monday 00:00 UTC); with a session
                         calendar the session grid (open + k*tf, daily = the open) is accepted too
- ``future``             ts > now + max_future_ms
- ``outside_session``    (markets with a calendar) the bar is on a date without a session: a Saturday, a
                         holiday, an ad-hoc closure. Bars of a trading day outside the configured
                         session (pre-/post-market under rth) are not errors: core/market/sessions.py
                         filters them
- ``duplicate_ts``       same ts as an earlier row of the batch (the first one is kept)
- ``out_of_order``       ts below an earlier row's ts, or below ``last_ts`` (the newest stored/cached
                         candle); ts == last_ts is allowed: it updates that candle
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from core.market.calendar import Calendar
from core.types import CANDLE_COLUMNS, timeframe_ms

log = logging.getLogger(__name__)

REASONS: tuple[str, ...] = (
    "missing_value",
    "non_positive_price",
    "high_below_low",
    "high_below_body",
    "low_above_body",
    "negative_volume",
    "off_grid",
    "future",
    "outside_session",
    "duplicate_ts",
    "out_of_order",
)

WEEK_OFFSET_MS = 4 * 86_400_000  # 1970-01-01 was a Thursday; weekly candles open on Mondays (ccxt)


@dataclass(frozen=True, slots=True)
class ValidationResult:
    valid: pd.DataFrame  # CANDLE_COLUMNS, ts int64, input order kept
    rejected: pd.DataFrame  # CANDLE_COLUMNS + 'reason'
    counts: dict[str, int] = field(default_factory=dict)  # reason -> rows

    @property
    def n_rejected(self) -> int:
        return int(sum(self.counts.values()))


def grid_offset(timeframe: str) -> int:
    """Offset of the bucket grid from the epoch: 0 except weekly candles (Monday-aligned)."""
    return WEEK_OFFSET_MS if timeframe == "1w" else 0


def check_columns(df: pd.DataFrame, what: str = "candles") -> None:
    missing = [c for c in CANDLE_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(
            f"{what}: missing column(s) {', '.join(missing)}; have {', '.join(map(str, df.columns))}"
        )


def _ts_array(df: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """int64 ts and a mask of rows whose ts is missing/non-integral."""
    raw = df["ts"]
    if pd.api.types.is_integer_dtype(raw.dtype) and not isinstance(raw.dtype, pd.Int64Dtype):
        return raw.to_numpy(dtype=np.int64), np.zeros(len(raw), dtype=bool)
    if pd.api.types.is_datetime64_any_dtype(raw.dtype):
        raise ValueError("candles: column ts must be int64 milliseconds, got datetimes (convert first)")
    vals = pd.to_numeric(raw, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    bad = ~np.isfinite(vals) | (vals != np.round(vals))
    ts = np.where(bad, 0, vals).astype(np.int64)
    return ts, bad


def rule_codes(ts: np.ndarray, ts_bad: np.ndarray, vals: np.ndarray, timeframe: str, now_ms: int,
               last_ts: int | None = None, max_future_ms: int = 5_000,
               calendar: Calendar | None = None) -> np.ndarray:
    """Per-row reason code (0 = valid, else 1 + index into REASONS) for ts[N] and vals[N, 5]
    (open, high, low, close, volume). Pure numpy: the hot path of live ingestion and bulk imports.
    ``calendar`` (a market with sessions) adds the ``outside_session`` rule; None / 24x7 skips it."""
    n = len(ts)
    tf_ms = timeframe_ms(timeframe)
    code = np.zeros(n, dtype=np.int8)
    if n == 0:
        return code
    o, h, lo, c, v = (vals[:, i] for i in range(5))

    def mark(mask: np.ndarray | np.bool_, reason: str) -> None:
        code[(code == 0) & mask] = REASONS.index(reason) + 1

    mark(ts_bad | ~np.isfinite(vals).all(axis=1), "missing_value")
    with np.errstate(invalid="ignore"):
        mark((vals[:, :4] <= 0).any(axis=1), "non_positive_price")
        mark(h < lo, "high_below_low")
        mark(h < np.maximum(o, c), "high_below_body")
        mark(lo > np.minimum(o, c), "low_above_body")
        mark(v < 0, "negative_volume")
    if calendar is not None and not calendar.always_open:
        mark(~calendar.on_grid(ts, timeframe), "off_grid")
    else:
        mark((ts - grid_offset(timeframe)) % tf_ms != 0, "off_grid")
    mark(ts > now_ms + max_future_ms, "future")
    if calendar is not None and not calendar.always_open:
        mark(~calendar.trading_day(ts), "outside_session")
    # Order rules only among rows that passed the others: a rejected row must not push its ts on
    # the valid ones (a candle stamped in the future would otherwise make the next one "out of order").
    cand = (code == 0) & ~ts_bad
    if n > 1 and not ((np.diff(ts) > 0).all() and cand.all()):
        idx = np.flatnonzero(cand)
        cts = ts[idx]
        order = np.argsort(cts, kind="stable")  # stable: the first of equal ts is kept
        dup_sorted = np.zeros(len(idx), dtype=bool)
        dup_sorted[1:] = cts[order][1:] == cts[order][:-1]
        dup = np.zeros(n, dtype=bool)
        dup[idx[order]] = dup_sorted
        mark(dup, "duplicate_ts")
        prev_max = np.full(len(idx), np.iinfo(np.int64).min, dtype=np.int64)
        if len(idx) > 1:
            prev_max[1:] = np.maximum.accumulate(cts)[:-1]
        late = np.zeros(n, dtype=bool)
        late[idx] = cts < prev_max
        mark(late, "out_of_order")
    if last_ts is not None:
        mark((ts < int(last_ts)) & ~ts_bad, "out_of_order")
    return code


def candle_arrays(df: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ts int64[N], ts_bad bool[N], vals float64[N, 5]) from a candle frame (non-numbers -> NaN)."""
    check_columns(df)
    ts, ts_bad = _ts_array(df)
    if len(df.columns) == 6 and (df.dtypes.iloc[1:] == np.float64).all() and tuple(df.columns) == CANDLE_COLUMNS:
        # fast path (live/replay rows): one block read instead of five column lookups
        return ts, ts_bad, df.iloc[:, 1:].to_numpy(dtype=np.float64)
    cols = []
    for c in CANDLE_COLUMNS[1:]:
        col = df[c]
        if col.dtype != np.float64:
            col = pd.to_numeric(col, errors="coerce")
        cols.append(col.to_numpy(dtype=np.float64, na_value=np.nan))
    vals = np.column_stack(cols) if len(df) else np.empty((0, 5))
    return ts, ts_bad, vals


def validate_candles(
    df: pd.DataFrame,
    timeframe: str,
    now_ms: int | None = None,
    last_ts: int | None = None,
    *,
    max_future_ms: int = 5_000,
    source: str = "",
    calendar: Calendar | None = None,
) -> ValidationResult:
    """Split ``df`` into valid and rejected rows (see the module doc for the rules).

    ``now_ms`` defaults to the wall clock; ``last_ts`` is the newest candle already stored/cached for
    this series (rows before it are out of order). ``source`` only labels the log lines. ``calendar``:
    the market's sessions (stocks), for the ``outside_session`` rule."""
    ts, ts_bad, vals = candle_arrays(df)
    now = int(time.time() * 1000) if now_ms is None else int(now_ms)
    code = rule_codes(ts, ts_bad, vals, timeframe, now, last_ts, max_future_ms, calendar)
    ok = code == 0
    out = pd.DataFrame({"ts": ts, "open": vals[:, 0], "high": vals[:, 1], "low": vals[:, 2],
                        "close": vals[:, 3], "volume": vals[:, 4]}, copy=False)
    if ok.all():
        return ValidationResult(out, _EMPTY_REJECTED, {})
    valid = out[ok].reset_index(drop=True)
    rej = df.loc[~ok, list(CANDLE_COLUMNS)].copy()
    rej["reason"] = [REASONS[i - 1] for i in code[~ok]]
    rej = rej.reset_index(drop=True)
    counts = {r: int(k) for r, k in rej["reason"].value_counts().items()}
    log_rejections(rej, counts, timeframe, source)
    return ValidationResult(valid, rej, counts)


def _empty_rejected() -> pd.DataFrame:
    cols: dict[str, pd.Series] = {k: pd.Series(dtype="float64") for k in CANDLE_COLUMNS}
    cols["ts"] = pd.Series(dtype="int64")
    cols["reason"] = pd.Series(dtype="object")
    return pd.DataFrame(cols)


_EMPTY_REJECTED = _empty_rejected()  # shared, never mutated: returned when nothing was rejected


LOG_ROWS_PER_BATCH = 20  # rejected rows logged one by one at WARNING per batch; the rest at DEBUG


def log_rejections(rej: pd.DataFrame, counts: dict[str, int], timeframe: str, source: str) -> None:
    """A WARNING summary with the counts per reason, then every rejected row with its reason: the first
    LOG_ROWS_PER_BATCH at WARNING, the rest at DEBUG (a broken million-row file must not flood the console;
    ``data import --rejects PATH`` writes them all to a file)."""
    where = f"{source} " if source else ""
    summary = ", ".join(f"{k}={v}" for k, v in sorted(counts.items()))
    log.warning("%s%s candles rejected: %d (%s)", where, timeframe, len(rej), summary)
    for i, row in enumerate(rej.itertuples(index=False)):
        level = logging.WARNING if i < LOG_ROWS_PER_BATCH else logging.DEBUG
        if not log.isEnabledFor(level):
            break
        log.log(level, "rejected %s%s candle ts=%s reason=%s row=%s", where, timeframe, row.ts, row.reason,
                tuple(row)[:6])


TRADE_REASONS: tuple[str, ...] = ("missing_id", "missing_value", "non_positive_price", "negative_amount",
                                  "bad_side", "duplicate_id")


def validate_trades(df: pd.DataFrame, *, source: str = "") -> ValidationResult:
    """Trades (ts, id, side, price, amount): id present and unique in the batch, ts integral, price > 0,
    amount >= 0, all finite, side buy/sell (or missing). Same contract as ``validate_candles``."""
    need = ("ts", "id", "side", "price", "amount")
    missing = [c for c in need if c not in df.columns]
    if missing:
        raise ValueError(f"trades: missing column(s) {', '.join(missing)}; have {', '.join(map(str, df.columns))}")
    n = len(df)
    ts, ts_bad = _ts_array(df)
    price = pd.to_numeric(df["price"], errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    amount = pd.to_numeric(df["amount"], errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    ids = df["id"].astype("string")
    side = df["side"].astype("string").str.lower()
    code = np.zeros(n, dtype=np.int8)

    def mark(mask: np.ndarray, reason: str) -> None:
        code[(code == 0) & mask] = TRADE_REASONS.index(reason) + 1

    mark(ids.isna().to_numpy() | (ids.str.len() == 0).fillna(True).to_numpy(), "missing_id")
    mark(ts_bad | ~np.isfinite(price) | ~np.isfinite(amount), "missing_value")
    with np.errstate(invalid="ignore"):
        mark(price <= 0, "non_positive_price")
        mark(amount < 0, "negative_amount")
    mark((~side.isna() & ~side.isin(["buy", "sell"])).fillna(False).to_numpy(dtype=bool), "bad_side")
    mark(ids.duplicated().to_numpy(), "duplicate_id")
    ok = code == 0
    out = pd.DataFrame({"ts": ts, "id": ids.to_numpy(dtype=object), "side": side.to_numpy(dtype=object),
                        "price": price, "amount": amount})
    valid = out[ok].reset_index(drop=True)
    if ok.all():
        return ValidationResult(valid, out.iloc[:0].assign(reason=pd.Series(dtype="object")), {})
    rej = df.loc[~ok, list(need)].copy()
    rej["reason"] = [TRADE_REASONS[i - 1] for i in code[~ok]]
    rej = rej.reset_index(drop=True)
    counts = {r: int(k) for r, k in rej["reason"].value_counts().items()}
    where = f"{source} " if source else ""
    log.warning("%strades rejected: %d (%s)", where, len(rej),
                ", ".join(f"{k}={v}" for k, v in sorted(counts.items())))
    for row in rej.itertuples(index=False):
        log.debug("rejected %strade id=%s ts=%s reason=%s", where, row.id, row.ts, row.reason)
    return ValidationResult(valid, rej, counts)
