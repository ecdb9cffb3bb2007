"""Surface voxelisation of the canonical mesh and per-voxel image features (spec §7.2).

`voxelize_surface` marks every voxel of a 64³ grid over [-0.5, 0.5]³ whose closed box intersects a
triangle (exact separating-axis triangle–box test, the test behind TRELLIS's
``open3d.geometry.VoxelGrid.create_from_triangle_mesh_within_bounds``; vertices are first clamped to
the cube as TRELLIS does). Voxel i has centre ``(i + 0.5)/R − 0.5`` and, back from a centre,
``i = floor((pos + 0.5)·R)``; indices are stored as uint8.

`voxel_features` projects voxel centres into every view, samples each view's feature map bilinearly
(``grid_sample(align_corners=False)`` at ``uv·2 − 1``) and averages over ALL views, visible or not,
exactly as TRELLIS/upstream do.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..render.cameras import project_points

__all__ = ["voxelize_surface", "voxel_centers", "voxel_indices", "voxel_features"]

_CLAMP = 0.5 - 1e-6


def voxel_centers(indices: torch.Tensor, resolution: int = 64) -> torch.Tensor:
    """World centres (N, 3) float32 of integer voxel indices (N, 3) in a grid over [-0.5, 0.5]³."""
    return (torch.as_tensor(indices).float() + 0.5) / resolution - 0.5


def voxel_indices(positions: torch.Tensor, resolution: int = 64) -> torch.Tensor:
    """Voxel indices (N, 3) int64 ``floor((pos + 0.5)·R)`` of world positions (N, 3) (TRELLIS's formula)."""
    return ((torch.as_tensor(positions) + 0.5) * resolution).long()


@torch.no_grad()
def voxelize_surface(vertices, faces, resolution: int = 64, *, max_pairs: int = 1 << 22,
                     device=None) -> torch.Tensor:
    """Indices of all voxels that a triangle touches.

    Args:
        vertices: (V, 3) world positions (numpy or tensor); clamped to the open cube (-0.5, 0.5)³.
        faces: (F, 3) vertex indices.
        resolution: R, voxels per axis.
        max_pairs: triangle–voxel candidate pairs tested per chunk.
        device: computation device (default: that of `vertices`, else CPU).
    Returns:
        (N, 3) int64 unique voxel indices in [0, R), sorted by ``(i·R + j)·R + k``.
    """
    v = torch.as_tensor(np.asarray(vertices) if not torch.is_tensor(vertices) else vertices,
                        dtype=torch.float64, device=device)
    f = torch.as_tensor(np.asarray(faces) if not torch.is_tensor(faces) else faces,
                        dtype=torch.int64, device=v.device)
    if v.ndim != 2 or v.shape[1] != 3 or f.ndim != 2 or f.shape[1] != 3:
        raise ValueError(f"voxelize_surface needs vertices (V, 3) and faces (F, 3), got "
                         f"{tuple(v.shape)} and {tuple(f.shape)}")
    R = int(resolution)
    vs = 1.0 / R
    tri = v.clamp(-_CLAMP, _CLAMP)[f]  # (F, 3, 3)
    lo = ((tri.min(1).values + 0.5) / vs)
    hi = ((tri.max(1).values + 0.5) / vs)
    # candidate voxels: every box the triangle's bbox touches (closed), incl. boxes merely touching it
    i0 = (torch.ceil(lo) - 1).clamp(0, R - 1).long()
    i1 = torch.floor(hi).clamp(0, R - 1).long()
    ext = i1 - i0 + 1  # (F, 3)
    counts = ext.prod(-1)
    found = []
    cum = torch.cumsum(counts, 0).cpu()
    start = 0
    while start < f.shape[0]:
        base = int(cum[start - 1]) if start > 0 else 0
        end = max(int(torch.searchsorted(cum, base + max_pairs, right=True)), start + 1)
        found.append(_test_chunk(tri[start:end], i0[start:end], ext[start:end], counts[start:end], R))
        start = end
    if not found:
        return torch.zeros(0, 3, dtype=torch.int64, device=v.device)
    lin = torch.unique(torch.cat(found))  # sorted
    return torch.stack([lin // (R * R), (lin // R) % R, lin % R], -1)


def _test_chunk(tri, i0, ext, counts, R):
    """Linear indices of the voxels (among the candidates) intersected by a chunk of triangles."""
    device = tri.device
    n = int(counts.sum())
    pair = torch.repeat_interleave(torch.arange(tri.shape[0], device=device), counts, output_size=n)
    first = torch.cumsum(counts, 0) - counts
    local = torch.arange(n, device=device) - first[pair]
    e = ext[pair]
    k = local % e[:, 2]
    j = (local // e[:, 2]) % e[:, 1]
    i = local // (e[:, 2] * e[:, 1])
    idx = i0[pair] + torch.stack([i, j, k], -1)  # (P, 3)
    center = (idx.double() + 0.5) / R - 0.5
    hit = _triangle_box_overlap(tri[pair] - center[:, None], 0.5 / R)
    idx = idx[hit]
    return (idx[:, 0] * R + idx[:, 1]) * R + idx[:, 2]


def _triangle_box_overlap(tri: torch.Tensor, half: float) -> torch.Tensor:
    """Separating-axis test of triangles (P, 3, 3) against the box [-half, half]³ (closed sets).

    Axes: the 3 box normals, the triangle normal and the 9 cross products of box axes with edges
    (Akenine-Möller 2001). Returns (P,) bool.
    """
    v0, v1, v2 = tri.unbind(1)
    ok = (tri.min(1).values <= half).all(-1) & (tri.max(1).values >= -half).all(-1)
    edges = (v1 - v0, v2 - v1, v0 - v2)
    normal = torch.linalg.cross(edges[0], edges[1])
    r = half * normal.abs().sum(-1)
    ok &= (normal * v0).sum(-1).abs() <= r
    eye = torch.eye(3, dtype=tri.dtype, device=tri.device)
    for ed in edges:
        for a in range(3):
            axis = torch.linalg.cross(eye[a].expand_as(ed), ed)  # (P, 3)
            p = torch.stack([(axis * v0).sum(-1), (axis * v1).sum(-1), (axis * v2).sum(-1)], -1)
            r = half * axis.abs().sum(-1)
            ok &= (p.min(-1).values <= r) & (p.max(-1).values >= -r)
    return ok


@torch.no_grad()
def voxel_features(centers: torch.Tensor, feature_maps: torch.Tensor, extrinsics: torch.Tensor,
                   intrinsics: torch.Tensor, *, views_per_batch: int = 4) -> torch.Tensor:
    """Mean over views of the feature maps sampled at the projected voxel centres.

    Args:
        centers: (N, 3) world positions.
        feature_maps: (V, C, h, w) per-view feature maps covering the whole image.
        extrinsics: (V, 4, 4) world->camera (OpenCV).
        intrinsics: (V, 3, 3) normalised.
        views_per_batch: views sampled at once (memory: V_b · C · N floats).
    Returns:
        (N, C) float32.
    """
    V, C = feature_maps.shape[:2]
    if extrinsics.shape[0] != V or intrinsics.shape[0] != V:
        raise ValueError(f"voxel_features: {V} feature maps but {extrinsics.shape[0]} extrinsics "
                         f"and {intrinsics.shape[0]} intrinsics")
    device = feature_maps.device
    pts = centers.to(device=device, dtype=torch.float32)
    total = torch.zeros(pts.shape[0], C, device=device, dtype=torch.float32)
    for s in range(0, V, views_per_batch):
        e = slice(s, min(s + views_per_batch, V))
        ext = extrinsics[e].to(device=device, dtype=torch.float32)
        K = intrinsics[e].to(device=device, dtype=torch.float32)
        uv, _ = project_points(pts.expand(ext.shape[0], -1, -1), ext, K)  # (Vb, N, 2)
        grid = (uv * 2 - 1).unsqueeze(1)  # (Vb, 1, N, 2)
        sampled = F.grid_sample(feature_maps[e].float(), grid, mode="bilinear", align_corners=False)
        total += sampled.squeeze(2).sum(0).transpose(0, 1)  # (N, C)
    return total / V
