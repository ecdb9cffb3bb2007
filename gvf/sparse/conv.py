"""Sparse 3-D convolution and 2x down/up-sampling of voxel features, in plain PyTorch.

* `SparseConv3d`: submanifold convolution (output sites = input sites), kernel 3, stride 1, the layer of
  TRELLIS's SLat flow model. Weight layout and names are spconv's as TRELLIS stores them: the layer
  holds its weights in a child `conv` with `weight` (O, 3, 3, 3, I) and `bias` (O,), so checkpoints load
  as they are. Convention (cross-correlation, kernel axes a, b, c follow the coordinate columns x, y, z):

      out[p] = bias + Σ_{a,b,c ∈ {0,1,2}} W[:, a, b, c, :] · x[p + (a-1, b-1, c-1)]

  summed over the active neighbours of the same object.
* `SparseDownsample` / `SparseUpsample`: TRELLIS's 2x average pooling and its inverse copy.

Reference implementation: every voxel (b, x, y, z) becomes one int64 key, keys are sorted once and
each of the 27 neighbour offsets is looked up with `searchsorted`; the convolution is then a
gather-GEMM per offset (`F.linear` on the rows that have that neighbour) accumulated with
`index_add_`. Memory and time grow with the number of occupied voxels, never with the grid. The
neighbour table is cached on the SparseTensor (shared by every tensor with the same coordinates), so a
sampler calling the model many times on the same voxels builds it once.

Optional fast path: spconv (``pip install spconv-cu12x``) on CUDA tensors, imported lazily; choose with
`GVF_SPARSE_CONV_BACKEND` = auto | torch | spconv (auto = spconv when installed and the input is on
CUDA). spconv's CPU kernels gave non-repeatable results with several threads (parity README), so it
is never chosen automatically on the CPU.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import os

import torch
import torch.nn.functional as F
from torch import nn

from gvf.sparse.tensor import SparseTensor

logger = logging.getLogger(__name__)

__all__ = ["SparseConv3d", "SparseDownsample", "SparseUpsample", "submanifold_conv3d", "neighbour_table", "downsample_layout"]

BACKENDS = ("auto", "torch", "spconv")


# ---- coordinate hashing -----------------------------------------------------------------------


def _voxel_keys(coords: torch.Tensor, low: torch.Tensor, span: int) -> torch.Tensor:
    """(N, 4) int [b, x, y, z] -> (N,) int64 keys, ascending in (b, x, y, z).

    `low` (3,) is subtracted from x, y, z and `span` exceeds every shifted coordinate, so that the
    keys of neighbours (shifted by a kernel offset) never alias another row or object.
    """
    c = coords.long()
    x, y, z = (c[:, 1:] - low).unbind(dim=1)
    return ((c[:, 0] * span + x) * span + y) * span + z


def _kernel_offsets(kernel_size: int, device) -> torch.Tensor:
    """(K³, 3) offsets (a-r, b-r, c-r) in the weight's (a, b, c) C-order, r = kernel_size // 2."""
    r = torch.arange(kernel_size, device=device) - kernel_size // 2
    return torch.stack(torch.meshgrid(r, r, r, indexing="ij"), dim=-1).reshape(-1, 3)


def neighbour_table(coords: torch.Tensor, kernel_size: int = 3) -> torch.Tensor:
    """For every voxel and kernel offset, the row index of the neighbour, or -1 if it is not active.

    Args:
        coords: (N, 4) int [b, x, y, z], unique rows.
    Returns:
        (K³, N) int64, K³ in the weight's (a, b, c) order.
    """
    if len(coords) == 0:
        return torch.empty(kernel_size**3, 0, dtype=torch.long, device=coords.device)
    r = kernel_size // 2
    low = coords[:, 1:].long().min(dim=0).values - r
    span = int((coords[:, 1:].long() - low).max().item()) + r + 1
    keys = _voxel_keys(coords, low, span)
    sorted_keys, order = torch.sort(keys)
    offsets = _kernel_offsets(kernel_size, coords.device)
    delta = (offsets[:, 0] * span + offsets[:, 1]) * span + offsets[:, 2]  # (K³,) key shift of each offset
    query = keys[None, :] + delta[:, None]  # (K³, N)
    pos = torch.searchsorted(sorted_keys, query).clamp_(max=len(keys) - 1)
    found = sorted_keys[pos] == query
    return torch.where(found, order[pos], torch.full_like(pos, -1))


def _cached_pairs(x: SparseTensor, kernel_size: int) -> list[tuple[torch.Tensor, torch.Tensor] | None]:
    """Per kernel offset: (input rows, output rows) of the active pairs; None for the full centre."""
    key = ("subm_pairs", kernel_size)
    if key not in x._cache:
        table = neighbour_table(x.coords, kernel_size)  # (K³, N)
        centre = kernel_size**3 // 2
        valid = table >= 0
        valid[centre] = False  # every voxel is its own centre neighbour: handled densely
        offset, out_rows = valid.nonzero(as_tuple=True)  # sorted by offset
        counts = torch.bincount(offset, minlength=kernel_size**3).tolist()  # the one host sync
        pairs = list(zip(table[offset, out_rows].split(counts), out_rows.split(counts)))
        pairs[centre] = None
        x._cache[key] = pairs
    return x._cache[key]


def submanifold_conv3d(x: SparseTensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """Plain-PyTorch submanifold convolution (the convention in the module docstring).

    Args:
        x: SparseTensor with feats (N, I).
        weight: (O, K, K, K, I) spconv layout, K odd.
        bias: (O,) or None.
    Returns:
        (N, O) output features in x's row order.
    """
    O, K = weight.shape[0], weight.shape[1]
    if weight.shape[1:4] != (K, K, K) or K % 2 == 0:
        raise ValueError(f"weight must be (O, K, K, K, I) with odd K, got {tuple(weight.shape)}")
    if x.feats.shape[1] != weight.shape[-1]:
        raise ValueError(f"features have {x.feats.shape[1]} channels but the convolution expects {weight.shape[-1]}")
    w = weight.reshape(O, K**3, -1)  # (O, K³, I)
    pairs = _cached_pairs(x, K)
    centre = K**3 // 2
    out = F.linear(x.feats, w[:, centre], bias)  # (N, O); F.linear follows autocast
    for k, pair in enumerate(pairs):
        if pair is None or len(pair[0]) == 0:
            continue
        src, dst = pair
        out.index_add_(0, dst, F.linear(x.feats[src], w[:, k]).to(out.dtype))
    return out


# ---- optional spconv backend --------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def _spconv_installed() -> bool:
    return importlib.util.find_spec("spconv") is not None


@functools.lru_cache(maxsize=None)
def _log_backend_once(name: str) -> None:
    logger.info("sparse convolution backend: %s", name)


def _resolve_backend(x: SparseTensor, weight: torch.Tensor) -> str:
    backend = os.environ.get("GVF_SPARSE_CONV_BACKEND", "auto")
    if backend not in BACKENDS:
        raise ValueError(f"GVF_SPARSE_CONV_BACKEND must be one of {BACKENDS}, got {backend!r}")
    if backend == "spconv" and not _spconv_installed():
        raise ImportError("GVF_SPARSE_CONV_BACKEND=spconv but spconv is not installed (pip install spconv-cu120, matching your CUDA)")
    if backend == "auto":
        # spconv has no autocast support and no bfloat16 kernels: keep it to plain fp32/fp16 on CUDA
        plain = x.feats.dtype == weight.dtype in (torch.float32, torch.float16) and not torch.is_autocast_enabled(x.feats.device.type)
        backend = "spconv" if (x.feats.is_cuda and plain and _spconv_installed()) else "torch"
    _log_backend_once(backend)
    return backend


class _SpconvWeights(nn.Module):
    """Holds `weight` (O, K, K, K, I) and `bias` (O,) under the names spconv's module uses."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, bias: bool):
        super().__init__()
        self.in_channels, self.out_channels, self.kernel_size = in_channels, out_channels, kernel_size
        self.weight = nn.Parameter(torch.empty(out_channels, kernel_size, kernel_size, kernel_size, in_channels))
        self.register_parameter("bias", nn.Parameter(torch.empty(out_channels)) if bias else None)


class SparseConv3d(nn.Module):
    """Submanifold sparse convolution, kernel `kernel_size` (odd), stride 1, optional bias.

    State_dict: `conv.weight` (O, K, K, K, I), `conv.bias` (O,) — TRELLIS's keys and spconv's layout.
    Call: SparseTensor (feats (N, I)) -> SparseTensor (feats (N, O)) on the same voxels, same order.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, bias: bool = True):
        super().__init__()
        if kernel_size % 2 == 0:
            raise ValueError(f"submanifold convolution needs an odd kernel size, got {kernel_size}")
        self.conv = _SpconvWeights(in_channels, out_channels, kernel_size, bias)
        self._spconv_module = None  # built lazily; shares `conv`'s parameters, not in the state_dict
        self.reset_parameters()

    def reset_parameters(self) -> None:
        fan_in = self.conv.in_channels * self.conv.kernel_size**3
        bound = 1.0 / fan_in**0.5  # the uniform fan-in bound nn.Conv3d uses
        nn.init.uniform_(self.conv.weight, -bound, bound)
        if self.conv.bias is not None:
            nn.init.uniform_(self.conv.bias, -bound, bound)

    @property
    def weight(self) -> torch.Tensor:
        return self.conv.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.conv.bias

    def forward(self, x: SparseTensor) -> SparseTensor:
        if _resolve_backend(x, self.conv.weight) == "spconv":
            return x.replace(self._spconv_forward(x))
        return x.replace(submanifold_conv3d(x, self.conv.weight, self.conv.bias))

    def _spconv_forward(self, x: SparseTensor) -> torch.Tensor:
        import spconv.pytorch as spconv

        if self._spconv_module is None:
            module = spconv.SubMConv3d(
                self.conv.in_channels, self.conv.out_channels, self.conv.kernel_size,
                bias=self.conv.bias is not None, indice_key=f"gvf_subm{self.conv.kernel_size}",
            )
            module.weight, module.bias = self.conv.weight, self.conv.bias  # share, don't copy
            object.__setattr__(self, "_spconv_module", module)  # keep it out of children / state_dict
        key = ("spconv", self.conv.kernel_size)
        if key not in x._cache:
            # spconv stores its neighbour pairs in this dict; reusing it across calls skips the rebuild
            shape = (x.coords[:, 1:].max(dim=0).values + 1).tolist()
            x._cache[key] = (shape, {})
        shape, indice_dict = x._cache[key]
        sp_in = spconv.SparseConvTensor(x.feats, x.coords, shape, x.batch_size, indice_dict=indice_dict)
        return self._spconv_module(sp_in).features


# ---- 2x pooling ----------------------------------------------------------------------------------


def downsample_layout(coords: torch.Tensor, factor: int = 2) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Coarse cells of a voxel set.

    Args:
        coords: (N, 4) int [b, x, y, z].
    Returns:
        coarse coords (M, 4) int32 [b, x//f, y//f, z//f] in ascending (b, x, y, z) order,
        inverse (N,) int64: the coarse row of each fine voxel, counts (M,) fine voxels per cell.
    """
    coarse = coords.long().clone()
    coarse[:, 1:] = torch.div(coarse[:, 1:], factor, rounding_mode="floor")
    low = coarse[:, 1:].min(dim=0).values
    span = int((coarse[:, 1:] - low).max().item()) + 1
    keys, inverse, counts = torch.unique(_voxel_keys(coarse, low, span), return_inverse=True, return_counts=True)
    b, rest = torch.div(keys, span**3, rounding_mode="floor"), keys % span**3
    xyz = torch.stack([rest // span**2, (rest // span) % span, rest % span], dim=1) + low
    return torch.cat([b[:, None], xyz], dim=1).to(torch.int32), inverse, counts


class SparseDownsample(nn.Module):
    """TRELLIS's 2x sparse average pooling.

    Coarse features are (sum over the n fine voxels of a cell) / (n + 1): upstream averages with
    `scatter_reduce(zeros, reduce='mean')` whose default `include_self=True` counts the zero start
    value as one more element, and the released weights were trained with it.
    The coarse tensor remembers the fine coordinates, order and cache for `SparseUpsample`.
    """

    def __init__(self, factor: int = 2):
        super().__init__()
        self.factor = factor

    def forward(self, x: SparseTensor) -> SparseTensor:
        key = ("downsample", self.factor)
        if key not in x._cache:
            coarse, inverse, counts = downsample_layout(x.coords, self.factor)
            coarse_cache = {("upsample", self.factor): (x.coords, inverse, x._cache)}
            x._cache[key] = (coarse, inverse, counts, coarse_cache)
        coarse, inverse, counts, coarse_cache = x._cache[key]
        sums = torch.zeros(len(coarse), x.feats.shape[1], dtype=x.feats.dtype, device=x.feats.device)
        sums = sums.index_add(0, inverse, x.feats)  # (M, C)
        feats = sums / (counts + 1).to(sums.dtype)[:, None]
        out = SparseTensor(feats, coarse, batch_size=x.batch_size)
        out._cache = coarse_cache
        return out


class SparseUpsample(nn.Module):
    """Inverse of `SparseDownsample`: every fine voxel copies its coarse cell's features, in the fine order."""

    def __init__(self, factor: int = 2):
        super().__init__()
        self.factor = factor

    def forward(self, x: SparseTensor) -> SparseTensor:
        entry = x._cache.get(("upsample", self.factor))
        if entry is None:
            raise ValueError("SparseUpsample needs a tensor produced by SparseDownsample (or derived from one with .replace)")
        fine_coords, inverse, fine_cache = entry
        out = SparseTensor(x.feats[inverse], fine_coords, batch_size=x.batch_size)
        out._cache = fine_cache
        return out
