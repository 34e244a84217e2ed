"""Consolidated book of one coin, fed message by message (live or replay), sampled every whole second.

A message received at or after second S first closes S: the snapshot at S is the books after every
message received before S (the rule of the shared reference rebuild), so a second's row never contains
anything received later. Snapshots go to a bounded history (the page's heatmap) and, in batches, to the
store (``book_buckets`` long rows, ``book_summary`` one row per second for the features).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from core.config import OrderbookConfig
from core.data.book_buckets import BucketSnapshot, Consolidator, VenueBook, check_quotes
from core.data.book_feeds import BookTrade, VenueFeed
from core.data.book_replay import RawMessage, capture_venues, play, read_capture
from core.data.book_source import make_feed, native_id

# inverse (coin-margined) markets: quote value of one contract, by venue and base coin
CONTRACT_SIZES: dict[tuple[str, str], float] = {("binancecoinm", "BTC"): 100.0, ("binancecoinm", "ETH"): 10.0}

STALE_MS = 10_000  # a venue without a message for this long is not consolidated (its book may be dead)
SUMMARY_COLUMNS = ("ts", "symbol", "mid", "best_bid", "best_ask", "spread", "imb_1", "imb_5", "imb_all",
                   "ma_1s", "ma_5s", "ma_15s", "ma_60s", "depth_bid_10bps", "depth_ask_10bps",
                   "depth_bid_50bps", "depth_ask_50bps", "wall_bid_bps", "wall_ask_bps")


@dataclass(frozen=True, slots=True)
class VenueSymbol:
    venue: str
    symbol: str  # ccxt symbol on that venue (BTC/USDT, BTC/USDT:USDT, BTC/USD:BTC)

    @property
    def base(self) -> str:
        return self.symbol.split("/")[0]

    @property
    def contract_size(self) -> float | None:
        return CONTRACT_SIZES.get((self.venue, self.base)) if ":" in self.symbol else None


def summary_row(snap: BucketSnapshot, symbol: str) -> dict:
    """The per-second figures the features use (one row of ``book_summary``)."""
    db10, da10 = snap.depth_within_bps(10)
    db50, da50 = snap.depth_within_bps(50)
    wb = [w.distance_bps for w in snap.walls if w.side == "bid"]
    wa = [w.distance_bps for w in snap.walls if w.side == "ask"]
    ma = snap.imbalance_ma
    return {"ts": snap.ts_ms, "symbol": symbol, "mid": snap.mid, "best_bid": snap.consolidated_bid,
            "best_ask": snap.consolidated_ask, "spread": snap.spread, "imb_1": snap.total_imbalance(1),
            "imb_5": snap.total_imbalance(5), "imb_all": snap.total_imbalance(),
            "ma_1s": ma.get(1, 0.0), "ma_5s": ma.get(5, 0.0), "ma_15s": ma.get(15, 0.0), "ma_60s": ma.get(60, 0.0),
            "depth_bid_10bps": db10, "depth_ask_10bps": da10, "depth_bid_50bps": db50, "depth_ask_50bps": da50,
            "wall_bid_bps": min(wb) if wb else np.nan, "wall_ask_bps": min(wa) if wa else np.nan}


def bucket_rows(snap: BucketSnapshot, symbol: str) -> pd.DataFrame:
    """Long rows of ``book_buckets``: one per (venue or 'all', bucket) with any volume."""
    parts = []
    for name, b, a in [*zip(snap.venues, snap.bid, snap.ask, strict=True),
                       ("all", snap.bid_total, snap.ask_total)]:
        keep = (b > 0) | (a > 0)
        parts.append(pd.DataFrame({"ts": snap.ts_ms, "symbol": symbol, "venue": name,
                                   "bucket": snap.prices[keep], "bid": b[keep], "ask": a[keep]}))
    return pd.concat(parts, ignore_index=True)


class BookEngine:
    """Feeds + consolidation + history for one coin across venues. Thread-safe readers: ``history`` and
    ``status()`` are read by the web server while a source thread calls ``on_message``."""

    def __init__(self, symbol: str, venues: list[VenueSymbol], consolidator: Consolidator,
                 usd_equivalent: bool = False, history_s: int = 900,
                 sink: Callable[[BucketSnapshot], None] | None = None) -> None:
        check_quotes([v.symbol for v in venues], usd_equivalent)
        self.symbol = symbol
        self.venues = list(venues)
        self.consolidator = consolidator
        self.feeds: dict[str, VenueFeed] = {
            v.venue: make_feed(v.venue, {native_id(v.venue, v.symbol): v.symbol}) for v in venues}
        self.history: deque[BucketSnapshot] = deque(maxlen=history_s)
        self.trades: deque[tuple[int, float, float, str, str]] = deque(maxlen=50_000)  # ts, price, amount, side, venue
        self.sink = sink
        self._contract = {v.venue: v.contract_size for v in venues}
        self.next_s: int | None = None
        self.lock = threading.Lock()
        self.messages = 0
        self.seconds = 0  # snapshots made (history keeps only the last history_s)
        # how the books arrive: "replay", or "live" with per-venue connection state set by the sources
        self.source_kind = "replay"
        self.connected: dict[str, bool] = {}

    def venue_books(self, now_ms: int | None = None) -> list[VenueBook]:
        """Synced books; a venue silent for more than ``STALE_MS`` (stream gone quiet) is left out."""
        out = []
        for v in self.venues:
            sync = self.feeds[v.venue].syncs[v.symbol]
            if now_ms is not None and now_ms - sync.stats.last_recv_ms > STALE_MS:
                continue
            if sync.synced:
                out.append(VenueBook(v.venue, v.symbol, sync.book, v.contract_size))
        return out

    def on_message(self, m: RawMessage) -> None:
        recv_ms = m.recv_ns // 1_000_000
        self.advance(recv_ms)
        feed = self.feeds.get(m.venue)
        if feed is None:
            return
        self.messages += 1
        if m.kind == "http":
            feed.on_http(m.payload, recv_ms, m.symbol or next(iter(feed.syncs)))
        else:
            n_before = len(feed.trades)
            feed.on_ws(m.payload, recv_ms)
            if len(feed.trades) != n_before:
                self._take_trades(feed, recv_ms)

    def _take_trades(self, feed: VenueFeed, recv_ms: int) -> None:
        cs = self._contract[feed.venue]
        while feed.trades:
            t: BookTrade = feed.trades.popleft()
            amount = t.amount * cs / t.price if cs else t.amount
            self.trades.append((recv_ms, t.price, amount, t.side, feed.venue))

    def advance(self, now_ms: int) -> None:
        """Close every whole second up to ``now_ms`` (a second with no books yet is skipped)."""
        s = now_ms // 1000
        if self.next_s is None:
            self.next_s = s + 1
            return
        while self.next_s <= s:
            snap = self.consolidator.snapshot(self.next_s * 1000, self.venue_books(self.next_s * 1000))
            self.next_s += 1
            if snap is None:
                continue
            self.seconds += 1
            with self.lock:
                self.history.append(snap)
            if self.sink is not None:
                self.sink(snap)
            if self.next_s <= s - 5:  # a long silence: jump instead of emitting identical seconds
                self.next_s = s

    def status(self) -> list[dict]:
        """Per venue: synced, messages, resyncs (by reason), gaps, lag."""
        out = []
        for v in self.venues:
            st = self.feeds[v.venue].syncs[v.symbol]
            d = st.stats.as_dict()
            d.update(venue=v.venue, symbol=v.symbol, synced=st.synced,
                     source=("connected" if self.connected.get(v.venue) else "disconnected")
                     if self.source_kind == "live" else self.source_kind)
            out.append(d)
        return out

    def summary_rows(self, symbol: str, start_ms: int, end_ms: int) -> pd.DataFrame | None:
        """``book_summary`` rows of the in-memory history in [start_ms, end_ms] (FeatureBuilder.book_rows for
        live decisions: the store only gets them in batches). None for another symbol."""
        if symbol != self.symbol:
            return None
        with self.lock:
            snaps = [s for s in list(self.history)[-120:] if start_ms <= s.ts_ms <= end_ms]
        return pd.DataFrame([summary_row(s, self.symbol) for s in snaps], columns=list(SUMMARY_COLUMNS))

    def snapshot_history(self) -> list[BucketSnapshot]:
        with self.lock:
            return list(self.history)


def venue_symbol(venue: str, symbol: str) -> VenueSymbol:
    """The configured coin's market on a venue: spot as given, USD-M ``BASE/QUOTE:QUOTE``, COIN-M
    ``BASE/USD:BASE``; Coinbase and Gemini list BTC against USD."""
    base, _, quote = symbol.partition("/")
    quote = quote.split(":")[0]
    if venue == "binanceusdm":
        return VenueSymbol(venue, f"{base}/{quote}:{quote}")
    if venue == "binancecoinm":
        return VenueSymbol(venue, f"{base}/USD:{base}")
    if venue in ("coinbase", "gemini") and quote in ("USDT", "USDC"):
        return VenueSymbol(venue, f"{base}/USD")
    return VenueSymbol(venue, f"{base}/{quote}")


def bucket_size_for(symbol: str, sizes: dict[str, float], default_bps: float, mid: float | None = None) -> float:
    base = symbol.split("/")[0]
    if base in sizes:
        return float(sizes[base])
    if mid is None:
        raise ValueError(f"orderbook.bucket_size has no entry for {base}; add one (e.g. {base}: 1)")
    return mid * default_bps / 1e4


def engine_from_config(ob: OrderbookConfig, venues: list[str] | None = None, symbol: str | None = None,
                       sink: Callable[[BucketSnapshot], None] | None = None) -> BookEngine:
    """A BookEngine from ``config.orderbook``."""
    sym = symbol or ob.symbol
    vs = [venue_symbol(v, sym) for v in (venues or ob.venues)]
    size = bucket_size_for(sym, ob.bucket_size, ob.default_bucket_bps, None)
    return BookEngine(sym, vs, Consolidator(size, ob.n_buckets, ob.wall_multiple), usd_equivalent=ob.usd_equivalent,
                      history_s=ob.history_s, sink=sink)


def engine_for_capture(path: Path, ob: OrderbookConfig,
                       sink: Callable[[BucketSnapshot], None] | None = None) -> BookEngine:
    """Consolidate every book of a capture (its venues and symbols) with the configured buckets."""
    keys = capture_venues(path)
    spot = next((s for _, s in keys if ":" not in s), keys[0][1].split(":")[0])
    size = bucket_size_for(spot, ob.bucket_size, ob.default_bucket_bps, None)
    return BookEngine(spot, [VenueSymbol(v, s) for v, s in keys], Consolidator(size, ob.n_buckets, ob.wall_multiple),
                      usd_equivalent=ob.usd_equivalent, history_s=ob.history_s, sink=sink)


def replay_into(engine: BookEngine, path: Path, speed: float = 0.0, stop: threading.Event | None = None) -> int:
    """Play a capture into a BookEngine (only its venues) at ``speed`` x (0: as fast as possible)."""
    venues = [v.venue for v in engine.venues]
    msgs = read_capture(path, venues)
    if stop is not None:
        msgs = (m for m in msgs if not stop.is_set())
    n = play(msgs, engine.on_message, speed=speed, sleep=(stop.wait if stop is not None else time.sleep))
    if engine.history:
        engine.advance(engine.history[-1].ts_ms + 1000)
    return n


def start_replay(engine: BookEngine, path: Path, speed: float) -> tuple[threading.Thread, threading.Event]:
    """Replay a capture into ``engine`` on a daemon thread (the dashboard's book source); set the event to stop."""
    stop = threading.Event()
    th = threading.Thread(target=replay_into, args=(engine, path, speed, stop), name="book-replay", daemon=True)
    th.start()
    return th, stop
