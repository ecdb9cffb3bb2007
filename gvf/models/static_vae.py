"""The static structured-latent Gaussian VAE (GVF's `SparseTransformerVAE` + `SparseVAE.to_representation`).

Encodes TRELLIS-style voxel features (DINOv2 features averaged into the occupied voxels of a 64³ grid)
into an 8-channel latent per voxel, and decodes latents into 112 channels per voxel = 8 Gaussians
(spec §3). Both halves are 12 sparse transformer blocks with shifted-window (swin) self-attention:
block i attends inside 8³ windows shifted by 4·(i % 2) voxels, windows never span two objects.

    encode: h = input_layer(feats) + APE(coords) -> encoder blocks -> LN (no affine) -> to_latent -> mean, logvar
    decode: h = from_latent(z) + APE(coords)     -> decoder blocks -> LN (no affine) -> out_layer -> (N, 112)

The decoder is also TRELLIS's `SLatGaussianDecoder` with 8 Gaussians per voxel: at inference GVF runs it
(with GVF's weights) on the TRELLIS SLat flow's latents; `StaticVAE(decoder_only=True)` is that model,
loadable from a GVF checkpoint or from a TRELLIS decoder checkpoint (`load_decoder_state_dict`).

The state_dict has exactly the upstream keys (`input_layer`, `encoder.{i}.attn.to_qkv` …, `to_latent`,
`from_latent`, `decoder.{i}…`, `out_layer`, buffer `MipGS_perturbation` (8, 3)), so
`convert_upstream("static_vae", sd)` is the identity apart from the DDP prefix.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict
from typing import Mapping, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from gvf.config import StaticVAEBackboneConfig, model_config
from gvf.gaussians import Gaussians
from gvf.nn.embeddings import AbsolutePositionEmbedder
from gvf.sparse.modules import SparseTransformerBlock
from gvf.sparse.tensor import SparseTensor

logger = logging.getLogger(__name__)

__all__ = [
    "StaticVAE",
    "Posterior",
    "hammersley_perturbation",
    "decoder_output_to_gaussians",
    "GAUSSIAN_CHANNELS",
    "MIPGS_VOXEL_SIZE",
    "MIPGS_LR",
]

# Channels per Gaussian in the decoder output: xyz offset 3, SH-DC 3, scale 3, rotation 4, opacity 1.
GAUSSIAN_CHANNELS = 14
# MipGS representation settings of the official config (framework.args.representation_config.MipGS).
MIPGS_VOXEL_SIZE = 1.5
MIPGS_LR = {"xyz": 1.0, "features_dc": 1.0, "scaling": 1.0, "rotation": 0.1, "opacity": 1.0}

_ENCODER_PREFIXES = ("input_layer.", "encoder.", "to_latent.")
_DECODER_PREFIXES = ("from_latent.", "decoder.", "out_layer.")


class Posterior(NamedTuple):
    """Encoder output per voxel: mean, logvar (N, latent) and z (the sample, or the mean)."""

    mean: torch.Tensor
    logvar: torch.Tensor
    z: torch.Tensor


def hammersley_perturbation(num_gaussians: int = 8, voxel_size: float = MIPGS_VOXEL_SIZE) -> torch.Tensor:
    """Initial in-voxel offsets (pre-tanh) of the Gaussians of a voxel (spec §3.4).

    Point g of the 3-D Hammersley set [g/G, radical_inverse_2(g), radical_inverse_3(g)] mapped to
    atanh((2h − 1) / voxel_size), in float32 like upstream. Returns (G, 3) float32.
    """

    def radical_inverse(base: int, n: int) -> float:
        value, inv = 0.0, 1.0 / base
        while n > 0:
            n, digit = divmod(n, base)
            value += digit * inv
            inv /= base
        return value

    points = [[g / num_gaussians, radical_inverse(2, g), radical_inverse(3, g)] for g in range(num_gaussians)]
    h = torch.tensor(points, dtype=torch.float32)
    return torch.atanh((h - 0.5) / 0.5 / voxel_size)


def decoder_output_to_gaussians(
    coords: torch.Tensor,
    feats: torch.Tensor,
    resolution: int,
    perturbation: torch.Tensor | None,
    voxel_size: float = MIPGS_VOXEL_SIZE,
    lr: Mapping[str, float] | None = None,
) -> list[Gaussians]:
    """Decoder channels -> one `Gaussians` per object (upstream `SparseVAE.to_representation`, MipGS).

    Channel ranges for G Gaussians per voxel (G = C / 14), each reshaped Gaussian-major:
    xyz offsets [0, 3G), SH-DC [3G, 6G), scales [6G, 9G), rotations [9G, 13G), opacities [13G, 14G).
    Gaussian index = voxel · G + g in the object's row order.

    * centres: voxel centre (coord + 0.5)/resolution plus a soft in-voxel offset
      tanh(raw·lr + perturbation[g]) / resolution · 0.5 · voxel_size (may reach ±0.75 voxel), minus 0.5
      to world coordinates;
    * the other fields are raw·lr (rotation lr 0.1), activated by `Gaussians` (scale bias 0.004 with the
      9e-4 floor, opacity bias 0.1, identity-quaternion bias).

    Args:
        coords: (N, 4) int [batch, x, y, z]; feats: (N, 14·G) decoder output.
        resolution: grid size (64 officially); perturbation: (G, 3) or None (no perturbation).
        voxel_size: soft in-voxel extent (1.5); lr: per-field factors (default `MIPGS_LR`).
    Returns:
        list over objects 0..B−1 (B = max batch index + 1) of Gaussians with G·n_b rows; float32 at
        least (half-precision decoder outputs are upcast).
    """
    if feats.ndim != 2 or feats.shape[1] % GAUSSIAN_CHANNELS or feats.shape[0] != coords.shape[0]:
        raise ValueError(
            f"feats must be (N, 14·G) with one row per coord, got feats {tuple(feats.shape)} and coords {tuple(coords.shape)}"
        )
    G = feats.shape[1] // GAUSSIAN_CHANNELS
    if perturbation is not None and tuple(perturbation.shape) != (G, 3):
        raise ValueError(f"perturbation must be ({G}, 3) for {feats.shape[1]} channels, got {tuple(perturbation.shape)}")
    lr = {**MIPGS_LR, **(lr or {})}
    dtype = torch.promote_types(feats.dtype, torch.float32)
    x = SparseTensor(feats.to(dtype), coords)
    out = []
    for rows in x.layout:
        n = rows.shape[0]
        f = x.feats[rows]
        centre = (x.coords[rows, 1:].float() + 0.5) / resolution  # (n, 3), float32 like upstream
        offset = f[:, : 3 * G].reshape(n, G, 3) * lr["xyz"]
        if perturbation is not None:
            offset = offset + perturbation.to(dtype)
        offset = torch.tanh(offset) / resolution * 0.5 * voxel_size
        xyz_box = (centre[:, None, :] + offset).reshape(n * G, 3)  # upstream `_xyz`, in [0, 1]
        out.append(
            Gaussians(
                xyz=(xyz_box - 0.5).to(dtype),
                features_dc=f[:, 3 * G : 6 * G].reshape(n * G, 3) * lr["features_dc"],
                scaling_raw=f[:, 6 * G : 9 * G].reshape(n * G, 3) * lr["scaling"],
                rotation_raw=f[:, 9 * G : 13 * G].reshape(n * G, 4) * lr["rotation"],
                opacity_raw=f[:, 13 * G : 14 * G].reshape(n * G, 1) * lr["opacity"],
            )
        )
    return out


class StaticVAE(nn.Module):
    """Sparse-voxel transformer VAE whose decoder outputs 8 Gaussians per voxel.

    Build with a `gvf.config.StaticVAEBackboneConfig` (defaults: the official config) or the upstream
    backbone's keyword arguments (its fields), plus `decoder_only`
    (build only `from_latent`, `decoder`, `out_layer` and the perturbation buffer: the model that runs
    inside the TRELLIS pipeline).
    """

    def __init__(self, config: StaticVAEBackboneConfig | None = None, *, decoder_only: bool = False, **kwargs):
        super().__init__()
        self.config = cfg = model_config(StaticVAEBackboneConfig, config, kwargs, "StaticVAE")
        if cfg.attn_mode not in ("swin", "full"):
            raise ValueError(f"attn_mode must be 'swin' or 'full', got {cfg.attn_mode!r}")
        if cfg.pe_mode != "ape":
            raise ValueError(f"only pe_mode='ape' is supported (the official setting), got {cfg.pe_mode!r}")
        model_channels, latent_channels, out_channels = cfg.model_channels, cfg.latent_channels, cfg.out_channels
        self.decoder_only = decoder_only
        self.resolution = cfg.resolution
        self.num_heads = cfg.num_heads or model_channels // cfg.num_head_channels
        self.num_gaussians = out_channels // GAUSSIAN_CHANNELS

        self.pos_embedder = AbsolutePositionEmbedder(model_channels)  # no state_dict entries
        if not decoder_only:
            self.input_layer = nn.Linear(cfg.in_channels, model_channels)
            self.encoder = self._make_stack(cfg)
            self.to_latent = nn.Linear(model_channels, 2 * latent_channels)
        self.from_latent = nn.Linear(latent_channels, model_channels)
        self.decoder = self._make_stack(cfg)
        self.out_layer = nn.Linear(model_channels, out_channels)
        # Registered by the upstream SparseVAE framework on the backbone; the official checkpoint has it.
        self.register_buffer("MipGS_perturbation", hammersley_perturbation(self.num_gaussians, MIPGS_VOXEL_SIZE))
        self.initialize_weights()

    def _make_stack(self, cfg: StaticVAEBackboneConfig) -> nn.ModuleList:
        blocks = []
        for i in range(cfg.num_blocks):
            windowed = cfg.attn_mode == "swin"
            blocks.append(
                SparseTransformerBlock(
                    cfg.model_channels,
                    self.num_heads,
                    mlp_ratio=cfg.mlp_ratio,
                    attn_mode="windowed" if windowed else "full",
                    window_size=cfg.window_size if windowed else None,
                    shift_window=cfg.window_size // 2 * (i % 2) if windowed else 0,  # swin schedule
                    use_old_attn_impl=cfg.use_old_attn_impl,
                    use_checkpoint=cfg.use_checkpoint,
                )
            )
        return nn.ModuleList(blocks)

    def initialize_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        # Upstream zero-initialises the latent head (posterior starts at N(0, 1)) and the output head
        # (all Gaussians start at their biases).
        for head in ([] if self.decoder_only else [self.to_latent]) + [self.out_layer]:
            nn.init.zeros_(head.weight)
            nn.init.zeros_(head.bias)

    # ------------------------------------------------------------------------------------------
    def _check(self, coords: torch.Tensor, feats: torch.Tensor, channels: int, name: str) -> None:
        if coords.ndim != 2 or coords.shape[1] != 4 or coords.is_floating_point():
            raise ValueError(f"coords must be an (N, 4) integer tensor [batch, x, y, z], got {coords.dtype} {tuple(coords.shape)}")
        if feats.ndim != 2 or feats.shape != (coords.shape[0], channels):
            raise ValueError(f"{name} must have shape ({coords.shape[0]}, {channels}), got {tuple(feats.shape)}")
        if coords.shape[0]:
            lo, hi = int(coords[:, 1:].min()), int(coords[:, 1:].max())
            if lo < 0 or hi >= self.resolution or int(coords[:, 0].min()) < 0:
                raise ValueError(f"voxel coordinates must lie in [0, {self.resolution}) and batch indices be ≥ 0, got [{lo}, {hi}]")

    def _stack(self, blocks: nn.ModuleList, h: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
        x = SparseTensor(h, coords)  # window plans are cached on x and shared by all blocks
        for block in blocks:
            x = block(x)
        return x.feats

    def encode(
        self, coords: torch.Tensor, feats: torch.Tensor, sample: bool = False, generator: torch.Generator | None = None
    ) -> Posterior:
        """Posterior of the per-voxel latents.

        Args:
            coords: (N, 4) int [batch, x, y, z] with x, y, z in [0, resolution).
            feats: (N, in_channels) voxel features.
            sample: draw z = mean + exp(logvar/2)·ε (ε from `generator` on feats' device); else z = mean.
        Returns:
            Posterior(mean, logvar, z), each (N, latent_channels).
        """
        if self.decoder_only:
            raise RuntimeError("this StaticVAE was built with decoder_only=True and has no encoder")
        self._check(coords, feats, self.config.in_channels, "feats")
        h = self.input_layer(feats) + self.pos_embedder(coords[:, 1:])  # (N, C); APE on integer coords
        h = self._stack(self.encoder, h, coords)
        if self.config.norm_output:
            h = F.layer_norm(h, h.shape[-1:])  # no affine, eps 1e-5
        mean, logvar = self.to_latent(h).chunk(2, dim=-1)
        z = self.sample_posterior(mean, logvar, generator) if sample else mean
        return Posterior(mean, logvar, z)

    @staticmethod
    def sample_posterior(mean: torch.Tensor, logvar: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """z = mean + exp(0.5·logvar)·ε, ε ~ N(0, I) drawn from `generator` (mean's device)."""
        eps = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        return mean + torch.exp(0.5 * logvar) * eps

    def decode(self, coords: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """Latents (N, latent_channels) on voxels `coords` (N, 4) -> decoder channels (N, out_channels)."""
        self._check(coords, z, self.config.latent_channels, "z")
        h = self.from_latent(z) + self.pos_embedder(coords[:, 1:])
        h = self._stack(self.decoder, h, coords)
        if self.config.norm_output:
            h = F.layer_norm(h, h.shape[-1:])
        return self.out_layer(h)

    def forward(
        self, coords: torch.Tensor, feats: torch.Tensor, sample_posterior: bool = True, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Encode, sample, decode (the training pass): returns (decoded (N, out), mean, logvar)."""
        post = self.encode(coords, feats, sample=sample_posterior, generator=generator)
        return self.decode(coords, post.z), post.mean, post.logvar

    def to_gaussians(
        self, coords: torch.Tensor, decoded: torch.Tensor, voxel_size: float = MIPGS_VOXEL_SIZE, lr: Mapping[str, float] | None = None
    ) -> list[Gaussians]:
        """Decoder output (N, out_channels) -> one `Gaussians` per object (see `decoder_output_to_gaussians`)."""
        return decoder_output_to_gaussians(coords, decoded, self.resolution, self.MipGS_perturbation, voxel_size, lr)

    # ------------------------------------------------------------------------------------------
    def set_gradient_checkpointing(self, mem_ratio: float = 0.0) -> int:
        """Recompute the first blocks (encoder then decoder) in the backward pass, like upstream's
        `mem_ratio`: 1.0 = none, else the first min(ceil((1 − r)·n) + 1, n) of the n blocks.
        Returns the number of checkpointed blocks."""
        blocks = ([] if self.decoder_only else list(self.encoder)) + list(self.decoder)
        n = len(blocks)
        k = 0 if mem_ratio >= 1.0 else min(math.ceil((1.0 - mem_ratio) * n) + 1, n)
        for i, block in enumerate(blocks):
            block.use_checkpoint = i < k
        return k

    def load_decoder_state_dict(self, state_dict: Mapping[str, torch.Tensor]) -> None:
        """Load the decoder half, strictly: every `from_latent.*`, `decoder.*`, `out_layer.*` key must
        be present with the right shape; encoder keys (`input_layer.*`, `encoder.*`, `to_latent.*`) are
        ignored; any other key is an error. `MipGS_perturbation` is loaded when present, otherwise the
        computed Hammersley values (identical to upstream's) are kept.

        Accepts our (= GVF upstream) names: pass TRELLIS `SLatGaussianDecoder` weights through
        `gvf.checkpoints.convert_upstream("trellis_slat_gs_decoder", sd)` first. The encoder of a full
        model keeps its current weights.
        """
        own = {k: v for k, v in self.state_dict().items() if k.startswith(_DECODER_PREFIXES) or k == "MipGS_perturbation"}
        given = {k: v for k, v in state_dict.items() if not k.startswith(_ENCODER_PREFIXES)}
        missing = sorted(k for k in own if k not in given and k != "MipGS_perturbation")
        unexpected = sorted(k for k in given if k not in own)
        mismatched = sorted(
            f"{k}: {tuple(given[k].shape)} given, {tuple(own[k].shape)} in model" for k in own.keys() & given.keys()
            if tuple(given[k].shape) != tuple(own[k].shape)
        )  # fmt: skip
        if missing or unexpected or mismatched:
            parts = [
                f"{label} ({len(keys)}): {', '.join(keys)}"
                for label, keys in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", mismatched))
                if keys
            ]
            raise RuntimeError("state_dict does not fit the StaticVAE decoder: " + " | ".join(parts))
        if "MipGS_perturbation" not in given:
            logger.info("no MipGS_perturbation in the decoder state_dict; using the computed Hammersley offsets")
        result = self.load_state_dict(given, strict=False)
        assert not result.unexpected_keys  # checked above

    def config_dict(self) -> dict:
        """Constructor arguments (without `decoder_only`)."""
        return asdict(self.config)


# Size presets -------------------------------------------------------------------------------------

STATIC_VAE_OFFICIAL = asdict(StaticVAEBackboneConfig())  # configs/vae.yml static_vae.backbones.vae.args
STATIC_VAE_TINY = dict(STATIC_VAE_OFFICIAL, resolution=16, in_channels=32, model_channels=48, num_blocks=2, num_heads=4)
