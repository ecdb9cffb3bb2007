"""The differentiable Gaussian rasterizer shared by training, alignment and inference.

Two backends with the same maths (gsplat 1.5 "antialiased" = mip-splatting's 2-D filter with
``kernel_size = eps2d = 0.1``, the renderer of upstream GVFDiffusion):

* ``"gsplat"``: ``gsplat.rasterization`` CUDA kernels, all B × V images in one call;
* ``"torch"``: a pure-PyTorch reference (``gvf/render/_torch_backend.py``), any device, float64 too.

``backend="auto"`` takes gsplat when it is installed and the tensors live on a CUDA device, else torch;
the choice is logged once.

Layout: B batch (objects or frames), V views per batch element, N Gaussians, H × W pixels.
Outputs are channels-last: ``rgb (B, V, H, W, 3)``, ``alpha (B, V, H, W, 1)``,
``depth (B, V, H, W, 1)`` (expected camera-space z, ``Σ wᵢ zᵢ / α``; 0 where nothing is drawn).
Cameras: ``viewmats`` are world→camera 4×4 with OpenCV axes (x right, y down, z forward); ``Ks`` are
PIXEL intrinsics (see :func:`gvf.render.cameras.pixel_intrinsics`); pixel (i, j) covers
[j, j+1] × [i, i+1], its centre is (j + 0.5, i + 0.5).
"""

from __future__ import annotations

import logging
from functools import lru_cache
from typing import NamedTuple

import torch
from torch import Tensor

from ._gsplat_backend import INSTALL_HINT, gsplat_available, rasterize_gsplat
from ._torch_backend import RasterInputs, rasterize_torch
from .cameras import pixel_intrinsics

logger = logging.getLogger(__name__)

__all__ = ["RenderOutput", "rasterize", "render_gaussians", "BACKENDS", "UPSTREAM_NEAR"]

BACKENDS = ("auto", "torch", "gsplat")
# The 3DGS / mip-splatting rasterizer used upstream culls Gaussians whose centre has view z <= 0.2 and
# ignores the renderer's near/far (0.8 / 1.6); render_gaussians reproduces that.
UPSTREAM_NEAR = 0.2


class RenderOutput(NamedTuple):
    """Rendered images, channels-last. rgb (B, V, H, W, 3); alpha (B, V, H, W, 1); depth (B, V, H, W, 1)."""

    rgb: Tensor
    alpha: Tensor
    depth: Tensor


@lru_cache(maxsize=None)
def _log_backend_once(name: str, reason: str) -> None:
    logger.info("Gaussian rasterizer backend: %s (%s)", name, reason)


def _select_backend(backend: str, on_cuda: bool) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        if on_cuda and gsplat_available():
            _log_backend_once("gsplat", "auto: gsplat installed, tensors on CUDA")
            return "gsplat"
        reason = "auto: tensors not on CUDA" if not on_cuda else f"auto: gsplat not installed; for speed: {INSTALL_HINT}"
        _log_backend_once("torch", reason)
        return "torch"
    if backend == "gsplat":
        if not gsplat_available():
            raise ImportError(f"backend='gsplat' needs the gsplat package: {INSTALL_HINT}")
        if not on_cuda:
            raise ValueError("backend='gsplat' needs tensors on a CUDA device; use backend='torch' on the CPU")
    _log_backend_once(backend, "requested")
    return backend


def _check_shape(name: str, x, shape: tuple) -> None:
    """shape entries: int or None (any size)."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim != len(shape) or any(s is not None and s != d for s, d in zip(shape, x.shape)):
        want = "(" + ", ".join("?" if s is None else str(s) for s in shape) + ")"
        raise ValueError(f"{name} must have shape {want}, got {tuple(x.shape)}")


def _background_tensor(background, B: int, V: int, C: int, like: Tensor) -> Tensor:
    """(B, V, C) background from None (black), a (C,) colour or a (B, V, C) tensor."""
    if background is None:
        return torch.zeros(B, V, C, dtype=like.dtype, device=like.device)
    if isinstance(background, Tensor):
        bg = background.to(dtype=like.dtype, device=like.device)
    elif isinstance(background, (tuple, list)) and len(background) == C and all(isinstance(v, (int, float)) for v in background):
        # Filled on the device: a host-to-device copy would wait for the GPU's queue on every call.
        bg = like.new_empty(C)
        for k, value in enumerate(background):
            bg[k] = float(value)
    else:
        bg = torch.as_tensor(background, dtype=like.dtype, device=like.device)
    if bg.shape == (C,):
        return bg.expand(B, V, C)
    if bg.shape == (B, V, C):
        return bg
    raise ValueError(f"background must have shape ({C},) or ({B}, {V}, {C}), got {tuple(bg.shape)}")


def rasterize(
    means: Tensor,  # (B, N, 3)
    quats: Tensor,  # (B, N, 4)
    scales: Tensor,  # (B, N, 3)
    opacities: Tensor,  # (B, N)
    colors: Tensor,  # (B, N, 3)
    viewmats: Tensor,  # (B, V, 4, 4)
    Ks: Tensor,  # (B, V, 3, 3)
    width: int,
    height: int,
    background=None,
    eps2d: float = 0.1,
    near: float = 0.01,
    far: float = 1e10,
    backend: str = "auto",
) -> RenderOutput:
    """Render B sets of N 3-D Gaussians into V cameras each; differentiable w.r.t. all Gaussian inputs.

    Args:
        means: (B, N, 3) world-space centres.
        quats: (B, N, 4) rotations as wxyz quaternions (normalised internally).
        scales: (B, N, 3) activated standard deviations along the rotated axes.
        opacities: (B, N) activated opacities in [0, 1].
        colors: (B, N, 3) activated colours (e.g. ``clamp_min(0.5 + C0·f_dc, 0)``).
        viewmats: (B, V, 4, 4) world→camera, OpenCV axes.
        Ks: (B, V, 3, 3) pixel intrinsics (fx, fy, cx, cy in pixels).
        width, height: image size in pixels.
        background: None (black), a (3,) colour or a (B, V, 3) tensor; added as ``T_final · bg``.
        eps2d: 2-D filter variance in pixels² added to the projected covariance, with the matching
            opacity compensation (mip-splatting ``kernel_size``; upstream uses 0.1).
        near, far: Gaussians whose centre depth lies outside [near, far] are dropped.
        backend: "auto", "torch" or "gsplat" (see the module docstring).
    Returns:
        RenderOutput(rgb (B, V, H, W, 3), alpha (B, V, H, W, 1), depth (B, V, H, W, 1)).
    """
    _check_shape("means", means, (None, None, 3))
    B, N = means.shape[:2]
    if opacities.ndim == 3 and opacities.shape[-1] == 1:
        opacities = opacities.squeeze(-1)  # accept the (B, N, 1) layout of Gaussians.opacity
    _check_shape("quats", quats, (B, N, 4))
    _check_shape("scales", scales, (B, N, 3))
    _check_shape("opacities", opacities, (B, N))
    _check_shape("colors", colors, (B, N, 3))
    _check_shape("viewmats", viewmats, (B, None, 4, 4))
    V = viewmats.shape[1]
    _check_shape("Ks", Ks, (B, V, 3, 3))
    if int(width) <= 0 or int(height) <= 0:
        raise ValueError(f"width and height must be positive, got {width} x {height}")
    if not near < far:
        raise ValueError(f"near must be smaller than far, got near={near}, far={far}")
    backgrounds = _background_tensor(background, B, V, colors.shape[-1], colors)
    args = RasterInputs(means, quats, scales, opacities, colors, viewmats, Ks, int(width), int(height), backgrounds,
                        float(eps2d), float(near), float(far))
    if _select_backend(backend, means.is_cuda) == "gsplat":
        return RenderOutput(*rasterize_gsplat(*args))
    return RenderOutput(*rasterize_torch(*args))


def _stack_gaussians(items: list, deltas, dtype: torch.dtype | None):
    """Activated (B, Nmax, ·) tensors of B Gaussian sets, padded with zero-opacity Gaussians."""
    rows = []
    for g, delta in zip(items, deltas):
        if delta is not None:
            g = g.with_variation(delta)
        rows.append((g.xyz, g.rotation, g.scaling, g.opacity[:, 0], g.rgb))
    n_max = max(len(r[0]) for r in rows)
    dtype = dtype or rows[0][0].dtype
    # Padding: identity rotation, unit scale, zero opacity and colour; culled before any pixel work.
    # Built on the device (no host-to-device copy): zeros, plus ones where noted.
    pad_ones = ((), (0,), (0, 1, 2), (), ())  # per property: channels set to 1
    stacked = []
    for k, ones in enumerate(pad_ones):
        parts = []
        for r in rows:
            t = r[k].to(dtype)
            if n_max > t.shape[0]:
                pad = t.new_zeros(n_max - t.shape[0], *t.shape[1:])
                for channel in ones:
                    pad[:, channel] = 1.0
                t = torch.cat([t, pad])
            parts.append(t)
        stacked.append(torch.stack(parts))
    return stacked  # means (B, N, 3), quats (B, N, 4), scales (B, N, 3), opacities (B, N), colors (B, N, 3)


def render_gaussians(
    gaussians,
    extrinsics: Tensor,
    intrinsics: Tensor,
    resolution,
    background=(1.0, 1.0, 1.0),
    deltas=None,
    backend: str = "auto",
    eps2d: float = 0.1,
    near: float = UPSTREAM_NEAR,
    far: float = 1e10,
) -> RenderOutput:
    """Render :class:`gvf.gaussians.Gaussians` with upstream's renderer settings (mip kernel 0.1).

    Args:
        gaussians: one ``Gaussians`` or a list of B of them (sizes may differ: shorter sets are padded
            with zero-opacity Gaussians).
        extrinsics: (V, 4, 4) shared by all, or (B, V, 4, 4); world→camera, OpenCV axes.
        intrinsics: NORMALISED intrinsics (3, 3), (V, 3, 3) or (B, V, 3, 3) (see ``gvf.render.cameras``).
        resolution: int (square) or (H, W).
        background: (3,) colour or (B, V, 3) tensor; default white as upstream.
        deltas: None, or one (N_b, 14) motion-VAE output per set in the upstream OUTPUT order
            ``[xyz | scale | rot | f_dc | opacity]`` (a list, or a (B, N, 14) tensor), applied with
            ``Gaussians.with_variation``. With a single ``Gaussians`` and B deltas, the same Gaussians
            are rendered once per delta (e.g. B frames of one object).
        backend, eps2d, near, far: as :func:`rasterize`; ``near`` defaults to the 0.2 culling of the
            upstream 3DGS rasterizer.
    Returns:
        RenderOutput(rgb (B, V, H, W, 3), alpha (B, V, H, W, 1), depth (B, V, H, W, 1)); B = 1 for a
        single ``Gaussians`` without deltas.
    """
    items = [gaussians] if not isinstance(gaussians, (list, tuple)) else list(gaussians)
    if not items:
        raise ValueError("render_gaussians needs at least one Gaussians object")
    if deltas is None:
        deltas = [None] * len(items)
    else:
        deltas = list(deltas)  # a (B, N, 14) tensor iterates into B (N, 14) tensors
        if len(items) == 1 and len(deltas) > 1:
            items = items * len(deltas)
        if len(deltas) != len(items):
            raise ValueError(f"deltas must hold one (N, 14) tensor per Gaussians object ({len(items)}), got {len(deltas)}")
    if isinstance(resolution, int):
        height = width = resolution
    else:
        height, width = (int(r) for r in resolution)
    means, quats, scales, opacities, colors = _stack_gaussians(items, deltas, None)
    B = means.shape[0]

    extrinsics = torch.as_tensor(extrinsics).to(dtype=means.dtype, device=means.device)
    intrinsics = torch.as_tensor(intrinsics).to(dtype=means.dtype, device=means.device)
    if extrinsics.ndim == 3:
        extrinsics = extrinsics.expand(B, *extrinsics.shape)
    _check_shape("extrinsics", extrinsics, (B, None, 4, 4))
    V = extrinsics.shape[1]
    if intrinsics.ndim not in (2, 3, 4) or intrinsics.shape[-2:] != (3, 3):
        raise ValueError(f"intrinsics must have shape (3, 3), (V, 3, 3) or (B, V, 3, 3), got {tuple(intrinsics.shape)}")
    try:
        intrinsics = intrinsics.expand(B, V, 3, 3)
    except RuntimeError:
        raise ValueError(f"intrinsics of shape {tuple(intrinsics.shape)} do not match B={B} sets and V={V} views") from None
    Ks = pixel_intrinsics(intrinsics, width, height)
    return rasterize(means, quats, scales, opacities, colors, extrinsics, Ks, width, height,
                     background=background, eps2d=eps2d, near=near, far=far, backend=backend)
