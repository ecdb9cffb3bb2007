"""Azimuth alignment of canonical Gaussians to the first video frame (upstream
``align_gaussian_to_canonical``, spec §1.6).

Image-to-3D models return the object in their own orientation; the video shows it from some
azimuth. An exhaustive search finds the azimuth a of the orbit camera (elevation 0, radius 2,
FoV 49.1°) whose render looks most like the frame, then rotates the Gaussians by −a about +Z so that
the front camera (azimuth 0) sees what the video shows.

Score of a candidate (lower is better), as upstream:

* bounding boxes of the rendered alpha > 0.5 and of the frame's mask > 0.5, sizes
  ``max(y_max − y_min, x_max − x_min)``; candidates where either is empty are skipped;
* the render (on white, clamped) is resized by ``s = frame size / render size`` (bicubic) and
  padded with white / centre-cropped back to the frame's resolution;
* ``L1(render, frame) + 0.2·(1 − cos(features(render), features(frame)))``.

Deviations, on purpose:

* the semantic term uses the configured image feature extractor (`gvf.features`: DINOv2 for the
  official model, the weight-free ``simple`` extractor for the demo) instead of OpenAI CLIP ViT-B/32,
  which is not a dependency; the feature vector is the flattened, L2-normalised sequence of its
  conditioning tokens (patch tokens keep the layout, which tells front from back);
* all candidates are rendered in one batched call (upstream: one call each) with the same
  antialiased (mip) rasterizer as the final renders (upstream switched to a non-mip rasterizer here).

The rotation is applied even for azimuth 0 (as upstream), so afterwards every stored quaternion is
unit-norm with w ≥ 0 (the base the motion VAE's rotation deltas are added to at inference, §10.2.8).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from gvf.gaussians import Gaussians
from gvf.gaussians.model import IDENTITY_QUATERNION
from gvf.render import render_gaussians
from gvf.render.cameras import DEFAULT_FOV_DEG, DEFAULT_RADIUS, intrinsics_from_fov, orbit_extrinsics

logger = logging.getLogger(__name__)

__all__ = [
    "AlignmentResult",
    "SEMANTIC_WEIGHT",
    "MASK_THRESHOLD",
    "azimuth_candidates",
    "quaternion_multiply",
    "rotate_gaussians_z",
    "mask_extent",
    "rescale_to_frame",
    "align_to_frame",
]

SEMANTIC_WEIGHT = 0.2  # weight of the feature-similarity term (upstream: CLIP, 0.2)
MASK_THRESHOLD = 0.5  # alpha above this counts as object when measuring sizes
MAX_SCORE_SCALE = 8.0  # renders are enlarged at most this much for scoring (memory; such matches are poor anyway)


def azimuth_candidates(step_deg: float = 1.0) -> torch.Tensor:
    """Candidate azimuths ``[-180, 180)`` every `step_deg` degrees (upstream: 1° in the wild, else 90°)."""
    if not step_deg > 0:
        raise ValueError(f"the azimuth step must be positive, got {step_deg}")
    return torch.arange(-180.0, 180.0 - 1e-9, float(step_deg), dtype=torch.float64)


def quaternion_multiply(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Hamilton product a ⊗ b of (..., 4) quaternions (w, x, y, z); rotation by b then by a."""
    aw, ax, ay, az = a.unbind(-1)
    bw, bx, by, bz = b.unbind(-1)
    return torch.stack(
        [
            aw * bw - ax * bx - ay * by - az * bz,
            aw * bx + ax * bw + ay * bz - az * by,
            aw * by - ax * bz + ay * bw + az * bx,
            aw * bz + ax * by - ay * bx + az * bw,
        ],
        dim=-1,
    )


def rotate_gaussians_z(gaussians: Gaussians, angle_deg: float) -> Gaussians:
    """Gaussians rotated by `angle_deg` about world +Z (counter-clockwise seen from +Z).

    Positions are rotated; each orientation becomes ``r ⊗ q̂`` (q̂ the normalised quaternion, r the
    rotation), stored unit-norm with w ≥ 0 — the quaternion of upstream's ``matrix_to_quaternion(R·R_q)``.
    Colours, opacities and scales are unchanged.
    """
    theta = math.radians(float(angle_deg))
    dtype, device = gaussians.dtype, gaussians.device
    c, s = math.cos(theta), math.sin(theta)
    R = torch.tensor([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64, device=device)
    xyz = (gaussians.xyz.double() @ R.T).to(dtype)
    r = torch.tensor([math.cos(theta / 2), 0.0, 0.0, math.sin(theta / 2)], dtype=torch.float64, device=device)
    q = quaternion_multiply(r, gaussians.rotation.double())
    q = F.normalize(q, dim=-1)
    q = torch.where(q[:, :1] < 0, -q, q)  # sign convention w >= 0 (pytorch3d's standardisation)
    identity = torch.tensor(IDENTITY_QUATERNION, dtype=torch.float64, device=device)
    return Gaussians(
        xyz=xyz,
        features_dc=gaussians.features_dc.clone(),
        opacity_raw=gaussians.opacity_raw.clone(),
        scaling_raw=gaussians.scaling_raw.clone(),
        rotation_raw=(q - identity).to(dtype),
    )


def mask_extent(mask: torch.Tensor) -> torch.Tensor:
    """Bounding-box size ``max(y_max − y_min, x_max − x_min)`` of boolean masks (..., H, W); −1 if empty."""
    rows = mask.any(dim=-1)  # (..., H)
    cols = mask.any(dim=-2)  # (..., W)

    def span(v: torch.Tensor) -> torch.Tensor:
        n = v.shape[-1]
        idx = torch.arange(n, device=v.device)
        first = torch.where(v, idx, n).amin(dim=-1)
        last = torch.where(v, idx, -1).amax(dim=-1)
        return torch.where(v.any(dim=-1), last - first, torch.full_like(last, -1))

    return torch.maximum(span(rows), span(cols))


def rescale_to_frame(image: torch.Tensor, scale: float, size: int | None = None, fill: float = 1.0) -> torch.Tensor:
    """Resize a (3, H, W) image to ``int(H·scale)`` (bicubic) and pad with `fill` / centre-crop to `size`.

    Padding puts ``(size − W)//2`` on the left/top and the rest on the right/bottom (upstream).
    """
    C, H, W = image.shape
    size = size or H
    target = int(H * scale)
    if target < 1:
        return torch.full((C, size, size), fill, dtype=image.dtype, device=image.device)
    out = F.interpolate(image[None], size=(target, target), mode="bicubic", align_corners=False)[0]
    if target < size:
        before = (size - target) // 2
        after = size - target - before
        out = F.pad(out, (before, after, before, after), mode="constant", value=fill)
    else:
        top = (target - size) // 2
        out = out[:, top : top + size, top : top + size]
    return out.clamp(0.0, 1.0)


@dataclass
class AlignmentResult:
    """Outcome of `align_to_frame`.

    Attributes:
        gaussians: the rotated Gaussians (front camera = the frame's view).
        azimuth_deg: the best candidate azimuth a (the Gaussians were rotated by −a).
        scale_factor: frame object size / rendered object size at that azimuth (resize factor of renders).
        candidates: (A,) azimuths tried (degrees).
        l1, semantic, scores: (A,) score terms (inf where a candidate was skipped).
    """

    gaussians: Gaussians
    azimuth_deg: float
    scale_factor: float
    candidates: torch.Tensor
    l1: torch.Tensor
    semantic: torch.Tensor
    scores: torch.Tensor


def _feature_vector(extractor, images: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) -> (B, D) L2-normalised flattened conditioning tokens."""
    tokens = extractor.conditioning_tokens(images.to(extractor.device))
    return F.normalize(tokens.float().flatten(1), dim=-1)


def _cosine_similarity(extractor, images: torch.Tensor, reference: torch.Tensor, batch_size: int) -> torch.Tensor:
    """(B,) cosine similarity of each image's feature vector with `reference` (1, D), batch by batch
    (DINOv2 vectors are 1.4 M long: only the scores are kept)."""
    out = [(_feature_vector(extractor, images[i : i + batch_size]) @ reference[0]).double().cpu()
           for i in range(0, images.shape[0], batch_size)]
    return torch.cat(out)


@torch.no_grad()
def align_to_frame(
    gaussians: Gaussians,
    image: torch.Tensor | np.ndarray,
    mask: torch.Tensor | np.ndarray,
    *,
    extractor=None,
    candidates: Sequence[float] | torch.Tensor | None = None,
    step_deg: float = 1.0,
    resolution: int = 512,
    fov_deg: float = DEFAULT_FOV_DEG,
    radius: float = DEFAULT_RADIUS,
    semantic_weight: float = SEMANTIC_WEIGHT,
    views_per_batch: int | None = None,
    feature_batch_size: int = 16,
    backend: str = "auto",
    progress: bool = False,
) -> AlignmentResult:
    """Search the azimuth whose render best matches a frame and rotate the Gaussians to it.

    Args:
        gaussians: canonical Gaussians (any device).
        image: (H, W, 3) frame on white, uint8 or float in [0, 1] (the centred 512² frame).
        mask: (H, W) object alpha, uint8 or float in [0, 1].
        extractor: a `gvf.features` extractor for the semantic term (None: L1 only).
        candidates: azimuths in degrees (default `azimuth_candidates(step_deg)`).
        step_deg: grid step when `candidates` is None (1° in the wild, 90° for renders).
        resolution: render side; the frame is resized to it (upstream: 512).
        fov_deg, radius: orbit camera (upstream 49.1°, 2.0).
        semantic_weight: weight of the feature term.
        views_per_batch: candidates per render call (None: all at once).
        feature_batch_size: images per extractor call.
        backend: rasterizer backend.
        progress: progress bar over render batches.
    Returns:
        AlignmentResult.
    """
    device = gaussians.device
    frame = torch.as_tensor(np.asarray(image) if not isinstance(image, torch.Tensor) else image)
    alpha = torch.as_tensor(np.asarray(mask) if not isinstance(mask, torch.Tensor) else mask)
    if frame.ndim != 3 or frame.shape[-1] != 3 or alpha.shape != frame.shape[:2]:
        raise ValueError(f"align_to_frame needs an (H, W, 3) image and an (H, W) mask, got {tuple(frame.shape)} and {tuple(alpha.shape)}")
    frame = frame.float() / 255.0 if frame.dtype == torch.uint8 else frame.float()
    alpha = alpha.float() / 255.0 if alpha.dtype == torch.uint8 else alpha.float()
    frame = frame.permute(2, 0, 1).to(device)  # (3, H, W)
    alpha = alpha.to(device)
    if frame.shape[-2:] != (resolution, resolution):
        frame = F.interpolate(frame[None], size=(resolution, resolution), mode="bilinear", antialias=True, align_corners=False)[0]
        alpha = F.interpolate(alpha[None, None], size=(resolution, resolution), mode="bilinear", antialias=True, align_corners=False)[0, 0]

    azimuths = azimuth_candidates(step_deg) if candidates is None else torch.as_tensor(candidates, dtype=torch.float64).reshape(-1)
    A = azimuths.numel()
    frame_size = int(mask_extent(alpha > MASK_THRESHOLD))
    l1 = torch.full((A,), float("inf"), dtype=torch.float64)
    semantic = torch.full((A,), float("inf"), dtype=torch.float64)
    scales = torch.ones(A, dtype=torch.float64)
    if frame_size <= 0:
        logger.warning("alignment: the frame's mask is empty; keeping azimuth 0")
    else:
        fov = math.radians(fov_deg)
        intrinsics = intrinsics_from_fov(fov, dtype=torch.float32, device=device)
        frame_vec = _feature_vector(extractor, frame[None]) if extractor is not None else None
        step = views_per_batch or A
        from tqdm.auto import tqdm

        for i in tqdm(range(0, A, step), desc="aligning azimuth", disable=not progress, leave=False):
            az = azimuths[i : i + step]
            extrinsics = orbit_extrinsics(az, 0.0, radius, dtype=torch.float32, device=device)
            out = render_gaussians(gaussians, extrinsics, intrinsics, resolution, background=(1.0, 1.0, 1.0), backend=backend)
            rgb = out.rgb[0].permute(0, 3, 1, 2).clamp(0.0, 1.0)  # (V, 3, R, R)
            sizes = mask_extent(out.alpha[0, ..., 0] > MASK_THRESHOLD)  # (V,)
            matched, valid = [], []
            for v in range(az.numel()):
                if int(sizes[v]) <= 0:
                    continue
                scale = frame_size / int(sizes[v])
                scales[i + v] = scale
                img = rescale_to_frame(rgb[v], min(scale, MAX_SCORE_SCALE), resolution)
                l1[i + v] = float((img - frame).abs().mean())
                matched.append(img)
                valid.append(i + v)
            if extractor is not None and matched:
                semantic[valid] = 1.0 - _cosine_similarity(extractor, torch.stack(matched), frame_vec, feature_batch_size)
            elif matched:
                semantic[valid] = 0.0
    scores = l1 + semantic_weight * semantic
    if bool(torch.isfinite(scores).any()):
        best = int(torch.argmin(scores))  # the first minimum wins, as upstream's strict "<"
        best_az, best_scale = float(azimuths[best]), float(scales[best])
    else:
        if frame_size > 0:
            logger.warning("alignment: the object is not visible from any candidate azimuth; keeping azimuth 0")
        best_az, best_scale = 0.0, 1.0
    logger.info("alignment: best azimuth %.1f deg, scale factor %.4f (%d candidates)", best_az, best_scale, A)
    return AlignmentResult(
        gaussians=rotate_gaussians_z(gaussians, -best_az),
        azimuth_deg=best_az,
        scale_factor=best_scale,
        candidates=azimuths,
        l1=l1,
        semantic=semantic,
        scores=scores,
    )
