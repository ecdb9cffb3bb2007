"""A weight-free feature extractor for offline experiments, tests and the demo.

Sixteen hand-made channels per pixel of a `feature_resolution`² map (default 64², area-downsampled from
the input), computed on the composited image (object on black, like upstream's DINOv2 inputs) plus
its alpha:

====  ==========================================================================
0-2   RGB
3     alpha
4-6   local mean RGB, 3×3 window
7-9   local mean RGB, 9×9 window
10    luminance (Rec. 709 weights)
11    luminance gradient magnitude (Sobel)
12    alpha gradient magnitude (Sobel; silhouette edges)
13-15 local RGB standard deviation, 3×3 window
====  ==========================================================================

Conditioning tokens mirror DINOv2's layout (patch tokens, then one global token): the map average-
pooled to a `token_grid`² grid (row-major), then the alpha-weighted mean of the map. Windows at the
border replicate the edge pixels.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import FeatureExtractor, composite, register_extractor

__all__ = ["SimpleExtractor", "SIMPLE_CHANNELS"]

SIMPLE_CHANNELS = 16
_LUMA = (0.2126, 0.7152, 0.0722)


@register_extractor("simple")
class SimpleExtractor(FeatureExtractor):
    """Weight-free 16-channel features.

    Args:
        feature_resolution: side of the feature map (h = w).
        token_grid: side of the pooled patch-token grid (L = token_grid² + 1 tokens).
        background: composite colour of RGBA inputs (0 = black, as upstream's DINOv2 inputs).
        device: unused placeholder so that all extractors take the same keyword (no weights to move).
    """

    name = "simple"
    feature_channels = SIMPLE_CHANNELS

    def __init__(self, feature_resolution: int = 64, token_grid: int = 8, background: float = 0.0, device=None):
        super().__init__()
        if feature_resolution < 4 or token_grid < 1 or feature_resolution % token_grid:
            raise ValueError("SimpleExtractor needs feature_resolution >= 4 divisible by token_grid, got "
                             f"{feature_resolution} and {token_grid}")
        self.feature_resolution = int(feature_resolution)
        self.token_grid = int(token_grid)
        self.background = float(background)
        sobel = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]]) / 8.0
        self.register_buffer("sobel", torch.stack([sobel, sobel.t()])[:, None], persistent=False)  # (2,1,3,3)
        self.register_buffer("luma", torch.tensor(_LUMA), persistent=False)

    @torch.no_grad()
    def patch_feature_map(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3|4, H, W) in [0, 1] -> (B, 16, r, r) features (r = feature_resolution)."""
        images = images.to(self.sobel.device, torch.float32)
        rgb = composite(images, self.background)
        alpha = images[:, 3:4] if images.shape[1] == 4 else torch.ones_like(rgb[:, :1])
        x = torch.cat([rgb, alpha], 1)
        r = self.feature_resolution
        if x.shape[-2:] != (r, r):
            x = F.interpolate(x, size=(r, r), mode="area")
        rgb, alpha = x[:, :3], x[:, 3:4]
        B = x.shape[0]
        win3 = F.unfold(F.pad(rgb, (1, 1, 1, 1), mode="replicate"), 3).view(B, 3, 9, r, r)  # 3x3 windows
        mean3 = win3.mean(2)
        std3 = win3.std(2, unbiased=False)  # direct, not E[x²] − E[x]² (cancellation on flat areas)
        mean9 = F.avg_pool2d(F.pad(rgb, (4, 4, 4, 4), mode="replicate"), 9, stride=1)
        luma = (rgb * self.luma[None, :, None, None]).sum(1, keepdim=True)
        grad_l = F.conv2d(F.pad(luma, (1, 1, 1, 1), mode="replicate"), self.sobel).norm(dim=1, keepdim=True)
        grad_a = F.conv2d(F.pad(alpha, (1, 1, 1, 1), mode="replicate"), self.sobel).norm(dim=1, keepdim=True)
        return torch.cat([rgb, alpha, mean3, mean9, luma, grad_l, grad_a, std3], 1)

    @torch.no_grad()
    def conditioning_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3|4, H, W) -> (B, token_grid² + 1, 16): pooled patch tokens (row-major), then a global token."""
        fmap = self.patch_feature_map(images)  # (B, C, r, r)
        B, C = fmap.shape[:2]
        patches = F.adaptive_avg_pool2d(fmap, self.token_grid).reshape(B, C, -1).transpose(1, 2)  # (B, g², C)
        alpha = fmap[:, 3:4]
        weight = alpha / alpha.sum((2, 3), keepdim=True).clamp_min(1e-6)
        global_token = (fmap * weight).sum((2, 3))[:, None]  # (B, 1, C)
        return torch.cat([patches, global_token], 1)
