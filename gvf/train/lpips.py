"""LPIPS (learned perceptual image patch similarity, v0.1, VGG16 backbone) without torchvision.

Per image: both images are shifted/scaled by the LPIPS input statistics, passed through the VGG16
convolution stack, and at relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 the features are unit-normalised
over channels; the squared difference is weighted per channel by the LPIPS linear head (1×1 conv,
no bias), averaged over space and summed over the five layers. This is what the `lpips` pip package
(`LPIPS(net='vgg')`) computes, which the upstream static-VAE loss uses.

Weights:
* VGG16: torchvision's ImageNet file `vgg16-397923af.pth` (its `features.*` entries; our layer indices are
  torchvision's, so they load unchanged), via `torch.hub.load_state_dict_from_url` (hash-checked cache);
* linear heads: LPIPS v0.1 `vgg.pth` (keys `lin{i}.model.1.weight`), read from an installed `lpips` pip
  package's data files if present (the package is never imported), else downloaded from the LPIPS
  repository.
Local files can be given instead of URLs (offline use).
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from typing import Mapping

import torch
from torch import nn

logger = logging.getLogger(__name__)

__all__ = ["LPIPS", "VGG16Features", "VGG16_URL", "LPIPS_VGG_URL"]

VGG16_URL = "https://download.pytorch.org/models/vgg16-397923af.pth"
LPIPS_VGG_URL = "https://raw.githubusercontent.com/richzhang/PerceptualSimilarity/master/lpips/weights/v0.1/vgg.pth"

# torchvision's vgg16().features: numbers = conv output channels, "M" = 2×2 max-pool.
_VGG16_PLAN = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]
# Indices (into `features`) of the ReLUs whose outputs LPIPS compares: relu1_2 … relu5_3.
_TAPS = (3, 8, 15, 22, 29)
_TAP_CHANNELS = (64, 128, 256, 512, 512)
# LPIPS input normalisation for images in [-1, 1].
_SHIFT = (-0.030, -0.088, -0.188)
_SCALE = (0.458, 0.448, 0.450)


class VGG16Features(nn.Module):
    """The convolutional part of VGG16 with torchvision's indices (`features.{i}.weight`), up to relu5_3."""

    def __init__(self):
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 3
        for item in _VGG16_PLAN:
            if item == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                layers += [nn.Conv2d(c_in, item, kernel_size=3, padding=1), nn.ReLU()]
                c_in = item
        self.features = nn.Sequential(*layers[: _TAPS[-1] + 1])  # the final pool is never used

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """(B, 3, H, W) -> the five tapped activations."""
        taps = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in _TAPS:
                taps.append(x)
        return taps


def _lpips_package_weights() -> Path | None:
    """Path of `weights/v0.1/vgg.pth` inside an installed `lpips` package (found without importing it)."""
    spec = importlib.util.find_spec("lpips")
    if spec is None or not spec.submodule_search_locations:
        return None
    for root in spec.submodule_search_locations:
        path = Path(root) / "weights" / "v0.1" / "vgg.pth"
        if path.is_file():
            return path
    return None


def _load(source: str | Path, file_name: str | None, progress: bool, check_hash: bool) -> Mapping[str, torch.Tensor]:
    source = str(source)
    if source.startswith(("http://", "https://")):
        return torch.hub.load_state_dict_from_url(
            source, map_location="cpu", progress=progress, check_hash=check_hash, file_name=file_name, weights_only=True
        )
    path = Path(source)
    if not path.is_file():
        raise FileNotFoundError(f"LPIPS weight file not found: {path}")
    return torch.load(path, map_location="cpu", weights_only=True)


class LPIPS(nn.Module):
    """Perceptual distance between image batches (VGG16 LPIPS v0.1); frozen, eval-only.

    Args:
        pretrained: load the VGG16 ImageNet and LPIPS head weights (download or cache). With False the
            backbone is randomly initialised and the heads are uniform — shapes and the zero distance of
            identical images are right, but the VALUES ARE NOT MEANINGFUL (offline tests only).
        vgg_weights: URL or local file of torchvision's VGG16 state_dict (default: torchvision's URL).
        lin_weights: URL or local file of LPIPS `vgg.pth` (default: the `lpips` package's copy if
            installed, else `LPIPS_VGG_URL`).
        progress: show download progress.
    """

    def __init__(
        self,
        pretrained: bool = True,
        vgg_weights: str | Path | None = None,
        lin_weights: str | Path | None = None,
        progress: bool = False,
    ):
        super().__init__()
        self.register_buffer("shift", torch.tensor(_SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(_SCALE).view(1, 3, 1, 1), persistent=False)
        self.net = VGG16Features()
        self.lin = nn.ModuleList(nn.Conv2d(c, 1, kernel_size=1, bias=False) for c in _TAP_CHANNELS)
        if pretrained:
            self.load_pretrained(vgg_weights, lin_weights, progress)
        else:
            for head, c in zip(self.lin, _TAP_CHANNELS):
                nn.init.constant_(head.weight, 1.0 / c)  # non-negative like trained heads
        self.requires_grad_(False)
        self.eval()

    def load_pretrained(self, vgg_weights=None, lin_weights=None, progress: bool = False) -> None:
        """Load VGG16 features and the LPIPS heads (see class docstring for the sources)."""
        vgg_sd = _load(vgg_weights or VGG16_URL, None, progress, check_hash=True)
        features = {k: v for k, v in vgg_sd.items() if k.startswith("features.")}
        own = self.net.state_dict()
        missing = sorted(set(own) - set(features))
        if missing:
            raise RuntimeError(f"VGG16 weights lack {', '.join(missing)}; expected torchvision's vgg16 state_dict")
        self.net.load_state_dict({k: features[k] for k in own}, strict=True)

        source = lin_weights or _lpips_package_weights() or LPIPS_VGG_URL
        lin_sd = _load(source, "lpips_v0.1_vgg.pth", progress, check_hash=False)
        try:
            heads = {f"{i}.weight": lin_sd[f"lin{i}.model.1.weight"] for i in range(len(_TAPS))}
        except KeyError as err:
            raise RuntimeError(f"{source} is not an LPIPS v0.1 vgg.pth (missing {err.args[0]})") from None
        self.lin.load_state_dict(heads, strict=True)
        logger.info("LPIPS: VGG16 from %s, heads from %s", vgg_weights or VGG16_URL, source)

    def train(self, mode: bool = True) -> "LPIPS":
        return super().train(False)  # always eval: no dropout, frozen

    def forward(self, x: torch.Tensor, y: torch.Tensor, value_range: tuple[float, float] = (0.0, 1.0)) -> torch.Tensor:
        """Per-image LPIPS distance.

        Args:
            x, y: (B, 3, H, W) images with values in `value_range` (mapped to [-1, 1] first).
        Returns:
            (B,) distances (0 for identical images).
        """
        if x.shape != y.shape or x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"LPIPS expects two (B, 3, H, W) images of equal shape, got {tuple(x.shape)} and {tuple(y.shape)}")
        lo, hi = value_range
        inp = ((torch.cat([x, y]) - lo) / (hi - lo) * 2 - 1 - self.shift) / self.scale
        total = 0
        for f, head in zip(self.net(inp), self.lin):
            f = f / (torch.sqrt((f * f).sum(dim=1, keepdim=True)) + 1e-10)  # unit length over channels
            fx, fy = f.chunk(2)
            total = total + head((fx - fy) ** 2).mean(dim=(1, 2, 3))
        return total
