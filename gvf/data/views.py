"""Upstream's camera set for ground-truth renders and its per-view JSON files (spec §7.1, §7.4, §8).

Views 0..7 look at the origin from eight fixed horizontal directions (camera at ``-distance·d``):
front, back, left, right, front_right, front_left, back_left, back_right. Views >= 8 use a random
direction ``d = (sin p cos a, sin p sin a, cos p)`` with azimuth ``a ~ U(0°, 360°)`` and polar angle
``p ~ U(75°, 135°)``; as in upstream's non-augmented Blender script, a new random direction is drawn for
every (frame, view) pair, from a generator seeded per sequence and frame, so renders are reproducible.

Orientation is Blender's ``d.to_track_quat('-Z', 'Y')``: the camera's -Z looks along ``d`` and its +Y
is world +Z projected onto the image plane. The camera-to-world matrix with these OpenGL camera axes is
what upstream stores as ``matrix_world``; `load_view_json` turns it into OpenCV world->camera
extrinsics and normalised intrinsics exactly as upstream's ``dataset_vae.load_cam`` does.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..render.cameras import DEFAULT_FOV_DEG, DEFAULT_RADIUS, intrinsics_from_fov, opengl_c2w_to_extrinsics

__all__ = [
    "FIXED_VIEW_DIRECTIONS",
    "DEFAULT_FOV_DEG",
    "DEFAULT_DISTANCE",
    "ViewSet",
    "track_to_c2w",
    "random_view_directions",
    "sequence_views",
    "view_stem",
    "view_metadata",
    "write_view_json",
    "load_view_json",
]

# The training renders' FoV is not set in upstream's script; spec §7.4 infers 49.1° (focal 560 px at
# 512 px), the FoV of upstream's inference cameras, and the JSON records whatever is used.
DEFAULT_DISTANCE = DEFAULT_RADIUS
POLAR_RANGE_DEG = (75.0, 135.0)

# name -> direction the camera LOOKS along (world frame, Z up); the camera sits at -distance·d
FIXED_VIEW_DIRECTIONS: dict[str, tuple[float, float, float]] = {
    "front": (0.0, 1.0, 0.0),
    "back": (0.0, -1.0, 0.0),
    "left": (1.0, 0.0, 0.0),
    "right": (-1.0, 0.0, 0.0),
    "front_right": (-1.0, 1.0, 0.0),
    "front_left": (1.0, 1.0, 0.0),
    "back_left": (1.0, -1.0, 0.0),
    "back_right": (-1.0, -1.0, 0.0),
}


def track_to_c2w(direction, distance: float = DEFAULT_DISTANCE) -> np.ndarray:
    """Blender camera-to-world matrices (OpenGL camera axes) looking along `direction` at the origin.

    Args:
        direction: (..., 3) viewing directions (need not be unit length; must not be parallel to Z).
        distance: camera distance from the origin.
    Returns:
        (..., 4, 4) float64: columns = camera x (right), y (up), z (backward), position ``-distance·d``.
    """
    d = np.asarray(direction, dtype=np.float64)
    d = d / np.linalg.norm(d, axis=-1, keepdims=True)
    up = np.broadcast_to(np.array([0.0, 0.0, 1.0]), d.shape) - d[..., 2:3] * d  # world Z ⟂ d
    norm = np.linalg.norm(up, axis=-1, keepdims=True)
    if np.any(norm < 1e-6):
        raise ValueError("track_to_c2w: a viewing direction is parallel to the world Z axis")
    up = up / norm
    right = np.cross(d, up)
    c2w = np.zeros(d.shape[:-1] + (4, 4))
    c2w[..., :3, 0] = right
    c2w[..., :3, 1] = up
    c2w[..., :3, 2] = -d
    c2w[..., :3, 3] = -distance * d
    c2w[..., 3, 3] = 1.0
    return c2w


def random_view_directions(n: int, rng: np.random.Generator) -> np.ndarray:
    """(n, 3) upstream random viewing directions: azimuth U(0, 360°), polar angle U(75°, 135°)."""
    azimuth = np.radians(rng.uniform(0.0, 360.0, size=n))
    polar = np.radians(rng.uniform(*POLAR_RANGE_DEG, size=n))
    return np.stack([np.sin(polar) * np.cos(azimuth), np.sin(polar) * np.sin(azimuth), np.cos(polar)], -1)


@dataclass
class ViewSet:
    """Cameras of one sequence.

    Attributes:
        c2w: (T, V, 4, 4) float64 Blender camera-to-world (OpenGL axes), the JSON ``matrix_world``.
        fov: horizontal = vertical field of view in radians (square images).
    """

    c2w: np.ndarray
    fov: float

    @property
    def num_frames(self) -> int:
        return int(self.c2w.shape[0])

    @property
    def num_views(self) -> int:
        return int(self.c2w.shape[1])

    def cameras(self, frame: int, dtype=torch.float32, device=None) -> tuple[torch.Tensor, torch.Tensor]:
        """(extrinsics (V, 4, 4) OpenCV w2c, intrinsics (V, 3, 3) normalised) of one frame."""
        c2w = torch.as_tensor(self.c2w[frame], dtype=torch.float64)
        extrinsics = opengl_c2w_to_extrinsics(c2w).to(dtype=dtype, device=device)
        intrinsics = intrinsics_from_fov(torch.full((self.num_views,), self.fov, dtype=torch.float64))
        return extrinsics, intrinsics.to(dtype=dtype, device=device)


def sequence_views(num_frames: int, num_views: int = 16, *, seed: int = 0, fov_deg: float = DEFAULT_FOV_DEG,
                   distance: float = DEFAULT_DISTANCE) -> ViewSet:
    """Upstream camera set of one sequence: views 0..7 fixed (the same every frame), the rest random.

    With fewer than 8 views only the first `num_views` fixed directions are used. Random directions
    of frame t come from ``numpy.random.default_rng([seed, t])``.

    Args:
        num_frames: T.
        num_views: V.
        seed: sequence seed.
        fov_deg: field of view in degrees (horizontal = vertical).
        distance: camera distance from the origin.
    Returns:
        `ViewSet` with c2w (T, V, 4, 4).
    """
    if num_frames < 1 or num_views < 1:
        raise ValueError(f"sequence_views needs num_frames >= 1 and num_views >= 1, got {num_frames}, {num_views}")
    if not 0.0 < fov_deg < 180.0:
        raise ValueError(f"fov_deg must lie in (0, 180), got {fov_deg}")
    fixed = np.array(list(FIXED_VIEW_DIRECTIONS.values()))[: min(num_views, 8)]
    c2w = np.zeros((num_frames, num_views, 4, 4))
    for t in range(num_frames):
        dirs = fixed
        if num_views > 8:
            dirs = np.concatenate([fixed, random_view_directions(num_views - 8, np.random.default_rng([seed, t]))])
        c2w[t] = track_to_c2w(dirs, distance)
    return ViewSet(c2w=c2w, fov=math.radians(fov_deg))


def view_stem(timestep: int, view: int) -> str:
    """Upstream file stem ``timestep_{TT:02d}_view_{VV:02d}`` shared by the PNG and the JSON."""
    return f"timestep_{timestep:02d}_view_{view:02d}"


def view_metadata(c2w: np.ndarray, x_fov: float, y_fov: float | None = None,
                  bbox: tuple[np.ndarray, np.ndarray] | None = None) -> dict:
    """Upstream per-view JSON content (``blender_new.write_camera_metadata``).

    Args:
        c2w: (4, 4) Blender camera-to-world (OpenGL camera axes).
        x_fov, y_fov: fields of view in radians (y defaults to x).
        bbox: (min (3,), max (3,)) world bounding box of the scene at this frame.
    """
    c2w = np.asarray(c2w, dtype=np.float64)
    lo, hi = (np.zeros(3), np.zeros(3)) if bbox is None else (np.asarray(bbox[0]), np.asarray(bbox[1]))
    return {
        "matrix_world": c2w.tolist(),
        "format_version": 6,
        "max_depth": 5.0,
        "bbox": [lo.astype(float).tolist(), hi.astype(float).tolist()],
        "origin": c2w[:3, 3].tolist(),
        "x_fov": float(x_fov),
        "y_fov": float(x_fov if y_fov is None else y_fov),
        "x": c2w[:3, 0].tolist(),
        "y": (-c2w[:3, 1]).tolist(),
        "z": (-c2w[:3, 2]).tolist(),
    }


def write_view_json(path: str | Path, meta: dict) -> None:
    """Write one view's metadata dict (see `view_metadata`) as JSON."""
    with open(path, "w") as f:
        json.dump(meta, f)


def load_view_json(path: str | Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Cameras of one upstream view JSON, as upstream's ``dataset_vae.load_cam`` reads them.

    ``matrix_world`` columns 1 and 2 are negated (OpenGL -> OpenCV camera axes) and the matrix is
    inverted; intrinsics come from ``x_fov`` with fy = fx (square images).

    Returns:
        extrinsics (4, 4) float32 world->camera (OpenCV) and intrinsics (3, 3) float32 normalised.
    """
    path = Path(path)
    try:
        with open(path) as f:
            meta = json.load(f)
        c2w = torch.tensor(meta["matrix_world"], dtype=torch.float64)
        fov = float(meta["x_fov"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{path}: not a readable upstream view JSON with matrix_world and x_fov ({err})") from err
    if c2w.shape != (4, 4):
        raise ValueError(f"{path}: matrix_world must be 4x4, got {tuple(c2w.shape)}")
    extrinsics = opengl_c2w_to_extrinsics(c2w).float()
    intrinsics = intrinsics_from_fov(torch.tensor(fov, dtype=torch.float64)).float()
    return extrinsics, intrinsics
