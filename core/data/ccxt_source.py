"""Live and historical candles from any ccxt exchange (public market data: no keys needed).

- REST backfill: ``fetch_ohlcv`` pages under the exchange's own rate limit (enableRateLimit).
- Live: ccxt.pro ``watch_ohlcv`` (and ``watch_trades`` when a trade sink is set); REST polling when
  websockets are off or the exchange has none.
- A candle is closed when a newer candle starts, or when its period has elapsed on ``clock`` (a quiet
  stream is checked every ``close_check_s``; REST then gives the final values).
- On a dropped connection: reconnect with exponential back-off (reconnect_initial_s doubling up to
  reconnect_max_s), then backfill the missed candles by REST before streaming again, so no closed candle
  is lost. Candles are emitted in ts order; in-progress updates with closed=False.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

import ccxt
import numpy as np
import pandas as pd

from core.data.source_base import Emit, SourceStatus, emit_new_closed, now_ms
from core.types import CANDLE_COLUMNS, SeriesKey, timeframe_ms

log = logging.getLogger(__name__)

ALTERNATIVE_EXCHANGES = ("binanceus", "kraken", "coinbase", "bitstamp")
TradeSink = Callable[[str, str, pd.DataFrame], None]  # (exchange, symbol, trades)


class ExchangeUnavailableError(RuntimeError):
    """The exchange refused this region (HTTP 451) or cannot be reached; the message suggests others."""


def unavailable_message(exchange_id: str, exc: BaseException) -> str | None:
    """A clear message when ``exc`` means the exchange refuses us or is unreachable, else None."""
    text = str(exc)
    others = ", ".join(e for e in ALTERNATIVE_EXCHANGES if e != exchange_id)
    if "451" in text or "restricted location" in text.lower() or "unavailable for legal" in text.lower():
        return (f"exchange '{exchange_id}' refuses connections from this region (HTTP 451); "
                f"try another exchange id, e.g. {others}")
    if isinstance(exc, ccxt.ExchangeNotAvailable | ccxt.NetworkError):
        return (f"exchange '{exchange_id}' is unreachable ({type(exc).__name__}: {text[:200]}); check the "
                f"network or try another exchange id, e.g. {others}")
    return None


def ohlcv_to_frame(rows: list[list[Any]]) -> pd.DataFrame:
    """ccxt OHLCV rows [[ts, o, h, l, c, v], ...] -> CANDLE_COLUMNS frame (None -> NaN, for validation)."""
    if not rows:
        return pd.DataFrame({c: pd.Series(dtype="int64" if c == "ts" else "float64") for c in CANDLE_COLUMNS})
    arr = np.array([[np.nan if x is None else x for x in r[:6]] for r in rows], dtype=np.float64)
    out = pd.DataFrame({"ts": arr[:, 0].astype(np.int64)})
    for i, c in enumerate(CANDLE_COLUMNS[1:], start=1):
        out[c] = arr[:, i]
    return out


def trades_to_frame(trades: list[dict[str, Any]]) -> pd.DataFrame:
    """ccxt unified trades -> ts, id, side, price, amount."""
    return pd.DataFrame(
        {
            "ts": np.array([t.get("timestamp") for t in trades], dtype=np.int64),
            "id": [None if t.get("id") is None else str(t["id"]) for t in trades],
            "side": [t.get("side") for t in trades],
            "price": np.array([t.get("price") for t in trades], dtype=np.float64),
            "amount": np.array([t.get("amount") for t in trades], dtype=np.float64),
        }
    )


def make_exchange(exchange_id: str, websocket: bool = True) -> Any:
    """An async ccxt (ccxt.pro when websockets are wanted and supported) instance with rate limiting."""
    import ccxt.async_support as ccxt_async
    import ccxt.pro as ccxt_pro

    if websocket and hasattr(ccxt_pro, exchange_id):
        cls = getattr(ccxt_pro, exchange_id)
    elif hasattr(ccxt_async, exchange_id):
        cls = getattr(ccxt_async, exchange_id)
    else:
        raise ValueError(f"unknown ccxt exchange id {exchange_id!r}; e.g. {', '.join(ALTERNATIVE_EXCHANGES)}")
    return cls({"enableRateLimit": True})


class CcxtSource:
    def __init__(
        self,
        exchange_id: str,
        symbols: list[str],
        timeframe: str,
        *,
        websocket: bool = True,
        poll_interval_s: float = 5.0,
        reconnect_initial_s: float = 1.0,
        reconnect_max_s: float = 60.0,
        backfill_bars: int = 1500,
        page_limit: int = 1000,
        close_check_s: float = 5.0,
        close_grace_ms: int = 2_000,
        exchange: Any | None = None,
        sleep: Callable[[float], Awaitable[None]] | None = None,
        clock: Callable[[], int] | None = None,
        trades: bool = False,
        trade_sink: TradeSink | None = None,
        trade_flush_s: float = 1.0,
        trade_flush_rows: int = 1000,
    ) -> None:
        self.exchange_id = exchange_id
        self.symbols = list(symbols)
        self.timeframe = timeframe
        self.tf_ms = timeframe_ms(timeframe)
        self.websocket = websocket
        self.poll_interval_s = poll_interval_s
        self.reconnect_initial_s = reconnect_initial_s
        self.reconnect_max_s = reconnect_max_s
        self.backfill_bars = backfill_bars
        self.page_limit = page_limit
        self.close_check_s = close_check_s  # how often a quiet stream is checked for an elapsed candle
        self.close_grace_ms = close_grace_ms  # after the period ends, before REST is asked for the final values
        self._exchange = exchange
        self._sleep = sleep or asyncio.sleep
        self._clock = clock or now_ms
        self.trades = trades  # also stream trades (watch_trades) into trade_sink (the provider wires it)
        self.trade_sink = trade_sink
        self.trade_flush_s = trade_flush_s
        self.trade_flush_rows = trade_flush_rows
        self.name = f"ccxt:{exchange_id}"
        self._status = SourceStatus(self.name)
        self.backoff_delays: list[float] = []  # every back-off sleep, for the status page and tests
        self._last_closed: dict[str, int] = {}  # symbol -> ts of the newest closed candle emitted
        self._partial: dict[str, list[float]] = {}  # symbol -> in-progress candle [ts, o, h, l, c, v]

    # ------------------------------------------------------------ helpers

    @property
    def exchange(self) -> Any:
        if self._exchange is None:
            self._exchange = make_exchange(self.exchange_id, self.websocket)
        return self._exchange

    def key(self, symbol: str) -> SeriesKey:
        return SeriesKey(self.exchange_id, symbol, self.timeframe)

    def status(self) -> SourceStatus:
        return self._status

    def _set(self, **kw: Any) -> None:
        self._status = replace(self._status, **kw)

    def _emit_closed(self, emit: Emit, symbol: str, df: pd.DataFrame) -> None:
        newest = emit_new_closed(emit, self.key(symbol), df, self._last_closed.get(symbol))
        if newest is None:
            return
        self._last_closed[symbol] = newest
        self._set(last_message_ms=now_ms(), lag_ms=max(0, self._clock() - (newest + self.tf_ms)))

    # ------------------------------------------------------------ REST

    async def fetch_range(self, symbol: str, since: int, until: int | None = None,
                          on_batch: Callable[[pd.DataFrame], None] | None = None) -> pd.DataFrame:
        """All CLOSED candles with since <= ts < until (until None = up to now), paginated with
        fetch_ohlcv under the exchange rate limit. ``on_batch`` sees each page (progress bars)."""
        cursor = int(since) - int(since) % self.tf_ms
        pages: list[pd.DataFrame] = []
        while True:
            end = self._clock() if until is None else min(int(until), self._clock())
            if cursor >= end:
                break
            try:
                rows = await self.exchange.fetch_ohlcv(symbol, self.timeframe, since=cursor, limit=self.page_limit)
            except ccxt.BaseError as exc:
                msg = unavailable_message(self.exchange_id, exc)
                if msg and "451" in msg:
                    raise ExchangeUnavailableError(msg) from exc
                raise
            df = ohlcv_to_frame(rows)
            df = df[(df["ts"] >= cursor) & (df["ts"] < end)]
            # only closed candles: the period has elapsed on the exchange clock
            df = df[df["ts"] + self.tf_ms <= self._clock()].reset_index(drop=True)
            if df.empty:
                break
            pages.append(df)
            if on_batch is not None:
                on_batch(df)
            cursor = int(df["ts"].iat[-1]) + self.tf_ms
        if not pages:
            return ohlcv_to_frame([])
        return pd.concat(pages, ignore_index=True)

    async def _backfill(self, emit: Emit, symbol: str, until: int | None = None) -> None:
        """REST: every closed candle after the newest one emitted (or the last backfill_bars) until
        ``until`` (exclusive; None = now)."""
        last = self._last_closed.get(symbol)
        since = (last + self.tf_ms) if last is not None else self._clock() - self.backfill_bars * self.tf_ms
        df = await self.fetch_range(symbol, since, until)
        if not df.empty:
            log.info("%s %s: backfilled %d candle(s) by REST from %d", self.name, symbol, len(df), since)
            self._emit_closed(emit, symbol, df)

    # ------------------------------------------------------------ streaming

    async def _on_candles(self, emit: Emit, symbol: str, rows: list[list[Any]]) -> None:
        """Fold stream rows (oldest first) into closed / in-progress emissions; a candle that arrives
        after missed ones triggers a REST backfill of the hole first, so closed candles stay contiguous."""
        for r in sorted(rows, key=lambda x: x[0]):
            ts = int(r[0])
            last = self._last_closed.get(symbol)
            if last is not None and ts <= last:
                continue  # already closed and delivered
            cur = self._partial.get(symbol)
            if cur is not None and ts > cur[0]:
                # a newer candle started: the partial one is closed
                self._partial.pop(symbol, None)
                self._emit_closed(emit, symbol, ohlcv_to_frame([cur]))
            last = self._last_closed.get(symbol)
            if last is not None and ts > last + self.tf_ms:
                await self._backfill(emit, symbol, until=ts)
                last = self._last_closed.get(symbol)
                if last is not None and ts <= last:
                    continue
            if ts + self.tf_ms <= self._clock():
                self._emit_closed(emit, symbol, ohlcv_to_frame([r]))  # its period already elapsed
                continue
            self._partial[symbol] = list(r[:6])
            emit(self.key(symbol), ohlcv_to_frame([r]), False)

    def _quiet_timeout(self, symbol: str) -> float:
        """Seconds to wait for the stream before checking whether the in-progress candle's period has
        elapsed (quiet markets send no newer candle to close it)."""
        cur = self._partial.get(symbol)
        if cur is None:
            return self.close_check_s
        remaining = (int(cur[0]) + self.tf_ms + self.close_grace_ms - self._clock()) / 1000.0
        return max(0.01, min(self.close_check_s, remaining))

    async def _close_elapsed(self, emit: Emit, symbol: str) -> None:
        """Close the in-progress candle once its period (plus a grace for the exchange to settle) has
        elapsed: REST gives its final values; without a REST candle the stream's last state is final."""
        cur = self._partial.get(symbol)
        if cur is None or self._clock() < int(cur[0]) + self.tf_ms + self.close_grace_ms:
            return
        try:
            await self._backfill(emit, symbol)
        except ccxt.BaseError as exc:
            log.warning("%s %s: REST check of an elapsed candle failed (%s); will retry", self.name, symbol, exc)
            return
        if self._partial.get(symbol) is cur:
            self._partial.pop(symbol)
            self._emit_closed(emit, symbol, ohlcv_to_frame([cur]))

    async def _watch(self, emit: Emit, stop: asyncio.Event, symbol: str) -> None:
        backoff = self.reconnect_initial_s
        ex = self.exchange
        use_ws = self.websocket and bool(getattr(ex, "has", {}).get("watchOHLCV"))
        if self.websocket and not use_ws:
            log.info("%s has no websocket OHLCV: polling REST every %.1fs", self.name, self.poll_interval_s)
        watch: asyncio.Future | None = None  # kept across quiet-timeouts: never cancel a pending ccxt watch
        try:
            while not stop.is_set():
                try:
                    if use_ws:
                        if watch is None:
                            watch = asyncio.ensure_future(ex.watch_ohlcv(symbol, self.timeframe))
                        done, _ = await asyncio.wait({watch}, timeout=self._quiet_timeout(symbol))
                        if not done:
                            await self._close_elapsed(emit, symbol)
                            continue
                        finished, watch = watch, None
                        rows = finished.result()
                    else:
                        since = self._last_closed.get(symbol, self._clock() - 2 * self.tf_ms) + self.tf_ms
                        rows = await ex.fetch_ohlcv(symbol, self.timeframe, since=since, limit=self.page_limit)
                    self._set(connected=True, error=None, last_message_ms=now_ms())
                    backoff = self.reconnect_initial_s
                    await self._on_candles(emit, symbol, rows)
                    if not use_ws:
                        await self._sleep(self.poll_interval_s)
                except asyncio.CancelledError:
                    raise
                except ccxt.BaseError as exc:
                    msg = unavailable_message(self.exchange_id, exc) or f"{type(exc).__name__}: {exc}"
                    if "451" in msg:
                        self._set(connected=False, error=msg)
                        raise ExchangeUnavailableError(msg) from exc
                    self._set(connected=False, error=msg, reconnects=self._status.reconnects + 1)
                    log.warning("%s %s: %s; reconnecting in %.1fs", self.name, symbol, msg, backoff)
                    self.backoff_delays.append(backoff)
                    await self._sleep(backoff)
                    backoff = min(backoff * 2, self.reconnect_max_s)
                    try:
                        await self._backfill(emit, symbol)  # the candles missed while disconnected
                    except ccxt.BaseError as exc2:
                        log.warning("%s %s: backfill after reconnect failed (%s); will retry", self.name, symbol,
                                    exc2)
        finally:
            if watch is not None:
                watch.cancel()

    async def _watch_trades(self, stop: asyncio.Event, symbol: str) -> None:
        """Stream trades into ``trade_sink`` in batches (every trade_flush_s or trade_flush_rows): one store
        write per batch, not per message. Trades missed while disconnected are not backfilled."""
        backoff = self.reconnect_initial_s
        buf: list[dict[str, Any]] = []
        last_flush = asyncio.get_running_loop().time()

        def flush() -> None:
            nonlocal last_flush
            last_flush = asyncio.get_running_loop().time()
            if buf and self.trade_sink is not None:
                batch = trades_to_frame(buf)
                buf.clear()
                try:
                    self.trade_sink(self.exchange_id, symbol, batch)
                except Exception:  # a failing sink must not stop the candle stream
                    log.exception("%s %s: trade sink failed on %d trades", self.name, symbol, len(batch))

        watch: asyncio.Future | None = None
        try:
            while not stop.is_set() and self.trade_sink is not None:
                try:
                    if watch is None:
                        watch = asyncio.ensure_future(self.exchange.watch_trades(symbol))
                    wait = max(0.01, self.trade_flush_s - (asyncio.get_running_loop().time() - last_flush))
                    done, _ = await asyncio.wait({watch}, timeout=wait)
                    if done:
                        finished, watch = watch, None
                        buf.extend(finished.result())
                        backoff = self.reconnect_initial_s
                    if len(buf) >= self.trade_flush_rows or \
                            asyncio.get_running_loop().time() - last_flush >= self.trade_flush_s:
                        flush()
                except asyncio.CancelledError:
                    raise
                except ccxt.BaseError as exc:
                    log.warning("%s %s trades: %s; reconnecting in %.1fs", self.name, symbol, exc, backoff)
                    flush()
                    await self._sleep(backoff)
                    backoff = min(backoff * 2, self.reconnect_max_s)
        finally:
            if watch is not None:
                watch.cancel()
            flush()

    async def run(self, emit: Emit, stop: asyncio.Event) -> None:
        ex = self.exchange
        try:
            backoff = self.reconnect_initial_s
            while not stop.is_set():
                try:
                    if not getattr(ex, "markets", None):
                        await ex.load_markets()
                    for s in self.symbols:
                        await self._backfill(emit, s)
                    break
                except ccxt.BaseError as exc:
                    msg = unavailable_message(self.exchange_id, exc) or f"{type(exc).__name__}: {exc}"
                    self._set(connected=False, error=msg)
                    if "451" in msg:
                        raise ExchangeUnavailableError(msg) from exc
                    if not isinstance(exc, ccxt.NetworkError):
                        raise
                    log.warning("%s: %s; retrying in %.1fs", self.name, msg, backoff)
                    self.backoff_delays.append(backoff)
                    await self._sleep(backoff)
                    backoff = min(backoff * 2, self.reconnect_max_s)
            tasks = [asyncio.create_task(self._watch(emit, stop, s)) for s in self.symbols]
            if self.trades and self.trade_sink is not None and getattr(ex, "has", {}).get("watchTrades"):
                tasks += [asyncio.create_task(self._watch_trades(stop, s)) for s in self.symbols]
            stopper = asyncio.create_task(stop.wait())
            done, _ = await asyncio.wait([*tasks, stopper], return_when=asyncio.FIRST_COMPLETED)
            for t in (*tasks, stopper):
                t.cancel()
            await asyncio.gather(*tasks, stopper, return_exceptions=True)
            for t in done:
                if t is not stopper and not t.cancelled() and t.exception() is not None:
                    raise t.exception()  # type: ignore[misc]
        finally:
            self._set(connected=False)
            close = getattr(ex, "close", None)
            if close is not None:
                try:
                    await close()
                except Exception:  # closing a half-open client must not hide the real error
                    log.debug("%s: error while closing the exchange", self.name, exc_info=True)
