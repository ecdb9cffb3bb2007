"""DINOv2 ViT-L/14 with 4 registers: the official image features of TRELLIS and GVF (spec §1.5, §7.2, §7.3).

One wrapper serves every use:

* `patch_feature_map`: the 37×37 grid of PRE-NORM patch tokens, (B, 1024, 37, 37), sampled at projected
  voxel centres for the static VAE input (TRELLIS ``extract_feature.py``);
* `conditioning_tokens`: (B, 1370, 1024) = 1369 pre-norm patch tokens then the pre-norm CLS token, the
  DiT's per-frame condition (upstream ``encode_img_cond_dinov2_feature.py``; no layer norm);
* `trellis_condition`: (B, 1374, 1024) = all pre-norm tokens (CLS, 4 registers, patches) through a
  layer norm without affine parameters, TRELLIS's image condition (``get_cond``).

"Pre-norm" is the last block's output before the model's final LayerNorm (torch.hub DINOv2's
``x_prenorm``); it is captured with a hook on that LayerNorm, so any `transformers` version works.
Preprocessing follows upstream: RGBA resized to 518² with PIL LANCZOS (on the uint8 values a PNG
holds), RGB premultiplied by alpha (black background), ImageNet mean/std.

The weights are the transformers port ``facebook/dinov2-with-registers-large`` at a pinned revision;
`from_pretrained` downloads them through huggingface_hub (or reads the local cache / a folder).
"""
from __future__ import annotations

import logging

import numpy as np
import torch
import torch.nn.functional as F

from .base import FeatureExtractor, register_extractor

logger = logging.getLogger(__name__)

__all__ = ["DinoV2Extractor", "DINOV2_REPO_ID", "DINOV2_REVISION", "DINOV2_FEATURE_NAME"]

DINOV2_REPO_ID = "facebook/dinov2-with-registers-large"
# pinned Hub commit of DINOV2_REPO_ID (the snapshot in common use; change deliberately)
DINOV2_REVISION = "e4c89a4e05589de9b3e188688a303d0f3c04d0f3"
DINOV2_FEATURE_NAME = "dinov2_vitl14_reg"  # upstream's file stem / torch.hub model name
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class DinoV2Extractor(FeatureExtractor):
    """Pre-norm DINOv2-with-registers tokens with upstream's preprocessing.

    Args:
        model: a `transformers.Dinov2WithRegistersModel` (any size; ViT-L/14-reg for upstream parity).
        background: composite colour of RGBA inputs (0 = black, upstream's choice for rendered data).
        batch_size: images per forward pass.
    """

    name = DINOV2_FEATURE_NAME

    def __init__(self, model, background: float = 0.0, batch_size: int = 8):
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        cfg = model.config
        self.image_size = int(cfg.image_size)
        self.patch_size = int(cfg.patch_size)
        self.grid = self.image_size // self.patch_size
        self.num_register_tokens = int(cfg.num_register_tokens)
        self.feature_channels = int(cfg.hidden_size)
        self.background = float(background)
        self.batch_size = int(batch_size)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN)[None, :, None, None], persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD)[None, :, None, None], persistent=False)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_pretrained(cls, model_path: str = DINOV2_REPO_ID, *, revision: str | None = DINOV2_REVISION,
                        local_files_only: bool = False, cache_dir: str | None = None, device=None,
                        dtype: torch.dtype | None = None, **kwargs) -> "DinoV2Extractor":
        """Load weights from the Hub (pinned `revision`) or a local folder saved with `save_pretrained`.

        Args:
            model_path: Hub repo id or local directory.
            revision: Hub commit (ignored for local folders).
            local_files_only: never touch the network (use the cache / folder only).
            cache_dir: huggingface cache directory.
            device, dtype: where and in which precision to run the model (default CPU, float32).
        """
        from transformers import Dinov2WithRegistersModel

        try:
            model = Dinov2WithRegistersModel.from_pretrained(
                model_path, revision=revision, local_files_only=local_files_only, cache_dir=cache_dir)
        except OSError as err:
            raise OSError(f"could not load DINOv2 weights from {model_path!r} (revision {revision}, "
                          f"local_files_only={local_files_only}): {err}") from err
        logger.info("DINOv2 loaded from %s (revision %s)", model_path, revision)
        return cls(model, **kwargs).to(device=device or "cpu", dtype=dtype)

    @classmethod
    def from_config(cls, config, device=None, **kwargs) -> "DinoV2Extractor":
        """Randomly initialised model from a `Dinov2WithRegistersConfig` (tests, offline experiments)."""
        from transformers import Dinov2WithRegistersModel

        return cls(Dinov2WithRegistersModel(config), **kwargs).to(device or "cpu")

    def to(self, *args, dtype: torch.dtype | None = None, **kwargs):
        # only the backbone changes precision; normalisation buffers stay float32
        super().to(*args, **kwargs)
        if dtype is not None:
            self.model.to(dtype=dtype)
        return self

    # ------------------------------------------------------------------ tokens
    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3|4, H, W) in [0, 1] -> normalised (B, 3, S, S) network input (S = config.image_size)."""
        if images.ndim != 4 or images.shape[1] not in (3, 4):
            raise ValueError(f"images must be (B, 3 or 4, H, W), got {tuple(images.shape)}")
        S = self.image_size
        if images.shape[-2:] != (S, S):
            images = _resize_lanczos(images, S)
        images = images.to(self.mean.device, torch.float32)
        rgb = images[:, :3]
        if images.shape[1] == 4:
            alpha = images[:, 3:4]
            rgb = rgb * alpha + self.background * (1.0 - alpha)
        return (rgb - self.mean) / self.std

    @torch.no_grad()
    def prenorm_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """All pre-norm tokens (B, 1 + R + P, C): CLS, R registers, P = grid² patches (row-major)."""
        x = self.preprocess(images)
        captured = []
        hook = self.model.layernorm.register_forward_pre_hook(lambda mod, args: captured.append(args[0]))
        try:
            dtype = next(self.model.parameters()).dtype
            for s in range(0, x.shape[0], self.batch_size):
                self.model(pixel_values=x[s:s + self.batch_size].to(dtype))
        finally:
            hook.remove()
        return torch.cat(captured, 0).float()

    def patch_feature_map(self, images: torch.Tensor) -> torch.Tensor:
        """Pre-norm patch tokens as a map (B, C, grid, grid) (37×37 for 518² ViT-*/14)."""
        tokens = self.prenorm_tokens(images)[:, 1 + self.num_register_tokens:]  # (B, P, C)
        B, P, C = tokens.shape
        return tokens.transpose(1, 2).reshape(B, C, self.grid, self.grid)

    def conditioning_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """Upstream DiT condition (B, P + 1, C): pre-norm patch tokens, then the pre-norm CLS token."""
        tokens = self.prenorm_tokens(images)
        return torch.cat([tokens[:, 1 + self.num_register_tokens:], tokens[:, :1]], 1)

    def trellis_condition(self, images: torch.Tensor) -> torch.Tensor:
        """TRELLIS image condition (B, 1 + R + P, C): all pre-norm tokens, non-affine layer norm."""
        tokens = self.prenorm_tokens(images)
        return F.layer_norm(tokens, tokens.shape[-1:])


def _resize_lanczos(images: torch.Tensor, size: int) -> torch.Tensor:
    """Resize (B, 3|4, H, W) float images in [0, 1] to size² with PIL LANCZOS on their uint8 values."""
    from PIL import Image

    mode = "RGBA" if images.shape[1] == 4 else "RGB"
    arr = (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    out = [np.asarray(Image.fromarray(a, mode).resize((size, size), Image.Resampling.LANCZOS)) for a in arr]
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).float().div(255.0).to(images.device)


@register_extractor("dinov2")
def _dinov2_factory(model_path: str = DINOV2_REPO_ID, revision: str | None = DINOV2_REVISION,
                    local_files_only: bool = False, device=None, dtype=None, **kwargs) -> DinoV2Extractor:
    return DinoV2Extractor.from_pretrained(model_path, revision=revision, local_files_only=local_files_only,
                                           device=device, dtype=dtype, **kwargs)
