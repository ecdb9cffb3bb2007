"""Encoded motion latents: their file format, their statistics and the diffusion training dataset.

Per object, ``<latents_dir>/<name>.safetensors`` (written by ``scripts/encode_latents.py``) holds

=====================  ==================  ====================================================
key                    shape, dtype        meaning
=====================  ==================  ====================================================
latent_mean            (T, L, C) float32   motion-VAE posterior mean per frame (L = num_latents)
latent_std             (T, L, C) float32   posterior std, exp(logvar / 2) (logvar clamped)
fps_gaussians_512      (L, 14) float32     the encoder's FPS query Gaussians (input layout)
fps_gaussians_4096     (S, 14) float32     FPS of the static Gaussians in sampling order (the DiT's
                                           static condition; any prefix is itself an FPS subset)
static_feats           (M, 112) float32    the static decoder's output per voxel
static_coords          (M, 3) int32        the voxels (grid of the static VAE)
=====================  ==================  ====================================================

(the 512 / 4096 in the key names are the official sizes; the row counts follow the configs) and
metadata strings ``format``, ``name``, ``frames``, ``static_resolution``. ``<latents_dir>/index.json``
lists the objects. The layout matches the diffusion dataset: no ``latents/`` level in between
(upstream bug §10.2 #4), conditioning features come from ``<data_dir>/cond_features/<name>.npz``.

``<latents_dir>/stats.safetensors`` (``scripts/latent_stats.py``) holds the normalisation vectors
with the meaning of the official ``*_mean.pt`` / ``*_std.pt`` files (which are written beside it):
``static_mean``/``static_std`` (14,) per channel of the static condition rows, and
``deformation_mean``/``deformation_std`` (C,) per latent channel; everything is normalised as
``(x − mean) / std``, broadcasting over the last axis.

Positions (decision for upstream bug §10.2 #1): ``deformation_position_xyz`` is the xyz of the query
Gaussians normalised with ``static_mean[:3]`` / ``static_std[:3]`` (``data.normalize_positions``,
default true, as upstream training: it spreads the positions over a wider range of the DiT's sinusoidal
embedding than raw xyz in [−0.5, 0.5]). The flag travels in the release config and the inference
pipeline applies the same (`gvf.pipeline`); the official weights keep upstream's raw-xyz inference.
The static condition is the first ``data.num_static_gaussians`` rows of ``fps_gaussians_4096``
(inference takes that many FPS rows too).

Per item (training): ``data.num_timesteps`` distinct frames drawn at random and sorted; the latent
is sampled ``mean + std·ε`` afresh on every access; with probability ``uncond_p`` the video
features of all frames are zeroed (classifier-free guidance), never the static latent or the
positions. All draws come from ``numpy.random.default_rng([seed, epoch, index])``, so items are
reproducible and a resumed run sees the same ones.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from gvf.utils.io import atomic_write

logger = logging.getLogger(__name__)

__all__ = [
    "LATENT_FORMAT",
    "LATENT_KEYS",
    "STATS_KEYS",
    "STATS_FILE",
    "INDEX_FILE",
    "save_latent_file",
    "load_latent_file",
    "list_latent_names",
    "compute_latent_stats",
    "save_latent_stats",
    "load_latent_stats",
    "normalize",
    "LatentDataset",
    "collate_latents",
    "write_index",
]

LATENT_FORMAT = "gvf-latents-v1"
LATENT_KEYS = ("latent_mean", "latent_std", "fps_gaussians_512", "fps_gaussians_4096", "static_feats", "static_coords")
STATS_KEYS = ("static_mean", "static_std", "deformation_mean", "deformation_std")
STATS_FILE = "stats.safetensors"
INDEX_FILE = "index.json"
STD_FLOOR = 1e-6  # constant channels (e.g. quaternion components of untrained Gaussians) divide by this


# ------------------------------------------------------------------------------------ files


def _atomic(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, write)


def save_latent_file(path: str | os.PathLike, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None) -> Path:
    """Write one object's latents (keys `LATENT_KEYS`, shapes in the module docstring) atomically."""
    from safetensors.torch import save_file

    missing = [k for k in LATENT_KEYS if k not in tensors]
    if missing:
        raise ValueError(f"latent file needs {', '.join(missing)}")
    T, L, C = tensors["latent_mean"].shape
    if tensors["latent_std"].shape != (T, L, C) or tensors["fps_gaussians_512"].shape != (L, 14):
        raise ValueError("latent_std must match latent_mean (T, L, C) and fps_gaussians_512 be (L, 14)")
    if tensors["fps_gaussians_4096"].ndim != 2 or tensors["fps_gaussians_4096"].shape[1] != 14:
        raise ValueError(f"fps_gaussians_4096 must be (S, 14), got {tuple(tensors['fps_gaussians_4096'].shape)}")
    if tensors["static_coords"].ndim != 2 or tensors["static_coords"].shape[1] != 3:
        raise ValueError(f"static_coords must be (M, 3), got {tuple(tensors['static_coords'].shape)}")
    out = {k: tensors[k].detach().cpu().contiguous() for k in LATENT_KEYS}
    for k in LATENT_KEYS:
        out[k] = out[k].to(torch.int32) if k == "static_coords" else out[k].float()
    meta = {"format": LATENT_FORMAT, **{k: str(v) for k, v in (metadata or {}).items()}}
    path = Path(path)
    _atomic(path, lambda tmp: save_file(out, str(tmp), metadata=meta))
    return path


def load_latent_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read one latent file (CPU tensors); raises if a key is missing."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"latent file not found: {path}")
    data = load_file(str(path))
    missing = [k for k in LATENT_KEYS if k not in data]
    if missing:
        raise ValueError(f"{path} lacks {', '.join(missing)} (not a {LATENT_FORMAT} file)")
    return data


def list_latent_names(latents_dir: str | os.PathLike, names: Sequence[str] | str | os.PathLike | None = None) -> list[str]:
    """Object names: given, read from a text file (one per line), or every latent file of the directory."""
    latents_dir = Path(latents_dir)
    if names is None:
        if not latents_dir.is_dir():
            raise ValueError(f"latents directory {latents_dir} does not exist (run scripts/encode_latents.py first)")
        found = sorted(p.stem for p in latents_dir.glob("*.safetensors") if p.name != STATS_FILE and not p.name.startswith("."))
        if not found:
            raise ValueError(f"no latent files in {latents_dir}")
        return found
    if isinstance(names, (str, os.PathLike)):
        return [n.strip() for n in Path(names).read_text().splitlines() if n.strip()]
    return list(names)


# ------------------------------------------------------------------------------------ statistics


def compute_latent_stats(paths: Iterable[str | os.PathLike]) -> dict[str, torch.Tensor]:
    """Normalisation statistics over latent files (float64 sums, float32 results).

    * static_mean / static_std (14,): over every row of every object's ``fps_gaussians_4096``;
    * deformation_mean / deformation_std (C,): of the latents the DiT is trained on, z = m + s·ε,
      over all objects, frames and tokens: mean = E[m], var = Var(m) + E[s²].
    Stds are floored at 1e-6.
    """
    n_s = n_d = 0
    acc = None
    for path in paths:
        data = load_latent_file(path)
        rows = data["fps_gaussians_4096"].double()
        m = data["latent_mean"].double().reshape(-1, data["latent_mean"].shape[-1])
        s = data["latent_std"].double().reshape(m.shape)
        if acc is None:  # sums are taken around the first file's means (no cancellation)
            acc = {"s_shift": rows.mean(0), "d_shift": m.mean(0)}
            acc.update({k: torch.zeros_like(acc["s_shift"]) for k in ("s_sum", "s_sq")})
            acc.update({k: torch.zeros_like(acc["d_shift"]) for k in ("d_sum", "d_sq", "d_var")})
        if m.shape[1] != acc["d_sum"].shape[0]:
            raise ValueError(f"{path}: latent channels {m.shape[1]} differ from the other files' {acc['d_sum'].shape[0]}")
        r, c = rows - acc["s_shift"], m - acc["d_shift"]
        acc["s_sum"] += r.sum(0)
        acc["s_sq"] += (r * r).sum(0)
        acc["d_sum"] += c.sum(0)
        acc["d_sq"] += (c * c).sum(0)
        acc["d_var"] += (s * s).sum(0)
        n_s += rows.shape[0]
        n_d += m.shape[0]
    if not n_s:
        raise ValueError("no latent files to compute statistics from")
    s_mean = acc["s_sum"] / n_s
    s_std = (acc["s_sq"] / n_s - s_mean**2).clamp_min(0).sqrt()
    d_mean = acc["d_sum"] / n_d
    d_std = (acc["d_sq"] / n_d - d_mean**2 + acc["d_var"] / n_d).clamp_min(0).sqrt()
    s_mean, d_mean = s_mean + acc["s_shift"], d_mean + acc["d_shift"]
    return {
        "static_mean": s_mean.float(),
        "static_std": s_std.clamp_min(STD_FLOOR).float(),
        "deformation_mean": d_mean.float(),
        "deformation_std": d_std.clamp_min(STD_FLOOR).float(),
    }


def save_latent_stats(stats: Mapping[str, torch.Tensor], directory: str | os.PathLike, official_files: bool = True) -> Path:
    """Write ``stats.safetensors`` (+ the four official-format ``<key>.pt`` tensors) into `directory`."""
    from safetensors.torch import save_file

    directory = Path(directory)
    tensors = {k: stats[k].detach().float().cpu().contiguous() for k in STATS_KEYS}
    path = directory / STATS_FILE
    _atomic(path, lambda tmp: save_file(tensors, str(tmp), metadata={"format": "gvf-latent-stats-v1"}))
    if official_files:
        for key, value in tensors.items():
            _atomic(directory / f"{key}.pt", lambda tmp, v=value: torch.save(v.clone(), tmp))
    return path


def load_latent_stats(source: str | os.PathLike | Mapping[str, str | os.PathLike | None]) -> dict[str, torch.Tensor]:
    """Statistics from a ``.safetensors`` file, a directory (its stats.safetensors, else the four
    ``<key>.pt`` files) or a mapping key -> ``.pt`` file (official format; a None entry gives the
    identity: mean 0, std 1, as upstream)."""
    if isinstance(source, Mapping):
        out = {}
        for key in STATS_KEYS:
            path = source.get(key)
            if path is None:
                out[key] = torch.tensor(0.0 if key.endswith("mean") else 1.0)
            else:
                value = torch.load(path, map_location="cpu", weights_only=True)
                if not isinstance(value, torch.Tensor):
                    raise ValueError(f"{path} should hold a tensor, found {type(value).__name__}")
                out[key] = value.float()
        return out
    path = Path(source)
    if path.is_dir():
        if (path / STATS_FILE).is_file():
            path = path / STATS_FILE
        else:
            return load_latent_stats({k: path / f"{k}.pt" for k in STATS_KEYS})
    if not path.is_file():
        raise FileNotFoundError(f"latent statistics not found: {path} (run scripts/latent_stats.py)")
    from safetensors.torch import load_file

    data = load_file(str(path))
    missing = [k for k in STATS_KEYS if k not in data]
    if missing:
        raise ValueError(f"{path} lacks {', '.join(missing)}")
    return {k: data[k].float() for k in STATS_KEYS}


def normalize(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """(x − mean) / std over the last axis."""
    return (x - mean.to(x)) / std.to(x)


# ------------------------------------------------------------------------------------ dataset


class LatentDataset(Dataset):
    """Diffusion training items: normalised latents and their conditions (see the module docstring).

    Args:
        latents_dir: directory of ``<name>.safetensors`` latent files.
        cond_dir: directory of ``<name>.npz`` conditioning features (key ``features`` (T, L, C)).
        names: objects (default: every latent file).
        stats: normalisation (`load_latent_stats`).
        num_frames: frames per item (``data.num_timesteps``); None = all stored frames.
        num_static: rows of the static condition (the FPS prefix of ``fps_gaussians_4096``); None = all.
        normalize_positions: token positions normalised with the static xyz statistics, else raw xyz.
        uncond_p: probability of zeroing the video features of an item (training only).
        train: random frames, sampled latents and dropout; otherwise all frames (or the first
            `num_frames`), the posterior mean and no dropout.
        seed: base seed of the per-item generators.
    """

    def __init__(
        self,
        latents_dir: str | os.PathLike,
        cond_dir: str | os.PathLike,
        names: Sequence[str] | str | os.PathLike | None = None,
        *,
        stats: Mapping[str, torch.Tensor],
        num_frames: int | None = 24,
        num_static: int | None = 4096,
        normalize_positions: bool = True,
        uncond_p: float = 0.1,
        train: bool = True,
        seed: int = 0,
    ):
        self.latents_dir = Path(latents_dir)
        self.cond_dir = Path(cond_dir)
        self.names = list_latent_names(self.latents_dir, names)
        if not self.names:
            raise ValueError("LatentDataset needs at least one object")
        if not 0.0 <= uncond_p <= 1.0:
            raise ValueError(f"uncond_p must lie in [0, 1], got {uncond_p}")
        self.stats = {k: torch.as_tensor(stats[k]).float() for k in STATS_KEYS}
        self.num_frames = None if num_frames is None else int(num_frames)
        self.num_static = None if num_static is None else int(num_static)
        self.normalize_positions = bool(normalize_positions)
        self.uncond_p = float(uncond_p)
        self.train = bool(train)
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.names)

    def _cond_features(self, name: str) -> np.ndarray:
        path = self.cond_dir / f"{name}.npz"
        if not path.is_file():
            raise FileNotFoundError(f"conditioning features not found: {path}")
        with np.load(path) as data:
            return data["features"]

    def __getitem__(self, index: int) -> dict:
        name = self.names[index]
        data = load_latent_file(self.latents_dir / f"{name}.safetensors")
        cond = self._cond_features(name)
        mean, std = data["latent_mean"], data["latent_std"]  # (T0, L, C)
        T0 = mean.shape[0]
        if cond.shape[0] < T0:
            raise ValueError(f"{name}: {cond.shape[0]} frames of conditioning features for {T0} latent frames")
        T = T0 if self.num_frames is None else self.num_frames
        if T > T0:
            raise ValueError(f"{name}: {T} frames per sample requested but only {T0} were encoded")
        rng = np.random.default_rng([self.seed, self.epoch, index])
        if self.train:
            frames = np.sort(rng.choice(T0, T, replace=False)) if T < T0 else np.arange(T0)
            gen = torch.Generator().manual_seed(int(rng.integers(2**62)))
            idx = torch.from_numpy(frames)
            eps = torch.randn(mean[idx].shape, generator=gen)
            latent = mean[idx] + std[idx] * eps  # a fresh posterior sample per access
            dropped = bool(rng.random() < self.uncond_p)
        else:
            frames = np.arange(T)
            idx = torch.from_numpy(frames)
            latent = mean[idx]
            dropped = False
        s = self.stats
        cond_images = torch.from_numpy(cond[frames].astype(np.float32))  # (T, Lc, Cc)
        if dropped:
            cond_images = torch.zeros_like(cond_images)  # only the video condition is dropped
        static_rows = data["fps_gaussians_4096"]
        if self.num_static is not None:
            if static_rows.shape[0] < self.num_static:
                raise ValueError(f"{name}: {static_rows.shape[0]} static rows stored, {self.num_static} requested "
                                 "(encode with a larger --num-static or lower data.num_static_gaussians)")
            static_rows = static_rows[: self.num_static]  # an FPS prefix is an FPS subset
        xyz = data["fps_gaussians_512"][:, :3].clone()  # (L, 3)
        if self.normalize_positions:
            m3 = s["static_mean"][..., :3] if s["static_mean"].ndim else s["static_mean"]
            s3 = s["static_std"][..., :3] if s["static_std"].ndim else s["static_std"]
            xyz = normalize(xyz, m3, s3)
        return {
            "name": name,
            "latent": normalize(latent, s["deformation_mean"], s["deformation_std"]),  # (T, L, C)
            "cond_images": cond_images,
            "static_latent": normalize(static_rows, s["static_mean"], s["static_std"]),  # (S, 14)
            "deformation_position_xyz": xyz,
            "frame_idx": idx,
            "cond_dropped": torch.tensor(dropped),
        }


def collate_latents(batch: list[dict]) -> dict:
    """Stack items (equal T, L, S within a batch); ``names`` is a list."""
    out = {"names": [b["name"] for b in batch]}
    for key in ("latent", "cond_images", "static_latent", "deformation_position_xyz", "frame_idx", "cond_dropped"):
        shapes = {tuple(b[key].shape) for b in batch}
        if len(shapes) > 1:
            raise ValueError(f"cannot batch {key} of different shapes {sorted(shapes)} (objects {out['names']})")
        out[key] = torch.stack([b[key] for b in batch])
    return out


def write_index(latents_dir: str | os.PathLike, entries: Mapping[str, Mapping], extra: Mapping | None = None) -> Path:
    """Write ``index.json``: {"format", "objects": {name: info}, **extra}."""
    path = Path(latents_dir) / INDEX_FILE
    text = json.dumps({"format": LATENT_FORMAT, **(extra or {}), "objects": {k: dict(v) for k, v in sorted(entries.items())}}, indent=1)
    _atomic(path, lambda tmp: Path(tmp).write_text(text))
    return path
