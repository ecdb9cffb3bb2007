"""gsplat 1.5.x CUDA backend of the rasterizer (imported lazily; see ``_torch_backend`` for the reference)."""

from __future__ import annotations

import importlib.util
from functools import lru_cache

import torch
from torch import Tensor

from ._torch_backend import RasterInputs

INSTALL_HINT = "pip install 'gsplat>=1.5,<1.6' (or: pip install -e '.[cuda]')"


@lru_cache(maxsize=None)
def gsplat_available() -> bool:
    """True when the ``gsplat`` package can be found (its CUDA kernels compile on first use)."""
    return importlib.util.find_spec("gsplat") is not None


def import_gsplat():
    """Import gsplat or fail with one sentence saying how to install it."""
    try:
        import gsplat
    except ImportError as err:
        raise ImportError(f"the 'gsplat' rasterizer backend needs the gsplat package: {INSTALL_HINT}") from err
    return gsplat


def rasterize_gsplat(*inputs) -> tuple[Tensor, Tensor, Tensor]:
    """One ``gsplat.rasterization`` call for all B × V images (gsplat's leading batch dimension).

    ``inputs`` are the 13 fields of :class:`~gvf.render._torch_backend.RasterInputs`, in order (the
    reference backend's signature). Returns (B, V, H, W, 3) colours, (B, V, H, W, 1) alpha and
    (B, V, H, W, 1) expected depth, in the input dtype (gsplat itself runs in float32).
    """
    means, quats, scales, opacities, colors, viewmats, Ks, width, height, backgrounds, eps2d, near, far = (
        RasterInputs(*inputs)
    )
    gsplat = import_gsplat()
    dtype = means.dtype
    f32 = torch.float32
    render, alpha, _ = gsplat.rasterization(
        means.to(f32), quats.to(f32), scales.to(f32), opacities.to(f32), colors.to(f32),
        viewmats.to(f32), Ks.to(f32), width, height,
        near_plane=near,
        far_plane=far,
        eps2d=eps2d,
        sh_degree=None,  # colours are given, not SH coefficients
        # Object-centric scenes: nearly every Gaussian is seen by every camera, so the dense (B, V, N)
        # layout costs no extra memory; gsplat 1.5.3's packed mode also rejects batched backgrounds.
        packed=False,
        backgrounds=backgrounds.to(f32),
        render_mode="RGB+ED",  # expected depth as a 4th channel; its background is 0
        rasterize_mode="antialiased",  # mip-splatting opacity compensation
    )  # render (B, V, H, W, 4), alpha (B, V, H, W, 1)
    C = colors.shape[-1]
    return render[..., :C].to(dtype), alpha.to(dtype), render[..., C:].to(dtype)
