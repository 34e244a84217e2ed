"""Transformer expert: a causal (masked) encoder over the bar sequence. Token i holds the i-th bar of
every timeframe window (the base timeframe's bar plus the same-recency bar of each higher timeframe,
all closed and past-only); the last token's output joined with the flat features gives the logits."""

from __future__ import annotations

import torch
from pydantic import Field, model_validator
from torch import nn

from NN.experts.supervised import SupervisedExpert, SupervisedParams


class TransformerParams(SupervisedParams):
    d_model: int = Field(32, ge=4, le=1024)
    heads: int = Field(2, ge=1, le=32)
    layers: int = Field(2, ge=1, le=12)
    ff: int = Field(64, ge=4, le=4096)
    hidden: int = Field(32, ge=1, le=1024)
    seq_len: int | None = Field(None, ge=2)  # use only the last seq_len bars of the window; None = all

    @model_validator(mode="after")
    def _heads_divide(self) -> TransformerParams:
        if self.d_model % self.heads:
            raise ValueError(f"d_model ({self.d_model}) must be a multiple of heads ({self.heads})")
        return self


class TransformerNet(nn.Module):
    def __init__(self, T: int, L: int, F: int, D: int, p: TransformerParams) -> None:
        super().__init__()
        self.S = min(L, p.seq_len or L)
        self.proj = nn.Linear(T * F, p.d_model)
        self.pos = nn.Parameter(torch.randn(self.S, p.d_model) * 0.02)
        layer = nn.TransformerEncoderLayer(
            p.d_model, p.heads, p.ff, p.dropout, activation="gelu", batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, p.layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(p.d_model)
        self.head = nn.Sequential(
            nn.Linear(p.d_model + D, p.hidden), nn.GELU(), nn.Dropout(p.dropout), nn.Linear(p.hidden, 3)
        )
        self.register_buffer("mask", nn.Transformer.generate_square_subsequent_mask(self.S), persistent=False)

    def forward(self, windows: torch.Tensor, flat: torch.Tensor) -> torch.Tensor:
        n, T, L, F = windows.shape
        x = windows[:, :, L - self.S :, :].permute(0, 2, 1, 3).reshape(n, self.S, T * F)
        h = self.proj(x) + self.pos
        h = self.encoder(h, mask=self.mask, is_causal=True)
        return self.head(torch.cat([self.norm(h[:, -1]), flat], dim=1))


class TransformerExpert(SupervisedExpert):
    Params = TransformerParams
    kind = "transformer"
    ARCH_KEYS = ("d_model", "heads", "layers", "ff", "hidden", "seq_len")

    def build_net(self) -> nn.Module:
        d = self.dims
        return TransformerNet(d["T"], d["L"], d["F"], d["D"], self.params)
