"""KronosExpert: the Kronos forecaster behind the common Expert interface (input_kind "candles").

At each sample's ts it forecasts ``samples`` paths from the last ``lookback`` candles up to and
including that ts (never later), and turns the paths at the configured horizon into (down, flat,
up) probabilities with a dead zone, an expected log return, bands and path statistics. With
``calibrated`` the probabilities and bands come from the calibration stored with the model."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

from core.config import ExpertConfig, validate_params
from core.paths import PROJECT_ROOT
from core.types import ExpertBatchOutput, FeatureBatch, FeatureSpec
from NN.experts.base import Expert, confidence_from_probs

from .bundle import KronosBundle, load_bundle
from .calibration import Calibration, path_log_returns
from .config import PredictorConfig, TokenizerConfig
from .model import KronosModel
from .normalize import CLIP, EPS, candle_features, time_stamps
from .sampler import Forecast, KronosSampler, SampleConfig
from .tokenizer import KronosTokenizer

MIN_BARS = 16  # fewer context bars than this give no forecast (neutral output, extras valid = 0)


class KronosParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # auto: hub_model from the Hugging Face cache (or downloaded), else the best nano, else "not available"
    model: str = "auto"  # auto | nano | checkpoint directory | hub id of a released predictor
    hub_model: str = "NeoQuasar/Kronos-small"  # what auto prefers: NeoQuasar/Kronos-small | NeoQuasar/Kronos-mini
    lookback: int = Field(256, ge=MIN_BARS, le=4096)
    samples: int = Field(32, ge=1, le=4096)
    temperature: float = Field(1.0, gt=0)
    top_p: float = Field(0.9, gt=0, le=1)
    top_k: int = Field(0, ge=0)
    seed: int | None = 0
    calibrated: bool = True
    dead_zone_bps: float = Field(5.0, ge=0)
    models_dir: str = "models"  # where `nano` checkpoints are looked up (relative to the project root)
    finetune_lr: float = Field(1e-5, gt=0)


def bundle_state(b: KronosBundle) -> dict[str, Any]:
    """A self-contained state (configs, weights, calibration) that KronosExpert.load_state_dict reads;
    train_kronos registers the same in the checkpoint registry."""
    return {"version": str(b.version),
            "tokenizer_config": b.tokenizer.config.to_dict(), "predictor_config": b.model.config.to_dict(),
            "tokenizer": {k: v.detach().cpu() for k, v in b.tokenizer.state_dict().items()},
            "predictor": {k: v.detach().cpu() for k, v in b.model.state_dict().items()},
            "calibration": b.calibration.to_dict() if b.calibration else None,
            "max_context": b.max_context, "anchor": b.anchor}


class KronosExpert(Expert):
    input_kind = "candles"

    def __init__(self, name: str, cfg: ExpertConfig, spec: FeatureSpec) -> None:
        super().__init__(name, cfg, spec)
        self.params: KronosParams = validate_params(KronosParams, cfg.params, f"models.yml: experts.{name}.params")
        self._bundle: KronosBundle | None = None
        self._last_candles: pd.DataFrame | None = None
        self._opt: torch.optim.Optimizer | None = None
        self._pinned: str | None = None  # use_model()

    def use_models_dir(self, models_dir: Path) -> None:
        """Look up ``nano`` checkpoints under this directory (the app's training.models_dir)."""
        self.params = self.params.model_copy(update={"models_dir": str(models_dir)})
        self._bundle = None

    def use_model(self, spec: str) -> None:
        """Use exactly these weights from the next forecast on (a checkpoint directory or a hub id):
        Train now pins the Kronos its gate was trained with."""
        self._pinned = str(spec)  # params.model stays: "auto" still allows raw bands (no calibration)
        self._bundle = None
        self._opt = None

    # ---- model
    @property
    def bundle(self) -> KronosBundle:
        if self._bundle is None:
            md = Path(self.params.models_dir)
            self._bundle = load_bundle(self._pinned or self.params.model, md if md.is_absolute() else PROJECT_ROOT / md,
                                       self.device, hub_model=self.params.hub_model)
            self.version = str(self._bundle.version)
        return self._bundle

    def _calibration(self) -> Calibration | None:
        if not self.params.calibrated:
            return None
        cal = self.bundle.calibration
        if cal is None and self.params.model == "auto":
            return None  # a released hub model has no calibration of this market: raw bands
        if cal is None:
            raise ValueError(f"experts.{self.name}.params.calibrated is true but model {self.params.model!r} has "
                             "no calibration.json (train_kronos writes one); set calibrated: false to use raw bands")
        if cal.horizon < self.horizon:
            raise ValueError(f"experts.{self.name}: calibration covers {cal.horizon} bars, horizon is {self.horizon}")
        return cal

    def _sample_config(self) -> SampleConfig:
        p = self.params
        return SampleConfig(samples=p.samples, temperature=p.temperature, top_k=p.top_k, top_p=p.top_p,
                            seed=p.seed, max_context=self.bundle.max_context)

    # ---- inference
    def forecast(self, ctx: pd.DataFrame, timeframe: str, sampler: KronosSampler | None = None,
                 cfg: SampleConfig | None = None) -> Forecast:
        """Sample ``horizon`` bars after the context's last bar; their time stamps (model inputs and the
        forecast's ``future_ts``) follow ``self.calendar``: a stock's bar after 15:59 is the next 09:30."""
        fut = None if self.calendar is None or self.calendar.always_open else \
            self.calendar.next_bars(int(ctx["ts"].iat[-1]), self.horizon, timeframe)
        return (sampler or self.bundle.sampler()).forecast(ctx, self.horizon, cfg or self._sample_config(),
                                                          future=fut)

    def predict_many(self, batch: FeatureBatch, candles: pd.DataFrame | None = None) -> ExpertBatchOutput:
        if candles is None or len(candles) == 0:
            raise ValueError(f"{self.name}: KronosExpert needs the raw candles (input_kind 'candles')")
        candles = candles.sort_values("ts").reset_index(drop=True)
        self._last_candles = candles
        ts_all = candles["ts"].to_numpy(np.int64)
        sampler = self.bundle.sampler()
        cfg = self._sample_config()
        cal = self._calibration()
        dz = self.params.dead_zone_bps / 1e4
        n = len(batch)
        probs = np.full((n, 3), 1.0 / 3.0)
        exp_ret = np.zeros(n)
        ex = {k: np.full(n, np.nan) for k in ("q10", "q25", "q50", "q75", "q90", "p_up_raw", "path_std",
                                              "latency_ms")}
        ex["valid"] = np.zeros(n)
        ex["samples"] = np.full(n, float(self.params.samples))  # paths behind each forecast (display)
        for i, t in enumerate(np.asarray(batch.ts, dtype=np.int64)):
            end = int(np.searchsorted(ts_all, t, side="right"))  # rows with ts <= t only
            ctx = candles.iloc[max(0, end - self.params.lookback): end]
            if len(ctx) < MIN_BARS:
                continue
            t0 = time.perf_counter()
            fc = self.forecast(ctx, batch.timeframe, sampler, cfg)
            r = path_log_returns(fc.closes[None], fc.last_close)[0]  # [N, H]
            rh = r[:, -1]
            if cal is None:
                probs[i] = (np.mean(rh < -dz), np.mean(np.abs(rh) <= dz), np.mean(rh > dz))
                qs = np.quantile(rh, [0.1, 0.25, 0.5, 0.75, 0.9])
                exp_ret[i] = float(rh.mean())
            else:
                f_lo, f_hi = cal.cdf(r, np.full(r.shape[1], -dz))[-1], cal.cdf(r, np.full(r.shape[1], dz))[-1]
                probs[i] = (f_lo, max(0.0, f_hi - f_lo), 1.0 - f_hi)
                cq = cal.quantiles(r)[-1]
                qs = np.interp([0.1, 0.25, 0.5, 0.75, 0.9], cal.taus, cq)
                exp_ret[i] = float(cq.mean())  # mean of the quantile grid ≈ the calibrated mean
            probs[i] /= probs[i].sum()
            for k, q in zip(("q10", "q25", "q50", "q75", "q90"), qs, strict=True):
                ex[k][i] = q
            ex["p_up_raw"][i] = float(np.mean(rh > 0))
            ex["path_std"][i] = float(rh.std())
            ex["latency_ms"][i] = (time.perf_counter() - t0) * 1000.0
            ex["valid"][i] = 1.0
        return ExpertBatchOutput(expert=self.name, model_version=self.version, horizon=self.horizon,
                                 ts=np.asarray(batch.ts, dtype=np.int64), probs=probs, expected_return=exp_ret,
                                 confidence=confidence_from_probs(probs), extras=ex)

    # ---- training
    def train_step(self, batch: FeatureBatch, labels: np.ndarray, fwd_returns: np.ndarray) -> dict[str, float]:
        """One self-supervised fine-tuning step of the predictor (next-token cross-entropy, tokenizer
        frozen) on the candle windows ending at ``batch.ts``, taken from the candles last given to
        predict_many. Kronos learns from the candles themselves, so ``labels``/``fwd_returns`` are not
        used; full training is ``main_backtest.py train --experts kronos``."""
        if self._last_candles is None:
            raise ValueError(f"{self.name}: train_step needs candles; call predict_many(batch, candles) first")
        c = self._last_candles
        ts_all = c["ts"].to_numpy(np.int64)
        feats = candle_features(c)
        stamps = time_stamps(ts_all)
        lb = self.params.lookback
        ctx_len = max(MIN_BARS, (3 * lb) // 4)
        ends = np.searchsorted(ts_all, np.asarray(batch.ts, dtype=np.int64), side="right")
        ends = ends[ends >= lb][:16]
        if ends.size == 0:
            raise ValueError(f"{self.name}: no sample of the batch has {lb} candles of history")
        idx = ends[:, None] - lb + np.arange(lb)[None, :]
        x = feats[idx]
        ctx = x[:, :ctx_len]  # statistics of the earlier part only (the later bars are targets)
        xn = np.clip((x - ctx.mean(1, keepdims=True)) / (ctx.std(1, keepdims=True) + EPS), -CLIP, CLIP)
        b = self.bundle
        dev = next(b.model.parameters()).device
        xt = torch.as_tensor(xn, dtype=torch.float32, device=dev)
        st = torch.as_tensor(stamps[idx], device=dev)
        with torch.no_grad():
            s1, s2 = b.tokenizer.encode(xt)
        if self._opt is None:
            self._opt = torch.optim.AdamW(b.model.parameters(), lr=self.params.finetune_lr)
        b.model.train()
        try:
            l1, l2 = b.model(s1[:, :-1], s2[:, :-1], st[:, :-1], s1_targets=s1[:, 1:])
            loss = 0.5 * (F.cross_entropy(l1.flatten(0, 1), s1[:, 1:].flatten())
                          + F.cross_entropy(l2.flatten(0, 1), s2[:, 1:].flatten()))
            self._opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(b.model.parameters(), 1.0)
            self._opt.step()
        finally:
            b.model.eval()  # inference always in eval mode
        return {"loss": loss.item(), "windows": float(len(ends))}

    # ---- state
    def state_dict(self) -> dict[str, Any]:
        return {**bundle_state(self.bundle), "params": self.params.model_dump(), "version": self.version}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        tok = KronosTokenizer(TokenizerConfig.from_dict(state["tokenizer_config"]))
        tok.load_state_dict(state["tokenizer"])
        mdl = KronosModel(PredictorConfig.from_dict(state["predictor_config"]))
        mdl.load_state_dict(state["predictor"])
        cal = Calibration.from_dict(state["calibration"]) if state.get("calibration") else None
        self._bundle = KronosBundle(tok.to(self.device).eval(), mdl.to(self.device).eval(), cal,
                                    int(state.get("max_context", 512)), str(state.get("version", "loaded")),
                                    anchor=state.get("anchor"))
        self.version = str(state.get("version", "loaded"))
        self._opt = None
