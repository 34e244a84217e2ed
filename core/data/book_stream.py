"""Book sync for venues that send their own snapshot on the stream (Kraken, OKX, Bybit, Coinbase,
Gemini) or pair a REST snapshot with time-stamped diffs (Bitstamp).

``StreamSync`` checks what each venue offers: a sequence (next == previous + 1, or the message's
``prev`` == the previous one), a checksum over the top levels (Kraken CRC32 of the 10 best levels a
side; OKX signed CRC32 of the 25 best interleaved), and never a crossed book. A failure is a counted
resync: the book is emptied and the source re-subscribes for a fresh snapshot.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable

from core.data.book import BookSync, L2Book


def kraken_checksum(book: L2Book) -> int:
    """Kraken v1: CRC32 of the 10 best asks then 10 best bids, each price and amount string with the
    dot removed and leading zeros stripped, concatenated."""
    bids, asks = book.top(10)
    parts: list[str] = []
    for side, strings in ((asks, book.strings_ask), (bids, book.strings_bid)):
        for p, _ in side:
            ps, qs = strings[p]
            parts.append(ps.replace(".", "").lstrip("0"))
            parts.append(qs.replace(".", "").lstrip("0"))
    return zlib.crc32("".join(parts).encode())


def okx_checksum(book: L2Book) -> int:
    """OKX v5: signed CRC32 of ``bid:amount:ask:amount:...`` over the 25 best levels, interleaved."""
    bids, asks = book.top(25)
    parts: list[str] = []
    for i in range(max(len(bids), len(asks))):
        if i < len(bids):
            parts.extend(book.strings_bid[bids[i][0]])
        if i < len(asks):
            parts.extend(book.strings_ask[asks[i][0]])
    c = zlib.crc32(":".join(parts).encode())
    return c - (1 << 32) if c >= (1 << 31) else c


class StreamSync(BookSync):
    """Snapshot + updates from the stream itself. ``checksum``: book -> int (None: venue has none);
    ``depth``: levels a side the venue maintains (levels pushed beyond it are dropped locally too)."""

    def __init__(self, symbol: str, venue: str, checksum: Callable[[L2Book], int] | None = None,
                 depth: int | None = None) -> None:
        super().__init__(symbol, keep_strings=checksum is not None)
        self.venue = venue
        self.checksum = checksum
        self.depth = depth
        self.last_seq: int | None = None

    def on_snapshot(self, bids: list, asks: list, seq: int | None = None, checksum: int | None = None,
                    exchange_ms: int = 0) -> bool:
        self.book.load_str(bids, asks)
        self.synced = True
        self.needs_snapshot = False
        self.last_seq = seq
        self.stats.applied += 1
        self.stats.last_exchange_ms = exchange_ms
        return self._verify(checksum)

    def on_update(self, bids: list, asks: list, seq: int | None = None, prev_seq: int | None = None,
                  checksum: int | None = None, exchange_ms: int = 0, recv_ms: int = 0) -> bool:
        """Apply one update; ``seq`` alone must follow the last one by 1, ``prev_seq`` must equal it."""
        st = self.stats
        st.messages += 1
        st.last_recv_ms = recv_ms
        if not self.synced:
            return False
        if seq is not None and self.last_seq is not None:
            expected = prev_seq if prev_seq is not None else seq - 1
            if expected != self.last_seq:
                self.resync("duplicate" if seq <= self.last_seq else "gap")
                return False
            st.sequence_ok += 1
        self.book.apply_str(bids, asks)
        if self.depth is not None:
            self.book.truncate(self.depth)
        self.last_seq = seq if seq is not None else self.last_seq
        st.applied += 1
        st.last_exchange_ms = exchange_ms or st.last_exchange_ms
        return self._verify(checksum)

    def _verify(self, checksum: int | None) -> bool:
        if checksum is not None and self.checksum is not None:
            if self.checksum(self.book) != checksum:
                self.resync("checksum")
                return False
            self.stats.checksums_ok += 1
        return self.check_crossed()
