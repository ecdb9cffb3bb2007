"""Sinusoidal embeddings with the upstream frequencies and channel orders."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal features of (possibly fractional) timesteps, cosines first (upstream DiT/TRELLIS).

    Built in float32 exactly like upstream: at t ~ 1000 the float32 rounding of the arguments is part
    of the function the official weights were trained with.
    Args:
        t: (B,) model times. Returns (B, dim) float32.
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t[:, None].float() * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


class TimestepEmbedder(nn.Module):
    """Model time -> hidden vector: 256 sinusoidal features, Linear, SiLU, Linear (`mlp.0`, `mlp.2`)."""

    def __init__(self, hidden_size: int, frequency_embedding_size: int = 256):
        super().__init__()
        self.frequency_embedding_size = frequency_embedding_size
        self.mlp = nn.Sequential(
            nn.Linear(frequency_embedding_size, hidden_size),
            nn.SiLU(),
            nn.Linear(hidden_size, hidden_size),
        )

    def forward(self, t: torch.Tensor) -> torch.Tensor:  # (B,) -> (B, C)
        t_freq = timestep_embedding(t, self.frequency_embedding_size)
        return self.mlp(t_freq.to(self.mlp[0].weight.dtype))


def absolute_position_frequencies(channels: int, in_channels: int = 3) -> torch.Tensor:
    """float32 frequencies 1/10000^(k/f), f = channels // in_channels // 2."""
    freq_dim = channels // in_channels // 2
    return 1.0 / (10000 ** (torch.arange(freq_dim, dtype=torch.float32) / freq_dim))


class AbsolutePositionEmbedder(nn.Module):
    """Sin/cos embedding of `in_channels`-D positions (TRELLIS APE, also the DiT's and static VAE's).

    For each input axis in order: f sines then f cosines; axes concatenated; zero-padded to
    `channels`. Frequencies are float32 (upstream), cast to the input dtype only for the product.
    Has no parameters and no state_dict entries.
    """

    def __init__(self, channels: int, in_channels: int = 3):
        super().__init__()
        self.channels, self.in_channels = channels, in_channels
        self.register_buffer("freqs", absolute_position_frequencies(channels, in_channels), persistent=False)

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        if self.freqs.dtype != torch.float32:  # model.half()/.to(bf16) must not round the frequencies
            self.freqs = absolute_position_frequencies(self.channels, self.in_channels).to(self.freqs.device)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., in_channels) -> (..., channels)
        if x.shape[-1] != self.in_channels:
            raise ValueError(f"expected positions with {self.in_channels} coordinates, got shape {tuple(x.shape)}")
        lead = x.shape[:-1]
        flat = x.reshape(-1)
        dtype = flat.dtype if flat.is_floating_point() else torch.float32
        args = torch.outer(flat.to(dtype), self.freqs.to(dtype))
        emb = torch.cat([torch.sin(args), torch.cos(args)], dim=-1).reshape(*lead, -1)
        if emb.shape[-1] < self.channels:
            emb = F.pad(emb, (0, self.channels - emb.shape[-1]))
        return emb


class PointEmbed(nn.Module):
    """The motion VAE's point embedding (upstream `PointEmbed`).

    `omega` is a float64 buffer stored in the official checkpoint: omega_k = 1/10000^(k/(E/2)),
    E = hidden_dim // 6 (half the channels end up nearly constant; kept for compatibility). Per axis
    x, y, z: [sin(p·omega), cos(p·omega)], computed in float64, returned in the input dtype.
    The buffer always stays float64 (module-wide `.half()`/`.to(dtype)` would otherwise round it).
    """

    def __init__(self, hidden_dim: int):
        super().__init__()
        if hidden_dim % 6:
            raise ValueError(f"PointEmbed needs hidden_dim divisible by 6, got {hidden_dim}")
        self.embedding_dim = hidden_dim // 6
        self.register_buffer("omega", self._frequencies(self.embedding_dim))

    @staticmethod
    def _frequencies(e: int, device=None) -> torch.Tensor:
        omega = np.arange(e, dtype=np.float64) / (e / 2.0)
        return torch.from_numpy(1.0 / 10000**omega).to(device)

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        if self.omega.dtype != torch.float64:  # re-derive exactly rather than keep a rounded copy
            self.omega = self._frequencies(self.embedding_dim, self.omega.device)
        return self

    def forward(self, pos: torch.Tensor) -> torch.Tensor:  # (..., 3) -> (..., 6E)
        args = pos.to(torch.float64)[..., None] * self.omega  # (..., 3, E)
        emb = torch.cat([torch.sin(args), torch.cos(args)], dim=-1)  # (..., 3, 2E)
        return emb.flatten(-2).to(pos.dtype)
