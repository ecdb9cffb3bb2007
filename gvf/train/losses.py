"""Image reconstruction losses (L1, SSIM, LPIPS) and the static-VAE objective (spec §3.5).

    loss = L1(render, gt) + 0.2·(1 − SSIM) + 0.2·LPIPS          (reconstruction, images in [0, 1])
         + 1e-6 · KL(posterior ‖ N(0, I))
         + 1e4 · mean_gaussians(Π scales) + 1e-3 · mean((opacity − 1)²)

The weights come from `StaticVAELossConfig` (or a dict in either our or the upstream spelling). The
motion-VAE render loss uses the same `l1_loss`, `ssim` and `LPIPS`.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Mapping, Sequence

import torch
import torch.nn.functional as F

from gvf.gaussians import Gaussians
from gvf.train.lpips import LPIPS

__all__ = [
    "l1_loss",
    "l2_loss",
    "ssim",
    "gaussian_window",
    "kl_divergence",
    "volume_regularization",
    "opacity_regularization",
    "StaticVAELossConfig",
    "static_vae_losses",
    "LPIPS",
]


def l1_loss(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """mean |x − y| over all elements."""
    return (x - y).abs().mean()


def l2_loss(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """mean (x − y)² over all elements."""
    return ((x - y) ** 2).mean()


def gaussian_window(window_size: int = 11, sigma: float = 1.5, dtype=torch.float32, device=None) -> torch.Tensor:
    """(window_size, window_size) normalised 2-D Gaussian (outer product of the 1-D kernel)."""
    x = torch.arange(window_size, dtype=torch.float64) - window_size // 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()
    return torch.outer(g, g).to(dtype=dtype, device=device)


def ssim(x: torch.Tensor, y: torch.Tensor, window_size: int = 11, sigma: float = 1.5, reduction: str = "mean") -> torch.Tensor:
    """Structural similarity with a Gaussian window (3DGS / upstream `loss_util.ssim`).

    Local statistics come from a per-channel convolution with zero padding of window_size // 2;
    C1 = 0.01², C2 = 0.03² (for images in [0, 1]).

    Args:
        x, y: (B, C, H, W) (or (C, H, W)) images.
        reduction: "mean" (one scalar over the whole map) or "none" (per image, (B,)).
    """
    if x.shape != y.shape or x.ndim not in (3, 4):
        raise ValueError(f"ssim expects two (B, C, H, W) or (C, H, W) images of equal shape, got {tuple(x.shape)} and {tuple(y.shape)}")
    if reduction not in ("mean", "none"):
        raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")
    if x.ndim == 3:
        x, y = x[None], y[None]
    C = x.shape[1]
    w = gaussian_window(window_size, sigma, x.dtype, x.device).expand(C, 1, window_size, window_size)
    blur = lambda t: F.conv2d(t, w, padding=window_size // 2, groups=C)  # noqa: E731
    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x**2
    var_y = blur(y * y) - mu_y**2
    cov = blur(x * y) - mu_x * mu_y
    c1, c2 = 0.01**2, 0.03**2
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return ssim_map.mean() if reduction == "mean" else ssim_map.flatten(1).mean(1)


def kl_divergence(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, exp(logvar)) ‖ N(0, I)) averaged over all elements: 0.5·mean(μ² + σ² − log σ² − 1)."""
    return 0.5 * torch.mean(mean**2 + logvar.exp() - logvar - 1)


def volume_regularization(gaussians: Sequence[Gaussians]) -> torch.Tensor:
    """Mean over all Gaussians of all objects of the product of the three activated scales."""
    return torch.cat([g.scaling for g in gaussians]).prod(dim=1).mean()


def opacity_regularization(gaussians: Sequence[Gaussians]) -> torch.Tensor:
    """Mean over all Gaussians of (opacity − 1)² (pushes Gaussians to be opaque)."""
    return (torch.cat([g.opacity for g in gaussians]) - 1).pow(2).mean()


@dataclass
class StaticVAELossConfig:
    """Loss weights; defaults = configs/vae.yml `static_vae.framework.args` (MipGS regularisers)."""

    loss_type: str = "l1"  # "l1" or "l2" reconstruction term (weight 1)
    lambda_ssim: float = 0.2
    lambda_lpips: float = 0.2
    lambda_kl: float = 1e-6
    lambda_vol: float = 1e4
    lambda_opacity: float = 1e-3

    def __post_init__(self):
        if self.loss_type not in ("l1", "l2"):
            raise ValueError(f"loss_type must be 'l1' or 'l2', got {self.loss_type!r}")

    @classmethod
    def from_dict(cls, d: Mapping) -> "StaticVAELossConfig":
        """From our keys, or from upstream framework args (`lamda_kl`, `regularizations.MipGS.lambda_vol` …);
        keys that do not concern the loss (resolution, mem_ratio, representation_config) are ignored
        in the upstream form. Unknown keys are an error."""
        d = dict(d)
        upstream = {"lamda_kl", "regularizations", "resolution", "mem_ratio", "representation_config"}
        if upstream & d.keys():
            if "lamda_kl" in d:
                d["lambda_kl"] = d.pop("lamda_kl")
            reg = d.pop("regularizations", {}) or {}
            reg = reg.get("MipGS", reg)
            d.update({k: reg[k] for k in ("lambda_vol", "lambda_opacity") if k in reg})
            for k in ("resolution", "mem_ratio", "representation_config"):
                d.pop(k, None)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown static-VAE loss keys: {', '.join(unknown)} (expected {', '.join(sorted(known))})")
        return cls(**d)


def static_vae_losses(
    rendered: torch.Tensor,
    target: torch.Tensor,
    mean: torch.Tensor,
    logvar: torch.Tensor,
    gaussians: Sequence[Gaussians],
    lpips: LPIPS | None = None,
    config: StaticVAELossConfig | Mapping | None = None,
) -> dict[str, torch.Tensor]:
    """The static-VAE training objective.

    Args:
        rendered, target: (B, 3, H, W) rendered and ground-truth images in [0, 1] (one view per object).
        mean, logvar: (N, latent) posterior of all voxels.
        gaussians: the decoded Gaussians of every object (regularisers average over all of them).
        lpips: an `LPIPS` module (needed when lambda_lpips > 0).
        config: weights (`StaticVAELossConfig`, a dict for `StaticVAELossConfig.from_dict`, or None = official).
    Returns:
        dict with the weighted total "loss" and the unweighted terms "l1" (or "l2"), "ssim" (= 1 − SSIM),
        "lpips", "rec" (weighted reconstruction), "kl", "reg_vol", "reg_opacity".
    """
    if config is None:
        cfg = StaticVAELossConfig()
    elif isinstance(config, StaticVAELossConfig):
        cfg = config
    else:
        cfg = StaticVAELossConfig.from_dict(config)
    if rendered.shape != target.shape:
        raise ValueError(f"rendered {tuple(rendered.shape)} and target {tuple(target.shape)} images differ in shape")
    terms: dict[str, torch.Tensor] = {}
    terms[cfg.loss_type] = (l1_loss if cfg.loss_type == "l1" else l2_loss)(rendered, target)
    rec = terms[cfg.loss_type]
    if cfg.lambda_ssim > 0:
        terms["ssim"] = 1 - ssim(rendered, target)
        rec = rec + cfg.lambda_ssim * terms["ssim"]
    if cfg.lambda_lpips > 0:
        if lpips is None:
            raise ValueError("lambda_lpips > 0 needs an LPIPS module (gvf.train.lpips.LPIPS)")
        terms["lpips"] = lpips(rendered, target).mean()
        rec = rec + cfg.lambda_lpips * terms["lpips"]
    terms["rec"] = rec
    terms["kl"] = kl_divergence(mean, logvar)
    terms["reg_vol"] = volume_regularization(gaussians)
    terms["reg_opacity"] = opacity_regularization(gaussians)
    terms["loss"] = rec + cfg.lambda_kl * terms["kl"] + cfg.lambda_vol * terms["reg_vol"] + cfg.lambda_opacity * terms["reg_opacity"]
    return terms
