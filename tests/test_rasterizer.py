"""CPU tests of the Gaussian rasterizer (torch backend) against a first-principles per-pixel reference."""

import logging
import math

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from gvf.render import _torch_backend as tb
from gvf.render import rasterizer as rz
from gvf.render.rasterizer import RenderOutput, rasterize


# ---------------------------------------------------------------------------------------------------
# Independent reference: numpy float64, one Gaussian at a time, every pixel, written from the formulas.
def reference_render(means, quats_wxyz, scales, opacities, colors, w2c, K, width, height, bg, eps2d=0.1, clamp=True):
    """Returns rgb (H, W, 3), alpha (H, W), depth (H, W) for one camera."""
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    Rw, tw = w2c[:3, :3], w2c[:3, 3]
    jj, ii = np.meshgrid(np.arange(width) + 0.5, np.arange(height) + 0.5)  # pixel centres (H, W)
    splats = []
    for m, q, s, o, col in zip(means, quats_wxyz, scales, opacities, colors):
        Rg = Rotation.from_quat([q[1], q[2], q[3], q[0]]).as_matrix()  # scipy is scalar-last
        cov3 = Rg @ np.diag(np.asarray(s) ** 2) @ Rg.T
        x, y, z = Rw @ m + tw
        if z < 0.01:
            continue
        lx = (width - cx) / fx + 0.3 * (width / 2) / fx, cx / fx + 0.3 * (width / 2) / fx
        ly = (height - cy) / fy + 0.3 * (height / 2) / fy, cy / fy + 0.3 * (height / 2) / fy
        ux = np.clip(x / z, -lx[1], lx[0]) if clamp else x / z
        uy = np.clip(y / z, -ly[1], ly[0]) if clamp else y / z
        J = np.array([[fx / z, 0, -fx * ux / z], [0, fy / z, -fy * uy / z]])
        cov2 = J @ Rw @ cov3 @ Rw.T @ J.T
        blurred = cov2 + eps2d * np.eye(2)
        comp = math.sqrt(max(np.linalg.det(cov2), 0) / np.linalg.det(blurred))
        centre = np.array([fx * x / z + cx, fy * y / z + cy])
        splats.append((z, centre, np.linalg.inv(blurred), o * comp, np.asarray(col), z))
    splats.sort(key=lambda t: t[0])

    T = np.ones((height, width))
    done = np.zeros((height, width), bool)
    rgb = np.zeros((height, width, 3))
    dsum = np.zeros((height, width))
    for _, centre, inv, o, col, z in splats:
        d = np.stack([centre[0] - jj, centre[1] - ii], -1)  # (H, W, 2)
        power = 0.5 * np.einsum("hwi,ij,hwj->hw", d, inv, d)
        a = np.minimum(0.999, o * np.exp(-power))
        use = (a >= 1 / 255) & ~done
        stop = use & (T * (1 - a) <= 1e-4)  # this Gaussian would finish the pixel: it is not blended
        done |= stop
        use &= ~stop
        w = np.where(use, a * T, 0.0)
        rgb += w[..., None] * col
        dsum += w * z
        T = np.where(use, T * (1 - a), T)
    alpha = 1 - T
    return rgb + T[..., None] * np.asarray(bg), alpha, dsum / np.maximum(alpha, 1e-10)


def look_at(cam, target=(0.0, 0.0, 0.0)):
    """OpenCV world->camera with world +Z as image up."""
    cam, target = np.asarray(cam, float), np.asarray(target, float)
    f = (target - cam) / np.linalg.norm(target - cam)
    r = np.cross(f, [0, 0, 1.0])
    r /= np.linalg.norm(r)
    d = np.cross(f, r)
    M = np.eye(4)
    M[:3, :3] = np.stack([r, d, f])
    M[:3, 3] = -M[:3, :3] @ cam
    return M


def run_torch(scene, bg, **kw):
    t = {k: torch.tensor(np.asarray(v), dtype=torch.float64)[None] for k, v in scene.items() if k not in ("w2c", "K")}
    out = rasterize(
        t["means"], t["quats"], t["scales"], t["opacities"], t["colors"],
        torch.tensor(scene["w2c"])[None, None], torch.tensor(scene["K"])[None, None],
        scene["W"], scene["H"], background=torch.tensor(bg, dtype=torch.float64), backend="torch", **kw,
    )
    return out.rgb[0, 0].numpy(), out.alpha[0, 0, ..., 0].numpy(), out.depth[0, 0, ..., 0].numpy()


def make_scene(kind):
    W, H = 20, 14
    K = np.array([[22.0, 0, 9.3], [0, 21.0, 7.6], [0, 0, 1]])  # off-centre principal point, fx != fy
    w2c = look_at([0.4, -2.0, 0.3])
    rng = np.random.default_rng(3)
    if kind == "one":
        means = [[0.05, 0.0, 0.02]]
        quats = [[0.8, 0.3, -0.4, 0.2]]
        scales = [[0.2, 0.05, 0.1]]
        opac = [0.8]
    elif kind == "two_overlapping":  # given back to front: the renderer must sort them
        means = [[0.0, 0.3, 0.0], [0.05, -0.2, 0.03]]
        quats = [[1.0, 0.0, 0.0, 0.0], [0.6, -0.2, 0.5, 0.3]]
        scales = [[0.25, 0.25, 0.25], [0.1, 0.03, 0.15]]
        opac = [0.9, 0.7]
    elif kind == "stack":  # opaque layers end pixels early (transmittance <= 1e-4)
        n = 8
        means = np.c_[rng.normal(0, 0.03, n), np.linspace(0.4, -0.4, n), rng.normal(0, 0.03, n)]
        quats = rng.normal(size=(n, 4))
        quats /= np.linalg.norm(quats, axis=1, keepdims=True)
        scales = rng.uniform(0.15, 0.3, (n, 3))
        opac = np.full(n, 0.99)
    elif kind == "fov_edge":  # centre outside the image beyond 1.3 tan(fov/2): the Jacobian is clamped
        means = [[1.5, 0.0, 0.0], [0.0, 0.0, 0.0]]
        quats = [[1.0, 0.0, 0.0, 0.0], [0.9, 0.1, 0.1, 0.1]]
        scales = [[0.3, 0.3, 0.3], [0.1, 0.1, 0.1]]
        opac = [0.9, 0.9]
        w2c = look_at([0.0, -2.0, 0.0])
    n = len(means)
    colors = rng.uniform(0, 1, (n, 3))
    return dict(means=np.asarray(means, float), quats=np.asarray(quats, float), scales=np.asarray(scales, float),
                opacities=np.asarray(opac, float), colors=colors, w2c=w2c, K=K, W=W, H=H)


def reference(scene, bg, **kw):
    return reference_render(scene["means"], scene["quats"], scene["scales"], scene["opacities"], scene["colors"],
                            scene["w2c"], scene["K"], scene["W"], scene["H"], bg, **kw)


@pytest.mark.parametrize("kind", ["one", "two_overlapping", "stack", "fov_edge"])
def test_torch_backend_matches_first_principles(kind):
    scene = make_scene(kind)
    bg = [0.2, 0.5, 0.9]
    ref_rgb, ref_alpha, ref_depth = reference(scene, bg)
    rgb, alpha, depth = run_torch(scene, bg)
    assert ref_alpha.max() > 0.5  # the scene is actually visible
    np.testing.assert_allclose(rgb, ref_rgb, atol=1e-9)
    np.testing.assert_allclose(alpha, ref_alpha, atol=1e-9)
    np.testing.assert_allclose(depth, ref_depth, atol=1e-8)
    if kind == "stack":  # early termination really happened somewhere
        assert (1 - ref_alpha).min() < 1e-3
    if kind == "fov_edge":  # the clamp really changes the image
        assert np.abs(reference(scene, bg, clamp=False)[0] - ref_rgb).max() > 1e-3


def test_input_order_does_not_matter():
    scene = make_scene("stack")
    perm = np.random.default_rng(0).permutation(len(scene["means"]))
    shuffled = {k: (v[perm] if isinstance(v, np.ndarray) and k not in ("w2c", "K") else v) for k, v in scene.items()}
    for a, b in zip(run_torch(scene, [1, 1, 1]), run_torch(shuffled, [1, 1, 1])):
        np.testing.assert_allclose(a, b, atol=1e-12)


def _random_scene(B, N, V, size, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    means = torch.rand(B, N, 3, generator=g, dtype=dtype) - 0.5
    quats = torch.randn(B, N, 4, generator=g, dtype=dtype)
    scales = torch.rand(B, N, 3, generator=g, dtype=dtype) * 0.05 + 0.01
    opac = torch.rand(B, N, generator=g, dtype=dtype) * 0.9 + 0.05
    colors = torch.rand(B, N, 3, generator=g, dtype=dtype)
    az = torch.arange(V, dtype=torch.float64) * 2 * math.pi / V
    w2c = torch.stack([torch.tensor(look_at([2 * math.sin(a), -2 * math.cos(a), 0.3])) for a in az]).to(dtype)
    f = size / 2 / math.tan(math.radians(49.1) / 2)
    K = torch.tensor([[f, 0, size / 2], [0, f, size / 2], [0, 0, 1]], dtype=dtype)
    return means, quats, scales, opac, colors, w2c.expand(B, V, 4, 4), K.expand(B, V, 3, 3)


def test_gradcheck_float64():
    g = torch.Generator().manual_seed(1)
    means = (torch.rand(1, 3, 3, generator=g, dtype=torch.float64) - 0.5) * 0.3
    quats = torch.randn(1, 3, 4, generator=g, dtype=torch.float64)
    scales = torch.rand(1, 3, 3, generator=g, dtype=torch.float64) * 0.2 + 0.15
    opac = torch.rand(1, 3, generator=g, dtype=torch.float64) * 0.5 + 0.3
    colors = torch.rand(1, 3, 3, generator=g, dtype=torch.float64)
    w2c = torch.tensor(np.stack([look_at([0.3, -2.0, 0.2]), look_at([2.0, 0.3, -0.2])]))[None]
    K = torch.tensor([[9.0, 0, 4.0], [0, 9.0, 4.0], [0, 0, 1]], dtype=torch.float64).expand(1, 2, 3, 3)
    bg = torch.tensor([0.3, 0.6, 0.1], dtype=torch.float64)

    def f(m, q, s, o, c):
        out = rasterize(m, q, s, o, c, w2c, K, 8, 8, background=bg, backend="torch")
        return out.rgb, out.alpha, out.depth

    inputs = tuple(x.requires_grad_() for x in (means, quats, scales, opac, colors))
    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-6, rtol=1e-4, fast_mode=True)


def test_alpha_and_depth_sanity():
    means, quats, scales, opac, colors, w2c, K = _random_scene(1, 60, 2, 24, dtype=torch.float64)
    out = rasterize(means, quats, scales, opac, colors, w2c, K, 24, 24, backend="torch")
    assert isinstance(out, RenderOutput)
    assert out.rgb.shape == (1, 2, 24, 24, 3) and out.alpha.shape == out.depth.shape == (1, 2, 24, 24, 1)
    assert (out.alpha >= 0).all() and (out.alpha <= 1).all() and out.alpha.max() > 0.5
    seen = out.alpha[..., 0] > 1e-6
    cam_z = torch.einsum("bvij,bnj->bvni", w2c[..., :3, :3], means) + w2c[:, :, None, :3, 3]
    zmin, zmax = cam_z[..., 2].amin(-1), cam_z[..., 2].amax(-1)  # (1, 2)
    d = out.depth[..., 0]
    assert (d[seen] > 0).all() and (d == 0)[~seen].all()
    for v in range(2):  # an expected depth is a convex combination of Gaussian depths
        dv = d[0, v][seen[0, v]]
        assert dv.min() >= zmin[0, v] - 1e-9 and dv.max() <= zmax[0, v] + 1e-9

    # One isolated Gaussian: its depth wherever it is drawn, and nothing at all with zero opacity.
    one = rasterize(means[:, :1], quats[:, :1], scales[:, :1], opac[:, :1], colors[:, :1], w2c, K, 24, 24, backend="torch")
    for v in range(2):
        drawn = one.alpha[0, v, ..., 0] > 0
        assert drawn.any()
        torch.testing.assert_close(one.depth[0, v, ..., 0][drawn], cam_z[0, v, 0, 2].expand(int(drawn.sum())))
    empty = rasterize(means, quats, scales, opac * 0, colors, w2c, K, 24, 24, background=(0.1, 0.2, 0.3), backend="torch")
    assert (empty.alpha == 0).all() and (empty.depth == 0).all()
    torch.testing.assert_close(empty.rgb, torch.tensor([0.1, 0.2, 0.3], dtype=torch.float64).expand_as(empty.rgb))


def test_background_handling():
    scene = _random_scene(2, 40, 3, 16)
    black = rasterize(*scene, 16, 16, backend="torch")
    torch.testing.assert_close(black.rgb, rasterize(*scene, 16, 16, background=(0, 0, 0), backend="torch").rgb)
    bg = torch.rand(2, 3, 3)
    per_view = rasterize(*scene, 16, 16, background=bg, backend="torch")
    torch.testing.assert_close(per_view.rgb, black.rgb + (1 - black.alpha) * bg[:, :, None, None])
    white = rasterize(*scene, 16, 16, background=torch.ones(3), backend="torch")
    torch.testing.assert_close(white.rgb, black.rgb + (1 - black.alpha))
    torch.testing.assert_close(white.alpha, black.alpha)
    torch.testing.assert_close(white.depth, black.depth)


def test_batch_of_objects_and_views_equals_separate_calls():
    means, quats, scales, opac, colors, w2c, K = _random_scene(2, 50, 3, 16, seed=4)
    w2c = w2c.clone()
    w2c[1] = w2c[1].roll(1, dims=0)  # different cameras per batch element
    bg = torch.rand(2, 3, 3)
    joint = rasterize(means, quats, scales, opac, colors, w2c, K, 16, 12, background=bg, backend="torch")
    for b in range(2):
        for v in range(3):
            one = rasterize(means[b:b + 1], quats[b:b + 1], scales[b:b + 1], opac[b:b + 1], colors[b:b + 1],
                            w2c[b:b + 1, v:v + 1], K[b:b + 1, v:v + 1], 16, 12, background=bg[b, v], backend="torch")
            for x, y in zip(joint, one):
                torch.testing.assert_close(x[b, v], y[0, 0], atol=1e-6, rtol=0)


def test_tiling_of_the_work_does_not_change_values_or_gradients():
    scene = [x.clone().requires_grad_() if i < 5 else x for i, x in enumerate(_random_scene(2, 80, 3, 16, seed=2))]
    results = []
    # default: all images at once; 1: one row of one image at a time; 3000: bands and small groups mixed
    for budget in (None, 1, 3000):
        out = rz.rasterize_torch(*scene, 16, 16, torch.rand(2, 3, 3, generator=torch.Generator().manual_seed(0)),
                                 0.1, 0.01, 1e10, pair_budget=budget)
        grads = torch.autograd.grad(sum((o * torch.linspace(0, 1, o.numel()).view_as(o)).sum() for o in out), scene[:5])
        results.append((out, grads))
    for other in results[1:]:
        for a, b in zip(results[0][0] + results[0][1], other[0] + other[1]):
            torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
    tiles = tb._plan_tiles([100.0, 5000.0, 100.0, 100.0], 16, 3000)
    assert tiles == [(0, 1, 0, 16), (1, 2, 0, 8), (1, 2, 8, 16), (2, 4, 0, 16)]


def test_near_far_culling():
    means, quats, scales, opac, colors, w2c, K = _random_scene(1, 1, 1, 16, dtype=torch.float64)
    means = torch.zeros_like(means)  # the origin, 2 units in front of the camera
    args = (quats, torch.full_like(scales, 0.2), torch.full_like(opac, 0.9), colors, w2c, K, 16, 16)
    assert rasterize(means, *args, backend="torch").alpha.max() > 0.5
    assert rasterize(means, *args, near=2.5, backend="torch").alpha.max() == 0
    assert rasterize(means, *args, far=1.5, backend="torch").alpha.max() == 0
    cam = torch.linalg.inv(w2c[0, 0])[:3, 3]
    behind = (2 * cam - 0)[None, None]  # mirror of the origin through the camera: z = -2
    assert rasterize(behind, *args, backend="torch").alpha.max() == 0


def test_auto_backend_on_cpu_is_torch_and_logged_once(caplog):
    rz._log_backend_once.cache_clear()
    scene = _random_scene(1, 5, 1, 8)
    with caplog.at_level(logging.INFO, logger="gvf.render.rasterizer"):
        a = rasterize(*scene, 8, 8)
        rasterize(*scene, 8, 8)
    assert sum("backend: torch" in r.getMessage() for r in caplog.records) == 1
    torch.testing.assert_close(a.rgb, rasterize(*scene, 8, 8, backend="torch").rgb)


def test_gsplat_backend_errors(monkeypatch):
    scene = _random_scene(1, 5, 1, 8)
    monkeypatch.setattr(rz, "gsplat_available", lambda: False)
    with pytest.raises(ImportError, match="pip install"):
        rasterize(*scene, 8, 8, backend="gsplat")
    monkeypatch.setattr(rz, "gsplat_available", lambda: True)
    with pytest.raises(ValueError, match="CUDA"):
        rasterize(*scene, 8, 8, backend="gsplat")


def test_bad_inputs():
    means, quats, scales, opac, colors, w2c, K = _random_scene(1, 5, 2, 8)
    with pytest.raises(ValueError, match="quats"):
        rasterize(means, quats[..., :3], scales, opac, colors, w2c, K, 8, 8)
    with pytest.raises(ValueError, match="Ks"):
        rasterize(means, quats, scales, opac, colors, w2c, K[:, :1], 8, 8)
    with pytest.raises(ValueError, match="viewmats"):
        rasterize(means, quats, scales, opac, colors, w2c[0], K, 8, 8)
    with pytest.raises(ValueError, match="background"):
        rasterize(means, quats, scales, opac, colors, w2c, K, 8, 8, background=(1.0, 1.0))
    with pytest.raises(ValueError, match="backend"):
        rasterize(means, quats, scales, opac, colors, w2c, K, 8, 8, backend="cuda")
    with pytest.raises(ValueError, match="width"):
        rasterize(means, quats, scales, opac, colors, w2c, K, 0, 8)
    # (B, N, 1) opacities, the layout of Gaussians.opacity, are accepted
    torch.testing.assert_close(rasterize(means, quats, scales, opac[..., None], colors, w2c, K, 8, 8).rgb,
                               rasterize(means, quats, scales, opac, colors, w2c, K, 8, 8).rgb)


def _gaussians(n, seed):
    from gvf.gaussians import Gaussians

    g = torch.Generator().manual_seed(seed)
    return Gaussians(
        xyz=torch.rand(n, 3, generator=g) - 0.5,
        features_dc=torch.randn(n, 3, generator=g),
        opacity_raw=torch.randn(n, 1, generator=g) + 2,
        scaling_raw=torch.randn(n, 3, generator=g) * 0.3 + 2,
        rotation_raw=torch.randn(n, 4, generator=g) * 0.3,
    )


def test_render_gaussians_pads_broadcasts_and_applies_deltas():
    from gvf.render.rasterizer import render_gaussians

    objs = [_gaussians(30, 0), _gaussians(17, 1)]
    deltas = [torch.randn(30, 14) * 0.05, torch.randn(17, 14) * 0.05]
    w2c = torch.tensor(np.stack([look_at([0.0, -2.0, 0.0]), look_at([2.0, 0.0, 0.5])]), dtype=torch.float32)
    f = 0.5 / math.tan(math.radians(49.1) / 2)
    K_norm = torch.tensor([[f, 0, 0.5], [0, f, 0.5], [0, 0, 1]])
    out = render_gaussians(objs, w2c, K_norm, (12, 16), deltas=deltas, backend="torch")
    assert out.rgb.shape == (2, 2, 12, 16, 3)
    K_pix = torch.tensor([[f * 16, 0, 8.0], [0, f * 12, 6.0], [0, 0, 1]]).expand(1, 2, 3, 3)
    for b, (g, d) in enumerate(zip(objs, deltas)):
        moved = g.with_variation(d)
        ref = rasterize(moved.xyz[None], moved.rotation[None], moved.scaling[None], moved.opacity[None, :, 0],
                        moved.rgb[None], w2c[None], K_pix, 16, 12, background=(1, 1, 1), near=0.2, backend="torch")
        for x, y in zip(out, ref):
            torch.testing.assert_close(x[b], y[0], atol=1e-6, rtol=0)
    # the deltas matter, and a single object with B deltas renders B frames of it
    plain = render_gaussians(objs[0], w2c, K_norm, 16, backend="torch")
    frames = render_gaussians(objs[0], w2c, K_norm, 16, deltas=torch.stack([torch.zeros(30, 14), deltas[0]]), backend="torch")
    torch.testing.assert_close(frames.rgb[0], plain.rgb[0])
    assert (frames.rgb[1] - plain.rgb[0]).abs().max() > 1e-2
    assert (plain.rgb[0][plain.alpha[0, ..., 0] == 0] == 1).all()  # white background by default
    with pytest.raises(ValueError, match="deltas"):
        render_gaussians(objs, w2c, K_norm, 16, deltas=deltas[:1])
    with pytest.raises(ValueError, match="intrinsics"):
        render_gaussians(objs, w2c, K_norm[None].expand(3, 3, 3), 16)
