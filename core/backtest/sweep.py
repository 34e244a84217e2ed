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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from core.backtest.overfit import deflated_sharpe, pbo_cscv
from core.backtest.retune import Cached, cached_from_arrays, evaluate_trial, load_cached
from core.backtest.sweep_space import (
    Space,
    SweepError,
    Training,
    TrainTrial,
    distributions,
    grid_size,
    load_space,
    load_training_data,
    make_pruner,
    make_sampler,
)
from core.backtest.walkforward import Fold
from core.config import AppConfig, ModelsConfig
from core.execution.kernel import bars_per_year
from core.types import SeriesKey

log = logging.getLogger(__name__)

DSR_SURVIVES = 0.95  # a trial survives the multiple-testing correction when DSR >= this

__all__ = ["Space", "SweepError", "Training", "TrainTrial", "load_space", "open_study", "run_sweep",
           "summarize", "sweep_paths", "read_summary"]


@dataclass(frozen=True)
class SweepPaths:
    journal: Path  # the Optuna journal (the study)
    result: Path  # the summary JSON


def sweep_paths(db: Path, name: str) -> SweepPaths:
    d = Path(db).resolve().parent / "sweeps"
    return SweepPaths(d / f"{name}.journal", d / f"{name}.json")


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
