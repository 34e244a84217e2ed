"""Monte-Carlo forecasting with a key/value-cached, batched sampler, and the reference-style
full-recompute oracle kept as the ground truth for tests and the benchmark.

Fast path (``KronosSampler.sample``): the tokenizer encodes the context once; the predictor runs over
the context once with batch 1 and its keys/values become a prefix shared by all N paths (one tensor,
never copied per path); then each step feeds ONE new token per path through the transformer, the
coarse head and the fine (dependency) head. The tokenizer decodes only the H new bars, attending to
the cached keys/values of the decoded context.

Sliding: the reference caps the window at ``max_context`` bars; once context + generated bars exceed
it, the oldest bars drop and rotary positions are re-based, so cached keys are invalid. Then (and
only then) we recompute the whole window every step, batched over the paths, exactly as the
reference does. lookback 480 + horizon 30 stays inside 512 and never slides."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from .model import KronosModel
from .normalize import Scaler, candle_features, future_ts, infer_step_ms, time_stamps
from .tokenizer import KronosTokenizer


@dataclass(frozen=True, slots=True)
class SampleConfig:
    samples: int = 32
    temperature: float = 1.0
    top_k: int = 0  # > 0: keep the k largest logits (top_p is then ignored), 1 = greedy
    top_p: float = 0.9  # < 1: nucleus filtering
    seed: int | None = None
    max_context: int = 512

    def __post_init__(self) -> None:
        if self.samples < 1:
            raise ValueError(f"samples must be >= 1, got {self.samples}")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.max_context < 2:
            raise ValueError(f"max_context must be >= 2, got {self.max_context}")


def _nucleus_threshold(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """Per row, the smallest probability the reference's nucleus keeps [N, 1]: walking tokens in
    descending probability, a token stays while the mass ranked before it is <= top_p (so the most
    likely token and the one crossing top_p stay). Only sorted VALUES are needed, which numpy sorts
    ~30x faster than torch.sort on CPU; on accelerators torch.sort is used."""
    if probs.device.type == "cpu":
        srt = -np.sort(-probs.numpy(), axis=-1)
        before = np.cumsum(srt, axis=-1) - srt  # mass ranked strictly before each token
        n_keep = np.maximum((before <= top_p).sum(axis=-1), 1)
        return torch.from_numpy(srt[np.arange(srt.shape[0]), n_keep - 1][:, None].copy())
    tsrt = torch.sort(probs, dim=-1, descending=True).values
    tbefore = tsrt.cumsum(dim=-1) - tsrt
    t_keep = (tbefore <= top_p).sum(dim=-1).clamp(min=1)
    return tsrt.gather(-1, (t_keep - 1)[:, None])


def filter_logits(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """The reference's filtering: top-k if k > 0 (ties kept), else nucleus (see _nucleus_threshold)."""
    if top_k > 0:
        k = min(top_k, logits.shape[-1])
        kth = torch.topk(logits, k, dim=-1).values[..., -1:]
        return logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        probs = torch.softmax(logits, dim=-1)
        return logits.masked_fill(probs < _nucleus_threshold(probs, top_p), float("-inf"))
    return logits


def draw(logits: torch.Tensor, cfg: SampleConfig, gen: torch.Generator | None) -> torch.Tensor:
    """One token id per row of logits [N, V], from softmax(filtered logits / T).

    Sampling is by inverse CDF with one uniform per row (same distribution as the reference's
    torch.multinomial, ~100x cheaper on CPU); the fast path and the oracle share this function, so
    one seed gives the same paths through both."""
    if cfg.top_k == 1:  # greedy: the reference's multinomial over a single surviving token
        return logits.argmax(dim=-1)
    probs = torch.softmax(filter_logits(logits / cfg.temperature, cfg.top_k, cfg.top_p), dim=-1)
    cdf = probs.cumsum(dim=-1)
    u = torch.rand((probs.shape[0], 1), generator=gen, device=probs.device, dtype=cdf.dtype) * cdf[:, -1:]
    # right=True: the first token whose cumulative mass exceeds u, never a zero-probability one
    return torch.searchsorted(cdf, u, right=True)[:, 0].clamp_(max=probs.shape[-1] - 1)


def anchor_paths(paths: np.ndarray, last_close: float) -> np.ndarray:
    """Rescale each path's prices (open, high, low, close) so its first bar opens at ``last_close``.

    A small tokenizer trained for a minute reconstructs price LEVELS with an error of the order of the
    context's spread (the quick nano Kronos: ~65 bps on the sample's 1m bars), and every decoded path
    carries it, so its returns against the real last close are mostly that error. The next bar's open
    is in reality the last close; measuring a path from its own decoded first open keeps the move the
    model predicts and drops the level error (bench/bench_kronos_quick.py). Volumes stay as decoded."""
    out = paths.copy()
    first_open = np.where(np.abs(paths[:, :1, 0]) > 0, paths[:, :1, 0], last_close)  # [N, 1]
    out[:, :, :4] *= (last_close / first_open)[:, :, None]
    return out


@dataclass
class Forecast:
    """N sampled paths in price units plus the history they continue."""

    history_ts: np.ndarray  # int64 [P]
    history: np.ndarray  # float64 [P, 6] open, high, low, close, volume, amount
    future_ts: np.ndarray  # int64 [H]
    paths: np.ndarray  # float64 [N, H, 6]
    seconds: float
    config: SampleConfig
    meta: dict = field(default_factory=dict)

    @property
    def last_close(self) -> float:
        return float(self.history[-1, 3])

    @property
    def closes(self) -> np.ndarray:
        return self.paths[:, :, 3]


_ALLOCATOR_TUNED = False


def tune_allocator() -> bool:
    """Keep freed large blocks in glibc's heap instead of unmapping them.

    Each sampler step allocates a few MB of scores and activations; with glibc's default 128 KiB mmap
    threshold every such block is a fresh mmap whose pages fault in again (profiled: about half of
    the step time on CPU). Raising the thresholds once per process lets malloc reuse the blocks.
    Set MOE_KRONOS_MALLOC_TUNING=0 to leave the allocator alone. Returns True when applied."""
    global _ALLOCATOR_TUNED
    if _ALLOCATOR_TUNED or os.environ.get("MOE_KRONOS_MALLOC_TUNING", "1") == "0":
        return _ALLOCATOR_TUNED
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        ok = libc.mallopt(m_mmap_threshold, 1 << 30) == 1 and libc.mallopt(m_trim_threshold, 1 << 30) == 1
    except (OSError, AttributeError):  # not glibc (macOS, musl, Windows): nothing to tune
        ok = False
    _ALLOCATOR_TUNED = ok
    return ok


class KronosSampler:
    def __init__(self, tokenizer: KronosTokenizer, model: KronosModel, *, anchor: str | None = None) -> None:
        """``anchor="first_open"``: each path's prices are rescaled so its first bar opens at the last
        close (see ``anchor_paths``); None (released models, the reference): decoded prices as they are."""
        if anchor not in (None, "first_open"):
            raise ValueError(f"anchor must be None or 'first_open', got {anchor!r}")
        self.anchor = anchor
        if next(model.parameters()).device.type == "cpu":
            tune_allocator()
        self.tokenizer = tokenizer.eval()
        self.model = model.eval()
        self.device = next(model.parameters()).device

    def _gen(self, seed: int | None) -> torch.Generator | None:
        if seed is None:
            return None
        g = torch.Generator(device=self.device)
        g.manual_seed(int(seed))
        return g

    def _tensors(self, x: np.ndarray, st_ctx: np.ndarray, st_fut: np.ndarray):
        dev = self.device
        return (torch.as_tensor(x, dtype=torch.float32, device=dev)[None],
                torch.as_tensor(np.concatenate([st_ctx, st_fut]), dtype=torch.long, device=dev)[None])

    # ------------------------------------------------------------------ fast path
    @torch.inference_mode()
    def sample(self, x: np.ndarray, st_ctx: np.ndarray, st_fut: np.ndarray, cfg: SampleConfig) -> torch.Tensor:
        """x [P, 6] normalised context, stamps [P, 5] and [H, 5] -> normalised paths [N, H, 6]."""
        xt, stamps = self._tensors(x, st_ctx, st_fut)
        p, h_len, n, w = x.shape[0], st_fut.shape[0], cfg.samples, cfg.max_context
        gen = self._gen(cfg.seed)
        c1, c2 = self.tokenizer.encode(xt)  # [1, P]
        new1 = c1.new_empty((n, h_len))
        new2 = c2.new_empty((n, h_len))
        cached = p <= w
        if cached:
            h, caches, dep = self.model.prefix(c1[:, -p:], c2[:, -p:], stamps[:, :p], n, h_len)
            h_last = h[:, -1:]
        for i in range(h_len):
            length = p + i
            if cached and length <= w:
                if i > 0:
                    h_last = self.model.step(new1[:, i - 1:i], new2[:, i - 1:i], stamps[:, length - 1:length],
                                             caches, dep)
                l1 = self.model.s1_logits(h_last[:, 0]).expand(n, -1)
                a = draw(l1, cfg, gen)
                b = draw(self.model.s2_logits_cached(h_last, a, dep), cfg, gen)
            else:  # the window slides: recompute it, positions re-based (the reference's behaviour)
                start = length - w
                s1w, s2w = self._window(c1, c2, new1, new2, start, length, n)
                hw = self.model.hidden(s1w, s2w, stamps[:, start:length].expand(n, -1, -1))
                a = draw(self.model.s1_logits(hw[:, -1]), cfg, gen)
                b = draw(self.model.s2_logits_for_next(hw, a), cfg, gen)
            new1[:, i] = a
            new2[:, i] = b
        total = p + h_len
        if total <= w:
            dcache = self.tokenizer.decode_prefix_cache(c1, c2, n, h_len)
            return self.tokenizer.decode_cached(new1, new2, dcache)
        start = max(0, total - w)
        s1w, s2w = self._window(c1, c2, new1, new2, start, total, n)
        return self.tokenizer.decode(s1w, s2w)[:, -h_len:]

    @staticmethod
    def _window(c1, c2, new1, new2, start: int, end: int, n: int):
        p = c1.shape[1]
        s1 = torch.cat((c1.expand(n, -1), new1[:, : end - p]), dim=1)[:, start:end]
        s2 = torch.cat((c2.expand(n, -1), new2[:, : end - p]), dim=1)[:, start:end]
        return s1, s2

    # ------------------------------------------------------------------ oracle
    @torch.inference_mode()
    def oracle(self, x: np.ndarray, st_ctx: np.ndarray, st_fut: np.ndarray, cfg: SampleConfig) -> torch.Tensor:
        """The reference algorithm: repeat the context per path and recompute the whole window at every
        step, then decode the whole final window. Slow; the ground truth for tests and the benchmark."""
        xt, stamps = self._tensors(x, st_ctx, st_fut)
        n, w, h_len, p = cfg.samples, cfg.max_context, st_fut.shape[0], x.shape[0]
        gen = self._gen(cfg.seed)
        s1, s2 = self.tokenizer.encode(xt.repeat(n, 1, 1))
        stamps = stamps.repeat(n, 1, 1)
        for i in range(h_len):
            end = p + i
            start = max(0, end - w)
            hw = self.model.hidden(s1[:, start:end], s2[:, start:end], stamps[:, start:end])
            a = draw(self.model.s1_logits(hw[:, -1]), cfg, gen)
            b = draw(self.model.s2_logits_for_next(hw, a), cfg, gen)
            s1 = torch.cat((s1, a[:, None]), dim=1)
            s2 = torch.cat((s2, b[:, None]), dim=1)
        start = max(0, p + h_len - w)
        return self.tokenizer.decode(s1[:, start:], s2[:, start:])[:, -h_len:]

    # ------------------------------------------------------------------ price units
    def forecast(self, candles: pd.DataFrame, horizon: int, cfg: SampleConfig, *, step_ms: int | None = None,
                 use_oracle: bool = False, future: np.ndarray | None = None) -> Forecast:
        """Forecast ``horizon`` bars after the last row of ``candles`` (column ``ts`` in ms plus OHLCV,
        optional amount); every row is context, so pass exactly the lookback you want. ``future``: the open
        times of the next ``horizon`` bars when they do not follow at a fixed step (a market's calendar:
        the bar after 15:59 is the next session's 09:30); their time stamps are the model's inputs too."""
        if horizon < 1:
            raise ValueError(f"horizon must be >= 1, got {horizon}")
        if "ts" not in candles.columns:
            raise ValueError("candles need a 'ts' column (open time, int64 ms UTC)")
        if len(candles) < 2:
            raise ValueError(f"need at least 2 context bars, got {len(candles)}")
        ts = candles["ts"].to_numpy(dtype=np.int64)
        if np.any(np.diff(ts) <= 0):
            raise ValueError("candle timestamps must be strictly increasing")
        raw = candle_features(candles)
        scaler = Scaler.fit(raw)
        if future is not None:
            fut = np.asarray(future, dtype=np.int64)
            if fut.shape != (horizon,) or fut[0] <= ts[-1] or np.any(np.diff(fut) <= 0):
                raise ValueError(f"future: {horizon} increasing bar times after the context's last bar expected")
        else:
            fut = future_ts(int(ts[-1]), step_ms or infer_step_ms(ts), horizon)
        t0 = time.perf_counter()
        fn = self.oracle if use_oracle else self.sample
        z = fn(scaler.transform(raw), time_stamps(ts), time_stamps(fut), cfg)
        paths = scaler.inverse(z.float().cpu().numpy().astype(np.float64))
        if self.anchor == "first_open":
            paths = anchor_paths(paths, float(raw[-1, 3]))
        return Forecast(history_ts=ts, history=candle_features(candles, np.float64), future_ts=fut, paths=paths,
                        seconds=time.perf_counter() - t0, config=cfg)
