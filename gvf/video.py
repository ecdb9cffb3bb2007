"""Input videos for video-to-4D: reading, frame sampling, foreground alpha, crop and centring.

A video is a file (mp4, mov, webm, mkv, avi, gif — read with imageio / imageio-ffmpeg) or a folder of
frame images (png, jpg, ... in natural order: ``frame2.png`` before ``frame10.png``), or frames
already in memory ((T, H, W, 3|4) uint8).

Frame sampling: ``start + stride·i`` for i < T (the upstream in-the-wild encoder takes
``frames[start::stride][:32]``).

Foreground alpha, per frame, first that applies:

1. a given mask: a folder of mask images or a mask video (sampled like the frames), or a single mask
   image (it applies to the first frame only, like upstream's ``<frame>_mask.png``);
2. the frame's own alpha channel, when some pixel is not opaque;
3. a plain background: its colour is the median of the border pixels and alpha ramps from 0 to 1 as
   the largest per-channel difference to it grows from ``BACKGROUND_LOW`` to ``BACKGROUND_HIGH``
   (a warning is logged when the border is not a plain colour).

Crop and centring (upstream ``encode_in_the_wild_img_cond_dinov2_feature.py``, spec §7.5): the bounding
box of alpha > 0.8·255 on the FIRST frame, a square of side ``int(1.2·max(w, h))`` around its centre
(w, h in pixel extents, not +1) — the same box for every frame; each frame is cropped with it (PIL,
outside the image counts as transparent), resized to 380² (LANCZOS), composited on white and pasted at
(66, 66) into a white 512² canvas; the mask is the alpha pasted into a black canvas. Values are
truncated to uint8 as the upstream PNGs were.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

logger = logging.getLogger(__name__)

__all__ = [
    "VideoError",
    "VideoClip",
    "PreparedVideo",
    "IMAGE_EXTENSIONS",
    "VIDEO_EXTENSIONS",
    "CANVAS_SIZE",
    "OBJECT_SIZE",
    "PASTE_OFFSET",
    "MAX_FRAMES",
    "natural_key",
    "list_frame_files",
    "sample_indices",
    "read_video",
    "read_masks",
    "estimate_background_alpha",
    "foreground_alpha",
    "crop_box",
    "centre_frame",
    "prepare_video",
]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
VIDEO_EXTENSIONS = (".mp4", ".mov", ".webm", ".mkv", ".avi", ".m4v", ".gif")
CANVAS_SIZE = 512  # side of the centred frames
OBJECT_SIZE = 380  # side the crop box is resized to
PASTE_OFFSET = (CANVAS_SIZE - OBJECT_SIZE) // 2  # 66: top-left corner of the crop in the canvas
BBOX_THRESHOLD = 0.8 * 255  # alpha above this defines the object's bounding box
BOX_MARGIN = 1.2  # crop side = 1.2 × the longer bounding-box side
MAX_FRAMES = 32  # frames the upstream model is run on (default when T is not given)
BACKGROUND_LOW = 0.06  # colour distance (0..1) below which a pixel is background
BACKGROUND_HIGH = 0.15  # colour distance above which a pixel is fully foreground
BORDER_FRACTION = 0.02  # width of the border used to estimate the background colour


class VideoError(ValueError):
    """A video, frame folder or mask that cannot be used; the message is one sentence."""


# ---------------------------------------------------------------------------------------------- IO


def natural_key(name: str) -> list:
    """Sort key putting ``frame2`` before ``frame10`` (digit runs compare as numbers)."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


def list_frame_files(folder: str | Path) -> list[Path]:
    """Image files of a folder in natural order (hidden files skipped)."""
    folder = Path(folder)
    files = [p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")]
    return sorted(files, key=lambda p: natural_key(p.name))


def sample_indices(
    num_available: int, num_frames: int | None = None, start: int = 0, stride: int = 1, *, what: str = "the video"
) -> list[int]:
    """Frame indices ``start + stride·i``, i < T.

    Args:
        num_available: frames in the source.
        num_frames: T; None takes as many as fit, at most `MAX_FRAMES` (the upstream 32).
        start, stride: first index and step.
    Raises:
        VideoError when the source has too few frames.
    """
    if start < 0:
        raise VideoError(f"start must be >= 0, got {start}")
    if stride < 1:
        raise VideoError(f"stride must be >= 1, got {stride}")
    if num_frames is not None and num_frames < 1:
        raise VideoError(f"the number of frames must be >= 1, got {num_frames}")
    if num_available < 1:
        raise VideoError(f"{what} contains no frames")
    fit = len(range(start, num_available, stride))
    if num_frames is None:
        if fit == 0:
            raise VideoError(f"{what} has {num_available} frames, so there is no frame at start index {start}")
        num_frames = min(fit, MAX_FRAMES)
    elif fit < num_frames:
        need = start + stride * (num_frames - 1) + 1
        raise VideoError(
            f"{what} has {num_available} frames but {num_frames} frames from index {start} with stride {stride} need {need}"
        )
    return [start + stride * i for i in range(num_frames)]


@dataclass
class VideoClip:
    """Sampled frames of a video.

    Attributes:
        frames: (T, H, W, 3 or 4) uint8.
        indices: the source frame index of each frame.
        fps: frame rate of the source (None for frame folders / arrays).
        source: where the frames came from.
        num_available: frames in the source (for a video file: those decoded, a lower bound when
            decoding stopped after the last frame needed).
    """

    frames: np.ndarray
    indices: list[int]
    fps: float | None
    source: str
    num_available: int


def _to_uint8_frame(frame: np.ndarray, where: str) -> np.ndarray:
    frame = np.asarray(frame)
    if frame.ndim == 2:
        frame = np.repeat(frame[:, :, None], 3, axis=2)
    if frame.ndim != 3 or frame.shape[2] not in (1, 2, 3, 4):
        raise VideoError(f"{where} is not an image (array of shape {frame.shape})")
    if frame.shape[2] == 1:
        frame = np.repeat(frame, 3, axis=2)
    elif frame.shape[2] == 2:  # grey + alpha
        frame = np.concatenate([np.repeat(frame[:, :, :1], 3, axis=2), frame[:, :, 1:]], axis=2)
    if frame.dtype == np.uint16:
        frame = (frame // 257).astype(np.uint8)
    elif frame.dtype != np.uint8:
        if np.issubdtype(frame.dtype, np.floating):
            frame = (np.clip(frame, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
        else:
            frame = np.clip(frame, 0, 255).astype(np.uint8)
    return frame


def _load_image(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as im:
            im.load()
            mode = "RGBA" if ("A" in im.getbands() or "transparency" in im.info) else "RGB"
            return np.asarray(im.convert(mode))
    except (OSError, ValueError) as exc:
        raise VideoError(f"cannot read image {path}: {exc}") from None


def _ffmpeg_reason(exc: Exception) -> str:
    """One short clause from an imageio/ffmpeg error."""
    text = str(exc)
    if "does not contain any stream" in text:
        return "it contains no video stream (zero frames)"
    if "moov atom not found" in text or "Invalid data found" in text:
        return "the file is not a valid video or is truncated"
    first = next((line.strip() for line in text.splitlines() if line.strip()), type(exc).__name__)
    return first[:200]


def _same_size(frames: list[np.ndarray], source: str) -> None:
    shapes = {f.shape[:2] for f in frames}
    if len(shapes) > 1:
        raise VideoError(f"the frames of {source} do not all have the same size ({sorted(shapes)})")


def _unify_channels(frames: list[np.ndarray]) -> np.ndarray:
    if any(f.shape[2] == 4 for f in frames):
        frames = [f if f.shape[2] == 4 else np.concatenate([f, np.full(f.shape[:2] + (1,), 255, np.uint8)], 2) for f in frames]
    return np.stack(frames)


def _read_video_file(path: Path, wanted: Sequence[int] | None, num_frames, start, stride, progress: bool) -> VideoClip:
    """Decode a video file, keeping only the sampled frames (decoding stops after the last one needed)."""
    import imageio.v3 as iio
    from tqdm.auto import tqdm

    fps = None
    try:
        meta = iio.immeta(path)
        if meta.get("fps"):
            fps = float(meta["fps"])
        elif meta.get("duration"):  # GIF: duration of a frame in ms
            fps = 1000.0 / float(meta["duration"]) if float(meta["duration"]) > 0 else None
    except Exception as exc:  # imageio raises many error types (OSError, RuntimeError, ...)
        raise VideoError(f"cannot read video {path}: {_ffmpeg_reason(exc)}") from None

    if wanted is None:
        last_needed = start + stride * ((num_frames or MAX_FRAMES) - 1)
        keep = lambda i: i >= start and (i - start) % stride == 0  # noqa: E731
    else:
        last_needed, wanted_set = max(wanted), set(wanted)
        keep = wanted_set.__contains__
    kept: dict[int, np.ndarray] = {}
    count = 0
    bar = tqdm(desc=f"reading {path.name}", unit="frame", disable=not progress, leave=False)
    try:
        for i, frame in enumerate(iio.imiter(path)):
            count = i + 1
            bar.update(1)
            if keep(i) and i <= last_needed:
                kept[i] = _to_uint8_frame(frame, f"frame {i} of {path}")
            if i >= last_needed:
                break
    except VideoError:
        raise
    except Exception as exc:
        if count == 0:
            raise VideoError(f"cannot read video {path}: {_ffmpeg_reason(exc)}") from None
        logger.warning("%s: decoding stopped after %d frames (%s)", path, count, _ffmpeg_reason(exc))
    finally:
        bar.close()
    if count == 0:
        raise VideoError(f"video {path} contains no frames")
    # When decoding stopped early, `count` covers every needed frame; otherwise it is the total.
    indices = list(wanted) if wanted is not None else sample_indices(count, num_frames, start, stride, what=f"video {path}")
    missing = [i for i in indices if i not in kept]
    if missing:
        raise VideoError(f"video {path} has {count} frames but frame {missing[0]} is needed")
    frames = [kept[i] for i in indices]
    _same_size(frames, str(path))
    return VideoClip(_unify_channels(frames), indices, fps, str(path), count)


def read_video(
    source: str | Path | np.ndarray | Sequence[np.ndarray],
    num_frames: int | None = None,
    start: int = 0,
    stride: int = 1,
    *,
    indices: Sequence[int] | None = None,
    progress: bool = False,
) -> VideoClip:
    """Read and sample the frames of a video file, a frame folder or an in-memory array.

    Args:
        source: video file, folder of images, or (T, H, W, 3|4) uint8 frames (array or list).
        num_frames, start, stride: see `sample_indices`.
        indices: explicit source indices instead of (num_frames, start, stride).
        progress: show a progress bar while decoding.
    Returns:
        VideoClip with (T, H, W, 3|4) uint8 frames (4 channels if any frame has alpha).
    Raises:
        VideoError (one sentence) for a missing, unreadable or too short source.
    """
    if isinstance(source, (np.ndarray, list, tuple)):
        frames_in = list(source)
        if not frames_in:
            raise VideoError("the given frame array contains no frames")
        idx = list(indices) if indices is not None else sample_indices(len(frames_in), num_frames, start, stride, what="the frame array")
        if max(idx) >= len(frames_in):
            raise VideoError(f"the frame array has {len(frames_in)} frames but frame {max(idx)} is needed")
        frames = [_to_uint8_frame(frames_in[i], f"frame {i}") for i in idx]
        _same_size(frames, "the frame array")
        return VideoClip(_unify_channels(frames), idx, None, "array", len(frames_in))

    path = Path(source).expanduser()
    if not path.exists():
        raise VideoError(f"video not found: {path}")
    if path.is_dir():
        files = list_frame_files(path)
        if not files:
            raise VideoError(f"frame folder {path} contains no frames (no {', '.join(IMAGE_EXTENSIONS)} files)")
        idx = list(indices) if indices is not None else sample_indices(len(files), num_frames, start, stride, what=f"frame folder {path}")
        if max(idx) >= len(files):
            raise VideoError(f"frame folder {path} has {len(files)} frames but frame {max(idx)} is needed")
        frames = [_to_uint8_frame(_load_image(files[i]), str(files[i])) for i in idx]
        _same_size(frames, f"frame folder {path}")
        return VideoClip(_unify_channels(frames), idx, None, str(path), len(files))
    if path.suffix.lower() in IMAGE_EXTENSIONS:
        raise VideoError(f"{path} is a single image; pass a video file or a folder of frames")
    if path.stat().st_size == 0:
        raise VideoError(f"cannot read video {path}: the file is empty")
    return _read_video_file(path, None if indices is None else list(indices), num_frames, start, stride, progress)


def _mask_from_array(arr: np.ndarray) -> np.ndarray:
    """(H, W) uint8 alpha from a mask image: its alpha if not opaque, else its luminance."""
    arr = np.asarray(arr)
    if arr.ndim == 2:
        out = arr
    elif arr.shape[2] == 4 and not np.all(arr[:, :, 3] == 255):
        out = arr[:, :, 3]
    else:
        out = np.asarray(Image.fromarray(_to_uint8_frame(arr[:, :, :3], "mask")).convert("L"))
    return _to_uint8_frame(out[:, :, None], "mask")[:, :, 0]


def read_masks(source: str | Path, indices: Sequence[int]) -> list[np.ndarray | None]:
    """Masks for the sampled frames: (H, W) uint8 each, or None where the mask gives none.

    Args:
        source: a folder of mask images or a mask video (sampled at `indices`), or one mask image
            (returned for the first frame only).
        indices: the source indices of the sampled frames.
    """
    path = Path(source).expanduser()
    if not path.exists():
        raise VideoError(f"mask not found: {path}")
    if path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS:
        return [_mask_from_array(_load_image(path))] + [None] * (len(indices) - 1)
    try:
        clip = read_video(path, indices=indices)
    except VideoError as exc:
        raise VideoError(f"mask {exc}") from None
    return [_mask_from_array(f) for f in clip.frames]


# -------------------------------------------------------------------------------------- foreground


def estimate_background_alpha(rgb: np.ndarray, low: float = BACKGROUND_LOW, high: float = BACKGROUND_HIGH) -> np.ndarray:
    """Alpha (H, W) uint8 of a frame on a plain background.

    The background colour is the per-channel median of a border ``BORDER_FRACTION`` of the short side
    wide (at least one pixel); alpha ramps linearly from 0 at a largest per-channel difference `low`
    to 1 at `high` (colours in 0..1).
    """
    rgb = np.asarray(rgb)[:, :, :3].astype(np.float32) / 255.0
    H, W = rgb.shape[:2]
    b = max(1, int(round(BORDER_FRACTION * min(H, W))))
    ring = np.concatenate([rgb[:b].reshape(-1, 3), rgb[-b:].reshape(-1, 3), rgb[:, :b].reshape(-1, 3), rgb[:, -b:].reshape(-1, 3)])
    background = np.median(ring, axis=0)
    ring_dist = np.abs(ring - background).max(axis=1)
    if float((ring_dist > low).mean()) > 0.25:
        logger.warning(
            "the frame border is not a plain colour (%.0f%% of it differs from the median); the estimated "
            "foreground may be poor, pass --mask or frames with alpha", 100 * float((ring_dist > low).mean())
        )
    dist = np.abs(rgb - background).max(axis=2)
    alpha = np.clip((dist - low) / (high - low), 0.0, 1.0)
    return (alpha * 255.0 + 0.5).astype(np.uint8)


def foreground_alpha(frames: np.ndarray, masks: Sequence[np.ndarray | None] | None = None) -> np.ndarray:
    """Alpha (T, H, W) uint8 of each frame: the mask, else the frame's own alpha, else a plain background.

    Args:
        frames: (T, H, W, 3|4) uint8.
        masks: optional per-frame (H', W') uint8 masks or None (resized to the frame size if needed).
    """
    T, H, W = frames.shape[:3]
    out = np.empty((T, H, W), dtype=np.uint8)
    for t in range(T):
        mask = masks[t] if masks is not None and t < len(masks) else None
        if mask is not None:
            if mask.shape != (H, W):
                logger.warning("mask of frame %d is %dx%d, the frame %dx%d: resizing it", t, mask.shape[1], mask.shape[0], W, H)
                mask = np.asarray(Image.fromarray(mask).resize((W, H), Image.Resampling.BILINEAR))
            out[t] = mask
        elif frames.shape[3] == 4 and not np.all(frames[t, :, :, 3] == 255):
            out[t] = frames[t, :, :, 3]
        else:
            out[t] = estimate_background_alpha(frames[t])
    return out


# ------------------------------------------------------------------------------------ crop + centre


def crop_box(alpha: np.ndarray) -> tuple[float, float, float, float]:
    """Upstream square crop box (left, top, right, bottom) around the object of an (H, W) uint8 alpha.

    The box is centred on the bounding box of alpha > 0.8·255, with side ``int(1.2·max(w, h))``;
    its corners may be fractional (PIL rounds them when cropping).
    """
    ys, xs = np.nonzero(np.asarray(alpha) > BBOX_THRESHOLD)
    if len(xs) == 0:
        raise VideoError("no foreground found in the first frame (no pixel with alpha above 0.8); pass --mask or frames with alpha")
    x0, y0, x1, y1 = int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())
    size = int(max(x1 - x0, y1 - y0) * BOX_MARGIN)
    if size < 2:
        raise VideoError(f"the foreground of the first frame is too small to crop ({x1 - x0 + 1}x{y1 - y0 + 1} pixels)")
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    return (cx - size // 2, cy - size // 2, cx + size // 2, cy + size // 2)


def centre_frame(rgb: np.ndarray, alpha: np.ndarray, box: tuple[float, float, float, float]) -> tuple[np.ndarray, np.ndarray]:
    """Crop one frame with `box`, resize to 380², composite on white and paste into the 512² canvas.

    Args:
        rgb: (H, W, 3+) uint8 frame; alpha: (H, W) uint8.
    Returns:
        image (512, 512, 3) uint8 on white and mask (512, 512) uint8 (0 outside the pasted crop).
    """
    rgba = np.concatenate([np.asarray(rgb)[:, :, :3], np.asarray(alpha)[:, :, None]], axis=2)
    crop = Image.fromarray(rgba, "RGBA").crop(box).resize((OBJECT_SIZE, OBJECT_SIZE), Image.Resampling.LANCZOS)
    arr = np.asarray(crop).astype(np.float32) / 255.0
    a = arr[:, :, 3:4]
    composite = arr[:, :, :3] * a + (1.0 - a)
    image = np.ones((CANVAS_SIZE, CANVAS_SIZE, 3), dtype=np.float32)
    mask = np.zeros((CANVAS_SIZE, CANVAS_SIZE), dtype=np.float32)
    p = PASTE_OFFSET
    image[p : p + OBJECT_SIZE, p : p + OBJECT_SIZE] = composite
    mask[p : p + OBJECT_SIZE, p : p + OBJECT_SIZE] = a[:, :, 0]
    # truncation to uint8, as the upstream PNGs
    return (image * 255.0).astype(np.uint8), (mask * 255.0).astype(np.uint8)


@dataclass
class PreparedVideo:
    """Centred frames ready for the pipeline.

    Attributes:
        images: (T, 512, 512, 3) uint8, object composited on white.
        masks: (T, 512, 512) uint8 object alpha.
        indices: source frame index of each frame.
        fps: source frame rate (None if unknown); the sequence rate is fps / stride.
        stride: sampling stride.
        box: the crop box (left, top, right, bottom) in source pixels.
        source: where the frames came from.
        source_size: (W, H) of the source frames.
    """

    images: np.ndarray
    masks: np.ndarray
    indices: list[int]
    fps: float | None
    stride: int
    box: tuple[float, float, float, float]
    source: str
    source_size: tuple[int, int]
    extra: dict = field(default_factory=dict)

    @property
    def num_frames(self) -> int:
        return int(self.images.shape[0])

    @property
    def sequence_fps(self) -> float | None:
        """Frame rate of the sampled sequence (source fps / stride), None if unknown."""
        return None if self.fps is None else self.fps / self.stride

    def images_float(self) -> np.ndarray:
        """(T, 512, 512, 3) float32 in [0, 1]."""
        return self.images.astype(np.float32) / 255.0

    def masks_float(self) -> np.ndarray:
        """(T, 512, 512) float32 in [0, 1]."""
        return self.masks.astype(np.float32) / 255.0


def prepare_video(
    source: str | Path | np.ndarray | Sequence[np.ndarray],
    num_frames: int | None = None,
    start: int = 0,
    stride: int = 1,
    mask: str | Path | Sequence[np.ndarray | None] | None = None,
    *,
    progress: bool = False,
) -> PreparedVideo:
    """Read, sample, find the foreground, crop and centre a video (see the module docstring).

    Args:
        source: video file, frame folder or (T, H, W, 3|4) uint8 frames.
        num_frames, start, stride: frame sampling (`sample_indices`).
        mask: mask folder / video / image path, or per-frame (H, W) uint8 masks (None entries allowed).
        progress: progress bars.
    Returns:
        PreparedVideo.
    Raises:
        VideoError with one sentence for any bad input.
    """
    clip = read_video(source, num_frames, start, stride, progress=progress)
    if mask is None:
        masks = None
    elif isinstance(mask, (str, Path)):
        masks = read_masks(mask, clip.indices)
    else:
        masks = list(mask)
    alpha = foreground_alpha(clip.frames, masks)
    box = crop_box(alpha[0])
    images, out_masks = zip(*(centre_frame(clip.frames[t], alpha[t], box) for t in range(len(clip.indices))))
    H, W = clip.frames.shape[1:3]
    logger.info(
        "video %s: %d frames (indices %d..%d, stride %d) of %dx%d, crop box %s",
        clip.source, len(clip.indices), clip.indices[0], clip.indices[-1], stride, W, H, tuple(round(v, 1) for v in box),
    )
    return PreparedVideo(
        images=np.stack(images), masks=np.stack(out_masks), indices=clip.indices, fps=clip.fps,
        stride=stride, box=box, source=clip.source, source_size=(W, H),
    )  # fmt: skip
