"""Noise schedule, v-prediction training loss and DPM-Solver++ sampling with classifier-free guidance
(GVF), and the rectified-flow Euler sampler of the TRELLIS stages (`gvf.diffusion.flow_euler`)."""

from gvf.diffusion.dpm_solver import DPMSolverPP, GuidedNoiseModel, dpm_solver_sample
from gvf.diffusion.schedule import GaussianDiffusion, cosine_betas, interpolate, linear_betas

__all__ = [
    "DPMSolverPP",
    "GaussianDiffusion",
    "GuidedNoiseModel",
    "cosine_betas",
    "dpm_solver_sample",
    "interpolate",
    "linear_betas",
]
