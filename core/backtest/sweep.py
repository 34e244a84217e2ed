"""Parameter sweeps: an Optuna study driven by ask/tell, its trials run as one-CPU Ray tasks.

Why Ray tasks + Optuna ask/tell rather than Ray Tune: the Optuna study in a journal file next to the
DuckDB store is the single record of what was tried, so a killed sweep resumes exactly (trials it had
asked but not finished are re-run with their stored parameters; completed ones are never repeated) and
the same study can be read back by the dashboard without Ray. Ray only executes: ``ray.init()`` on this
machine with ``--workers`` CPUs, or an existing cluster at ``--address``. The cached walk-forward bars and
predictions are put into Ray's object store once; every task maps the same read-only arrays (zero copy
on one node), never a per-process copy of the data.

Samplers: tpe (default), random, grid (each parameter then lists ``values``). Two kinds of trial:

* cached (``predictions:`` a walk-forward folder): thresholds and risk settings re-trade its cached
  predictions (core/backtest/retune.py), no retraining;
* training (``data:`` a candles file, when ``horizon``, ``dead_zone_bps`` or ``<expert>.<param>`` is
  swept, since they change the labels or the models): each trial trains one fold (``train`` window, then
  the last ``test`` window of the data is traded) through the injected ``TrainTrial`` (the composition
  root's NN/training/sweep_trial.py: core never imports NN). Every expert epoch reports its val log-loss
  skill over climatology (comparable across horizons and dead zones) to the study and asks its pruner (``pruner: asha`` = Optuna's SuccessiveHalvingPruner, ``hyperband``,
  ``none``): a trial behind its rung's top 1/reduction_factor stops training at once. The worker
  reports straight into the journal, so on a Ray cluster the journal must sit on a path every node
  sees (README "Running sweeps on a Ray cluster"). The trained fold's predictions are then re-traded
  with the trial's thresholds and risk settings like a cached trial, and the study ranks by Sharpe.

After the sweep every trial gets the deflated Sharpe ratio given the number of trials tried (pruned
ones included: they were looked at), the sweep the PBO from CSCV over 16 blocks of bars, and trials
with fewer than ``min_trades`` round trips are marked.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from core.backtest.overfit import deflated_sharpe, pbo_cscv
from core.backtest.retune import (
    RISK_KEYS,
    THRESHOLD_KEYS,
    Cached,
    cached_from_arrays,
    evaluate_trial,
    load_cached,
)
from core.backtest.walkforward import Fold, parse_duration
from core.config import AppConfig, ModelsConfig
from core.execution.kernel import bars_per_year
from core.types import SeriesKey

log = logging.getLogger(__name__)

SAMPLERS = ("tpe", "random", "grid")
PRUNERS = ("asha", "hyperband", "none")
TRAINING_KEYS = ("horizon", "dead_zone_bps")  # plus "<expert>.<param>": these need retraining
SPACE_KEYS = {"predictions", "params", "sampler", "min_trades", "seed", "timeframe", "data", "from", "to", "train",
              "test", "experts", "epochs", "max_steps", "pruner", "reduction_factor", "symbol", "exchange"}
DSR_SURVIVES = 0.95  # a trial survives the multiple-testing correction when DSR >= this


class SweepError(ValueError):
    """A bad SPACE.yml or sweep request (one line)."""


@dataclass(frozen=True)
class Training:
    """What a training trial trains on: the candles file, its range, the fold, the experts, the budget."""

    data: Path
    from_ms: int | None = None
    to_ms: int | None = None
    train_ms: int = 7 * 86_400_000
    test_ms: int = 86_400_000
    experts: tuple[str, ...] = ("cnn",)
    epochs: int = 4
    max_steps: int | None = None
    pruner: str = "asha"
    reduction_factor: int = 3
    exchange: str = "binanceus"
    symbol: str = "BTC/USDT"


@dataclass(frozen=True)
class Space:
    predictions: Path | None  # a walk-forward output folder (cached trials)
    params: dict[str, dict[str, Any]]
    sampler: str = "tpe"
    min_trades: int = 10
    seed: int = 0
    timeframe: str = "1m"
    training: Training | None = None  # training trials

    @property
    def kind(self) -> str:
        return "training" if self.training is not None else "cached"


TrainTrial = Callable[..., "dict[str, Any] | None"]
"""(candles, fold, params, app, models, key, names, *, epochs, max_steps, report, seed) -> the fold's test
bars' ts, fused, confidence, live (or None when pruned); compose.sweep_training_trial."""


@dataclass(frozen=True)
class SweepPaths:
    journal: Path  # the Optuna journal (the study)
    result: Path  # the summary JSON


def sweep_paths(db: Path, name: str) -> SweepPaths:
    d = Path(db).resolve().parent / "sweeps"
    return SweepPaths(d / f"{name}.journal", d / f"{name}.json")


def _is_training_key(k: str) -> bool:
    return k in TRAINING_KEYS or "." in k


def _rel(path: Path, base: Path) -> Path:
    return path if path.is_absolute() or not (base / path).exists() else base / path


def load_space(path: Path, cfg: AppConfig | None = None, models: ModelsConfig | None = None) -> Space:
    """SPACE.yml -> Space; every problem is one SweepError line naming the key."""
    if not path.exists():
        raise SweepError(f"{path}: no such file")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise SweepError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise SweepError(f"{path}: expected a mapping")
    unknown = set(raw) - SPACE_KEYS
    if unknown:
        raise SweepError(f"{path}: unknown key(s) {sorted(unknown)}")
    sampler = raw.get("sampler", "tpe")
    if sampler not in SAMPLERS:
        raise SweepError(f"{path}: sampler {sampler!r}: allowed {', '.join(SAMPLERS)}")
    params = raw.get("params") or {}
    if not isinstance(params, dict) or not params:
        raise SweepError(f"{path}: 'params' must map parameter names to ranges")
    training = any(_is_training_key(str(k)) for k in params)
    if training and "data" not in raw:
        raise SweepError(f"{path}: {sorted(k for k in params if _is_training_key(str(k)))} need retraining: give "
                         "'data' (a candles file) and optionally train, test, experts, epochs, pruner")
    if not training and "predictions" not in raw:
        raise SweepError(f"{path}: 'predictions' (a walk-forward output folder) is required")
    tr = _training(path, raw, models) if training else None
    names = tr.experts if tr else ()
    allowed = THRESHOLD_KEYS + RISK_KEYS + (TRAINING_KEYS if training else ())
    for k, v in params.items():
        if "." in str(k):
            ex, _, hp = str(k).partition(".")
            if ex not in names:
                raise SweepError(f"{path}: params.{k}: {ex!r} is not one of the trained experts {list(names)}")
            if models is not None and hp not in models.experts[ex].params:
                raise SweepError(f"{path}: params.{k}: {ex} has no parameter {hp!r} in models.yml "
                                 f"(it has {', '.join(sorted(models.experts[ex].params))})")
        elif k not in allowed:
            raise SweepError(f"{path}: params.{k}: not a sweepable parameter (allowed: {', '.join(allowed)}, "
                             "and <expert>.<param> for trained experts)")
        if not isinstance(v, dict) or not ({"low", "high"} <= set(v) or "values" in v):
            raise SweepError(f"{path}: params.{k}: give low and high (optional step, log) or values")
        if sampler == "grid" and "values" not in v:
            raise SweepError(f"{path}: params.{k}: the grid sampler needs 'values'")
        if "low" in v and not float(v["low"]) < float(v["high"]):
            raise SweepError(f"{path}: params.{k}: low {v['low']} must be below high {v['high']}")
    pred = _rel(Path(raw["predictions"]), path.parent) if "predictions" in raw and not training else None
    return Space(pred, params, sampler, int(raw.get("min_trades", 10)), int(raw.get("seed", 0)),
                 str(raw.get("timeframe", cfg.data.base_timeframe if cfg else "1m")), tr)


def _training(path: Path, raw: dict[str, Any], models: ModelsConfig | None) -> Training:
    from core.data.files import cli_ms

    data = _rel(Path(raw["data"]), path.parent)
    if not data.exists():
        raise SweepError(f"{path}: data: {data} does not exist (a candles file, e.g. ../shared/data/binanceus/"
                         "BTC_USDT-1m.csv)")
    experts = raw.get("experts", ["cnn"])
    experts = [x for e in ([experts] if isinstance(experts, str) else experts) for x in str(e).split(",") if x]
    if models is not None:
        bad = [e for e in experts if e not in models.experts or e == "kronos"]
        if bad:
            raise SweepError(f"{path}: experts: {bad} are not features experts of models.yml")
    pruner = str(raw.get("pruner", "asha"))
    if pruner not in PRUNERS:
        raise SweepError(f"{path}: pruner {pruner!r}: allowed {', '.join(PRUNERS)}")
    try:
        kw: dict[str, Any] = {
            "train_ms": parse_duration(str(raw.get("train", "7d"))), "test_ms": parse_duration(str(raw.get("test", "1d"))),
            "from_ms": cli_ms(str(raw["from"])) if raw.get("from") is not None else None,
            "to_ms": cli_ms(str(raw["to"])) if raw.get("to") is not None else None}
    except Exception as exc:  # argparse's type error or a bad duration: one line either way
        raise SweepError(f"{path}: {exc}") from None
    epochs, rf = int(raw.get("epochs", 4)), int(raw.get("reduction_factor", 3))
    if epochs < 1 or rf < 2:
        raise SweepError(f"{path}: epochs must be >= 1 and reduction_factor >= 2 (got {epochs}, {rf})")
    return Training(data, experts=tuple(experts), epochs=epochs,
                    max_steps=int(raw["max_steps"]) if raw.get("max_steps") is not None else None,
                    pruner=pruner, reduction_factor=rf, exchange=str(raw.get("exchange", "binanceus")),
                    symbol=str(raw.get("symbol", "BTC/USDT")), **kw)


def load_training_data(space: Space) -> tuple[Any, Fold]:
    """The training sweep's candles (its range) and its one fold: the last ``test`` window of the range,
    trained on the ``train`` window before it."""
    from core.data.files import load_file
    from core.types import timeframe_ms

    t = space.training
    assert t is not None
    df = load_file(t.data)
    ts = df["ts"]
    df = df[((ts >= t.from_ms) if t.from_ms is not None else True) & ((ts < t.to_ms) if t.to_ms is not None else True)]
    df = df.reset_index(drop=True)
    if df.empty:
        raise SweepError(f"{t.data}: no candles in the sweep's from/to range")
    end = int(df["ts"].iloc[-1]) + timeframe_ms(space.timeframe)
    fold = Fold(0, end - t.test_ms - t.train_ms, end - t.test_ms, end)
    if fold.train_start < int(df["ts"].iloc[0]):
        raise SweepError(f"{t.data}: {len(df)} bars cannot hold train + test "
                         f"({(t.train_ms + t.test_ms) / 3_600_000:.1f} h); widen from/to or shorten train/test")
    return df, fold


def distributions(space: Space) -> dict[str, Any]:
    import optuna.distributions as D

    out: dict[str, Any] = {}
    for k, v in space.params.items():
        if "values" in v:
            out[k] = D.CategoricalDistribution(list(v["values"]))
        elif k in ("cooldown_bars", "horizon") or (isinstance(v["low"], int) and isinstance(v["high"], int)
                                                    and not v.get("log") and "." in k):
            out[k] = D.IntDistribution(int(v["low"]), int(v["high"]), step=int(v.get("step", 1)))
        else:
            out[k] = D.FloatDistribution(float(v["low"]), float(v["high"]), step=v.get("step"),
                                         log=bool(v.get("log", False)))
    return out


def make_sampler(space: Space) -> Any:
    import optuna

    if space.sampler == "random":
        return optuna.samplers.RandomSampler(seed=space.seed)
    if space.sampler == "grid":
        return _Grid({k: list(v["values"]) for k, v in space.params.items()}, seed=space.seed)
    return optuna.samplers.TPESampler(seed=space.seed, n_startup_trials=10)


def make_pruner(space: Space) -> Any:
    """ASHA-style early stopping for training trials (steps are expert epochs, min resource one epoch)."""
    import optuna

    t = space.training
    if t is None or t.pruner == "none":
        return optuna.pruners.NopPruner()
    if t.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=t.epochs * len(t.experts),
                                              reduction_factor=t.reduction_factor)
    return optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=t.reduction_factor)


def grid_size(space: Space) -> int | None:
    return math.prod(len(v["values"]) for v in space.params.values()) if space.sampler == "grid" else None


def _grid_class() -> Any:
    import optuna

    class Grid(optuna.samplers.GridSampler):
        """Optuna's grid sampler stops an ``optimize`` loop when the grid is exhausted, which raises
        under ask/tell; this sweep caps its trials at the grid size itself."""

        def after_trial(self, study: Any, trial: Any, state: Any, values: Any) -> None:
            return None

    return Grid


def _Grid(grid: dict[str, list[Any]], seed: int) -> Any:
    return _grid_class()(grid, seed=seed)


def open_study(space: Space, paths: SweepPaths, name: str) -> Any:
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    paths.journal.parent.mkdir(parents=True, exist_ok=True)
    storage = JournalStorage(JournalFileBackend(str(paths.journal)))
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.create_study(study_name=name, storage=storage, direction="maximize",
                               sampler=make_sampler(space), pruner=make_pruner(space), load_if_exists=True)


def _journal(path: Path) -> Any:
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    return JournalStorage(JournalFileBackend(str(path)))


@dataclass(frozen=True)
class _CachedCtx:
    """A cached trial's inputs, put once into Ray's object store."""

    cached: Cached
    cfg: AppConfig
    bpy: float

    def run(self, trial_id: int, params: dict[str, Any]) -> dict[str, Any]:
        return evaluate_trial(self.cached, params, self.cfg, self.bpy)


@dataclass(frozen=True)
class _TrainCtx:
    """A training trial's inputs (the candles once, read-only), and where to report epochs to."""

    candles: Any  # pd.DataFrame
    fold: Fold
    space: Space
    cfg: AppConfig
    models: ModelsConfig
    bpy: float
    journal: Path
    name: str
    train_trial: TrainTrial

    def run(self, trial_id: int, params: dict[str, Any]) -> dict[str, Any]:
        import optuna

        t = self.space.training
        assert t is not None
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study = optuna.load_study(study_name=self.name, storage=_journal(self.journal),
                                  sampler=optuna.samplers.RandomSampler(), pruner=make_pruner(self.space))
        trial = optuna.trial.Trial(study, trial_id)

        def report(step: int, value: float) -> bool:
            trial.report(value, step)
            return bool(trial.should_prune())

        try:
            out = self.train_trial(self.candles, self.fold, params, self.cfg, self.models,
                                   SeriesKey(t.exchange, t.symbol, self.space.timeframe), list(t.experts),
                                   epochs=t.epochs, max_steps=t.max_steps, report=report, seed=self.space.seed)
        except Exception as exc:  # a bad hyper-parameter fails its trial, not the sweep
            return {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"}
        if out is None:
            return {"pruned": True}
        ts = self.candles["ts"].to_numpy(np.int64)
        bars = self.candles.iloc[np.searchsorted(ts, out["ts"])].reset_index(drop=True)
        c = cached_from_arrays(bars, out["fused"], out["confidence"], np.zeros(len(bars), dtype=np.int64),
                               out["live"], self.cfg, self.space.timeframe)
        return {**evaluate_trial(c, params, self.cfg, self.bpy), "val_logloss": out["val_logloss"],
                "val_climatology": out.get("val_climatology")}


def _trial_task(ctx: _CachedCtx | _TrainCtx, trial_id: int, params: dict[str, Any]) -> dict[str, Any]:
    return ctx.run(trial_id, params)


@dataclass
class _Pool:
    """Where trials run: Ray tasks (workers >= 1 or a cluster), or inline (workers = 0, tests/bench)."""

    workers: int
    address: str | None
    ctx: _CachedCtx | _TrainCtx
    _ref: Any = None
    _remote: Any = None
    _inline: dict[int, dict[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.workers == 0 and self.address is None:
            return
        import ray

        root = str(Path(__file__).resolve().parents[2])
        if self.address:  # an existing cluster: ship this checkout's code to its workers
            ray.init(address=self.address, runtime_env={"working_dir": root, "excludes": [
                ".venv", "data", "models", "reports", "runs", "test-output", ".git", "*.duckdb", "*.journal"]},
                ignore_reinit_error=True, log_to_driver=False)
        else:
            ray.init(num_cpus=self.workers, include_dashboard=False, ignore_reinit_error=True, log_to_driver=False,
                     runtime_env={"env_vars": {"PYTHONPATH": root}})
        self._ref = ray.put(self.ctx)  # one read-only copy of the bars / candles in the object store
        self._remote = ray.remote(num_cpus=1)(_trial_task)

    @property
    def slots(self) -> int:
        if self._remote is None:
            return 1
        if self.address:
            import ray

            return max(1, int(ray.cluster_resources().get("CPU", 1)))
        return self.workers

    def submit(self, trial_id: int, params: dict[str, Any]) -> Any:
        if self._remote is None:
            self._inline[trial_id] = params
            return ("inline", trial_id)
        return self._remote.remote(self._ref, trial_id, params)

    def wait(self, pending: dict[Any, Any]) -> list[tuple[Any, dict[str, Any]]]:
        if self._remote is None:
            key = next(iter(pending))
            return [(key, _trial_task(self.ctx, key[1], self._inline.pop(key[1])))]
        import ray

        ready, _ = ray.wait(list(pending), num_returns=1)
        return [(r, ray.get(r)) for r in ready]

    def close(self) -> None:
        if self._remote is not None and not self.address:
            import ray

            ray.shutdown()


STAT_KEYS = ("fills", "total_return", "sharpe", "sharpe_bar", "skew", "kurt", "bars", "decisions_buy",
             "decisions_sell")


def run_sweep(space: Space, cfg: AppConfig, *, n_trials: int, workers: int = 1, address: str | None = None,
              paths: SweepPaths, name: str, on_trial: Any = None, models: ModelsConfig | None = None,
              train_trial: TrainTrial | None = None) -> dict[str, Any]:
    """Run the study up to ``n_trials`` trials in all (a resumed study counts what it already has) and
    write the summary JSON; ``workers`` 0 evaluates inline (no Ray). Training sweeps need ``models``
    and ``train_trial`` (compose.sweep_training_trial)."""
    import optuna
    from optuna.trial import TrialState

    if n_trials < 1:
        raise SweepError(f"--trials must be >= 1, got {n_trials}")
    if workers < 0:
        raise SweepError(f"--workers must be >= 0, got {workers}")
    bpy = bars_per_year(space.timeframe)
    ctx: _CachedCtx | _TrainCtx
    if space.training is not None:
        if models is None or train_trial is None:
            raise SweepError("a training sweep needs models.yml and a trainer (main_backtest.py sweep gives both)")
        candles, fold = load_training_data(space)
        ctx = _TrainCtx(candles, fold, space, cfg, models, bpy, paths.journal.resolve(), name, train_trial)
    else:
        assert space.predictions is not None
        ctx = _CachedCtx(load_cached(space.predictions, cfg, space.timeframe), cfg, bpy)
    study = open_study(space, paths, name)
    dists = distributions(space)
    t0 = time.perf_counter()
    pool = _Pool(workers, address, ctx)
    pending: dict[Any, optuna.trial.Trial] = {}
    try:
        # a killed sweep left these asked but never told: run them again with their stored parameters
        for ft in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            tr = optuna.trial.Trial(study, ft._trial_id)
            pending[pool.submit(ft._trial_id, dict(ft.params))] = tr
        cap = grid_size(space)
        remaining = (min(n_trials, cap) if cap else n_trials) - len(study.get_trials(deepcopy=False))
        while pending or remaining > 0:
            while remaining > 0 and len(pending) < pool.slots:
                tr = study.ask(dists)
                pending[pool.submit(tr._trial_id, dict(tr.params))] = tr
                remaining -= 1
            for key, res in pool.wait(pending):
                tr = pending.pop(key)
                if "error" in res:
                    tr.set_user_attr("error", res["error"])
                    log.warning("sweep %s: trial %d failed: %s", name, tr.number, res["error"])
                    study.tell(tr, state=TrialState.FAIL)
                elif res.get("pruned"):
                    study.tell(tr, state=TrialState.PRUNED)
                else:
                    # ONE journal write for all the figures (each write is an fsync: the driver's cost)
                    stats = {k: res[k] for k in STAT_KEYS + ("val_logloss", "val_climatology") if k in res}
                    stats["blocks"] = [res["block_sum"], res["block_sq"], res["block_n"]]
                    tr.set_user_attr("stats", stats)
                    study.tell(tr, res["sharpe"])
                if on_trial is not None:
                    on_trial(tr.number)
    finally:
        pool.close()
    elapsed = time.perf_counter() - t0
    summary = summarize(study, space, name)
    summary["elapsed_s"] = elapsed
    summary["workers"] = workers
    paths.result.parent.mkdir(parents=True, exist_ok=True)
    paths.result.write_text(json.dumps(summary, indent=2, default=_num))
    return summary


def trial_stats_of(t: Any) -> dict[str, Any]:
    """A completed trial's figures (one "stats" attribute; studies of the first version kept one attribute
    per figure)."""
    return dict(t.user_attrs.get("stats") or t.user_attrs)


def summarize(study: Any, space: Space, name: str) -> dict[str, Any]:
    """Every completed trial with its deflated Sharpe, the survivors, the best five and the PBO."""
    from optuna.trial import TrialState

    every = study.get_trials(deepcopy=False)
    done = [t for t in every if t.state == TrialState.COMPLETE]
    pruned = [t for t in every if t.state == TrialState.PRUNED]
    tried = len(done) + len(pruned)  # a pruned configuration was looked at too: it counts in the haircut
    srs = np.array([trial_stats_of(t)["sharpe_bar"] for t in done], dtype=np.float64)
    var = float(srs.var(ddof=1)) if len(srs) > 1 else 0.0
    rows = []
    for t in done:
        a = trial_stats_of(t)
        trades = a["fills"] // 2
        dsr = deflated_sharpe(a["sharpe_bar"], a["bars"], a["skew"], a["kurt"], tried, var)
        rows.append({"number": t.number, "params": t.params, "sharpe": a["sharpe"], "sharpe_bar": a["sharpe_bar"],
                     "total_return": a["total_return"], "trades": trades, "dsr": dsr,
                     "enough_trades": trades >= space.min_trades, "val_logloss": a.get("val_logloss"),
                     "val_climatology": a.get("val_climatology"),
                     "survives": bool(trades >= space.min_trades and math.isfinite(dsr) and dsr >= DSR_SURVIVES)})
    rows.sort(key=lambda r: r["number"])
    pbo = None
    if len(done) >= 2:
        b = [trial_stats_of(t)["blocks"] for t in done]
        pbo = pbo_cscv(np.array([x[0] for x in b]), np.array([x[1] for x in b]), np.array(b[0][2]))
    best = sorted(rows, key=lambda r: -r["sharpe"])[:5]
    return {"name": name, "kind": space.kind, "predictions": str(space.predictions) if space.predictions else None,
            "data": str(space.training.data) if space.training else None, "sampler": space.sampler,
            "trials": len(done), "pruned": [t.number for t in pruned], "trials_tried": tried,
            "failed": {t.number: t.user_attrs.get("error", "") for t in every if t.state == TrialState.FAIL},
            "sharpe_variance_bar": var, "min_trades": space.min_trades, "dsr_threshold": DSR_SURVIVES,
            "pbo": pbo, "best": best, "survivors": [r["number"] for r in rows if r["survives"]], "all": rows}


def read_summary(path: Path) -> dict[str, Any]:
    return dict(json.loads(Path(path).read_text()))


def _num(v: Any) -> Any:
    if isinstance(v, np.generic):
        return v.item()
    return str(v)
