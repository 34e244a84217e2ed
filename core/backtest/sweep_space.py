"""A sweep's search space: SPACE.yml parsed and checked (every problem one ``SweepError`` line naming the
key), the Optuna distributions, sampler and pruner it asks for, and a training sweep's candles and fold.
The sweep itself (core/backtest/sweep.py) runs what this describes."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from core.backtest.retune import RISK_KEYS, THRESHOLD_KEYS
from core.backtest.walkforward import Fold, parse_duration
from core.config import AppConfig, ModelsConfig

SAMPLERS = ("tpe", "random", "grid")
PRUNERS = ("asha", "hyperband", "none")
TRAINING_KEYS = ("horizon", "dead_zone_bps")  # plus "<expert>.<param>": these need retraining
SPACE_KEYS = {"predictions", "params", "sampler", "min_trades", "seed", "timeframe", "data", "from", "to", "train",
              "test", "experts", "epochs", "max_steps", "pruner", "reduction_factor", "symbol", "exchange"}


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
