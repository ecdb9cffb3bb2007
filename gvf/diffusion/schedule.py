"""The Gaussian diffusion schedule shared by the training loss and the sampler.

Discrete view (training, upstream `GaussianDiffusion`): 1000 steps, cosine betas in float64,
`alphas_cumprod` etc. as float64 tables; per-step coefficients are gathered from the float64 tables
and rounded to float32 before they multiply float32 tensors (as upstream). The network predicts
v = sqrt(ᾱ)·ε − sqrt(1−ᾱ)·x0 and is trained with a plain per-sample MSE, the model receiving the
step index as a float.

Continuous view (sampling, upstream DPM-Solver `NoiseScheduleVP('discrete')`): log α_n = ½·Σ log(1−β)
truncated where the half-logSNR λ = log α − log σ falls below −5.1 (the last 4 of the cosine
schedule → 996 entries), placed at t_n = (n+1)/996; log α(t) is their piecewise-linear interpolation,
extrapolated linearly outside. The network sees the continuous time as (t − 1/996)·1000.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable

import torch

from gvf.config import DiffusionConfig

LAMBDA_CLIP = -5.1  # half-logSNR below which the discrete table is truncated (cosine schedule stability)


def cosine_betas(num_steps: int, max_beta: float = 0.999) -> torch.Tensor:
    """β_i = min(1 − ᾱ((i+1)/N)/ᾱ(i/N), max_beta), ᾱ(t) = cos²((t + 0.008)/1.008 · π/2); float64 (N,)."""

    def alpha_bar(t: float) -> float:
        return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

    betas = [min(1 - alpha_bar((i + 1) / num_steps) / alpha_bar(i / num_steps), max_beta) for i in range(num_steps)]
    return torch.tensor(betas, dtype=torch.float64)


def linear_betas(num_steps: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> torch.Tensor:
    """The DDPM linear schedule beta_start … beta_end (scaled to `num_steps`); float64 (N,)."""
    scale = 1000 / num_steps
    return torch.linspace(scale * beta_start, scale * beta_end, num_steps, dtype=torch.float64)


def interpolate(x: torch.Tensor, xp: torch.Tensor, yp: torch.Tensor) -> torch.Tensor:
    """Piecewise-linear f(x) through (xp, yp), xp increasing, extrapolated with the end segments.

    Args: x (M,), xp and yp (K,) with K >= 2. Returns (M,).
    """
    K = xp.shape[0]
    # A query equal to a knot uses the segment to its left (as the reference implementation).
    start = (torch.searchsorted(xp, x.contiguous(), side="left") - 1).clamp(0, K - 2)
    x0, x1, y0, y1 = xp[start], xp[start + 1], yp[start], yp[start + 1]
    return y0 + (x - x0) * (y1 - y0) / (x1 - x0)


class GaussianDiffusion:
    """Discrete Gaussian diffusion (training) and its continuous VP view (DPM-Solver sampling).

    Args:
        num_timesteps: number of discrete steps N (1000).
        noise_schedule: "cosine" (official) or "linear" (with beta_start, beta_end).
        predict_type: what the network predicts: "v" (official), "eps" or "xstart".
        rescale_timesteps: feed the model step·1000/N (True, official) instead of the step index.
        min_snr: weight the MSE by min(SNR, 5) (upstream option, off in the official config).
    """

    def __init__(
        self,
        num_timesteps: int = 1000,
        noise_schedule: str = "cosine",
        predict_type: str = "v",
        rescale_timesteps: bool = True,
        min_snr: bool = False,
        beta_start: float = 1e-4,
        beta_end: float = 0.02,
    ):
        if noise_schedule == "cosine":
            base_betas = cosine_betas(num_timesteps)
        elif noise_schedule == "linear":
            base_betas = linear_betas(num_timesteps, beta_start, beta_end)
        else:
            raise ValueError(f"noise_schedule must be 'cosine' or 'linear', got {noise_schedule!r}")
        predict_type = "xstart" if predict_type == "x_start" else predict_type  # both spellings accepted
        if predict_type not in ("v", "eps", "xstart"):
            raise ValueError(f"predict_type must be 'v', 'eps' or 'xstart', got {predict_type!r}")
        self.num_timesteps = num_timesteps
        self.noise_schedule = noise_schedule
        self.predict_type = predict_type
        self.rescale_timesteps = rescale_timesteps
        self.min_snr = min_snr
        self.base_betas = base_betas
        # Upstream keeps every step through its respacing wrapper, which re-derives the betas from
        # ᾱ (equal to `base_betas` up to float64 rounding); the sampler is built from these.
        base_cumprod = torch.cumprod(1.0 - base_betas, dim=0)
        prev = torch.cat([base_cumprod.new_ones(1), base_cumprod[:-1]])
        self.betas = 1.0 - base_cumprod / prev
        self.alphas_cumprod = torch.cumprod(1.0 - self.betas, dim=0)
        self.sqrt_alphas_cumprod = self.alphas_cumprod.sqrt()
        self.sqrt_one_minus_alphas_cumprod = (1.0 - self.alphas_cumprod).sqrt()
        self.timestep_map = torch.arange(num_timesteps)
        self._log_alpha64 = self._clipped_log_alpha(self.betas)
        self._device_tables: dict[tuple, torch.Tensor] = {}

    @classmethod
    def from_config(cls, config: DiffusionConfig | None = None, **kwargs) -> "GaussianDiffusion":
        """Build from configs/diffusion.yml `diffusion` (a `gvf.config.DiffusionConfig` or its kwargs).

        Only what the official model uses is implemented: no learned sigma, no KL loss, all steps
        kept. `predict_xstart` (deprecated upstream) is ignored; `rescale_learned_sigmas` and
        `sigma_small` do not change the loss or the sampler without learned sigmas.
        """
        if config is None:
            known = {f.name for f in dataclasses.fields(DiffusionConfig)}
            unknown = sorted(set(kwargs) - known)
            if unknown:
                raise ValueError(f"unknown diffusion option(s): {', '.join(unknown)}; expected some of {', '.join(sorted(known))}")
            config = DiffusionConfig(**kwargs)
        elif kwargs:
            raise ValueError("pass either a DiffusionConfig or keyword arguments, not both")
        if config.learn_sigma or config.use_kl:
            raise ValueError("learned sigmas and the KL loss are not supported (the official model uses neither)")
        if config.timestep_respacing not in ("", str(config.steps)):
            raise ValueError(f"timestep_respacing must be '' (all {config.steps} steps kept), got {config.timestep_respacing!r}")
        return cls(
            config.steps,
            config.noise_schedule,
            config.predict_type,
            config.rescale_timesteps,
            config.min_snr,
            config.beta_start,
            config.beta_end,
        )

    # ----------------------------------------------------------------------------------- discrete
    def _coef(self, table: torch.Tensor, t: torch.Tensor, ndim: int) -> torch.Tensor:
        """table[t] from the float64 table, rounded to float32, shaped (B, 1, ..., 1) for broadcasting."""
        key = (id(table), t.device)
        if key not in self._device_tables:
            self._device_tables[key] = table.to(t.device)
        out = self._device_tables[key][t].float()
        return out.reshape(out.shape + (1,) * (ndim - out.ndim))

    def sample_timesteps(self, batch_size: int, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
        """Uniform integer steps (B,) int64 in [0, N)."""
        if generator is not None and device is not None and torch.device(device) != generator.device:
            t = torch.randint(0, self.num_timesteps, (batch_size,), generator=generator, device=generator.device)
            return t.to(device)
        return torch.randint(0, self.num_timesteps, (batch_size,), generator=generator, device=device)

    def model_time_discrete(self, t: torch.Tensor) -> torch.Tensor:
        """The float time the network receives for integer step t during training."""
        t = self.timestep_map.to(t.device)[t]
        return t.float() * (1000.0 / self.num_timesteps) if self.rescale_timesteps else t

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """x_t = sqrt(ᾱ_t)·x0 + sqrt(1−ᾱ_t)·noise. x0, noise (B, ...) (noise drawn if None); t (B,) int64."""
        noise = torch.randn_like(x0) if noise is None else noise
        if noise.shape != x0.shape:
            raise ValueError(f"noise {tuple(noise.shape)} must have the shape of x0 {tuple(x0.shape)}")
        return self._coef(self.sqrt_alphas_cumprod, t, x0.ndim) * x0 + self._coef(self.sqrt_one_minus_alphas_cumprod, t, x0.ndim) * noise

    def v_target(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """v = sqrt(ᾱ_t)·noise − sqrt(1−ᾱ_t)·x0."""
        return self._coef(self.sqrt_alphas_cumprod, t, x0.ndim) * noise - self._coef(self.sqrt_one_minus_alphas_cumprod, t, x0.ndim) * x0

    def x0_from_v(self, x_t: torch.Tensor, t: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """x0 = sqrt(ᾱ_t)·x_t − sqrt(1−ᾱ_t)·v."""
        return self._coef(self.sqrt_alphas_cumprod, t, x_t.ndim) * x_t - self._coef(self.sqrt_one_minus_alphas_cumprod, t, x_t.ndim) * v

    def eps_from_v(self, x_t: torch.Tensor, t: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """ε = sqrt(ᾱ_t)·v + sqrt(1−ᾱ_t)·x_t."""
        return self._coef(self.sqrt_alphas_cumprod, t, x_t.ndim) * v + self._coef(self.sqrt_one_minus_alphas_cumprod, t, x_t.ndim) * x_t

    def training_loss(
        self,
        model_fn: Callable[..., torch.Tensor],
        x0: torch.Tensor,
        t: torch.Tensor,
        noise: torch.Tensor | None = None,
        model_kwargs: dict | None = None,
        return_terms: bool = False,
    ):
        """Per-sample MSE between the network output and its target (v for the official model).

        Args:
            model_fn: called as model_fn(x_t, model_time (B,) float, **model_kwargs).
            x0: (B, ...) clean latents; t: (B,) int64 steps (see `sample_timesteps`).
            noise: like x0 (drawn with torch.randn_like if None).
            return_terms: also return x_t, target and model output.
        Returns:
            loss (B,), or a dict {"loss", "mse", "x_t", "target", "model_output"} with `return_terms`.
        """
        if t.shape != x0.shape[:1]:
            raise ValueError(f"t must have shape ({x0.shape[0]},), got {tuple(t.shape)}")
        noise = torch.randn_like(x0) if noise is None else noise
        x_t = self.q_sample(x0, t, noise)
        output = model_fn(x_t, self.model_time_discrete(t), **(model_kwargs or {}))
        if self.predict_type == "v":
            target = self.v_target(x0, noise, t)
        else:
            target = noise if self.predict_type == "eps" else x0
        if output.shape != target.shape:
            raise ValueError(f"model output {tuple(output.shape)} must have the shape of x0 {tuple(target.shape)}")
        mse = (target - output).square().mean(dim=tuple(range(1, x0.ndim)))
        loss = mse * self._min_snr_weight(t) if self.min_snr else mse  # official: no weighting
        if return_terms:
            return {"loss": loss, "mse": mse, "x_t": x_t, "target": target, "model_output": output}
        return loss

    def _min_snr_weight(self, t: torch.Tensor) -> torch.Tensor:
        """min(SNR_t, 5) per sample, 1 where SNR is 0 (upstream `min_snr`)."""
        snr = (self._coef(self.sqrt_alphas_cumprod, t, 1) / self._coef(self.sqrt_one_minus_alphas_cumprod, t, 1)) ** 2
        weight = torch.clamp(snr, max=5.0)
        return torch.where(snr == 0, torch.ones_like(weight), weight)

    # --------------------------------------------------------------------------------- continuous
    @staticmethod
    def _clipped_log_alpha(betas: torch.Tensor) -> torch.Tensor:
        log_alpha = 0.5 * torch.log(1.0 - betas).cumsum(dim=0)
        lam = log_alpha - 0.5 * torch.log(1.0 - torch.exp(2.0 * log_alpha))
        drop = int(torch.searchsorted(torch.flip(lam, [0]), torch.tensor(LAMBDA_CLIP, dtype=lam.dtype)))
        return log_alpha[: len(log_alpha) - drop] if drop > 0 else log_alpha

    @property
    def total_N(self) -> int:
        """Length of the clipped continuous table (996 for the official schedule)."""
        return self._log_alpha64.shape[0]

    def discrete_log_alpha_table(self, dtype=torch.float32, device=None) -> tuple[torch.Tensor, torch.Tensor]:
        """(t_table, log_alpha_table), each (total_N,): t_n = (n+1)/total_N and the clipped log α_n,
        computed in float64 and cast to `dtype` (float32 like the official sampler)."""
        key = ("table", dtype, torch.device(device) if device is not None else torch.device("cpu"))
        if key not in self._device_tables:
            t_table = torch.linspace(0.0, 1.0, self.total_N + 1, dtype=dtype)[1:]
            self._device_tables[key] = torch.stack([t_table, self._log_alpha64.to(dtype)]).to(device)
        table = self._device_tables[key]
        return table[0], table[1]

    def marginal_log_alpha(self, t: torch.Tensor) -> torch.Tensor:
        """log α(t) for continuous t (any shape), in t's dtype."""
        t_table, log_alpha = self.discrete_log_alpha_table(t.dtype, t.device)
        return interpolate(t.reshape(-1), t_table, log_alpha).reshape(t.shape)

    def marginal_alpha(self, t: torch.Tensor) -> torch.Tensor:
        return torch.exp(self.marginal_log_alpha(t))

    def marginal_sigma(self, t: torch.Tensor) -> torch.Tensor:
        """σ(t) = sqrt(1 − α(t)²)."""
        return torch.sqrt(1.0 - torch.exp(2.0 * self.marginal_log_alpha(t)))

    def marginal_lambda(self, t: torch.Tensor) -> torch.Tensor:
        """Half-logSNR λ(t) = log α − log σ."""
        log_alpha = self.marginal_log_alpha(t)
        return log_alpha - 0.5 * torch.log(1.0 - torch.exp(2.0 * log_alpha))

    def inverse_lambda(self, lam: torch.Tensor) -> torch.Tensor:
        """The continuous t with λ(t) = lam (interpolated on the table)."""
        t_table, log_alpha_table = self.discrete_log_alpha_table(lam.dtype, lam.device)
        log_alpha = -0.5 * torch.logaddexp(torch.zeros_like(lam), -2.0 * lam)
        t = interpolate(log_alpha.reshape(-1), torch.flip(log_alpha_table, [0]), torch.flip(t_table, [0]))
        return t.reshape(lam.shape)

    def model_time(self, t_continuous: torch.Tensor) -> torch.Tensor:
        """Network time for a continuous time: (t − 1/total_N)·1000 (≈ 1000·n/996 at step n, not n)."""
        return (t_continuous - 1.0 / self.total_N) * 1000.0
