"""TRELLIS sparse-structure flow transformer (stage 1 of image-to-3D): a DiT over a dense latent grid.

Predicts the rectified-flow velocity of the (B, 8, 16, 16, 16) occupancy latent, conditioned on the
model time and on DINOv2 image tokens through cross-attention. Parameter names, shapes and the
computation are TRELLIS's `SparseStructureFlowModel` (checkpoint `ss_flow_img_dit_L_16l8_fp16`), so the
released safetensors load with `strict=True`.

This file also holds the pieces the other TRELLIS models share: `ModulatedCrossBlock` (dense or sparse)
and `TrellisModel` (TRELLIS's `use_fp16` on a model's torso, `from_config`).

Precision (`use_fp16`): like upstream, the Linear/conv weights inside the torso (`blocks`) are held in
float16 and the torso runs in float16, with LayerNorms and per-head RMS norms computed in float32;
input/output layers, the timestep MLP and `pos_emb` stay float32. Checkpoints load in either case (load
casts every entry to the parameter's dtype). `convert_to_fp32()` gives a float32 model (what the parity
fixtures check); mixed precision can also come from autocast on a float32 model.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Iterable

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn

from gvf.nn import AbsolutePositionEmbedder, FeedForwardNet, LayerNorm32, MultiHeadAttention, TimestepEmbedder, modulate


@dataclass
class SparseStructureFlowConfig:
    """Constructor arguments of `SparseStructureFlow` (= the `args` of TRELLIS's checkpoint JSON)."""

    resolution: int = 16
    in_channels: int = 8
    model_channels: int = 1024
    cond_channels: int = 1024
    out_channels: int = 8
    num_blocks: int = 24
    num_heads: int | None = 16
    num_head_channels: int = 64
    mlp_ratio: float = 4
    patch_size: int = 1
    pe_mode: str = "ape"
    use_fp16: bool = True
    use_checkpoint: bool = False
    share_mod: bool = False
    qk_rms_norm: bool = True
    qk_rms_norm_cross: bool = False


# ---- shared pieces ---------------------------------------------------------------------------


def _torso_layers(modules: Iterable[nn.Module]):
    """The layers TRELLIS's `use_fp16` converts: Linear, Conv3d and sparse convolutions."""
    from gvf.sparse.conv import SparseConv3d

    for root in modules:
        for m in root.modules():
            if isinstance(m, (nn.Linear, nn.Conv3d, SparseConv3d)):
                yield m


def set_torso_dtype(modules: Iterable[nn.Module], dtype: torch.dtype) -> None:
    """Cast the weights of every Linear / Conv3d / sparse conv inside `modules` (TRELLIS's
    `convert_module_to_f16/f32`); norms, RMS gammas and buffers keep their dtype."""
    for m in _torso_layers(modules):
        for p in m.parameters():
            p.data = p.data.to(dtype)


def torso_dtype(modules: Iterable[nn.Module], fallback: nn.Module) -> torch.dtype:
    """dtype of the first torso layer's weight in `modules` (or of `fallback`'s first parameter)."""
    for m in _torso_layers(modules):
        return next(m.parameters()).dtype
    return next(fallback.parameters()).dtype


class TrellisModel(nn.Module):
    """Base of the TRELLIS models: TRELLIS's `use_fp16` switch on the torso that `torso()` lists, and
    `from_config`. A subclass sets `config_class` (its config dataclass) and has an `input_layer`."""

    config_class: type

    def torso(self) -> list[nn.Module]:
        """The sub-modules held in float16 under `use_fp16`."""
        raise NotImplementedError

    def convert_torso(self, dtype: torch.dtype) -> None:
        """Hold and run the torso in `dtype` (float16 = TRELLIS's `use_fp16`); the rest stays as it is."""
        set_torso_dtype(self.torso(), dtype)

    def convert_to_fp16(self) -> None:
        self.convert_torso(torch.float16)

    def convert_to_fp32(self) -> None:
        self.convert_torso(torch.float32)

    @property
    def dtype(self) -> torch.dtype:
        """The dtype the torso computes in (that of its weights)."""
        return torso_dtype(self.torso(), self.input_layer)

    @classmethod
    def from_config(cls, config):
        """Build from a config dataclass (`config_class`) or a dict of constructor arguments."""
        return cls(**(asdict(config) if isinstance(config, cls.config_class) else config))


def init_flow_transformer(model: nn.Module) -> None:
    """TRELLIS's init of a flow DiT (`t_embedder`, `blocks`, `out_layer`, `share_mod`/`adaLN_modulation`)."""

    def _basic_init(m):
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    model.apply(_basic_init)
    nn.init.normal_(model.t_embedder.mlp[0].weight, std=0.02)
    nn.init.normal_(model.t_embedder.mlp[2].weight, std=0.02)
    # adaLN-zero: every transformer block starts as the identity
    for mod in [model.adaLN_modulation] if model.share_mod else [b.adaLN_modulation for b in model.blocks]:
        nn.init.zeros_(mod[-1].weight)
        nn.init.zeros_(mod[-1].bias)
    # zero output layer: the initial velocity is 0
    nn.init.zeros_(model.out_layer.weight)
    nn.init.zeros_(model.out_layer.bias)


def _sparse_attention(channels: int, num_heads: int, type: str, qk_rms_norm: bool, qkv_bias: bool, ctx_channels: int | None = None):
    from gvf.sparse.attention import SparseMultiHeadAttention

    kwargs = dict(ctx_channels=ctx_channels) if type == "cross" else {}
    return SparseMultiHeadAttention(
        channels, num_heads=num_heads, type=type, attn_mode="full", qkv_bias=qkv_bias, qk_rms_norm=qk_rms_norm, **kwargs
    )


class ModulatedCrossBlock(nn.Module):
    """adaLN-modulated transformer block with cross-attention (TRELLIS `Modulated[Sparse]TransformerCrossBlock`).

        x += gate_msa · SelfAttn(LN1(x)·(1 + scale_msa) + shift_msa)
        x += CrossAttn(LN2(x), context)                     (LN2 affine, no modulation, no gate)
        x += gate_mlp · MLP(LN3(x)·(1 + scale_mlp) + shift_mlp)

    Dense: x (B, N, C), attention over all N tokens. Sparse (`sparse=True`): x a SparseTensor, the
    self-attention runs within each object and each object attends to its own context row.
    Modulation: `adaLN_modulation` = SiLU -> Linear(C, 6C) of the (B, C) timestep embedding, or with
    `share_mod` the caller passes the (B, 6C) modulation itself.
    """

    def __init__(
        self,
        channels: int,
        ctx_channels: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qk_rms_norm: bool = False,
        qk_rms_norm_cross: bool = False,
        qkv_bias: bool = True,
        share_mod: bool = False,
        sparse: bool = False,
    ):
        super().__init__()
        self.share_mod, self.sparse = share_mod, sparse
        self.norm1 = LayerNorm32(channels, elementwise_affine=False, eps=1e-6)
        self.norm2 = LayerNorm32(channels, elementwise_affine=True, eps=1e-6)
        self.norm3 = LayerNorm32(channels, elementwise_affine=False, eps=1e-6)
        if sparse:
            self.self_attn = _sparse_attention(channels, num_heads, "self", qk_rms_norm, qkv_bias)
            self.cross_attn = _sparse_attention(channels, num_heads, "cross", qk_rms_norm_cross, qkv_bias, ctx_channels)
        else:
            self.self_attn = MultiHeadAttention(channels, num_heads, type="self", qkv_bias=qkv_bias, qk_rms_norm=qk_rms_norm)
            self.cross_attn = MultiHeadAttention(
                channels, num_heads, ctx_channels=ctx_channels, type="cross", qkv_bias=qkv_bias, qk_rms_norm=qk_rms_norm_cross
            )
        self.mlp = FeedForwardNet(channels, mlp_ratio=mlp_ratio)
        if not share_mod:
            self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(channels, 6 * channels, bias=True))

    def forward(self, x, mod: torch.Tensor, context: torch.Tensor):
        """x (B, N, C) or SparseTensor (N_vox, C); mod (B, C) (or (B, 6C) with share_mod); context (B, L, C_ctx)."""
        mods = (mod if self.share_mod else self.adaLN_modulation(mod)).chunk(6, dim=1)  # 6 × (B, C)
        if self.sparse:
            rows = x.coords[:, 0].long()
            mods = [m[rows] for m in mods]  # (N_vox, C): each voxel takes its object's modulation
            h_in = x.feats
        else:
            mods = [m[:, None] for m in mods]  # (B, 1, C)
            h_in = x
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = mods

        h = modulate(self.norm1(h_in), shift_msa, scale_msa)
        h_in = h_in + self._attend(self.self_attn, x, h) * gate_msa
        h_in = h_in + self._attend(self.cross_attn, x, self.norm2(h_in), context)
        h = modulate(self.norm3(h_in), shift_mlp, scale_mlp)
        h_in = h_in + self.mlp(h) * gate_mlp
        return x.replace(h_in) if self.sparse else h_in

    def _attend(self, attn: nn.Module, x, h: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        if not self.sparse:
            return attn(h) if context is None else attn(h, context)
        hs = x.replace(h)
        return (attn(hs) if context is None else attn(hs, context)).feats


# ---- the model -----------------------------------------------------------------------------


def patchify(x: torch.Tensor, patch_size: int) -> torch.Tensor:
    """(B, C, R, R, R) -> (B, C·p³, R/p, R/p, R/p); channel index = c·p³ + (i·p + j)·p + k (TRELLIS order)."""
    if patch_size == 1:
        return x
    B, C, *res = x.shape
    p = patch_size
    x = x.reshape(B, C, res[0] // p, p, res[1] // p, p, res[2] // p, p)
    return x.permute(0, 1, 3, 5, 7, 2, 4, 6).reshape(B, C * p**3, res[0] // p, res[1] // p, res[2] // p)


def unpatchify(x: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Inverse of `patchify`."""
    if patch_size == 1:
        return x
    B, Cp, *res = x.shape
    p = patch_size
    x = x.reshape(B, Cp // p**3, p, p, p, *res)
    return x.permute(0, 1, 5, 2, 6, 3, 7, 4).reshape(B, Cp // p**3, res[0] * p, res[1] * p, res[2] * p)


class SparseStructureFlow(TrellisModel):
    """TRELLIS sparse-structure flow DiT: v = model(x, t, cond).

    Args: see `SparseStructureFlowConfig` (TRELLIS's names; `num_heads` None = model_channels //
    num_head_channels). Only `pe_mode="ape"` is implemented (the released model's).
    """

    config_class = SparseStructureFlowConfig

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
        pe_mode: str = "ape",
        use_fp16: bool = False,
        use_checkpoint: bool = False,
        share_mod: bool = False,
        qk_rms_norm: bool = False,
        qk_rms_norm_cross: bool = False,
    ):
        super().__init__()
        if pe_mode != "ape":
            raise ValueError(f"only pe_mode='ape' is implemented (the released TRELLIS models use it), got {pe_mode!r}")
        if resolution % patch_size:
            raise ValueError(f"resolution {resolution} is not divisible by patch_size {patch_size}")
        self.config = SparseStructureFlowConfig(
            resolution, in_channels, model_channels, cond_channels, out_channels, num_blocks, num_heads, num_head_channels,
            mlp_ratio, patch_size, pe_mode, use_fp16, use_checkpoint, share_mod, qk_rms_norm, qk_rms_norm_cross,
        )
        self.resolution, self.in_channels, self.out_channels = resolution, in_channels, out_channels
        self.patch_size, self.use_checkpoint, self.share_mod = patch_size, use_checkpoint, share_mod
        self.num_heads = num_heads or model_channels // num_head_channels

        self.t_embedder = TimestepEmbedder(model_channels)
        if share_mod:
            self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(model_channels, 6 * model_channels, bias=True))
        # A persistent buffer upstream, so it is in the checkpoint; loading replaces these values.
        self.register_buffer("pos_emb", self._grid_position_embedding(resolution // patch_size, model_channels))
        self.input_layer = nn.Linear(in_channels * patch_size**3, model_channels)
        self.blocks = nn.ModuleList(
            ModulatedCrossBlock(
                model_channels, cond_channels, self.num_heads, mlp_ratio=mlp_ratio, qk_rms_norm=qk_rms_norm,
                qk_rms_norm_cross=qk_rms_norm_cross, share_mod=share_mod,
            )
            for _ in range(num_blocks)
        )
        self.out_layer = nn.Linear(model_channels, out_channels * patch_size**3)
        self.initialize_weights()
        if use_fp16:
            self.convert_to_fp16()

    @staticmethod
    def _grid_position_embedding(r: int, channels: int) -> torch.Tensor:
        """(r³, C) APE of the integer token coordinates (i, j, k), C-order (token i·r² + j·r + k)."""
        ar = torch.arange(r)
        grid = torch.stack(torch.meshgrid(ar, ar, ar, indexing="ij"), dim=-1).reshape(-1, 3)
        return AbsolutePositionEmbedder(channels)(grid)

    def initialize_weights(self) -> None:
        init_flow_transformer(self)

    def torso(self) -> list[nn.Module]:
        return [self.blocks]

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """
        Args:
            x: (B, in_channels, R, R, R) noisy latent.
            t: (B,) model time (1000 · sampler time).
            cond: (B, L, cond_channels) condition tokens.
        Returns:
            (B, out_channels, R, R, R) velocity, in x's dtype.
        """
        R = self.resolution
        if tuple(x.shape[1:]) != (self.in_channels, R, R, R):
            raise ValueError(f"expected x of shape (B, {self.in_channels}, {R}, {R}, {R}), got {tuple(x.shape)}")
        B, r = x.shape[0], R // self.patch_size
        h = patchify(x, self.patch_size).reshape(B, -1, r**3).transpose(1, 2)  # (B, N, C·p³), token i·r² + j·r + k
        h = self.input_layer(h) + self.pos_emb[None]
        t_emb = self.t_embedder(t)
        if self.share_mod:
            t_emb = self.adaLN_modulation(t_emb)
        t_emb, h, cond = t_emb.to(self.dtype), h.to(self.dtype), cond.to(self.dtype)
        for block in self.blocks:
            if self.use_checkpoint and torch.is_grad_enabled():
                h = torch.utils.checkpoint.checkpoint(block, h, t_emb, cond, use_reentrant=False)
            else:
                h = block(h, t_emb, cond)
        h = F.layer_norm(h.to(x.dtype), h.shape[-1:])
        h = self.out_layer(h)  # (B, N, out·p³)
        h = h.transpose(1, 2).reshape(B, -1, r, r, r)
        return unpatchify(h, self.patch_size)


# TRELLIS-image-large `ckpts/ss_flow_img_dit_L_16l8_fp16.json` args (released model).
TRELLIS_IMAGE_LARGE = dict(
    resolution=16, in_channels=8, out_channels=8, model_channels=1024, cond_channels=1024, num_blocks=24,
    num_heads=16, mlp_ratio=4, patch_size=1, pe_mode="ape", qk_rms_norm=True, use_fp16=True,
)
