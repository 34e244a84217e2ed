"""CUDA against CPU: the same weights on the same real inputs (BTC/USDT 1m candles from ../shared/data
through the real FeatureBuilder) give the same numbers on both devices, within the tolerances below.

Every test here is marked ``gpu`` and skipped where torch.cuda.is_available() is False (tests/conftest.py);
bench/gpu_check.sh runs them on a GPU machine. Randomly initialised weights are fine: the checks are about
the devices agreeing, not about skill.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from core.config import ModelsConfig, load_config, load_models
from core.data.files import load_file
from core.features import FeatureBuilder
from core.labels import dead_zone, forward_returns, make_labels
from core.types import ExpertBatchOutput, FeatureBatch
from NN.devices import pick_device, to_device
from NN.experts.base import Expert
from NN.experts.dqn import DQNExpert
from NN.experts.kronos.bundle import KronosBundle
from NN.experts.kronos.config import PREDICTOR_PRESETS, TOKENIZER_PRESETS
from NN.experts.kronos.expert import KronosExpert, bundle_state
from NN.experts.kronos.model import KronosModel
from NN.experts.kronos.normalize import EPS, Scaler, candle_features
from NN.experts.kronos.sampler import KronosSampler, SampleConfig, filter_logits
from NN.experts.kronos.tokenizer import KronosTokenizer
from NN.experts.registry import build_expert
from NN.moe import MoEGate

pytestmark = pytest.mark.gpu

CPU = torch.device("cpu")
CUDA = torch.device("cuda")
EXPERTS = ("cnn", "transformer", "dqn")
N_BARS = 3000  # real 1m bars: ~2,800 samples after the FeatureBuilder's warm-up

# ---- tolerances. TF32 is switched off for this module (fixture below), so both devices compute in IEEE
# fp32; what is left are other kernels and reduction orders (cuBLAS/cuDNN against oneDNN/MKL), about 1e-6
# relative per layer for nets this small. Each bound keeps a ~100x margin over that and stays far below
# what a real device bug produces (a weight left behind, a mask lost, dropout on in eval: 1e-2 and more).
PROB_ATOL = 1e-4  # (down, flat, up) probabilities
LOGIT_ATOL = 1e-4  # raw logits and DQN Q-values: O(0.1..1) for these nets
LOSS_RTOL = 1e-4  # training loss before and after one optimiser step (dropout 0, same mini-batch)
GRAD_RTOL = 1e-3  # gradient norm: backward kernels sum over the batch in yet another order
GATE_ATOL = 1e-3  # gate weights / fused probs: its inputs are log p, which scales a difference by 1/p
Z_ATOL = 1e-4  # Kronos: tokenizer code vectors and decoded bars, in the sampler's normalised units
Z_MARGIN = 1e-5  # Kronos inputs are chosen with no code component this close to its sign boundary
RET_ATOL = 1e-6  # Kronos log returns: Z_ATOL x (std / price) of a BTC context is ~1e-8
Q_MARGIN = 1e-6  # DQN: greedy episodes where the best Q leads the next by ~10x the rounding of Q ~ 1 in fp32
N_SIGMA = 5.0  # sampled Kronos paths: statistics within 5 standard errors (false alarm ~1e-6 each)
KRONOS_PATHS = 1024


@pytest.fixture(scope="module", autouse=True)
def strict_fp32() -> Iterator[None]:
    """IEEE fp32 on the GPU (no TF32 in matmuls or convolutions) and deterministic cuDNN algorithms, so
    the tolerances above can be tight; the previous settings come back afterwards."""
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
             torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    yield
    (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
     torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark) = saved


# ------------------------------------------------------------------------------------------ real inputs


@pytest.fixture(scope="module")
def btc(shared_data: Path) -> pd.DataFrame:
    """The first N_BARS of BTC/USDT 1m (conftest's shared_data: core.paths.shared_data_dir())."""
    return load_file(shared_data / "binanceus" / "BTC_USDT-1m.csv").iloc[:N_BARS].reset_index(drop=True)


@pytest.fixture(scope="module")
def models() -> ModelsConfig:
    return load_models()


@pytest.fixture(scope="module")
def batch(models: ModelsConfig, btc: pd.DataFrame) -> FeatureBatch:
    builder = FeatureBuilder(models.features, "1m")
    return builder.build_many(btc, symbol="BTC/USDT").take(slice(builder.min_history, None))


@pytest.fixture(scope="module")
def labelled(models: ModelsConfig, batch: FeatureBatch) -> tuple[np.ndarray, np.ndarray]:
    """Labels and forward returns at the experts' horizon (all three use the same one in models.yml)."""
    h = models.experts["cnn"].horizon
    assert all(models.experts[n].horizon == h for n in EXPERTS)
    y = make_labels(batch.close, h, dead_zone(load_config().execution, models.labels))
    return y, forward_returns(batch.close, h)


def expert_on(name: str, models: ModelsConfig, batch: FeatureBatch, device: str, **params: object) -> Expert:
    cfg = models.experts[name]
    cfg = cfg.model_copy(update={"device": device, "params": {**cfg.params, **params}})
    return build_expert(name, cfg, batch.spec)


def expert_pair(name: str, models: ModelsConfig, batch: FeatureBatch, labelled: tuple[np.ndarray, np.ndarray],
                **params: object) -> tuple[Expert, Expert]:
    """The same expert on cpu and on cuda: the cuda one loads the cpu one's state (weights, calibration,
    class-mean returns taken from the real labels so expected_return is not identically 0)."""
    cpu = expert_on(name, models, batch, "cpu", **params)
    y, r = labelled
    known = (y >= 0) & np.isfinite(r)
    np.add.at(cpu.class_ret_sum, y[known], r[known])
    np.add.at(cpu.class_count, y[known], 1)
    gpu = expert_on(name, models, batch, CUDA.type, **params)
    gpu.load_state_dict(cpu.state_dict())
    return cpu, gpu


def assert_outputs_close(a: ExpertBatchOutput, b: ExpertBatchOutput, class_means: np.ndarray) -> None:
    np.testing.assert_array_equal(a.ts, b.ts)
    assert a.probs.dtype == b.probs.dtype == np.float64
    np.testing.assert_allclose(b.probs, a.probs, rtol=0, atol=PROB_ATOL)
    # expected_return = probs @ class_means, so |difference| <= PROB_ATOL * sum|class_means|
    np.testing.assert_allclose(b.expected_return, a.expected_return, rtol=0,
                               atol=PROB_ATOL * np.abs(class_means).sum() + 1e-15)
    # confidence = 1 - H(p) / ln 3 with dH/dp_i = -(ln p_i + 1): the first-order bound of the change
    conf_tol = PROB_ATOL * np.abs(np.log(a.probs) + 1).sum(axis=1).max() / np.log(3)
    np.testing.assert_allclose(b.confidence, a.confidence, rtol=0, atol=conf_tol)


# ------------------------------------------------------------------------------------------ devices


def test_pick_device_gives_cuda() -> None:
    assert pick_device("auto").type == "cuda"  # cuda before mps and cpu
    assert pick_device("cuda").type == "cuda"
    assert torch.zeros(1, device=pick_device("cuda")).is_cuda


@pytest.mark.parametrize("name", EXPERTS)
def test_expert_configured_for_cuda_lives_on_cuda(name: str, models: ModelsConfig,
                                                   batch: FeatureBatch) -> None:
    ex = expert_on(name, models, batch, CUDA.type)
    assert ex.device.type == "cuda"
    nets = [ex.net, ex.target] if name == "dqn" else [ex.net]
    for net in nets:
        tensors = list(net.parameters()) + list(net.buffers())
        assert tensors and all(t.is_cuda for t in tensors)
    out = ex.predict_many(batch.take(slice(0, 8)))  # numpy back on the host, as the interface says
    assert isinstance(out.probs, np.ndarray) and out.probs.shape == (8, 3)


def random_kronos_state(seed: int = 0) -> dict:
    """A randomly initialised nano tokenizer + predictor as a KronosExpert state (no file needed)."""
    torch.manual_seed(seed)
    tok, mdl = KronosTokenizer(TOKENIZER_PRESETS["nano"]), KronosModel(PREDICTOR_PRESETS["nano"])
    return bundle_state(KronosBundle(tok.eval(), mdl.eval(), None, 512, "random-nano"))


def test_kronos_expert_configured_for_cuda_lives_on_cuda(models: ModelsConfig, batch: FeatureBatch) -> None:
    ex = KronosExpert("kronos", models.experts["kronos"].model_copy(update={"device": CUDA.type}), batch.spec)
    ex.load_state_dict(random_kronos_state())
    for net in (ex.bundle.tokenizer, ex.bundle.model):
        assert all(t.is_cuda for t in list(net.parameters()) + list(net.buffers()))
    assert ex.bundle.sampler().device.type == "cuda"


# ------------------------------------------------------------------------------ CNN / Transformer / DQN


@pytest.mark.parametrize("name", EXPERTS)
def test_predict_many_matches_cpu(name: str, models: ModelsConfig, batch: FeatureBatch, labelled) -> None:
    cpu, gpu = expert_pair(name, models, batch, labelled)
    np.testing.assert_allclose(gpu.logits_many(batch), cpu.logits_many(batch), rtol=0, atol=LOGIT_ATOL)
    a, b = cpu.predict_many(batch), gpu.predict_many(batch)
    assert_outputs_close(a, b, cpu.class_mean_returns())
    if name == "dqn":
        np.testing.assert_allclose(b.extras["q_values"], a.extras["q_values"], rtol=0, atol=LOGIT_ATOL)


@pytest.mark.parametrize("name", EXPERTS)
def test_predict_single_matches_cpu(name: str, models: ModelsConfig, batch: FeatureBatch, labelled) -> None:
    """The live path: a batch of one (other kernels than the big batch on the GPU)."""
    cpu, gpu = expert_pair(name, models, batch, labelled)
    for k in (0, len(batch) // 2, len(batch) - 1):
        part = batch.take(slice(0, k + 1))
        a, b = cpu.predict(part), gpu.predict(part)
        assert a.ts == b.ts == int(batch.ts[k])
        np.testing.assert_allclose(b.probs, a.probs, rtol=0, atol=PROB_ATOL)
        np.testing.assert_allclose(b.expected_return, a.expected_return, rtol=0,
                                   atol=PROB_ATOL * np.abs(cpu.class_mean_returns()).sum() + 1e-15)
        np.testing.assert_allclose(b.probs, gpu.predict_many(part).probs[-1], rtol=0, atol=PROB_ATOL)


@pytest.mark.parametrize("name", ("cnn", "transformer"))
def test_supervised_train_step_matches_cpu(name: str, models: ModelsConfig, batch: FeatureBatch,
                                           labelled) -> None:
    """Two steps on the same mini-batch: the first loss is the forward pass at equal weights, the second
    shows the backward pass and the AdamW update agree. Dropout 0: the devices' RNG streams differ."""
    cpu, gpu = expert_pair(name, models, batch, labelled, dropout=0.0)
    y, r = labelled
    idx = np.random.default_rng(0).choice(np.flatnonzero(y >= 0), size=256, replace=False)
    mb = batch.take(idx)
    for _ in range(2):
        a = cpu.train_step(mb, y[idx], r[idx])
        b = gpu.train_step(mb, y[idx], r[idx])
        np.testing.assert_allclose(b["loss"], a["loss"], rtol=LOSS_RTOL)
        np.testing.assert_allclose(b["grad_norm"], a["grad_norm"], rtol=GRAD_RTOL)
    np.testing.assert_allclose(gpu.predict_many(batch).probs, cpu.predict_many(batch).probs, atol=PROB_ATOL)


DQN_TRAIN = dict(warmup=100, update_every=200, epsilon_start=0.0, epsilon_end=0.0)


def decisive_chunk(dqn: DQNExpert, batch: FeatureBatch, length: int = 512) -> slice:
    """The first ``length`` consecutive bars where, in every state and at every position, the best Q leads
    the runner-up by Q_MARGIN: the greedy episode is then the same on both devices. Random weights give
    ~1e-5 at worst; this only guards against a near-tie that rounding tips the other way (no device bug)."""
    for start in range(0, len(batch) - length + 1, length):
        s = dqn.states(batch.take(slice(start, start + length)))
        q = np.sort(np.stack([dqn.q_values(s, i) for i in range(3)]), axis=-1)
        if (q[..., -1] - q[..., -2]).min() >= Q_MARGIN:
            return slice(start, start + length)
    pytest.fail(f"no {length}-bar chunk keeps a Q margin of {Q_MARGIN}")


def test_dqn_train_step_matches_cpu(models: ModelsConfig, batch: FeatureBatch, labelled) -> None:
    """One greedy episode over 512 consecutive real bars (epsilon 0, so every action is the argmax of Q on
    that device), then two replay updates (update_every 200) from the same seeded replay draws."""
    cpu, gpu = expert_pair("dqn", models, batch, labelled, **DQN_TRAIN)
    assert isinstance(cpu, DQNExpert)
    y, r = labelled
    chunk = decisive_chunk(cpu, batch)
    a = cpu.train_step(batch.take(chunk), y[chunk], r[chunk])
    b = gpu.train_step(batch.take(chunk), y[chunk], r[chunk])
    assert a["buffer"] == b["buffer"] == 511
    assert b["reward"] == a["reward"]  # same actions -> the same float64 sum of the same rewards
    assert np.isfinite(a["loss"])
    np.testing.assert_allclose(b["loss"], a["loss"], rtol=LOSS_RTOL)
    np.testing.assert_allclose(gpu.predict_many(batch).probs, cpu.predict_many(batch).probs, atol=PROB_ATOL)


@pytest.mark.parametrize("name", EXPERTS)
def test_checkpoint_trained_on_cuda_serves_on_cpu(name: str, models: ModelsConfig, batch: FeatureBatch,
                                                   labelled, tmp_path: Path) -> None:
    """A GPU trainer's checkpoint (optimiser state on cuda) loads on a CPU engine, predicts the same and
    trains on there (the optimiser state moved with it)."""
    params = DQN_TRAIN if name == "dqn" else {"dropout": 0.0}
    gpu = expert_on(name, models, batch, CUDA.type, **params)
    y, r = labelled
    chunk = slice(0, 512)
    gpu.train_step(batch.take(chunk), y[chunk], r[chunk])
    gpu.save(tmp_path / "expert.pt")
    cpu = expert_on(name, models, batch, "cpu", **params)
    cpu.load(tmp_path / "expert.pt")
    assert_outputs_close(gpu.predict_many(batch), cpu.predict_many(batch), cpu.class_mean_returns())
    assert np.isfinite(cpu.train_step(batch.take(chunk), y[chunk], r[chunk])["loss"])


# ------------------------------------------------------------------------------------------ MoE gate


def test_gate_fuses_cuda_outputs_like_cpu_outputs(models: ModelsConfig, batch: FeatureBatch,
                                                  labelled) -> None:
    """The gate has no device: it is numpy float64 on the host by design (NN/moe.py: identical numbers in
    fast and event backtests), and experts hand it numpy whatever their device. So the check is that
    fusing the cuda experts' outputs gives what fusing the cpu experts' outputs gives."""
    pairs = {n: expert_pair(n, models, batch, labelled) for n in EXPERTS}
    p_cpu = np.stack([pairs[n][0].predict_many(batch).probs for n in EXPERTS], axis=1)
    p_gpu = np.stack([pairs[n][1].predict_many(batch).probs for n in EXPERTS], axis=1)
    y, _ = labelled
    known = np.flatnonzero(y >= 0)
    fit, rest = known[:2000], known[2000:]
    hedge = MoEGate(list(EXPERTS), models.moe, batch.regime.shape[1])  # untrained: uniform Hedge weights
    _, f_cpu = hedge.fuse(p_cpu[rest], batch.regime[rest])
    _, f_gpu = hedge.fuse(p_gpu[rest], batch.regime[rest])
    np.testing.assert_allclose(f_gpu, f_cpu, rtol=0, atol=GATE_ATOL)
    gate = MoEGate(list(EXPERTS), models.moe, batch.regime.shape[1])
    gate.fit(p_cpu[fit], batch.regime[fit], y[fit])
    w_cpu, f_cpu = gate.fuse(p_cpu[rest], batch.regime[rest])
    w_gpu, f_gpu = gate.fuse(p_gpu[rest], batch.regime[rest])
    assert f_gpu.dtype == np.float64
    np.testing.assert_allclose(w_gpu, w_cpu, rtol=0, atol=GATE_ATOL)
    np.testing.assert_allclose(f_gpu, f_cpu, rtol=0, atol=GATE_ATOL)


# ------------------------------------------------------------------------------------------ pinned transfers


class TransferSpy:
    """Records, while installed, every pin_memory() call and every .to() whose source is pinned host
    memory, so a test can see that host->device copies of the experts' inputs are pinned + non-blocking."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.pinned = 0
        self.copies: list[bool] = []  # non_blocking of each copy out of pinned memory
        real_pin, real_to = torch.Tensor.pin_memory, torch.Tensor.to

        def pin(t: torch.Tensor, *args, **kwargs) -> torch.Tensor:
            out = real_pin(t, *args, **kwargs)
            self.pinned += int(out.is_pinned())
            return out

        def to(t: torch.Tensor, *args, **kwargs) -> torch.Tensor:
            if t.device.type == "cpu" and t.is_pinned():
                self.copies.append(bool(kwargs.get("non_blocking", False)))
            return real_to(t, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, "pin_memory", pin)
        monkeypatch.setattr(torch.Tensor, "to", to)


def test_to_device_is_pinned_non_blocking_and_exact(batch: FeatureBatch,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    arrays = [(batch.windows, np.float32), (batch.flat, np.float32), (batch.close, np.float32),
              (np.arange(len(batch), dtype=np.int64), None)]
    spy = TransferSpy(monkeypatch)
    for arr, dtype in arrays:
        got = to_device(arr, CUDA, dtype)
        want = torch.as_tensor(np.asarray(arr, dtype=dtype), device=CUDA)  # the plain, pageable copy
        assert got.is_cuda and got.dtype == want.dtype and got.shape == want.shape
        assert torch.equal(got, want)  # a copy is a copy: bit for bit
    assert spy.pinned == len(arrays) and spy.copies == [True] * len(arrays)
    # the cpu path is unchanged: no staging, memory shared when no conversion is needed
    host = to_device(batch.flat, CPU, np.float32)
    assert not host.is_pinned() and np.shares_memory(host.numpy(), batch.flat)


@pytest.mark.parametrize("name", EXPERTS)
def test_expert_inputs_use_the_pinned_path(name: str, models: ModelsConfig, batch: FeatureBatch, labelled,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """predict (the live, per-decision path) and train_step move their numpy inputs through to_device:
    staged in pinned memory, copied non-blocking; and the outputs equal those of plain pageable copies."""
    params = DQN_TRAIN if name == "dqn" else {"dropout": 0.0}
    cpu, gpu = expert_pair(name, models, batch, labelled, **params)
    part = batch.take(slice(0, 600))
    plain = gpu.predict_many(part)  # reference before the spy...
    spy = TransferSpy(monkeypatch)
    out = gpu.predict_many(part)
    one = gpu.predict(part)
    # supervised: windows + flat per chunk; dqn: states + positions per chunk
    assert spy.pinned >= 4 and spy.copies and all(spy.copies)
    # same device, bit-equal inputs (test above): equal up to kernel nondeterminism, none expected here
    np.testing.assert_allclose(out.probs, plain.probs, rtol=0, atol=1e-7)
    np.testing.assert_allclose(one.probs, plain.probs[-1], rtol=0, atol=PROB_ATOL)
    monkeypatch.undo()
    # ...and against plain pageable copies: swap the helper for torch.as_tensor and compare
    def pageable(array: np.ndarray, device: torch.device, dtype=None) -> torch.Tensor:
        return torch.as_tensor(np.asarray(array, dtype=dtype), device=device)

    monkeypatch.setattr("NN.experts.supervised.to_device", pageable)
    monkeypatch.setattr("NN.experts.dqn.to_device", pageable)
    np.testing.assert_allclose(gpu.predict_many(part).probs, plain.probs, rtol=0, atol=1e-7)
    monkeypatch.undo()
    y, r = labelled
    spy = TransferSpy(monkeypatch)
    gpu.train_step(part, np.where(y[:600] < 0, 1, y[:600]), np.nan_to_num(r[:600]))
    assert spy.pinned >= 2 and spy.copies and all(spy.copies)


# ------------------------------------------------------------------------------------------ Kronos sampler


@pytest.fixture(scope="module")
def samplers() -> tuple[KronosSampler, KronosSampler]:
    """One randomly initialised nano tokenizer + predictor, on cpu and (a deep copy) on cuda."""
    torch.manual_seed(0)
    tok, mdl = KronosTokenizer(TOKENIZER_PRESETS["nano"]), KronosModel(PREDICTOR_PRESETS["nano"])
    gpu = KronosSampler(copy.deepcopy(tok).to(CUDA), copy.deepcopy(mdl).to(CUDA))
    return KronosSampler(tok, mdl), gpu


def normalised(ctx: pd.DataFrame) -> tuple[np.ndarray, Scaler]:
    raw = candle_features(ctx)
    scaler = Scaler.fit(raw)
    return scaler.transform(raw), scaler


def code_margin(tok: KronosTokenizer, ctx: pd.DataFrame) -> float:
    """Smallest |component| of the context's code vectors: a code bit is the sign of a component, and one
    this close to 0 could take the other sign on the other device (fp32 rounding), changing a token."""
    x, _ = normalised(ctx)
    with torch.inference_mode():
        z = tok.encode_continuous(torch.from_numpy(x)[None].to(next(tok.parameters()).device))
    return float(z.abs().min())


def well_conditioned_ends(tok: KronosTokenizer, btc: pd.DataFrame, length: int, count: int,
                          first_end: int = 0) -> list[int]:
    """``count`` end rows (exclusive, >= first_end) of real ``length``-bar contexts whose codes keep
    Z_MARGIN from the sign boundary. Random weights usually give ~1e-4 on the first try; this only guards
    the rare input where a tie would turn a rounding difference into a different token (not a device bug)."""
    ends = [e for e in range(max(length, first_end), len(btc) + 1, 97)
            if code_margin(tok, btc.iloc[e - length:e]) >= Z_MARGIN]
    if len(ends) < count:
        pytest.fail(f"fewer than {count} real contexts of {length} bars keep a code margin of {Z_MARGIN}")
    return ends[:count]


@pytest.fixture(scope="module")
def kronos_ctx(samplers, btc: pd.DataFrame) -> pd.DataFrame:
    end = well_conditioned_ends(samplers[0].tokenizer, btc, 256, 1)[0]
    return btc.iloc[end - 256:end].reset_index(drop=True)


def test_kronos_encode_matches_cpu(samplers, kronos_ctx: pd.DataFrame) -> None:
    cpu, gpu = samplers
    x, _ = normalised(kronos_ctx)
    xt = torch.from_numpy(x)[None]
    with torch.inference_mode():
        z_cpu = cpu.tokenizer.encode_continuous(xt)
        z_gpu = gpu.tokenizer.encode_continuous(xt.to(CUDA)).cpu()
        ids_cpu, ids_gpu = cpu.tokenizer.encode(xt), gpu.tokenizer.encode(xt.to(CUDA))
    np.testing.assert_allclose(z_gpu.numpy(), z_cpu.numpy(), rtol=0, atol=Z_ATOL)
    for a, b in zip(ids_cpu, ids_gpu, strict=True):
        assert torch.equal(a, b.cpu())


def test_kronos_filter_logits_matches_cpu() -> None:
    """Nucleus filtering has two implementations: numpy sort on cpu, torch.sort on accelerators. They
    keep the same tokens, except where a token's preceding mass is within float rounding of top_p."""
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn((64, 1024), generator=gen) * 3
    for top_k, top_p in ((0, 0.9), (0, 0.5), (5, 1.0), (1, 1.0)):
        a = filter_logits(logits, top_k, top_p)
        b = filter_logits(logits.to(CUDA), top_k, top_p).cpu()
        differ = torch.isinf(a) != torch.isinf(b)
        if differ.any():  # allowed only at the top_p boundary (float64 recomputation on the host)
            p = torch.softmax(logits.double(), dim=-1)
            srt, order = torch.sort(p, dim=-1, descending=True)
            before = torch.empty_like(p).scatter_(1, order, srt.cumsum(-1) - srt)
            assert top_k == 0, "top-k compares raw logits: it must agree exactly"
            assert (before[differ] - top_p).abs().max() < 1e-4, "filters differ off the top_p boundary"
        keep = ~torch.isinf(a) & ~torch.isinf(b)
        assert torch.equal(a[keep], b[keep])


def test_kronos_greedy_forecast_matches_cpu(samplers, kronos_ctx: pd.DataFrame) -> None:
    """Greedy (top_k 1): no randomness, so the same tokens on both devices and decoded bars equal within
    Z_ATOL in normalised units (prices: Z_ATOL x the context's std); the oracle agrees on cuda too."""
    cpu, gpu = samplers
    cfg = SampleConfig(samples=1, top_k=1)
    a = cpu.forecast(kronos_ctx, 16, cfg)
    b = gpu.forecast(kronos_ctx, 16, cfg)
    c = gpu.forecast(kronos_ctx, 16, cfg, use_oracle=True)
    _, scaler = normalised(kronos_ctx)
    scale = scaler.std.astype(np.float64) + EPS
    np.testing.assert_array_equal(a.future_ts, b.future_ts)
    np.testing.assert_allclose(b.paths / scale, a.paths / scale, rtol=0, atol=Z_ATOL)
    np.testing.assert_allclose(c.paths / scale, b.paths / scale, rtol=0, atol=Z_ATOL)


def test_kronos_sampling_on_cuda_is_seeded_and_matches_the_oracle(samplers, kronos_ctx: pd.DataFrame) -> None:
    """On one device the seed fixes the paths, and the cached sampler draws the same numbers in the same
    order as the full-recompute oracle (as tests/test_kronos_compat.py checks on cpu)."""
    _, gpu = samplers
    cfg = SampleConfig(samples=8, temperature=1.3, top_p=0.8, seed=7)
    fast = gpu.forecast(kronos_ctx, 8, cfg)
    again = gpu.forecast(kronos_ctx, 8, cfg)
    slow = gpu.forecast(kronos_ctx, 8, cfg, use_oracle=True)
    np.testing.assert_array_equal(again.paths, fast.paths)
    assert np.unique(fast.paths[:, -1, 3]).size > 1
    _, scaler = normalised(kronos_ctx)
    scale = scaler.std.astype(np.float64) + EPS
    np.testing.assert_allclose(slow.paths / scale, fast.paths / scale, rtol=0, atol=Z_ATOL)


def same_distribution(a: np.ndarray, b: np.ndarray, n_sigma: float = N_SIGMA) -> list[str]:
    """Two independent samples of one distribution: the differences of their means, and the share of ``b``
    below ``a``'s 10/50/90% quantiles, each within ``n_sigma`` standard errors. Returns what failed."""
    n, m = len(a), len(b)
    bad = []
    se = np.sqrt(a.var(ddof=1) / n + b.var(ddof=1) / m)
    if abs(a.mean() - b.mean()) > n_sigma * se:
        bad.append(f"mean {a.mean():.3e} vs {b.mean():.3e} (se {se:.1e})")
    for tau in (0.1, 0.5, 0.9):
        q = np.quantile(a, tau)
        share = (np.sum(b < q) + 0.5 * np.sum(b == q)) / m  # ties split half-half
        se_q = np.sqrt(tau * (1 - tau) * (1 / n + 1 / m))  # both samples' sampling error
        if abs(share - tau) > n_sigma * se_q:
            bad.append(f"{tau:.0%} quantile: {share:.3f} of the other sample below it (se {se_q:.3f})")
    return bad


def test_kronos_sampled_paths_match_cpu_in_distribution(samplers, kronos_ctx: pd.DataFrame) -> None:
    """Same seed, but the devices' random streams differ (cpu Mersenne Twister, cuda Philox), so the paths
    differ one by one; what must agree is their distribution: the log return at every step of the
    horizon, by mean and quantiles (same_distribution), for KRONOS_PATHS paths per device."""
    cpu, gpu = samplers
    cfg = SampleConfig(samples=KRONOS_PATHS, top_p=0.9, seed=0)
    a = cpu.forecast(kronos_ctx, 16, cfg)
    b = gpu.forecast(kronos_ctx, 16, cfg)
    assert a.paths.shape == b.paths.shape == (KRONOS_PATHS, 16, 6)
    ra, rb = np.log(a.closes / a.last_close), np.log(b.closes / b.last_close)
    bad = {step: msg for step in (0, 7, 15) if (msg := same_distribution(ra[:, step], rb[:, step]))}
    assert not bad, f"cpu and cuda paths differ in distribution: {bad}"


def test_kronos_expert_on_cuda_matches_cpu(models: ModelsConfig, batch: FeatureBatch,
                                           btc: pd.DataFrame) -> None:
    """The Expert interface on cuda: greedy single-path forecasts (no randomness) at real sample times
    give the same probabilities and returns as on cpu."""
    greedy = {"samples": 1, "top_k": 1, "calibrated": False, "lookback": 128}
    params = {**models.experts["kronos"].params, **greedy}
    state = random_kronos_state()
    pair = []
    for dev in ("cpu", CUDA.type):
        cfg = models.experts["kronos"].model_copy(update={"device": dev, "params": params})
        ex = KronosExpert("kronos", cfg, batch.spec)
        ex.load_state_dict(state)
        pair.append(ex)
    cpu, gpu = pair
    ts = btc["ts"].to_numpy()
    first_row = int(np.searchsorted(ts, batch.ts[0]))  # the batch starts after the features' warm-up
    ends = np.asarray(well_conditioned_ends(cpu.bundle.tokenizer, btc, 128, 3, first_end=first_row + 1))
    pos = np.searchsorted(batch.ts, ts[ends - 1])  # samples at the close of each context's last bar
    assert np.array_equal(batch.ts[pos], ts[ends - 1])
    part = batch.take(pos)
    a, b = cpu.predict_many(part, btc), gpu.predict_many(part, btc)
    assert np.all(a.extras["valid"] == 1) and np.all(b.extras["valid"] == 1)
    np.testing.assert_allclose(b.probs, a.probs, rtol=0, atol=PROB_ATOL)
    np.testing.assert_allclose(b.expected_return, a.expected_return, rtol=0, atol=RET_ATOL)
    np.testing.assert_allclose(b.extras["q50"], a.extras["q50"], rtol=0, atol=RET_ATOL)
