"""Building blocks shared by the Kronos tokenizer and predictor (ARCHITECTURE.md, "Shared building
blocks"). Parameter names mirror the released state dicts.

Two attention paths exist: the full-window one (training, the reference-style oracle, prefixes) uses
fused SDPA; the cached one serves the sampler, where N paths share ONE prefix key/value tensor of
batch 1 (never copied per path) and each path owns a preallocated buffer for its new positions."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float32:  # one fused kernel; same formula
            return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)
        xf = x.float()
        out = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return out.type_as(x) * self.weight


class Rotary(nn.Module):
    """Rotary position embedding, "rotate half" convention; owns the ``inv_freq`` buffer."""

    def __init__(self, head_dim: int) -> None:
        super().__init__()
        inv = 1.0 / (10000 ** (torch.arange(0, head_dim, 2).float() / head_dim))
        self.inv_freq: torch.Tensor
        self.register_buffer("inv_freq", inv)

    def cos_sin(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin of shape [T, head_dim] for integer positions [T]."""
        freqs = torch.outer(positions.to(self.inv_freq.dtype), self.inv_freq)
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos(), emb.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin


@dataclass
class LayerCache:
    """Keys/values of one attention layer: a shared prefix [1, H, P, hd] and per-path new positions
    written in place into preallocated [N, H, cap, hd] buffers (``n`` of them filled). For the
    duration of one forecast it also holds fused projection weights and the rotary tables of the new
    positions, so each step runs one matmul for q|k|v and one for w1|w3."""

    pk: torch.Tensor
    pv: torch.Tensor
    nk: torch.Tensor
    nv: torch.Tensor
    n: int = 0
    w_qkv: torch.Tensor | None = None
    b_qkv: torch.Tensor | None = None
    w_13: torch.Tensor | None = None
    cos: torch.Tensor | None = None  # [cap, hd] for positions P .. P+cap-1
    sin: torch.Tensor | None = None

    @property
    def prefix_len(self) -> int:
        return int(self.pk.shape[2])


def two_part_attention(q: torch.Tensor, pk: torch.Tensor, pv: torch.Tensor,
                       nk: torch.Tensor | None, nv: torch.Tensor | None,
                       new_mask: torch.Tensor | None) -> torch.Tensor:
    """softmax(q·[pk | nk]ᵀ/√d)·[pv | nv] without materialising the prefix per path.

    q [N, H, T, hd]; pk/pv [1, H, P, hd] shared by all N; nk/nv [N, H, S, hd] or None;
    new_mask [T, S] boolean (True = may attend) or None. Returns [N, H, T, hd].
    Prefix scores are one batched matmul per head against the single shared prefix ([H, N·T, P]);
    the softmax spans both blocks through a shared row maximum instead of concatenating them."""
    n, h, t, hd = q.shape
    scale = 1.0 / math.sqrt(hd)
    qh = q.permute(1, 0, 2, 3).reshape(h, n * t, hd)
    sp = torch.bmm(qh, pk[0].transpose(1, 2))  # [H, N*T, P]
    if nk is None or nv is None or nk.shape[2] == 0:
        probs = torch.softmax(sp.mul_(scale), dim=-1)
        return torch.bmm(probs, pv[0]).view(h, n, t, hd).permute(1, 0, 2, 3)
    sn = torch.matmul(q, nk.transpose(-1, -2)).mul_(scale)  # [N, H, T, S]
    if new_mask is not None:
        sn = sn.masked_fill(~new_mask, float("-inf"))
    sn = sn.permute(1, 0, 2, 3).reshape(h, n * t, -1)  # [H, N*T, S]
    # softmax over [prefix | new] without concatenating the score blocks: shared max, two exps
    sp.mul_(scale)
    m = torch.maximum(sp.amax(dim=-1, keepdim=True), sn.amax(dim=-1, keepdim=True))
    ep = sp.sub_(m).exp_()
    en = sn.sub_(m).exp_()
    denom = ep.sum(dim=-1, keepdim=True).add_(en.sum(dim=-1, keepdim=True))
    out = torch.bmm(ep, pv[0])  # [H, N*T, hd]
    out = out.view(h, n, t, hd).permute(1, 0, 2, 3)
    pn = en.view(h, n, t, -1).permute(1, 0, 2, 3)  # [N, H, T, S]
    out = out + torch.matmul(pn, nv)
    return out / denom.view(h, n, t, 1).permute(1, 0, 2, 3)


class AttentionProjections(nn.Module):
    """What every Kronos attention owns: biased q/k/v/out projections and a rotary buffer (their
    names are the released state-dict keys), plus the head split and merge."""

    def __init__(self, d_model: int, n_heads: int, attn_dropout_p: float = 0.0,
                 resid_dropout_p: float = 0.0) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.head_dim = d_model // n_heads
        self.q_proj = nn.Linear(d_model, d_model)
        self.k_proj = nn.Linear(d_model, d_model)
        self.v_proj = nn.Linear(d_model, d_model)
        self.out_proj = nn.Linear(d_model, d_model)
        self.rotary = Rotary(self.head_dim)
        self.attn_dropout_p = attn_dropout_p
        self.resid_dropout = nn.Dropout(resid_dropout_p)

    def heads(self, x: torch.Tensor, proj: nn.Linear) -> torch.Tensor:
        """[B, T, D] -> projected [B, H, T, head_dim]."""
        b, t, _ = x.shape
        return proj(x).view(b, t, self.n_heads, self.head_dim).transpose(1, 2)

    def out(self, o: torch.Tensor) -> torch.Tensor:
        """[B, H, T, head_dim] -> merged heads, output projection, residual dropout."""
        b, _, t, _ = o.shape
        return self.resid_dropout(self.out_proj(o.transpose(1, 2).reshape(b, t, -1)))


class SelfAttention(AttentionProjections):
    """Causal multi-head self-attention with rotary positions and biased projections."""

    def _qkv(self, x: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, ...]:
        q, k, v = self.heads(x, self.q_proj), self.heads(x, self.k_proj), self.heads(x, self.v_proj)
        cos, sin = self.rotary.cos_sin(positions)
        return apply_rotary(q, cos, sin), apply_rotary(k, cos, sin), v

    def forward(self, x: torch.Tensor, return_kv: bool = False
                ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Full window, positions 0..T-1."""
        pos = torch.arange(x.shape[1], device=x.device)
        q, k, v = self._qkv(x, pos)
        drop = self.attn_dropout_p if self.training else 0.0
        o = F.scaled_dot_product_attention(q, k, v, dropout_p=drop, is_causal=True)
        out = self.out(o)
        return (out, k, v) if return_kv else out

    def prepare(self, cache: LayerCache) -> None:
        """Fuse q|k|v weights and tabulate rotary angles of the cache's new positions."""
        cache.w_qkv = torch.cat((self.q_proj.weight, self.k_proj.weight, self.v_proj.weight))
        cache.b_qkv = torch.cat((self.q_proj.bias, self.k_proj.bias, self.v_proj.bias))
        p, cap = cache.prefix_len, cache.nk.shape[2]
        cache.cos, cache.sin = self.rotary.cos_sin(torch.arange(p, p + cap, device=cache.pk.device))

    def forward_cached(self, x: torch.Tensor, cache: LayerCache) -> torch.Tensor:
        """New positions x [N, T, d] after the prefix and the ``cache.n`` positions already cached."""
        b, t, _ = x.shape
        if cache.w_qkv is None:
            self.prepare(cache)
        assert cache.w_qkv is not None and cache.cos is not None and cache.sin is not None
        qkv = F.linear(x, cache.w_qkv, cache.b_qkv).view(b, t, 3, self.n_heads, self.head_dim)
        qkv = qkv.permute(2, 0, 3, 1, 4)  # [3, N, H, T, hd]
        cos, sin = cache.cos[cache.n:cache.n + t], cache.sin[cache.n:cache.n + t]
        qk = apply_rotary(qkv[:2], cos, sin)
        q, k, v = qk[0], qk[1], qkv[2]
        end = cache.n + t
        cache.nk[:, :, cache.n:end] = k
        cache.nv[:, :, cache.n:end] = v
        mask = None
        if t > 1:
            qi = torch.arange(cache.n, end, device=x.device)[:, None]
            mask = torch.arange(end, device=x.device)[None, :] <= qi
        o = two_part_attention(q, cache.pk, cache.pv, cache.nk[:, :, :end], cache.nv[:, :, :end], mask)
        cache.n = end
        return self.out(o)


class FeedForward(nn.Module):
    """SwiGLU: w2(silu(w1 x) * w3 x)."""

    def __init__(self, d_model: int, ff_dim: int, dropout_p: float = 0.0) -> None:
        super().__init__()
        self.w1 = nn.Linear(d_model, ff_dim, bias=False)
        self.w3 = nn.Linear(d_model, ff_dim, bias=False)
        self.w2 = nn.Linear(ff_dim, d_model, bias=False)
        self.dropout = nn.Dropout(dropout_p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.w2(F.silu(self.w1(x)) * self.w3(x)))


class TransformerBlock(nn.Module):
    """Pre-norm block: x + Attn(norm1 x), then + FFN(norm2 x)."""

    def __init__(self, d_model: int, n_heads: int, ff_dim: int, ffn_dropout_p: float = 0.0,
                 attn_dropout_p: float = 0.0, resid_dropout_p: float = 0.0) -> None:
        super().__init__()
        self.norm1 = RMSNorm(d_model)
        self.self_attn = SelfAttention(d_model, n_heads, attn_dropout_p, resid_dropout_p)
        self.norm2 = RMSNorm(d_model)
        self.ffn = FeedForward(d_model, ff_dim, ffn_dropout_p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.norm1(x))
        return x + self.ffn(self.norm2(x))

    def forward_prefix(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Full window that also hands back its rotated keys and values for a cache."""
        a, k, v = self.self_attn(self.norm1(x), return_kv=True)
        x = x + a
        return x + self.ffn(self.norm2(x)), k, v

    def forward_cached(self, x: torch.Tensor, cache: LayerCache) -> torch.Tensor:
        x = x + self.self_attn.forward_cached(self.norm1(x), cache)
        if cache.w_13 is None:
            cache.w_13 = torch.cat((self.ffn.w1.weight, self.ffn.w3.weight))
        g, u = F.linear(self.norm2(x), cache.w_13).chunk(2, dim=-1)
        return x + self.ffn.dropout(self.ffn.w2(F.silu(g) * u))


def new_cache(k: torch.Tensor, v: torch.Tensor, n_paths: int, capacity: int) -> LayerCache:
    """A cache whose prefix is (k, v) of batch 1, with room for ``capacity`` new positions per path."""
    _, h, _, hd = k.shape
    buf = k.new_empty((n_paths, h, capacity, hd))
    return LayerCache(pk=k, pv=v, nk=buf, nv=torch.empty_like(buf), n=0)


def blocks(layers: nn.ModuleList) -> list[TransformerBlock]:
    """A ModuleList of TransformerBlocks with their type (iterating one types its items as Module)."""
    return [cast(TransformerBlock, m) for m in layers]
