"""One venue's L2 order book and the counters of its synchronisation.

Levels live in two dicts (price -> amount) so a diff costs O(levels in the diff); the best bid/ask is
cached and only recomputed (one max/min) when the cached best level is removed. Sorting happens only
when a caller asks for the top N levels (snapshots, checksums). Amounts are in the venue's own unit
(coins, or contracts for inverse futures); consolidation converts them.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field


class L2Book:
    """Price-level book of one symbol on one venue. ``strings`` keeps the exchange's decimal strings
    (price -> (price_str, amount_str)) for venues whose checksum is computed over them."""

    __slots__ = ("bids", "asks", "_bb", "_ba", "strings_bid", "strings_ask", "keep_strings", "window",
                 "win_bids", "win_asks")

    def __init__(self, keep_strings: bool = False) -> None:
        self.bids: dict[float, float] = {}
        self.asks: dict[float, float] = {}
        self._bb: float | None = None
        self._ba: float | None = None
        self.keep_strings = keep_strings
        self.strings_bid: dict[float, tuple[str, str]] = {}
        self.strings_ask: dict[float, tuple[str, str]] = {}
        # price window [lo, hi) whose levels are also kept in win_bids/win_asks (set by consolidation so a
        # snapshot reads a few hundred levels, not the thousands a deep book holds); None = not kept
        self.window: tuple[float, float] | None = None
        self.win_bids: dict[float, float] = {}
        self.win_asks: dict[float, float] = {}

    def clear(self) -> None:
        self.bids.clear()
        self.asks.clear()
        self.strings_bid.clear()
        self.strings_ask.clear()
        self.win_bids.clear()
        self.win_asks.clear()
        self._bb = self._ba = None

    def set_window(self, lo: float, hi: float) -> None:
        """Keep the levels in [lo, hi) in win_bids/win_asks from now on (one O(levels) rebuild)."""
        self.window = (lo, hi)
        self.win_bids = {p: q for p, q in self.bids.items() if lo <= p < hi}
        self.win_asks = {p: q for p, q in self.asks.items() if lo <= p < hi}

    def set_bid(self, price: float, amount: float) -> None:
        if self.window is not None:
            self.apply_str([(price, amount)], [])
            return
        if amount > 0.0:
            self.bids[price] = amount
            if self._bb is not None and price > self._bb:
                self._bb = price
        elif self.bids.pop(price, None) is not None and price == self._bb:
            self._bb = None

    def set_ask(self, price: float, amount: float) -> None:
        if self.window is not None:
            self.apply_str([], [(price, amount)])
            return
        if amount > 0.0:
            self.asks[price] = amount
            if self._ba is not None and price < self._ba:
                self._ba = price
        elif self.asks.pop(price, None) is not None and price == self._ba:
            self._ba = None

    def apply_str(self, bids: list, asks: list) -> None:
        """Apply [[price_str, amount_str, ...], ...] levels (amount 0 deletes); the hot path of diffs."""
        if self.window is not None:
            self._apply_windowed(bids, asks)
            return
        bd, ad = self.bids, self.asks
        bb, ba = self._bb, self._ba
        keep = self.keep_strings
        for lvl in bids:
            p = float(lvl[0])
            q = float(lvl[1])
            if q > 0.0:
                bd[p] = q
                if bb is not None and p > bb:
                    bb = p
                if keep:
                    self.strings_bid[p] = (lvl[0], lvl[1])
            else:
                if bd.pop(p, None) is not None and p == bb:
                    bb = None
                if keep:
                    self.strings_bid.pop(p, None)
        for lvl in asks:
            p = float(lvl[0])
            q = float(lvl[1])
            if q > 0.0:
                ad[p] = q
                if ba is not None and p < ba:
                    ba = p
                if keep:
                    self.strings_ask[p] = (lvl[0], lvl[1])
            else:
                if ad.pop(p, None) is not None and p == ba:
                    ba = None
                if keep:
                    self.strings_ask.pop(p, None)
        self._bb, self._ba = bb, ba

    def apply_pairs(self, bids: list, asks: list) -> None:
        """apply_str for [[price_str, amount_str]] pairs without kept strings (Binance diffs: the hot path)."""
        if self.keep_strings:
            self.apply_str(bids, asks)
            return
        bd, ad = self.bids, self.asks
        bb, ba = self._bb, self._ba
        lo, hi = self.window if self.window is not None else (float("inf"), float("-inf"))
        wb, wa = self.win_bids, self.win_asks
        for ps, qs in bids:
            p = float(ps)
            q = float(qs)
            if q > 0.0:
                bd[p] = q
                if lo <= p < hi:
                    wb[p] = q
                if bb is not None and p > bb:
                    bb = p
            elif bd.pop(p, None) is not None:
                wb.pop(p, None)
                if p == bb:
                    bb = None
        for ps, qs in asks:
            p = float(ps)
            q = float(qs)
            if q > 0.0:
                ad[p] = q
                if lo <= p < hi:
                    wa[p] = q
                if ba is not None and p < ba:
                    ba = p
            elif ad.pop(p, None) is not None:
                wa.pop(p, None)
                if p == ba:
                    ba = None
        self._bb, self._ba = bb, ba

    def _apply_windowed(self, bids: list, asks: list) -> None:
        """apply_str that also maintains the window dicts (a second loop so the plain path stays lean)."""
        assert self.window is not None
        lo, hi = self.window
        bd, ad, wb, wa = self.bids, self.asks, self.win_bids, self.win_asks
        bb, ba = self._bb, self._ba
        keep = self.keep_strings
        for lvl in bids:
            p = float(lvl[0])
            q = float(lvl[1])
            if q > 0.0:
                bd[p] = q
                if lo <= p < hi:
                    wb[p] = q
                if bb is not None and p > bb:
                    bb = p
                if keep:
                    self.strings_bid[p] = (lvl[0], lvl[1])
            else:
                if bd.pop(p, None) is not None:
                    wb.pop(p, None)
                    if p == bb:
                        bb = None
                if keep:
                    self.strings_bid.pop(p, None)
        for lvl in asks:
            p = float(lvl[0])
            q = float(lvl[1])
            if q > 0.0:
                ad[p] = q
                if lo <= p < hi:
                    wa[p] = q
                if ba is not None and p < ba:
                    ba = p
                if keep:
                    self.strings_ask[p] = (lvl[0], lvl[1])
            else:
                if ad.pop(p, None) is not None:
                    wa.pop(p, None)
                    if p == ba:
                        ba = None
                if keep:
                    self.strings_ask.pop(p, None)
        self._bb, self._ba = bb, ba

    def load_str(self, bids: list, asks: list) -> None:
        """Replace the whole book with a snapshot's levels."""
        self.clear()
        self.apply_str(bids, asks)

    def best_bid(self) -> float | None:
        if self._bb is None and self.bids:
            self._bb = max(self.bids)
        return self._bb

    def best_ask(self) -> float | None:
        if self._ba is None and self.asks:
            self._ba = min(self.asks)
        return self._ba

    def crossed(self) -> bool:
        bb, ba = self.best_bid(), self.best_ask()
        return bb is not None and ba is not None and bb >= ba

    def mid(self) -> float | None:
        bb, ba = self.best_bid(), self.best_ask()
        if bb is None or ba is None:
            return None
        return (bb + ba) / 2.0

    def top(self, n: int) -> tuple[list[tuple[float, float]], list[tuple[float, float]]]:
        """The n best levels of each side: bids descending, asks ascending."""
        bp = heapq.nlargest(n, self.bids)
        ap = heapq.nsmallest(n, self.asks)
        return [(p, self.bids[p]) for p in bp], [(p, self.asks[p]) for p in ap]

    def truncate(self, depth: int) -> None:
        """Keep the ``depth`` best levels a side (venues that stop sending levels beyond their depth)."""
        if len(self.bids) > depth:
            for p in heapq.nsmallest(len(self.bids) - depth, self.bids):
                del self.bids[p]
                self.strings_bid.pop(p, None)
                self.win_bids.pop(p, None)
        if len(self.asks) > depth:
            for p in heapq.nlargest(len(self.asks) - depth, self.asks):
                del self.asks[p]
                self.strings_ask.pop(p, None)
                self.win_asks.pop(p, None)


@dataclass(slots=True)
class SyncStats:
    """What happened to one book: messages seen and applied, stale diffs dropped, resyncs by reason
    (gap, duplicate, checksum, crossed, ...), and the last receive / exchange times (ms) for lag."""

    messages: int = 0
    applied: int = 0
    dropped_stale: int = 0
    resyncs: dict[str, int] = field(default_factory=dict)
    checksums_ok: int = 0
    sequence_ok: int = 0
    last_recv_ms: int = 0
    last_exchange_ms: int = 0

    @property
    def resync_count(self) -> int:
        return sum(self.resyncs.values())

    @property
    def gaps(self) -> int:
        return self.resyncs.get("gap", 0)

    @property
    def lag_ms(self) -> int:
        return self.last_recv_ms - self.last_exchange_ms if self.last_exchange_ms else 0

    def as_dict(self) -> dict:
        return {"messages": self.messages, "applied": self.applied, "dropped_stale": self.dropped_stale,
                "resyncs": dict(self.resyncs), "resync_count": self.resync_count, "gaps": self.gaps,
                "checksums_ok": self.checksums_ok, "sequence_ok": self.sequence_ok, "lag_ms": self.lag_ms}


class BookSync:
    """Base of the per-exchange sync state machines: owns the book and its counters. ``resync(reason)``
    empties the book (never a silently wrong one), counts the reason and asks for a fresh snapshot
    (``needs_snapshot``): the source re-fetches the REST snapshot or re-subscribes."""

    venue: str = ""

    def __init__(self, symbol: str, keep_strings: bool = False) -> None:
        self.symbol = symbol
        self.book = L2Book(keep_strings=keep_strings)
        self.stats = SyncStats()
        self.synced = False
        self.needs_snapshot = True

    def resync(self, reason: str) -> None:
        self.stats.resyncs[reason] = self.stats.resyncs.get(reason, 0) + 1
        self.book.clear()
        self.synced = False
        self.needs_snapshot = True

    def check_crossed(self) -> bool:
        """A crossed book is rejected: resync and report False."""
        if self.book.crossed():
            self.resync("crossed")
            return False
        return True
