"""The motion VAE ("variation field" VAE) of GVFDiffusion.

It encodes how the canonical Gaussians of an object move, frame by frame, into `num_latents`
latent tokens per frame, and decodes per-Gaussian deltas (xyz, scale, rotation, colour, opacity)
for every Gaussian of the object from them. There is no mixing across frames anywhere: each frame
is encoded and decoded independently (rows `b·T + t`).

Encoder (per frame): farthest-point-sample `num_latents` Gaussians; estimate their displacement
from the mesh motion by KNN interpolation; embed (displacement, position) for them and for every
mesh point; one cross-attention + feed-forward; a diagonal Gaussian posterior.
Decoder: project the latents, `depth` self-attention blocks, then every Gaussian queries the
latents with one cross-attention (no residual) and a linear head.

Parameter names equal the upstream `GSKLTemporalVariationalAutoEncoder`'s, so official
checkpoints load strictly after `gvf.checkpoints.convert_upstream("motion_vae", ...)`.

The decoder has two paths computing the same function:
* reference (`fast=False`): embed the queries, repeat them over frames, attend, `to_out`,
  `to_outputs` — the upstream computation.
* fast (default): the queries do not change over frames, so they are embedded and projected to
  q once per chunk; `to_out` and `to_outputs` are consecutive linear maps, so they are folded into
  one (C -> 14) map applied per head to the values before attention
  (out = Σ_h softmax(q_h k_hᵀ/√D) (V_h W_hᵀ) + b): per head, attention moves values of the head
  width (or narrower, `fold_value_width`) holding the 14 output channels, the C-wide attention
  output, `to_out` and `to_outputs` disappear, and no (B, T, Q, C) tensor is ever built.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn

from gvf.config import MotionVAEConfig, model_config
from gvf.gaussians import farthest_point_sampling, knn_points, pad_tensor14
from gvf.nn import GEGLUFeedForward, MultiHeadAttention, PointEmbed, attention, resolve_backend

logger = logging.getLogger(__name__)

__all__ = [
    "VariationFieldVAE",
    "MotionPosterior",
    "MeshMotionEstimate",
    "interpolate_mesh_motion",
    "xyz_interpolation_loss",
    "OFFICIAL_CONFIG",
]

# KNN interpolation constants of the upstream (spec §2.3 / §10.1).
RADIUS_EPS = 1e-6
WEIGHT_EPS = 1e-8
LOGVAR_RANGE = (-30.0, 20.0)


# ---------------------------------------------------------------------------------------------
# Posterior and KNN motion estimate
# ---------------------------------------------------------------------------------------------


@dataclass
class MotionPosterior:
    """Result of `VariationFieldVAE.encode`.

    Attributes:
        mean, logvar: (B·T, L, C_z) diagonal Gaussian posterior, row b·T + t; `logvar` is clamped
            to [-30, 20] (upstream `DiagonalGaussianDistribution`).
        z: (B·T, L, C_z) sample mean + exp(logvar/2)·noise.
        noise: (B·T, L, C_z) the standard-normal draw used for `z`.
        kl: (B·T,) KL to N(0, I): 0.5·mean over tokens and channels of (mean² + var − 1 − logvar).
        fps_idx: (B, L) int64 per-object indices of the sampled Gaussians, in sampling order.
        fps_gaussians: (B, L, 14) the sampled Gaussian rows (the encoder queries; the diffusion
            model gets their xyz as `deformation_position_xyz`).
        est_deltas: (B, T, L, 3) KNN-interpolated displacement of the sampled Gaussians.
    """

    mean: torch.Tensor
    logvar: torch.Tensor
    z: torch.Tensor
    noise: torch.Tensor
    kl: torch.Tensor
    fps_idx: torch.Tensor
    fps_gaussians: torch.Tensor
    est_deltas: torch.Tensor

    @property
    def std(self) -> torch.Tensor:
        return torch.exp(0.5 * self.logvar)

    @property
    def var(self) -> torch.Tensor:
        return torch.exp(self.logvar)

    def mode(self) -> torch.Tensor:
        return self.mean

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """A fresh sample; noise drawn like upstream (float32, on the generator's device, CPU by default)."""
        return self.mean + self.std * _standard_normal(self.mean, generator)


def _standard_normal(like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    device = generator.device if generator is not None else torch.device("cpu")
    return torch.randn(like.shape, generator=generator, device=device, dtype=torch.float32).to(like.device)


@dataclass
class MeshMotionEstimate:
    """Result of `interpolate_mesh_motion`.

    Attributes:
        deltas: (B, T, N, 3) interpolated displacement per Gaussian and frame (0 for padding rows).
        valid: (B, N) bool, False on padding rows.
        knn_idx: (B, N, K) indices into the mesh points; knn_sq_dists (B, N, K) squared distances.
        weights: (B, N, K) normalised interpolation weights (0 on padding rows).
    """

    deltas: torch.Tensor
    valid: torch.Tensor
    knn_idx: torch.Tensor
    knn_sq_dists: torch.Tensor
    weights: torch.Tensor


@torch.no_grad()
def interpolate_mesh_motion(
    gs_xyz: torch.Tensor,
    static_pc: torch.Tensor,
    moving_pc: torch.Tensor,
    k: int = 8,
    beta: float = 7.0,
    lengths: torch.Tensor | None = None,
) -> MeshMotionEstimate:
    """Displacement of Gaussian centres interpolated from the K nearest mesh points (no gradient).

    Per Gaussian: adaptive radius r = sqrt(mean_k d²) + 1e-6; neighbours with d² ≤ r² get weight
    exp(−β·d²/r²), the others 0; weights are divided by (Σ + 1e-8); the estimate is the weighted
    sum of the neighbours' motion `moving_pc − static_pc`. Used by the encoder (on the sampled
    Gaussians) and as the target of the training xyz loss (on all Gaussians, spec §6.1).

    Args:
        gs_xyz: (B, N, 3) Gaussian centres (padded rows allowed, see `lengths`).
        static_pc: (B, P, 3) mesh points at the canonical frame.
        moving_pc: (B, T, P, 3) the same points in every frame.
        k, beta: neighbours and sharpness (upstream 8 and 7.0).
        lengths: (B,) valid Gaussian rows per object; None = all.
    Returns:
        MeshMotionEstimate (deltas (B, T, N, 3), valid (B, N), knn_idx, knn_sq_dists, weights).
    """
    if gs_xyz.ndim != 3 or gs_xyz.shape[-1] != 3:
        raise ValueError(f"gs_xyz must have shape (B, N, 3), got {tuple(gs_xyz.shape)}")
    if static_pc.ndim != 3 or static_pc.shape[-1] != 3 or static_pc.shape[0] != gs_xyz.shape[0]:
        raise ValueError(f"static_pc must have shape (B={gs_xyz.shape[0]}, P, 3), got {tuple(static_pc.shape)}")
    B, N, _ = gs_xyz.shape
    P = static_pc.shape[1]
    if moving_pc.ndim != 4 or moving_pc.shape[0] != B or moving_pc.shape[2:] != (P, 3):
        raise ValueError(f"moving_pc must have shape (B={B}, T, P={P}, 3), got {tuple(moving_pc.shape)}")
    T = moving_pc.shape[1]
    valid = torch.ones(B, N, dtype=torch.bool, device=gs_xyz.device)
    if lengths is not None:
        lengths = torch.as_tensor(lengths, device=gs_xyz.device).reshape(-1)
        if lengths.numel() != B:
            raise ValueError(f"lengths must have one entry per object ({B}), got {lengths.numel()}")
        valid = torch.arange(N, device=gs_xyz.device)[None, :] < lengths[:, None]

    sq, idx = knn_points(gs_xyz, static_pc, k)  # (B, N, K) each
    radius = sq.mean(dim=-1).sqrt() + RADIUS_EPS  # (B, N)
    r2 = radius[..., None] ** 2
    weights = torch.exp(-beta * sq / r2) * (sq <= r2).to(sq.dtype)
    weights = weights * valid[..., None].to(sq.dtype)
    weights = weights / (weights.sum(dim=-1, keepdim=True) + WEIGHT_EPS)

    flat = idx.reshape(B, 1, N * k, 1)
    nb_moving = torch.gather(moving_pc, 2, flat.expand(B, T, N * k, 3)).reshape(B, T, N, k, 3)
    nb_static = torch.gather(static_pc, 1, flat[:, 0].expand(B, N * k, 3)).reshape(B, 1, N, k, 3)
    deltas = (weights[:, None, :, :, None] * (nb_moving - nb_static)).sum(dim=3)  # (B, T, N, 3)
    return MeshMotionEstimate(deltas=deltas, valid=valid, knn_idx=idx, knn_sq_dists=sq, weights=weights)


def xyz_interpolation_loss(pred_xyz: torch.Tensor, estimate: MeshMotionEstimate) -> torch.Tensor:
    """Training xyz loss (spec §6.1): mean |pred − estimate| over valid Gaussians, frames and xyz.

    Args:
        pred_xyz: (B, T, N, 3) predicted xyz deltas (decoder channels 0:3).
        estimate: `interpolate_mesh_motion` result for the same (padded) Gaussians.
    """
    if pred_xyz.shape != estimate.deltas.shape:
        raise ValueError(f"pred_xyz has shape {tuple(pred_xyz.shape)}, the estimate {tuple(estimate.deltas.shape)}")
    mask = estimate.valid[:, None, :, None].to(pred_xyz.dtype)  # (B, 1, N, 1)
    count = estimate.valid.sum() * pred_xyz.shape[1] * 3
    return ((pred_xyz - estimate.deltas).abs() * mask).sum() / count.clamp_min(1)


# ---------------------------------------------------------------------------------------------
# Blocks
# ---------------------------------------------------------------------------------------------


class PreNorm(nn.Module):
    """No-affine LayerNorm (eps 1e-6) of the input, and of the context if `context_dim`, then `fn`."""

    def __init__(self, dim: int, fn: nn.Module, context_dim: int | None = None):
        super().__init__()
        self.fn = fn
        self.norm = nn.LayerNorm(dim, eps=1e-6, elementwise_affine=False)
        self.norm_context = nn.LayerNorm(context_dim, eps=1e-6, elementwise_affine=False) if context_dim else None

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None, **kwargs) -> torch.Tensor:
        if self.norm_context is not None:
            kwargs["context"] = self.norm_context(context)
        return self.fn(self.norm(x), **kwargs)


def _drop_path(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Stochastic depth: zero whole samples (dim 0) with probability p, rescale the rest."""
    if p == 0.0 or not training:
        return x
    keep = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(1.0 - p)
    return x * keep / (1.0 - p)


def _cross_attention(dim: int, heads: int) -> MultiHeadAttention:
    # upstream Attention: to_q / to_kv without bias, to_out with bias; self-attention uses to_kv on x.
    return MultiHeadAttention(dim, heads, ctx_channels=dim, type="cross", qkv_bias=False, out_bias=True)


def _round_up(n: int, m: int) -> int:
    return (n + m - 1) // m * m


# ---------------------------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------------------------


class VariationFieldVAE(nn.Module):
    """Motion VAE (upstream `GSKLTemporalVariationalAutoEncoder`), checkpoint compatible.

    Build with the upstream keyword arguments (`VariationFieldVAE(**OFFICIAL_CONFIG)`) or a
    `gvf.config.MotionVAEConfig` (its defaults are the official configuration).
    """

    def __init__(self, config: MotionVAEConfig | None = None, **kwargs):
        super().__init__()
        self.config = cfg = model_config(MotionVAEConfig, config, kwargs, "VariationFieldVAE")
        dim, heads = cfg.dim, cfg.heads
        self.dim, self.heads, self.head_dim = dim, heads, cfg.head_dim
        self.num_inputs, self.num_latents, self.num_timesteps = cfg.num_inputs, cfg.num_latents, cfg.num_timesteps
        self.chunk_size, self.knn_k, self.beta = cfg.chunk_size, cfg.knn_k, cfg.beta
        self.use_checkpoint, self.drop_path = cfg.use_checkpoint, cfg.drop_path
        # Width of the folded values in the fast decoder (a speed knob, not part of the model):
        # None = the head width (equal q/v widths select the fused FlashAttention-style kernels of
        # SDPA, CPU included); an int >= output_dim (e.g. 16) moves narrower values through
        # kernels that accept unequal widths (memory-efficient attention on CUDA).
        self.fold_value_width: int | None = None

        # Encoder: one cross-attention of the sampled Gaussians to all mesh points, then a feed-forward.
        self.cross_attend_blocks = nn.ModuleList([
            PreNorm(dim, _cross_attention(dim, heads), context_dim=dim),
            PreNorm(dim, GEGLUFeedForward(dim)),
        ])
        self.input_embedding = nn.Sequential(nn.Linear(cfg.input_dim, dim), nn.LayerNorm(dim, elementwise_affine=False))
        self.gs_embedding = nn.Sequential(nn.Linear(cfg.gs_dim, dim), nn.LayerNorm(dim, elementwise_affine=False))
        self.position_encoding = nn.Sequential(PointEmbed(dim), nn.LayerNorm(dim, elementwise_affine=False))

        # Decoder latent stack; with weight tying every layer is the same pair of modules (upstream cache_fn).
        self.layers = nn.ModuleList()
        shared = None
        for _ in range(cfg.depth):
            if shared is None or not cfg.weight_tie_layers:
                shared = nn.ModuleList([PreNorm(dim, _cross_attention(dim, heads)), PreNorm(dim, GEGLUFeedForward(dim))])
            self.layers.append(shared)

        self.decoder_cross_attn = PreNorm(cfg.queries_dim, _cross_attention(dim, heads), context_dim=dim)
        self.decoder_ff = PreNorm(cfg.queries_dim, GEGLUFeedForward(cfg.queries_dim)) if cfg.decoder_ff else None
        self.to_outputs = nn.Linear(cfg.queries_dim, cfg.output_dim) if cfg.output_dim is not None else nn.Identity()

        self.proj = nn.Linear(cfg.latent_dim, dim)
        self.mean_fc = nn.Linear(dim, cfg.latent_dim)
        self.logvar_fc = nn.Linear(dim, cfg.latent_dim)

        self.initialize_weights()

    def initialize_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        # The decoder starts by predicting zero deltas (upstream zero-initialises the head).
        if isinstance(self.to_outputs, nn.Linear):
            nn.init.zeros_(self.to_outputs.weight)
            nn.init.zeros_(self.to_outputs.bias)

    # -----------------------------------------------------------------------------------------
    # Encoder
    # -----------------------------------------------------------------------------------------

    def _check_gaussians(self, static_gs, lengths, B: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        """list[(N_b, C)] or (B, N, C) [+ lengths] -> padded (B, Nmax, C), lengths (B,) int64."""
        C = self.config.gs_dim
        if isinstance(static_gs, (list, tuple)):
            if lengths is not None:
                raise ValueError("lengths is only used with a padded (B, N, C) Gaussian tensor, not with a list")
            for i, g in enumerate(static_gs):
                if g.ndim != 2 or g.shape[1] != C:
                    raise ValueError(f"static_gs[{i}] must have shape (N, {C}), got {tuple(g.shape)}")
            padded, lengths = pad_tensor14(static_gs) if C == 14 else _pad_rows(static_gs)
        else:
            padded = static_gs
            if padded.ndim != 3 or padded.shape[-1] != C:
                raise ValueError(f"static_gs must be a list of (N, {C}) tensors or a (B, N, {C}) tensor, got {tuple(padded.shape)}")
            if lengths is None:
                lengths = torch.full((padded.shape[0],), padded.shape[1], dtype=torch.int64)
            lengths = torch.as_tensor(lengths).reshape(-1).to(torch.int64)
        if padded.shape[0] != B or lengths.numel() != B:
            raise ValueError(f"static_gs holds {padded.shape[0]} objects, the point clouds {B}")
        return padded.to(device), lengths.to(device)

    def encode(
        self,
        static_pc: torch.Tensor,
        delta_pc: torch.Tensor,
        static_gs: list[torch.Tensor] | torch.Tensor,
        lengths: torch.Tensor | None = None,
        fps_idx: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        noise: torch.Tensor | None = None,
        fps_start: int | None = 0,
        backend: str | None = None,
    ) -> MotionPosterior:
        """Encode per-frame motion into posterior latents.

        Args:
            static_pc: (B, P, 3) mesh surface points at the canonical frame; P must equal num_inputs.
            delta_pc: (B, T, P, 3) displacement of those points in each frame.
            static_gs: list of (N_b, 14) canonical Gaussian rows, or padded (B, N, 14) with `lengths`.
            lengths: (B,) valid rows of a padded `static_gs`.
            fps_idx: optional (B, num_latents) int64 per-object row indices of the sampled Gaussians
                (e.g. stored with precomputed latents); None runs farthest point sampling.
            generator: RNG for the posterior noise (and the FPS start if `fps_start` is None); the
                noise is drawn as float32 on the generator's device (CPU by default), like upstream.
            noise: (B·T, num_latents, latent_dim) standard-normal noise to use instead of drawing.
            fps_start: FPS start row of every object (0 = deterministic, reproduces the parity
                fixtures); None = random start from `generator` (upstream behaviour).
            backend: attention backend (see `gvf.nn.attention`).
        Returns:
            MotionPosterior (mean/logvar/z/noise (B·T, L, C_z), kl (B·T,), fps_idx (B, L),
            fps_gaussians (B, L, 14), est_deltas (B, T, L, 3)).
        """
        if static_pc.ndim != 3 or static_pc.shape[-1] != 3:
            raise ValueError(f"static_pc must have shape (B, P, 3), got {tuple(static_pc.shape)}")
        B, P, _ = static_pc.shape
        if P != self.num_inputs:
            raise ValueError(f"static_pc has {P} points per object; this model was built for num_inputs={self.num_inputs}")
        if delta_pc.ndim != 4 or delta_pc.shape[0] != B or delta_pc.shape[2:] != (P, 3):
            raise ValueError(f"delta_pc must have shape (B={B}, T, P={P}, 3), got {tuple(delta_pc.shape)}")
        T, L = delta_pc.shape[1], self.num_latents
        gs, lengths = self._check_gaussians(static_gs, lengths, B, static_pc.device)
        if int(lengths.min()) < L:
            raise ValueError(f"every object needs at least num_latents={L} Gaussians, got counts {lengths.tolist()}")

        # 1. farthest point sampling of the Gaussian centres
        if fps_idx is None:
            fps_idx = farthest_point_sampling(gs[..., :3], L, lengths=lengths, start_idx=fps_start, generator=generator)
        else:
            fps_idx = torch.as_tensor(fps_idx, device=gs.device).to(torch.int64)
            if fps_idx.shape != (B, L):
                raise ValueError(f"fps_idx must have shape (B={B}, num_latents={L}), got {tuple(fps_idx.shape)}")
            if bool((fps_idx < 0).any()) or bool((fps_idx >= lengths[:, None]).any()):
                raise ValueError("fps_idx holds row indices outside the valid Gaussians of their object")
        sampled = torch.gather(gs, 1, fps_idx[..., None].expand(B, L, gs.shape[-1]))  # (B, L, 14)
        xyz = sampled[..., :3]

        # 2. displacement of the sampled Gaussians from the mesh motion
        moving_pc = delta_pc + static_pc[:, None]
        est = interpolate_mesh_motion(xyz, static_pc, moving_pc, self.knn_k, self.beta).deltas  # (B, T, L, 3)

        # 3. tokens: displacement embedding + position embedding (shared by all frames)
        C = self.dim
        queries = (self.input_embedding(est) + self.position_encoding(xyz)[:, None]).reshape(B * T, L, C)
        context = (self.input_embedding(delta_pc) + self.position_encoding(static_pc)[:, None]).reshape(B * T, P, C)
        cross_attn, cross_ff = self.cross_attend_blocks
        x = cross_attn(queries, context=context, backend=backend) + queries
        x = cross_ff(x) + x

        # 4. posterior
        mean, logvar = self.mean_fc(x), self.logvar_fc(x).clamp(*LOGVAR_RANGE)  # (B·T, L, C_z)
        if noise is None:
            noise = _standard_normal(mean, generator)
        elif noise.shape != mean.shape:
            raise ValueError(f"noise must have shape {tuple(mean.shape)}, got {tuple(noise.shape)}")
        noise = noise.to(mean.device)
        z = mean + torch.exp(0.5 * logvar) * noise
        m32, lv32 = (mean.float(), logvar.float()) if mean.dtype in (torch.float16, torch.bfloat16) else (mean, logvar)
        kl = 0.5 * torch.mean(m32.pow(2) + torch.exp(lv32) - 1.0 - lv32, dim=[1, 2])
        return MotionPosterior(mean=mean, logvar=logvar, z=z, noise=noise, kl=kl, fps_idx=fps_idx, fps_gaussians=sampled, est_deltas=est)

    # -----------------------------------------------------------------------------------------
    # Decoder
    # -----------------------------------------------------------------------------------------

    def decode_latents(self, z: torch.Tensor, backend: str | None = None) -> torch.Tensor:
        """proj + the latent self-attention stack: (B·T, L, C_z) -> (B·T, L, C), the decoder context."""
        x = self.proj(z)
        for self_attn, self_ff in self.layers:
            x = _drop_path(self_attn(x, backend=backend), self.drop_path, self.training) + x
            x = _drop_path(self_ff(x), self.drop_path, self.training) + x
        return x

    def _embed_queries(self, queries: torch.Tensor) -> torch.Tensor:
        """(B, Q, 14) Gaussian rows -> (B, Q, C): row embedding + point embedding of the xyz."""
        return self.gs_embedding(queries) + self.position_encoding(queries[..., :3])

    def _chunk_reference(self, queries: torch.Tensor, context: torch.Tensor, T: int, backend: str | None) -> torch.Tensor:
        """Upstream computation of one chunk: (B, Qc, 14), (B·T, L, C) -> (B, T, Qc, O)."""
        B, Qc, _ = queries.shape
        emb = self._embed_queries(queries)
        emb = emb[:, None].expand(B, T, Qc, emb.shape[-1]).reshape(B * T, Qc, -1)  # the same queries in every frame
        out = self.decoder_cross_attn(emb, context=context, backend=backend)
        if self.decoder_ff is not None:
            out = out + self.decoder_ff(out)
        out = self.to_outputs(out)
        return out.reshape(B, T, Qc, -1)

    def _folded_head(self, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """to_outputs ∘ to_out as one map: weight (O, H, D) in `dtype`, bias (O,) in the parameter dtype."""
        to_out = self.decoder_cross_attn.fn.to_out
        w_out, b_out = self.to_outputs.weight, self.to_outputs.bias
        with torch.autocast(device_type=w_out.device.type, enabled=False):
            weight = w_out @ to_out.weight  # (O, C)
            bias = w_out @ to_out.bias + b_out if to_out.bias is not None else b_out
        return weight.reshape(-1, self.heads, self.head_dim).to(dtype), bias

    def _value_width(self, out_dim: int) -> int:
        if self.fold_value_width is None:
            return max(self.head_dim, _round_up(out_dim, 8))
        if self.fold_value_width < out_dim:
            raise ValueError(f"fold_value_width ({self.fold_value_width}) must be at least output_dim ({out_dim})")
        return int(self.fold_value_width)

    def _chunk_fast(
        self,
        queries: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        bias: torch.Tensor,
        out_dim: int,
        backend: str,
    ) -> torch.Tensor:
        """Folded computation of one chunk: (B, Qc, 14), k (B, T, L, H, D), folded v (B, T, L, H, W)
        -> (B, T, Qc, O) in float32 (float64 for float64 inputs)."""
        B, Qc, _ = queries.shape
        T, H, D = k.shape[1], self.heads, self.head_dim
        attn = self.decoder_cross_attn.fn
        q = attn.to_q(self.decoder_cross_attn.norm(self._embed_queries(queries))).reshape(B, Qc, H, D)  # once, not per frame
        outs = []
        for b in range(B):
            # the frames share q: a stride-0 view, never copied by us
            o = attention(q[b].expand(T, Qc, H, D), k[b], v[b], backend=backend)  # (T, Qc, H, W)
            acc = torch.float32 if o.dtype in (torch.float16, torch.bfloat16) else o.dtype
            outs.append(o[..., :out_dim].sum(dim=2, dtype=acc) + bias.to(acc))  # heads summed: (T, Qc, O), padding never read
        return torch.stack(outs)

    def decode(
        self,
        z: torch.Tensor,
        queries: torch.Tensor,
        num_frames: int | None = None,
        *,
        fast: bool = True,
        backend: str | None = None,
        chunk_size: int | None = None,
    ) -> torch.Tensor:
        """Decode per-Gaussian deltas for every frame.

        Args:
            z: (B·T, L, C_z) latents (row b·T + t) or (B, T, L, C_z).
            queries: (B, Q, 14) (padded) canonical Gaussian rows, raw input layout; padding rows are
                decoded like others and never influence real rows.
            num_frames: T; None infers it from z and B.
            fast: folded/shared-query path (default) or the plain upstream computation.
            backend: attention backend (see `gvf.nn.attention`).
            chunk_size: queries per chunk (default `self.chunk_size`); the result does not depend on it.
        Returns:
            (B, T, Q, O) deltas in the output channel order (xyz, scale, rotation, SH-DC, opacity).
            Half-precision computations (autocast) return float32, like the upstream Accelerate
            wrapper does.
        """
        if queries.ndim != 3 or queries.shape[-1] != self.config.gs_dim:
            raise ValueError(f"queries must have shape (B, Q, {self.config.gs_dim}), got {tuple(queries.shape)}")
        B, Q, _ = queries.shape
        if z.ndim == 4:
            if z.shape[0] != B:
                raise ValueError(f"z has {z.shape[0]} objects, queries {B}")
            if num_frames is not None and num_frames != z.shape[1]:
                raise ValueError(f"num_frames={num_frames} but z holds {z.shape[1]} frames")
            num_frames = z.shape[1]
            z = z.reshape(B * num_frames, *z.shape[2:])
        if z.ndim != 3 or z.shape[-1] != self.config.latent_dim:
            raise ValueError(f"z must have shape (B·T, L, {self.config.latent_dim}), got {tuple(z.shape)}")
        if num_frames is None:
            if z.shape[0] % B:
                raise ValueError(f"z has {z.shape[0]} rows, not a multiple of the {B} query objects")
            num_frames = z.shape[0] // B
        T = int(num_frames)
        if z.shape[0] != B * T:
            raise ValueError(f"z has {z.shape[0]} rows, expected B·T = {B}·{T}")
        chunk = int(chunk_size or self.chunk_size)

        context = self.decode_latents(z, backend=backend)  # (B·T, L, C)
        use_fast = fast and self.decoder_ff is None and isinstance(self.to_outputs, nn.Linear)
        ckpt = self.use_checkpoint and torch.is_grad_enabled()

        if use_fast:
            attn = self.decoder_cross_attn.fn
            k, v = attn.project_kv(self.decoder_cross_attn.norm_context(context))  # (B·T, L, H, D)
            weight, bias = self._folded_head(v.dtype)
            O = weight.shape[0]
            name = resolve_backend(k, backend)
            width = self._value_width(O)
            if name == "flash_attn" and width != self.head_dim:
                name = "sdpa"  # FlashAttention needs equal q/v widths
            v = torch.einsum("nlhd,ohd->nlho", v, weight)  # values mapped to output channels, per head
            v = F.pad(v, (0, width - O))
            L = k.shape[1]
            k = k.reshape(B, T, L, self.heads, self.head_dim)
            v = v.reshape(B, T, L, self.heads, width)

            def run(qc):
                return self._chunk_fast(qc, k, v, bias, O, name)
        else:

            def run(qc):
                return self._chunk_reference(qc, context, T, backend)

        outs = []
        for s in range(0, Q, chunk):
            qc = queries[:, s : s + chunk]
            outs.append(torch.utils.checkpoint.checkpoint(run, qc, use_reentrant=False) if ckpt else run(qc))
        out = outs[0] if len(outs) == 1 else torch.cat(outs, dim=2)
        if out.dtype in (torch.float16, torch.bfloat16):
            out = out.float()
        return out

    def forward(
        self,
        static_gs: list[torch.Tensor] | torch.Tensor,
        static_pc: torch.Tensor,
        delta_pc: torch.Tensor,
        lengths: torch.Tensor | None = None,
        fps_idx: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        noise: torch.Tensor | None = None,
        fast: bool = True,
    ) -> dict:
        """encode -> pad the Gaussians -> decode every Gaussian (upstream `forward`).

        Returns:
            dict(logits (B, T, Nmax, O), kl (B·T,), posterior MotionPosterior, lengths (B,)).
        """
        posterior = self.encode(static_pc, delta_pc, static_gs, lengths=lengths, fps_idx=fps_idx, generator=generator, noise=noise)
        padded, lengths = self._check_gaussians(static_gs, lengths, static_pc.shape[0], static_pc.device)
        logits = self.decode(posterior.z, padded, num_frames=delta_pc.shape[1], fast=fast)
        return {"logits": logits, "kl": posterior.kl, "posterior": posterior, "lengths": lengths}


def _pad_rows(items: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero-pad (N_b, C) tensors for gs_dim != 14 (the 14-channel layout uses `pad_tensor14`)."""
    lengths = torch.tensor([t.shape[0] for t in items], dtype=torch.int64, device=items[0].device)
    n = int(lengths.max())
    return torch.stack([F.pad(t, (0, 0, 0, n - t.shape[0])) for t in items]), lengths


# The released checkpoint's configuration (configs/vae.yml `model` == configs/diffusion.yml
# `motion_vae`, spec §2.1) with the inference KNN settings; num_timesteps does not affect weights.
OFFICIAL_CONFIG = asdict(MotionVAEConfig())
