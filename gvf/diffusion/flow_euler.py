"""Rectified-flow Euler sampler with classifier-free guidance inside a time interval (TRELLIS).

The model predicts the velocity v of x_t = (1 − t)·x_0 + (σ_min + (1 − σ_min)·t)·ε; sampling integrates
from t = 1 (noise) to t = 0 with Euler steps on a rescaled grid:

    t_lin = linspace(1, 0, steps + 1)                             (float64)
    t_seq = rescale_t·t_lin / (1 + (rescale_t − 1)·t_lin)        (more steps near t = 1 for rescale_t > 1)
    x ← x − (t − t_prev)·v(x, t)

Guidance (TRELLIS `FlowEulerGuidanceIntervalSampler`): when cfg_interval[0] <= t <= cfg_interval[1]
(inclusive, float64 — with 12 steps and rescale_t 3 the grid point t = 0.5 is exactly on the boundary
and guided), v = (1 + s)·v(x, t, cond) − s·v(x, t, neg_cond), two model calls, cond first; otherwise one
call with cond (cfg_strength 0 also makes one call; upstream makes two with the same result). The
model receives the time as a float32 tensor 1000·t per object.

TRELLIS-image-large (pipeline.json): σ_min 1e-5, rescale_t 3, cfg_interval [0.5, 1]; GVF runs the
sparse-structure stage with 12 steps / cfg 7.5 and the structured-latent stage with 12 steps / cfg 3.
Works for dense tensors (B, ...) and for `SparseTensor`s (B = number of objects).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from gvf.sparse.tensor import SparseTensor

__all__ = ["FlowEulerSampler", "FlowSample", "time_grid"]


def time_grid(steps: int, rescale_t: float = 1.0) -> np.ndarray:
    """(steps + 1,) float64 times from 1 to 0, rescaled (see module docstring)."""
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    if rescale_t <= 0:
        raise ValueError(f"rescale_t must be positive, got {rescale_t}")
    t = np.linspace(1, 0, steps + 1)
    return rescale_t * t / (1 + (rescale_t - 1) * t)


def _batch_size(x) -> int:
    return x.batch_size if isinstance(x, SparseTensor) else x.shape[0]


def _device(x) -> torch.device:
    return x.feats.device if isinstance(x, SparseTensor) else x.device


@dataclass
class FlowSample:
    """Result of `FlowEulerSampler.sample`.

    Attributes:
        samples: the final x (t = 0), same type and shape as the noise.
        t_seq: (steps + 1,) float64 time grid.
        cfg_applied: (steps,) whether guidance was applied at each step.
        nfe: number of model calls.
        pred_x_t, pred_x_0: x after each step and the x_0 prediction of each step
            (x_0 = (1 − σ_min)·x_t − (σ_min + (1 − σ_min)·t)·v); filled only with `return_trajectory`.
    """

    samples: Any
    t_seq: np.ndarray
    cfg_applied: list[bool]
    nfe: int
    pred_x_t: list = field(default_factory=list)
    pred_x_0: list = field(default_factory=list)


@dataclass
class FlowEulerSampler:
    """Euler sampler for rectified-flow models `model(x, t, cond) -> v` with interval CFG.

    Args:
        sigma_min: σ_min of the flow (only enters the x_0 prediction).
    """

    sigma_min: float = 1e-5

    def velocity(
        self,
        model: Callable,
        x,
        t: float,
        cond: torch.Tensor,
        neg_cond: torch.Tensor | None = None,
        cfg_strength: float = 0.0,
        cfg_interval: Sequence[float] = (0.0, 1.0),
        **kwargs,
    ) -> tuple[Any, int, bool]:
        """Guided velocity at time t: returns (v, number of model calls, guidance applied)."""
        guided = neg_cond is not None and cfg_strength != 0 and cfg_interval[0] <= t <= cfg_interval[1]
        v = self._call(model, x, t, cond, **kwargs)
        if not guided:
            return v, 1, False
        v_neg = self._call(model, x, t, neg_cond, **kwargs)
        return (1 + cfg_strength) * v - cfg_strength * v_neg, 2, True

    @staticmethod
    def _call(model: Callable, x, t: float, cond: torch.Tensor, **kwargs):
        B = _batch_size(x)
        # float64 product, then float32 — the time tensor the released models saw
        t_model = torch.tensor([1000 * t] * B, device=_device(x), dtype=torch.float32)
        if cond is not None and cond.shape[0] == 1 and B > 1:
            cond = cond.expand(B, *cond.shape[1:])
        return model(x, t_model, cond, **kwargs)

    @torch.no_grad()
    def sample(
        self,
        model: Callable,
        noise,
        cond: torch.Tensor,
        neg_cond: torch.Tensor | None = None,
        steps: int = 50,
        rescale_t: float = 1.0,
        cfg_strength: float = 0.0,
        cfg_interval: Sequence[float] = (0.0, 1.0),
        return_trajectory: bool = False,
        progress: bool = True,
        desc: str = "flow sampling",
        **kwargs,
    ) -> FlowSample:
        """Integrate from `noise` at t = 1 to t = 0.

        Args:
            model: `model(x, t, cond, **kwargs) -> v` with t a (B,) float32 tensor (1000·t).
            noise: dense (B, ...) tensor or SparseTensor, the sample at t = 1.
            cond: (B, L, C) condition (a batch of 1 is broadcast); neg_cond: the unconditional one
                (None or cfg_strength 0: no guidance, one call per step).
            steps, rescale_t, cfg_strength, cfg_interval: see module docstring.
            return_trajectory: also keep x after every step and every x_0 prediction.
            progress: show a tqdm bar.
        Returns:
            FlowSample.
        """
        t_seq = time_grid(steps, rescale_t)
        x, nfe, cfg_applied = noise, 0, []
        out = FlowSample(samples=None, t_seq=t_seq, cfg_applied=cfg_applied, nfe=0)
        for i in tqdm(range(steps), desc=desc, disable=not progress, leave=False):
            t, t_prev = float(t_seq[i]), float(t_seq[i + 1])
            v, calls, guided = self.velocity(model, x, t, cond, neg_cond, cfg_strength, cfg_interval, **kwargs)
            nfe += calls
            cfg_applied.append(guided)
            if return_trajectory:
                out.pred_x_0.append((1 - self.sigma_min) * x - (self.sigma_min + (1 - self.sigma_min) * t) * v)
            x = x - (t - t_prev) * v
            if return_trajectory:
                out.pred_x_t.append(x)
        out.samples, out.nfe = x, nfe
        return out
