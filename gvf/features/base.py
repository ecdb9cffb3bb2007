"""The feature-extractor protocol and registry.

An extractor turns images into (a) a dense feature map per image, sampled at projected voxel centres
to build the static VAE's sparse input (spec §7.2), and (b) a token sequence per image, the DiT's
per-frame conditioning (spec §7.3). Both upstream uses take premultiplied RGB (object on **black**)
for rendered RGBA data; `composite` does that.

Images are float tensors in [0, 1], (B, 3, H, W) opaque RGB or (B, 4, H, W) RGBA with straight alpha.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

__all__ = ["FeatureExtractor", "composite", "register_extractor", "get_extractor", "available_extractors"]


def composite(images: torch.Tensor, background: float = 0.0) -> torch.Tensor:
    """RGB (B, 3, H, W) of straight-alpha RGBA images over a constant background (0 = premultiplied).

    (B, 3, H, W) inputs are returned unchanged (already opaque).
    """
    if images.ndim != 4 or images.shape[1] not in (3, 4):
        raise ValueError(f"images must be (B, 3 or 4, H, W), got {tuple(images.shape)}")
    if images.shape[1] == 3:
        return images
    rgb, alpha = images[:, :3], images[:, 3:4]
    return rgb * alpha + background * (1.0 - alpha)


class FeatureExtractor(nn.Module):
    """Base class: image features for voxels and per-frame conditioning tokens.

    Subclasses set `name` (the ``features_all_timesteps/0/<name>.npz`` file stem) and
    `feature_channels` (C), and implement `patch_feature_map` and `conditioning_tokens`.
    """

    name: str = "base"
    feature_channels: int = 0

    @property
    def device(self) -> torch.device:
        for t in self.buffers():
            return t.device
        for t in self.parameters():
            return t.device
        return torch.device("cpu")

    def patch_feature_map(self, images: torch.Tensor) -> torch.Tensor:
        """Dense features (B, C, h, w) covering the whole image (sampled with grid_sample at uv·2−1)."""
        raise NotImplementedError

    def conditioning_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """Conditioning tokens (B, L, C) of each image."""
        raise NotImplementedError


_REGISTRY: dict[str, Callable[..., FeatureExtractor]] = {}


def register_extractor(name: str):
    """Decorator registering a factory (class or function) under `name` for `get_extractor`."""

    def wrap(factory):
        _REGISTRY[name] = factory
        return factory

    return wrap


def available_extractors() -> list[str]:
    """Names accepted by `get_extractor`."""
    _load_builtin()
    return sorted(_REGISTRY)


def get_extractor(name: str, **kwargs) -> FeatureExtractor:
    """Build a registered extractor: ``simple`` (no weights) or ``dinov2`` (DINOv2 ViT-L/14-reg).

    Keyword arguments go to the factory (e.g. ``dinov2``: `revision`, `local_files_only`,
    `model_path`, `device`, `dtype`).
    """
    _load_builtin()
    if name not in _REGISTRY:
        raise ValueError(f"unknown feature extractor {name!r}; available: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name](**kwargs)


def _load_builtin() -> None:
    # the built-in modules register themselves on import; dinov2 imports transformers lazily
    from . import dinov2, simple  # noqa: F401
