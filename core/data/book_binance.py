"""Binance book sync (spot ``depth@100ms`` and USD-M / COIN-M futures ``depth@0ms``): REST snapshot + diffs.

Rules (Binance's "how to manage a local order book"): diffs received before the snapshot are buffered;
those older than the snapshot are dropped; the first one applied must straddle it (spot
``U <= lastUpdateId+1 <= u``, futures ``U <= lastUpdateId <= u``); every later one must follow the previous
(spot ``U == prev u + 1``, futures ``pu == prev u``). Any break is a counted resync: the book is emptied,
diffs are buffered again and a new snapshot is asked for.
"""

from __future__ import annotations

from core.data.book import BookSync

_MAX_PENDING = 10_000  # diffs buffered while waiting for a snapshot (a stuck snapshot must not eat memory)


class BinanceSync(BookSync):
    venue = "binance"

    def __init__(self, symbol: str, futures: bool = False, venue: str | None = None) -> None:
        super().__init__(symbol)
        self.futures = futures
        if venue:
            self.venue = venue
        self.snapshot_id = 0
        self.last_u: int | None = None
        self.pending: list[dict] = []

    def on_snapshot(self, snap: dict, recv_ms: int = 0) -> None:
        """A REST depth snapshot (``lastUpdateId``, ``bids``, ``asks``); replays the buffered diffs."""
        self.book.load_str(snap["bids"], snap["asks"])
        self.snapshot_id = int(snap["lastUpdateId"])
        self.last_u = None
        self.synced = True
        self.needs_snapshot = False
        pending, self.pending = self.pending, []
        for d in pending:
            if self.synced:
                self._apply(d)
            else:
                self.pending.append(d)

    def on_diff(self, d: dict, recv_ms: int = 0) -> bool:
        """One ``depthUpdate``; True when it changed the book."""
        st = self.stats
        st.messages += 1
        st.last_recv_ms = recv_ms
        if not self.synced:
            if len(self.pending) < _MAX_PENDING:
                self.pending.append(d)
            return False
        return self._apply(d)

    def _apply(self, d: dict) -> bool:
        first_u, u = d["U"], d["u"]
        st = self.stats
        last = self.last_u
        if last is None:
            snap = self.snapshot_id
            if u < snap or (not self.futures and u == snap):
                st.dropped_stale += 1
                return False
            ok = first_u <= snap <= u if self.futures else first_u <= snap + 1 <= u
        else:
            ok = d["pu"] == last if self.futures else first_u == last + 1
            if not ok and u <= last:
                self.resync("duplicate")
                self.pending.append(d)
                return False
        if not ok:
            self.resync("gap")
            self.pending.append(d)
            return False
        self.book.apply_pairs(d["b"], d["a"])
        self.last_u = u
        st.applied += 1
        st.sequence_ok += 1
        st.last_exchange_ms = d.get("E", 0)
        return self.check_crossed()
