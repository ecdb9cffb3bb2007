"""Pure-PyTorch reference of the Gaussian rasterizer, with gsplat 1.5's "antialiased" semantics.

Same maths as ``gsplat.rasterization(..., rasterize_mode="antialiased", render_mode="RGB+ED")``:

* projection: 3-D covariance ``R S Sᵀ Rᵀ`` from a (re-normalised) wxyz quaternion and scales, moved to
  the camera frame and projected with the Jacobian of the perspective map (EWA splatting); the x/z and
  y/z entries of the Jacobian are clamped to the image extent plus 30 % of the FoV tangent on each side
  (1.3 × tan(fov/2) for a centred principal point), as gsplat and 3DGS do;
* mip-splatting 2-D filter: ``eps2d`` is added to the diagonal of the 2-D covariance and the opacity is
  rescaled by ``sqrt(det Σ / det(Σ + eps2d I))``;
* a Gaussian is dropped when its centre depth lies outside [near, far];
* pixel (i, j) has its centre at (j + 0.5, i + 0.5) in pixel units; the Gaussian weight is
  ``exp(-½ dᵀ Σ⁻¹ d)``; ``α = min(0.999, opacity · weight)`` and α < 1/255 is skipped;
* front-to-back compositing by camera-space depth; a pixel stops at the first Gaussian that would bring
  its transmittance to ≤ 1e-4 (that Gaussian excluded); the background is added as ``T_final · bg``;
  depth is the expected depth ``Σ wᵢ zᵢ / max(α, 1e-10)``.

Like gsplat, each Gaussian is only evaluated on the pixels of its bounding box (the box that holds
every pixel where α can reach 1/255, so this changes no result). The (pixel, Gaussian) pairs are sorted
by pixel then depth, and the front-to-back transmittance is a segmented exclusive cumulative product,
computed as a float64 cumulative sum of log(1 - α). Images are processed in groups holding at most
``PAIR_BUDGET`` pairs (an image with more is cut into bands of rows); with autograd on, each such
tile is recomputed in the backward pass (activation checkpointing), so memory stays bounded by one tile.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint

ALPHA_THRESHOLD = 1.0 / 255.0  # smaller alphas are skipped (gsplat, 3DGS)
MAX_ALPHA = 0.999  # alpha clamp (gsplat, 3DGS)
MIN_TRANSMITTANCE = 1e-4  # a pixel is "done" before its transmittance reaches this
FOV_MARGIN = 0.3  # Jacobian clamp: image extent plus 30 % of tan(fov/2)
MAX_EXTENT = 3.33  # box half-size in standard deviations (gsplat); never binds for opacity <= 1
PAIR_BUDGET = 2**22  # (pixel, Gaussian) pairs handled at once on the CPU (~300 bytes each with autograd)
PAIR_BUDGET_ACCELERATOR = 2**24  # the same on a GPU, where fewer, larger steps pay off


class RasterInputs(NamedTuple):
    """The checked inputs of one rasterizer call, in the positional order both backends take
    (``rasterize_torch`` and ``rasterize_gsplat`` share this signature; see :func:`gvf.render.rasterize`)."""

    means: Tensor  # (B, N, 3)
    quats: Tensor  # (B, N, 4)
    scales: Tensor  # (B, N, 3)
    opacities: Tensor  # (B, N)
    colors: Tensor  # (B, N, 3)
    viewmats: Tensor  # (B, V, 4, 4)
    Ks: Tensor  # (B, V, 3, 3)
    width: int
    height: int
    backgrounds: Tensor  # (B, V, 3)
    eps2d: float
    near: float
    far: float


def quat_to_rotmat(quats: Tensor) -> Tensor:
    """Rotation matrices (..., 3, 3) of wxyz quaternions (..., 4); the quaternions are normalised first."""
    w, x, y, z = F.normalize(quats, dim=-1).unbind(-1)
    rows = (
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    )
    return torch.stack(rows, dim=-1).reshape(*quats.shape[:-1], 3, 3)


def project_gaussians(
    means: Tensor,  # (B, N, 3)
    quats: Tensor,  # (B, N, 4)
    scales: Tensor,  # (B, N, 3)
    opacities: Tensor,  # (B, N)
    viewmats: Tensor,  # (B, V, 4, 4)
    Ks: Tensor,  # (B, V, 3, 3)
    width: int,
    height: int,
    eps2d: float,
    near: float,
    far: float,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """EWA projection of 3-D Gaussians into every camera.

    Returns:
        means2d (B, V, N, 2) pixel coordinates, conics (B, V, N, 3) upper triangle (a, b, c) of the
        inverse blurred 2-D covariance, depths (B, V, N) camera-space z, opacities (B, V, N) after the
        antialiasing compensation (0 where culled), valid (B, V, N) bool, and radii (B, V, N, 2), the
        detached half-sizes in pixels of the box outside which α < 1/255 (0 where culled).
    """
    R_view = viewmats[..., :3, :3]  # (B, V, 3, 3)
    t_view = viewmats[..., :3, 3]  # (B, V, 3)
    mean_c = torch.einsum("bvij,bnj->bvni", R_view, means) + t_view[:, :, None]  # (B, V, N, 3)
    x, y, z = mean_c.unbind(-1)  # each (B, V, N)

    in_range = (z >= near) & (z <= far)
    z = torch.where(in_range, z, torch.ones_like(z))  # keeps culled entries finite (no NaN gradients)

    fx, fy = Ks[..., 0, 0, None], Ks[..., 1, 1, None]  # (B, V, 1)
    cx, cy = Ks[..., 0, 2, None], Ks[..., 1, 2, None]
    tan_x, tan_y = 0.5 * width / fx, 0.5 * height / fy
    u = torch.clamp(x / z, -(cx / fx + FOV_MARGIN * tan_x), (width - cx) / fx + FOV_MARGIN * tan_x)
    v = torch.clamp(y / z, -(cy / fy + FOV_MARGIN * tan_y), (height - cy) / fy + FOV_MARGIN * tan_y)

    # Jacobian of (fx x/z + cx, fy y/z + cy): rows (fx/z)(1, 0, -x/z) and (fy/z)(0, 1, -y/z).
    zero, one = torch.zeros_like(u), torch.ones_like(u)
    J = torch.stack(
        [torch.stack([one, zero, -u], -1) * (fx / z)[..., None], torch.stack([zero, one, -v], -1) * (fy / z)[..., None]],
        dim=-2,
    )  # (B, V, N, 2, 3)

    M = quat_to_rotmat(quats) * scales[..., None, :]  # (B, N, 3, 3) = R S, so Σ = M Mᵀ
    T = J @ (R_view[:, :, None] @ M[:, None])  # (B, V, N, 2, 3), Σ_2d = T Tᵀ
    cov2d = T @ T.transpose(-1, -2)  # (B, V, N, 2, 2)
    a, b, c = cov2d[..., 0, 0], cov2d[..., 0, 1], cov2d[..., 1, 1]

    det_orig = a * c - b * b
    a, c = a + eps2d, c + eps2d
    det = a * c - b * b
    ok_det = det > 0
    det = torch.where(ok_det, det, torch.ones_like(det))
    compensation = torch.sqrt(torch.clamp_min(det_orig / det, 0.0))
    conics = torch.stack([c / det, -b / det, a / det], dim=-1)  # (B, V, N, 3)

    means2d = torch.stack([fx * x / z + cx, fy * y / z + cy], dim=-1)  # (B, V, N, 2)
    opac = opacities[:, None] * compensation  # (B, V, N)
    valid = in_range & ok_det & (opac >= ALPHA_THRESHOLD)  # lower opacities can never pass the α test
    opac = torch.where(valid, opac, torch.zeros_like(opac))
    with torch.no_grad():
        # 0.5 dᵀΣ⁻¹d <= log(255 α₀) is an ellipse whose bounding box has half-sizes extent·sqrt(Σ_xx), extent·sqrt(Σ_yy).
        extent = torch.sqrt(2 * torch.log(torch.clamp_min(opac, ALPHA_THRESHOLD) / ALPHA_THRESHOLD)).clamp_max(MAX_EXTENT)
        radii = torch.stack([extent * a.sqrt(), extent * c.sqrt()], dim=-1) * valid[..., None]
    return means2d, conics, z, opac, valid, radii


def _pixel_pairs(radius: Tensor, center: Tensor, width: int, row0: int, row1: int) -> tuple[Tensor, Tensor, Tensor]:
    """All (entry, pixel) pairs whose pixel centre may lie inside an entry's box, in rows [row0, row1).

    Args:
        radius: (M, 2) box half-sizes in pixels; center: (M, 2) box centres (both detached).
    Returns:
        entry (Q,) index into M, px (Q,) and py (Q,) integer pixel coordinates.
    """
    lo = torch.floor(center - radius - 0.5)  # generous by up to one pixel; the α test decides
    hi = torch.ceil(center + radius - 0.5)
    x0 = lo[:, 0].clamp(0, width).long()
    y0 = lo[:, 1].clamp(row0, row1).long()
    nx = (hi[:, 0].clamp(-1, width - 1).long() - x0 + 1).clamp_min(0)
    ny = (hi[:, 1].clamp(row0 - 1, row1 - 1).long() - y0 + 1).clamp_min(0)
    counts = nx * ny  # (M,)
    entry = torch.repeat_interleave(torch.arange(len(counts), device=counts.device), counts)  # (Q,)
    local = torch.arange(len(entry), device=counts.device) - (torch.cumsum(counts, 0) - counts)[entry]
    return entry, x0[entry] + local % nx[entry], y0[entry] + local // nx[entry]


def _render_tile(
    means2d: Tensor,  # (G, N, 2)
    conics: Tensor,  # (G, N, 3)
    opac: Tensor,  # (G, N)
    feats: Tensor,  # (G, N, C)
    radii: Tensor,  # (G, N, 2) detached
    rank: Tensor,  # (G, N) depth rank of each Gaussian in its image
    width: int,
    row0: int,
    row1: int,
) -> tuple[Tensor, Tensor]:
    """Composite rows [row0, row1) of G images; returns blended features (G, R·W, C) and alpha (G, R·W)."""
    G, N = opac.shape
    P = (row1 - row0) * width
    # Per visible (image, Gaussian) entry first; the (pixel, entry) pairs only index into these.
    img, gid = torch.nonzero((radii > 0).all(-1), as_tuple=True)  # (M,)
    m2d, con, op, ft, rk = means2d[img, gid], conics[img, gid], opac[img, gid], feats[img, gid], rank[img, gid]
    entry, px, py = _pixel_pairs(radii[img, gid], m2d.detach(), width, row0, row1)  # (Q,)

    d = m2d.index_select(0, entry) - torch.stack([px, py], dim=-1).to(m2d.dtype) - 0.5  # (Q, 2) from the pixel centre
    c = con.index_select(0, entry)
    sigma = 0.5 * (c[:, 0] * d[:, 0] ** 2 + c[:, 2] * d[:, 1] ** 2) + c[:, 1] * d[:, 0] * d[:, 1]
    alpha = torch.clamp_max(op.index_select(0, entry) * torch.exp(-sigma), MAX_ALPHA)
    keep = (sigma >= 0) & (alpha >= ALPHA_THRESHOLD)
    alpha, entry = alpha[keep], entry[keep]
    seg = img[entry] * P + ((py - row0) * width + px)[keep]  # (Q,) output pixel

    # Sort the pairs by output pixel, then front to back.
    perm = torch.argsort(seg * N + rk[entry])
    alpha, entry, seg = alpha[perm], entry[perm], seg[perm]

    # Segmented exclusive cumprod of (1 - α) via a float64 cumsum of logs (α <= 0.999 keeps logs finite).
    log_keep = torch.log1p(-alpha.to(torch.float64))
    before = torch.cumsum(log_keep, 0) - log_keep
    _, seg_len = torch.unique_consecutive(seg, return_counts=True)
    log_T = before - before.index_select(0, torch.repeat_interleave(torch.cumsum(seg_len, 0) - seg_len, seg_len))
    T_before = torch.exp(log_T).to(alpha.dtype)
    # T only decreases, so "not yet done" is exactly T_after > 1e-4 (the stopping Gaussian is excluded).
    weights = alpha * T_before * (torch.exp(log_T + log_keep) > MIN_TRANSMITTANCE)  # (Q,)

    out = feats.new_zeros(G * P, feats.shape[-1]).index_add(0, seg, weights[:, None] * ft.index_select(0, entry))
    acc = alpha.new_zeros(G * P).index_add(0, seg, weights)
    return out.reshape(G, P, -1), acc.reshape(G, P)


def _plan_tiles(pairs_per_image: list[float], height: int, budget: float) -> list[tuple[int, int, int, int]]:
    """Cut B·V images into work tiles (image_start, image_end, row_start, row_end) of about ``budget`` pairs:
    consecutive whole images, or row bands of one image when that image alone exceeds the budget."""
    tiles, start, total = [], 0, 0.0
    for i, n_pairs in enumerate(pairs_per_image):
        if n_pairs > budget:
            if i > start:
                tiles.append((start, i, 0, height))
            bands = min(height, math.ceil(n_pairs / budget))
            rows = [round(k * height / bands) for k in range(bands + 1)]
            tiles += [(i, i + 1, r0, r1) for r0, r1 in zip(rows[:-1], rows[1:])]
            start, total = i + 1, 0.0
            continue
        if i > start and total + n_pairs > budget:
            tiles.append((start, i, 0, height))
            start, total = i, 0.0
        total += n_pairs
    if start < len(pairs_per_image):
        tiles.append((start, len(pairs_per_image), 0, height))
    return tiles


def rasterize_torch(*inputs, pair_budget: int | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Render (B, V, H, W, 3) colours, (B, V, H, W, 1) alpha and (B, V, H, W, 1) expected depth.

    ``inputs`` are the 13 fields of :class:`RasterInputs`, in order. ``pair_budget`` bounds the
    (pixel, Gaussian) pairs handled at once (default PAIR_BUDGET on the CPU, PAIR_BUDGET_ACCELERATOR
    elsewhere), by grouping whole images or cutting one image into bands of rows.
    """
    means, quats, scales, opacities, colors, viewmats, Ks, width, height, backgrounds, eps2d, near, far = (
        RasterInputs(*inputs)
    )
    B, N = means.shape[:2]
    V = viewmats.shape[1]
    C = colors.shape[-1]
    BV, H, W = B * V, height, width
    means2d, conics, depths, opac, valid, radii = project_gaussians(
        means, quats, scales, opacities, viewmats, Ks, width, height, eps2d, near, far
    )
    means2d, conics, radii = means2d.reshape(BV, N, 2), conics.reshape(BV, N, 3), radii.reshape(BV, N, 2)
    depths, opac, valid = depths.reshape(BV, N), opac.reshape(BV, N), valid.reshape(BV, N)
    feats = torch.cat([colors[:, None].expand(B, V, N, C).reshape(BV, N, C), depths[..., None]], dim=-1)  # (BV, N, C+1)

    with torch.no_grad():
        order = torch.argsort(torch.where(valid, depths, torch.full_like(depths, float("inf"))), dim=-1, stable=True)
        rank = torch.empty_like(order).scatter_(1, order, torch.arange(N, device=order.device).expand(BV, N))
        # About the number of pairs of each image (box areas), to plan the work.
        area = ((2 * radii[..., 0] + 2).clamp_max(W) * (2 * radii[..., 1] + 2).clamp_max(H) * valid).sum(-1).tolist()

    use_checkpoint = torch.is_grad_enabled() and any(
        t.requires_grad for t in (means, quats, scales, opacities, colors, viewmats, Ks)
    )
    outs, accs, bands = [], [], []
    budget = pair_budget or (PAIR_BUDGET if means.device.type == "cpu" else PAIR_BUDGET_ACCELERATOR)
    for s, e, r0, r1 in _plan_tiles(area, H, budget):
        args = (means2d[s:e], conics[s:e], opac[s:e], feats[s:e], radii[s:e], rank[s:e], W, r0, r1)
        out, acc = checkpoint(_render_tile, *args, use_reentrant=False) if use_checkpoint else _render_tile(*args)
        if (r0, r1) == (0, H):
            outs.append(out)
            accs.append(acc)
            continue
        bands.append((out, acc))
        if r1 == H:  # last band of an image: rows are contiguous in the row-major pixel index
            outs.append(torch.cat([b[0] for b in bands], dim=1))
            accs.append(torch.cat([b[1] for b in bands], dim=1))
            bands = []
    out, alpha = torch.cat(outs), torch.cat(accs)  # (BV, P, C+1), (BV, P)

    # Σ weights telescopes to 1 - T_final, so alpha doubles as the background weight.
    rgb = out[..., :C] + (1 - alpha)[..., None] * backgrounds.reshape(BV, 1, C)
    depth = out[..., C:] / torch.clamp_min(alpha[..., None], 1e-10)
    return rgb.reshape(B, V, H, W, C), alpha.reshape(B, V, H, W, 1), depth.reshape(B, V, H, W, 1)


