"""The 3D Gaussian representation: parametrisation, 14-channel tensors, PLY I/O, FPS and KNN."""

from .model import (
    OPACITY_BIAS,
    OPACITY_LOGIT_BIAS,
    SCALE_FLOOR,
    SCALING_BIAS,
    SCALING_RAW_BIAS,
    SH_C0,
    Gaussians,
    inverse_softplus,
    pad_tensor14,
)
from .ops import farthest_point_sampling, knn_points
from .ply import load_ply, save_ply

__all__ = [
    "Gaussians",
    "pad_tensor14",
    "inverse_softplus",
    "SH_C0",
    "OPACITY_BIAS",
    "SCALING_BIAS",
    "SCALE_FLOOR",
    "OPACITY_LOGIT_BIAS",
    "SCALING_RAW_BIAS",
    "farthest_point_sampling",
    "knn_points",
    "save_ply",
    "load_ply",
]
