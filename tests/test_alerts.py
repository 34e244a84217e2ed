"""Alerts reach a local webhook server (and a local stand-in for the Telegram Bot API) within 5 s,
retried while the server answers 500; errors go to their own channel; secrets never reach the logs.
The trading events come from a real Executor trading real BTC/USDT minutes on the fake Binance server."""

from __future__ import annotations

import json
import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pandas as pd
import pytest
from fake_binance import FakeServer, local_binance

from core.alerts import notifier_from_config
from core.config import AlertsConfig, ExecutionConfig, RiskConfig, Secrets
from core.execution.broker import CcxtBroker
from core.execution.executor import Executor
from core.types import Action, CandleEvent, Decision, SeriesKey, Thresholds


class Hook:
    """A local HTTP endpoint recording every POST; the first ``fail`` answers are 500."""

    def __init__(self, fail: int = 0) -> None:
        self.fail = fail
        self.got: list[tuple[float, str, dict]] = []
        self.attempts = 0
        hook = self

        class H(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                hook.attempts += 1
                code = 500 if hook.fail > 0 else 200
                hook.fail -= 1
                if code == 200:
                    hook.got.append((time.monotonic(), self.path, body))
                self.send_response(code)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture()
def hooks():
    made: list[Hook] = []

    def make(fail: int = 0) -> Hook:
        made.append(Hook(fail))
        return made[-1]

    yield make
    for h in made:
        h.close()


def wait(pred, timeout=5.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.01)
    return False


def test_webhook_retries_500_and_delivers_within_5s(hooks, caplog):
    hook = hooks(fail=2)
    secret_url = hook.url + "/hooks/s3cr3t-token"
    n = notifier_from_config(AlertsConfig(backoff_s=0.2), Secrets(alert_webhook_url=secret_url))
    assert n is not None
    caplog.set_level(logging.DEBUG, logger="core.alerts")
    t0 = time.monotonic()
    n.send("kill_switch", {"reason": "daily_loss", "symbol": "BTC/USDT"})
    assert wait(lambda: hook.got), "the alert never arrived"
    at, path, body = hook.got[0]
    assert at - t0 < 5.0 and hook.attempts == 3  # two 500s, then delivered
    assert path == "/hooks/s3cr3t-token" and body["event"] == "kill_switch"
    assert body["details"]["reason"] == "daily_loss" and "kill_switch" in body["text"]
    assert "s3cr3t" not in caplog.text and "s3cr3t" not in repr(n.sinks)
    n.close()


def test_errors_use_their_channel_or_the_prefix(hooks):
    main, errors = hooks(), hooks()
    n = notifier_from_config(AlertsConfig(), Secrets(alert_webhook_url=main.url, alert_error_webhook_url=errors.url))
    assert n is not None
    n.send("error", {"where": "engine:candle", "message": "boom"})
    n.send("entry", {"side": "buy"})
    assert n.flush()
    assert [b["event"] for _, _, b in errors.got] == ["error"] and [b["event"] for _, _, b in main.got] == ["entry"]
    # without an error channel: the main one, prefixed
    only = hooks()
    n2 = notifier_from_config(AlertsConfig(error_prefix="[ERR]"), Secrets(alert_webhook_url=only.url))
    assert n2 is not None
    n2.send("trainer_crash", {"where": "training", "message": "cuda"})
    assert n2.flush() and only.got[0][2]["event"] == "[ERR] trainer_crash"


def test_telegram_sink_and_event_routing(hooks, caplog):
    tg = hooks()
    cfg = AlertsConfig(telegram_api_url=tg.url, telegram_events=["kill_switch"], webhook_events=["entry"])
    n = notifier_from_config(cfg, Secrets(telegram_bot_token="123:ABCsecret", telegram_chat_id="42"))
    assert n is not None
    caplog.set_level(logging.DEBUG, logger="core.alerts")
    n.send("entry", {"side": "buy"})  # webhook-only event: no webhook configured, Telegram does not want it
    n.send("kill_switch", {"reason": "reconcile"})
    assert n.flush()
    assert len(tg.got) == 1
    _, path, body = tg.got[0]
    assert path == "/bot123:ABCsecret/sendMessage" and body["chat_id"] == "42" and "reconcile" in body["text"]
    assert "ABCsecret" not in caplog.text
    assert notifier_from_config(cfg, Secrets()) is None  # no secret in the environment: no sink
    assert notifier_from_config(AlertsConfig(enabled=False), Secrets(alert_webhook_url=tg.url)) is None


def test_trading_events_reach_the_webhook(hooks, shared_data: Path):
    """An Executor trading real minutes through CcxtBroker (fake Binance) alerts entry and exit fills."""
    hook = hooks()
    n = notifier_from_config(AlertsConfig(), Secrets(alert_webhook_url=hook.url))
    assert n is not None
    df = pd.read_csv(shared_data / "binanceus" / "BTC_USDT-1m.csv", nrows=3)
    srv = FakeServer()
    try:
        srv.fake.reset(price=float(df["close"].iloc[0]))
        b = CcxtBroker(ExecutionConfig(broker="ccxt"), "binance", exchange=local_binance(srv.base),
                       secrets=Secrets(exchange_api_key="k-not-real", exchange_secret="s-not-real"))
        ex = Executor(ExecutionConfig(broker="ccxt"), RiskConfig(fraction=0.2), "BTC/USDT", "1m", broker=b,
                      on_event=n.send)
        key = SeriesKey("binance", "BTC/USDT", "1m")
        t0 = time.monotonic()
        for r, act in zip(df.itertuples(), [Action.BUY, Action.HOLD, Action.SELL], strict=True):
            ts = int(pd.Timestamp(r.timestamp).value // 1_000_000)
            srv.fake.price = float(r.close)
            ex.on_bar(CandleEvent(key, ts, r.open, r.high, r.low, r.close, r.volume),
                      Decision(id=f"d{ts}", ts=ts, symbol="BTC/USDT", action=act, probs=(0.2, 0.2, 0.6),
                               expected_return=0.0, weights={}, thresholds=Thresholds(),
                               target_position=1.0 if act == Action.BUY else 0.0, reason="test"))
        assert wait(lambda: len(hook.got) >= 2)
        assert hook.got[-1][0] - t0 < 5.0
        events = [b["event"] for _, _, b in hook.got]
        assert events == ["entry", "exit"]
        entry = hook.got[0][2]["details"]
        assert entry["side"] == "buy" and entry["price"] == pytest.approx(float(df["close"].iloc[0]))
        assert entry["account"] == "sandbox:BTC/USDT" and entry["clientOrderId"].startswith("moe-")
    finally:
        srv.close()
        n.close()
