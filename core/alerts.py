"""Alerts: trading events pushed to the user through a webhook (JSON POST) and/or Telegram.

Events: entry, exit, fill, rejected, kill_switch, reconcile, acknowledged, stream_lost, stream_restored,
trainer_crash, promotion, error. Config ``alerts`` picks which events go to which sink; errors
(``error``, ``trainer_crash``) go to a separate channel when one is set (MOE_ALERT_ERROR_WEBHOOK_URL,
MOE_TELEGRAM_ERROR_CHAT_ID), otherwise to the main one with ``alerts.error_prefix`` in front.

Sinks exist only when their secrets are in the environment (webhook URL, Telegram bot token and chat
id): they are never logged, printed or rendered; log lines name the sink and the exception TYPE only.
Sending never blocks trading: ``send`` queues, one daemon thread delivers, each message retried with
back-off on errors and 5xx/429 answers, then dropped (counted in ``failed``).
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

from core.config import AlertsConfig, Secrets

log = logging.getLogger(__name__)

EVENTS = ("entry", "exit", "fill", "rejected", "kill_switch", "reconcile", "acknowledged", "recovered_fill",
          "stream_lost", "stream_restored", "trainer_crash", "promotion", "error")
ERROR_EVENTS = frozenset({"error", "trainer_crash"})


@dataclass(frozen=True, slots=True)
class Sink:
    """One destination: kind 'webhook' (url) or 'telegram' (url = the bot's sendMessage endpoint)."""

    kind: str
    url: str
    chat_id: str = ""
    events: frozenset[str] = frozenset()

    def __repr__(self) -> str:  # the url holds the token: never shown
        return f"Sink({self.kind}, {len(self.events)} events)"


def text_of(kind: str, details: dict[str, Any]) -> str:
    """One human line: the event and its details (what a Telegram message shows)."""
    parts = [f"{k}={v}" for k, v in details.items() if k not in ("differences",)]
    if details.get("differences"):
        parts.append("differences: " + "; ".join(map(str, details["differences"][:5])))
    return f"MoE Trader {kind}: " + ", ".join(parts)


class Notifier:
    def __init__(self, sinks: list[Sink], error_sinks: list[Sink], *, error_prefix: str = "[ERROR]",
                 retries: int = 3, backoff_s: float = 0.5, timeout_s: float = 5.0) -> None:
        self.sinks = sinks
        self.error_sinks = error_sinks
        self.error_prefix = error_prefix
        self.retries = max(1, int(retries))
        self.backoff_s = float(backoff_s)
        self.timeout_s = float(timeout_s)
        self.sent = 0
        self.failed = 0
        self._q: queue.Queue[tuple[Sink, str, dict[str, Any]] | None] = queue.Queue(maxsize=1000)
        self._thread = threading.Thread(target=self._run, name="alerts", daemon=True)
        self._thread.start()

    def send(self, kind: str, details: dict[str, Any] | None = None) -> None:
        """Queue an event for every sink that wants it (never blocks, never raises)."""
        details = dict(details or {})
        err = kind in ERROR_EVENTS
        targets = [s for s in (self.error_sinks if err and self.error_sinks else self.sinks) if kind in s.events]
        for s in targets:
            prefix = self.error_prefix + " " if err and not self.error_sinks else ""
            try:
                self._q.put_nowait((s, prefix + kind, details))
            except queue.Full:
                self.failed += 1

    def flush(self, timeout: float = 10.0) -> bool:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self._q.unfinished_tasks == 0:
                return True
            time.sleep(0.01)
        return False

    def close(self) -> None:
        self._q.put(None)

    def _run(self) -> None:
        while True:
            item = self._q.get()
            try:
                if item is None:
                    return
                self._deliver(*item)
            finally:
                self._q.task_done()

    def _deliver(self, sink: Sink, kind: str, details: dict[str, Any]) -> None:
        if sink.kind == "telegram":
            body = {"chat_id": sink.chat_id, "text": text_of(kind, details), "disable_web_page_preview": True}
        else:
            body = {"event": kind, "ts_ms": int(time.time() * 1000), "text": text_of(kind, details),
                    "details": details}
        data = json.dumps(body, default=str).encode()
        for attempt in range(self.retries):
            if attempt:
                time.sleep(self.backoff_s * 2 ** (attempt - 1))
            req = urllib.request.Request(sink.url, data=data, method="POST",
                                         headers={"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(req, timeout=self.timeout_s) as r:
                    if 200 <= r.status < 300:
                        self.sent += 1
                        return
            except urllib.error.HTTPError as exc:
                if 400 <= exc.code < 500 and exc.code != 429:  # refused for good: retrying cannot help
                    log.warning("alert %s to %s refused (HTTP %d)", kind, sink.kind, exc.code)
                    break
                log.info("alert %s to %s: HTTP %d, attempt %d", kind, sink.kind, exc.code, attempt + 1)
            except (OSError, ValueError) as exc:  # urllib errors carry the URL: only the type is logged
                log.info("alert %s to %s: %s, attempt %d", kind, sink.kind, type(exc).__name__, attempt + 1)
        self.failed += 1
        log.warning("alert %s to %s dropped after %d attempts", kind, sink.kind, self.retries)


def notifier_from_config(cfg: AlertsConfig, secrets: Secrets) -> Notifier | None:
    """The sinks whose secrets are in the environment; None when there is none (or alerts are off)."""
    if not cfg.enabled:
        return None
    sinks: list[Sink] = []
    errs: list[Sink] = []
    tg = f"{cfg.telegram_api_url.rstrip('/')}/bot{secrets.telegram_bot_token}/sendMessage"
    if secrets.alert_webhook_url:
        sinks.append(Sink("webhook", secrets.alert_webhook_url, events=frozenset(cfg.webhook_events)))
    if secrets.telegram_bot_token and secrets.telegram_chat_id:
        sinks.append(Sink("telegram", tg, secrets.telegram_chat_id, frozenset(cfg.telegram_events)))
    all_errors = frozenset(ERROR_EVENTS)
    if secrets.alert_error_webhook_url:
        errs.append(Sink("webhook", secrets.alert_error_webhook_url, events=all_errors))
    if secrets.telegram_bot_token and secrets.telegram_error_chat_id:
        errs.append(Sink("telegram", tg, secrets.telegram_error_chat_id, all_errors))
    if not sinks and not errs:
        return None
    return Notifier(sinks, errs, error_prefix=cfg.error_prefix, retries=cfg.retries, backoff_s=cfg.backoff_s,
                    timeout_s=cfg.timeout_s)
