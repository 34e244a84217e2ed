"""The composition root: the one place where ``core`` meets ``NN``.

``core`` (data, features, decisions, execution, backtests, the engine) declares what it needs as the
Protocols of core/types.py and never imports ``NN``; ``web`` reads engine snapshots and never imports
``NN`` either (import-linter contracts in pyproject.toml, run by ``make test``). This module builds the
NN objects (experts with their best checkpoints, the gate, the checkpoint registry, the live-training
manager) and hands them to the engine and the backtester. Both mains use it.
"""

from __future__ import annotations

import logging
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.backtest.engine import Components
from core.config import AppConfig, FeaturesConfig, ModelsConfig, Secrets, is_ticker
from core.data.book_store import load_summary
from core.data.files import import_series_file, parse_series_exchange, parse_series_name
from core.data.store import MarketStore
from core.engine import Engine, EngineParts, ReplayConfig, Trading
from core.features import FeatureBuilder
from core.market import Calendar, market_for
from core.types import Broker, ExpertLike, SeriesKey

if TYPE_CHECKING:
    from core.backtest.walkforward import FoldTrainer
    from NN.training.checkpoints import CheckpointRegistry
    from NN.training.online import TrainingManager

log = logging.getLogger(__name__)


def registry(store: MarketStore, models_dir: Path) -> CheckpointRegistry:
    from NN.training.checkpoints import CheckpointRegistry

    return CheckpointRegistry(store, models_dir)


def engine_parts(cfg: AppConfig, models: ModelsConfig, store: MarketStore, timeframe: str, *, mode: str,
                 training: bool) -> EngineParts:
    """Every enabled expert with its best checkpoint (untrained ones run, flagged untrained; one that
    cannot be built is reported and left out), the gate, and the live-training factory. Live/paper
    engines with training allowed resume online-trained weights (``training.resume_online``) that
    descend from the registered best; never a replay: weights that learned from the replayed history
    would see its future."""
    from NN.assembly import load_experts, load_gate
    from NN.training.online import resume_live

    models_dir = cfg.resolve(cfg.training.models_dir)
    builder = FeatureBuilder(models.features, timeframe)
    if models.features.orderbook:  # recorded books (a live BookEngine replaces this in main_dashboard)
        builder.book_rows = partial(load_summary, store)
    reg = registry(store, models_dir)
    loaded = load_experts(models, builder.spec, reg, keep_untrained=True)
    if not loaded.experts:
        raise ValueError("no expert could be built; check models.yml"
                         + "".join(f"\n  {n}: {e}" for n, e in loaded.errors.items()))
    for name, ex in list(loaded.experts.items()):  # Kronos: resolved now, so "not available" is a state
        if ex.input_kind != "candles" or loaded.trained.get(name):
            continue
        why = candle_expert_unavailable(ex)
        if why is None:
            loaded.trained[name] = True  # released (hub) or locally trained nano weights
        else:  # kept, switched off, shown as "not available" until Train now brings weights
            loaded.errors[name] = why
            log.warning("expert %s %s", name, why)
    problems = [(f"expert:{n}", e) for n, e in loaded.errors.items() if not e.startswith("not available")]
    unavailable = dict(loaded.errors)  # built but without weights (Kronos) or not built at all
    lineage: dict[str, tuple[str, dict | None]] = {}
    resumed: set[str] = set()
    resume = mode != "replay" and training and cfg.training.resume_online
    for name, ex in loaded.experts.items():
        lineage[name] = (str(ex.version), None)
        if not resume or ex.input_kind != "features":
            continue
        try:
            base = resume_live(ex, models_dir)
        except ValueError as exc:  # features or architecture changed since: the registered weights stay
            problems.append((f"resume:{name}", f"{type(exc).__name__}: {exc}"))
            continue
        if base is not None:
            lineage[name] = base
            resumed.add(name)  # the registry poll must not revert them; the manager judges
            loaded.trained[name] = True
            log.info("%s resumes its online-trained weights %s (base %s)", name, ex.version, base[0])
    gate, why = load_gate(models, list(loaded.experts), len(builder.spec.regime_features), reg)
    if why:
        problems.append(("gate", why))

    def make_training(key: SeriesKey, dead_zone: float) -> TrainingManager:
        from NN.training.online import TrainingManager

        tc = cfg.training
        return TrainingManager(store, models, builder, loaded.experts, key=key, dead_zone=dead_zone,
                               models_dir=models_dir, runs_dir=cfg.resolve(tc.runs_dir), threads=tc.trainer_threads,
                               nice=tc.trainer_nice, sched_idle=tc.trainer_idle, reserve_cpus=tc.reserve_cpus,
                               freeze_while_deciding=tc.freeze_while_deciding, lineage=lineage)

    from NN.training.background import OfflineTraining

    experts: dict[str, ExpertLike] = dict(loaded.experts)
    offline = OfflineTraining(cfg, models, experts, lambda: gate, reg, models_dir, trained=loaded.trained)
    return EngineParts(builder=builder, experts=experts, trained=loaded.trained, gate=gate,
                       registry=reg, make_training=make_training, unavailable=unavailable, resumed=resumed,
                       problems=problems, offline=offline)


def candle_expert_unavailable(ex: ExpertLike) -> str | None:
    """None when a candle expert (Kronos) can load its weights (``model: auto`` tries the hub cache, the
    hub, then the local nano); else its one-line "not available: ... Fix: ..." state."""
    from NN.experts.kronos.hub import CheckpointNotFound

    try:
        _ = ex.bundle  # type: ignore[attr-defined]
    except CheckpointNotFound as exc:
        msg = str(exc)
        return msg if msg.startswith("not available") else f"not available: {msg}"
    except AttributeError:
        return None
    return None


def trading(cfg: AppConfig, symbol: str, *, live_flag: bool = False, replay: bool = False,
            secrets: Secrets | None = None, notify: Any = None, store: MarketStore | None = None) -> Trading:
    """The account the engine trades (core/execution/modes.py decides; LiveTradingRefused names every
    missing switch) and its broker: the first symbol's broker is built NOW, so a refusal or a bad
    exchange id stops the start, not the first order."""
    from core.execution.modes import trading_mode

    secrets = secrets if secrets is not None else Secrets.from_env()
    # the same venue rule as the engine's: a ticker's venue comes from markets/its default, a pair's from data
    market = market_for(cfg, symbol, None if is_ticker(symbol) else cfg.data.exchange)
    tm = trading_mode(cfg.execution, live_flag=live_flag, secrets=secrets, stock=market.is_stock, replay=replay)
    if tm.broker == "paper":
        return Trading(mode=tm.mode, broker="paper", notify=notify)

    def make_broker(sym: str) -> Broker:
        if tm.broker == "paper_exchange":
            from core.execution.paper_exchange import PaperExchange

            if store is None:
                raise ValueError("execution.broker paper_exchange needs the engine's store")
            e = cfg.execution
            return PaperExchange(store, f"paper-exchange:{sym}", sym, initial_cash=e.initial_cash,
                                 taker_fee_bps=e.taker_fee_bps, slippage_bps=e.slippage_bps)
        if tm.broker == "alpaca":
            from core.execution.alpaca_broker import AlpacaBroker

            a = cfg.alpaca
            return AlpacaBroker(cfg.execution, live_flag=live_flag, secrets=secrets, paper_url=a.paper_url,
                                live_url=a.live_url)
        from core.execution.ccxt_broker import CcxtBroker

        return CcxtBroker(cfg.execution, cfg.data.exchange, live_flag=live_flag, secrets=secrets)

    first = make_broker(symbol)
    built = {symbol: first}

    def broker_for(sym: str) -> Broker:
        if sym not in built:
            built[sym] = make_broker(sym)
        return built[sym]

    return Trading(mode=tm.mode, broker=tm.broker, make_broker=broker_for, notify=notify)


def build_engine(cfg: AppConfig, models: ModelsConfig, *, symbol: str | None = None,
                 replay_path: Path | None = None, replay: ReplayConfig | None = None, training: bool = True,
                 db: str | Path | None = None, store: MarketStore | None = None, live_flag: bool = False,
                 secrets: Secrets | None = None) -> Engine:
    """The Engine for live data, or a replay of the store (after importing ``replay_path``, whose name
    gives symbol and timeframe). ``store`` given: the caller owns it; otherwise the engine opens
    ``db`` (default config data.db_path) and closes it on stop. ``live_flag``: the --live switch
    (real money also needs config execution.live and keys in the environment)."""
    if replay_path is not None and replay is None:
        replay = ReplayConfig(speed=cfg.dashboard.replay_speed)
    owns = store is None
    if store is None:
        store = MarketStore(Path(db) if db else cfg.resolve(cfg.data.db_path))
    try:
        sym, tf = symbol or cfg.data.symbols[0], cfg.data.base_timeframe
        if replay_path is not None:
            path = Path(replay_path)
            name_sym = parse_series_name(path)[0]
            market = market_for(cfg, name_sym or sym, parse_series_exchange(path)) if name_sym else None
            if market is not None and market.is_stock:  # a stock file: its venue, cleaned to its session
                sym, tf = import_series_file(store, market.exchange, path, market.calendar)
            else:
                sym, tf = import_series_file(store, cfg.data.exchange, path)
        from core.alerts import notifier_from_config

        notify = notifier_from_config(cfg.alerts, secrets if secrets is not None else Secrets.from_env())
        trade = trading(cfg, sym, live_flag=live_flag, replay=replay is not None, secrets=secrets,
                        notify=notify.send if notify is not None else None, store=store)
        mode = "replay" if replay is not None else trade.mode
        on = bool(training) and cfg.training.enabled
        parts = engine_parts(cfg, models, store, tf, mode=mode, training=on)
        parts.trading = trade
        return Engine(cfg, models, parts, store=store, symbol=sym, timeframe=tf, replay=replay, training=on,
                      owns_store=owns)
    except BaseException:
        if owns:
            store.close()
        raise


def backtest_components(models: ModelsConfig, base_timeframe: str, names: list[str] | None, *,
                        store: MarketStore | None = None, models_dir: Path | None = None,
                        features: FeaturesConfig | None = None, calendar: Calendar | None = None) -> Components:
    """Experts, gate and feature builder for a backtest. ``names`` None = every expert enabled in
    models.yml that has a registered checkpoint (untrained ones are skipped with a warning); names
    given explicitly run untrained when they have no checkpoint, and say so in ``info``. Without
    ``store`` and ``models_dir`` nothing is loaded (every expert untrained). ``calendar``: the market's
    sessions (stocks: features within sessions, Kronos' future bars follow the calendar)."""
    from core.backtest.forecast_cache import ForecastCache
    from NN.assembly import load_experts, load_gate

    builder = FeatureBuilder(features or models.features, base_timeframe, calendar=calendar)
    if builder.orderbook and store is not None:
        builder.book_rows = partial(load_summary, store)
    reg = registry(store, models_dir) if store is not None and models_dir is not None else None
    loaded = load_experts(models, builder.spec, reg, names, keep_untrained=names is not None)
    if loaded.errors:
        raise ValueError("cannot build expert(s): " + "; ".join(f"{n}: {e}" for n, e in loaded.errors.items()))
    for name in loaded.skipped:
        log.warning("expert %s has no checkpoint: skipped (pass --experts %s to run it untrained)", name, name)
    if not loaded.experts:
        raise ValueError("no expert to run: none has a checkpoint (train first: main_backtest.py train), "
                         "or name them with --experts to run them untrained")
    gate, why = load_gate(models, list(loaded.experts), len(builder.spec.regime_features), reg)
    if why:
        log.warning(why)
    info = {n: {"version": str(e.version), "trained": loaded.trained[n], "input_kind": e.input_kind}
            for n, e in loaded.experts.items()}
    info["gate"] = {"version": str(gate.version), "trained": bool(gate.trained), "input_kind": "gate"}
    cache = ForecastCache(store) if store is not None and any(
        e.input_kind == "candles" for e in loaded.experts.values()) else None
    return Components(experts=dict(loaded.experts), gate=gate, builder=builder, info=info, cache=cache)


def walkforward_trainer(models: ModelsConfig, app: AppConfig, key: SeriesKey, names: list[str], *,
                        epochs: int = 3, max_steps: int | None = None, retrain_gate: bool = False,
                        features: FeaturesConfig | None = None) -> FoldTrainer:
    """The walk-forward's per-fold trainer (NN/training/walkforward.py) for core/backtest/walkforward.py."""
    from NN.training.walkforward import FoldTrainerNN

    return FoldTrainerNN(models, app, key, names, epochs=epochs, max_steps=max_steps, retrain_gate=retrain_gate,
                         features=features)


def sweep_training_trial(*args: Any, **kwargs: Any) -> dict[str, Any] | None:
    """A sweep's training trial (NN/training/sweep_trial.py) for core/backtest/sweep.py: module-level, so
    Ray workers import it by name."""
    from NN.training.sweep_trial import training_trial

    return training_trial(*args, **kwargs)
