"""Exact softmax attention inside groups of sparse rows: 3-D windows of a voxel grid, or whole objects.

Everything here is built on one primitive, :func:`grouped_attention`: rows carrying the same group id
attend to each other and to nobody else (full softmax, scale 1/sqrt(D)). Costs grow with the number of
occupied voxels and the group sizes, never with the dense grid (64³ is never materialised).

Backends (chosen like `gvf.nn.attention`: automatic, or forced with `backend=` / `GVF_ATTN_BACKEND`):

* ``flash_attn`` — ``flash_attn_varlen_func`` on the rows sorted by group (CUDA, fp16/bf16, installed);
* ``xformers`` — ``memory_efficient_attention`` with a block-diagonal mask (CUDA, fp16/bf16, installed);
* ``sdpa`` — the plain PyTorch path: groups are bucketed by length (lengths rounded up to at most 25 %
  more), padded, and run through ``scaled_dot_product_attention`` with a key-padding mask; exact;
* ``math`` — the reference: an explicit softmax, one group at a time.

The bookkeeping (sort order, lengths, buckets) depends on the group ids only; :func:`plan_groups`
computes it once and `SparseTensor`s cache it, so the 12 blocks of a stack share one plan per window
shift.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from gvf.nn.attention import add_qkv_projections, math_attention, resolve_backend
from gvf.sparse.tensor import SparseTensor

__all__ = [
    "GroupPlan",
    "plan_groups",
    "grouped_attention",
    "window_ids",
    "sparse_windowed_attention",
    "sparse_self_attention_per_object",
    "sparse_cross_attention_per_object",
    "SparseMultiHeadAttention",
]

_HALF = (torch.float16, torch.bfloat16)


def _bucket_length(n: int) -> int:
    """Round n up to m·2^e with m in 4..7 (at most 25 % padding); n ≤ 8 is kept exactly."""
    if n <= 8:
        return n
    e = n.bit_length() - 3
    return -(-n >> e) << e


@dataclass
class _Bucket:
    groups: torch.Tensor  # (G_b,) indices into the plan's groups
    rows: torch.Tensor  # (G_b, L_b) original row index per slot; padding slots point at row N
    key_mask: torch.Tensor | None  # (G_b, 1, 1, L_b) True = real key; None when nothing is padded
    valid_slots: torch.Tensor  # (n_b,) flat indices of the real slots in (G_b·L_b)


@dataclass
class GroupPlan:
    """How rows are grouped: everything `grouped_attention` needs besides q, k, v.

    Attributes:
        num_rows: N.
        order: (N,) int64 rows sorted by group (stable).
        inverse: (N,) int64 position of each row in `order`.
        group_values: (G,) the distinct group ids, ascending.
        seqlens: G group sizes (host list), in `group_values` order.
        cu_seqlens: (G+1,) int32 prefix sums of `seqlens` (flash-attn layout).
        max_seqlen: largest group.
    """

    num_rows: int
    order: torch.Tensor
    inverse: torch.Tensor
    group_values: torch.Tensor
    seqlens: list[int]
    cu_seqlens: torch.Tensor
    max_seqlen: int
    _buckets: list[_Bucket] | None = field(default=None, repr=False)
    _bucket_inverse: torch.Tensor | None = field(default=None, repr=False)

    @property
    def num_groups(self) -> int:
        return len(self.seqlens)

    def buckets(self) -> tuple[list[_Bucket], torch.Tensor]:
        """Padded buckets for the SDPA path and the permutation that restores row order (cached)."""
        if self._buckets is None:
            self._buckets, self._bucket_inverse = self._make_buckets()
        return self._buckets, self._bucket_inverse

    def _make_buckets(self) -> tuple[list[_Bucket], torch.Tensor]:
        device = self.order.device
        counts = torch.tensor(self.seqlens, dtype=torch.int64, device=device)
        starts = self.cu_seqlens[:-1].to(torch.int64)
        order_ext = torch.cat([self.order, self.order.new_full((1,), self.num_rows)])
        by_length: dict[int, list[int]] = {}
        for g, n in enumerate(self.seqlens):
            by_length.setdefault(_bucket_length(n), []).append(g)
        buckets, destinations = [], []
        for length, groups in sorted(by_length.items()):
            groups_t = torch.tensor(groups, dtype=torch.int64, device=device)
            slot = torch.arange(length, device=device)
            valid = slot[None, :] < counts[groups_t, None]  # (G_b, L_b)
            sorted_pos = torch.where(valid, starts[groups_t, None] + slot[None, :], self.num_rows)
            rows = order_ext[sorted_pos]
            valid_slots = valid.flatten().nonzero().squeeze(1)
            all_full = all(self.seqlens[g] == length for g in groups)
            key_mask = None if all_full else valid[:, None, None, :]
            buckets.append(_Bucket(groups_t, rows, key_mask, valid_slots))
            destinations.append(rows.flatten()[valid_slots])
        dest = torch.cat(destinations) if destinations else self.order.new_zeros(0)
        return buckets, torch.argsort(dest)


def plan_groups(group_ids: torch.Tensor) -> GroupPlan:
    """Sort rows by group and measure the groups (one device-to-host copy of the group sizes).

    Args:
        group_ids: (N,) integer group of every row (any values; need not be contiguous or sorted).
    """
    if group_ids.ndim != 1 or group_ids.is_floating_point():
        raise ValueError(f"group_ids must be a 1-D integer tensor, got {group_ids.dtype} of shape {tuple(group_ids.shape)}")
    group_ids = group_ids.to(torch.int64)
    n = group_ids.shape[0]
    order = torch.argsort(group_ids, stable=True)
    values, counts = torch.unique_consecutive(group_ids[order], return_counts=True)
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(n, device=order.device)
    seqlens = counts.tolist()
    cu = F.pad(torch.cumsum(counts, 0), (1, 0)).to(torch.int32)
    return GroupPlan(n, order, inverse, values, seqlens, cu, max(seqlens, default=0))


def _check_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    if q.ndim != 3 or k.shape != q.shape or v.shape[:2] != q.shape[:2]:
        raise ValueError(
            f"grouped attention expects q, k (N, H, D) of equal shape and v (N, H, Dv), got "
            f"q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}"
        )


def _pick_backend(q: torch.Tensor, backend: str | None) -> str:
    name = resolve_backend(q, backend)
    if name in ("flash_attn", "xformers") and not (q.is_cuda and q.dtype in _HALF):
        if backend is not None:
            raise ValueError(f"attention backend {name!r} needs CUDA fp16/bf16 inputs, got {q.dtype} on {q.device}")
        name = "sdpa"  # forced via the environment for half precision; fall back where it cannot run
    return name


def grouped_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    group_ids: torch.Tensor | None = None,
    *,
    plan: GroupPlan | None = None,
    scale: float | None = None,
    backend: str | None = None,
) -> torch.Tensor:
    """Full softmax attention among the rows of each group.

    Args:
        q, k: (N, H, D); v: (N, H, Dv).
        group_ids: (N,) integer group per row; or give a precomputed `plan` instead.
        scale: softmax scale, default 1/sqrt(D).
        backend: "flash_attn" | "xformers" | "sdpa" | "math" | None (automatic, see module docstring).
    Returns:
        (N, H, Dv), row i = softmax(q_i·K_gᵀ·scale)·V_g over the rows g of its group.
    """
    _check_qkv(q, k, v)
    if plan is None:
        if group_ids is None:
            raise ValueError("grouped_attention needs group_ids or a plan")
        if group_ids.shape != q.shape[:1]:
            raise ValueError(f"group_ids must have shape ({q.shape[0]},), got {tuple(group_ids.shape)}")
        plan = plan_groups(group_ids.to(q.device))
    elif plan.num_rows != q.shape[0]:
        raise ValueError(f"plan was made for {plan.num_rows} rows but q has {q.shape[0]}")
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    if q.shape[0] == 0:
        return q.new_zeros(v.shape)
    name = _pick_backend(q, backend)

    if name == "flash_attn":
        from flash_attn import flash_attn_varlen_func

        qs, ks, vs = q[plan.order], k[plan.order], v[plan.order]
        cu = plan.cu_seqlens
        out = flash_attn_varlen_func(qs, ks, vs, cu, cu, plan.max_seqlen, plan.max_seqlen, softmax_scale=scale)
        return out[plan.inverse]
    if name == "xformers":
        import xformers.ops as xops

        mask = xops.fmha.BlockDiagonalMask.from_seqlens(plan.seqlens)
        qs, ks, vs = q[plan.order][None], k[plan.order][None], v[plan.order][None]
        return xops.memory_efficient_attention(qs, ks, vs, attn_bias=mask, scale=scale)[0][plan.inverse]
    if name == "math":
        outs, start = [], 0
        for n in plan.seqlens:
            rows = plan.order[start : start + n]
            outs.append(math_attention(q[rows][None], k[rows][None], v[rows][None], scale)[0])
            start += n
        return torch.cat(outs)[plan.inverse]

    # sdpa: padded buckets of similar lengths, key-padding mask where a bucket is ragged.
    buckets, restore = plan.buckets()
    q_ext, k_ext, v_ext = (torch.cat([t, t.new_zeros(1, *t.shape[1:])]) for t in (q, k, v))
    pieces = []
    for b in buckets:
        qb, kb, vb = (t[b.rows].transpose(1, 2) for t in (q_ext, k_ext, v_ext))  # (G_b, H, L_b, D)
        ob = F.scaled_dot_product_attention(qb, kb, vb, attn_mask=b.key_mask, scale=scale)
        pieces.append(ob.transpose(1, 2).flatten(0, 1)[b.valid_slots])  # (n_b, H, Dv) real rows only
    return torch.cat(pieces)[restore]


# ---------------------------------------------------------------------------------------------
# Groupings
# ---------------------------------------------------------------------------------------------


def _triple(x: int | Sequence[int], name: str) -> tuple[int, int, int]:
    t = (int(x),) * 3 if isinstance(x, int) else tuple(int(a) for a in x)
    if len(t) != 3:
        raise ValueError(f"{name} must be an int or 3 ints, got {x!r}")
    return t  # type: ignore[return-value]


def window_ids(coords: torch.Tensor, window_size: int | Sequence[int], shift: int | Sequence[int] = 0) -> torch.Tensor:
    """Window index of every voxel (upstream swin partition).

    The shift is added to each axis, coordinates are floor-divided by the window size, and window
    indices are numbered row-major over (batch, wx, wy, wz) with per-axis window counts
    ceil((max shifted coord + 1) / window_size), so windows never span two objects.

    Args:
        coords: (N, 4) integer rows [batch, x, y, z].
        window_size: int or 3 ints; shift: int or 3 ints (added to x, y, z).
    Returns:
        (N,) int64 window ids (equal id = same window).
    """
    if coords.ndim != 2 or coords.shape[1] != 4 or coords.is_floating_point():
        raise ValueError(f"coords must be an (N, 4) integer tensor [batch, x, y, z], got {coords.dtype} {tuple(coords.shape)}")
    ws = torch.tensor(_triple(window_size, "window_size"), dtype=torch.int64, device=coords.device)
    if bool((ws <= 0).any()):
        raise ValueError(f"window_size must be positive, got {window_size!r}")
    sh = torch.tensor(_triple(shift, "shift"), dtype=torch.int64, device=coords.device)
    c = coords.to(torch.int64)
    if c.shape[0] == 0:
        return c.new_zeros(0)
    shifted = c[:, 1:] + sh  # (N, 3)
    if bool((shifted < 0).any()) or bool((c[:, 0] < 0).any()):
        raise ValueError("window_ids needs non-negative batch indices and coordinates + shift")
    win = torch.div(shifted, ws, rounding_mode="floor")
    counts = win.max(dim=0).values + 1  # = ceil((max shifted + 1) / window_size) per axis
    idx = c[:, 0]
    for axis in range(3):
        idx = idx * counts[axis] + win[:, axis]
    return idx


def _cached_plan(x: SparseTensor | None, key: tuple, make) -> GroupPlan:
    if x is None:
        return plan_groups(make())
    cache = x._cache  # shared by every `replace`d tensor with the same voxels
    if key not in cache:
        cache[key] = plan_groups(make())
    return cache[key]


def sparse_windowed_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    coords: torch.Tensor,
    window_size: int | Sequence[int],
    shift: int | Sequence[int] = 0,
    *,
    backend: str | None = None,
) -> torch.Tensor:
    """Self-attention inside (shifted) 3-D windows of each object: q, k, v (N, H, D), coords (N, 4) -> (N, H, D)."""
    return grouped_attention(q, k, v, window_ids(coords, window_size, shift), backend=backend)


def sparse_self_attention_per_object(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, batch_idx: torch.Tensor, *, backend: str | None = None
) -> torch.Tensor:
    """Full self-attention among the voxels of each object: q, k, v (N, H, D), batch_idx (N,) -> (N, H, D)."""
    return grouped_attention(q, k, v, batch_idx, backend=backend)


def sparse_cross_attention_per_object(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    batch_idx: torch.Tensor | None = None,
    *,
    plan: GroupPlan | None = None,
    scale: float | None = None,
    backend: str | None = None,
) -> torch.Tensor:
    """Each object's voxels attend to that object's dense context tokens.

    Args:
        q: (N, H, D) queries; batch_idx (N,) object of each row in [0, B) (or a `plan` of it).
        k: (B, S, H, D); v: (B, S, H, Dv) context keys/values.
    Returns:
        (N, H, Dv).
    """
    if q.ndim != 3 or k.ndim != 4 or v.shape[:3] != k.shape[:3] or k.shape[2:] != q.shape[1:]:
        raise ValueError(f"expected q (N, H, D), k (B, S, H, D), v (B, S, H, Dv); got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    if plan is None:
        if batch_idx is None:
            raise ValueError("sparse_cross_attention_per_object needs batch_idx or a plan")
        plan = plan_groups(batch_idx.to(q.device))
    B, S = k.shape[:2]
    if plan.num_groups and (int(plan.group_values[0]) < 0 or int(plan.group_values[-1]) >= B):
        raise ValueError(f"batch indices must lie in [0, {B}) for a context of {B} objects")
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    if q.shape[0] == 0:
        return q.new_zeros(q.shape[0], q.shape[1], v.shape[-1])
    name = _pick_backend(q, backend)

    if name == "flash_attn":
        from flash_attn import flash_attn_varlen_func

        objs = plan.group_values
        ks, vs = k[objs].flatten(0, 1), v[objs].flatten(0, 1)
        cu_k = torch.arange(plan.num_groups + 1, device=q.device, dtype=torch.int32) * S
        out = flash_attn_varlen_func(q[plan.order], ks, vs, plan.cu_seqlens, cu_k, plan.max_seqlen, S, softmax_scale=scale)
        return out[plan.inverse]
    if name == "math":
        outs, start = [], 0
        for obj, n in zip(plan.group_values.tolist(), plan.seqlens):
            rows = plan.order[start : start + n]
            outs.append(math_attention(q[rows][None], k[obj : obj + 1], v[obj : obj + 1], scale)[0])
            start += n
        return torch.cat(outs)[plan.inverse]

    # sdpa (also for xformers requests: a dense context needs no block mask); padded queries are dropped.
    buckets, restore = plan.buckets()
    q_ext = torch.cat([q, q.new_zeros(1, *q.shape[1:])])
    pieces = []
    for b in buckets:
        objs = plan.group_values[b.groups]
        qb = q_ext[b.rows].transpose(1, 2)  # (G_b, H, L_b, D)
        ob = F.scaled_dot_product_attention(qb, k[objs].transpose(1, 2), v[objs].transpose(1, 2), scale=scale)
        pieces.append(ob.transpose(1, 2).flatten(0, 1)[b.valid_slots])
    return torch.cat(pieces)[restore]


# ---------------------------------------------------------------------------------------------
# Module
# ---------------------------------------------------------------------------------------------


class SparseMultiHeadAttention(nn.Module):
    """Multi-head attention over a `SparseTensor` with the upstream (GVF / TRELLIS) parameter names.

    type="self": `to_qkv` (C -> 3C); attn_mode "full" (each object attends to itself) or "windowed"
    (8³-style windows shifted by `shift_window`). type="cross": `to_q` (C -> C), `to_kv`
    (ctx_channels -> 2C), each object's voxels attend to its own rows of a dense context (B, L, ctx).
    `qk_rms_norm` adds `q_rms_norm` / `k_rms_norm` (per-head RMS norms). `to_out` (C -> C) always.

    `use_old_attn_impl` selects the upstream's older fused-qkv channel order (h·3D + f·D + d instead
    of f·C + h·D + d); the official static VAE uses the new one (False).
    """

    def __init__(
        self,
        channels: int,
        num_heads: int,
        ctx_channels: int | None = None,
        type: str = "self",
        attn_mode: str = "full",
        window_size: int | None = None,
        shift_window: int | Sequence[int] = 0,
        qkv_bias: bool = True,
        qk_rms_norm: bool = False,
        use_old_attn_impl: bool = False,
    ):
        super().__init__()
        add_qkv_projections(self, channels, num_heads, ctx_channels, type, qkv_bias, qk_rms_norm)
        if attn_mode not in ("full", "windowed"):
            raise ValueError(f"attn_mode must be 'full' or 'windowed', got {attn_mode!r}")
        if type == "cross" and attn_mode != "full":
            raise ValueError("cross-attention supports attn_mode='full' only")
        if attn_mode == "windowed" and not window_size:
            raise ValueError("windowed attention needs a positive window_size")
        self.attn_mode = attn_mode
        self.window_size = window_size
        self.shift_window = _triple(shift_window, "shift_window")
        self.use_old_attn_impl = use_old_attn_impl
        self.to_out = nn.Linear(channels, channels)

    def _split(self, fused: torch.Tensor, n: int) -> tuple[torch.Tensor, ...]:
        """(..., n·C) -> n tensors (..., H, D) in the upstream channel order."""
        H, D = self.num_heads, self.head_dim
        if self.use_old_attn_impl:
            return fused.reshape(*fused.shape[:-1], H, n * D).chunk(n, dim=-1)
        return fused.reshape(*fused.shape[:-1], n, H, D).unbind(dim=-3)

    def _plan(self, x: SparseTensor) -> GroupPlan:
        if self.attn_mode == "windowed":
            key = ("window_plan", _triple(self.window_size, "window_size"), self.shift_window)
            return _cached_plan(x, key, lambda: window_ids(x.coords, self.window_size, self.shift_window))
        return _cached_plan(x, ("object_plan",), lambda: x.coords[:, 0].long())

    def forward(self, x: SparseTensor, context: torch.Tensor | None = None, backend: str | None = None) -> SparseTensor:
        """x: SparseTensor with (N, C) feats; context: (B, L, ctx_channels) for type="cross"."""
        N = x.feats.shape[0]
        if self.type == "self":
            q, k, v = self._split(self.to_qkv(x.feats), 3)
            if self.qk_rms_norm:
                q, k = self.q_rms_norm(q), self.k_rms_norm(k)
            out = grouped_attention(q, k, v, plan=self._plan(x), backend=backend)
        else:
            if context is None or context.ndim != 3:
                raise ValueError("cross-attention needs a dense context of shape (B, L, ctx_channels)")
            q = self.to_q(x.feats).reshape(N, self.num_heads, self.head_dim)
            k, v = self._split(self.to_kv(context), 2)  # (B, L, H, D) each
            if self.qk_rms_norm:
                q, k = self.q_rms_norm(q), self.k_rms_norm(k)
            plan = _cached_plan(x, ("object_plan",), lambda: x.coords[:, 0].long())
            out = sparse_cross_attention_per_object(q, k, v, plan=plan, backend=backend)
        return x.replace(self.to_out(out.reshape(N, self.channels)))
