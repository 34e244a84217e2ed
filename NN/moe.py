"""Mixture-of-experts gate: weighs the experts' (down, flat, up) probabilities by regime.

Two regimes of operation, both deterministic (pure numpy float64 at inference, so fast and event
backtests see identical numbers):

* untrained: online Hedge. w_e ∝ exp(-eta * mean log loss of expert e over its last ``hedge_window``
  matured outcomes) (``observe``); uniform before any outcome.
* trained (``fit``): a small MLP maps [log p of every expert, standardised regime features] to one
  logit per expert; weights = softmax over the enabled experts. With ``cfg.adapt_trained`` the logits
  also get the log of the Hedge weights above, so a trained gate keeps adapting to the matured
  outcomes too (w ∝ w_mlp · w_hedge; no change while Hedge is uniform). It is trained on the VALIDATION
  split's expert outputs (experts' predictions on their own training data are over-confident, so a
  gate fit there would learn to trust whoever overfits most). The first part of that split fits the
  MLP, the chronologically last part early-stops it (epoch 0 = the uniform mixture, so the gate
  never ends worse than that on the held-out part) and then fits the fused calibration
  (NN/calibration.py), adopted only if it also helps out of sample within the held-out part.

fused = Σ_e w_e p_e, then the calibrator when ``cfg.calibrate``. Disabled experts get weight 0 and
the others renormalise.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import numpy as np
import torch

from core.config import MoEConfig, RobustConfig
from core.scoring import EPS, log_loss
from NN.calibration import Calibrator, require_classes


def _masked_softmax(logits: np.ndarray, mask: np.ndarray) -> np.ndarray:
    z = np.where(mask, logits, -np.inf)
    z = z - z.max(axis=-1, keepdims=True)
    e = np.where(mask, np.exp(z), 0.0)
    return e / e.sum(axis=-1, keepdims=True)


GATE_MIN_PART = 50  # samples the gate needs in its fit part and in its held-out part


def gate_min_samples(holdout: float) -> int:
    """The fewest validation samples ``MoEGate.fit`` accepts at this ``moe.holdout``."""
    m = 2 * GATE_MIN_PART
    while int(m * (1 - holdout)) < GATE_MIN_PART or m - int(m * (1 - holdout)) < GATE_MIN_PART:
        m += 1
    return m


class MoEGate:
    def __init__(self, experts: list[str], cfg: MoEConfig, regime_dim: int) -> None:
        if not experts:
            raise ValueError("MoEGate needs at least one expert")
        if len(set(experts)) != len(experts):
            raise ValueError(f"duplicate expert names: {experts}")
        self.name = "moe"  # its name in the checkpoint registry
        self.experts = list(experts)
        self.cfg = cfg
        self.regime_dim = int(regime_dim)
        self.E = len(experts)
        self.version = "hedge"
        self.trained = False
        self.mlp: dict[str, np.ndarray] = {}
        self.regime_mean = np.zeros(self.regime_dim)
        self.regime_std = np.ones(self.regime_dim)
        self.calibrator = Calibrator(kind=cfg.calibration)
        self._losses: deque[np.ndarray] = deque(maxlen=cfg.hedge_window)
        self._hedge_cache: np.ndarray | None = None  # hedge weights change only on observe()
        # the same losses as _losses in a preallocated ring: a per-bar mean without re-stacking
        self._ring = np.zeros((cfg.hedge_window, self.E))
        self._ring_pos = 0

    # ---------------------------------------------------------------- inference

    def _check(self, probs: np.ndarray, regime: np.ndarray, enabled: np.ndarray | None
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        p = np.asarray(probs, dtype=np.float64)
        r = np.asarray(regime, dtype=np.float64)
        if p.ndim != 3 or p.shape[1:] != (self.E, 3):
            raise ValueError(f"gate: probs must be [N, {self.E}, 3] ({self.experts}), got {p.shape}")
        if r.shape != (p.shape[0], self.regime_dim):
            raise ValueError(f"gate: regime must be [N, {self.regime_dim}], got {r.shape}")
        m = np.ones(self.E, dtype=bool) if enabled is None else np.asarray(enabled, dtype=bool)
        if m.shape != (self.E,):
            raise ValueError(f"gate: enabled must be [{self.E}] booleans, got shape {m.shape}")
        if not m.any():
            raise ValueError("gate: every expert is disabled; nothing to fuse")
        if not np.isfinite(p[:, m]).all():
            raise ValueError("gate: probabilities of an enabled expert contain NaN/inf")
        return p, r, m

    @property
    def adapts(self) -> bool:
        """Whether the weights depend on the matured outcomes seen so far (walk bars in order)."""
        return not self.trained or self.cfg.adapt_trained

    @property
    def robust(self) -> RobustConfig | None:
        """The robust-fusion settings the runner puts above this gate (``moe.robust``)."""
        return self.cfg.robust

    def hedge_weights(self) -> np.ndarray:
        """[E] weights from the recent matured log losses (uniform before any outcome)."""
        if self._hedge_cache is None:
            if not self._losses:
                self._hedge_cache = np.full(self.E, 1.0 / self.E)
            else:
                mean_loss = self._ring[: len(self._losses)].mean(axis=0)
                self._hedge_cache = _masked_softmax(-self.cfg.hedge_eta * mean_loss,
                                                    np.ones(self.E, dtype=bool))
        return self._hedge_cache.copy()

    def _gate_inputs(self, p: np.ndarray, r: np.ndarray) -> np.ndarray:
        rn = (r - self.regime_mean) / self.regime_std
        rn = np.nan_to_num(rn, nan=0.0, posinf=0.0, neginf=0.0)  # a missing regime value = the mean
        return np.concatenate([np.log(np.clip(p, EPS, 1.0)).reshape(len(p), -1), rn], axis=1)

    def _mlp_logits(self, x: np.ndarray) -> np.ndarray:
        h = np.tanh(x @ self.mlp["w1"] + self.mlp["b1"])
        return h @ self.mlp["w2"] + self.mlp["b2"]

    def weights(self, probs: np.ndarray, regime: np.ndarray, enabled: np.ndarray | None = None,
                discount: np.ndarray | None = None) -> np.ndarray:
        """[N, E] gate weights; ``discount`` ([E] or [N, E] in (0, 1], the OOD multipliers of
        core/fusion.ood_discount) scales them before they are renormalised."""
        p, r, m = self._check(probs, regime, enabled)
        hedge = np.log(np.clip(self.hedge_weights(), EPS, 1.0))[None] if self.adapts else 0.0
        if self.trained:
            logits = self._mlp_logits(self._gate_inputs(np.where(m[None, :, None], p, 1 / 3), r)) + hedge
        else:
            logits = np.repeat(hedge, len(p), axis=0)
        w = _masked_softmax(logits, np.broadcast_to(m, logits.shape))
        if discount is not None:
            w = w * np.clip(np.asarray(discount, dtype=np.float64), EPS, 1.0)
            w = w / w.sum(axis=-1, keepdims=True)
        return w

    def fuse(self, probs: np.ndarray, regime: np.ndarray, enabled: np.ndarray | None = None,
             discount: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """probs [N, E, 3], regime [N, R], enabled [E], discount [E] or [N, E] -> (weights [N, E],
        fused [N, 3])."""
        p, r, m = self._check(probs, regime, enabled)
        w = self.weights(p, r, m, discount)
        fused = np.einsum("ne,nek->nk", w, np.where(m[None, :, None], p, 0.0))
        fused /= fused.sum(axis=1, keepdims=True)
        if self.cfg.calibrate:
            fused = self.calibrator.transform(fused)
        return w, fused

    def observe(self, probs: np.ndarray, realised: int) -> None:
        """One matured outcome: probs [E, 3] the experts gave ``horizon`` bars ago, realised 0/1/2."""
        p = np.asarray(probs, dtype=np.float64)
        if p.shape != (self.E, 3):
            raise ValueError(f"gate.observe: probs must be [{self.E}, 3], got {p.shape}")
        if realised not in (0, 1, 2):
            raise ValueError(f"gate.observe: realised must be 0, 1 or 2, got {realised!r}")
        loss = -np.log(np.clip(p[:, realised], EPS, 1.0))
        self._losses.append(loss)
        self._ring[self._ring_pos] = loss
        self._ring_pos = (self._ring_pos + 1) % len(self._ring)
        self._hedge_cache = None

    # ---------------------------------------------------------------- training

    def fit(self, probs: np.ndarray, regime: np.ndarray, labels: np.ndarray, *, patience: int = 30,
            seed: int = 0) -> dict[str, float]:
        """Train the gate on chronologically ordered samples (the validation split's expert outputs);
        returns held-out log losses of the uniform mixture, the gate, and the gate + calibration.
        Knobs come from models.yml ``moe`` (holdout, epochs, lr, weight_decay)."""
        holdout, epochs = self.cfg.holdout, self.cfg.epochs
        lr, weight_decay = self.cfg.lr, self.cfg.weight_decay
        p, r, _ = self._check(probs, regime, None)
        y = np.asarray(labels, dtype=np.int64)
        if y.shape != (len(p),) or (y < 0).any() or (y > 2).any():
            raise ValueError("gate.fit: labels must be [N] in {0, 1, 2} (drop unknown labels first)")
        n_fit = int(len(p) * (1 - holdout))
        if n_fit < GATE_MIN_PART or len(p) - n_fit < GATE_MIN_PART:
            raise ValueError(f"gate.fit: {len(p)} samples are too few (need >= {gate_min_samples(holdout)}: "
                             f">= {GATE_MIN_PART} to fit and >= {GATE_MIN_PART} held out)")
        require_classes(y[n_fit:], what="gate hold-out (last part of the validation split)")
        self.regime_mean = r[:n_fit].mean(axis=0)
        std = r[:n_fit].std(axis=0)
        self.regime_std = np.where(std > 1e-12, std, 1.0)
        x = torch.as_tensor(self._gate_inputs(p, r))
        pt = torch.as_tensor(p)
        yt = torch.as_tensor(y)
        torch.manual_seed(seed)
        hid = self.cfg.hidden
        w1 = torch.nn.Parameter(torch.randn(x.shape[1], hid, dtype=torch.float64) / np.sqrt(x.shape[1]))
        b1 = torch.nn.Parameter(torch.zeros(hid, dtype=torch.float64))
        w2 = torch.nn.Parameter(torch.zeros(hid, self.E, dtype=torch.float64))  # epoch 0: uniform weights
        b2 = torch.nn.Parameter(torch.zeros(self.E, dtype=torch.float64))
        params = [w1, b1, w2, b2]
        opt = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)

        def nll(idx: slice) -> torch.Tensor:
            w = torch.softmax(torch.tanh(x[idx] @ w1 + b1) @ w2 + b2, dim=1)
            fused = (w[:, :, None] * pt[idx]).sum(dim=1).clamp_min(EPS)
            return torch.nn.functional.nll_loss(fused.log(), yt[idx])

        fit_idx, ho_idx = slice(0, n_fit), slice(n_fit, len(p))
        with torch.no_grad():
            best = float(nll(ho_idx))
        uniform_loss = best
        best_state = [t.detach().clone() for t in params]
        bad = 0
        for _ in range(epochs):
            opt.zero_grad()
            loss = nll(fit_idx)
            loss.backward()
            opt.step()
            with torch.no_grad():
                v = float(nll(ho_idx))
            if v < best - 1e-6:
                best, best_state, bad = v, [t.detach().clone() for t in params], 0
            else:
                bad += 1
                if bad >= patience:
                    break
        self.mlp = {k: t.numpy().copy() for k, t in zip(("w1", "b1", "w2", "b2"), best_state, strict=True)}
        self.trained = True
        self.calibrator = Calibrator(kind=self.cfg.calibration)
        _, fused_ho = self.fuse(p[ho_idx], r[ho_idx])  # identity calibrator at this point
        out = {"holdout_uniform_logloss": uniform_loss, "holdout_gate_logloss": log_loss(fused_ho, y[ho_idx])}
        if self.cfg.calibrate:
            # adopt the calibration only if, fit on the first half of the hold-out, it lowers the log
            # loss of the second half: a calibrator mostly learns the class mix of its fit data, which
            # shifts between market regimes, and then it costs more than it gives
            yh = y[ho_idx]
            half = len(yh) // 2
            try:
                probe = Calibrator(kind=self.cfg.calibration).fit(fused_ho[:half], yh[:half])
                gain = log_loss(fused_ho[half:], yh[half:]) - log_loss(probe.transform(fused_ho[half:]), yh[half:])
            except ValueError:  # a class missing from one half: too little evidence to calibrate
                gain = float("nan")
            out["calibration_probe_gain"] = gain
            if gain > 0:
                self.calibrator.fit(fused_ho, yh)
            out["calibration_adopted"] = float(self.calibrator.fitted)
            out["holdout_calibrated_logloss"] = log_loss(self.calibrator.transform(fused_ho), yh)
        return out

    # ---------------------------------------------------------------- state

    def state_dict(self) -> dict[str, Any]:
        return {
            "kind": "moe",
            "experts": list(self.experts),
            "regime_dim": self.regime_dim,
            "trained": self.trained,
            "mlp": {k: v.tolist() for k, v in self.mlp.items()},
            "regime_mean": self.regime_mean.tolist(),
            "regime_std": self.regime_std.tolist(),
            "calibrator": self.calibrator.state_dict(),
            "hedge_losses": [v.tolist() for v in self._losses],
            "version": self.version,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("kind") != "moe":
            raise ValueError(f"gate: checkpoint kind {state.get('kind')!r} is not 'moe'")
        if list(state["experts"]) != self.experts or int(state["regime_dim"]) != self.regime_dim:
            raise ValueError(
                f"gate: checkpoint is for experts {state['experts']} / regime_dim {state['regime_dim']}, "
                f"this gate has {self.experts} / {self.regime_dim}"
            )
        self.trained = bool(state["trained"])
        self.mlp = {k: np.asarray(v, dtype=np.float64) for k, v in state["mlp"].items()}
        self.regime_mean = np.asarray(state["regime_mean"], dtype=np.float64)
        self.regime_std = np.asarray(state["regime_std"], dtype=np.float64)
        self.calibrator = Calibrator.from_state(state["calibrator"])
        self._losses = deque((np.asarray(v, dtype=np.float64) for v in state["hedge_losses"]),
                             maxlen=self.cfg.hedge_window)
        self._ring = np.zeros((self.cfg.hedge_window, self.E))
        for i, v in enumerate(self._losses):
            self._ring[i] = v
        self._ring_pos = len(self._losses) % self.cfg.hedge_window
        self._hedge_cache = None
        self.version = str(state.get("version", "hedge"))
