"""DQN expert: dueling double DQN with n-step returns and a replay buffer, trading one unit.

Environment (one step = one base bar, over the real price series):
  state   = flat features + the last ``state_bars`` bars of the base-timeframe window + one-hot of the
            current position (short -1 / flat 0 / long +1)
  actions = 0 sell (go short), 1 hold (keep the position), 2 buy (go long)
  reward  = reward_scale * (new_position * log(close[t+1] / close[t]) - fee * |new_position - position|)
The reward of the step at t uses close[t+1], which is fine for TRAINING (the transition is only stored
once bar t+1 has closed); inference at t only ever sees features up to t.

Output: probs = calibrated softmax(Q(s_t, position)) mapping sell->down, hold->flat, buy->up; the
three Q-values go to extras["q_values"]. ``predict_many`` evaluates Q at position 0 (flat) unless
``set_position`` was called (the orchestrator may pass its live position). The calibration is vector
scaling (per-class scale and bias on the log-probabilities, NN/calibration.py) fit by the trainer on
the validation split against the labels: Q-values rank actions but carry no class prior, a per-class
bias supplies it (a single temperature could not).

``train_step(batch, labels, fwd_returns)`` treats ``batch`` as a chronological chunk of consecutive
bars: it rolls an epsilon-greedy episode over it (a gap in ts ends the episode), stores the n-step
transitions in the replay buffer and runs replay updates (one per ``update_every`` steps). labels and
fwd_returns only feed the class-conditional mean returns behind ``expected_return``.

Demonstrations (``push_demonstrations``, annotated trades in ``train --annotations``) go to a reserved
part of the replay buffer that training never overwrites; once it holds any, ``demo_fraction`` of
every replay mini-batch is drawn from it, with DQfD's large-margin loss on those rows (the demonstrated
action's Q must exceed the others' by ``demo_margin``) besides the TD loss.

Live training (``train_online``, inside a trainer process): chronological chunks of the fresh bars and
replayed ones, then the realised paper-trading positions as transitions (``push_experience``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from core.config import ExpertConfig, validate_params
from core.types import ExpertBatchOutput, FeatureBatch, FeatureSpec, timeframe_ms
from NN.calibration import CalibrationKind, Calibrator, softmax
from NN.devices import to_device
from NN.experts.base import Expert, OnlineRound, confidence_from_probs
from NN.experts.supervised import check_batch, load_weights_state, spec_dims, weights_state

POSITIONS = np.array([-1.0, 0.0, 1.0])  # index 0 short, 1 flat, 2 long


class DQNParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    hidden: int = Field(64, ge=1, le=2048)
    state_bars: int = Field(8, ge=0)  # base-timeframe bars of the window put in the state
    lr: float = Field(5e-4, gt=0)
    gamma: float = Field(0.9, ge=0, lt=1)
    n_step: int = Field(3, ge=1, le=64)
    buffer_size: int = Field(20_000, ge=100)
    batch_size: int = Field(128, ge=1)  # replay mini-batch
    chunk: int = Field(512, ge=2)  # bars per train_step episode chunk the offline trainer passes
    warmup: int = Field(500, ge=1)  # transitions before the first update
    update_every: int = Field(4, ge=1)
    target_sync: int = Field(250, ge=1)  # replay updates between target-network copies
    epsilon_start: float = Field(1.0, ge=0, le=1)
    epsilon_end: float = Field(0.05, ge=0, le=1)
    epsilon_decay_steps: int = Field(20_000, ge=1)
    fee_bps: float = Field(10.0, ge=0)  # per unit of turnover; keep equal to execution.taker_fee_bps
    reward_scale: float = Field(1000.0, gt=0)  # log returns are ~1e-3 per bar: scale to O(1)
    grad_clip: float = Field(10.0, gt=0)
    eval_batch: int = Field(4096, ge=1)
    demo_fraction: float = Field(0.25, ge=0, le=1)  # replay mini-batch share of demonstrations, when any
    demo_margin: float = Field(0.8, ge=0)  # DQfD margin of the demonstrated action over the others (Q units)
    demo_margin_weight: float = Field(1.0, ge=0)  # weight of that margin loss (0: demonstrations replay only)
    seed: int = 0


class DuelingQNet(nn.Module):
    def __init__(self, state_dim: int, hidden: int) -> None:
        super().__init__()
        self.trunk = nn.Sequential(
            nn.Linear(state_dim + 3, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU()
        )
        self.value = nn.Linear(hidden, 1)
        self.adv = nn.Linear(hidden, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.trunk(x)
        a = self.adv(h)
        return self.value(h) + a - a.mean(dim=1, keepdim=True)


class ReplayBuffer:
    """Ring buffer of n-step transitions (numpy, so sampling is cheap and seeded)."""

    def __init__(self, capacity: int, state_dim: int) -> None:
        self.cap = capacity
        self.s = np.zeros((capacity, state_dim), np.float32)
        self.p = np.zeros(capacity, np.int64)
        self.a = np.zeros(capacity, np.int64)
        self.r = np.zeros(capacity, np.float32)
        self.s2 = np.zeros((capacity, state_dim), np.float32)
        self.p2 = np.zeros(capacity, np.int64)
        self.g = np.zeros(capacity, np.float32)  # gamma^m of the bootstrap (0 = terminal)
        self.n = 0
        self.i = 0

    def push(self, s, p, a, r, s2, p2, g) -> None:
        k = len(a)
        if k > self.cap:  # only the newest `cap` survive a ring buffer anyway
            s, p, a, r, s2, p2, g = (x[k - self.cap :] for x in (s, p, a, r, s2, p2, g))
            k = self.cap
        j = (self.i + np.arange(k)) % self.cap
        self.s[j], self.p[j], self.a[j], self.r[j] = s, p, a, r
        self.s2[j], self.p2[j], self.g[j] = s2, p2, g
        self.i = int((self.i + k) % self.cap)
        self.n = min(self.n + k, self.cap)

    def sample(self, rng: np.random.Generator, k: int) -> tuple[np.ndarray, ...]:
        j = rng.integers(0, self.n, size=k)
        return self.s[j], self.p[j], self.a[j], self.r[j], self.s2[j], self.p2[j], self.g[j]


def next_position(pos_idx: np.ndarray | int, action: np.ndarray | int) -> np.ndarray:
    """sell -> short (0), hold -> unchanged, buy -> long (2), as position indices."""
    return np.where(np.asarray(action) == 1, pos_idx, np.where(np.asarray(action) == 0, 0, 2))


class DQNExpert(Expert):
    kind = "dqn"
    calibration_kind: CalibrationKind = "vector"
    ARCH_KEYS = ("hidden", "state_bars")

    def __init__(self, name: str, cfg: ExpertConfig, spec: FeatureSpec) -> None:
        super().__init__(name, cfg, spec)
        self.params = validate_params(DQNParams, cfg.params, f"models.yml: experts.{name}.params")
        p = self.params
        torch.manual_seed(p.seed)
        self.rng = np.random.default_rng(p.seed)
        self.dims = spec_dims(spec)
        self.k = min(p.state_bars, self.dims["L"])
        self.state_dim = self.dims["D"] + self.k * self.dims["F"]
        self.net = DuelingQNet(self.state_dim, p.hidden).to(self.device)
        self.target = DuelingQNet(self.state_dim, p.hidden).to(self.device)
        self.target.load_state_dict(self.net.state_dict())
        self.opt = torch.optim.Adam(self.net.parameters(), lr=p.lr)
        self.buffer = ReplayBuffer(p.buffer_size, self.state_dim)
        self.demos: ReplayBuffer | None = None  # demonstrations (annotated trades), never overwritten
        self.env_steps = 0
        self.updates = 0
        self.calibrator = Calibrator(kind=self.calibration_kind)  # identity until fit on validation data
        self.position_index = 1  # flat, for inference
        self.class_ret_sum = np.zeros(3)
        self.class_count = np.zeros(3)
        self.bar_ms = timeframe_ms(spec.timeframes[0])
        # online: newest bar whose realised position went into the replay buffer (never saved, like it)
        self.experience_until = int(np.iinfo(np.int64).min)

    # ---------------------------------------------------------------- state vectors

    def states(self, batch: FeatureBatch) -> np.ndarray:
        """[N, state_dim] features part of the state (position is appended by q_values)."""
        check_batch(batch, self.spec, self.name)
        parts = [np.asarray(batch.flat, np.float32)]
        if self.k:
            w = np.asarray(batch.windows[:, 0, -self.k :, :], np.float32)
            parts.append(w.reshape(len(batch), -1))
        return np.concatenate(parts, axis=1)

    def _q(self, net: nn.Module, s: np.ndarray, pos_idx: np.ndarray) -> torch.Tensor:
        x = to_device(s, self.device, np.float32)  # pinned, non-blocking on cuda (NN/devices.py)
        # np.array copies: pos_idx may be a read-only broadcast view
        pos = to_device(np.array(pos_idx, dtype=np.int64), self.device)
        return net(torch.cat([x, torch.nn.functional.one_hot(pos, 3).float()], dim=1))

    def q_values(self, s: np.ndarray, pos_idx: np.ndarray | int) -> np.ndarray:
        """Q [N, 3] of the online network (no gradient)."""
        pos = np.broadcast_to(np.asarray(pos_idx, dtype=np.int64), (len(s),))
        self.net.eval()
        out = []
        with torch.inference_mode():
            for a in range(0, len(s), self.params.eval_batch):
                b = slice(a, a + self.params.eval_batch)
                out.append(self._q(self.net, s[b], pos[b]).double().cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, 3))

    # ---------------------------------------------------------------- inference

    def set_position(self, position: float) -> None:
        """Position the next predictions assume: -1 short, 0 flat (default), +1 long."""
        if position not in (-1, 0, 1):
            raise ValueError(f"{self.name}: position must be -1, 0 or 1, got {position!r}")
        self.position_index = int(position) + 1

    def logits_many(self, batch: FeatureBatch) -> np.ndarray:
        return self.q_values(self.states(batch), self.position_index)

    def set_calibrator(self, cal: Calibrator) -> None:
        self.calibrator = cal

    def class_mean_returns(self) -> np.ndarray:
        return np.where(self.class_count > 0, self.class_ret_sum / np.maximum(self.class_count, 1), 0.0)

    def predict_many(self, batch: FeatureBatch, candles: pd.DataFrame | None = None) -> ExpertBatchOutput:
        q = self.logits_many(batch)
        p = self.calibrator.transform(softmax(q))
        return ExpertBatchOutput(
            expert=self.name,
            model_version=self.version,
            horizon=self.horizon,
            ts=np.asarray(batch.ts, dtype=np.int64),
            probs=p,
            expected_return=p @ self.class_mean_returns(),
            confidence=confidence_from_probs(p),
            extras={"q_values": q, **self.ood_extras(batch)},
        )

    # ---------------------------------------------------------------- environment

    def epsilon(self) -> float:
        p = self.params
        frac = min(1.0, self.env_steps / p.epsilon_decay_steps)
        return p.epsilon_start + frac * (p.epsilon_end - p.epsilon_start)

    def segments(self, ts: np.ndarray) -> list[slice]:
        """Runs of consecutive bars (a ts gap ends an episode)."""
        breaks = np.flatnonzero(np.diff(np.asarray(ts, np.int64)) != self.bar_ms) + 1
        edges = np.concatenate([[0], breaks, [len(ts)]])
        return [slice(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:], strict=True) if b - a >= 2]

    def rollout(self, s: np.ndarray, close: np.ndarray, epsilon: float, start_pos: int = 1,
                fee_bps: float | None = None, rng: np.random.Generator | None = None
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One episode over consecutive bars: positions [n] (index, before acting), actions [n-1],
        rewards [n-1] in log-return units (unscaled). Q for all three positions is computed once up
        front: the network does not change during a rollout."""
        rng = rng or self.rng
        fee = (self.params.fee_bps if fee_bps is None else fee_bps) / 1e4
        ret = np.diff(np.log(np.asarray(close, np.float64)))
        n = len(s)
        q_all = np.stack([self.q_values(s[:-1], i) for i in range(3)], axis=0)  # [3 pos, n-1, 3]
        pos = np.empty(n, np.int64)
        act = np.empty(n - 1, np.int64)
        rew = np.empty(n - 1, np.float64)
        pos[0] = start_pos
        explore = rng.random(n - 1) < epsilon
        random_a = rng.integers(0, 3, size=n - 1)
        for t in range(n - 1):
            a = int(random_a[t]) if explore[t] else int(q_all[pos[t], t].argmax())
            p2 = int(next_position(pos[t], a))
            rew[t] = POSITIONS[p2] * ret[t] - fee * abs(POSITIONS[p2] - POSITIONS[pos[t]])
            act[t] = a
            pos[t + 1] = p2
        return pos, act, rew

    def policy_reward(self, batch: FeatureBatch, fee_bps: float | None = None) -> float:
        """Total reward (log-return units) of the greedy policy from flat over ``batch``'s segments."""
        s = self.states(batch)
        total = 0.0
        for seg in self.segments(batch.ts):
            _, _, rew = self.rollout(s[seg], batch.close[seg], 0.0, 1, fee_bps)
            total += float(rew.sum())
        return total

    def push_transitions(self, s: np.ndarray, pos: np.ndarray, act: np.ndarray, rew: np.ndarray,
                         buffer: ReplayBuffer | None = None) -> None:
        """Store the n-step transitions of one contiguous stretch: states ``s`` [m+1], position
        indices ``pos`` [m+1] (held before each step), actions ``act`` [m] and raw rewards ``rew`` [m]
        (log-return units; scaled here). Used by ``train_step``, by online learning from realised
        paper-trading positions, and (into the demonstrations) by ``push_demonstrations``."""
        p = self.params
        m = len(act)  # transitions t = 0..m-1; state index m is the last bar (bootstrap only)
        r = rew * p.reward_scale
        R = np.zeros(m)
        steps = np.minimum(p.n_step, m - np.arange(m))  # truncated near the end of the segment
        for k in range(p.n_step):
            idx = np.arange(m) + k
            ok = k < steps
            R[ok] += (p.gamma**k) * r[idx[ok]]
        nxt = np.arange(m) + steps
        # the end of a chunk is a truncation, not a terminal: bootstrap from the last state
        g = p.gamma**steps
        (buffer or self.buffer).push(s[:m], pos[:m], act, R, s[nxt], pos[nxt], g)

    def push_demonstrations(self, batch: FeatureBatch, sign: int) -> int:
        """One demonstrated trade over ``batch`` (its consecutive bars entry .. exit): from flat, the
        annotated position is taken at the entry bar's close (buy for long, sell for short, hold for
        a no-trade span) and held to the exit bar; rewards from the real closes and the fee, as in
        ``rollout``. Returns the number of transitions stored."""
        n = len(batch)
        if n < 2:
            return 0
        if self.demos is None:
            self.demos = ReplayBuffer(self.params.buffer_size, self.state_dim)
        target = 1 + int(np.sign(sign))  # position index after the entry
        act = np.full(n - 1, 1, np.int64)
        act[0] = {0: 0, 1: 1, 2: 2}[target]  # sell -> short, hold -> flat stays flat, buy -> long
        pos = np.full(n, target, np.int64)
        pos[0] = 1
        ret = np.diff(np.log(np.asarray(batch.close, np.float64)))
        fee = self.params.fee_bps / 1e4
        rew = POSITIONS[pos[1:]] * ret - fee * np.abs(POSITIONS[pos[1:]] - POSITIONS[pos[:-1]])
        self.push_transitions(self.states(batch), pos, act, rew, buffer=self.demos)
        return n - 1

    def _sample(self) -> tuple[Any, ...]:
        """A replay mini-batch (s, pos, a, r, s2, pos2, g, k): its last k rows from the demonstrations
        (``demo_fraction`` of it when there are any)."""
        p = self.params
        if self.demos is None or not self.demos.n or p.demo_fraction == 0:
            return (*self.buffer.sample(self.rng, p.batch_size), 0)
        k = max(1, int(round(p.batch_size * p.demo_fraction)))
        mine = self.buffer.sample(self.rng, p.batch_size - k)
        demo = self.demos.sample(self.rng, k)
        return (*(np.concatenate([x, y]) for x, y in zip(mine, demo, strict=True)), k)

    def replay_update(self) -> float:
        """One double-DQN update on a replayed mini-batch; returns its loss."""
        p = self.params
        s, ps, a, r, s2, p2, g, n_demo = self._sample()
        self.net.train()
        a_t = to_device(a, self.device)
        q_all = self._q(self.net, s, ps)
        q = q_all.gather(1, a_t[:, None])[:, 0]
        with torch.no_grad():
            # double DQN: the online net picks a', the target net values it
            a2 = self._q(self.net, s2, p2).argmax(dim=1, keepdim=True)
            q2 = self._q(self.target, s2, p2).gather(1, a2)[:, 0]
            tgt = to_device(r, self.device) + to_device(g, self.device) * q2
        loss = nn.functional.smooth_l1_loss(q, tgt)
        if n_demo and p.demo_margin_weight > 0:
            # large-margin loss on the demonstrations (DQfD): the demonstrated action's Q must beat every
            # other action's by demo_margin, else the shortfall is the loss
            qd, ad = q_all[-n_demo:], a_t[-n_demo:]
            bonus = p.demo_margin * (1.0 - nn.functional.one_hot(ad, 3).to(qd.dtype))
            loss = loss + p.demo_margin_weight * ((qd + bonus).max(dim=1).values - q[-n_demo:]).mean()
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(self.net.parameters(), p.grad_clip)
        self.opt.step()
        self.updates += 1
        if self.updates % p.target_sync == 0:
            self.target.load_state_dict(self.net.state_dict())
        return float(loss.detach())

    # ---------------------------------------------------------------- training

    def train_step(self, batch: FeatureBatch, labels: np.ndarray, fwd_returns: np.ndarray) -> dict[str, float]:
        y = np.asarray(labels)
        r = np.asarray(fwd_returns, dtype=np.float64)
        if y.shape != (len(batch),) or r.shape != (len(batch),):
            raise ValueError(f"{self.name}: labels/fwd_returns must be [N]={len(batch)}")
        known = (y >= 0) & np.isfinite(r)
        np.add.at(self.class_ret_sum, y[known], r[known])
        np.add.at(self.class_count, y[known], 1)
        s = self.states(batch)
        losses: list[float] = []
        rewards: list[float] = []
        for seg in self.segments(batch.ts):
            eps = self.epsilon()
            start = int(self.rng.integers(0, 3))  # random start position covers all state kinds
            pos, act, rew = self.rollout(s[seg], batch.close[seg], eps, start)
            self.push_transitions(s[seg], pos, act, rew)
            rewards.append(float(rew.sum()))
            self.env_steps += len(act)
            if self.buffer.n >= self.params.warmup:
                for _ in range(max(1, len(act) // self.params.update_every)):
                    losses.append(self.replay_update())
        return {
            "loss": float(np.mean(losses)) if losses else float("nan"),
            "reward": float(np.sum(rewards)),
            "epsilon": self.epsilon(),
            "buffer": float(self.buffer.n),
        }

    # ---------------------------------------------------------------- live training

    def push_experience(self, batch: FeatureBatch, position: np.ndarray, bar_ms: int) -> int:
        """Learn from this DQN's own paper-trading experience. ``position[j]`` is the realised position
        (sign -1/0/+1) held after the decision at bar j, so the transition of bar j goes from
        position[j-1] to position[j] and earns position[j] * log(close[j+1] / close[j]) minus the fee on
        the change: it needs bars j-1, j and j+1 (contiguous, positions known). The actions are
        sell->short, hold, buy->long, so a move to flat from a non-flat position has no action: such
        bars are skipped. Returns the number of transitions pushed."""
        pos = np.asarray(position, dtype=np.float64)
        n = len(pos)
        if n < 3:
            return 0
        ok = np.isfinite(pos)
        s = self.states(batch)
        pidx = np.where(ok, np.sign(np.nan_to_num(pos)) + 1, 1).astype(np.int64)
        ret = np.diff(np.log(np.asarray(batch.close, np.float64)))[1:]  # bar j = 1..n-2
        before, after = pidx[:-2], pidx[1:-1]
        act = np.where(after == before, 1, np.where(after == 2, 2, np.where(after == 0, 0, -1)))
        step = np.diff(np.asarray(batch.ts, np.int64)) == bar_ms
        valid = ok[:-2] & ok[1:-1] & step[:-1] & step[1:] & (act >= 0)
        fee = self.params.fee_bps / 1e4
        rew = POSITIONS[after] * ret - fee * np.abs(POSITIONS[after] - POSITIONS[before])
        pushed = 0
        edges = np.flatnonzero(np.diff(np.concatenate([[0], valid.astype(np.int8), [0]])))
        for a, b in zip(edges[::2], edges[1::2], strict=True):  # transitions t = a..b-1 (bar j = t + 1)
            self.push_transitions(s[a + 1 : b + 2], pidx[a : b + 1], act[a:b], rew[a:b])
            pushed += b - a
        return pushed

    def train_online(self, batch: FeatureBatch, labels: np.ndarray, fwd_returns: np.ndarray,
                     position: np.ndarray, fresh: np.ndarray, rng: np.random.Generator, *, batch_size: int,
                     min_steps: int, max_steps: int) -> OnlineRound:
        """Chronological chunks of ``params.chunk`` bars (``train_step``): the fresh stretch, from one
        bar before it, and ``max(1, min_steps)`` replayed chunks drawn with ``rng``, at most
        ``max_steps``; then the realised positions not learnt from yet go into the replay buffer, with
        one replay update once it is warm. ``batch_size`` is the classifiers' (replay mini-batches are
        ``params.batch_size``)."""
        n_all = len(batch)
        chunk = max(2, int(self.params.chunk))
        spans = []
        if len(fresh):
            a = max(0, int(fresh[0]) - 1)
            spans += [slice(s, min(s + chunk, n_all)) for s in range(a, n_all - 1, chunk)]
        for _ in range(max(1, min_steps) if n_all > chunk else 0):
            s0 = int(rng.integers(0, n_all - chunk))
            spans.append(slice(s0, s0 + chunk))
        steps, samples, losses = 0, 0, []
        for sl in spans[:max_steps]:
            if sl.stop - sl.start < 2:
                continue
            m = self.train_step(batch.take(sl), labels[sl], fwd_returns[sl])
            steps += 1
            samples += sl.stop - sl.start
            if np.isfinite(m.get("loss", np.nan)):
                losses.append(float(m["loss"]))
        new_exp = np.flatnonzero((batch.ts > self.experience_until) & np.isfinite(position))
        if len(new_exp) >= 1:
            sl = slice(max(0, int(new_exp[0]) - 2), n_all)  # bar j's transition needs bar j-1
            if self.push_experience(batch.take(sl), position[sl], self.bar_ms):
                if self.buffer.n >= self.params.warmup:
                    losses.append(self.replay_update())
                    steps += 1
            self.experience_until = int(batch.ts[-1])
        return OnlineRound(steps, samples, tuple(losses))

    # ---------------------------------------------------------------- state

    def state_dict(self) -> dict[str, Any]:
        # the replay buffer is not saved: it is rebuilt from the price series (keeps checkpoints small)
        return {**weights_state(self),
                "target": {k: v.detach().cpu().clone() for k, v in self.target.state_dict().items()},
                "env_steps": self.env_steps, "updates": self.updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        load_weights_state(self, state)
        self.target.load_state_dict(state["target"])
        self.env_steps = int(state["env_steps"])
        self.updates = int(state["updates"])
