"""DataProvider: validate -> store -> cache -> resample higher timeframes -> publish closed-candle events.

- One ring buffer per (symbol, timeframe) holds CLOSED candles; the in-progress candle lives beside it.
- Higher timeframes are built from base candles as they close: a higher-tf candle is published closed
  when its last base candle closes, or — when that base candle never comes (thin markets have gaps) —
  when the first base candle of a later bucket closes. The result equals ``resample()`` over the same
  base series. Only the bucket in progress at a cold start (no earlier base candle cached, no ``warm``)
  is not published: its first minutes were never seen, so its open would be wrong.
- ``ingest`` is synchronous and serialised; subscribers are called in event order outside the data
  lock, so they may call ``snapshot``; a raising subscriber is logged and the others still receive.
- ``start()`` runs the sources in an asyncio loop on its own thread; their ``emit`` is ``ingest``.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from core.data.resample import bucket_bounds, bucket_start, check_ratio, resample
from core.data.ringbuffer import CandleRing
from core.data.source_base import Source, SourceStatus
from core.data.store import MarketStore
from core.data.validate import REASONS, candle_arrays, log_rejections, rule_codes, validate_trades
from core.market.calendar import Calendar, SessionCalendar
from core.types import CANDLE_COLUMNS, CandleEvent, SeriesKey, timeframe_ms

log = logging.getLogger(__name__)

Callback = Callable[[CandleEvent], None]


@dataclass(slots=True)
class _Subscriber:
    callback: Callback
    symbols: frozenset[str] | None
    timeframes: frozenset[str] | None
    in_progress: bool
    failures: int = 0

    def wants(self, ev: CandleEvent) -> bool:
        if not ev.closed and not self.in_progress:
            return False
        if self.symbols is not None and ev.key.symbol not in self.symbols:
            return False
        return self.timeframes is None or ev.key.timeframe in self.timeframes


@dataclass(slots=True)
class _Bucket:
    """A higher-timeframe candle being built from closed base candles."""

    ts: int
    open: float
    high: float
    low: float
    close: float
    volume: float
    complete_start: bool  # its first base candle was seen (or it came from the store)

    def add(self, h: float, lo: float, c: float, v: float) -> None:
        self.high = max(self.high, h)
        self.low = min(self.low, lo)
        self.close = c
        self.volume += v


class DataProvider:
    def __init__(self, store: MarketStore | None, base_timeframe: str, timeframes: list[str],
                 cache_bars: int = 1500, exchange: str = "binanceus", *, max_future_ms: int = 5_000,
                 max_warm_bars: int = 100_000, calendar: Calendar | None = None) -> None:
        timeframe_ms(base_timeframe)
        tfs = list(dict.fromkeys([base_timeframe, *timeframes]))
        for tf in tfs:
            check_ratio(base_timeframe, tf)
        self.store = store
        self.base_timeframe = base_timeframe
        self.timeframes = tfs
        self.higher = [tf for tf in tfs if tf != base_timeframe]
        self.cache_bars = cache_bars
        self.exchange = exchange
        self.max_future_ms = max_future_ms
        self.max_warm_bars = max_warm_bars
        # a market with sessions (stocks): bars on no trading day are rejected (outside_session), bars
        # outside the configured session are filtered (counted in filtered_rows), higher timeframes are
        # built within sessions. None / 24x7: the code path of crypto, unchanged.
        self.calendar = calendar if calendar is not None and not calendar.always_open else None
        self.filtered_rows = 0
        self._base_ms = timeframe_ms(base_timeframe)
        self._lock = threading.RLock()  # data: rings, partials, buckets
        self._ingest_lock = threading.RLock()  # serialises ingest so events keep their order
        self._rings: dict[tuple[str, str], CandleRing] = {}
        self._partial: dict[tuple[str, str], CandleEvent] = {}
        self._buckets: dict[tuple[str, str], _Bucket] = {}
        self._subs: dict[int, _Subscriber] = {}
        self._next_token = 1
        self._sources: list[Source] = []
        self._rejected: dict[str, int] = {}  # source name -> rejected rows
        self._errors: dict[str, str] = {}
        self.rejected_counts: dict[str, int] = {}  # reason -> rows, all sources
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_event: asyncio.Event | None = None

    # ------------------------------------------------------------ cache access

    def _ring(self, symbol: str, timeframe: str) -> CandleRing:
        ring = self._rings.get((symbol, timeframe))
        if ring is None:
            if timeframe not in self.timeframes:
                raise KeyError(f"timeframe {timeframe!r} is not served; configured: {', '.join(self.timeframes)}")
            ring = self._rings[(symbol, timeframe)] = CandleRing(self.cache_bars)
        return ring

    def arrays(self, symbol: str, timeframe: str, n: int | None = None) -> dict[str, np.ndarray]:
        """The newest n closed candles as read-only numpy copies {ts, open, high, low, close, volume}."""
        with self._lock:
            ts, vals = self._ring(symbol, timeframe).read(n)
        out = {"ts": ts}
        for i, c in enumerate(CANDLE_COLUMNS[1:]):
            out[c] = vals[i]
        for a in out.values():
            a.flags.writeable = False
        return out

    def snapshot(self, symbol: str, timeframe: str, n: int | None = None) -> pd.DataFrame:
        """The newest n closed candles (all cached when None) as a new DataFrame of CANDLE_COLUMNS."""
        with self._lock:
            ts, vals = self._ring(symbol, timeframe).read(n)
        df = pd.DataFrame({"ts": ts})
        for i, c in enumerate(CANDLE_COLUMNS[1:]):
            df[c] = vals[i]
        return df

    def partial(self, symbol: str, timeframe: str) -> CandleEvent | None:
        """The newest in-progress update of (symbol, timeframe), if any."""
        with self._lock:
            return self._partial.get((symbol, timeframe))

    def frames(self, symbol: str, n: int | None = None) -> dict[str, pd.DataFrame]:
        """{timeframe: snapshot} for every served timeframe (what FeatureBuilder.build_one takes)."""
        return {tf: self.snapshot(symbol, tf, n) for tf in self.timeframes}

    # ------------------------------------------------------------ subscriptions

    def subscribe(self, callback: Callback, symbols: list[str] | None = None,
                  timeframes: list[str] | None = None, in_progress: bool = False) -> int:
        with self._lock:
            token = self._next_token
            self._next_token += 1
            self._subs[token] = _Subscriber(
                callback,
                None if symbols is None else frozenset(symbols),
                None if timeframes is None else frozenset(timeframes),
                in_progress,
            )
            return token

    def unsubscribe(self, token: int) -> None:
        with self._lock:
            self._subs.pop(token, None)

    def _publish(self, events: list[CandleEvent]) -> None:
        if not events:
            return
        with self._lock:
            subs = list(self._subs.items())
        for ev in events:
            for token, sub in subs:
                if not sub.wants(ev):
                    continue
                try:
                    sub.callback(ev)
                except Exception:
                    # isolate: one broken subscriber must not starve the others
                    sub.failures += 1
                    log.exception("subscriber %d failed on %s %s %s (failure %d)", token, ev.key.symbol,
                                  ev.key.timeframe, ev.ts, sub.failures)

    # ------------------------------------------------------------ ingest

    def ingest(self, key: SeriesKey, df: pd.DataFrame, closed: bool = True, *,
               source: str | None = None, now_ms_: int | None = None, persist: bool = True) -> list[CandleEvent]:
        """Validate -> store -> cache -> resample -> publish. Returns the events published (closed
        candles, plus in-progress updates when closed=False). Rejected rows are counted per ``source``
        (and per reason in ``rejected_counts``), logged with their reason, and never stored.
        ``persist=False`` skips the store (candles replayed from it)."""
        ts, ts_bad, vals = candle_arrays(df)
        with self._ingest_lock:
            with self._lock:
                last = self._ring(key.symbol, key.timeframe).last_ts
            tf_ms = timeframe_ms(key.timeframe)
            # closed: ts == last re-delivers the newest candle; in progress: must be after it
            floor = last if closed or last is None else last + tf_ms
            now = int(time.time() * 1000) if now_ms_ is None else int(now_ms_)
            code = rule_codes(ts, ts_bad, vals, key.timeframe, now, floor, self.max_future_ms, self.calendar)
            if code.any():
                self._count_rejected(key, df, code, source)
                ok = code == 0
                ts, vals = ts[ok], vals[ok]
            if self.calendar is not None and len(ts):
                keep = self.calendar.contains(ts, tf_ms)  # extended-hours bars of an rth market
                if not keep.all():
                    with self._lock:
                        self.filtered_rows += int((~keep).sum())
                    ts, vals = ts[keep], vals[keep]
            if len(ts) == 0:
                return []
            if closed:
                if self.store is not None and persist:
                    frame = pd.DataFrame({"ts": ts, "open": vals[:, 0], "high": vals[:, 1], "low": vals[:, 2],
                                          "close": vals[:, 3], "volume": vals[:, 4]})
                    self.store.upsert_candles(key, frame, validate=False)
                events = self._apply_closed(key, ts, vals)
            else:
                events = self._apply_partial(key, ts, vals)
            self._publish(events)
            return events

    def _count_rejected(self, key: SeriesKey, df: pd.DataFrame, code: np.ndarray, source: str | None) -> None:
        bad = code != 0
        rej = df.loc[bad, list(CANDLE_COLUMNS)].copy()
        rej["reason"] = [REASONS[i - 1] for i in code[bad]]
        counts = {r: int(k) for r, k in rej["reason"].value_counts().items()}
        name = source or "ingest"
        with self._lock:
            self._rejected[name] = self._rejected.get(name, 0) + int(bad.sum())
            for r, k in counts.items():
                self.rejected_counts[r] = self.rejected_counts.get(r, 0) + k
        log_rejections(rej, counts, key.timeframe, f"{name} {key.symbol}")

    def _apply_closed(self, key: SeriesKey, ts: np.ndarray, vals: np.ndarray) -> list[CandleEvent]:
        events: list[CandleEvent] = []
        sym, tf = key.symbol, key.timeframe
        with self._lock:
            ring = self._ring(sym, tf)
            for j in range(len(ts)):
                t = int(ts[j])
                o, h, lo, c, v = vals[j].tolist()
                last = ring.last_ts
                if last is not None and t == last:
                    # re-delivered / corrected candle: update the cache, do not publish it twice
                    if ring.last_row() != (t, o, h, lo, c, v):
                        log.info("%s %s %s: closed candle %d corrected", key.exchange, sym, tf, t)
                        ring.replace_last(o, h, lo, c, v)
                    continue
                ring.append(t, o, h, lo, c, v)
                self._partial.pop((sym, tf), None)
                ev = CandleEvent(key, t, o, h, lo, c, v, True)
                if tf == self.base_timeframe:
                    pre, post = self._feed_higher(key, t, o, h, lo, c, v, prev=last)
                    events.extend(pre)
                    events.append(ev)
                    events.extend(post)
                else:
                    events.append(ev)
        return events

    def _feed_higher(self, key: SeriesKey, t: int, o: float, h: float, lo: float, c: float,
                     v: float, prev: int | None) -> tuple[list[CandleEvent], list[CandleEvent]]:
        """Add one closed base candle to every higher timeframe. Returns (events closed because this
        candle starts a later bucket, events closed because it completes its bucket). ``prev`` is the
        previous base candle seen: a bucket opened by a later minute is complete from its start when
        the series was already being followed before it (the earlier minutes are real gaps)."""
        pre: list[CandleEvent] = []
        post: list[CandleEvent] = []
        for htf in self.higher:
            b, end = self._bucket(t, htf)
            bk = (key.symbol, htf)
            cur = self._buckets.get(bk)
            if cur is not None and cur.ts != b:
                ev = self._close_bucket(key, htf, cur)
                if ev is not None:
                    pre.append(ev)
                cur = None
            if cur is None:
                cur = self._buckets[bk] = _Bucket(b, o, h, lo, c, v,
                                                   complete_start=(t == b or (prev is not None and prev < b)))
            else:
                cur.add(h, lo, c, v)
            if t + self._base_ms >= end:
                self._buckets.pop(bk, None)
                ev = self._close_bucket(key, htf, cur)
                if ev is not None:
                    post.append(ev)
        return pre, post

    def _bucket(self, t: int, htf: str) -> tuple[int, int]:
        """(open, end) of the ``htf`` bucket holding base bar ``t`` (scalar fast path for 24x7)."""
        if self.calendar is None:
            b = int(bucket_start(t, htf))
            return b, b + timeframe_ms(htf)
        if isinstance(self.calendar, SessionCalendar):
            return self.calendar.bucket_of(t, htf)
        start, end = self.calendar.buckets(np.array([t], dtype=np.int64), htf)
        return int(start[0]), int(end[0])

    def _close_bucket(self, key: SeriesKey, htf: str, b: _Bucket) -> CandleEvent | None:
        if not b.complete_start:
            log.info("%s %s: %s bucket %d started before the first base candle seen; not published "
                     "(warm the cache from the store to avoid this)", key.symbol, htf, htf, b.ts)
            return None
        ring = self._ring(key.symbol, htf)
        if ring.last_ts is not None and b.ts <= ring.last_ts:
            return None
        ring.append(b.ts, b.open, b.high, b.low, b.close, b.volume)
        self._partial.pop((key.symbol, htf), None)
        return CandleEvent(SeriesKey(key.exchange, key.symbol, htf), b.ts, b.open, b.high, b.low,
                           b.close, b.volume, True)

    def _apply_partial(self, key: SeriesKey, ts: np.ndarray, vals: np.ndarray) -> list[CandleEvent]:
        t = int(ts[-1])  # only the newest state of the in-progress candle matters
        o, h, lo, c, v = vals[-1].tolist()
        ev = CandleEvent(key, t, o, h, lo, c, v, False)
        events = [ev]
        with self._lock:
            self._partial[(key.symbol, key.timeframe)] = ev
            if key.timeframe == self.base_timeframe:
                for htf in self.higher:
                    b = self._bucket(t, htf)[0]
                    cur = self._buckets.get((key.symbol, htf))
                    if cur is not None and cur.ts == b:
                        hev = CandleEvent(SeriesKey(key.exchange, key.symbol, htf), b, cur.open,
                                          max(cur.high, h), min(cur.low, lo), c, cur.volume + v, False)
                    elif t == b:
                        hev = CandleEvent(SeriesKey(key.exchange, key.symbol, htf), b, o, h, lo, c, v, False)
                    else:
                        continue
                    self._partial[(key.symbol, htf)] = hev
                    events.append(hev)
        return events

    def ingest_trades(self, exchange: str, symbol: str, df: pd.DataFrame, *, source: str | None = None) -> int:
        """Validate and store trades (rejected ones are counted, never stored). Returns rows written."""
        res = validate_trades(df, source=source or exchange)
        if res.counts:
            name = source or "ingest"
            with self._lock:
                self._rejected[name] = self._rejected.get(name, 0) + res.n_rejected
        if self.store is None or res.valid.empty:
            return 0
        return self.store.upsert_trades(exchange, symbol, res.valid, validate=False)

    # ------------------------------------------------------------ warm start

    def warm(self, symbol: str, timeframe: str | None = None) -> int:
        """Fill the caches of ``symbol`` from the store: the newest base candles (enough to cover
        cache_bars of the higher timeframes, at most max_warm_bars) resampled to every timeframe; the
        trailing incomplete higher bucket continues with the next live base candle. Returns base bars
        loaded."""
        tf = timeframe or self.base_timeframe
        if tf != self.base_timeframe:
            raise ValueError(f"warm loads the base timeframe {self.base_timeframe}, not {tf}")
        if self.store is None:
            return 0
        key = SeriesKey(self.exchange, symbol, tf)
        ratio = max(timeframe_ms(t) // self._base_ms for t in self.timeframes)
        want = min(self.cache_bars * ratio, max(self.max_warm_bars, self.cache_bars))
        base = self.store.last_candles(key, want)
        if self.calendar is not None and len(base):  # stored under another session setting
            base = base[self.calendar.contains(base["ts"].to_numpy(np.int64), self._base_ms)]
            base = base.reset_index(drop=True)
        if base.empty:
            return 0
        whole_series = len(base) < want  # nothing older exists: the first bucket is complete as is
        with self._ingest_lock, self._lock:
            ring = self._ring(symbol, tf)
            tail = base.iloc[-self.cache_bars:]
            ring.extend(tail["ts"].to_numpy(dtype=np.int64), tail[list(CANDLE_COLUMNS[1:])].to_numpy())
            last_ts = int(base["ts"].iat[-1])
            for htf in self.higher:
                hi = resample(base, tf, htf, closed_only=False, calendar=self.calendar)
                if hi.empty:
                    continue
                first_ts = int(base["ts"].iat[0])
                if not whole_series and first_ts != int(hi["ts"].iat[0]):
                    hi = hi.iloc[1:]  # loaded from mid-bucket: that bucket's open is unknown
                last_complete = last_ts + self._base_ms >= int(bucket_bounds(
                    hi["ts"].to_numpy(dtype=np.int64)[-1:], htf, self.calendar)[1][0]) \
                    if not hi.empty else True
                closed = hi if last_complete else hi.iloc[:-1]
                r = self._ring(symbol, htf)
                r.extend(closed["ts"].to_numpy(dtype=np.int64), closed[list(CANDLE_COLUMNS[1:])].to_numpy())
                if not last_complete:
                    row = hi.iloc[-1]
                    o, h, lo, c, v = (float(row[k]) for k in CANDLE_COLUMNS[1:])
                    self._buckets[(symbol, htf)] = _Bucket(int(row["ts"]), o, h, lo, c, v, complete_start=True)
        return len(base)

    # ------------------------------------------------------------ sources

    def add_source(self, source: Source) -> None:
        if getattr(source, "trades", False) and getattr(source, "trade_sink", "absent") is None:
            source.trade_sink = lambda ex, sym, df: self.ingest_trades(ex, sym, df, source=source.name)  # type: ignore[attr-defined]
        self._sources.append(source)

    def status(self) -> dict[str, SourceStatus]:
        out: dict[str, SourceStatus] = {}
        for s in self._sources:
            st = s.status()
            with self._lock:
                extra = self._rejected.get(s.name, 0)
                err = self._errors.get(s.name) or st.error
            out[s.name] = replace(st, rejected_rows=st.rejected_rows + extra, error=err)
        return out

    def _emit_for(self, source: Source) -> Callable[[SeriesKey, pd.DataFrame, bool], None]:
        def emit(key: SeriesKey, df: pd.DataFrame, closed: bool) -> None:
            try:
                self.ingest(key, df, closed, source=source.name, persist=getattr(source, "persist", True))
            except Exception as exc:  # a bad batch or a store failure must not kill the source
                self._errors[source.name] = f"ingest failed: {type(exc).__name__}: {exc}"
                log.exception("%s: ingest of %d row(s) failed", source.name, len(df))
        return emit

    async def _run_sources(self, stop: asyncio.Event) -> None:
        async def one(src: Source) -> None:
            try:
                await src.run(self._emit_for(src), stop)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._errors[src.name] = f"{type(exc).__name__}: {exc}"
                log.error("source %s stopped: %s", src.name, exc)

        await asyncio.gather(*(one(s) for s in self._sources))

    def start(self) -> None:
        """Run every source on an asyncio loop in a daemon thread (returns at once)."""
        if self._thread is not None and self._thread.is_alive():
            return
        ready = threading.Event()

        def main() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            self._stop_event = asyncio.Event()
            task = loop.create_task(self._run_sources(self._stop_event))
            ready.set()
            try:
                loop.run_until_complete(task)
            except asyncio.CancelledError:
                pass
            finally:
                loop.close()

        self._thread = threading.Thread(target=main, name="data-sources", daemon=True)
        self._thread.start()
        ready.wait(5)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until every source has finished (replays/files end); True if they did."""
        if self._thread is None:
            return True
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def stop(self, timeout: float = 10.0) -> None:
        loop, ev = self._loop, self._stop_event
        if loop is not None and ev is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(ev.set)
            except RuntimeError:
                pass  # loop already finished
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive() and loop is not None and not loop.is_closed():
                for t in asyncio.all_tasks(loop):
                    loop.call_soon_threadsafe(t.cancel)
                self._thread.join(timeout)
        self._thread = None

