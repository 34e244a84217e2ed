"""Train now (offline training while the dashboard runs): what the engine needs from the NN side.

The composition root hands the engine an ``OfflineTrainer`` (NN/training/background.OfflineTraining);
the engine picks the candles it may learn from and polls the job between decisions.
"""

from __future__ import annotations

from typing import Any, Protocol

import pandas as pd

from core.types import SeriesKey

PRESETS = ("quick", "full")


class OfflineTrainer(Protocol):
    @property
    def running(self) -> bool: ...
    def start(self, preset: str, key: SeriesKey, candles: pd.DataFrame) -> None: ...
    def status(self) -> dict[str, Any]: ...
    # engine thread: when the job has finished, register + load its checkpoints; names adopted
    def poll(self) -> list[str]: ...
    def cancel(self) -> None: ...
