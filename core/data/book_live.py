"""Live consolidated books: one websocket source per venue feeding a BookEngine on its own asyncio
thread, recording the raw frames to Parquet (on by default, so live runs accumulate replayable history)
and the 1 s snapshots to the store in batches."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

from core.data.book_engine import BookEngine
from core.data.book_recorder import ParquetRecorder
from core.data.book_replay import RawMessage
from core.data.book_source import Endpoint, WsBookSource, public_endpoint


class LiveBooks:
    """``endpoints``: venue -> Endpoint (default: the exchanges' public streams; tests use local servers)."""

    def __init__(self, engine: BookEngine, record_dir: Path | None = None,
                 endpoints: dict[str, Endpoint] | None = None, reconnect: bool = True) -> None:
        self.engine = engine
        engine.source_kind = "live"
        self.recorders: dict[str, ParquetRecorder] = {}
        self.sources: list[WsBookSource] = []
        for v in engine.venues:
            feed = engine.feeds[v.venue]
            natives = list(feed.native)
            ep = (endpoints or {}).get(v.venue) or public_endpoint(v.venue, natives)
            rec = ParquetRecorder(record_dir, v.venue, v.symbol) if record_dir is not None else None
            if rec is not None:
                self.recorders[v.venue] = rec
            self.sources.append(WsBookSource(feed, ep, recorder=rec, reconnect=reconnect,
                                             deliver=self._deliver))
        self._lock = threading.Lock()
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.thread: threading.Thread | None = None

    def _deliver(self, m: RawMessage) -> None:
        with self._lock:
            self.engine.on_message(m)

    def _watch(self) -> None:
        self.engine.connected = {s.feed.venue: s.connected for s in self.sources}

    def start(self) -> None:
        self.thread = threading.Thread(target=self._run, name="book-sources", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            watcher = asyncio.create_task(self._watch_loop())
            try:
                await asyncio.gather(*(s.run(self._stop) for s in self.sources))
            finally:
                watcher.cancel()
                self._watch()

        try:
            asyncio.run(main())
        finally:
            for r in self.recorders.values():
                r.close()

    async def _watch_loop(self) -> None:
        while True:  # connection state for the page's status table, twice a second
            self._watch()
            await asyncio.sleep(0.5)

    def stop(self, timeout: float = 10.0) -> None:
        if self._loop is not None and self._stop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._stop.set)
        if self.thread is not None:
            self.thread.join(timeout)

    def status(self) -> list[dict]:
        return [s.status() for s in self.sources]
