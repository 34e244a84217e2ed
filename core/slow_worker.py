"""A slow expert (Kronos) on its own daemon thread, so live decisions never wait for a forecast: the
orchestrator submits at its cadence and uses the freshest finished result."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pandas as pd

from core.types import ExpertLike, ExpertOutput, FeatureBatch


class KronosWorker:
    """Runs one slow expert on its own daemon thread; ``submit`` drops the request when the worker is
    still busy (the next cadence tick brings fresher data anyway), ``latest`` is the freshest result."""

    def __init__(self, expert: ExpertLike, on_error: Callable[[str, BaseException], None]) -> None:
        self.expert = expert
        self._on_error = on_error
        self._req: tuple[FeatureBatch, pd.DataFrame] | None = None
        self._cv = threading.Condition()
        self._latest: ExpertOutput | None = None
        self._stop = False
        self.busy = False
        self._thread = threading.Thread(target=self._loop, name=f"slow-{expert.name}", daemon=True)
        self._thread.start()

    def submit(self, batch: FeatureBatch, candles: pd.DataFrame) -> bool:
        with self._cv:
            if self.busy or self._req is not None:
                return False
            self._req = (batch, candles)
            self._cv.notify()
            return True

    def latest(self) -> ExpertOutput | None:
        return self._latest

    def wait_idle(self, timeout: float = 60.0) -> None:
        end = time.monotonic() + timeout
        while (self.busy or self._req is not None) and time.monotonic() < end:
            time.sleep(0.005)

    def stop(self) -> None:
        with self._cv:
            self._stop = True
            self._cv.notify()
        self._thread.join(timeout=5)

    def _loop(self) -> None:
        while True:
            with self._cv:
                while self._req is None and not self._stop:
                    self._cv.wait()
                if self._stop:
                    return
                batch, candles = self._req  # type: ignore[misc]
                self._req = None
                self.busy = True
            try:
                self._latest = self.expert.predict(batch, candles)
            except Exception as exc:  # a failing forecaster never stops decisions
                self._on_error(self.expert.name, exc)
            finally:
                self.busy = False
