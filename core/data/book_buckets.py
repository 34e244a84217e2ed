"""Consolidated order book: several venues' books of one coin merged into price buckets.

Amounts are normalised to the base coin first (inverse COIN-M contracts: ``contracts * contract_size /
price``), quote currencies must match unless the configuration says USD, USDT and USDC count as one.
Buckets are ``bucket_size`` wide (bucket k holds prices in ``[k*size, (k+1)*size)``), ``n_buckets`` either
side of the bucket of the consolidated mid. Per bucket: bid and ask volume per venue and total, and
imbalance ``(bid - ask) / (bid + ask)``. Also per snapshot: best bid/ask per venue and consolidated,
cross-venue spread, imbalance inside ±x bps, and "walls": single levels at least ``wall_multiple`` times the
median level size of their venue within the window (the largest ``MAX_WALLS`` per venue and side). ``ImbalanceMA`` keeps time-window means (1/5/15/60 s)
of the consolidated imbalance using only samples up to now.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np

from core.data.book import L2Book

USD_LIKE = frozenset({"USD", "USDT", "USDC"})
MAX_WALLS = 5  # walls reported per venue and side (the largest)
WINDOW_MARGIN = 5  # buckets of slack in each book's maintained price window before it is re-centred


@dataclass(frozen=True, slots=True)
class VenueBook:
    """One venue's book as consolidation sees it. ``contract_size``: quote value of one contract on an
    inverse (coin-margined) market, None when amounts are already in the base coin."""

    venue: str
    symbol: str
    book: L2Book
    contract_size: float | None = None


@dataclass(frozen=True, slots=True)
class Wall:
    venue: str
    side: str  # "bid" | "ask"
    price: float
    amount: float  # base coin
    distance_bps: float  # from the consolidated mid, always >= 0


@dataclass(frozen=True, slots=True)
class BucketSnapshot:
    ts_ms: int
    venues: tuple[str, ...]
    bucket_size: float
    prices: np.ndarray  # (2N+1,) lower edge of each bucket, ascending
    bid: np.ndarray  # (venues, 2N+1) base-coin volume
    ask: np.ndarray  # (venues, 2N+1)
    best_bid: dict[str, float]
    best_ask: dict[str, float]
    mid: float
    walls: tuple[Wall, ...]
    imbalance_ma: dict[int, float] = field(default_factory=dict)  # window s -> mean

    @property
    def bid_total(self) -> np.ndarray:
        return self.bid.sum(axis=0)

    @property
    def ask_total(self) -> np.ndarray:
        return self.ask.sum(axis=0)

    @property
    def imbalance(self) -> np.ndarray:
        """Per bucket ``(bid - ask) / (bid + ask)``, 0 where the bucket is empty."""
        return _imbalance(self.bid_total, self.ask_total)

    @property
    def consolidated_bid(self) -> float:
        return max(self.best_bid.values()) if self.best_bid else float("nan")

    @property
    def consolidated_ask(self) -> float:
        return min(self.best_ask.values()) if self.best_ask else float("nan")

    @property
    def spread(self) -> float:
        """Cross-venue spread: best ask anywhere minus best bid anywhere (< 0: venues cross each other)."""
        return self.consolidated_ask - self.consolidated_bid

    def total_imbalance(self, buckets: int | None = None) -> float:
        """Imbalance of all volume within ``buckets`` buckets either side of the mid's bucket."""
        n = (len(self.prices) - 1) // 2
        k = n if buckets is None else min(buckets, n)
        b = float(self.bid_total[n - k:n + k + 1].sum())
        a = float(self.ask_total[n - k:n + k + 1].sum())
        return (b - a) / (b + a) if b + a > 0 else 0.0

    def depth_within_bps(self, bps: float) -> tuple[float, float]:
        """Bid and ask base volume in buckets whose range lies within ±bps of the mid (bucket resolution)."""
        lo, hi = self.mid * (1 - bps / 1e4), self.mid * (1 + bps / 1e4)
        inside = (self.prices >= lo - self.bucket_size) & (self.prices <= hi)
        return float(self.bid_total[inside].sum()), float(self.ask_total[inside].sum())


def _imbalance(b: np.ndarray, a: np.ndarray) -> np.ndarray:
    tot = b + a
    out = np.zeros_like(tot)
    np.divide(b - a, tot, out=out, where=tot > 0)
    return out


def _side_arrays(levels: dict[float, float]) -> tuple[np.ndarray, np.ndarray]:
    n = len(levels)
    return np.fromiter(levels.keys(), np.float64, n), np.fromiter(levels.values(), np.float64, n)


def check_quotes(symbols: list[str], usd_equivalent: bool) -> None:
    """Books of one coin in different quote currencies merge only when they are the same money."""
    quotes = {s.split("/")[1].split(":")[0] for s in symbols}
    bases = {s.split("/")[0] for s in symbols}
    if len(bases) > 1:
        raise ValueError(f"orderbook venues: different base coins {sorted(bases)} cannot be consolidated")
    if len(quotes) > 1 and not (usd_equivalent and quotes <= USD_LIKE):
        raise ValueError(f"orderbook venues: quote currencies {sorted(quotes)} differ; set "
                         "orderbook.usd_equivalent: true to treat USD, USDT and USDC as one")


class Consolidator:
    """Turns the venues' current books into a ``BucketSnapshot`` (and keeps the imbalance MAs)."""

    def __init__(self, bucket_size: float, n_buckets: int = 20, wall_multiple: float = 10.0,
                 ma_windows_s: tuple[int, ...] = (1, 5, 15, 60)) -> None:
        if bucket_size <= 0 or n_buckets < 1 or wall_multiple <= 0:
            raise ValueError(f"orderbook: bucket_size {bucket_size} and wall_multiple {wall_multiple} must be > 0, "
                             f"n_buckets {n_buckets} >= 1")
        self.size = float(bucket_size)
        self.n = int(n_buckets)
        self.wall_multiple = float(wall_multiple)
        self.ma = ImbalanceMA(ma_windows_s)

    def snapshot(self, ts_ms: int, books: list[VenueBook]) -> BucketSnapshot | None:
        """None while no venue has both sides (nothing to centre the buckets on)."""
        best_bid: dict[str, float] = {}
        best_ask: dict[str, float] = {}
        for vb in books:
            bb, ba = vb.book.best_bid(), vb.book.best_ask()
            if bb is not None and ba is not None:
                best_bid[vb.venue], best_ask[vb.venue] = bb, ba
        if not best_bid:
            return None
        mid = (max(best_bid.values()) + min(best_ask.values())) / 2.0
        size, n = self.size, self.n
        center = int(np.floor(mid / size))
        lo_k = center - n
        prices = (np.arange(2 * n + 1) + lo_k) * size
        lo, hi = lo_k * size, (center + n + 1) * size
        nb = 2 * n + 1
        bid = np.zeros((len(books), nb))
        ask = np.zeros((len(books), nb))
        walls: list[Wall] = []
        for i, vb in enumerate(books):
            w = vb.book.window
            if w is None or lo < w[0] or hi > w[1]:  # (re)centre the book's window with a margin
                vb.book.set_window(lo - WINDOW_MARGIN * size, hi + WINDOW_MARGIN * size)
            for side, levels, out in (("bid", vb.book.win_bids, bid), ("ask", vb.book.win_asks, ask)):
                if not levels:
                    continue
                p, q = _side_arrays(levels)
                m = (p >= lo) & (p < hi)
                p, q = p[m], q[m]
                if vb.contract_size is not None:
                    q = q * vb.contract_size / p
                idx = np.floor(p / size).astype(np.int64) - lo_k
                out[i] = np.bincount(idx, weights=q, minlength=nb)[:nb]
                if len(q) >= 3:
                    k = len(q) // 2  # (upper) median by partition: np.median's overhead is most of its cost here
                    big = np.flatnonzero(q >= self.wall_multiple * float(np.partition(q, k)[k]))
                    if len(big) > MAX_WALLS:  # the largest few per venue and side
                        big = big[np.argpartition(q[big], -MAX_WALLS)[-MAX_WALLS:]]
                    for j in big:
                        walls.append(Wall(vb.venue, side, float(p[j]), float(q[j]),
                                          abs(float(p[j]) - mid) / mid * 1e4))
        snap = BucketSnapshot(ts_ms, tuple(vb.venue for vb in books), size, prices, bid, ask, best_bid, best_ask,
                              mid, tuple(sorted(walls, key=lambda w: w.distance_bps)))
        self.ma.update(ts_ms, snap.total_imbalance())
        snap.imbalance_ma.update(self.ma.means())
        return snap


class ImbalanceMA:
    """Means of a value over trailing time windows: samples with ``now - w < ts <= now`` (running sums)."""

    def __init__(self, windows_s: tuple[int, ...] = (1, 5, 15, 60)) -> None:
        self.windows = tuple(windows_s)
        self._q: dict[int, deque[tuple[int, float]]] = {w: deque() for w in self.windows}
        self._sum: dict[int, float] = dict.fromkeys(self.windows, 0.0)
        self.now = 0

    def update(self, ts_ms: int, value: float) -> None:
        self.now = ts_ms
        for w in self.windows:
            q = self._q[w]
            q.append((ts_ms, value))
            self._sum[w] += value
            cutoff = ts_ms - w * 1000
            while q and q[0][0] <= cutoff:
                self._sum[w] -= q.popleft()[1]

    def means(self) -> dict[int, float]:
        return {w: (self._sum[w] / len(self._q[w]) if self._q[w] else 0.0) for w in self.windows}
