"""TRELLIS sparse-structure decoder: a 3-D conv net from the (B, 8, 16³) latent to (B, 1, 64³) occupancy logits.

Parameter names, shapes and computation are TRELLIS's `SparseStructureDecoder` (checkpoint
`ss_dec_conv3d_16l8_fp16`); the image-to-3D pipeline keeps the voxels with logit > 0
(`occupied_voxels`). `use_fp16` holds and runs the torso (`middle_block`, `blocks`) in float16 as
upstream, with the channel LayerNorms computed in float32 (see `ss_flow.py` for the precision notes).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from gvf.models.trellis.ss_flow import TrellisModel
from gvf.nn import LayerNorm32


@dataclass
class SparseStructureDecoderConfig:
    """Constructor arguments of `SparseStructureDecoder` (= TRELLIS's checkpoint JSON `args`)."""

    out_channels: int = 1
    latent_channels: int = 8
    num_res_blocks: int = 2
    channels: list[int] = field(default_factory=lambda: [512, 128, 32])
    num_res_blocks_middle: int = 2
    norm_type: str = "layer"
    use_fp16: bool = True


class ChannelLayerNorm32(LayerNorm32):
    """LayerNorm over the channel axis of (B, C, *spatial) at every voxel, computed in float32."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.movedim(1, -1)).movedim(-1, 1)


class ResBlock3d(nn.Module):
    """h = conv2(SiLU(norm2(conv1(SiLU(norm1(x)))))); out = h + skip(x). Norms: channel LN, affine, eps 1e-5."""

    def __init__(self, channels: int, out_channels: int | None = None):
        super().__init__()
        out_channels = out_channels or channels
        self.norm1 = ChannelLayerNorm32(channels)
        self.norm2 = ChannelLayerNorm32(out_channels)
        self.conv1 = nn.Conv3d(channels, out_channels, 3, padding=1)
        self.conv2 = nn.Conv3d(out_channels, out_channels, 3, padding=1)
        self.skip_connection = nn.Conv3d(channels, out_channels, 1) if channels != out_channels else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, r, r, r) -> (B, C_out, r, r, r)
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return h + self.skip_connection(x)


def pixel_shuffle_3d(x: torch.Tensor, factor: int) -> torch.Tensor:
    """(B, C·f³, r, r, r) -> (B, C, f·r, f·r, f·r): channel c·f³ + (i·f + j)·f + k goes to (f·x+i, f·y+j, f·z+k)."""
    B, C, *res = x.shape
    c = C // factor**3
    x = x.reshape(B, c, factor, factor, factor, *res)
    x = x.permute(0, 1, 5, 2, 6, 3, 7, 4)  # (B, c, r, f, r, f, r, f)
    return x.reshape(B, c, res[0] * factor, res[1] * factor, res[2] * factor)


class UpsampleBlock3d(nn.Module):
    """Conv3d(C_in, 8·C_out, 3) then a 2x 3-D pixel shuffle."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = nn.Conv3d(in_channels, out_channels * 8, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C_in, r, r, r) -> (B, C_out, 2r, 2r, 2r)
        return pixel_shuffle_3d(self.conv(x), 2)


class SparseStructureDecoder(TrellisModel):
    """Occupancy decoder: logits = decoder(z).

    input_layer Conv3d(latent, channels[0]) -> middle_block (num_res_blocks_middle ResBlock3d) ->
    per stage i: num_res_blocks ResBlock3d(channels[i]), then UpsampleBlock3d(channels[i] -> channels[i+1])
    except after the last stage -> out_layer [channel LN, SiLU, Conv3d(channels[-1], out_channels)].
    """

    config_class = SparseStructureDecoderConfig

    def __init__(
        self,
        out_channels: int,
        latent_channels: int,
        num_res_blocks: int,
        channels: list[int],
        num_res_blocks_middle: int = 2,
        norm_type: str = "layer",
        use_fp16: bool = False,
    ):
        super().__init__()
        if norm_type != "layer":
            raise ValueError(f"only norm_type='layer' is implemented (the released decoder uses it), got {norm_type!r}")
        channels = list(channels)
        self.config = SparseStructureDecoderConfig(
            out_channels, latent_channels, num_res_blocks, channels, num_res_blocks_middle, norm_type, use_fp16
        )
        self.out_channels, self.latent_channels = out_channels, latent_channels
        self.input_layer = nn.Conv3d(latent_channels, channels[0], 3, padding=1)
        self.middle_block = nn.Sequential(*[ResBlock3d(channels[0]) for _ in range(num_res_blocks_middle)])
        self.blocks = nn.ModuleList()
        for i, ch in enumerate(channels):
            self.blocks.extend(ResBlock3d(ch) for _ in range(num_res_blocks))
            if i < len(channels) - 1:
                self.blocks.append(UpsampleBlock3d(ch, channels[i + 1]))
        self.out_layer = nn.Sequential(
            ChannelLayerNorm32(channels[-1]), nn.SiLU(), nn.Conv3d(channels[-1], out_channels, 3, padding=1)
        )
        self.initialize_weights()
        if use_fp16:
            self.convert_to_fp16()

    def initialize_weights(self) -> None:
        # each ResBlock starts as the identity (upstream zero-initialises conv2)
        for m in self.modules():
            if isinstance(m, ResBlock3d):
                nn.init.zeros_(m.conv2.weight)
                nn.init.zeros_(m.conv2.bias)

    def torso(self) -> list[nn.Module]:
        return [self.middle_block, self.blocks]

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """z (B, latent_channels, r, r, r) -> logits (B, out_channels, r·2^(S-1), ...) in z's dtype (S stages)."""
        if z.ndim != 5 or z.shape[1] != self.latent_channels:
            raise ValueError(f"expected a latent of shape (B, {self.latent_channels}, r, r, r), got {tuple(z.shape)}")
        h = self.input_layer(z).to(self.dtype)
        h = self.middle_block(h)
        for block in self.blocks:
            h = block(h)
        return self.out_layer(h.to(z.dtype))


def occupied_voxels(logits: torch.Tensor) -> torch.Tensor:
    """Voxels with logit > 0 (strictly), as the pipeline takes them.

    Args:
        logits: (B, 1, r, r, r).
    Returns:
        (N, 4) int32 rows [batch, x, y, z] in ascending (C) order.
    """
    return torch.argwhere(logits > 0)[:, [0, 2, 3, 4]].int()


# TRELLIS-image-large `ckpts/ss_dec_conv3d_16l8_fp16.json` args (released model).
TRELLIS_IMAGE_LARGE = dict(
    out_channels=1, latent_channels=8, num_res_blocks=2, num_res_blocks_middle=2, channels=[512, 128, 32], use_fp16=True
)
