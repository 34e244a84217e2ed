"""Alpaca market data for US stocks and crypto: REST history and websocket bars, the ccxt source's contract.

Speaks Alpaca's documented market-data API directly (aiohttp REST + ``websockets``), so it runs on the
engine's asyncio loop like ``CcxtSource`` and owns its reconnect logic (the SDK's stream reconnects
silently, with no hook to backfill what was missed):

- REST ``/v2/stocks/bars`` (``feed`` iex | sip) and ``/v1beta3/crypto/us/bars`` (no keys needed): pages
  through ``next_page_token``, at most ``requests_per_min`` requests a minute (a token bucket), and on
  HTTP 429 waits until the reset the server names (``Retry-After`` / ``X-RateLimit-Reset``), then retries.
- Websocket ``/v2/{feed}`` and ``/v1beta3/crypto/us``: auth, subscribe to ``bars`` (+ ``updatedBars``, and
  ``trades`` for trade storage and 1s candles), closed minute bars as they come. A bar that follows a hole
  of expected bars (the calendar says which: nights are no hole) is preceded by a REST backfill of it.
- Dropped connection: reconnect with back-off (``reconnect_initial_s`` doubling up to
  ``reconnect_max_s``), then backfill every closed bar since the last one delivered by REST before
  streaming again: no gap, no duplicate.

Keys come only from the environment (APCA_API_KEY_ID / APCA_API_SECRET_KEY through ``core.config.Secrets``)
and are sent only as request headers / the auth message; they are never logged or put in errors.
Session filtering happens downstream (DataProvider with the market's calendar), exactly as for imports.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

import numpy as np
import pandas as pd

from core.data.files import candles_from_trades
from core.data.source_base import Emit, SourceStatus, emit_new_closed, now_ms
from core.market.calendar import Calendar
from core.types import CANDLE_COLUMNS, SeriesKey, timeframe_ms

log = logging.getLogger(__name__)

ALPACA_TIMEFRAMES: dict[str, str] = {"1m": "1Min", "5m": "5Min", "15m": "15Min", "30m": "30Min", "1h": "1Hour",
                                     "4h": "4Hour", "1d": "1Day", "1w": "1Week"}
TradeSink = Callable[[str, str, pd.DataFrame], None]  # (exchange, symbol, trades)


class AlpacaError(RuntimeError):
    """A failed Alpaca request or stream; the message says what happened."""


class AlpacaRefused(AlpacaError):
    """Alpaca refused (auth, no subscription for the feed, bad symbol): retrying cannot help."""


def is_crypto(symbol: str) -> bool:
    return "/" in symbol


def bars_to_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """Alpaca bars [{t, o, h, l, c, v, ...}] -> CANDLE_COLUMNS (t = RFC 3339 bar open, UTC)."""
    if not rows:
        return pd.DataFrame({c: pd.Series(dtype="int64" if c == "ts" else "float64") for c in CANDLE_COLUMNS})
    ts = pd.to_datetime([r.get("t") for r in rows], utc=True, format="ISO8601").as_unit("ms").asi8
    out = pd.DataFrame({"ts": ts.astype(np.int64)})
    for c, k in zip(CANDLE_COLUMNS[1:], ("o", "h", "l", "c", "v"), strict=True):
        out[c] = np.array([np.nan if r.get(k) is None else r[k] for r in rows], dtype=np.float64)
    return out


def trades_to_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """Alpaca trades [{t, p, s, i, tks?}] -> ts, id, side, price, amount (side: crypto taker side, else None)."""
    ts = pd.to_datetime([r.get("t") for r in rows], utc=True, format="ISO8601").as_unit("ms").asi8
    side = {"B": "buy", "S": "sell"}
    return pd.DataFrame({
        "ts": ts.astype(np.int64),
        "id": [None if r.get("i") is None else str(r["i"]) for r in rows],
        "side": [side.get(str(r.get("tks", "")), None) for r in rows],
        "price": np.array([r.get("p") for r in rows], dtype=np.float64),
        "amount": np.array([r.get("s") for r in rows], dtype=np.float64),
    })


def _iso(ms: int) -> str:
    return pd.Timestamp(int(ms), unit="ms", tz="UTC").strftime("%Y-%m-%dT%H:%M:%SZ")


class RateLimiter:
    """At most ``per_min`` acquisitions in any 60 s (a token bucket refilled continuously)."""

    def __init__(self, per_min: int, sleep: Callable[[float], Awaitable[None]],
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.rate = per_min / 60.0
        self.capacity = float(per_min)
        self.tokens = float(per_min)
        self._sleep, self._mono = sleep, monotonic
        self._t = monotonic()
        self.waited_s = 0.0

    async def acquire(self) -> None:
        while True:
            now = self._mono()
            self.tokens = min(self.capacity, self.tokens + (now - self._t) * self.rate)
            self._t = now
            if self.tokens >= 1.0:
                self.tokens -= 1.0
                return
            wait = (1.0 - self.tokens) / self.rate
            self.waited_s += wait
            await self._sleep(wait)


class AlpacaSource:
    def __init__(
        self,
        symbols: list[str],
        timeframe: str,
        *,
        feed: str = "iex",
        data_url: str = "https://data.alpaca.markets",
        stream_url: str = "wss://stream.data.alpaca.markets",
        key_id: str | None = None,
        secret_key: str | None = None,
        websocket: bool = True,
        poll_interval_s: float = 5.0,
        reconnect_initial_s: float = 1.0,
        reconnect_max_s: float = 60.0,
        backfill_bars: int = 1500,
        page_limit: int = 10_000,
        requests_per_min: int = 200,
        calendar: Calendar | None = None,
        trades: bool = False,
        trade_sink: TradeSink | None = None,
        sleep: Callable[[float], Awaitable[None]] | None = None,
        clock: Callable[[], int] | None = None,
        max_retries: int = 5,
    ) -> None:
        if timeframe != "1s" and timeframe not in ALPACA_TIMEFRAMES:
            raise ValueError(f"Alpaca has no {timeframe} bars; use one of {', '.join(ALPACA_TIMEFRAMES)} "
                             "(or 1s, built from trades)")
        if feed not in ("iex", "sip"):
            raise ValueError(f"alpaca feed {feed!r}: allowed iex, sip")
        self.symbols = list(symbols)
        self.timeframe = timeframe
        self.tf_ms = timeframe_ms(timeframe)
        self.feed = feed
        self.data_url = data_url.rstrip("/")
        self.stream_url = stream_url.rstrip("/")
        self._key_id, self._secret = key_id, secret_key  # never logged
        self.websocket = websocket
        self.poll_interval_s = poll_interval_s
        self.reconnect_initial_s = reconnect_initial_s
        self.reconnect_max_s = reconnect_max_s
        self.backfill_bars = backfill_bars
        self.page_limit = page_limit
        self.calendar = calendar if calendar is not None and not calendar.always_open else None
        self.trades = trades or timeframe == "1s"
        self.trade_sink = trade_sink
        self._sleep = sleep or asyncio.sleep
        self._clock = clock or now_ms
        self.max_retries = max_retries
        self.limiter = RateLimiter(requests_per_min, self._sleep)
        self.exchange_id = "alpaca"
        self.name = "alpaca"
        self._status = SourceStatus(self.name)
        self.backoff_delays: list[float] = []
        self.requests = 0
        self._last_closed: dict[str, int] = {}
        self._second: dict[str, list[dict[str, Any]]] = {}  # 1s candles: trades of the open second
        self._http: Any = None

    # ------------------------------------------------------------ helpers
    def key(self, symbol: str) -> SeriesKey:
        return SeriesKey(self.exchange_id, symbol, self.timeframe)

    def status(self) -> SourceStatus:
        return self._status

    def _set(self, **kw: Any) -> None:
        self._status = replace(self._status, **kw)

    def _headers(self) -> dict[str, str]:
        if self._key_id and self._secret:
            return {"APCA-API-KEY-ID": self._key_id, "APCA-API-SECRET-KEY": self._secret}
        return {}

    def _needs_keys(self, symbol: str) -> None:
        if not is_crypto(symbol) and not (self._key_id and self._secret):
            raise AlpacaRefused(f"Alpaca stock data for {symbol} needs API keys: set APCA_API_KEY_ID and "
                              "APCA_API_SECRET_KEY in the environment (crypto data needs none)")

    def _emit_closed(self, emit: Emit, symbol: str, df: pd.DataFrame) -> None:
        newest = emit_new_closed(emit, self.key(symbol), df, self._last_closed.get(symbol))
        if newest is None:
            return
        self._last_closed[symbol] = newest
        self._set(last_message_ms=now_ms(), lag_ms=max(0, self._clock() - (newest + self.tf_ms)))

    def _hole(self, symbol: str, ts: int) -> bool:
        """Bars the venue should have sent between the last delivered bar and ``ts``."""
        last = self._last_closed.get(symbol)
        if last is None or ts <= last + self.tf_ms:
            return False
        if self.calendar is None or self.timeframe == "1s":
            return True
        idx = self.calendar.bar_index(np.array([last, ts], dtype=np.int64), self.timeframe)
        return int(idx[1] - idx[0]) > 1

    # ------------------------------------------------------------ REST
    async def _session(self) -> Any:
        if self._http is None:
            import aiohttp

            self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))
        return self._http

    async def _get(self, path: str, params: dict[str, str]) -> dict[str, Any]:
        """One REST call under the rate limit; 429 waits for the reset, 5xx/network errors retry with
        back-off, 4xx raise AlpacaError with the server's message."""
        import aiohttp

        http = await self._session()
        delay = self.reconnect_initial_s
        for attempt in range(self.max_retries + 1):
            await self.limiter.acquire()
            self.requests += 1
            try:
                async with http.get(self.data_url + path, params=params, headers=self._headers()) as r:
                    if r.status == 200:
                        body: dict[str, Any] = await r.json(content_type=None)
                        return body
                    text = (await r.text())[:300]
                    if r.status == 429:
                        wait = _retry_after(r.headers, self._clock()) or delay
                        log.warning("alpaca: rate limited (429); waiting %.1fs", wait)
                        await self._sleep(wait)
                        delay = min(delay * 2, self.reconnect_max_s)
                        continue
                    if r.status >= 500 and attempt < self.max_retries:
                        await self._sleep(delay)
                        delay = min(delay * 2, self.reconnect_max_s)
                        continue
                    hint = " (check APCA_API_KEY_ID / APCA_API_SECRET_KEY)" if r.status in (401, 403) else ""
                    raise AlpacaRefused(f"alpaca {path}: HTTP {r.status}: {text}{hint}")
            except (TimeoutError, aiohttp.ClientError) as exc:
                if attempt >= self.max_retries:
                    raise AlpacaError(f"alpaca {path}: {type(exc).__name__}: {exc}") from exc
                await self._sleep(delay)
                delay = min(delay * 2, self.reconnect_max_s)
        raise AlpacaError(f"alpaca {path}: still rate limited after {self.max_retries} retries")

    async def fetch_range(self, symbol: str, since: int, until: int | None = None,
                          on_batch: Callable[[pd.DataFrame], None] | None = None) -> pd.DataFrame:
        """Every CLOSED bar with since <= ts < until (None = now), page by page (``on_batch`` sees each)."""
        if self.timeframe == "1s":
            raise AlpacaError("Alpaca has no 1s bars: 1s candles are built from the live trade stream")
        self._needs_keys(symbol)
        end = self._clock() if until is None else min(int(until), self._clock())
        if since >= end:
            return bars_to_frame([])
        crypto = is_crypto(symbol)
        path = "/v1beta3/crypto/us/bars" if crypto else "/v2/stocks/bars"
        params = {"symbols": symbol, "timeframe": ALPACA_TIMEFRAMES[self.timeframe], "start": _iso(since),
                  "end": _iso(end), "limit": str(self.page_limit), "sort": "asc"}
        if not crypto:
            params.update(feed=self.feed, adjustment="raw")
        pages: list[pd.DataFrame] = []
        token: str | None = None
        while True:
            body = await self._get(path, params if token is None else {**params, "page_token": token})
            bars = body.get("bars") or {}
            df = bars_to_frame(bars.get(symbol, []) if isinstance(bars, dict) else [])
            df = df[(df["ts"] >= since) & (df["ts"] < end) & (df["ts"] + self.tf_ms <= self._clock())]
            if len(df):
                df = df.reset_index(drop=True)
                pages.append(df)
                if on_batch is not None:
                    on_batch(df)
            token = body.get("next_page_token")
            if not token:
                break
        return pd.concat(pages, ignore_index=True) if pages else bars_to_frame([])

    async def _backfill(self, emit: Emit, symbol: str, until: int | None = None) -> None:
        if self.timeframe == "1s":
            return  # no 1s history at Alpaca: the trade stream is the only source
        last = self._last_closed.get(symbol)
        since = last + self.tf_ms if last is not None else self._clock() - self.backfill_bars * self.tf_ms
        df = await self.fetch_range(symbol, since, until)
        if not df.empty:
            log.info("alpaca %s: backfilled %d bar(s) by REST from %s", symbol, len(df), _iso(since))
            self._emit_closed(emit, symbol, df)

    # ------------------------------------------------------------ streaming
    def _stream_path(self) -> str:
        crypto = [s for s in self.symbols if is_crypto(s)]
        if crypto and len(crypto) != len(self.symbols):
            raise AlpacaError("one AlpacaSource streams either stocks or crypto; use two sources")
        return "/v1beta3/crypto/us" if crypto else f"/v2/{self.feed}"

    async def _handshake(self, ws: Any) -> None:
        msgs = json.loads(await ws.recv())
        if not any(m.get("T") == "success" and m.get("msg") == "connected" for m in msgs):
            raise AlpacaError(f"alpaca stream: unexpected greeting {str(msgs)[:200]}")
        if self._key_id and self._secret:  # crypto works without keys
            await ws.send(json.dumps({"action": "auth", "key": self._key_id, "secret": self._secret}))
            msgs = json.loads(await ws.recv())
            err = next((m for m in msgs if m.get("T") == "error"), None)
            if err is not None:
                raise AlpacaRefused(f"alpaca stream: {err.get('code')} {err.get('msg')} (check APCA_API_KEY_ID / "
                                    "APCA_API_SECRET_KEY and the feed's subscription)")
        sub: dict[str, Any] = {"action": "subscribe", "bars": self.symbols, "updatedBars": self.symbols}
        if self.trades:
            sub["trades"] = self.symbols
        await ws.send(json.dumps(sub))

    async def _on_bars(self, emit: Emit, symbol: str, rows: list[dict[str, Any]], updated: bool) -> None:
        df = bars_to_frame(rows)
        for i in range(len(df)):
            ts = int(df["ts"].iat[i])
            last = self._last_closed.get(symbol)
            if updated:  # a late correction of a delivered bar: only the newest can still change
                if last is not None and ts == last:
                    emit(self.key(symbol), df.iloc[i:i + 1].reset_index(drop=True), True)
                continue
            if last is not None and ts <= last:
                continue
            if self._hole(symbol, ts):
                await self._backfill(emit, symbol, until=ts)
            self._emit_closed(emit, symbol, df.iloc[i:i + 1])

    def _on_trades(self, emit: Emit, symbol: str, rows: list[dict[str, Any]]) -> None:
        tr = trades_to_frame(rows)
        if self.trade_sink is not None and len(tr):
            try:
                self.trade_sink(self.exchange_id, symbol, tr)
            except Exception:  # a failing sink must not stop the bar stream
                log.exception("alpaca %s: trade sink failed on %d trades", symbol, len(tr))
        if self.timeframe == "1s":
            self._second.setdefault(symbol, []).extend(rows)
            self._close_seconds(emit, symbol, self._clock())

    def _close_seconds(self, emit: Emit, symbol: str, now: int) -> None:
        """1s candles from trades: every second that has ended (now) is closed and emitted."""
        buf = self._second.get(symbol)
        if not buf:
            return
        tr = trades_to_frame(buf)
        done = tr["ts"] < now - now % 1000
        if not done.any():
            return
        self._emit_closed(emit, symbol, candles_from_trades(tr[done], "1s"))
        self._second[symbol] = [r for r, d in zip(buf, done.to_numpy(), strict=True) if not d]

    async def _consume(self, emit: Emit, ws: Any, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                raw = await asyncio.wait_for(ws.recv(), timeout=1.0)
            except TimeoutError:
                for s in self.symbols:
                    self._close_seconds(emit, s, self._clock())
                continue
            self._set(connected=True, error=None, last_message_ms=now_ms())
            by: dict[tuple[str, str], list[dict[str, Any]]] = {}
            for m in json.loads(raw):
                kind = m.get("T")
                if kind == "error":  # 401 not authenticated, 402 auth failed, 405 symbol limit, 409 feed...
                    raise AlpacaRefused(f"alpaca stream: {m.get('code')} {m.get('msg')}")
                if kind in ("b", "u", "t") and m.get("S") in self.symbols:
                    by.setdefault((kind, m["S"]), []).append(m)
            for (kind, sym), rows in by.items():
                if kind == "t":
                    self._on_trades(emit, sym, rows)
                else:
                    await self._on_bars(emit, sym, rows, updated=kind == "u")

    async def _stream(self, emit: Emit, stop: asyncio.Event) -> None:
        import websockets

        backoff = self.reconnect_initial_s
        url = self.stream_url + self._stream_path()
        while not stop.is_set():
            try:
                async with websockets.connect(url, open_timeout=10, close_timeout=2) as ws:
                    await self._handshake(ws)
                    self._set(connected=True, error=None)
                    backoff = self.reconnect_initial_s
                    for s in self.symbols:  # bars that closed while (re)connecting
                        await self._backfill(emit, s)
                    await self._consume(emit, ws, stop)
            except asyncio.CancelledError:
                raise
            except AlpacaRefused as exc:
                self._set(connected=False, error=str(exc))
                raise
            except AlpacaError as exc:
                self._retry_note(str(exc), backoff)
            except (OSError, websockets.WebSocketException, TimeoutError, json.JSONDecodeError) as exc:
                self._retry_note(f"{type(exc).__name__}: {exc}", backoff)
            else:
                continue
            self.backoff_delays.append(backoff)
            await self._sleep(backoff)
            backoff = min(backoff * 2, self.reconnect_max_s)

    def _retry_note(self, msg: str, backoff: float) -> None:
        self._set(connected=False, error=msg, reconnects=self._status.reconnects + 1)
        log.warning("alpaca stream: %s; reconnecting in %.1fs", msg, backoff)

    async def _poll(self, emit: Emit, stop: asyncio.Event) -> None:
        while not stop.is_set():
            for s in self.symbols:
                try:
                    await self._backfill(emit, s)
                    self._set(connected=True, error=None)
                except AlpacaError as exc:
                    self._set(connected=False, error=str(exc))
                    log.warning("alpaca poll %s: %s", s, exc)
            await self._sleep(self.poll_interval_s)

    async def run(self, emit: Emit, stop: asyncio.Event) -> None:
        try:
            for s in self.symbols:
                self._needs_keys(s)
                await self._backfill(emit, s)
            work = asyncio.create_task(self._stream(emit, stop) if self.websocket else self._poll(emit, stop))
            stopper = asyncio.create_task(stop.wait())
            done, _ = await asyncio.wait({work, stopper}, return_when=asyncio.FIRST_COMPLETED)
            for t in (work, stopper):
                t.cancel()
            await asyncio.gather(work, stopper, return_exceptions=True)
            if work in done and not work.cancelled() and work.exception() is not None:
                raise work.exception()  # type: ignore[misc]
        finally:
            self._set(connected=False)
            if self._http is not None:
                await self._http.close()
                self._http = None

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()
            self._http = None


def _retry_after(headers: Any, now: int) -> float | None:
    """Seconds to wait from a 429's Retry-After (seconds) or X-RateLimit-Reset (epoch seconds)."""
    ra = headers.get("Retry-After")
    if ra is not None:
        try:
            return max(0.0, float(ra))
        except ValueError:
            pass
    reset = headers.get("X-RateLimit-Reset")
    if reset is not None:
        try:
            return max(0.0, float(reset) - now / 1000.0)
        except ValueError:
            return None
    return None
