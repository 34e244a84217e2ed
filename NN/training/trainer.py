"""Offline training and evaluation of the experts and the MoE gate on candles from the store.

Data discipline: features come from the one FeatureBuilder (past-only); samples are split
chronologically into train / validation / test with ``split.gap_bars`` dropped between parts (the gap
must cover the label horizon so no label of one part looks into the next); mini-batches are drawn at
random only WITHIN the train part; early stopping and per-expert calibration use the validation
part (the calibration is refit on it after every epoch and the epoch is scored with it); the gate is fit on the validation part's expert outputs (NN/moe.py says why); the test part is
only touched by ``evaluate``.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from core.annotations.model import Annotation
from core.config import AppConfig, ModelsConfig
from core.data.store import MarketStore
from core.scoring import log_loss, scores
from core.types import SeriesKey
from NN.assembly import load_experts, load_gate
from NN.calibration import Calibrator, softmax
from NN.experts.base import Expert
from NN.experts.dqn import DQNExpert
from NN.experts.registry import build_expert
from NN.experts.supervised import SupervisedExpert
from NN.moe import MoEGate
from NN.ood import OODStats
from NN.training.annotated import AnnotatedRows, annotated_rows
from NN.training.checkpoints import CheckpointRegistry
from NN.training.evaluation import evaluate_online
from NN.training.gate_fit import GATE_NAME, common_horizon, gate_members, gate_probe, train_gate
from NN.training.prepared import Prepared, known_rows, load_book, load_candles, prepare
from NN.training.progress import FEATURES_STAGE, GATE_STAGE, KRONOS_STAGE, NullSink, StageSink

log = logging.getLogger(__name__)



# ---------------------------------------------------------------- progress / logs


@contextmanager
def _progress(enabled: bool) -> Iterator[Callable[..., Any]]:
    """rich progress bar (or a no-op) yielding ``task(description, total) -> advance(n=1)``."""
    if not enabled:
        yield lambda desc, total: (lambda n=1, **kw: None)
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), TextColumn("{task.fields[info]}")) as prog:

        def task(desc: str, total: int) -> Callable[..., None]:
            tid = prog.add_task(desc, total=total, info="")

            def advance(n: int = 1, info: str | None = None) -> None:
                if info is None:
                    prog.update(tid, advance=n)
                else:
                    prog.update(tid, advance=n, info=info)

            return advance

        yield task


def _writer(runs_dir: Path | None, name: str):
    if runs_dir is None:
        return None
    from torch.utils.tensorboard import SummaryWriter

    stamp = pd.Timestamp.now("UTC").strftime("%Y%m%dT%H%M%S")
    return SummaryWriter(log_dir=str(Path(runs_dir) / f"{name}-{stamp}"))


# ---------------------------------------------------------------- expert training


@dataclass
class TrainResult:
    expert: str
    version: str | None
    val_logloss: float
    epochs_run: int
    best_epoch: int
    extra: dict[str, float]
    curves: pd.DataFrame  # per epoch (step = epoch, from 0): epoch_train_loss, val_logloss


def _val_logloss(expert: Any, prep: Prepared, y: np.ndarray, r: np.ndarray) -> tuple[float, Calibrator]:
    """(log loss with the expert's calibration fit on val, that calibrator)."""
    idx = known_rows(y, r, prep.val)
    p = softmax(expert.logits_many(prep.batch.take(idx)))
    cal = Calibrator(kind=expert.calibration_kind).fit(p, y[idx])
    return log_loss(cal.transform(p), y[idx]), cal


def train_expert(expert: SupervisedExpert | DQNExpert, prep: Prepared, epochs: int, *, patience: int = 3, seed: int = 0,
                 writer: Any = None, task: Callable[..., Any] | None = None,
                 max_steps_per_epoch: int | None = None, annotated: AnnotatedRows | None = None,
                 on_epoch: Callable[[str, int, int, float, float], None] | None = None) -> TrainResult:
    """Train one features expert in place; leaves it at its best-validation epoch with the fitted
    calibration. DQN: epochs = passes of episodes over the train part (chunks in random order).
    annotated (supervised experts): those train rows take the annotations' classes, ``weight`` times each;
    (DQN): the annotated trades go into its replay buffer as demonstrations (``push_demonstrations``).
    ``on_epoch(name, epoch, epochs, train_loss, val_logloss)`` after each epoch (progress reports)."""
    y, r = prep.labels(expert.horizon)
    rng = np.random.default_rng(seed)
    is_dqn = isinstance(expert, DQNExpert)
    train_idx = known_rows(y, r, prep.train)
    if annotated is not None and annotated.idx.size and not is_dqn:
        y, r = y.copy(), r.copy()
        y[annotated.idx] = annotated.labels
        r[annotated.idx] = np.nan_to_num(r[annotated.idx])  # unused by the classifiers' loss; must be finite
        rest = np.setdiff1d(train_idx, annotated.idx)
        train_idx = np.sort(np.concatenate([rest, np.repeat(annotated.idx, annotated.weight)]))
    if len(train_idx) < 100:
        raise ValueError(f"{expert.name}: only {len(train_idx)} labelled training samples")
    if isinstance(expert, DQNExpert) and annotated is not None:
        for i0, i1, sign in annotated.demos:  # wholly inside the train part (annotated_rows)
            expert.push_demonstrations(prep.batch.take(np.arange(i0, i1 + 1)), sign)
    # the training distribution of the features, for the OOD score (kept in every checkpoint from here)
    expert.ood = OODStats.fit(prep.batch.flat[train_idx])
    units: list[np.ndarray | None]
    bs = 0
    if isinstance(expert, DQNExpert):
        c = expert.params.chunk
        units = [np.arange(s, min(s + c, prep.train.stop)) for s in range(prep.train.start, prep.train.stop, c)]
    else:
        bs = expert.params.batch_size
        units = [None] * int(np.ceil(len(train_idx) / bs))
    if max_steps_per_epoch is not None:
        units = units[:max_steps_per_epoch]
    best: tuple[float, int, Any, Any] = (float("inf"), -1, None, None)
    step = 0
    epochs_run = 0
    curves: list[tuple[int, str, float]] = []  # what TensorBoard gets per epoch, for the registry too
    advance = task(f"train {expert.name}", epochs * len(units)) if task else None
    for ep in range(epochs):
        epochs_run = ep + 1
        losses = []
        if is_dqn:
            order = rng.permutation(len(units))
            batches = [units[i] for i in order]
        else:
            perm = rng.permutation(train_idx)
            batches = [perm[i * bs:(i + 1) * bs] for i in range(len(units))]
        for idx in batches:
            m = expert.train_step(prep.batch.take(idx), y[idx], r[idx])
            step += 1
            if np.isfinite(m.get("loss", np.nan)):
                losses.append(m["loss"])
            if writer is not None:
                for k, v in m.items():
                    writer.add_scalar(f"{expert.name}/train_{k}", v, step)
            if advance:
                advance(1)
        vl, cal = _val_logloss(expert, prep, y, r)
        epoch = [("val_logloss", vl)] + ([("epoch_train_loss", float(np.mean(losses)))] if losses else [])
        curves += [(ep, k, v) for k, v in epoch]
        if writer is not None:
            for k, v in epoch:
                writer.add_scalar(f"{expert.name}/{k}", v, ep)
        if advance:
            advance(0, info=f"epoch {ep + 1} val_logloss {vl:.4f}")
        if on_epoch is not None:
            on_epoch(expert.name, ep + 1, epochs, float(np.mean(losses)) if losses else float("nan"), vl)
        log.info("%s epoch %d: train loss %.4f, val log loss %.4f (calibration a=%s b=%s)", expert.name, ep + 1,
                 float(np.mean(losses)) if losses else float("nan"), vl, np.round(cal.a, 3), np.round(cal.b, 3))
        if vl < best[0] - 1e-5:
            best = (vl, ep, copy.deepcopy(expert.state_dict()), cal)
        elif ep - best[1] >= patience:
            break  # early stopping on validation log loss
    if best[2] is None:
        raise ValueError(f"{expert.name}: validation log loss was never finite (diverged training?)")
    version = expert.version
    expert.load_state_dict(best[2])
    expert.version = version
    expert.set_calibrator(best[3])
    extra: dict[str, Any] = {"calibration": best[3].state_dict()}
    if isinstance(expert, DQNExpert):
        extra["val_greedy_reward"] = expert.policy_reward(prep.part("val"))
    return TrainResult(expert.name, None, best[0], epochs_run, best[1] + 1, extra,
                       pd.DataFrame(curves, columns=["step", "name", "value"]))


# ---------------------------------------------------------------- evaluation


def climatology(y_train: np.ndarray) -> np.ndarray:
    """Training class frequencies (Laplace-smoothed so no class has probability 0)."""
    counts = np.bincount(y_train[y_train >= 0], minlength=3).astype(np.float64) + 1.0
    return counts / counts.sum()


def evaluate_on_test(experts: dict[str, Expert], gate: MoEGate | None, prep: Prepared,
                     candles: pd.DataFrame | None = None) -> dict[str, Any]:
    """Scores on the test split per expert, fused, and the climatology baseline of each horizon."""
    out: dict[str, Any] = {"experts": {}, "baseline": {}}
    probs_by: dict[str, np.ndarray] = {}
    for name, e in experts.items():
        y, r = prep.labels(e.horizon)
        idx = known_rows(y, r, prep.test)
        p = e.predict_many(prep.batch.take(idx), candles if e.input_kind == "candles" else None).probs
        probs_by[name] = p
        out["experts"][name] = {"horizon": e.horizon, "version": e.version, **scores(p, y[idx])}
        key = f"climatology_h{e.horizon}"
        if key not in out["baseline"]:
            clim = climatology(y[known_rows(y, r, prep.train)])
            out["baseline"][key] = {"horizon": e.horizon, "train_freq": clim.tolist(),
                                    **scores(np.tile(clim, (len(idx), 1)), y[idx])}
    if gate is not None:
        names = gate.experts
        missing = [n for n in names if n not in experts]
        if missing:
            raise ValueError(f"gate was trained on {names} but {missing} could not be loaded")
        h = common_horizon({n: experts[n] for n in names})
        y, r = prep.labels(h)
        idx = known_rows(y, r, prep.test)
        probs = np.stack([probs_by[n] for n in names], axis=1)
        w, fused = gate.fuse(probs, prep.batch.regime[idx])
        out["fused"] = {"horizon": h, "version": gate.version, "gate": "learned" if gate.trained else "hedge",
                        "mean_weights": dict(zip(names, w.mean(axis=0).round(4).tolist(), strict=True)),
                        **scores(fused, y[idx])}
    out["split"] = {
        part: {"n": s.stop - s.start, "from_ts": int(prep.batch.ts[s.start]), "to_ts": int(prep.batch.ts[s.stop - 1])}
        for part, s in (("train", prep.train), ("val", prep.val), ("test", prep.test))
    }
    return out


def ts_range_meta(prep: Prepared) -> dict[str, int]:
    return {f"{p}_{e}_ts": int(prep.batch.ts[s.start if e == "start" else s.stop - 1])
            for p, s in (("train", prep.train), ("val", prep.val), ("test", prep.test)) for e in ("start", "end")}


def _epoch_hook(on_epoch: Callable[[str, int, int, float, float], None] | None, stages: StageSink
                ) -> Callable[[str, int, int, float, float], None]:
    """train_expert's epoch callback: the caller's, and the expert's stage progress."""
    def hook(name: str, epoch: int, total: int, loss: float, val: float) -> None:
        stages.advance(name, epoch, total, loss=loss, val_logloss=val)
        if on_epoch is not None:
            on_epoch(name, epoch, total, loss, val)

    return hook


def _candle_weights(candle_models: dict[str, str] | None, results: dict[str, Any]) -> dict[str, str]:
    """The weights each candle expert uses in this run: the caller's, or the checkpoint trained here."""
    return {**(candle_models or {}), **{n: r["checkpoint"] for n, r in results.items() if "checkpoint" in r}}


def run_training(store: MarketStore, key: SeriesKey, models: ModelsConfig, app: AppConfig, names: list[str], *,
                 start_ms: int | None = None, end_ms: int | None = None, epochs: int | None = None,
                 models_dir: Path, runs_dir: Path | None, progress: bool = True,
                 max_steps_per_epoch: int | None = None, patience: int = 3,
                 kronos_preset: str = "nano", annotations: Sequence[Annotation] | None = None,
                 annotation_weight: int = 5,
                 on_epoch: Callable[[str, int, int, float, float], None] | None = None,
                 gate_experts: list[str] | None = None, candle_models: dict[str, str] | None = None,
                 gate_rows: int | None = None, stages: StageSink | None = None,
                 kronos_preset_epochs: bool = False) -> dict[str, Any]:
    """The ``train`` command: train the named experts (and/or 'moe'), register checkpoints.
    annotations: extra labelled samples for the supervised experts (NN/training/annotated.py).
    gate_experts: the gate's experts, in order (None: every features expert with a checkpoint);
    candle_models: the weights (directory or hub id) each candle expert of the gate forecasts with
    (a candle expert trained in this run uses its new checkpoint); gate_rows: see ``train_gate``;
    stages: progress per stage (NN/training/progress.py: kronos, features, each expert, gate);
    kronos_preset_epochs: Kronos trains its preset's epochs, not ``epochs`` (Train now, whose ``epochs``
    are the features experts'; ``main_backtest.py train --epochs N`` sets both)."""
    registry = CheckpointRegistry(store, models_dir)
    sink: StageSink = stages if stages is not None else NullSink()
    results: dict[str, Any] = {}
    feature_names = [n for n in names if n not in (GATE_NAME, "kronos")]
    unknown = [n for n in names if n != GATE_NAME and n not in models.experts]
    if unknown:
        raise ValueError(f"unknown experts {unknown}; models.yml has {list(models.experts)} (+ '{GATE_NAME}')")
    if "kronos" in names:
        try:
            from NN.experts.kronos.train import train_kronos
        except ImportError as exc:
            raise ValueError(f"kronos training is not available in this build: {exc}") from None
        sink.begin(KRONOS_STAGE)
        path = train_kronos(store, key, start_ms=start_ms, end_ms=end_ms, models_dir=models_dir,
                            runs_dir=runs_dir or Path("runs"), preset=kronos_preset,
                            epochs=None if kronos_preset_epochs else epochs, progress=progress,
                            device=models.experts["kronos"].device,
                            on_epoch=lambda done, total, val: sink.advance(KRONOS_STAGE, done, total, val_loss=val))
        sink.end(KRONOS_STAGE)
        results["kronos"] = {"checkpoint": str(path)}
    if not feature_names and GATE_NAME not in names:
        return results
    sink.begin(FEATURES_STAGE)
    candles = load_candles(store, key, start_ms, end_ms)
    prep = prepare(candles, key, models, app, book=load_book(store, key, models, candles))
    if stages is not None and GATE_NAME in names:  # what the gate will cost, measured now: its ETA need not wait
        probe = gate_probe(models, prep, registry, gate_experts, _candle_weights(candle_models, results),
                           candles, gate_rows)
        if probe is not None:
            sink.prior(GATE_STAGE, *probe)
    sink.end(FEATURES_STAGE)
    meta_base = {"exchange": key.exchange, "symbol": key.symbol, "timeframe": key.timeframe,
                 "dims": {"T": len(prep.batch.spec.timeframes), "L": prep.batch.spec.window,
                          "F": len(prep.batch.spec.bar_features), "D": len(prep.batch.spec.flat_features)},
                 **ts_range_meta(prep)}
    rows = None
    if annotations is not None:
        rows = annotated_rows(prep.batch, prep.train, annotations, annotation_weight)
        results["annotations"] = rows.summary()
        meta_base["annotations"] = {**rows.summary(), "ids": rows.used}
    writer = _writer(runs_dir, "train")
    try:
        with _progress(progress) as task:
            for name in feature_names:
                cfg = models.experts[name]
                expert = build_expert(name, cfg, prep.batch.spec)
                if not isinstance(expert, SupervisedExpert | DQNExpert):
                    raise ValueError(f"{name}: {type(expert).__name__} is not a features expert this trainer trains "
                                     "(CNN, Transformer and DQN are; Kronos: --experts kronos)")
                resumed_from = None
                try:
                    if registry.load_into(expert):  # continue from the best checkpoint
                        log.info("%s: starting from checkpoint %s", name, expert.version)
                        resumed_from = expert.version
                except ValueError as exc:  # architecture changed: start fresh, say why
                    log.warning("%s: best checkpoint not loadable (%s); training from scratch", name, exc)
                sink.begin(name, epochs or 10)
                res = train_expert(expert, prep, epochs or 10, writer=writer, task=task,
                                   max_steps_per_epoch=max_steps_per_epoch, patience=patience, annotated=rows,
                                   on_epoch=_epoch_hook(on_epoch, sink))
                version = registry.register(
                    name, expert.state_dict(), res.val_logloss, cfg.checkpoints,
                    {**meta_base, "horizon": cfg.horizon, "resumed_from": resumed_from, "epochs_run": res.epochs_run,
                     "best_epoch": res.best_epoch, **res.extra},
                    metrics=res.curves,
                )
                results[name] = {"version": version, "val_logloss": res.val_logloss, "epochs_run": res.epochs_run,
                                 "best_epoch": res.best_epoch, **res.extra}
                sink.end(name)
                if rows is not None:  # the DQN takes the trades as demonstrations, the others the labels
                    results[name]["annotations_used"] = bool(rows.demos) if isinstance(expert, DQNExpert) \
                        else bool(rows.idx.size)
            if GATE_NAME in names:
                experts = gate_members(models, prep, registry, gate_experts, _candle_weights(candle_models, results))
                h = common_horizon(experts)
                sink.begin(GATE_STAGE)
                gate, info = train_gate(experts, prep, models, h, candles, max_rows=gate_rows,
                                        on_rows=None if stages is None else
                                        lambda done, total: sink.advance(GATE_STAGE, done, total))
                # metric: the gate's hold-out log loss BEFORE calibration (the calibrator is fit on that
                # same hold-out, so the calibrated figure is in-sample and not comparable across runs)
                version = registry.register(
                    GATE_NAME, gate.state_dict(), info["holdout_gate_logloss"],
                    models.experts[next(iter(experts))].checkpoints,
                    {**meta_base, "horizon": h, "experts": list(experts),
                     "expert_versions": {n: e.version for n, e in experts.items()}, **info},
                )
                results[GATE_NAME] = {"version": version, "experts": list(experts), **info}
                sink.end(GATE_STAGE)
                if writer is not None:
                    for k, v in info.items():
                        writer.add_scalar(f"moe/{k}", v, 0)
    finally:
        if writer is not None:
            writer.close()
    return results


def run_evaluation(store: MarketStore, key: SeriesKey, models: ModelsConfig, app: AppConfig, *,
                   start_ms: int | None = None, end_ms: int | None = None, models_dir: Path,
                   names: list[str] | None = None, warmup: int | None = None, walk: int = 0) -> dict[str, Any]:
    """The ``evaluate`` command on one market: every expert and the climatology on the test split, and
    the fused output with the online parts (gate adaptation, robust layer, OOD discount) walked over
    the ``warmup`` bars before it (None: all of them; NN/training/evaluation.py)."""
    registry = CheckpointRegistry(store, models_dir)
    candles = load_candles(store, key, start_ms, end_ms)
    prep = prepare(candles, key, models, app, book=load_book(store, key, models, candles))
    loaded = load_experts(models, prep.batch.spec, registry, names, keep_untrained=False, candle_experts=False)
    experts = loaded.experts
    if not experts and loaded.errors:  # checkpoints exist but do not fit this series' features
        err = next(iter(loaded.errors.values()))  # "Type: <expert>: why"
        raise ValueError(f"no checkpoint fits {key.symbol} {key.timeframe}: {err.split(': ', 1)[-1]}")
    if not experts:
        raise ValueError("no trained experts found in the checkpoint registry: run `train` first")
    gate = None
    best_gate = registry.best(GATE_NAME)
    if best_gate is not None:
        gate, why = load_gate(models, best_gate.meta.get("experts", list(experts)),
                              len(prep.batch.spec.regime_features), registry)
        if why:
            log.warning(why)
        if not gate.trained or any(n not in experts for n in gate.experts):
            log.warning("gate checkpoint not usable with the loaded experts; fused scores use the Hedge gate")
            gate = MoEGate(list(experts), models.moe, len(prep.batch.spec.regime_features))
    else:
        gate = MoEGate(list(experts), models.moe, len(prep.batch.spec.regime_features))
    report = evaluate_on_test(experts, gate, prep)
    report["gate_static"] = report.pop("fused")  # the gate alone, no online parts (for comparison)
    online = evaluate_online(experts, gate, prep, models.moe.robust, warmup=warmup, walk=walk)
    report["fused"] = online["fused"]
    report["baseline"].update({k: v for k, v in online["baseline"].items() if k == "climatology_rolling"})
    for n, s_ in online["experts"].items():
        report["experts"][n]["mean_ood"] = s_["mean_ood"]
    for k in ("members", "walk", "warmup_bars"):
        if k in online:
            report[k] = online[k]
    # honesty check: a checkpoint trained on data that overlaps this test split scores too well
    test_start = int(prep.batch.ts[prep.test.start])
    warnings = []
    for n in list(experts) + ([GATE_NAME] if best_gate else []):
        info = registry.best(n)
        if info and int(info.meta.get("val_end_ts", -1)) >= test_start:
            warnings.append(f"{n} {info.version} was trained/validated on data up to "
                            f"{info.meta.get('val_end_ts')} >= test start {test_start}: its test scores are optimistic")
    report["warnings"] = warnings
    report["series"] = {"exchange": key.exchange, "symbol": key.symbol, "timeframe": key.timeframe}
    return report
