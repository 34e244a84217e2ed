"""Candle and trade files: CSV (with or without header), JSON (freqtrade), Parquet, Feather.

Layouts understood without a mapping:
- ``timestamp,open,high,low,close,volume`` (../shared/data), and freqtrade's ``date,...`` columns;
- freqtrade JSON: a list of ``[ts_ms, open, high, low, close, volume]`` rows;
- Binance's kline CSVs (data.binance.vision): 12 columns, open time first (ms, or us since 2025), with
  or without the header ``open_time,open,high,low,close,volume,close_time,...``;
- Kraken's OHLCVT export: no header, 7 columns ``time,open,high,low,close,volume,trades`` (time in epoch s);
- trades: ``timestamp,id,side,price,amount`` (freqtrade adds type and cost, ignored).
Timestamps may be epoch s / ms / us / ns (detected from their magnitude) or ISO strings (UTC; naive
strings are taken as UTC). ``mapping`` {our column: file column} overrides the detection of names.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from core.data.source_base import Emit, SourceStatus, now_ms
from core.types import CANDLE_COLUMNS, TIMEFRAME_MS, SeriesKey, timeframe_ms

if TYPE_CHECKING:
    from core.data.store import MarketStore
    from core.market.calendar import Calendar

log = logging.getLogger(__name__)

_ALIASES: dict[str, tuple[str, ...]] = {
    "ts": ("ts", "timestamp", "date", "datetime", "time", "open_time", "opentime", "open time", "t"),
    "open": ("open", "o"),
    "high": ("high", "h"),
    "low": ("low", "l"),
    "close": ("close", "c"),
    "volume": ("volume", "vol", "v", "base_volume", "volume_base"),
    "id": ("id", "trade_id", "tid"),
    "side": ("side", "taker_side"),
    "price": ("price", "p", "rate"),
    "amount": ("amount", "qty", "quantity", "size", "q"),
}
TRADE_FILE_COLUMNS: tuple[str, ...] = ("ts", "id", "side", "price", "amount")
BINANCE_KLINE_COLUMNS = 12
KRAKEN_OHLCVT_COLUMNS = 7


def cli_ms(text: str) -> int:
    """argparse type for --from/--to/--entry style flags: ISO date/time (UTC when naive) or epoch ms."""
    import argparse

    if text.isdigit():
        return int(text)
    try:
        ts = pd.Timestamp(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date/time or epoch ms: {text!r}") from None
    ts = ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")
    return int(ts.value // 1_000_000)


def to_ms(values: pd.Series | np.ndarray) -> np.ndarray:
    """Timestamps -> int64 ms UTC. Numbers: s / ms / us / ns chosen by the magnitude of the median;
    strings: ISO 8601. Raises ValueError naming the first value it cannot read."""
    s = pd.Series(values)
    if s.empty:
        return np.empty(0, dtype=np.int64)
    if pd.api.types.is_datetime64_any_dtype(s.dtype):
        dt = s.dt.tz_localize("UTC") if s.dt.tz is None else s.dt.tz_convert("UTC")
        return dt.dt.as_unit("ms").astype("int64").to_numpy()
    num = pd.to_numeric(s, errors="coerce")
    if num.notna().all():
        x = num.to_numpy(dtype=np.float64)
        mag = float(np.median(np.abs(x)))
        # thresholds: 1e11 s = year 5138, 1e14 ms = year 5138, 1e17 us = year 5138
        scale = 1000.0 if mag < 1e11 else 1.0 if mag < 1e14 else 1e-3 if mag < 1e17 else 1e-6
        return np.round(x * scale).astype(np.int64)
    try:
        dt = pd.to_datetime(s, utc=True, format="ISO8601")
    except (ValueError, TypeError) as exc:
        bad = s[num.isna()].iloc[0]
        raise ValueError(f"cannot read timestamp {bad!r} (epoch s/ms/us/ns or ISO 8601 expected): {exc}") from None
    return dt.dt.as_unit("ms").astype("int64").to_numpy()


# quote currencies that end Binance's concatenated symbols (BTCUSDT-1m-2023-03.csv): such a name is no ticker
_BINANCE_QUOTES = ("USDT", "BUSD", "USDC", "FDUSD", "TUSD", "BTC", "ETH", "BNB", "EUR", "USD", "TRY")
_TICKER_NAME = re.compile(r"^([A-Z][A-Z0-9.]{0,9})-([0-9]+[smhdwM])(?:-([a-z][a-z0-9]*))?(?:[-_.]|$)")


def _stem(path: str | Path) -> str:
    stem = Path(path).name
    for suf in (".gz", ".csv", ".json", ".parquet", ".feather", ".arrow", ".txt"):
        if stem.endswith(suf):
            stem = stem[: -len(suf)]
    return stem


def _ticker_name(stem: str) -> re.Match[str] | None:
    m = _TICKER_NAME.match(stem)
    if m is None or (len(m.group(1)) >= 6 and m.group(1).endswith(_BINANCE_QUOTES)):
        return None
    return m


def parse_series_exchange(path: str | Path) -> str | None:
    """The venue a stock file's name carries after its timeframe (``AMZN-1m-alpaca-2025-...csv`` -> alpaca);
    None when the name does not say."""
    m = _ticker_name(_stem(path))
    return m.group(3) if m is not None and m.group(3) else None


def parse_series_name(path: str | Path) -> tuple[str | None, str | None]:
    """Symbol and timeframe from names like ``BTC_USDT-1m.csv``, ``XRP_ETH-trades.csv`` (timeframe
    'trades') or stock files ``AMZN-1m-alpaca-2025-01-13_2025-01-17.csv`` / ``UPRO-1m-2020-...csv`` (a ticker,
    then the timeframe); (None, None) parts when the name does not say."""
    stem = _stem(path)
    m = re.match(r"^([A-Za-z0-9]+)[_/-]([A-Za-z0-9]+)(?:[_:][A-Za-z0-9]+)?-([0-9]+[smhdwM]|trades)(?:-|$)", stem)
    if m:
        tf = m.group(3)
        return f"{m.group(1).upper()}/{m.group(2).upper()}", tf if tf in TIMEFRAME_MS or tf == "trades" else None
    t = _ticker_name(stem)
    if t is not None and t.group(2) in TIMEFRAME_MS:
        return t.group(1), t.group(2)
    m = re.match(r"^[A-Za-z0-9]+-([0-9]+[smhdwM])-", stem)  # Binance: BTCUSDT-1m-2023-03.csv
    if m and m.group(1) in TIMEFRAME_MS:
        return None, m.group(1)
    return None, None


def _read_raw(path: Path) -> pd.DataFrame:
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    name = path.name.lower()
    if name.endswith((".parquet", ".pq")):
        return pd.read_parquet(path)
    if name.endswith((".feather", ".arrow")):
        return pd.read_feather(path)
    if name.endswith((".json", ".json.gz")):
        raw = pd.read_json(path, compression="infer", orient="values", dtype=False) \
            if name.endswith(".gz") else pd.DataFrame(json.loads(path.read_text()))
        if raw.shape[1] == 6:
            raw.columns = list(CANDLE_COLUMNS)
        elif raw.shape[1] == 7:  # freqtrade trades: timestamp, id, type, side, price, amount, cost
            raw.columns = ["ts", "id", "type", "side", "price", "amount", "cost"]
        else:
            raise ValueError(f"{path}: JSON rows of {raw.shape[1]} values; expected 6 (candles) or 7 (trades)")
        return raw
    # CSV: headerless if the first field of the first line is a number
    with open(path, "rb") as fh:
        head = fh.readline().decode("utf-8", "replace").strip()
    first = head.split(",")[0].strip().strip('"')
    try:
        float(first)
        headerless = True
    except ValueError:
        headerless = False
    if not headerless:
        return pd.read_csv(path, dtype={"id": str})
    raw = pd.read_csv(path, header=None)
    if raw.shape[1] in (6, KRAKEN_OHLCVT_COLUMNS, BINANCE_KLINE_COLUMNS):  # generic, Kraken OHLCVT, Binance
        raw = raw.iloc[:, :6]
        raw.columns = list(CANDLE_COLUMNS)
        return raw
    raw.columns = [f"col{i}" for i in range(raw.shape[1])]
    return raw  # _map_columns names the columns it saw and the --map to use


def _map_columns(raw: pd.DataFrame, wanted: tuple[str, ...], mapping: dict[str, str] | None,
                 path: Path) -> pd.DataFrame:
    lower = {str(c).strip().lower(): c for c in raw.columns}
    out: dict[str, pd.Series] = {}
    for col in wanted:
        src = (mapping or {}).get(col)
        if src is None:
            src = next((lower[a] for a in _ALIASES[col] if a in lower), None)
        if src is None or src not in raw.columns:
            seen = ", ".join(map(str, raw.columns[:20])) + (" ..." if len(raw.columns) > 20 else "")
            raise ValueError(
                f"{path.name}: no column for '{col}' (saw {len(raw.columns)} columns: {seen}); name it with "
                f"--map {col}=<file column> (known layouts: timestamp,open,high,low,close,volume with a header; "
                "Binance klines, 12 columns; Kraken OHLCVT, 7 columns without a header)"
            )
        out[col] = raw[src]
    return pd.DataFrame(out)


def load_file(path: str | Path, mapping: dict[str, str] | None = None) -> pd.DataFrame:
    """A candle file as CANDLE_COLUMNS (ts int64 ms, floats), rows in file order, NOT validated."""
    p = Path(path)
    df = _map_columns(_read_raw(p), CANDLE_COLUMNS, mapping, p)
    out = pd.DataFrame({"ts": to_ms(df["ts"])})
    for c in CANDLE_COLUMNS[1:]:
        out[c] = pd.to_numeric(df[c], errors="coerce").to_numpy(dtype=np.float64)
    return out


def load_trades(path: str | Path, mapping: dict[str, str] | None = None) -> pd.DataFrame:
    """A trades file as ts (int64 ms), id (str), side (str), price, amount; file order, not validated."""
    p = Path(path)
    df = _map_columns(_read_raw(p), TRADE_FILE_COLUMNS, mapping, p)
    return pd.DataFrame(
        {
            "ts": to_ms(df["ts"]),
            "id": df["id"].astype("string").to_numpy(dtype=object),
            "side": df["side"].astype("string").str.lower().to_numpy(dtype=object),
            "price": pd.to_numeric(df["price"], errors="coerce").to_numpy(dtype=np.float64),
            "amount": pd.to_numeric(df["amount"], errors="coerce").to_numpy(dtype=np.float64),
        }
    )


def candles_from_trades(trades: pd.DataFrame, timeframe: str) -> pd.DataFrame:
    """OHLCV candles of ``timeframe`` (e.g. 1s, 1m) from trades (ts ms, price, amount). Trades are taken in
    time order (ties keep their input order, i.e. the exchange's id order); buckets without trades get no
    candle (nothing invented)."""
    tf = timeframe_ms(timeframe)
    for c in ("ts", "price", "amount"):
        if c not in trades.columns:
            raise ValueError(f"candles_from_trades: missing column {c}")
    if trades.empty:
        return pd.DataFrame({c: pd.Series(dtype="int64" if c == "ts" else "float64") for c in CANDLE_COLUMNS})
    ts = trades["ts"].to_numpy(dtype=np.int64)
    order = np.argsort(ts, kind="stable")
    ts = ts[order]
    price = trades["price"].to_numpy(dtype=np.float64)[order]
    amount = trades["amount"].to_numpy(dtype=np.float64)[order]
    bucket = ts - ts % tf
    starts = np.flatnonzero(np.r_[True, bucket[1:] != bucket[:-1]])
    ends = np.r_[starts[1:], len(ts)] - 1
    return pd.DataFrame(
        {
            "ts": bucket[starts],
            "open": price[starts],
            "high": np.maximum.reduceat(price, starts),
            "low": np.minimum.reduceat(price, starts),
            "close": price[ends],
            "volume": np.add.reduceat(amount, starts),
        }
    )


class FileSource:
    """A candle file as a source: emits its rows (closed) in file order in chunks, then finishes.
    Validation happens downstream (DataProvider.ingest), so bad rows are counted and reported there."""

    def __init__(self, path: str | Path, key: SeriesKey, mapping: dict[str, str] | None = None,
                 chunk_rows: int = 50_000) -> None:
        self.path = Path(path)
        self.key = key
        self.mapping = mapping
        self.chunk_rows = chunk_rows
        self.name = f"file:{self.path.name}"
        self._status = SourceStatus(self.name)

    def load(self) -> pd.DataFrame:
        return load_file(self.path, self.mapping)

    async def run(self, emit: Emit, stop: asyncio.Event) -> None:
        try:
            df = self.load()
        except (OSError, ValueError) as exc:
            self._status = SourceStatus(self.name, error=str(exc))
            raise
        self._status = SourceStatus(self.name, connected=True)
        # file order as is: out-of-order rows are rejected downstream, never silently re-sorted
        for i in range(0, len(df), self.chunk_rows):
            if stop.is_set():
                break
            emit(self.key, df.iloc[i: i + self.chunk_rows].reset_index(drop=True), True)
            self._status = SourceStatus(self.name, connected=True, last_message_ms=now_ms())
            await asyncio.sleep(0)
        self._status = SourceStatus(self.name, connected=False, last_message_ms=self._status.last_message_ms)

    def status(self) -> SourceStatus:
        return self._status


def import_series_file(store: MarketStore, exchange: str, path: Path,
                       calendar: Calendar | None = None) -> tuple[str, str]:
    """Import a candle file named like BTC_USDT-1m.csv into ``store`` (idempotent upsert); returns
    its (symbol, timeframe). A clear ValueError when the file is missing or its name says neither.
    With a session ``calendar`` (stocks) the file is cleaned first (core/data/clean.py): rejected rows
    (Saturday bars, out-of-order bars, ...) are logged with their reasons and left out, bars outside
    the configured session are filtered; a 24x7 file must be clean as a whole (as before)."""
    if not path.exists():
        raise ValueError(f"replay file not found: {path}")
    sym, tf = parse_series_name(path)
    if sym is None or tf is None:
        raise ValueError(f"cannot tell symbol and timeframe from {path.name!r} (expected e.g. BTC_USDT-1m.csv)")
    if calendar is None or calendar.always_open:
        store.upsert_candles(SeriesKey(exchange, sym, tf), load_file(path))
        return sym, tf
    from core.data.clean import clean_candles

    cleaned = clean_candles(load_file(path), tf, calendar, source=path.name)
    if cleaned.candles.empty:
        raise ValueError(f"{path.name}: no {calendar.mode} bars of {sym} left ({cleaned.summary()})")
    n = store.upsert_candles(SeriesKey(exchange, sym, tf), cleaned.candles, validate=False)
    log.info("%s: %s %s %s: stored %d, %s", path.name, exchange, sym, tf, n, cleaned.summary())
    return sym, tf
