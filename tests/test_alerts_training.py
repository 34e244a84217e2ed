"""Live training's alerts from a running paper engine (~30 s): a promotion of the CNN's
online-trained weights and the crash of its trainer process (SIGKILL) reach the local webhooks through
the engine's own alert path (core/engine/alerting.py -> core/alerts.py), the crash on the error channel.
The stream is real BTC/USDT minutes delivered as a live source (one closed minute every 30 ms), the
tiny online-training settings of test_engine_training.py."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import pandas as pd
from test_alerts import Hook
from test_engine_training import HISTORY, KEY, REPLAY, configs

from core.config import Secrets
from core.data.files import load_file
from core.data.source_base import SourceStatus
from core.data.store import MarketStore


class Minutes:
    name = "stream"
    persist = True

    def __init__(self, df: pd.DataFrame, every_s: float) -> None:
        self.df, self.every_s = df, every_s
        self._status = SourceStatus(self.name)

    def status(self) -> SourceStatus:
        return self._status

    async def run(self, emit, stop: asyncio.Event) -> None:
        self._status = SourceStatus(self.name, connected=True)
        for r in self.df.itertuples():
            if stop.is_set():
                break
            emit(KEY, pd.DataFrame({"ts": [int(r.ts)], "open": [r.open], "high": [r.high], "low": [r.low],
                                    "close": [r.close], "volume": [r.volume]}), True)
            await asyncio.sleep(self.every_s)


def wait_event(hook: Hook, kind: str, timeout: float) -> dict:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        for _, _, b in list(hook.got):
            if b["event"] == kind:
                return b
        time.sleep(0.05)
    raise AssertionError(f"no {kind} alert within {timeout:.0f}s: got {[b['event'] for _, _, b in hook.got]}")


def test_promotion_and_trainer_crash_alerts_from_a_running_engine(shared_data, tmp_path, monkeypatch):
    import compose
    import core.data.sources

    candles = load_file(shared_data / "binanceus" / "BTC_USDT-1m.csv").iloc[: HISTORY + REPLAY].reset_index(drop=True)
    cfg, models = configs(tmp_path)
    cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"exchange": KEY.exchange})})
    store = MarketStore(cfg.data.db_path)
    store.upsert_candles(KEY, candles.iloc[:HISTORY])
    main, errors = Hook(), Hook()
    monkeypatch.setattr(core.data.sources, "source_for", lambda *a, **k: Minutes(candles.iloc[HISTORY:], 0.03))
    eng = compose.build_engine(cfg, models, store=store, training=True,
                               secrets=Secrets(alert_webhook_url=main.url, alert_error_webhook_url=errors.url))
    assert eng.mode == "paper"
    eng.set_training("cnn", True)
    eng.start()
    try:
        promo = wait_event(main, "promotion", 90)["details"]
        assert promo["expert"] == "cnn" and promo["version"].startswith("online-")
        assert promo["challenger_logloss"] < promo["champion_logloss"]
        pid = eng.snapshot().trainers["cnn"].pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        t0 = time.monotonic()
        crash = wait_event(errors, "trainer_crash", 30)["details"]
        assert crash["expert"] == "cnn" and crash["restarts"] >= 1 and "-9" in crash["error"]
        assert time.monotonic() - t0 < 30
        assert all(b["event"] != "trainer_crash" for _, _, b in main.got)  # errors only on their channel
    finally:
        eng.stop()
        store.close()
        main.close()
        errors.close()
