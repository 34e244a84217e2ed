"""The engine's commands: validated on the caller's thread, applied on the engine thread in order.

Every public method here checks its arguments at once (a ValueError names what is wrong) and queues
``(name, argument)``; the engine thread looks the name up in ``command_table`` between two candles.
Before ``start()`` a command is applied at once, so the first snapshot already reflects it. Settings
that outlive a stream (thresholds, expert switches) are kept on the engine and handed to each new
orchestrator.
"""

from __future__ import annotations

import queue
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from core.types import Decision, Thresholds, timeframe_ms

if TYPE_CHECKING:
    from core.data.provider import DataProvider
    from core.data.store import MarketStore
    from core.engine.offline import OfflineTrainer
    from core.engine.training import TrainingHook
    from core.execution.executor import Executor
    from core.orchestrator import Orchestrator
    from core.types import ExpertLike

Handler = Callable[[Any], None]


class EngineCommands:
    """Mixin of ``Engine`` (core/engine/engine.py): the command API and its handlers."""

    # provided by Engine
    experts: dict[str, ExpertLike]
    symbol: str
    timeframe: str
    training: bool
    hook: TrainingHook
    _q: queue.Queue[tuple[str, Any]]
    _running: bool
    _streaming: bool
    _thresholds: Thresholds
    _enabled: dict[str, bool]
    _unavailable: dict[str, str]
    _orch: Orchestrator | None
    _executor: Executor | None
    _provider: DataProvider | None
    offline: OfflineTrainer | None
    exchange: str
    store: MarketStore

    def _publish(self) -> None:
        raise NotImplementedError

    def _restart(self, symbol: str) -> None:
        raise NotImplementedError

    def _frames(self, ts: int) -> dict[str, Any]:
        raise NotImplementedError

    def trainable(self) -> list[str]:
        raise NotImplementedError

    def train_cutoff_ms(self) -> int | None:
        raise NotImplementedError

    def command_table(self) -> dict[str, Handler]:
        return {
            "set_thresholds": self._apply_thresholds,
            "set_expert_enabled": self._apply_enabled,
            "set_training": self._apply_training,
            "rollback": self._apply_rollback,
            "reset_kill_switch": self._apply_reset_kill_switch,
            "start_stream": self._apply_start_stream,
            "stop_stream": self._apply_stop_stream,
            "preview": self._apply_preview,
            "train_now": self._apply_train_now,
        }

    # ---- public API (any thread)
    def set_thresholds(self, t: Thresholds) -> None:
        if not isinstance(t, Thresholds):
            raise ValueError(f"set_thresholds expects Thresholds, got {type(t).__name__}")
        self._command("set_thresholds", t)

    def set_expert_enabled(self, name: str, enabled: bool) -> None:
        if name not in self.experts:
            raise ValueError(f"unknown expert {name!r}; running: {', '.join(self.experts)}")
        if enabled and name in self._unavailable:
            raise ValueError(f"{name} is {self._unavailable[name]}")
        self._command("set_expert_enabled", (name, bool(enabled)))

    def reset_kill_switch(self) -> None:
        self._command("reset_kill_switch", None)

    def start_stream(self, symbol: str, timeframe: str) -> None:
        if "/" not in symbol:
            raise ValueError(f"symbol {symbol!r} must be a ccxt symbol like BTC/USDT")
        timeframe_ms(timeframe)
        if timeframe != self.timeframe:
            raise ValueError(f"timeframe {timeframe!r}: the engine streams its base timeframe {self.timeframe} "
                             "(higher timeframes are resampled from it)")
        self._command("start_stream", symbol)

    def stop_stream(self) -> None:
        self._command("stop_stream", None)

    def generate_prediction(self) -> Decision:
        """The fused decision the experts would make now, at the newest closed candle: nothing is
        traded, audited or learnt (``Orchestrator.preview``)."""
        done: queue.Queue[Decision | BaseException] = queue.Queue()
        self._command("preview", done)
        res = done.get(timeout=60)
        if isinstance(res, BaseException):
            raise res
        return res

    def train_now(self, preset: str = "quick") -> None:
        """Train now: offline training of the enabled experts and the gate in a background process on
        the stored candles up to the engine's newest bar; the checkpoints are hot-swapped in when it
        finishes. ValueError when the preset is unknown, Train now is unavailable or a job runs."""
        from core.engine.offline import PRESETS

        if preset not in PRESETS:
            raise ValueError(f"unknown training preset {preset!r}; use one of {', '.join(PRESETS)}")
        if self.offline is None:
            raise ValueError("train now is not available in this engine")
        if self.offline.running:
            raise ValueError("a training job is already running; wait for it to finish")
        done: queue.Queue[BaseException | None] = queue.Queue()
        self._command("train_now", (preset, done))
        res = done.get(timeout=60)
        if res is not None:
            raise res

    def set_training(self, name: str, on: bool) -> None:
        """Start/stop online training of expert ``name`` (a trainer process; promotions hot-swap the
        live weights between decisions). ValueError when the expert is unknown, cannot train online
        (candle experts such as Kronos), or training is disabled for this engine."""
        self._check_trainable(name, "set_training")
        self._command("set_training", (name, bool(on)))

    def rollback(self, name: str) -> None:
        """Put the previous live version of ``name`` back (exact weights), between two decisions.
        ValueError when there is no previous version (nothing was promoted)."""
        self._check_trainable(name, "rollback")
        if not self.hook.has_history(name):
            raise ValueError(f"rollback {name}: no previous version to restore")
        self._command("rollback", name)

    def _check_trainable(self, name: str, what: str) -> None:
        if name not in self.experts:
            raise ValueError(f"{what}: unknown expert {name!r}; running: {', '.join(self.experts)}")
        if name not in self.trainable():
            raise ValueError(f"{what}: expert {name!r} cannot train online (candle experts train offline)")
        if not self.training:
            raise ValueError(f"{what} {name!r}: online training is disabled for this engine "
                             "(--no-training or training.enabled: false)")

    def _command(self, name: str, arg: Any) -> None:
        self._q.put((name, arg))
        if not self._running:  # before start(): apply at once so the snapshot reflects it
            self._drain_now()

    def _drain_now(self) -> None:
        while True:
            try:
                kind, arg = self._q.get_nowait()
            except queue.Empty:
                return
            try:
                if kind != "candle":
                    self.command_table()[kind](arg)
            finally:
                self._q.task_done()

    # ---- handlers (engine thread)
    def _apply_thresholds(self, t: Thresholds) -> None:
        self._thresholds = t
        if self._orch is not None:
            self._orch.set_thresholds(t)
        self._publish()

    def _apply_enabled(self, arg: tuple[str, bool]) -> None:
        name, on = arg
        self._enabled = {**self._enabled, name: on}
        if self._orch is not None:
            self._orch.set_expert_enabled(name, on)
        self._publish()

    def _apply_training(self, arg: tuple[str, bool]) -> None:
        self.hook.switch(arg[0], arg[1], self._orch)
        self._publish()

    def _apply_rollback(self, name: str) -> None:
        self.hook.rollback(name)
        self._publish()

    def _apply_reset_kill_switch(self, _arg: None) -> None:
        if self._executor is not None:
            self._executor.reset_kill_switch()
        self._publish()

    def _apply_start_stream(self, symbol: str) -> None:
        self._restart(symbol)
        self._publish()

    def _apply_stop_stream(self, _arg: None) -> None:
        if self._provider is not None:
            self._provider.stop()
        self._streaming = False
        self._publish()

    def _apply_train_now(self, arg: tuple[str, queue.Queue[BaseException | None]]) -> None:
        preset, done = arg
        try:
            from core.types import SeriesKey

            assert self.offline is not None
            key = SeriesKey(self.exchange, self.symbol, self.timeframe)
            self.offline.start(preset, key, self.store.candles(key, None, self.train_cutoff_ms()))
            done.put(None)
        except (ValueError, OSError) as exc:
            done.put(ValueError(str(exc)))
        except Exception as exc:  # the caller waits: answer it whatever happened
            done.put(RuntimeError(f"{type(exc).__name__}: {exc}"))
        self._publish()

    def _apply_preview(self, done: queue.Queue[Decision | BaseException]) -> None:
        try:
            if self._provider is None or self._orch is None:
                raise RuntimeError("the engine is not streaming")
            newest = self._provider.arrays(self.symbol, self.timeframe, 1)["ts"]
            if not len(newest):
                raise RuntimeError("no candle yet")
            done.put(self._orch.preview(self._frames(int(newest[-1]))))
        except (RuntimeError, ValueError) as exc:
            done.put(exc)
        except Exception as exc:  # an unexpected failure still answers the waiting caller
            done.put(RuntimeError(f"{type(exc).__name__}: {exc}"))
