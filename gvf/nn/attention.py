"""Scaled dot-product attention with backend dispatch, and multi-head self/cross attention.

Layout everywhere: q (B, L, H, D), k/v (B, S, H, D) -> (B, L, H, D), like flash-attn.
Backends: "sdpa" (torch.nn.functional.scaled_dot_product_attention, the default), "flash_attn" and
"xformers" (used automatically when installed, on CUDA, in half precision), "math" (explicit softmax,
the reference for tests). `GVF_ATTN_BACKEND` forces one.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import os

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

logger = logging.getLogger(__name__)

BACKENDS = ("auto", "sdpa", "flash_attn", "xformers", "math")
_HALF = (torch.float16, torch.bfloat16)


@functools.lru_cache(maxsize=None)
def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


# Looked up once (a spec lookup, no import) so that compiled graphs see plain constants.
_FLASH_ATTN_INSTALLED = _installed("flash_attn")
_XFORMERS_INSTALLED = _installed("xformers")


@functools.lru_cache(maxsize=None)
def _log_backend_once(name: str) -> None:
    logger.info("attention backend: %s", name)


def resolve_backend(q: torch.Tensor, backend: str | None = None) -> str:
    """The backend that `attention` uses for `q` (see module docstring)."""
    backend = backend or os.environ.get("GVF_ATTN_BACKEND", "auto")
    if backend not in BACKENDS:
        raise ValueError(f"unknown attention backend {backend!r}; expected one of {BACKENDS}")
    if backend == "auto":
        fast_ok = q.is_cuda and q.dtype in _HALF
        if fast_ok and _FLASH_ATTN_INSTALLED:
            backend = "flash_attn"
        elif fast_ok and _XFORMERS_INSTALLED:
            backend = "xformers"
        else:
            backend = "sdpa"
    if not torch.compiler.is_compiling():  # keeps torch.compile graphs free of breaks
        _log_backend_once(backend)
    return backend


def math_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None = None) -> torch.Tensor:
    """Explicit softmax(q kᵀ · scale) v in the input dtype. Shapes as `attention`."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    work = torch.float32 if q.dtype in _HALF else q.dtype  # half-precision softmax is too coarse for a reference
    logits = torch.einsum("blhd,bshd->bhls", q.to(work), k.to(work)) * scale
    return torch.einsum("bhls,bshd->blhd", logits.softmax(dim=-1), v.to(work)).to(q.dtype)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, scale: float | None = None, backend: str | None = None) -> torch.Tensor:
    """Softmax attention, no mask, no dropout.

    Args:
        q: (B, L, H, D); k, v: (B, S, H, D).
        scale: softmax scale, default 1/sqrt(D).
        backend: see module docstring; None = `GVF_ATTN_BACKEND` or automatic.
    Returns:
        (B, L, H, D)
    """
    if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
        raise ValueError(f"attention expects (B, L, H, D) tensors, got q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}")
    name = resolve_backend(q, backend)
    if name == "math":
        return math_attention(q, k, v, scale)
    if name == "flash_attn":
        from flash_attn import flash_attn_func

        return flash_attn_func(q, k, v, softmax_scale=scale)
    if name == "xformers":
        import xformers.ops as xops

        return xops.memory_efficient_attention(q, k, v, scale=scale)
    q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    if q.is_cuda and v.shape[-1] != q.shape[-1]:
        # cuDNN's fused kernel rejects value widths that differ from the query width (torch 2.11).
        with sdpa_kernel([SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]):
            out = F.scaled_dot_product_attention(q, k, v, scale=scale)
    else:
        out = F.scaled_dot_product_attention(q, k, v, scale=scale)
    return out.transpose(1, 2)


class MultiHeadRMSNorm(nn.Module):
    """Per-head RMS normalisation of q or k: L2-normalise over D, times gamma[H, D]·sqrt(D).

    Computed in float32 whatever the input dtype (as upstream), returned in the input dtype, as
    x·rsqrt(max(Σx², 1e-24)) — the same function as x / max(‖x‖, 1e-12) — in one fused pass when compiled.
    """

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.scale = dim**0.5
        self.gamma = nn.Parameter(torch.ones(heads, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, L, H, D)
        work = x.float() if x.dtype in _HALF else x
        inv_norm = work.square().sum(dim=-1, keepdim=True).clamp_min(1e-24).rsqrt()
        return (work * inv_norm * (self.gamma * self.scale)).to(x.dtype)


def add_qkv_projections(
    module: nn.Module,
    channels: int,
    num_heads: int,
    ctx_channels: int | None,
    type: str,
    qkv_bias: bool,
    qk_rms_norm: bool,
) -> None:
    """Check the head layout and give `module` the upstream-named input projections of multi-head attention.

    Sets `channels`, `num_heads`, `head_dim`, `type`, `qk_rms_norm`; adds `to_qkv` (C -> 3C) for
    type="self", or `to_q` (C -> C) and `to_kv` (ctx_channels, default C, -> 2C) for type="cross"; and the
    per-head norms `q_rms_norm`, `k_rms_norm` when `qk_rms_norm`. Shared by the dense and sparse modules.
    """
    if channels % num_heads:
        raise ValueError(f"channels ({channels}) must be divisible by num_heads ({num_heads})")
    if type not in ("self", "cross"):
        raise ValueError(f"attention type must be 'self' or 'cross', got {type!r}")
    module.channels, module.num_heads, module.head_dim = channels, num_heads, channels // num_heads
    module.type = type
    module.qk_rms_norm = qk_rms_norm
    if type == "self":
        module.to_qkv = nn.Linear(channels, 3 * channels, bias=qkv_bias)
    else:
        module.to_q = nn.Linear(channels, channels, bias=qkv_bias)
        module.to_kv = nn.Linear(channels if ctx_channels is None else ctx_channels, 2 * channels, bias=qkv_bias)
    if qk_rms_norm:
        module.q_rms_norm = MultiHeadRMSNorm(module.head_dim, num_heads)
        module.k_rms_norm = MultiHeadRMSNorm(module.head_dim, num_heads)


class MultiHeadAttention(nn.Module):
    """Multi-head self- or cross-attention with the upstream (TRELLIS / GVF DiT) parameter names.

    type="self": `to_qkv` (channels -> 3·channels), q/k/v split as (3, H, D).
    type="cross": `to_q` (channels -> channels) and `to_kv` (ctx_channels -> 2·channels), k first;
    with no context given it attends to x itself (the motion VAE's self-attention is built this way).
    `qk_rms_norm` adds per-head RMS norms `q_rms_norm`, `k_rms_norm`.
    """

    def __init__(
        self,
        channels: int,
        num_heads: int,
        ctx_channels: int | None = None,
        type: str = "self",
        qkv_bias: bool = True,
        out_bias: bool = True,
        qk_rms_norm: bool = False,
    ):
        super().__init__()
        add_qkv_projections(self, channels, num_heads, ctx_channels, type, qkv_bias, qk_rms_norm)
        self.to_out = nn.Linear(channels, channels, bias=out_bias)

    def project_kv(self, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of a cross-attention context (B, S, C_ctx) -> two (B, S, H, D).

        They depend on the context only, so callers may compute them once and reuse them.
        """
        B, S, _ = context.shape
        k, v = self.to_kv(context).reshape(B, S, 2, self.num_heads, self.head_dim).unbind(dim=2)
        if self.qk_rms_norm:
            k = self.k_rms_norm(k)
        return k, v

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor | None = None,
        kv: tuple[torch.Tensor, torch.Tensor] | None = None,
        backend: str | None = None,
    ) -> torch.Tensor:
        """x (B, L, C); context (B, S, C_ctx) or precomputed `kv` from `project_kv` -> (B, L, C)."""
        B, L, C = x.shape
        H, D = self.num_heads, self.head_dim
        if self.type == "self":
            q, k, v = self.to_qkv(x).reshape(B, L, 3, H, D).unbind(dim=2)
            if self.qk_rms_norm:
                q, k = self.q_rms_norm(q), self.k_rms_norm(k)
        else:
            q = self.to_q(x).reshape(B, L, H, D)
            if self.qk_rms_norm:
                q = self.q_rms_norm(q)
            k, v = kv if kv is not None else self.project_kv(x if context is None else context)
        out = attention(q, k, v, backend=backend)
        return self.to_out(out.reshape(B, L, C))
