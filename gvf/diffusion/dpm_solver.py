"""DPM-Solver++ (data prediction, order 2) with the two-scale classifier-free guidance of GVF.

Follows the DPM-Solver v2 reference algorithm as the upstream sampler uses it (Lu et al. 2022,
"DPM-Solver++"): the network's v output is turned into a noise prediction ε = α_t·v + σ_t·x, then
into a data prediction x0 = (x − σ_t·ε)/α_t, and the ODE is integrated in half-logSNR λ.

* `multistep`: time-uniform grid from t_start to t_end, one first-order step then second-order
  multistep updates (`lower_order_final` lowers the order of the last steps when steps < 10);
  NFE = steps.
* `adaptive`: "DPM-Solver-12": each trial step pairs a first-order and a second-order singlestep
  update (r1 = 0.5) sharing the first evaluation, accepts when the scaled RMS difference E ≤ 1 and
  resizes h ← min(θ·h·E^(−1/2), λ_end − λ_s); NFE = 2 per trial (rejected trials included).

Guidance (`guidance_scale` s1, `guidance_scale2` s2): one call on a batch of 3 —
[full-unconditional (image features and static latent zeroed), unconditional (image features
zeroed), conditional] — combined in ε-space as e_fu + s1·(e_u − e_fu) + s2·(e_c − e_u). With
s1 = s2 = 1 a single conditional call is made. So s1 weighs the static-Gaussian condition and s2
the video condition.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Callable

import torch
from tqdm.auto import tqdm

from gvf.diffusion.schedule import GaussianDiffusion

logger = logging.getLogger(__name__)

IMAGE_KEY = "cond_images"  # zeroed in the unconditional branches
STATIC_KEY = "static_latent"  # zeroed in the full-unconditional branch


class GuidedNoiseModel:
    """ε(x, t_continuous) from a network `model(x, t_model, **cond)`, with optional guidance.

    If the network has `precompute_conditions` (the `TemporalDiT`), the condition cache is built
    once here (for the whole guidance batch) and reused by every call.

    Args:
        model: the network; returns v, ε or x0 (see `model_type`) shaped like x.
        schedule: the `GaussianDiffusion` (continuous view and model-time map).
        condition: keyword tensors of the conditional call, batch-first (B, ...).
        model_type: "v", "eps" or "xstart" (default: schedule.predict_type).
        guidance_scale, guidance_scale2: s1, s2 (see module docstring).
        unconditional: the unconditional inputs (default: `condition` with cond_images zeroed);
            the full-unconditional ones are these with static_latent zeroed as well.
        autocast_dtype: run the network (and build its cache) under torch.autocast in this dtype.
    """

    def __init__(
        self,
        model: Callable[..., torch.Tensor],
        schedule: GaussianDiffusion,
        condition: dict[str, torch.Tensor],
        *,
        model_type: str | None = None,
        guidance_scale: float = 1.0,
        guidance_scale2: float = 1.0,
        unconditional: dict[str, torch.Tensor] | None = None,
        autocast_dtype: torch.dtype | None = None,
    ):
        self.model, self.schedule = model, schedule
        self.model_type = {"x_start": "xstart"}.get(model_type, model_type) or schedule.predict_type
        if self.model_type not in ("v", "eps", "xstart"):
            raise ValueError(f"model_type must be 'v', 'eps' or 'xstart', got {self.model_type!r}")
        self.s1, self.s2 = float(guidance_scale), float(guidance_scale2)
        self.guided = not (self.s1 == 1.0 and self.s2 == 1.0)
        self.autocast_dtype = autocast_dtype
        self.nfe = 0
        if self.guided:
            if unconditional is None:
                if IMAGE_KEY not in condition:
                    raise ValueError(f"guidance needs a '{IMAGE_KEY}' condition or an explicit `unconditional`")
                unconditional = {**condition, IMAGE_KEY: torch.zeros_like(condition[IMAGE_KEY])}
            if STATIC_KEY not in unconditional:
                raise ValueError(f"guidance needs a '{STATIC_KEY}' condition (zeroed in the full-unconditional branch)")
            full_uncond = {**unconditional, STATIC_KEY: torch.zeros_like(unconditional[STATIC_KEY])}
            inputs = {k: torch.cat([full_uncond[k], unconditional[k], condition[k]]) for k in condition}
        else:
            inputs = dict(condition)
        self._cache = None
        self._inputs = inputs
        if hasattr(model, "precompute_conditions"):
            with torch.no_grad(), self._autocast(next(iter(inputs.values())).device):
                self._cache = model.precompute_conditions(**inputs)

    def _autocast(self, device: torch.device):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=device.type, dtype=self.autocast_dtype)

    def _call(self, x: torch.Tensor, t_model: torch.Tensor) -> torch.Tensor:
        self.nfe += 1
        with self._autocast(x.device):
            if self._cache is not None:
                out = self.model(x, t_model, cache=self._cache)
            else:
                out = self.model(x, t_model, **self._inputs)
        return out.to(x.dtype)

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x (B, ...) at continuous time t (scalar tensor) -> ε (B, ...)."""
        x_in = torch.cat([x] * 3) if self.guided else x
        t_in = t.reshape(-1).expand(x_in.shape[0])
        out = self._call(x_in, self.schedule.model_time(t_in))
        if out.shape != x_in.shape:
            raise ValueError(f"model output {tuple(out.shape)} must have the shape of its input {tuple(x_in.shape)}")
        shape = (-1,) + (1,) * (x.ndim - 1)
        if self.model_type == "eps":
            eps = out
        else:
            alpha_t = self.schedule.marginal_alpha(t_in).reshape(shape)
            sigma_t = self.schedule.marginal_sigma(t_in).reshape(shape)
            eps = alpha_t * out + sigma_t * x_in if self.model_type == "v" else (x_in - alpha_t * out) / sigma_t
        if not self.guided:
            return eps
        e_fu, e_u, e_c = eps.chunk(3)
        return e_fu + self.s1 * (e_u - e_fu) + self.s2 * (e_c - e_u)


class DPMSolverPP:
    """DPM-Solver++ on a `GaussianDiffusion`'s continuous schedule, driving an ε-model.

    Args:
        noise_model: ε(x, t) with t a scalar continuous-time tensor (e.g. `GuidedNoiseModel`).
        schedule: the `GaussianDiffusion`.
    """

    def __init__(self, noise_model: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], schedule: GaussianDiffusion):
        self.noise_model, self.ns = noise_model, schedule

    def data_prediction(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x0 = (x − σ_t·ε)/α_t (no thresholding)."""
        eps = self.noise_model(x, t)
        return (x - self.ns.marginal_sigma(t) * eps) / self.ns.marginal_alpha(t)

    def first_order_update(self, x: torch.Tensor, s: torch.Tensor, t: torch.Tensor, x0_s: torch.Tensor) -> torch.Tensor:
        """DPM-Solver++-1 (DDIM) from s to t given x0 predicted at s."""
        ns = self.ns
        h = ns.marginal_lambda(t) - ns.marginal_lambda(s)
        alpha_t = torch.exp(ns.marginal_log_alpha(t))
        return ns.marginal_sigma(t) / ns.marginal_sigma(s) * x - alpha_t * torch.expm1(-h) * x0_s

    def second_order_singlestep_update(
        self, x: torch.Tensor, s: torch.Tensor, t: torch.Tensor, x0_s: torch.Tensor, r1: float = 0.5
    ) -> torch.Tensor:
        """Singlestep DPM-Solver++-2 from s to t: one extra evaluation at λ_s + r1·h."""
        ns = self.ns
        lambda_s = ns.marginal_lambda(s)
        h = ns.marginal_lambda(t) - lambda_s
        s1 = ns.inverse_lambda(lambda_s + r1 * h)
        sigma_s, sigma_s1, sigma_t = ns.marginal_sigma(s), ns.marginal_sigma(s1), ns.marginal_sigma(t)
        alpha_s1, alpha_t = torch.exp(ns.marginal_log_alpha(s1)), torch.exp(ns.marginal_log_alpha(t))
        phi_11, phi_1 = torch.expm1(-r1 * h), torch.expm1(-h)
        x_s1 = sigma_s1 / sigma_s * x - alpha_s1 * phi_11 * x0_s
        x0_s1 = self.data_prediction(x_s1, s1)
        return sigma_t / sigma_s * x - alpha_t * phi_1 * x0_s - 0.5 / r1 * (alpha_t * phi_1) * (x0_s1 - x0_s)

    def second_order_multistep_update(
        self, x: torch.Tensor, x0_prev: tuple[torch.Tensor, torch.Tensor], t_prev: tuple[torch.Tensor, torch.Tensor], t: torch.Tensor
    ) -> torch.Tensor:
        """Multistep DPM-Solver++-2 to t from the two previous (x0, time) pairs (older first)."""
        ns = self.ns
        (m1, m0), (t1, t0) = x0_prev, t_prev
        lambda_1, lambda_0, lambda_t = ns.marginal_lambda(t1), ns.marginal_lambda(t0), ns.marginal_lambda(t)
        alpha_t = torch.exp(ns.marginal_log_alpha(t))
        h_0, h = lambda_0 - lambda_1, lambda_t - lambda_0
        d1 = 1.0 / (h_0 / h) * (m0 - m1)
        phi_1 = torch.expm1(-h)
        return ns.marginal_sigma(t) / ns.marginal_sigma(t0) * x - alpha_t * phi_1 * m0 - 0.5 * (alpha_t * phi_1) * d1

    def time_steps(self, skip_type: str, t_start: float, t_end: float, steps: int, x: torch.Tensor) -> torch.Tensor:
        """The steps+1 grid times, in x's dtype."""
        if skip_type == "time_uniform":
            return torch.linspace(t_start, t_end, steps + 1, dtype=x.dtype).to(x.device)
        if skip_type == "time_quadratic":
            return torch.linspace(t_start**0.5, t_end**0.5, steps + 1, dtype=x.dtype).pow(2).to(x.device)
        if skip_type == "logSNR":
            ends = self.ns.marginal_lambda(torch.tensor([t_start, t_end], dtype=x.dtype))
            return self.ns.inverse_lambda(torch.linspace(ends[0].item(), ends[1].item(), steps + 1, dtype=x.dtype)).to(x.device)
        raise ValueError(f"skip_type must be 'time_uniform', 'time_quadratic' or 'logSNR', got {skip_type!r}")

    def multistep(
        self,
        x: torch.Tensor,
        steps: int = 100,
        t_start: float = 1.0,
        t_end: float = 1e-3,
        order: int = 2,
        skip_type: str = "time_uniform",
        lower_order_final: bool = True,
        progress: bool = True,
    ) -> torch.Tensor:
        """Multistep DPM-Solver++ of order 1 or 2 from t_start to t_end; `steps` evaluations."""
        if order not in (1, 2):
            raise ValueError(f"multistep order must be 1 or 2, got {order}")
        if steps < order:
            raise ValueError(f"steps ({steps}) must be at least the order ({order})")
        times = self.time_steps(skip_type, t_start, t_end, steps, x)
        t_prev = [times[0]]
        x0_prev = [self.data_prediction(x, times[0])]
        for step in tqdm(range(1, steps + 1), desc="DPM-Solver++", disable=not progress, leave=False):
            t = times[step]
            step_order = min(order, step)  # the first step has a single previous point
            if lower_order_final and steps < 10:
                step_order = min(step_order, steps + 1 - step)
            if step_order == 1:
                x = self.first_order_update(x, t_prev[-1], t, x0_prev[-1])
            else:
                x = self.second_order_multistep_update(x, (x0_prev[-2], x0_prev[-1]), (t_prev[-2], t_prev[-1]), t)
            if step < steps:  # no evaluation after the final update
                t_prev, x0_prev = (t_prev + [t])[-order:], (x0_prev + [self.data_prediction(x, t)])[-order:]
        return x

    def adaptive(
        self,
        x: torch.Tensor,
        t_start: float = 1.0,
        t_end: float = 1e-3,
        h_init: float = 0.05,
        atol: float = 0.0078,
        rtol: float = 0.05,
        theta: float = 0.9,
        t_err: float = 1e-5,
        progress: bool = True,
    ) -> torch.Tensor:
        """Adaptive-step DPM-Solver++-12 from t_start to t_end (step size h in half-logSNR)."""
        ns, order = self.ns, 2
        s = torch.full((1,), t_start, dtype=x.dtype, device=x.device)
        lambda_s = ns.marginal_lambda(s)
        lambda_start = lambda_s
        lambda_end = ns.marginal_lambda(torch.full_like(s, t_end))
        h = torch.full_like(s, h_init)
        x_prev = x
        bar = tqdm(total=100, desc="DPM-Solver++ (adaptive, % of logSNR)", disable=not progress, leave=False)
        while torch.abs(s - t_end).mean() > t_err:
            t = ns.inverse_lambda(lambda_s + h)
            x0_s = self.data_prediction(x, s)
            x_lower = self.first_order_update(x, s, t, x0_s)
            x_higher = self.second_order_singlestep_update(x, s, t, x0_s, r1=0.5)
            delta = torch.clamp(rtol * torch.max(x_lower.abs(), x_prev.abs()), min=atol)
            err = ((x_higher - x_lower) / delta).reshape(x.shape[0], -1).square().mean(dim=-1).sqrt().max()
            if err <= 1.0:
                x, s, x_prev = x_higher, t, x_lower
                lambda_s = ns.marginal_lambda(s)
                done = ((lambda_s - lambda_start) / (lambda_end - lambda_start)).item()
                bar.update(max(0, min(100, int(100 * done)) - bar.n))
            # E^(-1/order) is rounded to float32 as in the reference implementation.
            h = torch.min(theta * h * torch.float_power(err, -1.0 / order).to(torch.float32), lambda_end - lambda_s)
        bar.close()
        return x


@torch.no_grad()
def dpm_solver_sample(
    model: Callable[..., torch.Tensor],
    schedule: GaussianDiffusion,
    noise: torch.Tensor,
    condition: dict[str, torch.Tensor],
    *,
    method: str = "multistep",
    steps: int = 100,
    order: int = 2,
    t_start: float = 1.0,
    t_end: float = 1e-3,
    skip_type: str = "time_uniform",
    lower_order_final: bool = True,
    atol: float = 0.0078,
    rtol: float = 0.05,
    h_init: float = 0.05,
    theta: float = 0.9,
    t_err: float = 1e-5,
    guidance_scale: float = 1.0,
    guidance_scale2: float = 1.0,
    unconditional: dict[str, torch.Tensor] | None = None,
    model_type: str | None = None,
    autocast_dtype: torch.dtype | None = None,
    progress: bool = True,
) -> tuple[torch.Tensor, int]:
    """Sample with DPM-Solver++ from `noise` at t_start down to t_end (official: t_end = 1e-3).

    Args:
        model: the network, called as model(x, t_model, **condition) (or with `cache=` for a
            `TemporalDiT`, whose condition cache is built once here).
        schedule: the `GaussianDiffusion` the network was trained with.
        noise: (B, T, N, C) float32/float64 start point.
        condition: batch-first condition tensors, e.g. cond_images (B, T, L, C_img),
            static_latent (B, S, 14), deformation_position_xyz (B, N, 3).
        method: "multistep" (uses `steps`, `order`, `skip_type`, `lower_order_final`) or
            "adaptive" (order 2; uses `atol`, `rtol`, `h_init`, `theta`, `t_err`).
        guidance_scale, guidance_scale2, unconditional: see `GuidedNoiseModel`.
        autocast_dtype: e.g. torch.bfloat16 to run the network under autocast (solver stays fp32).
        progress: show a tqdm bar.
    Returns:
        (sample like `noise`, number of network evaluations).
    """
    if noise.dtype not in (torch.float32, torch.float64):
        raise ValueError(f"noise must be float32 or float64 (the solver state), got {noise.dtype}")
    if not 0 < t_end < t_start <= 1:
        raise ValueError(f"need 0 < t_end < t_start <= 1, got t_start={t_start}, t_end={t_end}")
    for key, value in condition.items():
        if value.shape[0] != noise.shape[0]:
            raise ValueError(f"condition {key!r} has batch {value.shape[0]} but noise has batch {noise.shape[0]}")
    noise_model = GuidedNoiseModel(
        model,
        schedule,
        condition,
        model_type=model_type,
        guidance_scale=guidance_scale,
        guidance_scale2=guidance_scale2,
        unconditional=unconditional,
        autocast_dtype=autocast_dtype,
    )
    solver = DPMSolverPP(noise_model, schedule)
    if method == "multistep":
        x = solver.multistep(noise, steps, t_start, t_end, order, skip_type, lower_order_final, progress)
    elif method == "adaptive":
        if order != 2:
            raise ValueError(f"the adaptive solver is implemented for order 2 only, got {order}")
        x = solver.adaptive(noise, t_start, t_end, h_init, atol, rtol, theta, t_err, progress)
    else:
        raise ValueError(f"method must be 'multistep' or 'adaptive', got {method!r}")
    logger.info("DPM-Solver++ %s: %d network evaluations", method, noise_model.nfe)
    return x, noise_model.nfe
