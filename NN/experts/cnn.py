"""CNN expert: dilated causal 1-D convolutions over each timeframe's window (weights shared across
timeframes, plus a learned timeframe embedding), pooled, joined with the flat features, -> logits."""

from __future__ import annotations

import torch
from pydantic import Field
from torch import nn

from NN.experts.supervised import SupervisedExpert, SupervisedParams


class CNNParams(SupervisedParams):
    channels: int = Field(16, ge=1, le=512)
    layers: int = Field(2, ge=1, le=8)  # dilation doubles per layer: receptive field grows 2^layers
    kernel: int = Field(3, ge=2, le=15)
    hidden: int = Field(32, ge=1, le=1024)


class _CausalConv(nn.Module):
    def __init__(self, c_in: int, c_out: int, kernel: int, dilation: int) -> None:
        super().__init__()
        self.pad = (kernel - 1) * dilation  # left padding only: output at i sees inputs <= i
        self.conv = nn.Conv1d(c_in, c_out, kernel, dilation=dilation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(nn.functional.pad(x, (self.pad, 0)))


class CNNNet(nn.Module):
    def __init__(self, T: int, L: int, F: int, D: int, p: CNNParams) -> None:
        super().__init__()
        convs: list[nn.Module] = []
        c_in = F
        for i in range(p.layers):
            convs += [_CausalConv(c_in, p.channels, p.kernel, 2**i), nn.GELU()]
            c_in = p.channels
        self.convs = nn.Sequential(*convs)
        self.tf_embed = nn.Parameter(torch.zeros(T, p.channels))
        self.head = nn.Sequential(
            nn.Linear(T * 2 * p.channels + D, p.hidden),
            nn.GELU(),
            nn.Dropout(p.dropout),
            nn.Linear(p.hidden, 3),
        )
        self.T, self.L, self.F = T, L, F

    def forward(self, windows: torch.Tensor, flat: torch.Tensor) -> torch.Tensor:
        n = windows.shape[0]
        x = windows.reshape(n * self.T, self.L, self.F).transpose(1, 2)  # [N*T, F, L]
        h = self.convs(x).reshape(n, self.T, -1, self.L)  # [N, T, C, L]
        h = h + self.tf_embed[None, :, :, None]
        pooled = torch.cat([h.mean(dim=3), h[..., -1]], dim=2)  # window summary + latest bar
        return self.head(torch.cat([pooled.reshape(n, -1), flat], dim=1))


class CNNExpert(SupervisedExpert):
    Params = CNNParams
    kind = "cnn"
    ARCH_KEYS = ("channels", "layers", "kernel", "hidden")

    def build_net(self) -> nn.Module:
        d = self.dims
        return CNNNet(d["T"], d["L"], d["F"], d["D"], self.params)
