"""Outputs of video-to-4D: one compact 4D file, per-frame PLYs and preview videos.

Layout of an output directory::

    gaussians_4d.safetensors   canonical Gaussians + (T, N, 14) variations + metadata (see save_4d)
    canonical.ply              the aligned canonical Gaussians (3DGS PLY, gvf.gaussians.save_ply)
    ply/frame_000.ply ...      the Gaussians of every frame (canonical with the variation applied)
    input_view.mp4             renders from the input camera over time
    orbit.mp4                  the upstream preview: T frames from the input camera, then a spiral —
                               view i of V orbit views (azimuth 360·i/V) shows frame i mod T

Renders use the upstream cameras (elevation 0, radius 2, FoV 49.1°, white background), zoomed by the
alignment's scale factor so that the input view matches the input framing. Upstream resized each
512² render by that factor and padded / cropped it; scaling the focal length instead gives the same
framing without resampling. Videos are H.264 (libx264, yuv420p) through imageio, 10 fps as upstream.

Everything is written into a temporary directory first and moved into place at the end, so an
interrupted run never leaves files that look complete; existing files are only replaced with
``overwrite=True``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from gvf.gaussians import Gaussians, save_ply
from gvf.render import render_gaussians
from gvf.render.cameras import DEFAULT_FOV_DEG, DEFAULT_RADIUS, intrinsics_from_fov, orbit_extrinsics
from gvf.utils.io import atomic_write

logger = logging.getLogger(__name__)

__all__ = [
    "FOUR_D_FILE",
    "CANONICAL_PLY",
    "PLY_DIR",
    "INPUT_VIEW_VIDEO",
    "ORBIT_VIDEO",
    "CANONICAL_CHANNELS",
    "VARIATION_CHANNELS",
    "Sequence4D",
    "save_4d",
    "load_4d",
    "frame_ply_name",
    "planned_outputs",
    "check_outputs",
    "render_sequence",
    "spiral_schedule",
    "write_video",
    "export_result",
]

FOUR_D_FILE = "gaussians_4d.safetensors"
CANONICAL_PLY = "canonical.ply"
PLY_DIR = "ply"
INPUT_VIEW_VIDEO = "input_view.mp4"
ORBIT_VIDEO = "orbit.mp4"
FORMAT_NAME = "gvf-4d"
FORMAT_VERSION = 1
VIDEO_FPS = 10  # upstream preview frame rate
ORBIT_VIEWS = 128  # upstream views per orbit
# Channel names of the two 14-channel layouts (gvf.gaussians.model).
CANONICAL_CHANNELS = (
    ["x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity", "scale_0", "scale_1", "scale_2"]
    + ["rot_w", "rot_x", "rot_y", "rot_z"]
)
VARIATION_CHANNELS = (
    ["d_x", "d_y", "d_z", "d_scaling_raw_0", "d_scaling_raw_1", "d_scaling_raw_2"]
    + ["d_rotation_raw_w", "d_rotation_raw_x", "d_rotation_raw_y", "d_rotation_raw_z"]
    + ["d_f_dc_0", "d_f_dc_1", "d_f_dc_2", "d_opacity_raw"]
)
_RAW_FIELDS = ("xyz", "features_dc", "opacity_raw", "scaling_raw", "rotation_raw")


# ------------------------------------------------------------------------------------------ 4D file


@dataclass
class Sequence4D:
    """Canonical Gaussians and per-frame variations, as stored in a 4D file.

    Attributes:
        canonical: N Gaussians (CPU float32).
        variations: (T, N, 14) in the output layout ``[xyz | scale | rot | f_dc | opacity]``.
        metadata: the file's metadata (frame count, fps, channel orders, source ...).
    """

    canonical: Gaussians
    variations: torch.Tensor
    metadata: dict = field(default_factory=dict)

    @property
    def num_frames(self) -> int:
        return int(self.variations.shape[0])

    def frame(self, t: int) -> Gaussians:
        """Gaussians of frame t."""
        return self.canonical.with_variation(self.variations[t])


def save_4d(path: str | Path, canonical: Gaussians, variations: torch.Tensor, metadata: dict | None = None) -> Path:
    """Write one ``.safetensors`` 4D file (atomically).

    Tensors: ``canonical`` (N, 14) input-layout rows (activated values, for other tools),
    ``xyz``, ``features_dc``, ``opacity_raw``, ``scaling_raw``, ``rotation_raw`` (the exact raw fields)
    and ``variations`` (T, N, 14), all float32. Metadata key ``gvf_4d``: a JSON string with at least
    format, version, num_frames, num_gaussians and the two channel orders (plus what `metadata` adds).
    """
    from safetensors.torch import save_file

    path = Path(path)
    g = canonical.detach().to("cpu", torch.float32)
    var = torch.as_tensor(variations).detach().to("cpu", torch.float32).contiguous()
    if var.ndim != 3 or var.shape[1:] != (len(g), 14):
        raise ValueError(f"variations must have shape (T, {len(g)}, 14), got {tuple(var.shape)}")
    tensors = {"canonical": g.to_tensor14().contiguous(), "variations": var}
    tensors.update({name: getattr(g, name).contiguous() for name in _RAW_FIELDS})
    meta = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "num_frames": int(var.shape[0]),
        "num_gaussians": len(g),
        "canonical_channels": CANONICAL_CHANNELS,
        "variation_channels": VARIATION_CHANNELS,
        "variation_application": "xyz and f_dc added to the values; scale, rotation, opacity added to the raw "
        "parameters before activation (gvf.gaussians.Gaussians.with_variation)",
        **(metadata or {}),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(meta, default=_json_default)
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata={"gvf_4d": text}))
    return path


def _json_default(obj):
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, (Path,)):
        return str(obj)
    if isinstance(obj, (torch.Tensor, np.ndarray)):
        return np.asarray(obj).tolist()
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def load_4d(path: str | Path) -> Sequence4D:
    """Read a file written by `save_4d`.

    Raises:
        FileNotFoundError / ValueError (one sentence naming the file) for a missing or foreign file.
    """
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"4D file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta_text = (f.metadata() or {}).get("gvf_4d")
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ValueError(f"{path} is not a readable safetensors file ({reason})") from None
    missing = [k for k in ("variations", *_RAW_FIELDS) if k not in tensors]
    if meta_text is None or missing:
        raise ValueError(f"{path} is not a gvf 4D file (missing {'metadata' if meta_text is None else ', '.join(missing)})")
    metadata = json.loads(meta_text)
    canonical = Gaussians(**{name: tensors[name].float() for name in _RAW_FIELDS})
    variations = tensors["variations"].float()
    if variations.ndim != 3 or variations.shape[1:] != (len(canonical), 14):
        raise ValueError(f"{path}: variations of shape {tuple(variations.shape)} do not fit {len(canonical)} Gaussians")
    return Sequence4D(canonical, variations, metadata)


# ---------------------------------------------------------------------------------------- rendering


def spiral_schedule(num_frames: int, num_views: int) -> tuple[list[int], list[float]]:
    """(frame, azimuth) pairs of the orbit part of `ORBIT_VIDEO`: view i at 360·i/V shows frame i mod T.

    With T = 32 and V = 128 this is upstream's ``create_spiral_timeline_video`` order.
    """
    times = [i % num_frames for i in range(num_views)]
    azimuths = [360.0 * i / num_views for i in range(num_views)]
    return times, azimuths


@torch.no_grad()
def render_sequence(
    canonical: Gaussians,
    variations: torch.Tensor | None,
    times: Sequence[int],
    azimuths: Sequence[float],
    resolution: int,
    *,
    scale_factor: float = 1.0,
    elevation_deg: float = 0.0,
    radius: float = DEFAULT_RADIUS,
    fov_deg: float = DEFAULT_FOV_DEG,
    device: torch.device | str | None = None,
    backend: str = "auto",
    batch_size: int = 8,
    progress: bool = False,
    desc: str = "rendering",
) -> np.ndarray:
    """Render frame ``times[i]`` from orbit azimuth ``azimuths[i]``, for every i.

    Args:
        canonical: N Gaussians; variations: (T, N, 14) or None (static).
        scale_factor: zoom (focal length × factor) matching the input framing.
        device: where to render (default: the Gaussians' device).
        batch_size: images per render call.
    Returns:
        (F, H, W, 3) uint8 on white.
    """
    from tqdm.auto import tqdm

    if len(times) != len(azimuths):
        raise ValueError(f"times and azimuths must have the same length, got {len(times)} and {len(azimuths)}")
    device = torch.device(device) if device is not None else canonical.device
    g = canonical.to(device, torch.float32)
    K = intrinsics_from_fov(math.radians(fov_deg), dtype=torch.float32, device=device)
    K[0, 0] *= scale_factor
    K[1, 1] *= scale_factor
    frames = []
    for i in tqdm(range(0, len(times), batch_size), desc=desc, disable=not progress, leave=False):
        t_chunk = list(times[i : i + batch_size])
        extrinsics = orbit_extrinsics(list(azimuths[i : i + batch_size]), elevation_deg, radius, dtype=torch.float32, device=device)
        deltas = None if variations is None else variations[t_chunk].to(device, torch.float32)
        items = g if deltas is not None else [g] * len(t_chunk)
        out = render_gaussians(items, extrinsics[:, None], K, resolution, background=(1.0, 1.0, 1.0), deltas=deltas, backend=backend)
        rgb = out.rgb[:, 0].clamp(0.0, 1.0)  # (B, H, W, 3)
        frames.append((rgb * 255.0 + 0.5).to(torch.uint8).cpu().numpy())
    return np.concatenate(frames) if frames else np.zeros((0, resolution, resolution, 3), np.uint8)


def write_video(path: str | Path, frames: np.ndarray, fps: float = VIDEO_FPS) -> Path:
    """Write (F, H, W, 3) uint8 frames as H.264 mp4 (libx264, yuv420p, quality 8) via imageio."""
    import imageio.v2 as imageio

    path = Path(path)
    writer = imageio.get_writer(
        str(path), fps=fps, codec="libx264", quality=8, pixelformat="yuv420p", macro_block_size=2,
        ffmpeg_log_level="error",
    )  # fmt: skip
    try:
        for frame in frames:
            writer.append_data(np.ascontiguousarray(frame))
    finally:
        writer.close()
    return path


# ------------------------------------------------------------------------------------------ export


def frame_ply_name(t: int) -> str:
    """Relative path of frame t's PLY."""
    return f"{PLY_DIR}/frame_{t:03d}.ply"


def planned_outputs(num_frames: int, videos: bool = True) -> list[str]:
    """Relative paths an export writes, in writing order."""
    names = [frame_ply_name(t) for t in range(num_frames)] + [CANONICAL_PLY]
    if videos:
        names += [INPUT_VIEW_VIDEO, ORBIT_VIDEO]
    return names + [FOUR_D_FILE]


def check_outputs(out_dir: str | Path, num_frames: int, videos: bool = True, overwrite: bool = False) -> None:
    """Raise FileExistsError (one sentence) if an export into `out_dir` would replace files without `overwrite`."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"output {out} exists and is not a directory")
    if overwrite or not out.exists():
        return
    existing = [n for n in planned_outputs(num_frames, videos) if (out / n).exists()]
    stale = sorted(p.relative_to(out).as_posix() for p in (out / PLY_DIR).glob("frame_*.ply")) if (out / PLY_DIR).is_dir() else []
    clash = existing or stale
    if clash:
        more = f" and {len(clash) - 1} more" if len(clash) > 1 else ""
        raise FileExistsError(f"{out} already holds {clash[0]}{more}; choose another --output or pass --overwrite")


def export_result(
    result,
    out_dir: str | Path,
    *,
    resolution: int = 512,
    orbit_views: int = ORBIT_VIEWS,
    videos: bool = True,
    overwrite: bool = False,
    video_fps: float = VIDEO_FPS,
    device: torch.device | str | None = None,
    backend: str = "auto",
    render_batch_size: int = 8,
    progress: bool = True,
    extra_metadata: dict | None = None,
) -> list[Path]:
    """Write every output of a `gvf.pipeline.VideoTo4DResult` (layout in the module docstring).

    Args:
        result: the pipeline result (canonical, variations, video, scale_factor, settings ...).
        out_dir: output directory (created; existing unrelated files are left alone).
        resolution: render side of the videos.
        orbit_views: views of the orbit spiral (upstream 128).
        videos: write the two mp4s.
        overwrite: replace existing outputs (and stale ``ply/frame_*.ply``).
        device, backend, render_batch_size: rendering settings.
    Returns:
        the paths written.
    """
    from tqdm.auto import tqdm

    out = Path(out_dir)
    T = result.num_frames
    check_outputs(out, T, videos, overwrite)
    names = planned_outputs(T, videos)
    parent = out if out.is_dir() else out.parent
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=parent))
    try:
        (tmp / PLY_DIR).mkdir()
        for t in tqdm(range(T), desc="writing PLYs", disable=not progress, leave=False):
            save_ply(result.frame(t), tmp / frame_ply_name(t))
        save_ply(result.canonical, tmp / CANONICAL_PLY)
        if videos:
            common = dict(scale_factor=result.scale_factor, device=device, backend=backend, batch_size=render_batch_size, progress=progress)
            front = render_sequence(result.canonical, result.variations, list(range(T)), [0.0] * T, resolution,
                                    desc="rendering input view", **common)
            write_video(tmp / INPUT_VIEW_VIDEO, front, video_fps)
            times, azimuths = spiral_schedule(T, orbit_views)
            spiral = render_sequence(result.canonical, result.variations, times, azimuths, resolution, desc="rendering orbit", **common)
            write_video(tmp / ORBIT_VIDEO, np.concatenate([front, spiral]), video_fps)
        video = result.video
        meta = {
            "fps": video.sequence_fps,
            "source_fps": video.fps,
            "source": video.source,
            "frame_indices": list(video.indices),
            "stride": video.stride,
            "crop_box": list(video.box),
            "azimuth_deg": result.azimuth_deg,
            "scale_factor": result.scale_factor,
            "nfe": result.nfe,
            **result.settings,
            **(extra_metadata or {}),
        }
        save_4d(tmp / FOUR_D_FILE, result.canonical, result.variations, meta)

        # move into place: a fresh directory in one rename, else file by file (the 4D file last)
        if not out.exists():
            os.replace(tmp, out)
        else:
            if overwrite and (out / PLY_DIR).is_dir():
                keep = set(names)
                for stale in (out / PLY_DIR).glob("frame_*.ply"):
                    if stale.relative_to(out).as_posix() not in keep:
                        stale.unlink()
            for name in names:
                (out / name).parent.mkdir(parents=True, exist_ok=True)
                os.replace(tmp / name, out / name)
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return [out / n for n in names]
