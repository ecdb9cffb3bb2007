"""Feed-forward blocks and norms shared by the models."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class FeedForwardNet(nn.Module):
    """Linear -> GELU(tanh) -> Linear, parameters `mlp.0`, `mlp.2` (DiT, static VAE, TRELLIS)."""

    def __init__(self, channels: int, mlp_ratio: float = 4.0):
        super().__init__()
        hidden = int(channels * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(channels, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(x)


class GEGLU(nn.Module):
    """x, gate = chunk(2); x · GELU(gate) with the exact (erf) GELU."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, gate = x.chunk(2, dim=-1)
        return x * F.gelu(gate)


class GEGLUFeedForward(nn.Module):
    """The motion VAE's feed-forward: `net.0` Linear(C, 2·mult·C), GEGLU, `net.2` Linear(mult·C, C)."""

    def __init__(self, dim: int, mult: int = 4):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, dim * mult * 2), GEGLU(), nn.Linear(dim * mult, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class LayerNorm32(nn.LayerNorm):
    """LayerNorm computed in at least float32 (TRELLIS), output in the input dtype.

    Half-precision inputs are normalised in float32; float64 inputs stay float64 (float64 reference runs).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.to(torch.promote_types(x.dtype, torch.float32))).to(x.dtype)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN modulation x·(1 + scale) + shift (shift/scale already broadcastable to x)."""
    return x * (1 + scale) + shift
