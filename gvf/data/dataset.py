"""VAE training samples read from the upstream layout (spec §7.1, upstream ``dataset/dataset_vae.py``).

One item = one sequence:

* surface points re-based on frame 0 (``pc_t = static + delta_t``, ``static ← pc_0``,
  ``delta_t ← pc_t − pc_0``), `num_points` of them chosen without replacement;
* `num_frames_per_sample` random frames (sorted) of the T stored ones;
* the sparse voxel features of frame 0 (``features_all_timesteps/0/<feature>.npz``), optionally
  mean-pooled to a coarser grid;
* one random frame-0 view for the static VAE, and `num_cameras` views for the first sampled frames,
  each a random view of that frame: image composited on white with a 3×3 Gaussian-blurred alpha, raw
  alpha, OpenCV extrinsics and normalised intrinsics from the view's JSON (`views.load_view_json`).

Randomness comes from ``numpy.random.default_rng([seed, epoch, index])`` only, so an item is a pure
function of (seed, epoch, index): any sampler (``DistributedSampler`` included) and any number of
workers give the same samples, and a resumed run reproduces them exactly. Call `set_epoch` per epoch.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from .views import load_view_json, view_stem

logger = logging.getLogger(__name__)

__all__ = ["VAEDataset", "collate_vae", "load_view_image", "load_voxel_features", "blur_alpha"]

DATA_VOXEL_RESOLUTION = 64


def blur_alpha(alpha: torch.Tensor) -> torch.Tensor:
    """``cv2.GaussianBlur(alpha, (3, 3), 0)``: separable [1, 2, 1]/4 kernel, reflect-101 border.

    Args:
        alpha: (..., H, W) float.
    """
    shape = alpha.shape
    x = alpha.reshape(-1, 1, *shape[-2:]).float()
    k = torch.tensor([0.25, 0.5, 0.25], dtype=x.dtype, device=x.device)
    x = F.pad(x, (1, 1, 1, 1), mode="reflect")  # torch 'reflect' == OpenCV BORDER_REFLECT_101
    x = F.conv2d(x, k.view(1, 1, 1, 3))
    x = F.conv2d(x, k.view(1, 1, 3, 1))
    return x.reshape(shape)


def load_view_image(path: str | Path, image_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Upstream ``load_cam`` image handling of one RGBA PNG.

    Returns:
        image (3, H, W) float32 = rgb·blur(alpha) + (1 − blur(alpha)) (white background) and
        alpha (1, H, W) float32 (raw). With `image_size`, both are resized (area) afterwards.
    """
    from PIL import Image

    with Image.open(path) as im:
        arr = np.asarray(im.convert("RGBA"), dtype=np.float32) / 255.0
    rgba = torch.from_numpy(arr).permute(2, 0, 1)  # (4, H, W)
    alpha = rgba[3:4]
    soft = blur_alpha(alpha)
    image = rgba[:3] * soft + (1.0 - soft)
    if image_size is not None and image.shape[-1] != image_size:
        image = F.interpolate(image[None], size=(image_size, image_size), mode="area")[0]
        alpha = F.interpolate(alpha[None], size=(image_size, image_size), mode="area")[0]
    return image, alpha


def load_voxel_features(path: str | Path,
                        vae_resolution: int = DATA_VOXEL_RESOLUTION) -> tuple[torch.Tensor, torch.Tensor]:
    """Sparse voxel features of one npz (``indices`` uint8, ``patchtokens`` float16).

    At a coarser `vae_resolution` the 64³ voxels are merged (coords // factor) and their features
    averaged, as upstream's ``load_feature``.

    Returns:
        coords (M, 3) int32 and feats (M, C) float32.
    """
    with np.load(path) as data:
        coords = torch.from_numpy(data["indices"].astype(np.int64))
        feats = torch.from_numpy(data["patchtokens"].astype(np.float32))
    if vae_resolution != DATA_VOXEL_RESOLUTION:
        if DATA_VOXEL_RESOLUTION % vae_resolution:
            raise ValueError(f"vae_resolution must divide {DATA_VOXEL_RESOLUTION}, got {vae_resolution}")
        coords, inverse = torch.unique(coords // (DATA_VOXEL_RESOLUTION // vae_resolution), dim=0, return_inverse=True)
        pooled = torch.zeros(coords.shape[0], feats.shape[1])
        feats = pooled.scatter_reduce(0, inverse[:, None].expand_as(feats), feats, reduce="mean", include_self=False)
    return coords.to(torch.int32), feats


class VAEDataset(Dataset):
    """Sequences prepared by `gvf.data.prepare` (or upstream's renderer) as VAE training items.

    Args:
        root: data directory holding one folder per sequence.
        names: sequence names, a text file with one per line, or None for every prepared folder.
        num_frames_per_sample: frames drawn per item (``sample_timesteps``; all frames when
            ``train=False``).
        num_cameras: views loaded for the sampled frames (``load_camera``; 0 = none).
        num_points: surface points per item (``num_pts``).
        num_views: views per frame to draw from (default: counted from frame 0's JSON files).
        feature_name: npz stem under ``features_all_timesteps/0/`` (default: the only one present).
        vae_resolution: voxel grid of the returned features (64 = as stored).
        image_size: resize loaded images to this side (default: as stored).
        train: random frames / views / points; otherwise all frames, views 0.., all points in order.
        seed: base seed of the per-item generators.
    """

    def __init__(self, root: str | Path, names: Sequence[str] | str | Path | None = None, *,
                 num_frames_per_sample: int = 1, num_cameras: int = 1, num_points: int = 8192,
                 num_views: int | None = None, feature_name: str | None = None,
                 vae_resolution: int = DATA_VOXEL_RESOLUTION, image_size: int | None = None,
                 train: bool = True, seed: int = 0):
        self.root = Path(root)
        if not self.root.is_dir():
            raise ValueError(f"data root {self.root} is not a directory")
        if names is None or (isinstance(names, str) and not names.strip()):
            names = sorted(p.name for p in self.root.iterdir()
                           if p.is_dir() and not p.name.startswith(".") and (p / "objs" / "mesh_data").is_dir())
        elif isinstance(names, (str, Path)):
            names = [n.strip() for n in Path(names).read_text().splitlines() if n.strip()]
        self.names = list(names)
        if not self.names:
            raise ValueError(f"no prepared sequences found in {self.root}")
        self.num_frames_per_sample = int(num_frames_per_sample)
        self.num_cameras = int(num_cameras)
        self.num_points = int(num_points)
        self.feature_name = feature_name
        self.vae_resolution = int(vae_resolution)
        self.image_size = image_size
        self.train = bool(train)
        self.seed = int(seed)
        self.epoch = 0
        first = self.root / self.names[0]
        if num_views is None:
            num_views = len(list((first / "meta_data").glob("timestep_00_view_*.json")))
            if num_views == 0:
                raise ValueError(f"{first}/meta_data holds no timestep_00_view_*.json files")
        self.num_views = int(num_views)

    def set_epoch(self, epoch: int) -> None:
        """Select the random draws of an epoch (like ``DistributedSampler.set_epoch``)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.names)

    def _feature_path(self, seq: Path) -> Path:
        folder = seq / "features_all_timesteps" / "0"
        if self.feature_name is not None:
            return folder / f"{self.feature_name}.npz"
        found = sorted(folder.glob("*.npz"))
        if len(found) != 1:
            raise ValueError(f"{folder}: expected exactly one feature npz, found {[p.name for p in found]}; "
                             f"pass feature_name")
        return found[0]

    def _camera(self, seq: Path, t: int, v: int) -> dict:
        extrinsics, intrinsics = load_view_json(seq / "meta_data" / f"{view_stem(t, v)}.json")
        image, alpha = load_view_image(seq / "imgs" / f"{view_stem(t, v)}.png", self.image_size)
        return {"extrinsics": extrinsics, "intrinsics": intrinsics, "image": image, "alpha": alpha,
                "timestep_idx": torch.tensor(t), "view_idx": torch.tensor(v)}

    @staticmethod
    def _stack(cams: list[dict]) -> dict:
        return {k: torch.stack([c[k] for c in cams]) for k in cams[0]}

    def load(self, index: int) -> dict:
        """The item of `index` (raises on unreadable data; `__getitem__` falls back to the next one)."""
        seq = self.root / self.names[index]
        rng = np.random.default_rng([self.seed, self.epoch, index])
        mesh_dir = seq / "objs" / "mesh_data"
        static = torch.load(mesh_dir / "static_frame_vertices.pt", map_location="cpu", weights_only=True).float()
        deltas = torch.load(mesh_dir / "moving_frame_deltas.pt", map_location="cpu", weights_only=True).float()
        moving = static[None] + deltas  # (T, N, 3)
        static = moving[0]
        deltas = moving - static[None]
        T, N = deltas.shape[:2]
        coords, feats = load_voxel_features(self._feature_path(seq), self.vae_resolution)

        if self.train:
            if self.num_frames_per_sample > T:
                raise ValueError(f"{seq}: {T} frames stored, {self.num_frames_per_sample} requested")
            v0 = int(rng.integers(self.num_views))
            points = rng.choice(N, min(self.num_points, N), replace=False)
            time_idx = np.sort(rng.choice(T, self.num_frames_per_sample, replace=False))
            cam_list = [(int(t), int(rng.integers(self.num_views))) for t in time_idx[: self.num_cameras]]
        else:
            v0 = 0
            points = np.arange(min(self.num_points, N))
            time_idx = np.arange(T)
            cam_list = [(t, v) for t in range(T) for v in range(self.num_cameras)]
        points = torch.from_numpy(points)
        item = {
            "name": self.names[index],
            "static_pc": static[points],  # (N, 3)
            "delta_pc": deltas[torch.from_numpy(time_idx)][:, points],  # (T_s, N, 3)
            "time_idx": torch.from_numpy(time_idx),
            "coords": coords,  # (M, 3) int32
            "feats": feats,  # (M, C)
            "static_cams": self._stack([self._camera(seq, 0, v0)]),
        }
        if cam_list:
            item["cams"] = self._stack([self._camera(seq, t, v) for t, v in cam_list])
        return item

    def __getitem__(self, index: int) -> dict:
        for attempt in range(len(self)):
            i = (index + attempt) % len(self)
            try:
                return self.load(i)
            except (OSError, ValueError, KeyError, RuntimeError) as err:
                logger.warning("skipping unreadable sequence %s: %s", self.names[i], err)
        raise RuntimeError(f"no readable sequence in {self.root}")


def collate_vae(batch: list[dict]) -> dict:
    """Batch VAE items: dense tensors stacked, sparse voxels concatenated with a batch column.

    Returns:
        dict with ``static_pc`` (B, N, 3), ``delta_pc`` (B, T, N, 3), ``time_idx`` (B, T),
        ``coords`` (ΣM, 4) int32 rows [batch, x, y, z], ``feats`` (ΣM, C), ``static_cams`` and ``cams``
        dicts of stacked tensors (B, L, ...), and ``names``.
    """
    out = {
        "names": [b["name"] for b in batch],
        "static_pc": torch.stack([b["static_pc"] for b in batch]),
        "delta_pc": torch.stack([b["delta_pc"] for b in batch]),
        "time_idx": torch.stack([b["time_idx"] for b in batch]),
        "coords": torch.cat([torch.cat([torch.full((b["coords"].shape[0], 1), i, dtype=torch.int32),
                                        b["coords"].to(torch.int32)], 1) for i, b in enumerate(batch)]),
        "feats": torch.cat([b["feats"] for b in batch]),
    }
    for key in ("static_cams", "cams"):
        if key in batch[0]:
            out[key] = {k: torch.stack([b[key][k] for b in batch]) for k in batch[0][key]}
    return out
