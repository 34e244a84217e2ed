"""Fixed-capacity candle ring buffer: preallocated columnar numpy arrays, O(1) append, copy-out reads."""

from __future__ import annotations

import numpy as np

from core.types import CANDLE_COLUMNS

VALUE_COLUMNS = CANDLE_COLUMNS[1:]


class CandleRing:
    """The newest ``capacity`` candles. Not thread-safe by itself (the provider holds the lock).
    Reads return fresh arrays (one np.concatenate of at most two slices), never views of the buffer."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"ring capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self._ts = np.zeros(capacity, dtype=np.int64)
        self._vals = np.zeros((len(VALUE_COLUMNS), capacity), dtype=np.float64)  # columnar
        self._head = 0  # next write position
        self._n = 0

    def __len__(self) -> int:
        return self._n

    @property
    def last_ts(self) -> int | None:
        return int(self._ts[self._head - 1]) if self._n else None

    def last_row(self) -> tuple[float, ...] | None:
        if not self._n:
            return None
        i = self._head - 1
        return (int(self._ts[i]), *(float(x) for x in self._vals[:, i]))

    def append(self, ts: int, o: float, h: float, lo: float, c: float, v: float) -> None:
        i = self._head
        self._ts[i] = ts
        self._vals[:, i] = (o, h, lo, c, v)
        self._head = (i + 1) % self.capacity
        self._n = min(self._n + 1, self.capacity)

    def replace_last(self, o: float, h: float, lo: float, c: float, v: float) -> None:
        if not self._n:
            raise IndexError("ring is empty")
        self._vals[:, self._head - 1] = (o, h, lo, c, v)

    def extend(self, ts: np.ndarray, vals: np.ndarray) -> None:
        """Append many rows at once (vals: [k, 5]); only the newest ``capacity`` are kept."""
        k = len(ts)
        if k == 0:
            return
        if k >= self.capacity:
            self._ts[:] = ts[-self.capacity:]
            self._vals[:] = vals[-self.capacity:].T
            self._head, self._n = 0, self.capacity
            return
        end = self._head + k
        if end <= self.capacity:
            self._ts[self._head:end] = ts
            self._vals[:, self._head:end] = vals.T
        else:
            first = self.capacity - self._head
            self._ts[self._head:] = ts[:first]
            self._vals[:, self._head:] = vals[:first].T
            self._ts[: k - first] = ts[first:]
            self._vals[:, : k - first] = vals[first:].T
        self._head = end % self.capacity
        self._n = min(self._n + k, self.capacity)

    def _span(self, n: int | None) -> tuple[int, int]:
        n = self._n if n is None else max(0, min(n, self._n))
        return (self._head - n) % self.capacity, n

    def read(self, n: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(ts[n], values[5, n]) of the newest n candles (all when None), oldest first; copies."""
        start, n = self._span(n)
        if start + n <= self.capacity:
            return self._ts[start:start + n].copy(), self._vals[:, start:start + n].copy()
        tail = self.capacity - start
        ts = np.concatenate((self._ts[start:], self._ts[: n - tail]))
        vals = np.concatenate((self._vals[:, start:], self._vals[:, : n - tail]), axis=1)
        return ts, vals
