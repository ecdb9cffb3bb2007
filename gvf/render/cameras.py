"""Camera conventions shared by data, rendering and inference.

World frame: Blender's, **Z up**; objects live in the unit cube [-0.5, 0.5]^3.

Extrinsics: world->camera 4x4 matrices with **OpenCV** camera axes (x right, y down, z forward),
i.e. ``x_cam = R @ x_world + t``.

Intrinsics: **normalised** OpenCV 3x3 matrices, image coordinates in [0, 1]:
``fx = 0.5 / tan(fov_x / 2)``, ``fy = 0.5 / tan(fov_y / 2)``, ``cx = cy = 0.5``. Multiply by the image
size with :func:`pixel_intrinsics` to get pixel units.

Orbit cameras reproduce the upstream construction (kiui ``orbit_camera(opengl=True)`` in a Y-up frame,
left-multiplied by ``convert_mat`` to reach the Z-up world, columns 1 and 2 flipped, inverted): at
elevation 0 the camera sits at ``(r sin a, -r cos a, 0)``, so azimuth 0 is the "front" camera at
(0, -2, 0) looking along +Y and the azimuth grows counter-clockwise seen from +Z. Here a **positive
elevation puts the camera above the object** (+Z); kiui's elevation has the opposite sign.
"""

from __future__ import annotations

import math

import torch

__all__ = [
    "DEFAULT_FOV_DEG",
    "DEFAULT_RADIUS",
    "fov_to_focal",
    "focal_to_fov",
    "intrinsics_from_fov",
    "fov_from_intrinsics",
    "pixel_intrinsics",
    "opengl_c2w_to_extrinsics",
    "extrinsics_to_opengl_c2w",
    "look_at_extrinsics",
    "orbit_extrinsics",
    "orbit_cameras",
    "camera_center",
    "project_points",
]

DEFAULT_FOV_DEG = 49.1  # field of view of the upstream inference and alignment cameras
DEFAULT_RADIUS = 2.0  # camera distance from the origin used everywhere upstream

# Flipping the camera's y and z axes turns OpenGL axes (y up, z back) into OpenCV axes (y down, z forward).
_FLIP_YZ = (1.0, -1.0, -1.0)


def _as_tensor(x, dtype=None, device=None) -> torch.Tensor:
    """Tensor from a float / sequence / tensor; tensors keep their dtype unless one is given."""
    if isinstance(x, torch.Tensor):
        return x.to(dtype=dtype or (x.dtype if x.is_floating_point() else torch.float32), device=device)
    return torch.as_tensor(x, dtype=dtype or torch.float32, device=device)


def fov_to_focal(fov):
    """Normalised focal length ``0.5 / tan(fov / 2)`` of a field of view in radians (float or tensor)."""
    if isinstance(fov, torch.Tensor):
        return 0.5 / torch.tan(fov / 2)
    return 0.5 / math.tan(fov / 2)


def focal_to_fov(focal):
    """Field of view in radians ``2 atan(0.5 / focal)`` of a normalised focal length (float or tensor)."""
    if isinstance(focal, torch.Tensor):
        return 2 * torch.atan(0.5 / focal)
    return 2 * math.atan(0.5 / focal)


def intrinsics_from_fov(fov_x, fov_y=None, *, dtype=None, device=None) -> torch.Tensor:
    """Normalised intrinsics from fields of view in radians.

    Args:
        fov_x: horizontal FoV, float or tensor of shape (...).
        fov_y: vertical FoV (same shape); defaults to ``fov_x`` (square images).
    Returns:
        (..., 3, 3) ``[[fx, 0, 0.5], [0, fy, 0.5], [0, 0, 1]]``.
    """
    fov_x = _as_tensor(fov_x, dtype, device)
    fov_y = fov_x if fov_y is None else _as_tensor(fov_y, fov_x.dtype, fov_x.device)
    fov_x, fov_y = torch.broadcast_tensors(fov_x, fov_y)
    K = torch.zeros(*fov_x.shape, 3, 3, dtype=fov_x.dtype, device=fov_x.device)
    K[..., 0, 0] = fov_to_focal(fov_x)
    K[..., 1, 1] = fov_to_focal(fov_y)
    K[..., 0, 2] = 0.5
    K[..., 1, 2] = 0.5
    K[..., 2, 2] = 1.0
    return K


def fov_from_intrinsics(K: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(fov_x, fov_y) in radians, each (...), of normalised intrinsics K (..., 3, 3)."""
    _check_matrix(K, 3, "intrinsics")
    return focal_to_fov(K[..., 0, 0]), focal_to_fov(K[..., 1, 1])


def pixel_intrinsics(K_norm: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """Pixel-unit intrinsics (..., 3, 3): fx·W, fy·H, cx·W, cy·H (skew scaled by W)."""
    _check_matrix(K_norm, 3, "intrinsics")
    K = K_norm.clone()  # scaled in place on its device: no host->device copy per call
    K[..., 0, :] *= width
    K[..., 1, :] *= height
    return K


def _check_matrix(M: torch.Tensor, n: int, name: str) -> None:
    if not isinstance(M, torch.Tensor) or M.ndim < 2 or M.shape[-2:] != (n, n):
        shape = tuple(M.shape) if isinstance(M, torch.Tensor) else type(M).__name__
        raise ValueError(f"{name} must be a tensor of shape (..., {n}, {n}), got {shape}")


def opengl_c2w_to_extrinsics(c2w: torch.Tensor) -> torch.Tensor:
    """OpenCV world->camera extrinsics from Blender/OpenGL camera->world matrices.

    The OpenGL camera looks along its -Z with +Y up; its y and z axes (columns 1, 2 of the rotation)
    are flipped to get OpenCV axes, then the matrix is inverted (as upstream ``load_cam``).

    Args:
        c2w: (..., 4, 4) camera-to-world, OpenGL camera axes.
    Returns:
        (..., 4, 4) world-to-camera, OpenCV camera axes.
    """
    _check_matrix(c2w, 4, "c2w")
    flip = torch.tensor([*_FLIP_YZ, 1.0], dtype=c2w.dtype, device=c2w.device)
    return torch.linalg.inv(c2w * flip)  # scaling columns 1, 2 by -1


def extrinsics_to_opengl_c2w(extrinsics: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`opengl_c2w_to_extrinsics`: (..., 4, 4) OpenCV w2c -> OpenGL c2w."""
    _check_matrix(extrinsics, 4, "extrinsics")
    flip = torch.tensor([*_FLIP_YZ, 1.0], dtype=extrinsics.dtype, device=extrinsics.device)
    return torch.linalg.inv(extrinsics) * flip


def _w2c_from_axes(right, down, forward, cam_pos) -> torch.Tensor:
    """World->camera (..., 4, 4) from camera axes expressed in world coordinates (each (..., 3))."""
    R = torch.stack([right, down, forward], dim=-2)  # rows = camera axes: R maps world -> camera
    t = -(R @ cam_pos.unsqueeze(-1)).squeeze(-1)
    w2c = torch.zeros(*R.shape[:-2], 4, 4, dtype=R.dtype, device=R.device)
    w2c[..., :3, :3] = R
    w2c[..., :3, 3] = t
    w2c[..., 3, 3] = 1.0
    return w2c


def look_at_extrinsics(cam_pos, target=(0.0, 0.0, 0.0), up=(0.0, 0.0, 1.0), *, dtype=None, device=None) -> torch.Tensor:
    """OpenCV world->camera extrinsics of cameras at ``cam_pos`` looking at ``target``.

    Image "up" (−y) points along the projection of ``up``. When the viewing direction is parallel to
    ``up`` the right axis is taken along world +X (−X for ``up`` pointing at the camera's back) instead.

    Args:
        cam_pos: (..., 3) camera centres.
        target: (3,) or (..., 3) points looked at.
        up: (3,) or (..., 3) world up direction (default +Z).
    Returns:
        (..., 4, 4) extrinsics.
    """
    cam_pos = _as_tensor(cam_pos, dtype, device)
    target = _as_tensor(target, cam_pos.dtype, cam_pos.device)
    up = _as_tensor(up, cam_pos.dtype, cam_pos.device)
    if cam_pos.shape[-1] != 3:
        raise ValueError(f"cam_pos must have shape (..., 3), got {tuple(cam_pos.shape)}")
    cam_pos, target, up = torch.broadcast_tensors(cam_pos, target, up)
    forward = target - cam_pos
    norm = forward.norm(dim=-1, keepdim=True)
    if bool((norm <= 0).any()):
        raise ValueError("look_at_extrinsics: a camera position coincides with its target")
    forward = forward / norm
    right = torch.linalg.cross(forward, up)
    rnorm = right.norm(dim=-1, keepdim=True)
    degenerate = rnorm <= 1e-12 * up.norm(dim=-1, keepdim=True)
    if bool(degenerate.any()):
        fallback = torch.zeros_like(right)
        fallback[..., 0] = 1.0
        right = torch.where(degenerate, fallback, right)
        rnorm = torch.where(degenerate, torch.ones_like(rnorm), rnorm)
    right = right / rnorm
    down = torch.linalg.cross(forward, right)
    return _w2c_from_axes(right, down, forward, cam_pos)


def orbit_extrinsics(azimuth_deg, elevation_deg=0.0, radius=DEFAULT_RADIUS, *, dtype=torch.float32, device=None) -> torch.Tensor:
    """Upstream orbit cameras around the origin as OpenCV world->camera matrices.

    Camera centre ``(r cos e sin a, −r cos e cos a, r sin e)``: azimuth 0 is the front camera at
    (0, −r, 0) looking along +Y; azimuth 90 sits at (r, 0, 0); positive elevation is above the object
    (kiui's ``orbit_camera`` takes ``−elevation`` for the same camera). Image up is world +Z at
    elevation 0. Computed in float64, returned in ``dtype``.

    Args:
        azimuth_deg: float or (V,) azimuths in degrees.
        elevation_deg: float or (V,) elevations in degrees (broadcast against azimuths).
        radius: float or (V,) distances.
    Returns:
        (V, 4, 4) extrinsics (V = 1 for scalar inputs).
    """
    az = torch.deg2rad(torch.as_tensor(azimuth_deg, dtype=torch.float64)).reshape(-1)
    el = torch.deg2rad(torch.as_tensor(elevation_deg, dtype=torch.float64)).reshape(-1)
    r = torch.as_tensor(radius, dtype=torch.float64).reshape(-1)
    az, el, r = torch.broadcast_tensors(az, el, r)
    if bool((el.abs() >= math.pi / 2).any()):
        raise ValueError("orbit_extrinsics: elevation must lie strictly between -90 and 90 degrees")
    if bool((r <= 0).any()):
        raise ValueError("orbit_extrinsics: radius must be positive")
    cam_pos = torch.stack([r * el.cos() * az.sin(), -r * el.cos() * az.cos(), r * el.sin()], dim=-1)
    # Same axes as kiui's look_at in its Y-up frame: a proper rotation to the Z-up world preserves the
    # cross products, so "right = up x back" there equals "right = forward x (+Z)" here.
    w2c = look_at_extrinsics(cam_pos, up=(0.0, 0.0, 1.0))
    return w2c.to(dtype=dtype, device=device)


def orbit_cameras(
    num_views: int,
    elevation_deg: float = 0.0,
    radius: float = DEFAULT_RADIUS,
    fov_deg: float = DEFAULT_FOV_DEG,
    *,
    dtype=torch.float32,
    device=None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``num_views`` cameras evenly spaced in azimuth (0, 360/V, ...), as the upstream turntable renders.

    Returns:
        extrinsics (V, 4, 4) and normalised intrinsics (V, 3, 3).
    """
    if int(num_views) < 1:
        raise ValueError(f"num_views must be a positive integer, got {num_views}")
    azimuths = torch.arange(int(num_views), dtype=torch.float64) * (360.0 / int(num_views))
    extrinsics = orbit_extrinsics(azimuths, elevation_deg, radius, dtype=dtype, device=device)
    fov = math.radians(fov_deg)
    intrinsics = intrinsics_from_fov(torch.full((int(num_views),), fov, dtype=torch.float64))
    return extrinsics, intrinsics.to(dtype=dtype, device=device)


def camera_center(extrinsics: torch.Tensor) -> torch.Tensor:
    """World-space camera centres (..., 3) of world->camera extrinsics (..., 4, 4): ``−Rᵀ t``."""
    _check_matrix(extrinsics, 4, "extrinsics")
    R = extrinsics[..., :3, :3]
    t = extrinsics[..., :3, 3:]
    return -(R.transpose(-1, -2) @ t).squeeze(-1)


def project_points(points: torch.Tensor, extrinsics: torch.Tensor, intrinsics: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Project world points into normalised image coordinates.

    Args:
        points: (..., N, 3) world points.
        extrinsics: (..., 4, 4) world->camera (OpenCV).
        intrinsics: (..., 3, 3) normalised intrinsics.
    Returns:
        uv (..., N, 2) in [0, 1] for points inside the image (u right, v down) and depth (..., N),
        the camera-space z (points behind the camera have depth ≤ 0 and meaningless uv).
    """
    _check_matrix(extrinsics, 4, "extrinsics")
    _check_matrix(intrinsics, 3, "intrinsics")
    if points.shape[-1] != 3:
        raise ValueError(f"points must have shape (..., N, 3), got {tuple(points.shape)}")
    R = extrinsics[..., :3, :3]
    t = extrinsics[..., :3, 3]
    cam = points @ R.transpose(-1, -2) + t.unsqueeze(-2)  # (..., N, 3)
    pix = cam @ intrinsics.transpose(-1, -2)  # (..., N, 3)
    depth = cam[..., 2]
    uv = pix[..., :2] / pix[..., 2:3]
    return uv, depth
