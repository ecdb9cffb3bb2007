"""Sparse transformer blocks (pre-norm self-attention + MLP over a `SparseTensor`)."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from gvf.nn.layers import FeedForwardNet, LayerNorm32
from gvf.sparse.attention import SparseMultiHeadAttention
from gvf.sparse.tensor import SparseTensor

__all__ = ["SparseTransformerBlock"]


class SparseTransformerBlock(nn.Module):
    """x + attn(norm1(x)), then x + mlp(norm2(x)) — the static VAE's / TRELLIS SLat VAE's block.

    Parameters (upstream names): `attn.to_qkv`, `attn.to_out`, `mlp.mlp.0`, `mlp.mlp.2`; the norms
    are parameter-free (eps 1e-6) and computed in float32 (as TRELLIS's LayerNorm32; under autocast
    GVF's plain LayerNorm computes the same).

    Args:
        channels: C; num_heads: H; mlp_ratio: hidden width / C.
        attn_mode: "windowed" (with `window_size`, `shift_window`) or "full" (per object).
        use_checkpoint: recompute the block in the backward pass (saves activation memory).
    """

    def __init__(
        self,
        channels: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        attn_mode: str = "windowed",
        window_size: int | None = 8,
        shift_window: int | Sequence[int] = 0,
        qkv_bias: bool = True,
        qk_rms_norm: bool = False,
        use_old_attn_impl: bool = False,
        use_checkpoint: bool = False,
    ):
        super().__init__()
        self.use_checkpoint = use_checkpoint
        self.norm1 = LayerNorm32(channels, elementwise_affine=False, eps=1e-6)
        self.attn = SparseMultiHeadAttention(
            channels,
            num_heads,
            type="self",
            attn_mode=attn_mode,
            window_size=window_size,
            shift_window=shift_window,
            qkv_bias=qkv_bias,
            qk_rms_norm=qk_rms_norm,
            use_old_attn_impl=use_old_attn_impl,
        )
        self.norm2 = LayerNorm32(channels, elementwise_affine=False, eps=1e-6)
        self.mlp = FeedForwardNet(channels, mlp_ratio)

    def _forward(self, x: SparseTensor) -> SparseTensor:
        x = x + self.attn(x.replace(self.norm1(x.feats)))
        return x.replace(x.feats + self.mlp(self.norm2(x.feats)))

    def forward(self, x: SparseTensor) -> SparseTensor:  # feats (N, C) -> (N, C)
        if self.use_checkpoint and torch.is_grad_enabled():
            return checkpoint(self._forward, x, use_reentrant=False)
        return self._forward(x)
