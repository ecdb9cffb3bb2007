"""GPU tests: the gsplat backend against the pure-PyTorch reference on object-like scenes."""

import logging
import math

import pytest
import torch

from gvf.render import rasterizer as rz
from gvf.render.cameras import orbit_cameras, pixel_intrinsics
from gvf.render.rasterizer import rasterize, render_gaussians

pytestmark = pytest.mark.cuda
DEVICE = "cuda"
FAST = "gsplat"  # the backend under test; the reference is always "torch"


def object_scene(B, N, V, size, seed=0, device=DEVICE):
    """Random Gaussians in [-0.5, 0.5]^3 seen by an orbit of V cameras at radius 2."""
    g = torch.Generator().manual_seed(seed)
    means = torch.rand(B, N, 3, generator=g) - 0.5
    quats = torch.randn(B, N, 4, generator=g)
    scales = torch.exp(torch.empty(B, N, 3).uniform_(math.log(0.005), math.log(0.03), generator=g))
    opac = torch.rand(B, N, generator=g) * 0.95 + 0.05
    colors = torch.rand(B, N, 3, generator=g)
    w2c, K = orbit_cameras(V, elevation_deg=20.0, radius=2.0)
    Ks = pixel_intrinsics(K, size, size)
    tensors = (means, quats, scales, opac, colors, w2c.expand(B, V, 4, 4), Ks.expand(B, V, 3, 3))
    return tuple(t.to(device).contiguous() for t in tensors)


def _require_gsplat():
    if FAST == "gsplat" and not rz.gsplat_available():
        pytest.skip("gsplat is not installed")


def _mae(a, b):
    return (a - b).abs().mean().item()


@pytest.mark.parametrize("N,V,size", [(3000, 4, 128), (5000, 3, 256)])
def test_gsplat_matches_torch_images(N, V, size):
    _require_gsplat()
    scene = object_scene(2, N, V, size, seed=N)
    bg = torch.rand(2, V, 3, device=scene[0].device)
    fast = rasterize(*scene, size, size, background=bg, backend=FAST)
    ref = rasterize(*scene, size, size, background=bg, backend="torch")
    assert ref.alpha.mean() > 0.1  # the object covers a fair part of the images
    print(f"N={N} V={V} {size}px: MAE rgb {_mae(fast.rgb, ref.rgb):.2e} alpha {_mae(fast.alpha, ref.alpha):.2e} "
          f"depth·alpha {_mae(fast.depth * fast.alpha, ref.depth * ref.alpha):.2e}")
    assert _mae(fast.rgb, ref.rgb) < 1e-3
    assert _mae(fast.alpha, ref.alpha) < 1e-3
    assert _mae(fast.depth * fast.alpha, ref.depth * ref.alpha) < 2e-3  # depths are ~2
    solid = (ref.alpha > 0.5) & (fast.alpha > 0.5)
    assert _mae(fast.depth[solid], ref.depth[solid]) < 1e-3


@pytest.mark.parametrize("N,V,size", [(2000, 2, 128), (4000, 2, 256)])
def test_gsplat_matches_torch_gradients(N, V, size):
    _require_gsplat()
    scene = object_scene(1, N, V, size, seed=N + 1)
    g = torch.Generator(device=scene[0].device).manual_seed(0)
    w_rgb = torch.rand(1, V, size, size, 3, device=scene[0].device, generator=g)
    w_alpha = torch.rand(1, V, size, size, 1, device=scene[0].device, generator=g)
    w_depth = torch.rand(1, V, size, size, 1, device=scene[0].device, generator=g)
    names = ("means", "quats", "scales", "opacities", "colors")
    grads = {}
    for backend in (FAST, "torch"):
        leaves = [t.clone().requires_grad_() for t in scene[:5]]
        out = rasterize(*leaves, *scene[5:], size, size, background=(1.0, 1.0, 1.0), backend=backend)
        loss = (out.rgb * w_rgb).sum() + (out.alpha * w_alpha).sum() + (out.depth * out.alpha * w_depth).sum()
        grads[backend] = torch.autograd.grad(loss, leaves)
    for name, a, b in zip(names, grads[FAST], grads["torch"]):
        cos = torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0).item()
        print(f"N={N} V={V} {size}px grad {name}: cosine {cos:.5f}")
        assert cos >= 0.99, name


def test_render_gaussians_auto_uses_gsplat_and_matches_torch(caplog):
    _require_gsplat()
    from gvf.gaussians import Gaussians

    g = torch.Generator().manual_seed(3)
    objs = []
    for n in (1500, 900):
        xyz = torch.rand(n, 3, generator=g) - 0.5
        objs.append(Gaussians.from_activated(
            xyz, torch.randn(n, 3, generator=g), torch.rand(n, 1, generator=g) * 0.9 + 0.05,
            torch.rand(n, 3, generator=g) * 0.02 + 0.002, torch.nn.functional.normalize(torch.randn(n, 4, generator=g), dim=-1),
        ).to(DEVICE))
    w2c, K = orbit_cameras(4)
    rz._log_backend_once.cache_clear()
    with caplog.at_level(logging.INFO, logger="gvf.render.rasterizer"):
        fast = render_gaussians(objs, w2c.to(DEVICE), K.to(DEVICE), 128)
    assert any("backend: gsplat" in r.getMessage() for r in caplog.records)
    ref = render_gaussians(objs, w2c.to(DEVICE), K.to(DEVICE), 128, backend="torch")
    assert fast.rgb.shape == (2, 4, 128, 128, 3)
    assert _mae(fast.rgb, ref.rgb) < 1e-3 and _mae(fast.alpha, ref.alpha) < 1e-3


def test_gsplat_backend_keeps_float64_dtype():
    _require_gsplat()
    scene = tuple(t.double() for t in object_scene(1, 500, 2, 64))
    out = rasterize(*scene, 64, 64, backend=FAST)
    assert out.rgb.dtype == torch.float64
    ref = rasterize(*scene, 64, 64, backend="torch")
    assert _mae(out.rgb, ref.rgb) < 1e-3
