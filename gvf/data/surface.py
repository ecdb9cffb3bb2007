"""Surface points that follow an animated mesh: the motion VAE's point-cloud input (spec §2.3, §7.1).

Points are sampled once, area-weighted, on the canonical frame (frame 0) and stored as (face, barycentric
weights); the same surface coordinates are evaluated on every frame, so point i is the same material
point at all times. On disk (``objs/mesh_data/``, upstream layout):

* ``static_frame_vertices.pt``: (N, 3) float32 points of frame 0 (N = 8192);
* ``moving_frame_deltas.pt``: (T, N, 3) float32 displacements from frame 0 (``deltas[0] == 0``).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .mesh import AnimatedMesh

__all__ = ["SurfaceSamples", "sample_surface", "surface_points", "point_deltas"]

DEFAULT_NUM_POINTS = 8192


@dataclass
class SurfaceSamples:
    """Surface coordinates of N points.

    Attributes:
        face: (N,) int64 face index.
        bary: (N, 3) float64 barycentric weights of the face's three vertices (non-negative, sum 1).
    """

    face: np.ndarray
    bary: np.ndarray


def sample_surface(vertices: np.ndarray, faces: np.ndarray, num_points: int = DEFAULT_NUM_POINTS,
                   seed: int = 0) -> SurfaceSamples:
    """Area-weighted uniform samples on a triangle mesh.

    Args:
        vertices: (V, 3) positions of the frame to sample on.
        faces: (F, 3) vertex indices.
        num_points: N.
        seed: seed of ``numpy.random.default_rng``.
    Returns:
        `SurfaceSamples` (faces chosen with probability ∝ area, uniform inside each face).
    """
    v = np.asarray(vertices, dtype=np.float64)
    f = np.asarray(faces, dtype=np.int64)
    if f.ndim != 2 or f.shape[1] != 3 or f.shape[0] == 0:
        raise ValueError(f"sample_surface needs a non-empty (F, 3) face array, got shape {f.shape}")
    tri = v[f]
    area = 0.5 * np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=-1)
    total = area.sum()
    if not np.isfinite(total) or total <= 0:
        raise ValueError(f"sample_surface: the mesh has no surface area (total {total})")
    rng = np.random.default_rng(seed)
    face = rng.choice(len(f), size=num_points, p=area / total)
    # uniform point in a triangle: fold the unit square onto the lower-left half
    r = rng.random((num_points, 2))
    flip = r.sum(1) > 1
    r[flip] = 1.0 - r[flip]
    bary = np.stack([1.0 - r[:, 0] - r[:, 1], r[:, 0], r[:, 1]], -1)
    return SurfaceSamples(face=face.astype(np.int64), bary=bary)


def surface_points(vertices: np.ndarray, faces: np.ndarray, samples: SurfaceSamples) -> np.ndarray:
    """Positions of the sampled surface points on one or many frames.

    Args:
        vertices: (V, 3) or (T, V, 3) positions.
        faces: (F, 3) vertex indices.
        samples: from `sample_surface`.
    Returns:
        (N, 3) or (T, N, 3) float32.
    """
    v = np.asarray(vertices, dtype=np.float64)
    corners = v[..., np.asarray(faces)[samples.face], :]  # (..., N, 3 corners, 3)
    return np.einsum("nk,...nkc->...nc", samples.bary, corners).astype(np.float32)


def point_deltas(mesh: AnimatedMesh, num_points: int = DEFAULT_NUM_POINTS,
                 seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Upstream ``static_frame_vertices`` and ``moving_frame_deltas`` of an animated mesh.

    Args:
        mesh: T-frame animated mesh (frame 0 is canonical).
        num_points: N.
        seed: sampling seed.
    Returns:
        static (N, 3) float32 points on frame 0 and deltas (T, N, 3) float32 = points_t − points_0.
    """
    samples = sample_surface(mesh.vertices[0], mesh.faces, num_points, seed)
    pts = surface_points(mesh.vertices, mesh.faces, samples)  # (T, N, 3)
    static = pts[0]
    return static, (pts - static[None]).astype(np.float32)
