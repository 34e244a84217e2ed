"""Training Kronos on stored candles: from scratch (the documented "nano" architecture, minutes on a
CPU) or fine-tuning released weights, then fitting the band / P(up) calibration on a held-out period.

Stages (as the reference): (1) the tokenizer learns to reconstruct normalised bars through its binary
codes (coarse-only and full reconstruction, commitment and BSQ entropy terms); (2) with the tokenizer
frozen, the predictor learns next-token cross-entropy on (s1, s2) with teacher forcing.
No look-ahead: each training window is normalised with the statistics of its first ``ctx_len`` bars
only (like inference, where the future is scaled by context statistics). Chronological split:
train / calibration (val) / test with a gap; the best predictor epoch by validation loss is kept.

Output: ``<models_dir>/kronos/<preset>-<UTC time>/`` with tokenizer/ and model/ (released layout),
meta.json (config, split, losses) and calibration.json (fit on val, scored raw vs calibrated on test).
TensorBoard scalars go to ``<runs_dir>/kronos/<same name>``."""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from core.config import SplitConfig
from core.types import SeriesKey, timeframe_ms
from NN.devices import pick_device
from NN.training.datasets import chronological_split

from .calibration import Calibration, collect_forecasts, evaluate
from .config import PREDICTOR_PRESETS, TOKENIZER_PRESETS
from .hub import save_pretrained
from .model import KronosModel
from .normalize import CLIP, EPS, candle_features, time_stamps
from .sampler import KronosSampler, SampleConfig
from .tokenizer import KronosTokenizer

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class TrainPreset:
    tokenizer: str = "nano"
    predictor: str = "nano"
    ctx_len: int = 192  # normalisation window of a training sample
    pred_len: int = 64  # further bars in the sample (scaled by the context statistics)
    batch_size: int = 32
    stride: int = 16  # steps per epoch = training windows / (batch_size * stride)
    tok_epochs: int = 3
    pred_epochs: int = 6  # validation loss flattens after ~6 epochs of 40 steps on 21k bars
    lr_tok: float = 2e-3
    lr_pred: float = 1e-3
    lr_finetune: float = 5e-5
    weight_decay: float = 0.05
    val_windows: int = 64
    max_steps_per_epoch: int = 150
    anchor: str | None = None  # the sampler's path anchoring stored with the checkpoint (sampler.anchor_paths)
    # calibration on the held-out parts
    cal_lookback: int = 256
    cal_horizon: int = 30
    cal_samples: int = 32
    cal_origins: int = 150
    test_origins: int = 150
    top_p: float = 0.9
    temperature: float = 1.0
    max_context: int = 512
    seed: int = 0
    calibrate: bool = True  # False: no calibration.json (the expert's bands are then raw)


PRESETS: dict[str, TrainPreset] = {
    "nano": TrainPreset(),
    # Train now's quick preset: a forecast fan in about 15 s on 2 CPU cores (2 days of 1m bars: 3 steps per
    # epoch). Its tokenizer reconstructs price levels tens of bps off (~65 after 4 + 4 epochs), which every
    # decoded path carried: CRPS 88 vs the climatology's 18 bps on the sample's unseen third day. Paths
    # anchored at their first open (sampler.anchor_paths), these 1 + 2 epochs: 20 vs 18 bps
    # (bench/bench_kronos_quick.py). Still worse than climatology, no directional skill (47% vs 52.5%); more
    # tokenizer epochs or steps (within the 3-minute budget), a lower temperature, a conformal or a scalar
    # spread calibration on 40-120 held-out origins did not beat it either, so the bands stay raw
    "nano-quick": TrainPreset(tok_epochs=1, pred_epochs=2, max_steps_per_epoch=40, val_windows=16,
                              calibrate=False, anchor="first_open"),
    # same architecture, a few steps: for tests and smoke runs
    "nano-smoke": TrainPreset(ctx_len=64, pred_len=32, batch_size=8, tok_epochs=1, pred_epochs=1,
                              val_windows=8, max_steps_per_epoch=3, cal_lookback=64, cal_horizon=5,
                              cal_samples=8, cal_origins=24, test_origins=24),
}


def bsq_loss(z: torch.Tensor, codebook_dim: int, group_size: int, cfg: Any, inv_temp: float = 100.0
             ) -> tuple[torch.Tensor, dict[str, float]]:
    """Commitment + grouped entropy terms of binary spherical quantisation: codes should be confident
    per sample (low per-sample entropy) and use the codebook evenly (high codebook entropy)."""
    zhat = torch.where(z > 0, 1.0, -1.0) / math.sqrt(codebook_dim)
    commit = F.mse_loss(z, zhat.detach())
    g = group_size
    d = codebook_dim - codebook_dim % g
    groups = z[..., :d].reshape(-1, d // g, g)
    codes = torch.tensor([[1.0 if (c >> j) & 1 else -1.0 for j in range(g)] for c in range(2**g)],
                         device=z.device) / math.sqrt(codebook_dim)
    logits = 2.0 * inv_temp * groups @ codes.T  # [M, G, 2^g]
    prob = torch.softmax(logits, dim=-1)
    per_sample = -(prob * torch.log(prob + 1e-8)).sum(-1).mean()
    avg = prob.mean(0)
    codebook = -(avg * torch.log(avg + 1e-8)).sum(-1).mean()
    loss = cfg.beta * commit + cfg.zeta * (cfg.gamma0 * per_sample - cfg.gamma * codebook)
    return loss, {"commit": commit.item(), "entropy_sample": per_sample.item(), "entropy_codebook": codebook.item()}


class Windows:
    """Random or fixed training windows from one contiguous part of the series, normalised past-only."""

    def __init__(self, feats: np.ndarray, stamps: np.ndarray, part: slice, ctx_len: int, pred_len: int) -> None:
        self.x = feats[part]
        self.st = stamps[part]
        self.ctx, self.w = ctx_len, ctx_len + pred_len
        self.n_starts = len(self.x) - self.w + 1
        if self.n_starts < 1:
            raise ValueError(f"a split part of {len(self.x)} bars is shorter than one training window "
                             f"({self.w} bars); give train_kronos more data")

    def batch(self, starts: np.ndarray, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        idx = starts[:, None] + np.arange(self.w)[None, :]
        x = self.x[idx]  # [B, W, 6]
        c = x[:, : self.ctx]
        mean, std = c.mean(axis=1, keepdims=True), c.std(axis=1, keepdims=True)
        xn = np.clip((x - mean) / (std + EPS), -CLIP, CLIP).astype(np.float32)
        return torch.from_numpy(xn).to(device), torch.from_numpy(self.st[idx]).to(device)

    def random(self, rng: np.random.Generator, b: int, device: torch.device):
        return self.batch(rng.integers(0, self.n_starts, size=b), device)

    def fixed(self, k: int) -> np.ndarray:
        return np.unique(np.linspace(0, self.n_starts - 1, num=min(k, self.n_starts)).astype(np.int64))


def tokenizer_loss(tok: KronosTokenizer, xn: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
    cfg = tok.config
    z = tok.encode_continuous(xn)
    zq = tok.binarize(z)
    rec_all = tok.decode_codes(zq)
    zp = tok.post_quant_embed_pre(zq[..., : cfg.s1_bits])
    for layer in tok.decoder:
        zp = layer(zp)
    rec_pre = tok.head(zp)
    rec = 0.5 * (F.mse_loss(rec_pre, xn) + F.mse_loss(rec_all, xn))
    q, parts = bsq_loss(z, tok.codebook_dim, cfg.group_size, cfg)
    return rec + q, {"rec": rec.item(), **parts}


def predictor_loss(tok: KronosTokenizer, model: KronosModel, xn: torch.Tensor, st: torch.Tensor
                   ) -> tuple[torch.Tensor, dict[str, float]]:
    with torch.no_grad():
        s1, s2 = tok.encode(xn)
    l1, l2 = model(s1[:, :-1], s2[:, :-1], st[:, :-1], s1_targets=s1[:, 1:])
    ce1 = F.cross_entropy(l1.reshape(-1, l1.shape[-1]), s1[:, 1:].reshape(-1))
    ce2 = F.cross_entropy(l2.reshape(-1, l2.shape[-1]), s2[:, 1:].reshape(-1))
    return 0.5 * (ce1 + ce2), {"ce_s1": ce1.item(), "ce_s2": ce2.item()}


def _writer(path: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # pragma: no cover - tensorboard is a declared dependency
        return None
    return SummaryWriter(log_dir=str(path))


def _steps(n_starts: int, p: TrainPreset) -> int:
    return int(max(1, min(p.max_steps_per_epoch, n_starts // (p.batch_size * p.stride))))


def _fit_stage(name: str, params, loss_fn, train: Windows, val: Windows, epochs: int, lr: float,
               p: TrainPreset, rng: np.random.Generator, device: torch.device, writer, progress: bool,
               nets: list[torch.nn.Module], state_of, epoch_done: Callable[[float], None] | None = None
               ) -> tuple[float, dict]:
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=p.weight_decay)
    steps = _steps(train.n_starts, p)
    total = max(1, epochs * steps)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=total, pct_start=0.1)
    vstarts = val.fixed(p.val_windows)
    best, best_state, step = float("inf"), state_of(), 0
    for ep in range(epochs):
        for n in nets:
            n.train()
        t0 = time.perf_counter()
        for _ in range(steps):
            xn, st = train.random(rng, p.batch_size, device)
            loss, parts = loss_fn(xn, st)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
            step += 1
            if writer is not None:
                writer.add_scalar(f"{name}/loss", loss.item(), step)
                for k, v in parts.items():
                    writer.add_scalar(f"{name}/{k}", v, step)
                writer.add_scalar(f"{name}/lr", sched.get_last_lr()[0], step)
        for n in nets:
            n.eval()
        with torch.no_grad():
            vl = []
            for chunk in np.array_split(vstarts, max(1, len(vstarts) // p.batch_size)):
                xn, st = val.batch(chunk, device)
                vl.append(float(loss_fn(xn, st)[0]) * len(chunk))
            v = sum(vl) / len(vstarts)
        if writer is not None:
            writer.add_scalar(f"{name}/val_loss", v, ep + 1)
        if progress:
            log.info("kronos %s epoch %d/%d: train %.4f val %.4f (%d steps, %.1fs)", name, ep + 1, epochs,
                     loss.item(), v, steps, time.perf_counter() - t0)
        if v < best:
            best, best_state = v, state_of()
        if epoch_done is not None:
            epoch_done(v)
    return best, best_state


def _snapshot(net: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def load_series(store: Any, key: SeriesKey, start_ms: int | None, end_ms: int | None) -> pd.DataFrame:
    df = store.candles(key, start_ms, end_ms)
    if df is None or len(df) == 0:
        raise ValueError(f"no candles stored for {key.exchange} {key.symbol} {key.timeframe}; "
                         "import some with `python main_backtest.py data import ...`")
    return df.reset_index(drop=True)


def _register(store: Any, models_dir: Path, out_dir: Path, tok: KronosTokenizer, model: KronosModel,
              cal: Calibration | None, max_context: int, meta: dict[str, Any]) -> None:
    """Record the checkpoint in the shared registry (so backtests/engine load it as expert 'kronos').
    A store that cannot take the row (read-only, no registry module) only costs that convenience: the
    directory is complete and `model: nano` finds it."""
    try:
        from core.config import CheckpointPolicy
        from NN.training.checkpoints import CheckpointRegistry

        from .bundle import KronosBundle
        from .expert import bundle_state

        state = bundle_state(KronosBundle(tok, model, cal, max_context, meta["version"], out_dir, meta.get("anchor")))
        small = {k: meta[k] for k in ("version", "preset", "base", "symbol", "timeframe", "split") if k in meta}
        # the registry's file goes inside the checkpoint directory (rows store absolute paths), so
        # models_dir/kronos/ keeps holding checkpoint directories only
        CheckpointRegistry(store, out_dir / "registry").register(
            "kronos", state, float(meta["val_loss"]), CheckpointPolicy(), {**small, "directory": str(out_dir)})
    except Exception as exc:  # registration is best effort: the checkpoint directory is complete
        log.warning("kronos checkpoint %s not registered in the checkpoint registry: %s", out_dir, exc)


def _default_base() -> str | None:
    """models.yml experts.kronos.params.model when it names released/local weights (fine-tuning)."""
    try:
        from core.config import load_models

        m = load_models().experts.get("kronos")
        spec = (m.params.get("model") if m else None) or "nano"
    except Exception:  # a broken models.yml is reported by the commands that own it
        return None
    return None if spec in ("nano", "auto") else str(spec)  # auto: from scratch (nano)


def train_kronos(store: Any, key: SeriesKey, *, start_ms: int | None, end_ms: int | None, models_dir: Path,
                 runs_dir: Path, base: str | None = None, preset: str = "nano", epochs: int | None = None,
                 progress: bool = True, device: str = "auto",
                 on_epoch: Callable[[int, int, float], None] | None = None) -> Path:
    """Train (or fine-tune ``base``: a directory or hub id) on the stored series; returns the checkpoint
    directory. ``epochs`` overrides the preset's epochs of both stages (fine-tuning: predictor only).
    With ``base`` None, models.yml experts.kronos.params.model is fine-tuned when it names weights.
    ``on_epoch(done, total, val_loss)`` after each epoch of both stages (and once after calibration)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown Kronos training preset {preset!r}; allowed: {', '.join(PRESETS)}")
    p = PRESETS[preset]
    if epochs is not None:
        if epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {epochs}")
        p = replace(p, tok_epochs=epochs, pred_epochs=epochs)
    base = base if base is not None else _default_base()
    dev = pick_device(device)
    torch.manual_seed(p.seed)
    rng = np.random.default_rng(p.seed)
    t_start = time.perf_counter()
    df = load_series(store, key, start_ms, end_ms)
    feats = candle_features(df)
    stamps = time_stamps(df["ts"].to_numpy(np.int64))
    split = SplitConfig(train=0.7, val=0.15, gap_bars=max(60, p.cal_horizon))
    tr, va, te = chronological_split(len(df), split)
    train_w = Windows(feats, stamps, tr, p.ctx_len, p.pred_len)
    val_w = Windows(feats, stamps, va, p.ctx_len, p.pred_len)

    stamp_now = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    name = f"{'finetune' if base else preset}-{stamp_now}"
    out_dir = Path(models_dir) / "kronos" / name
    writer = _writer(Path(runs_dir) / "kronos" / name) if runs_dir else None

    units = (0 if base else p.tok_epochs) + p.pred_epochs + (1 if p.calibrate else 0)
    done = [0]

    def epoch_done(val: float) -> None:
        done[0] += 1
        if on_epoch is not None:
            on_epoch(done[0], units, val)

    if base:
        from .bundle import load_bundle

        b = load_bundle(base, models_dir, dev)
        tok, model = b.tokenizer, b.model
        tok_val = None
        max_context = b.max_context
    else:
        tok = KronosTokenizer(TOKENIZER_PRESETS[p.tokenizer]).to(dev)
        model = KronosModel(PREDICTOR_PRESETS[p.predictor]).to(dev)
        max_context = p.max_context
        tok_val, tok_state = _fit_stage(
            "tokenizer", list(tok.parameters()), lambda xn, st: tokenizer_loss(tok, xn), train_w, val_w,
            p.tok_epochs, p.lr_tok, p, rng, dev, writer, progress, [tok], lambda: _snapshot(tok), epoch_done)
        tok.load_state_dict(tok_state)
    tok.eval()
    for q in tok.parameters():
        q.requires_grad_(False)
    pred_val, pred_state = _fit_stage(
        "predictor", [q for q in model.parameters() if q.requires_grad],
        lambda xn, st: predictor_loss(tok, model, xn, st), train_w, val_w, p.pred_epochs,
        p.lr_finetune if base else p.lr_pred, p, rng, dev, writer, progress, [model], lambda: _snapshot(model),
        epoch_done)
    model.load_state_dict(pred_state)
    model.eval()
    train_s = time.perf_counter() - t_start

    # calibration: fit on the validation period, score raw vs calibrated on the test period
    sampler = KronosSampler(tok, model, anchor=p.anchor)
    cfg = SampleConfig(samples=p.cal_samples, temperature=p.temperature, top_p=p.top_p, seed=p.seed,
                       max_context=max_context)
    step_ms = timeframe_ms(key.timeframe)

    def origins(part: slice, k: int) -> np.ndarray:
        lo = max(part.start, p.cal_lookback - 1)
        hi = part.stop - 1 - p.cal_horizon
        if hi <= lo:
            raise ValueError(f"held-out part {part} too short for lookback {p.cal_lookback} + horizon "
                             f"{p.cal_horizon}; give train_kronos more data")
        return np.unique(np.linspace(lo, hi, num=k).astype(np.int64))

    t0 = time.perf_counter()
    if not p.calibrate:
        if writer is not None:
            writer.close()
        return _publish(out_dir, name, preset, base, pred_val, tok_val, key, df, (tr, va, te), max_context,
                        train_s, p, tok, model, store, Path(models_dir), None, 0.0, progress)
    r_cal, y_cal, _ = collect_forecasts(sampler, df, origins(va, p.cal_origins), p.cal_lookback,
                                        p.cal_horizon, cfg, step_ms)
    r_te, y_te, ts_te = collect_forecasts(sampler, df, origins(te, p.test_origins), p.cal_lookback,
                                          p.cal_horizon, cfg, step_ms)
    cal = Calibration.fit(r_cal, y_cal)
    epoch_done(float("nan"))
    cal.report = {"fit_period": {"from_ts": int(df["ts"].iloc[va.start]), "to_ts": int(df["ts"].iloc[va.stop - 1]),
                                 "origins": int(r_cal.shape[0])},
                  "test_period": {"from_ts": int(df["ts"].iloc[te.start]), "to_ts": int(df["ts"].iloc[te.stop - 1]),
                                  "origins": int(r_te.shape[0])},
                  "lookback": p.cal_lookback, "samples": p.cal_samples, "top_p": p.top_p,
                  "temperature": p.temperature, "test": evaluate(r_te, y_te, cal)}
    cal_s = time.perf_counter() - t0
    if writer is not None:
        rep = cal.report["test"]
        for variant in ("raw", "calibrated"):
            for lvl, c in rep[variant]["coverage"].items():
                writer.add_scalar(f"calibration/{variant}_coverage_{lvl}", c["all_steps"], 0)
            writer.add_scalar(f"calibration/{variant}_crps", rep[variant]["crps"]["all_steps"], 0)
            writer.add_scalar(f"calibration/{variant}_brier", rep[variant]["brier_up"]["all_steps"], 0)
        writer.close()

    return _publish(out_dir, name, preset, base, pred_val, tok_val, key, df, (tr, va, te), max_context,
                    train_s, p, tok, model, store, Path(models_dir), cal, cal_s, progress)


def _publish(out_dir: Path, name: str, preset: str, base: str | None, pred_val: float, tok_val: float | None,
             key: SeriesKey, df: pd.DataFrame, parts: tuple[slice, slice, slice], max_context: int, train_s: float,
             p: TrainPreset, tok: KronosTokenizer, model: KronosModel, store: Any, models_dir: Path,
             cal: Calibration | None, cal_s: float, progress: bool) -> Path:
    """Write the checkpoint directory (atomically) and register it; ``cal`` None: no calibration."""
    tr, va, te = parts
    # publish: write to a temporary directory, then rename (readers never see half a checkpoint)
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    save_pretrained(tok, tmp / "tokenizer")
    save_pretrained(model, tmp / "model")
    if cal is not None:
        cal.save(tmp / "calibration.json")
    meta = {"version": name, "preset": preset, "base": base, "val_loss": pred_val, "tokenizer_val_loss": tok_val,
            "exchange": key.exchange, "symbol": key.symbol, "timeframe": key.timeframe,
            "bars": len(df), "from_ts": int(df["ts"].iloc[0]), "to_ts": int(df["ts"].iloc[-1]),
            "split": {k: [int(df["ts"].iloc[s.start]), int(df["ts"].iloc[s.stop - 1])]
                      for k, s in (("train", tr), ("val", va), ("test", te))},
            "max_context": max_context, "anchor": p.anchor, "train_seconds": round(train_s, 1),
            "calibration_seconds": round(cal_s, 1), "train_preset": asdict(p),
            "params": {"tokenizer": sum(q.numel() for q in tok.parameters()),
                       "predictor": sum(q.numel() for q in model.parameters())},
            "calibration_test": cal.report["test"] if cal is not None else None,
            "created": "-".join(name.rsplit("-", 2)[-2:])}
    (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
    tmp.rename(out_dir)
    _register(store, Path(models_dir), out_dir, tok, model, cal, max_context, meta)
    if progress and cal is not None:
        log.info("kronos checkpoint %s (val loss %.4f, train %.0fs, calibration %.0fs)", out_dir, pred_val,
                 train_s, cal_s)
        rep = cal.report["test"]
        for variant in ("raw", "calibrated"):
            r = rep[variant]
            log.info("kronos test-period %s: coverage 50/80/90 = %s; CRPS %.2f bps; Brier(up) %.3f", variant,
                     "/".join(f"{r['coverage'][k]['all_steps']:.3f}" for k in ("50", "80", "90")),
                     r["crps"]["all_steps"] * 1e4, r["brier_up"]["all_steps"])
    return out_dir
