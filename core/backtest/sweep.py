"""Parameter sweeps: an Optuna study driven by ask/tell, its trials run as one-CPU Ray tasks.

Why Ray tasks + Optuna ask/tell rather than Ray Tune: the Optuna study in a journal file next to the
DuckDB store is the single record of what was tried, so a killed sweep resumes exactly (trials it had
asked but not finished are re-run with their stored parameters; completed ones are never repeated) and
the same study can be read back by the dashboard without Ray. Ray only executes: ``ray.init()`` on this
machine with ``--workers`` CPUs, or an existing cluster at ``--address``. The cached walk-forward bars and
predictions are put into Ray's object store once; every task maps the same read-only arrays (zero copy
on one node), never a per-process copy of the data.

Samplers: tpe (default), random, grid (each parameter then lists ``values``). Trials here re-trade a
walk-forward's cached predictions (thresholds and risk settings; core/backtest/retune.py). After the
sweep every trial gets the deflated Sharpe ratio given the number of trials, the sweep the PBO from
CSCV over 16 blocks of bars, and trials with fewer than ``min_trades`` round trips are marked.
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
import yaml

from core.backtest.overfit import deflated_sharpe, pbo_cscv
from core.backtest.retune import RISK_KEYS, THRESHOLD_KEYS, Cached, evaluate_trial, load_cached
from core.config import AppConfig
from core.execution.kernel import bars_per_year

log = logging.getLogger(__name__)

SAMPLERS = ("tpe", "random", "grid")
DSR_SURVIVES = 0.95  # a trial survives the multiple-testing correction when DSR >= this


class SweepError(ValueError):
    """A bad SPACE.yml or sweep request (one line)."""


@dataclass(frozen=True)
class Space:
    predictions: Path  # a walk-forward output folder
    params: dict[str, dict[str, Any]]
    sampler: str = "tpe"
    min_trades: int = 10
    seed: int = 0
    timeframe: str = "1m"


@dataclass(frozen=True)
class SweepPaths:
    journal: Path  # the Optuna journal (the study)
    result: Path  # the summary JSON


def sweep_paths(db: Path, name: str) -> SweepPaths:
    d = Path(db).resolve().parent / "sweeps"
    return SweepPaths(d / f"{name}.journal", d / f"{name}.json")


def load_space(path: Path, cfg: AppConfig | None = None) -> Space:
    """SPACE.yml -> Space; every problem is one SweepError line naming the key."""
    if not path.exists():
        raise SweepError(f"{path}: no such file")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise SweepError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise SweepError(f"{path}: expected a mapping")
    unknown = set(raw) - {"predictions", "params", "sampler", "min_trades", "seed", "timeframe"}
    if unknown:
        raise SweepError(f"{path}: unknown key(s) {sorted(unknown)}")
    if "predictions" not in raw:
        raise SweepError(f"{path}: 'predictions' (a walk-forward output folder) is required")
    pred = Path(raw["predictions"])
    if not pred.is_absolute():
        pred = (path.parent / pred) if (path.parent / pred).exists() else pred
    sampler = raw.get("sampler", "tpe")
    if sampler not in SAMPLERS:
        raise SweepError(f"{path}: sampler {sampler!r}: allowed {', '.join(SAMPLERS)}")
    params = raw.get("params") or {}
    if not isinstance(params, dict) or not params:
        raise SweepError(f"{path}: 'params' must map parameter names to ranges")
    allowed = THRESHOLD_KEYS + RISK_KEYS
    for k, v in params.items():
        if k not in allowed:
            raise SweepError(f"{path}: params.{k}: not a sweepable parameter (allowed: {', '.join(allowed)}; "
                             "horizons, dead zone and model hyper-parameters need retraining walk-forwards)")
        if not isinstance(v, dict) or not ({"low", "high"} <= set(v) or "values" in v):
            raise SweepError(f"{path}: params.{k}: give low and high (optional step, log) or values")
        if sampler == "grid" and "values" not in v:
            raise SweepError(f"{path}: params.{k}: the grid sampler needs 'values'")
        if "low" in v and not float(v["low"]) < float(v["high"]):
            raise SweepError(f"{path}: params.{k}: low {v['low']} must be below high {v['high']}")
    return Space(pred, params, sampler, int(raw.get("min_trades", 10)), int(raw.get("seed", 0)),
                 str(raw.get("timeframe", cfg.data.base_timeframe if cfg else "1m")))


def distributions(space: Space) -> dict[str, Any]:
    import optuna.distributions as D

    out: dict[str, Any] = {}
    for k, v in space.params.items():
        if "values" in v:
            out[k] = D.CategoricalDistribution(list(v["values"]))
        elif k == "cooldown_bars":
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
                               sampler=make_sampler(space), load_if_exists=True)


def _trial_task(cached: Cached, params: dict[str, Any], cfg: AppConfig, bpy: float) -> dict[str, Any]:
    return evaluate_trial(cached, params, cfg, bpy)


@dataclass
class _Pool:
    """Where trials run: Ray tasks (workers >= 1 or a cluster), or inline (workers = 0, tests/bench)."""

    workers: int
    address: str | None
    cached: Cached
    cfg: AppConfig
    bpy: float
    _ref: Any = None
    _remote: Any = None
    _inline: list[tuple[int, dict[str, Any]]] = field(default_factory=list)

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
        self._ref = ray.put(self.cached)  # one read-only copy in the object store
        self._remote = ray.remote(num_cpus=1)(_trial_task)

    @property
    def slots(self) -> int:
        if self._remote is None:
            return 1
        if self.address:
            import ray

            return max(1, int(ray.cluster_resources().get("CPU", 1)))
        return self.workers

    def submit(self, number: int, params: dict[str, Any]) -> Any:
        if self._remote is None:
            self._inline.append((number, params))
            return ("inline", number)
        return self._remote.remote(self._ref, params, self.cfg, self.bpy)

    def wait(self, pending: dict[Any, Any]) -> list[tuple[Any, dict[str, Any]]]:
        if self._remote is None:
            key = next(iter(pending))
            number, params = next((n, p) for n, p in self._inline if n == key[1])
            self._inline.remove((number, params))
            return [(key, _trial_task(self.cached, params, self.cfg, self.bpy))]
        import ray

        ready, _ = ray.wait(list(pending), num_returns=1)
        return [(r, ray.get(r)) for r in ready]

    def close(self) -> None:
        if self._remote is not None and not self.address:
            import ray

            ray.shutdown()


def run_sweep(space: Space, cfg: AppConfig, *, n_trials: int, workers: int = 1, address: str | None = None,
              paths: SweepPaths, name: str, on_trial: Any = None) -> dict[str, Any]:
    """Run the study up to ``n_trials`` trials in all (a resumed study counts what it already has) and
    write the summary JSON; ``workers`` 0 evaluates inline (no Ray)."""
    import optuna
    from optuna.trial import TrialState

    if n_trials < 1:
        raise SweepError(f"--trials must be >= 1, got {n_trials}")
    if workers < 0:
        raise SweepError(f"--workers must be >= 0, got {workers}")
    cached = load_cached(space.predictions)
    study = open_study(space, paths, name)
    dists = distributions(space)
    bpy = bars_per_year(space.timeframe)
    t0 = time.perf_counter()
    pool = _Pool(workers, address, cached, cfg, bpy)
    pending: dict[Any, optuna.trial.Trial] = {}
    try:
        # a killed sweep left these asked but never told: run them again with their stored parameters
        for ft in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            tr = optuna.trial.Trial(study, ft._trial_id)
            pending[pool.submit(tr.number, dict(ft.params))] = tr
        cap = grid_size(space)
        remaining = (min(n_trials, cap) if cap else n_trials) - len(study.get_trials(deepcopy=False))
        while pending or remaining > 0:
            while remaining > 0 and len(pending) < pool.slots:
                tr = study.ask(dists)
                pending[pool.submit(tr.number, dict(tr.params))] = tr
                remaining -= 1
            for key, res in pool.wait(pending):
                tr = pending.pop(key)
                for k in ("fills", "total_return", "sharpe", "sharpe_bar", "skew", "kurt", "bars",
                          "decisions_buy", "decisions_sell"):
                    tr.set_user_attr(k, res[k])
                tr.set_user_attr("blocks", [res["block_sum"], res["block_sq"], res["block_n"]])
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


def summarize(study: Any, space: Space, name: str) -> dict[str, Any]:
    """Every completed trial with its deflated Sharpe, the survivors, the best five and the PBO."""
    from optuna.trial import TrialState

    done = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    srs = np.array([t.user_attrs["sharpe_bar"] for t in done], dtype=np.float64)
    var = float(srs.var(ddof=1)) if len(srs) > 1 else 0.0
    rows = []
    for t in done:
        a = t.user_attrs
        trades = a["fills"] // 2
        dsr = deflated_sharpe(a["sharpe_bar"], a["bars"], a["skew"], a["kurt"], len(done), var)
        rows.append({"number": t.number, "params": t.params, "sharpe": a["sharpe"], "sharpe_bar": a["sharpe_bar"],
                     "total_return": a["total_return"], "trades": trades, "dsr": dsr,
                     "enough_trades": trades >= space.min_trades,
                     "survives": bool(trades >= space.min_trades and math.isfinite(dsr) and dsr >= DSR_SURVIVES)})
    rows.sort(key=lambda r: r["number"])
    pbo = None
    if len(done) >= 2:
        b = [t.user_attrs["blocks"] for t in done]
        pbo = pbo_cscv(np.array([x[0] for x in b]), np.array([x[1] for x in b]), np.array(b[0][2]))
    best = sorted(rows, key=lambda r: -r["sharpe"])[:5]
    return {"name": name, "predictions": str(space.predictions), "sampler": space.sampler, "trials": len(done),
            "sharpe_variance_bar": var, "min_trades": space.min_trades, "dsr_threshold": DSR_SURVIVES,
            "pbo": pbo, "best": best, "survivors": [r["number"] for r in rows if r["survives"]], "all": rows}


def read_summary(path: Path) -> dict[str, Any]:
    return dict(json.loads(Path(path).read_text()))


def _num(v: Any) -> Any:
    if isinstance(v, np.generic):
        return v.item()
    return str(v)
