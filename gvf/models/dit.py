"""Temporal DiT: the latent diffusion transformer of GVF (upstream `model/dit.py::DiT`).

It denoises the motion latents x (B, T, N, C_in) — N = 512 latent tokens per frame, each anchored at a
canonical Gaussian position — conditioned on the diffusion time, per-frame image tokens (DINOv2, L per
frame) and the static Gaussians of the object (S rows of 14 channels). Each block runs, in order:
spatial self-attention (tokens of one frame), temporal self-attention (frames of one token),
image cross-attention (a frame's tokens -> that frame's image tokens), static cross-attention
(every token -> the object's static rows) and an MLP. Spatial/temporal attention and the MLP are
adaLN-modulated by the time embedding; the two cross-attentions are not.

Configuration: `gvf.config.DiTConfig` (= the upstream constructor kwargs; defaults = the official
model). `use_fp16` has no effect (as upstream: precision comes from autocast); `use_skip_connection`
and `patch_size` are accepted and unused (as upstream); `resolution` (number of latent tokens) is only
used by pe_mode "learnable". State-dict keys are exactly the upstream ones (official checkpoints load
with `gvf.checkpoints.convert_upstream("dit", sd)`, an identity table).

Speed: the image and static conditions do not depend on x or t, so their projected keys/values
(and the position embedding) can be computed once with `precompute_conditions` and reused by every
solver step (`forward(x, t, cache=cache)`). The static rows are attended by all T·N tokens of an
object at once instead of being repeated T times (same function: softmax is per query row).

Static cross-attention fold (exact algebra, used by default when it is cheaper): the static rows s
(14 channels) enter keys and values only through affine maps, k_h = A_h·s + c_h and v_h = B_h·s + d_h
(A_h, B_h = to_kv ∘ static_cond_proj per head, D × 14). The constant q_h·c_h is the same for every key of a
query row, so softmax removes it, and the attention weights sum to 1, so the values' d_h passes through.
Hence out_h = B_h·softmax((A_hᵀq_h)·s / √D)·s + d_h: one single-head attention of all T·N·H folded
queries A_hᵀq_h (to_q folded in) over the raw rows s (zero-padded to 16 channels), then one Linear
(B_h and to_out folded). It halves the attention width (32 -> 16) and the projection work, and needs no
head transposes. It requires no key RMS norm (`qk_rms_norm_cross=False`, the official setting).
The adaLN modulations of all blocks depend on t only and are computed by one matmul per forward.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn

from gvf.config import DiTConfig, model_config
from gvf.nn import AbsolutePositionEmbedder, FeedForwardNet, MultiHeadAttention, TimestepEmbedder, attention, modulate

KV = tuple[torch.Tensor, torch.Tensor]


@dataclass
class FoldedStaticAttention:
    """One block's static cross-attention with keys/values folded onto the raw static rows.

    Attributes:
        q_weight: (H·W, C), q_bias (H·W,): to_q followed by A_hᵀ per head (W = padded row width).
        out_weight: (C, H·W), out_bias (C,): B_h per head followed by to_out (v's bias folded in).
        rows: (B, S, 1, W) the static rows zero-padded to W channels (keys = values, one shared head).
        scale: the softmax scale of the original heads, 1/√D.
    """

    q_weight: torch.Tensor
    q_bias: torch.Tensor | None
    out_weight: torch.Tensor
    out_bias: torch.Tensor
    rows: torch.Tensor
    scale: float

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, L, C) normalised tokens -> (B, L, C), the static cross-attention output."""
        B, L, _ = x.shape
        W = self.rows.shape[-1]
        q = F.linear(x, self.q_weight, self.q_bias).reshape(B, -1, 1, W)  # (B, L·H, 1, W): heads become rows
        rows = self.rows.to(q.dtype)
        u = attention(q, rows, rows, scale=self.scale)  # (B, L·H, 1, W) softmax-weighted static rows
        return F.linear(u.reshape(B, L, -1), self.out_weight, self.out_bias)


@dataclass
class DiTConditionCache:
    """Everything of a forward pass that depends on the conditions (or the weights) only.

    Attributes:
        batch, frames: B and T the cache was built for.
        pos_emb: (B, N, C) absolute position embedding of the token positions, or None.
        image_kv: per block, keys and values of the image tokens, each (B·T, L, H, D).
        static_kv: per block, keys and values of the static rows, each (B, S, H, D), or a
            `FoldedStaticAttention` (see the module docstring).
        mod_weight, mod_bias: every block's adaLN Linear(s) and the final layer's, stacked
            ((Σ rows, C), (Σ rows,)), so that one matmul gives all modulations; None = per block.
    """

    batch: int
    frames: int
    pos_emb: torch.Tensor | None
    image_kv: list[KV] = field(default_factory=list)
    static_kv: list[KV | FoldedStaticAttention] = field(default_factory=list)
    mod_weight: torch.Tensor | None = None
    mod_bias: torch.Tensor | None = None


class TemporalDiTBlock(nn.Module):
    """One transformer block (upstream `ModulatedSparseTransformerCrossBlock`, attn_mode "full").

    Parameter names are the upstream ones; with `no_temporal_attn` the temporal attention, its
    modulation and `norm2` do not exist (no state-dict keys), as upstream.
    """

    def __init__(
        self,
        channels: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qk_rms_norm: bool = False,
        qk_rms_norm_cross: bool = False,
        no_temporal_attn: bool = False,
        use_checkpoint: bool = False,
    ):
        super().__init__()
        self.use_checkpoint = use_checkpoint
        self.no_temporal_attn = no_temporal_attn
        self.norm1 = nn.LayerNorm(channels, elementwise_affine=False, eps=1e-6)
        self.norm2 = None if no_temporal_attn else nn.LayerNorm(channels, elementwise_affine=False, eps=1e-6)
        self.norm3 = nn.LayerNorm(channels, elementwise_affine=True, eps=1e-6)
        self.norm4 = nn.LayerNorm(channels, elementwise_affine=True, eps=1e-6)
        self.norm5 = nn.LayerNorm(channels, elementwise_affine=False, eps=1e-6)
        self.spatial_self_attn = MultiHeadAttention(channels, num_heads, type="self", qk_rms_norm=qk_rms_norm)
        self.temporal_self_attn = (
            None if no_temporal_attn else MultiHeadAttention(channels, num_heads, type="self", qk_rms_norm=qk_rms_norm)
        )
        # The DiT projects both conditions to `channels` first, so ctx_channels = channels.
        self.image_cross_attn = MultiHeadAttention(channels, num_heads, channels, type="cross", qk_rms_norm=qk_rms_norm_cross)
        self.static_cross_attn = MultiHeadAttention(channels, num_heads, channels, type="cross", qk_rms_norm=qk_rms_norm_cross)
        self.mlp = FeedForwardNet(channels, mlp_ratio=mlp_ratio)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(channels, 6 * channels))
        self.adaLN_modulation_temporal = None if no_temporal_attn else nn.Sequential(nn.SiLU(), nn.Linear(channels, 3 * channels))

    @property
    def modulation_linears(self) -> list[nn.Linear]:
        """The adaLN Linears in the order their outputs are concatenated (6·C, then 3·C if temporal)."""
        linears = [self.adaLN_modulation[-1]]
        if self.adaLN_modulation_temporal is not None:
            linears.append(self.adaLN_modulation_temporal[-1])
        return linears

    def forward(
        self, x: torch.Tensor, mod: torch.Tensor, image_kv: KV, static_kv: KV | FoldedStaticAttention, modulation: torch.Tensor | None = None
    ) -> torch.Tensor:
        """x (B, T, N, C), mod (B, C), image_kv 2 x (B·T, L, H, D), static_kv 2 x (B, S, H, D) or folded
        -> (B, T, N, C). `modulation` (B, 6·C [+ 3·C]): this block's adaLN outputs if computed already."""
        if self.use_checkpoint and torch.is_grad_enabled():
            return torch.utils.checkpoint.checkpoint(self._forward, x, mod, image_kv, static_kv, modulation, use_reentrant=False)
        return self._forward(x, mod, image_kv, static_kv, modulation)

    def _forward(self, x, mod, image_kv, static_kv, modulation=None) -> torch.Tensor:
        B, T, N, C = x.shape
        if modulation is None:
            modulation = torch.cat([lin(F.silu(mod)) for lin in self.modulation_linears], dim=-1)
        # (B, C) modulation vectors broadcast over frames and tokens as (B, 1, 1, C)
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = modulation[:, None, None, : 6 * C].chunk(6, dim=-1)

        a = modulate(self.norm1(x), shift_msa, scale_msa)
        a = self.spatial_self_attn(a.reshape(B * T, N, C)).reshape(B, T, N, C)  # frames attend independently
        x = x + a * gate_msa

        if self.temporal_self_attn is not None:
            shift_t, scale_t, gate_t = modulation[:, None, None, 6 * C :].chunk(3, dim=-1)
            a = modulate(self.norm2(x), shift_t, scale_t)
            a = a.transpose(1, 2).reshape(B * N, T, C)  # each token attends over its T frames
            a = self.temporal_self_attn(a).reshape(B, N, T, C).transpose(1, 2)
            x = x + a * gate_t

        a = self.image_cross_attn(self.norm3(x).reshape(B * T, N, C), kv=image_kv)  # frame t -> its L image tokens
        x = x + a.reshape(B, T, N, C)

        a = self.norm4(x).reshape(B, T * N, C)  # all T·N tokens -> the S static rows
        a = static_kv(a) if isinstance(static_kv, FoldedStaticAttention) else self.static_cross_attn(a, kv=static_kv)
        x = x + a.reshape(B, T, N, C)

        a = self.mlp(modulate(self.norm5(x), shift_mlp, scale_mlp))
        return x + a * gate_mlp


class FinalLayer(nn.Module):
    """adaLN-modulated no-affine LayerNorm and a Linear to the output channels (upstream names)."""

    def __init__(self, channels: int, out_channels: int):
        super().__init__()
        self.norm_final = nn.LayerNorm(channels, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(channels, out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(channels, 2 * channels))

    def forward(self, x: torch.Tensor, mod: torch.Tensor, modulation: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T, N, C), (B, C) [, precomputed adaLN output (B, 2·C)] -> (B, T, N, C_out)."""
        if modulation is None:
            modulation = self.adaLN_modulation(mod)
        shift, scale = modulation[:, None, None].chunk(2, dim=-1)
        return self.linear(modulate(self.norm_final(x), shift, scale))


class TemporalDiT(nn.Module):
    """The GVF temporal diffusion transformer; predicts v for motion latents.

    Build with `TemporalDiT(config)` or with the upstream keyword arguments
    (`TemporalDiT(**configs/diffusion.yml["model"])`).
    """

    def __init__(self, config: DiTConfig | None = None, **kwargs):
        super().__init__()
        self.config = cfg = model_config(DiTConfig, config, kwargs, "TemporalDiT")
        if cfg.share_mod:
            raise ValueError("share_mod=True is not supported (a dead, inconsistent branch upstream); use share_mod=False")
        if cfg.pe_mode not in ("ape", "learnable", "none"):
            raise ValueError(f"pe_mode must be 'ape', 'learnable' or 'none' ('rope' is unused upstream), got {cfg.pe_mode!r}")
        if cfg.patch_size < 1 or cfg.patch_size & (cfg.patch_size - 1):
            raise ValueError(f"patch_size must be a power of 2, got {cfg.patch_size}")
        C = cfg.model_channels
        if not (cfg.num_heads or cfg.num_head_channels):
            raise ValueError("set num_heads or num_head_channels")
        self.num_heads = cfg.num_heads or C // cfg.num_head_channels
        if C % self.num_heads:
            raise ValueError(f"model_channels ({C}) must be divisible by num_heads ({self.num_heads})")
        self.in_channels, self.out_channels, self.model_channels = cfg.in_channels, cfg.out_channels, C
        self.pe_mode = cfg.pe_mode

        self.t_embedder = TimestepEmbedder(C)
        if cfg.pe_mode == "ape":
            self.pos_embedder = AbsolutePositionEmbedder(C)  # no parameters, no state-dict entries
        elif cfg.pe_mode == "learnable":
            self.pos_embedder = nn.Parameter(torch.randn(1, cfg.resolution, C))
        self.input_layer = nn.Linear(cfg.in_channels, C)
        self.blocks = nn.ModuleList(
            TemporalDiTBlock(
                C,
                self.num_heads,
                mlp_ratio=cfg.mlp_ratio,
                qk_rms_norm=cfg.qk_rms_norm,
                qk_rms_norm_cross=cfg.qk_rms_norm_cross,
                no_temporal_attn=cfg.no_temporal_attn,
                use_checkpoint=cfg.use_checkpoint,
            )
            for _ in range(cfg.num_blocks)
        )
        self.final_layer = FinalLayer(C, cfg.out_channels)
        self.static_cond_proj = nn.Linear(cfg.static_cond_channels, C)
        self.image_cond_proj = nn.Linear(cfg.image_cond_channels, C)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """The upstream initialisation (so that training from scratch starts where upstream did)."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        for linear in (self.t_embedder.mlp[0], self.t_embedder.mlp[2], self.static_cond_proj, self.image_cond_proj):
            nn.init.normal_(linear.weight, std=0.02)
        # adaLN-zero: spatial-attention and MLP branches start as identities. Upstream leaves the
        # temporal modulation at its xavier init; kept that way.
        for block in self.blocks:
            nn.init.zeros_(block.adaLN_modulation[-1].weight)
            nn.init.zeros_(block.adaLN_modulation[-1].bias)
        # Zero output layer: a fresh model predicts v = 0.
        nn.init.zeros_(self.final_layer.adaLN_modulation[-1].weight)
        nn.init.zeros_(self.final_layer.adaLN_modulation[-1].bias)
        nn.init.zeros_(self.final_layer.linear.weight)
        nn.init.zeros_(self.final_layer.linear.bias)

    def precompute_conditions(
        self,
        cond_images: torch.Tensor,
        static_latent: torch.Tensor,
        deformation_position_xyz: torch.Tensor | None = None,
        *,
        fold_static: bool | None = None,
    ) -> DiTConditionCache:
        """Project the conditions once: position embedding, every block's cross-attention k/v and the
        stacked adaLN weights.

        Build it under the same autocast/no_grad context as the forward passes that use it, and
        rebuild it after changing the weights.
        Args:
            cond_images: (B, T, L, C_img) per-frame image tokens.
            static_latent: (B, S, C_static) static Gaussian rows (normalised).
            deformation_position_xyz: (B, N, 3) token positions (required for pe_mode "ape").
            fold_static: fold the static cross-attention (module docstring); None = when it is
                possible and narrower than a head, True = whenever possible, False = never.
        """
        B, T = self._check_conditions(cond_images, static_latent, deformation_position_xyz)
        L = cond_images.shape[2]
        image_emb = self.image_cond_proj(cond_images).reshape(B * T, L, self.model_channels)  # frames attend independently
        pos_emb = self.pos_embedder(deformation_position_xyz) if self.pe_mode == "ape" else None
        foldable = not self.config.qk_rms_norm_cross
        width = _round_up(self.config.static_cond_channels, 8)
        head_dim = self.model_channels // self.num_heads
        if fold_static and not foldable:
            raise ValueError("fold_static=True needs qk_rms_norm_cross=False (a key RMS norm is not affine)")
        if fold_static is None:
            fold_static = foldable and width < head_dim
        if fold_static:
            rows = F.pad(static_latent, (0, width - static_latent.shape[-1]))[:, :, None]  # (B, S, 1, W)
            static_kv = [self._fold_static(block.static_cross_attn, rows) for block in self.blocks]
        else:
            static_emb = self.static_cond_proj(static_latent)  # (B, S, C): shared by all frames, not repeated
            static_kv = [_contiguous(block.static_cross_attn.project_kv(static_emb)) for block in self.blocks]
        linears = [lin for block in self.blocks for lin in block.modulation_linears] + [self.final_layer.adaLN_modulation[-1]]
        return DiTConditionCache(
            batch=B,
            frames=T,
            pos_emb=pos_emb,
            image_kv=[_contiguous(block.image_cross_attn.project_kv(image_emb)) for block in self.blocks],
            static_kv=static_kv,
            mod_weight=_autocast_cast(torch.cat([lin.weight for lin in linears])),
            mod_bias=_autocast_cast(torch.cat([lin.bias for lin in linears])),
        )

    def _fold_static(self, attn: MultiHeadAttention, rows: torch.Tensor) -> FoldedStaticAttention:
        """The folded weights of one static cross-attention (module docstring) for padded rows (B, S, 1, W)."""
        H, D, C = attn.num_heads, attn.head_dim, attn.channels
        W, Cs = rows.shape[-1], self.config.static_cond_channels
        proj = self.static_cond_proj
        with torch.autocast(device_type=rows.device.type, enabled=False):  # weights folded at full precision
            w_kv = attn.to_kv.weight.reshape(2, H, D, C)
            a = torch.einsum("hdc,cs->hds", w_kv[0], proj.weight)  # (H, D, Cs): keys from rows, per head
            b = torch.einsum("hdc,cs->hds", w_kv[1], proj.weight)  # (H, D, Cs): values from rows
            a, b = F.pad(a, (0, W - Cs)), F.pad(b, (0, W - Cs))
            q_weight = torch.einsum("hds,hdc->hsc", a, attn.to_q.weight.reshape(H, D, C)).reshape(H * W, C)
            q_bias = None if attn.to_q.bias is None else torch.einsum("hds,hd->hs", a, attn.to_q.bias.reshape(H, D)).reshape(-1)
            w_out = attn.to_out.weight.reshape(C, H, D)
            out_weight = torch.einsum("chd,hds->chs", w_out, b).reshape(C, H * W)
            v_bias = attn.to_kv.weight[C:] @ proj.bias  # (C,) what the static_cond_proj bias adds to v
            if attn.to_kv.bias is not None:
                v_bias = v_bias + attn.to_kv.bias[C:]
            out_bias = attn.to_out.weight @ v_bias
            if attn.to_out.bias is not None:
                out_bias = out_bias + attn.to_out.bias
        return FoldedStaticAttention(
            q_weight=_autocast_cast(q_weight),
            q_bias=None if q_bias is None else _autocast_cast(q_bias),
            out_weight=_autocast_cast(out_weight),
            out_bias=_autocast_cast(out_bias),
            rows=_autocast_cast(rows),
            scale=D**-0.5,
        )

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        cond_images: torch.Tensor | None = None,
        static_latent: torch.Tensor | None = None,
        deformation_position_xyz: torch.Tensor | None = None,
        *,
        cache: DiTConditionCache | None = None,
    ) -> torch.Tensor:
        """Predict v.

        Args:
            x: (B, T, N, C_in) noisy latents.
            t: (B,) model time (float; the step index during training).
            cond_images: (B, T, L, C_img); static_latent: (B, S, C_static);
            deformation_position_xyz: (B, N, 3) — or instead `cache` from `precompute_conditions`.
        Returns:
            (B, T, N, C_out)
        """
        if x.ndim != 4 or x.shape[-1] != self.in_channels:
            raise ValueError(f"x must be (B, T, N, {self.in_channels}), got {tuple(x.shape)}")
        B, T, N, _ = x.shape
        if t.shape != (B,):
            raise ValueError(f"t must have shape ({B},) (one time per batch element), got {tuple(t.shape)}")
        if cache is None:
            if cond_images is None or static_latent is None:
                raise ValueError("TemporalDiT needs cond_images and static_latent (or a precomputed cache)")
            cache = self.precompute_conditions(cond_images, static_latent, deformation_position_xyz)
        elif cond_images is not None or static_latent is not None or deformation_position_xyz is not None:
            raise ValueError("pass either the condition tensors or a precomputed cache, not both")
        if (cache.batch, cache.frames) != (B, T):
            raise ValueError(f"conditions are for B={cache.batch}, T={cache.frames} but x is {tuple(x.shape)}")
        if cache.pos_emb is not None and cache.pos_emb.shape[1] != N:
            raise ValueError(f"deformation_position_xyz has {cache.pos_emb.shape[1]} positions but x has N={N} tokens")

        if self.pe_mode == "learnable" and N != self.pos_embedder.shape[1]:
            raise ValueError(f"pe_mode 'learnable' needs N = resolution = {self.pos_embedder.shape[1]} tokens, got {N}")

        h = self.input_layer(x)
        if cache.pos_emb is not None:
            h = h + cache.pos_emb[:, None]  # same positions for every frame; no temporal encoding
        elif self.pe_mode == "learnable":
            h = h + self.pos_embedder
        mod = self.t_embedder(t)
        if cache.mod_weight is None:
            for block, image_kv, static_kv in zip(self.blocks, cache.image_kv, cache.static_kv):
                h = block(h, mod, image_kv, static_kv)
            return self.final_layer(h, mod)
        # every adaLN modulation at once: (B, Σ rows), then split per block
        modulation = F.linear(F.silu(mod), cache.mod_weight, cache.mod_bias)
        widths = [sum(lin.out_features for lin in block.modulation_linears) for block in self.blocks]
        *per_block, final = modulation.split([*widths, modulation.shape[-1] - sum(widths)], dim=-1)
        for block, image_kv, static_kv, m in zip(self.blocks, cache.image_kv, cache.static_kv, per_block):
            h = block(h, mod, image_kv, static_kv, modulation=m)
        return self.final_layer(h, mod, modulation=final)

    def _check_conditions(self, cond_images, static_latent, xyz) -> tuple[int, int]:
        cfg = self.config
        if cond_images.ndim != 4 or cond_images.shape[-1] != cfg.image_cond_channels:
            raise ValueError(f"cond_images must be (B, T, L, {cfg.image_cond_channels}), got {tuple(cond_images.shape)}")
        B, T = cond_images.shape[:2]
        if static_latent.ndim != 3 or static_latent.shape[0] != B or static_latent.shape[-1] != cfg.static_cond_channels:
            raise ValueError(f"static_latent must be ({B}, S, {cfg.static_cond_channels}), got {tuple(static_latent.shape)}")
        if self.pe_mode == "ape":
            if xyz is None:
                raise ValueError("deformation_position_xyz (B, N, 3) is required with pe_mode='ape'")
            if xyz.ndim != 3 or xyz.shape[0] != B or xyz.shape[-1] != 3:
                raise ValueError(f"deformation_position_xyz must be ({B}, N, 3), got {tuple(xyz.shape)}")
        return B, T


def _contiguous(kv: KV) -> KV:
    """Dense k and v (they are views into one packed projection); done once per cache."""
    return kv[0].contiguous(), kv[1].contiguous()


def _round_up(n: int, m: int) -> int:
    return (n + m - 1) // m * m


def _autocast_cast(w: torch.Tensor) -> torch.Tensor:
    """A weight computed once for many forwards, stored in the autocast dtype if autocast is on (what
    every F.linear under autocast would cast it to anyway)."""
    device = w.device.type
    if torch.is_autocast_enabled(device) and w.is_floating_point():
        return w.to(torch.get_autocast_dtype(device))
    return w


def make_config(**kwargs) -> DiTConfig:
    """`DiTConfig` from upstream-style keyword arguments, with a clear error on unknown ones."""
    return model_config(DiTConfig, None, kwargs, "TemporalDiT")


# Size presets.
OFFICIAL = DiTConfig()  # configs/diffusion.yml `model` (12 blocks, 512 channels, 16 heads)
TINY = DiTConfig(
    resolution=16, in_channels=4, out_channels=4, model_channels=32, image_cond_channels=16, num_blocks=2, num_heads=4
)
