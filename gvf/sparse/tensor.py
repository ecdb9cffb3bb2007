"""A small sparse voxel tensor: integer coordinates [batch, x, y, z] and per-voxel features.

Rows of one object need not be contiguous; `layout` gives each object's row indices. Features are
an ordinary tensor, so everything flows through autograd; coordinates are int32.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn


class SparseTensor:
    """Sparse voxels of a batch of objects.

    Args:
        feats: (N, C) per-voxel features (any float dtype, on any device).
        coords: (N, 4) integer rows [batch, x, y, z] on the same device.
        batch_size: number of objects; default max(batch) + 1.
    """

    def __init__(self, feats: torch.Tensor, coords: torch.Tensor, batch_size: int | None = None):
        if coords.ndim != 2 or coords.shape[1] != 4:
            raise ValueError(f"coords must be (N, 4) [batch, x, y, z], got {tuple(coords.shape)}")
        if feats.shape[0] != coords.shape[0]:
            raise ValueError(f"feats has {feats.shape[0]} rows but coords has {coords.shape[0]}")
        if coords.is_floating_point():
            raise ValueError("coords must be an integer tensor")
        self.feats = feats
        self.coords = coords.to(torch.int32)
        if batch_size is None:
            batch_size = int(self.coords[:, 0].max().item()) + 1 if len(self.coords) else 0
        self.batch_size = batch_size
        self._cache: dict = {}

    # ---- construction ------------------------------------------------------------------------
    @classmethod
    def from_list(cls, coords: Sequence[torch.Tensor], feats: Sequence[torch.Tensor]) -> "SparseTensor":
        """Batch several objects: coords[i] (N_i, 3) int, feats[i] (N_i, C) -> rows object by object."""
        if len(coords) != len(feats):
            raise ValueError("coords and feats lists differ in length")
        rows = [
            torch.cat([torch.full((len(c), 1), i, dtype=torch.int32, device=c.device), c.to(torch.int32)], dim=1)
            for i, c in enumerate(coords)
        ]
        return cls(torch.cat(list(feats), dim=0), torch.cat(rows, dim=0), batch_size=len(coords))

    def replace(self, feats: torch.Tensor, coords: torch.Tensor | None = None) -> "SparseTensor":
        """Same voxels (unless `coords` is given) with new features; cached layouts are shared."""
        out = SparseTensor(feats, self.coords if coords is None else coords, self.batch_size)
        if coords is None:
            out._cache = self._cache
        return out

    # ---- properties --------------------------------------------------------------------------
    @property
    def shape(self) -> torch.Size:
        return torch.Size((self.batch_size, *self.feats.shape[1:]))

    @property
    def device(self) -> torch.device:
        return self.feats.device

    @property
    def dtype(self) -> torch.dtype:
        return self.feats.dtype

    def __len__(self) -> int:
        return self.feats.shape[0]

    @property
    def layout(self) -> list[torch.Tensor]:
        """Row indices of each object, in row order (cached)."""
        if "layout" not in self._cache:
            batch = self.coords[:, 0].long()
            order = torch.argsort(batch, stable=True)
            counts = torch.bincount(batch, minlength=self.batch_size).tolist()
            self._cache["layout"] = list(torch.split(order, counts))
        return self._cache["layout"]

    def unbatch(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """[(coords (N_i, 3), feats (N_i, C)) per object]."""
        return [(self.coords[idx, 1:], self.feats[idx]) for idx in self.layout]

    def to(self, *args, **kwargs) -> "SparseTensor":
        feats = self.feats.to(*args, **kwargs)
        return SparseTensor(feats, self.coords.to(feats.device), self.batch_size)

    # ---- elementwise arithmetic on features -----------------------------------------------
    def _other(self, other):
        return other.feats if isinstance(other, SparseTensor) else other

    def __add__(self, other):
        return self.replace(self.feats + self._other(other))

    __radd__ = __add__

    def __sub__(self, other):
        return self.replace(self.feats - self._other(other))

    def __mul__(self, other):
        return self.replace(self.feats * self._other(other))

    __rmul__ = __mul__

    def __neg__(self):
        return self.replace(-self.feats)

    def __repr__(self) -> str:
        return f"SparseTensor(batch_size={self.batch_size}, voxels={len(self)}, channels={tuple(self.feats.shape[1:])}, dtype={self.dtype})"


class SparseLinear(nn.Linear):
    """nn.Linear applied to the features (state_dict keys `weight`, `bias`, as upstream)."""

    def forward(self, x: SparseTensor) -> SparseTensor:
        return x.replace(super().forward(x.feats))
