"""Kronos tokenizer: candles (normalised, 6 features) <-> hierarchical binary codes (s1 coarse, s2 fine).

Encoder and decoder are causal, so the code of bar t depends on bars <= t only, and the decoder can
decode new bars against cached keys/values of a fixed prefix."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from .config import TokenizerConfig
from .modules import LayerCache, TransformerBlock, blocks, new_cache


class _BSQBuffers(nn.Module):
    """Integer buffers of the reference's binary spherical quantiser, kept for state-dict
    compatibility (inference does not read them)."""

    def __init__(self, codebook_dim: int, group_size: int) -> None:
        super().__init__()
        self.register_buffer("basis", 2 ** torch.arange(codebook_dim - 1, -1, -1, dtype=torch.long))
        self.register_buffer("group_basis", 2 ** torch.arange(group_size - 1, -1, -1, dtype=torch.long))


class _Quantizer(nn.Module):
    def __init__(self, codebook_dim: int, group_size: int) -> None:
        super().__init__()
        self.bsq = _BSQBuffers(codebook_dim, group_size)


class KronosTokenizer(nn.Module):
    def __init__(self, cfg: TokenizerConfig) -> None:
        super().__init__()
        self.config = cfg
        self.codebook_dim = cfg.s1_bits + cfg.s2_bits
        blk: dict[str, Any] = dict(d_model=cfg.d_model, n_heads=cfg.n_heads, ff_dim=cfg.ff_dim,
                   ffn_dropout_p=cfg.ffn_dropout_p, attn_dropout_p=cfg.attn_dropout_p,
                   resid_dropout_p=cfg.resid_dropout_p)
        self.embed = nn.Linear(cfg.d_in, cfg.d_model)
        self.head = nn.Linear(cfg.d_model, cfg.d_in)
        self.encoder = nn.ModuleList([TransformerBlock(**blk) for _ in range(cfg.n_enc_layers - 1)])
        self.decoder = nn.ModuleList([TransformerBlock(**blk) for _ in range(cfg.n_dec_layers - 1)])
        self.quant_embed = nn.Linear(cfg.d_model, self.codebook_dim)
        self.post_quant_embed_pre = nn.Linear(cfg.s1_bits, cfg.d_model)  # training loss only
        self.post_quant_embed = nn.Linear(self.codebook_dim, cfg.d_model)
        self.tokenizer = _Quantizer(self.codebook_dim, cfg.group_size)

    # ---- encoding
    def encode_continuous(self, x: torch.Tensor) -> torch.Tensor:
        """Unit-norm code vectors before binarisation, [B, T, s1+s2]."""
        z = self.embed(x)
        for layer in blocks(self.encoder):
            z = layer(z)
        return nn.functional.normalize(self.quant_embed(z), dim=-1)

    def binarize(self, z: torch.Tensor) -> torch.Tensor:
        """±1/√dim codes; gradients pass straight through (used by training)."""
        zhat = torch.where(z > 0, 1.0, -1.0).to(z.dtype)
        return (z + (zhat - z).detach()) / math.sqrt(self.codebook_dim)

    def codes_to_ids(self, codes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        bits = (codes > 0).long()
        s1b = self.config.s1_bits
        w1 = 2 ** torch.arange(s1b, device=codes.device)
        w2 = 2 ** torch.arange(self.config.s2_bits, device=codes.device)
        return (bits[..., :s1b] * w1).sum(-1), (bits[..., s1b:] * w2).sum(-1)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [B, T, d_in] normalised -> (s1 ids, s2 ids), each int64 [B, T]."""
        return self.codes_to_ids(self.encode_continuous(x))

    # ---- decoding
    def ids_to_codes(self, s1: torch.Tensor, s2: torch.Tensor) -> torch.Tensor:
        half = self.codebook_dim // 2
        mask = 2 ** torch.arange(half, device=s1.device)
        bits = torch.cat(((s1.unsqueeze(-1) & mask) != 0, (s2.unsqueeze(-1) & mask) != 0), dim=-1)
        return (bits.to(self.embed.weight.dtype) * 2 - 1) / math.sqrt(self.codebook_dim)

    def decode_codes(self, codes: torch.Tensor) -> torch.Tensor:
        z = self.post_quant_embed(codes)
        for layer in blocks(self.decoder):
            z = layer(z)
        return self.head(z)

    def decode(self, s1: torch.Tensor, s2: torch.Tensor) -> torch.Tensor:
        """Full-window decode: ids [B, T] -> [B, T, d_in] normalised."""
        return self.decode_codes(self.ids_to_codes(s1, s2))

    def decode_prefix_cache(self, s1: torch.Tensor, s2: torch.Tensor, n_paths: int,
                            capacity: int) -> list[LayerCache]:
        """Decoder caches for a prefix of batch 1, shared by ``n_paths`` paths."""
        z = self.post_quant_embed(self.ids_to_codes(s1, s2))
        caches = []
        for layer in blocks(self.decoder):
            z, k, v = layer.forward_prefix(z)
            caches.append(new_cache(k, v, n_paths, capacity))
        return caches

    def decode_cached(self, s1: torch.Tensor, s2: torch.Tensor, caches: list[LayerCache]) -> torch.Tensor:
        """Decode new bars [N, T] that follow the cached prefix (only the new positions are computed)."""
        z = self.post_quant_embed(self.ids_to_codes(s1, s2))
        for layer, cache in zip(blocks(self.decoder), caches, strict=True):
            z = layer.forward_cached(z, cache)
        return self.head(z)
