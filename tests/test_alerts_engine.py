"""The engine's own alerts (core/engine/alerting.py) through the notifier to local webhook servers: a
stream that drops and comes back, a live-training promotion, a trainer process that died (restart count
and error as LiveTraining's manager reports them after a SIGKILL, see test_online_training.py) and an
engine error; errors and crashes reach only the error channel, within 5 s, retried while it answers 500.
The trading events (entry / exit / kill switch) through a running Engine: test_trading_engine.py."""

from __future__ import annotations

import time
from dataclasses import replace

from test_alerts import Hook, wait

from core.alerts import notifier_from_config
from core.config import AlertsConfig, Secrets
from core.data.source_base import SourceStatus
from core.engine.alerting import snapshot_alerts
from core.snapshot import EngineError, EngineSnapshot, SwapEvent
from core.types import TrainerStatus


def test_engine_alerts_reach_their_channels():
    main, errors = Hook(), Hook(fail=1)  # the error channel answers 500 once: retried
    n = notifier_from_config(AlertsConfig(backoff_s=0.05),
                             Secrets(alert_webhook_url=main.url + "/main", alert_error_webhook_url=errors.url + "/err"))
    assert n is not None
    seen: dict = {}
    now = int(time.time() * 1000)
    base = EngineSnapshot.empty("BTC/USDT", "1m", "testnet")
    up = {"binance": SourceStatus("binance", connected=True, last_message_ms=now)}
    trainer = {"cnn": TrainerStatus(running=True, steps=120, pid=4242)}
    steps = [
        replace(base, sources=up, trainers=trainer),  # first sight: nothing to report
        replace(base, sources={"binance": SourceStatus("binance", connected=False, error="ConnectionClosed")},
                trainers=trainer),
        replace(base, sources=up, trainers=trainer, swaps=(
            SwapEvent(now, now - 60_000, "cnn", "promote", "cnn-live-3", "cnn-live-2", 1.02, 0.98),)),
        replace(base, sources=up, swaps=(SwapEvent(now, now - 60_000, "cnn", "promote", "cnn-live-3", "cnn-live-2",
                                                   1.02, 0.98),),
                trainers={"cnn": TrainerStatus(running=True, restarts=1, pid=4243,
                                               error="trainer cnn exited with code -9; restarted after 1.0 s")},
                errors=(EngineError(now + 5, "orchestrator", "ValueError: features not finite"),)),
    ]
    got = []
    for snap in steps:
        for kind, details in snapshot_alerts(snap, seen):
            got.append(kind)
            n.send(kind, details)
    assert got == ["stream_lost", "stream_restored", "promotion", "trainer_crash", "error"]
    assert snapshot_alerts(steps[-1], seen) == []  # nothing new: nothing repeated
    t0 = time.monotonic()
    assert wait(lambda: len(main.got) == 3 and len(errors.got) == 2, 5.0)
    assert time.monotonic() - t0 < 5.0 and errors.attempts == 3  # one 500, retried
    assert [b["event"] for _, _, b in main.got] == ["stream_lost", "stream_restored", "promotion"]
    assert sorted(b["event"] for _, _, b in errors.got) == ["error", "trainer_crash"]
    crash = next(b for _, _, b in errors.got if b["event"] == "trainer_crash")["details"]
    assert crash["expert"] == "cnn" and crash["restarts"] == 1 and "code -9" in crash["error"]
    promo = next(b for _, _, b in main.got if b["event"] == "promotion")["details"]
    assert promo["version"] == "cnn-live-3" and promo["challenger_logloss"] == 0.98
    n.close()
    main.close()
    errors.close()
