"""Trainer process lifecycle on the engine side: spawn, stop, reap, restart with back-off, freeze and
thaw (SIGSTOP / SIGCONT) around decisions, hold for measurements.

Thread rules: ``lock`` guards the slots' fields that UI commands touch (start / stop / status from any
thread); the engine thread only ever TRIES it (``poll`` defers housekeeping a bar, ``freeze`` skips a
decision's freeze) and so never waits on a UI command. A crashed trainer never stops trading: it is
restarted after ``backoff_initial_s``, doubling up to ``backoff_max_s`` (back to the start once a
process had lived longer than that). Only our own child processes are signalled, and only while they
have not exited.
"""

from __future__ import annotations

import logging
import os
import queue
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch.multiprocessing as tmp

from core.types import TrainerStatus, TrainingPoint
from NN.training.online.worker import TrainerSpec, trainer_main

log = logging.getLogger(__name__)

CAN_FREEZE = hasattr(signal, "SIGSTOP")  # POSIX: trainers can be frozen while the engine decides
HISTORY_POINTS = 500  # training rounds kept per expert for the live loss curve (oldest dropped)
_CTX = tmp.get_context("spawn")


def _point(ts_ms: int, body: Mapping[str, Any]) -> TrainingPoint:
    """The loss-curve point of a trainer's "published" message (validation scores when it judged)."""
    def opt(k: str) -> float | None:
        v = body.get(k)
        return float(v) if v is not None and np.isfinite(v) else None

    return TrainingPoint(ts_ms=ts_ms, steps=int(body["steps"]), loss=float(body.get("loss", float("nan"))),
                         samples_per_s=float(body.get("samples_per_s", 0.0)),
                         val_challenger=opt("challenger_logloss"), val_champion=opt("champion_logloss"),
                         version=str(body.get("version", "")))


@dataclass
class TrainerSlot:
    """One expert's trainer as the manager tracks it, across process restarts and toggles."""

    spec: TrainerSpec
    proc: Any = None
    inbox: Any = None
    outbox: Any = None
    wanted: bool = False  # start() asked for it and stop() did not
    released_until: int = int(np.iinfo(np.int64).min)  # newest sample ts sent to its process
    restarts: int = 0
    backoff: float = 1.0
    restart_at: float | None = None
    started_at: float = 0.0
    held: bool = False  # hold(): kept frozen (SIGSTOP) until released
    status: TrainerStatus = field(default_factory=lambda: TrainerStatus(running=False))
    # every published round since the manager first started this expert (survives restarts/toggles)
    history: deque[TrainingPoint] = field(default_factory=lambda: deque(maxlen=HISTORY_POINTS))


@dataclass
class Retiring:
    """A trainer process told to stop that has not exited yet (``stop(wait=False)``)."""

    trainer: TrainerSlot
    proc: Any
    inbox: Any
    outbox: Any
    deadline: float  # monotonic time after which it is terminated (then killed)
    signalled: bool = False


def _end_process(p: Any, inbox: Any, outbox: Any, timeout: float) -> None:
    """Ask a trainer process to stop, wait ``timeout`` s, then terminate / kill; close its queues."""
    if p.is_alive():
        try:
            inbox.put(("stop",))
        except Exception:
            pass
        p.join(timeout)
        if p.is_alive():
            p.terminate()
            p.join(2.0)
        if p.is_alive():
            p.kill()
            p.join(2.0)
    for q in (inbox, outbox):
        if q is not None:
            q.cancel_join_thread()  # never block interpreter exit on a dead reader
            q.close()


class Supervisor:
    """The trainer processes of one manager. ``prime(slot)`` sends a new process its first messages
    (weights, replay candles), ``release()`` then hands it the matured samples, and ``published(spec,
    body)`` takes each checkpoint a trainer publishes (to be judged)."""

    def __init__(self, *, backoff_initial_s: float, backoff_max_s: float,
                 prime: Callable[[TrainerSlot], None], release: Callable[[], int],
                 published: Callable[[TrainerSpec, dict], None]) -> None:
        self.backoff_initial_s = float(backoff_initial_s)
        self.backoff_max_s = float(backoff_max_s)
        self._prime, self._release, self._published = prime, release, published
        self.trainers: dict[str, TrainerSlot] = {}
        self.lock = threading.Lock()  # guards trainers' fields touched by UI commands
        self.retiring: list[Retiring] = []

    # ---------------------------------------------------------------- start / stop

    def spawn(self, t: TrainerSlot) -> None:
        """Start a trainer process for slot ``t`` and hand it its weights and samples (``lock`` held)."""
        t.inbox, t.outbox = _CTX.Queue(), _CTX.Queue()
        t.proc = _CTX.Process(target=trainer_main, args=(t.spec, t.inbox, t.outbox),
                              name=f"trainer-{t.spec.name}", daemon=True)
        t.proc.start()
        t.started_at = time.monotonic()
        t.released_until = int(np.iinfo(np.int64).min)
        self._prime(t)
        t.status = replace(t.status, running=True, pid=t.proc.pid, restarts=t.restarts)
        self._release()

    def stop(self, name: str, timeout: float, wait: bool) -> None:
        """See ``TrainingManager.stop``."""
        with self.lock:
            t = self.trainers.get(name)
            if t is None:
                return
            t.wanted = False
            t.restart_at = None
            if wait:
                self._halt(t, timeout)
            elif t.proc is not None:
                self._unhold(t)
                try:
                    t.inbox.put(("stop",))
                except Exception:
                    pass
                self.retiring.append(Retiring(t, t.proc, t.inbox, t.outbox, time.monotonic() + timeout))
                t.proc = t.inbox = t.outbox = None
            t.status = replace(t.status, running=False, pid=None)

    def end_retiring(self) -> None:
        """Wait for the processes told to stop, each up to its deadline (shutdown)."""
        with self.lock:
            retiring, self.retiring = self.retiring, []
        for r in retiring:
            _end_process(r.proc, r.inbox, r.outbox, max(0.0, r.deadline - time.monotonic()))

    def _unhold(self, t: TrainerSlot) -> None:
        if t.held and t.proc is not None:
            self.send_signal([t.proc], signal.SIGCONT)  # a frozen process cannot take the stop message
        t.held = False

    def _halt(self, t: TrainerSlot, timeout: float) -> None:
        self._unhold(t)
        if t.proc is not None:
            _end_process(t.proc, t.inbox, t.outbox, timeout)
        t.proc = t.inbox = t.outbox = None

    # ---------------------------------------------------------------- housekeeping (engine thread)

    def housekeep(self, now: float) -> None:
        """Take what the trainers sent, restart dead ones, reap stopped ones. Called with ``lock`` held."""
        for t in self.trainers.values():
            self._drain(t, t.outbox)
            self._supervise(t, now)
        self._reap(now)

    def _reap(self, now: float) -> None:
        """Trainers stopped without waiting: take what they still publish, close them once they
        have exited, terminate those past their deadline. Called with ``lock`` held."""
        keep = []
        for r in self.retiring:
            self._drain(r.trainer, r.outbox, live=False)
            if not r.proc.is_alive():
                _end_process(r.proc, r.inbox, r.outbox, 0.0)  # closes its queues; joins at once
                continue
            if now >= r.deadline:  # overdue: SIGTERM, then SIGKILL two seconds later, never waiting here
                (r.proc.kill if r.signalled else r.proc.terminate)()
                r.signalled, r.deadline = True, now + 2.0
            keep.append(r)
        self.retiring = keep

    def _drain(self, t: TrainerSlot, outbox: Any, live: bool = True) -> None:
        """Handle what a trainer process sent. From a stopping process (``live=False``) only its
        published checkpoints count: its status and errors no longer describe the trainer."""
        if outbox is None:
            return
        while True:
            try:
                kind, body = outbox.get_nowait()
            except (queue.Empty, OSError, EOFError, ValueError):
                return
            if not live and kind != "published":
                continue
            if kind == "status":
                t.status = replace(t.status, steps=int(body["steps"]), loss=float(body["loss"]),
                                   samples_per_s=float(body["samples_per_s"]), pid=int(body["pid"]))
            elif kind == "published":
                now_ms = int(time.time() * 1000)
                t.status = replace(t.status, steps=int(body["steps"]), last_publish=now_ms)
                t.history.append(_point(now_ms, body))
                self._published(t.spec, body)
            elif kind == "error":
                t.status = replace(t.status, error=str(body).strip().splitlines()[-1])
                log.warning("trainer %s failed:\n%s", t.spec.name, body)

    def _supervise(self, t: TrainerSlot, now: float) -> None:
        if not t.wanted:
            return
        if t.proc is not None and not t.proc.is_alive():
            code = t.proc.exitcode
            self._halt(t, 0.0)
            t.restarts += 1
            if now - t.started_at > self.backoff_max_s:  # it had been healthy: start over
                t.backoff = self.backoff_initial_s
            t.restart_at = now + t.backoff
            # the cause without any earlier "(restart ...)" suffix, so the message does not grow
            err = (t.status.error or "").split(" (restart ")[0] or f"trainer process exited with code {code}"
            t.status = replace(t.status, running=False, pid=None, restarts=t.restarts,
                               error=f"{err} (restart {t.restarts} in {t.backoff:.0f} s)")
            log.warning("trainer %s died (exit code %s); restart %d in %.1f s", t.spec.name, code,
                        t.restarts, t.backoff)
            t.backoff = min(t.backoff * 2.0, self.backoff_max_s)
        elif t.proc is None and t.restart_at is not None and now >= t.restart_at:
            t.restart_at = None
            self.spawn(t)

    # ---------------------------------------------------------------- freezing (decision path)

    def freeze(self) -> list[Any]:
        """SIGSTOP every running, not held trainer process; returns them for ``thaw``."""
        if not self.trainers or not self.lock.acquire(blocking=False):
            return []
        try:  # send_signal skips processes that have exited
            procs = [t.proc for t in self.trainers.values() if t.wanted and not t.held and t.proc is not None]
        finally:
            self.lock.release()
        return self.send_signal(procs, signal.SIGSTOP)

    def thaw(self, procs: list[Any]) -> None:
        self.send_signal(procs, signal.SIGCONT)

    @staticmethod
    def send_signal(procs: list[Any], sig: int) -> list[Any]:
        """Signal our own child processes; one that has exited is skipped (``exitcode`` reaps it, so its
        pid can never have been reused by another process)."""
        done = []
        for p in procs:
            if p.exitcode is None:
                try:
                    os.kill(p.pid, sig)
                    done.append(p)
                except ProcessLookupError:
                    pass
        return done

    def hold(self, name: str, on: bool) -> None:
        """See ``TrainingManager.hold``."""
        with self.lock:
            t = self.trainers.get(name)
            if t is None or t.proc is None:
                raise ValueError(f"hold {name}: no trainer process running")
            t.held = bool(on)
            self.send_signal([t.proc], signal.SIGSTOP if on else signal.SIGCONT)
