"""Kronos predictor: autoregressive transformer over (s1, s2) token pairs with a coarse head for s1
and a dependency-aware fine head for s2 conditioned on the chosen s1 (ARCHITECTURE.md, "Predictor")."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .config import PredictorConfig
from .modules import (
    AttentionProjections,
    LayerCache,
    RMSNorm,
    TransformerBlock,
    apply_rotary,
    blocks,
    new_cache,
    two_part_attention,
)


class HierarchicalEmbedding(nn.Module):
    def __init__(self, s1_bits: int, s2_bits: int, d_model: int) -> None:
        super().__init__()
        self.d_model = d_model
        self.emb_s1 = nn.Embedding(2**s1_bits, d_model)
        self.emb_s2 = nn.Embedding(2**s2_bits, d_model)
        self.fusion_proj = nn.Linear(2 * d_model, d_model)

    def forward(self, s1: torch.Tensor, s2: torch.Tensor) -> torch.Tensor:
        scale = math.sqrt(self.d_model)
        return self.fusion_proj(torch.cat((self.emb_s1(s1) * scale, self.emb_s2(s2) * scale), dim=-1))


def _sinusoid_table(rows: int, d: int) -> torch.Tensor:
    pos = torch.arange(rows, dtype=torch.float32)[:, None]
    div = torch.exp(torch.arange(0, d, 2, dtype=torch.float32) * (-math.log(10000.0) / d))
    w = torch.zeros(rows, d)
    w[:, 0::2] = torch.sin(pos * div)
    w[:, 1::2] = torch.cos(pos * div)
    return w


class TemporalEmbedding(nn.Module):
    """Sum of minute, hour, weekday, day and month embeddings (stamp columns in that order)."""

    SIZES = (("minute_embed", 60), ("hour_embed", 24), ("weekday_embed", 7), ("day_embed", 32),
             ("month_embed", 13))

    minute_embed: nn.Embedding
    hour_embed: nn.Embedding
    weekday_embed: nn.Embedding
    day_embed: nn.Embedding
    month_embed: nn.Embedding

    def __init__(self, d_model: int, learn: bool) -> None:
        super().__init__()
        for name, rows in self.SIZES:
            emb = nn.Embedding(rows, d_model)
            if not learn:
                emb.weight.data.copy_(_sinusoid_table(rows, d_model))
                emb.weight.requires_grad_(False)
            setattr(self, name, emb)

    def forward(self, stamp: torch.Tensor) -> torch.Tensor:
        s = stamp.long()
        out = self.minute_embed(s[..., 0])
        out = out + self.hour_embed(s[..., 1])
        out = out + self.weekday_embed(s[..., 2])
        out = out + self.day_embed(s[..., 3])
        return out + self.month_embed(s[..., 4])


class CrossAttention(AttentionProjections):
    """The dependency layer's attention: queries from the s1 embedding, keys/values from h."""

    def forward(self, query: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
        """Reference semantics: rotary tables sized by the QUERY length and applied to q and k
        (identity when the query has one position); causal only while training."""
        q, k, v = self.heads(query, self.q_proj), self.heads(kv, self.k_proj), self.heads(kv, self.v_proj)
        cos, sin = self.rotary.cos_sin(torch.arange(query.shape[1], device=query.device))
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        drop = self.attn_dropout_p if self.training else 0.0
        o = F.scaled_dot_product_attention(q, k, v, dropout_p=drop, is_causal=self.training)
        return self.out(o)


class DependencyLayer(nn.Module):
    def __init__(self, d_model: int, attn_dropout_p: float = 0.0, resid_dropout_p: float = 0.0) -> None:
        super().__init__()
        self.cross_attn = CrossAttention(d_model, 4, attn_dropout_p, resid_dropout_p)
        self.norm = RMSNorm(d_model)

    def forward(self, h: torch.Tensor, sibling: torch.Tensor) -> torch.Tensor:
        return self.norm(h + self.cross_attn(sibling, h))


class DualHead(nn.Module):
    def __init__(self, s1_bits: int, s2_bits: int, d_model: int) -> None:
        super().__init__()
        self.proj_s1 = nn.Linear(d_model, 2**s1_bits)
        self.proj_s2 = nn.Linear(d_model, 2**s2_bits)


class KronosModel(nn.Module):
    def __init__(self, cfg: PredictorConfig) -> None:
        super().__init__()
        self.config = cfg
        d = cfg.d_model
        self.embedding = HierarchicalEmbedding(cfg.s1_bits, cfg.s2_bits, d)
        self.time_emb = TemporalEmbedding(d, cfg.learn_te)
        self.token_drop = nn.Dropout(cfg.token_dropout_p)
        self.transformer = nn.ModuleList([
            TransformerBlock(d, cfg.n_heads, cfg.ff_dim, cfg.ffn_dropout_p, cfg.attn_dropout_p,
                             cfg.resid_dropout_p) for _ in range(cfg.n_layers)])
        self.norm = RMSNorm(d)
        self.dep_layer = DependencyLayer(d, cfg.attn_dropout_p, cfg.resid_dropout_p)
        self.head = DualHead(cfg.s1_bits, cfg.s2_bits, d)

    def _inputs(self, s1: torch.Tensor, s2: torch.Tensor, stamp: torch.Tensor) -> torch.Tensor:
        return self.token_drop(self.embedding(s1, s2) + self.time_emb(stamp))

    # ---- full-window passes (training, oracle)
    def hidden(self, s1: torch.Tensor, s2: torch.Tensor, stamp: torch.Tensor) -> torch.Tensor:
        x = self._inputs(s1, s2, stamp)
        for layer in blocks(self.transformer):
            x = layer(x)
        return self.norm(x)

    def s1_logits(self, h: torch.Tensor) -> torch.Tensor:
        return self.head.proj_s1(h)

    def s2_logits_for_next(self, h: torch.Tensor, s1_next: torch.Tensor) -> torch.Tensor:
        """Fine logits of the next bar given its chosen s1 [B], as the reference computes them while
        sampling: one query, no mask, keys = every position of the window. Returns [B, V2]."""
        sib = self.embedding.emb_s1(s1_next)[:, None, :]
        attn = self.dep_layer.cross_attn(sib, h)  # [B, 1, d]
        return self.head.proj_s2(self.dep_layer.norm(h[:, -1:, :] + attn))[:, 0]

    def forward(self, s1: torch.Tensor, s2: torch.Tensor, stamp: torch.Tensor,
                s1_targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher-forced pass: (s1 logits, s2 logits), each [B, T, V]."""
        h = self.hidden(s1, s2, stamp)
        x2 = self.dep_layer(h, self.embedding.emb_s1(s1_targets))
        return self.s1_logits(h), self.head.proj_s2(x2)

    # ---- cached passes (the sampler)
    def prefix(self, s1: torch.Tensor, s2: torch.Tensor, stamp: torch.Tensor, n_paths: int,
               capacity: int) -> tuple[torch.Tensor, list[LayerCache], LayerCache]:
        """Run the context (batch 1) once; return its hidden states and caches shared by n_paths."""
        x = self._inputs(s1, s2, stamp)
        caches = []
        for layer in blocks(self.transformer):
            x, k, v = layer.forward_prefix(x)
            caches.append(new_cache(k, v, n_paths, capacity))
        h = self.norm(x)
        ca = self.dep_layer.cross_attn
        dep = new_cache(ca.heads(h, ca.k_proj), ca.heads(h, ca.v_proj), n_paths, capacity)
        return h, caches, dep

    def step(self, s1: torch.Tensor, s2: torch.Tensor, stamp: torch.Tensor, caches: list[LayerCache],
             dep: LayerCache) -> torch.Tensor:
        """Feed one new bar per path ([N, 1] ids, [N, 1, 5] stamps); returns h [N, 1, d] and appends
        the dependency layer's keys/values for it."""
        x = self._inputs(s1, s2, stamp)
        for layer, cache in zip(blocks(self.transformer), caches, strict=True):
            x = layer.forward_cached(x, cache)
        h = self.norm(x)
        ca = self.dep_layer.cross_attn
        dep.nk[:, :, dep.n:dep.n + 1] = ca.heads(h, ca.k_proj)
        dep.nv[:, :, dep.n:dep.n + 1] = ca.heads(h, ca.v_proj)
        dep.n += 1
        return h

    def s2_logits_cached(self, h_last: torch.Tensor, s1_next: torch.Tensor, dep: LayerCache) -> torch.Tensor:
        """Same numbers as ``s2_logits_for_next`` over the cached window. h_last [N, 1, d] (or [1, 1, d]
        when no new position exists yet), s1_next [N]. Returns [N, V2]."""
        ca = self.dep_layer.cross_attn
        q = ca.heads(self.embedding.emb_s1(s1_next)[:, None, :], ca.q_proj)  # position 0: no rotation
        nk = dep.nk[:, :, :dep.n] if dep.n else None
        nv = dep.nv[:, :, :dep.n] if dep.n else None
        attn = ca.out(two_part_attention(q, dep.pk, dep.pv, nk, nv, None))
        return self.head.proj_s2(self.dep_layer.norm(h_last + attn))[:, 0]
