"""TRELLIS structured-latent flow model (stage 2 of image-to-3D): a sparse U-shaped DiT on voxels.

Predicts the rectified-flow velocity of the 8-channel latent on the occupied voxels of a 64³ grid.
Sparse conv ResBlocks downsample the voxels 2x (`patch_size` 2 -> the transformer runs on the 32³
coarse voxels), the transformer blocks attend within each object and cross-attend to that object's
DINOv2 tokens, and ResBlocks upsample back with U-Net skips. Names, shapes and computation are
TRELLIS's `SLatFlowModel` (checkpoint `slat_flow_img_dit_L_64l8p2_fp16`); the sparse conv weights keep
spconv's (O, 3, 3, 3, I) layout under `….conv.weight`. `use_fp16` keeps the torso (`input_blocks`,
`blocks`, `out_blocks`) in float16 as upstream (see `ss_flow.py`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn

from gvf.models.trellis.ss_flow import ModulatedCrossBlock, TrellisModel, init_flow_transformer
from gvf.nn import AbsolutePositionEmbedder, LayerNorm32, TimestepEmbedder
from gvf.sparse.conv import SparseConv3d, SparseDownsample, SparseUpsample
from gvf.sparse.tensor import SparseLinear, SparseTensor


@dataclass
class SLatFlowConfig:
    """Constructor arguments of `SLatFlow` (= the `args` of TRELLIS's checkpoint JSON)."""

    resolution: int = 64
    in_channels: int = 8
    model_channels: int = 1024
    cond_channels: int = 1024
    out_channels: int = 8
    num_blocks: int = 24
    num_heads: int | None = 16
    num_head_channels: int = 64
    mlp_ratio: float = 4
    patch_size: int = 2
    num_io_res_blocks: int = 2
    io_block_channels: list[int] | None = field(default_factory=lambda: [128])
    pe_mode: str = "ape"
    use_fp16: bool = True
    use_checkpoint: bool = False
    use_skip_connection: bool = True
    share_mod: bool = False
    qk_rms_norm: bool = True
    qk_rms_norm_cross: bool = False


class SparseResBlock3d(nn.Module):
    """Time-modulated sparse conv ResBlock, optionally resampling 2x first.

        x = down/upsample(x)                          (before everything: the skip sees it too)
        h = conv1(SiLU(norm1(x)))                     norm1: LN(C_in), affine, eps 1e-6
        h = norm2(h)·(1 + scale) + shift              norm2: LN(C_out), no affine; scale, shift per object
        out = conv2(SiLU(h)) + skip(x)                skip: Linear(C_in, C_out) if they differ
    """

    def __init__(self, channels: int, emb_channels: int, out_channels: int | None = None, downsample: bool = False, upsample: bool = False):
        super().__init__()
        if downsample and upsample:
            raise ValueError("a SparseResBlock3d cannot both downsample and upsample")
        out_channels = out_channels or channels
        self.norm1 = LayerNorm32(channels, elementwise_affine=True, eps=1e-6)
        self.norm2 = LayerNorm32(out_channels, elementwise_affine=False, eps=1e-6)
        self.conv1 = SparseConv3d(channels, out_channels, 3)
        self.conv2 = SparseConv3d(out_channels, out_channels, 3)
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, 2 * out_channels, bias=True))
        self.skip_connection = SparseLinear(channels, out_channels) if channels != out_channels else nn.Identity()
        self.updown = SparseDownsample(2) if downsample else SparseUpsample(2) if upsample else None

    def forward(self, x: SparseTensor, emb: torch.Tensor) -> SparseTensor:
        """x feats (N, C_in), emb (B, emb_channels) -> feats (N', C_out) on the (re)sampled voxels."""
        scale, shift = self.emb_layers(emb).to(x.dtype).chunk(2, dim=1)  # (B, C_out) each, scale first
        if self.updown is not None:
            x = self.updown(x)
        rows = x.coords[:, 0].long()
        h = self.conv1(x.replace(F.silu(self.norm1(x.feats))))
        h = self.norm2(h.feats) * (1 + scale[rows]) + shift[rows]
        h = self.conv2(x.replace(F.silu(h)))
        return h + self.skip_connection(x)


class SLatFlow(TrellisModel):
    """TRELLIS structured-latent flow model: v = model(x, t, cond) with x a SparseTensor.

    Args: see `SLatFlowConfig` (TRELLIS's names). Only `pe_mode="ape"` is implemented.
    """

    config_class = SLatFlowConfig

    def __init__(
        self,
        resolution: int,
        in_channels: int,
        model_channels: int,
        cond_channels: int,
        out_channels: int,
        num_blocks: int,
        num_heads: int | None = None,
        num_head_channels: int = 64,
        mlp_ratio: float = 4,
        patch_size: int = 2,
        num_io_res_blocks: int = 2,
        io_block_channels: list[int] | None = None,
        pe_mode: str = "ape",
        use_fp16: bool = False,
        use_checkpoint: bool = False,
        use_skip_connection: bool = True,
        share_mod: bool = False,
        qk_rms_norm: bool = False,
        qk_rms_norm_cross: bool = False,
    ):
        super().__init__()
        if pe_mode != "ape":
            raise ValueError(f"only pe_mode='ape' is implemented (the released TRELLIS models use it), got {pe_mode!r}")
        io_block_channels = list(io_block_channels) if io_block_channels is not None else None
        if io_block_channels is not None and 2 ** len(io_block_channels) != patch_size:
            raise ValueError(f"patch_size {patch_size} must be 2^len(io_block_channels) = {2 ** len(io_block_channels)}")
        self.config = SLatFlowConfig(
            resolution, in_channels, model_channels, cond_channels, out_channels, num_blocks, num_heads, num_head_channels,
            mlp_ratio, patch_size, num_io_res_blocks, io_block_channels, pe_mode, use_fp16, use_checkpoint,
            use_skip_connection, share_mod, qk_rms_norm, qk_rms_norm_cross,
        )
        self.resolution, self.in_channels, self.out_channels = resolution, in_channels, out_channels
        self.use_checkpoint, self.use_skip_connection, self.share_mod = use_checkpoint, use_skip_connection, share_mod
        self.num_heads = num_heads or model_channels // num_head_channels
        C = model_channels

        self.t_embedder = TimestepEmbedder(C)
        if share_mod:
            self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(C, 6 * C, bias=True))
        self.pos_embedder = AbsolutePositionEmbedder(C)  # no parameters
        io = io_block_channels or []
        self.input_layer = SparseLinear(in_channels, io[0] if io else C)

        # Each stage: (num_io_res_blocks - 1) ResBlocks at its width, then one that downsamples into the next.
        self.input_blocks = nn.ModuleList()
        for ch, next_ch in zip(io, io[1:] + [C]):
            self.input_blocks.extend(SparseResBlock3d(ch, C, ch) for _ in range(num_io_res_blocks - 1))
            self.input_blocks.append(SparseResBlock3d(ch, C, next_ch, downsample=True))
        self.blocks = nn.ModuleList(
            ModulatedCrossBlock(
                C, cond_channels, self.num_heads, mlp_ratio=mlp_ratio, qk_rms_norm=qk_rms_norm,
                qk_rms_norm_cross=qk_rms_norm_cross, share_mod=share_mod, sparse=True,
            )
            for _ in range(num_blocks)
        )
        # Mirror image: an upsampling ResBlock, then (num_io_res_blocks - 1) at the stage width; with skip
        # connections each input is [h, skip] (twice the width).
        skip = 2 if use_skip_connection else 1
        self.out_blocks = nn.ModuleList()
        for ch, prev_ch in zip(reversed(io), [C] + list(reversed(io[1:]))):
            self.out_blocks.append(SparseResBlock3d(prev_ch * skip, C, ch, upsample=True))
            self.out_blocks.extend(SparseResBlock3d(ch * skip, C, ch) for _ in range(num_io_res_blocks - 1))
        self.out_layer = SparseLinear(io[0] if io else C, out_channels)
        self.initialize_weights()
        if use_fp16:
            self.convert_to_fp16()

    def initialize_weights(self) -> None:
        init_flow_transformer(self)
        # zero-initialised residual branch of each ResBlock
        for block in [*self.input_blocks, *self.out_blocks]:
            nn.init.zeros_(block.conv2.conv.weight)
            nn.init.zeros_(block.conv2.conv.bias)

    def torso(self) -> list[nn.Module]:
        return [self.input_blocks, self.blocks, self.out_blocks]

    def forward(self, x: SparseTensor, t: torch.Tensor, cond: torch.Tensor) -> SparseTensor:
        """
        Args:
            x: SparseTensor, feats (N, in_channels), coords [b, x, y, z] in [0, resolution).
            t: (B,) model time (1000 · sampler time), one per object.
            cond: (B, L, cond_channels) condition tokens of each object.
        Returns:
            SparseTensor on x's voxels (same order), feats (N, out_channels) in x's dtype.
        """
        if x.feats.ndim != 2 or x.feats.shape[1] != self.in_channels:
            raise ValueError(f"expected voxel features (N, {self.in_channels}), got {tuple(x.feats.shape)}")
        if cond.ndim != 3 or cond.shape[0] != x.batch_size:
            raise ValueError(f"cond must be (B, L, C) with B = {x.batch_size} objects, got {tuple(cond.shape)}")
        dtype = self.dtype
        h = self.input_layer(x)
        h = h.replace(h.feats.to(dtype))
        t_emb = self.t_embedder(t)
        if self.share_mod:
            t_emb = self.adaLN_modulation(t_emb)
        t_emb, cond = t_emb.to(dtype), cond.to(dtype)

        skips = []
        for block in self.input_blocks:
            h = block(h, t_emb)
            skips.append(h.feats)
        h = h.replace(h.feats + self.pos_embedder(h.coords[:, 1:]).to(dtype))  # APE of the (coarse) integer coords
        for block in self.blocks:
            if self.use_checkpoint and torch.is_grad_enabled():
                h = torch.utils.checkpoint.checkpoint(block, h, t_emb, cond, use_reentrant=False)
            else:
                h = block(h, t_emb, cond)
        for block, skip in zip(self.out_blocks, reversed(skips)):
            if self.use_skip_connection:
                h = h.replace(torch.cat([h.feats, skip], dim=1))  # h first, then the skip
            h = block(h, t_emb)
        h = h.replace(F.layer_norm(h.feats, h.feats.shape[-1:]).to(x.dtype))
        return self.out_layer(h)


# TRELLIS-image-large `ckpts/slat_flow_img_dit_L_64l8p2_fp16.json` args (released model).
TRELLIS_IMAGE_LARGE = dict(
    resolution=64, in_channels=8, out_channels=8, model_channels=1024, cond_channels=1024, num_blocks=24, num_heads=16,
    mlp_ratio=4, patch_size=2, num_io_res_blocks=2, io_block_channels=[128], pe_mode="ape", qk_rms_norm=True, use_fp16=True,
)
