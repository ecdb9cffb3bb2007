"""The 3D Gaussian container with the exact upstream (GVF / TRELLIS) parametrisation.

Raw parameters are stored; activations add fixed biases first:

    xyz       world position (already shifted by the aabb: the upstream ``get_xyz``)
    features  SH degree-0 (DC) coefficients, used raw; colour = max(0.5 + SH_C0·f_dc, 0)
    opacity   sigmoid(opacity_raw + logit(0.1))
    scaling   sqrt(softplus(scaling_raw + softplus⁻¹(0.004))² + 0.0009²)   (0.0009: the "3D filter" floor)
    rotation  normalize(rotation_raw + [1, 0, 0, 0])                      (quaternion w, x, y, z)

Two 14-channel layouts exist upstream and are NOT the same order:

* input rows (motion-VAE queries, static condition): ``[xyz 0:3 | f_dc 3:6 | opacity 6 | scaling 7:10 |
  rotation 10:14]`` with opacity, scaling and rotation **activated**;
* motion-VAE output (variation/delta) rows: ``[xyz 0:3 | scale 3:6 | rot 6:10 | f_dc 10:13 | opacity 13]``,
  each added to the raw parameter before its activation (:meth:`Gaussians.with_variation`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Sequence

import torch
import torch.nn.functional as F

__all__ = [
    "SH_C0",
    "OPACITY_BIAS",
    "SCALING_BIAS",
    "SCALE_FLOOR",
    "OPACITY_LOGIT_BIAS",
    "SCALING_RAW_BIAS",
    "IDENTITY_QUATERNION",
    "PAD_ROW",
    "Gaussians",
    "pad_tensor14",
    "inverse_softplus",
]

SH_C0 = 0.28209479177387814  # degree-0 real spherical harmonic, 1 / (2 sqrt(pi))
OPACITY_BIAS = 0.1  # activated opacity of a zero raw opacity
SCALING_BIAS = 0.004  # softplus output of a zero raw scale
SCALE_FLOOR = 9e-4  # "3D filter": every activated scale is at least this (added in quadrature)
OPACITY_LOGIT_BIAS = math.log(OPACITY_BIAS / (1.0 - OPACITY_BIAS))  # ≈ −2.197225
SCALING_RAW_BIAS = SCALING_BIAS + math.log(-math.expm1(-SCALING_BIAS))  # softplus⁻¹(0.004) ≈ −5.519460
IDENTITY_QUATERNION = (1.0, 0.0, 0.0, 0.0)
# Upstream padding row of the 14-channel input layout: zeros with the quaternion w (channel 10) = 1.
PAD_ROW = (0.0,) * 10 + (1.0, 0.0, 0.0, 0.0)

# Column ranges of the two 14-channel layouts.
IN_XYZ, IN_FDC, IN_OPACITY, IN_SCALING, IN_ROTATION = slice(0, 3), slice(3, 6), slice(6, 7), slice(7, 10), slice(10, 14)
OUT_XYZ, OUT_SCALING, OUT_ROTATION, OUT_FDC, OUT_OPACITY = slice(0, 3), slice(3, 6), slice(6, 10), slice(10, 13), slice(13, 14)


def inverse_softplus(y: torch.Tensor) -> torch.Tensor:
    """softplus⁻¹(y) = y + log(−expm1(−y)) for y > 0 (stable for small and large y)."""
    return y + torch.log(-torch.expm1(-y))


def _activate_scaling(scaling_raw: torch.Tensor) -> torch.Tensor:
    s = F.softplus(scaling_raw + SCALING_RAW_BIAS)
    return torch.sqrt(s * s + SCALE_FLOOR**2)


def _activate_rotation(rotation_raw: torch.Tensor) -> torch.Tensor:
    bias = torch.tensor(IDENTITY_QUATERNION, dtype=rotation_raw.dtype, device=rotation_raw.device)
    # F.normalize's eps only matters for an all-zero quaternion (-bias), which has no rotation anyway.
    return F.normalize(rotation_raw + bias, dim=-1)


def _activate_opacity(opacity_raw: torch.Tensor) -> torch.Tensor:
    return torch.sigmoid(opacity_raw + OPACITY_LOGIT_BIAS)


@dataclass(eq=False)
class Gaussians:
    """N 3D Gaussians in the raw upstream parametrisation (SH degree 0).

    Attributes:
        xyz: (N, 3) world positions.
        features_dc: (N, 3) raw SH-DC colour coefficients.
        opacity_raw: (N, 1) pre-activation opacity (without the logit(0.1) bias).
        scaling_raw: (N, 3) pre-activation scales (without the softplus⁻¹(0.004) bias).
        rotation_raw: (N, 4) quaternion (w, x, y, z) minus the identity [1, 0, 0, 0].
    """

    xyz: torch.Tensor
    features_dc: torch.Tensor
    opacity_raw: torch.Tensor
    scaling_raw: torch.Tensor
    rotation_raw: torch.Tensor

    _WIDTHS = {"xyz": 3, "features_dc": 3, "opacity_raw": 1, "scaling_raw": 3, "rotation_raw": 4}

    def __post_init__(self):
        n = None
        ref = None
        for name, width in self._WIDTHS.items():
            t = getattr(self, name)
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"Gaussians.{name} must be a torch.Tensor, got {type(t).__name__}")
            if t.ndim != 2 or t.shape[1] != width:
                raise ValueError(f"Gaussians.{name} must have shape (N, {width}), got {tuple(t.shape)}")
            if not t.is_floating_point():
                raise ValueError(f"Gaussians.{name} must be a floating tensor, got {t.dtype}")
            if n is None:
                n, ref = t.shape[0], t
            elif t.shape[0] != n:
                raise ValueError(f"Gaussians.{name} has {t.shape[0]} rows but xyz has {n}")
            elif t.device != ref.device or t.dtype != ref.dtype:
                raise ValueError(f"Gaussians.{name} is {t.dtype} on {t.device}, xyz is {ref.dtype} on {ref.device}")

    # ------------------------------------------------------------------ activated views
    @property
    def opacity(self) -> torch.Tensor:
        """(N, 1) activated opacity in (0, 1)."""
        return _activate_opacity(self.opacity_raw)

    @property
    def scaling(self) -> torch.Tensor:
        """(N, 3) activated scales (≥ SCALE_FLOOR)."""
        return _activate_scaling(self.scaling_raw)

    @property
    def rotation(self) -> torch.Tensor:
        """(N, 4) unit quaternions (w, x, y, z)."""
        return _activate_rotation(self.rotation_raw)

    @property
    def rgb(self) -> torch.Tensor:
        """(N, 3) view-independent colour ``max(0.5 + SH_C0·f_dc, 0)`` (not clamped above)."""
        return (0.5 + SH_C0 * self.features_dc).clamp_min(0.0)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_activated(cls, xyz, features_dc, opacity, scaling, rotation) -> "Gaussians":
        """Gaussians whose activated values are the given ones (the upstream ``from_*`` setters).

        Args:
            xyz: (N, 3); features_dc: (N, 3) raw SH DC (or (N, 1, 3)); opacity: (N, 1) or (N,) in (0, 1);
            scaling: (N, 3) activated scales, each > SCALE_FLOOR; rotation: (N, 4) quaternion (w, x, y, z),
            stored minus the identity as given (a unit quaternion round-trips exactly).
        """
        features_dc = features_dc.reshape(features_dc.shape[0], 3) if features_dc.ndim == 3 else features_dc
        opacity = opacity.reshape(-1, 1) if opacity.ndim == 1 else opacity
        if bool(((opacity <= 0) | (opacity >= 1)).any()):
            raise ValueError("from_activated: opacity must lie strictly between 0 and 1")
        if bool((scaling <= SCALE_FLOOR).any()):
            raise ValueError(
                f"from_activated: every scale must exceed the 3D-filter floor {SCALE_FLOOR} "
                f"(smallest given: {float(scaling.min()):.3g})"
            )
        opacity_raw = torch.logit(opacity) - OPACITY_LOGIT_BIAS
        scaling_raw = inverse_softplus(torch.sqrt(scaling * scaling - SCALE_FLOOR**2)) - SCALING_RAW_BIAS
        bias = torch.tensor(IDENTITY_QUATERNION, dtype=rotation.dtype, device=rotation.device)
        return cls(xyz, features_dc, opacity_raw, scaling_raw, rotation - bias)

    @classmethod
    def empty(cls, n: int = 0, *, dtype=torch.float32, device=None) -> "Gaussians":
        """``n`` Gaussians with all raw parameters zero (at the origin, opacity 0.1, scale ≈0.00410, identity)."""
        z = lambda w: torch.zeros(n, w, dtype=dtype, device=device)  # noqa: E731
        return cls(z(3), z(3), z(1), z(3), z(4))

    # ------------------------------------------------------------------ 14-channel tensors
    def to_tensor14(self) -> torch.Tensor:
        """(N, 14) upstream input rows ``[xyz, f_dc, opacity, scaling, rotation]`` (activated)."""
        return torch.cat([self.xyz, self.features_dc, self.opacity, self.scaling, self.rotation], dim=-1)

    @classmethod
    def from_tensor14(cls, t: torch.Tensor) -> "Gaussians":
        """Inverse of :meth:`to_tensor14` for an (N, 14) tensor in the input layout."""
        if t.ndim != 2 or t.shape[1] != 14:
            raise ValueError(f"from_tensor14 expects an (N, 14) tensor, got {tuple(t.shape)}")
        return cls.from_activated(t[:, IN_XYZ], t[:, IN_FDC], t[:, IN_OPACITY], t[:, IN_SCALING], t[:, IN_ROTATION])

    def with_variation(self, delta: torch.Tensor) -> "Gaussians":
        """Gaussians displaced by one frame of the motion-VAE output (differentiable in both inputs).

        Args:
            delta: (N, 14) in the output layout ``[xyz | scale | rot | f_dc | opacity]``; xyz and f_dc
                are added directly, scale / rotation / opacity to the raw values before activation.
        """
        if delta.shape != (len(self), 14):
            raise ValueError(f"with_variation expects a delta of shape ({len(self)}, 14), got {tuple(delta.shape)}")
        return Gaussians(
            xyz=self.xyz + delta[:, OUT_XYZ],
            features_dc=self.features_dc + delta[:, OUT_FDC],
            opacity_raw=self.opacity_raw + delta[:, OUT_OPACITY],
            scaling_raw=self.scaling_raw + delta[:, OUT_SCALING],
            rotation_raw=self.rotation_raw + delta[:, OUT_ROTATION],
        )

    # ------------------------------------------------------------------ tensor-like helpers
    def _map(self, fn) -> "Gaussians":
        return Gaussians(**{f.name: fn(getattr(self, f.name)) for f in fields(self)})

    def __len__(self) -> int:
        return self.xyz.shape[0]

    def __getitem__(self, index) -> "Gaussians":
        """Rows selected by an index tensor, boolean mask, slice or int (an int keeps the row dim)."""
        if isinstance(index, int):
            index = slice(index, index + 1 if index != -1 else None)
        return self._map(lambda t: t[index])

    @staticmethod
    def cat(items: Sequence["Gaussians"]) -> "Gaussians":
        """Concatenate Gaussian sets along N."""
        items = list(items)
        if not items:
            raise ValueError("Gaussians.cat needs at least one Gaussians object")
        return Gaussians(**{f.name: torch.cat([getattr(g, f.name) for g in items]) for f in fields(Gaussians)})

    def to(self, *args, **kwargs) -> "Gaussians":
        """Same arguments as ``torch.Tensor.to`` (device and/or dtype)."""
        return self._map(lambda t: t.to(*args, **kwargs))

    def detach(self) -> "Gaussians":
        return self._map(torch.Tensor.detach)

    def clone(self) -> "Gaussians":
        return self._map(torch.Tensor.clone)

    def requires_grad_(self, flag: bool = True) -> "Gaussians":
        for f in fields(self):
            getattr(self, f.name).requires_grad_(flag)
        return self

    @property
    def device(self) -> torch.device:
        return self.xyz.device

    @property
    def dtype(self) -> torch.dtype:
        return self.xyz.dtype

    def __repr__(self) -> str:
        return f"Gaussians(n={len(self)}, dtype={self.dtype}, device={self.device})"


def pad_tensor14(items: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Batch (N_b, 14) input-layout tensors, padding at the end with the upstream padding row.

    Args:
        items: list of (N_b, 14) tensors (same dtype and device).
    Returns:
        padded (B, Nmax, 14) (padding rows are zero except channel 10, the quaternion w, = 1) and
        lengths (B,) int64 on the same device.
    """
    items = list(items)
    if not items:
        raise ValueError("pad_tensor14 needs at least one tensor")
    for i, t in enumerate(items):
        if t.ndim != 2 or t.shape[1] != 14:
            raise ValueError(f"pad_tensor14: item {i} must have shape (N, 14), got {tuple(t.shape)}")
    ref = items[0]
    lengths = torch.tensor([t.shape[0] for t in items], dtype=torch.int64, device=ref.device)
    n_max = int(lengths.max())
    pad_row = torch.tensor(PAD_ROW, dtype=ref.dtype, device=ref.device)
    padded = pad_row.expand(len(items), n_max, 14).clone()
    for b, t in enumerate(items):
        padded[b, : t.shape[0]] = t
    return padded, lengths
