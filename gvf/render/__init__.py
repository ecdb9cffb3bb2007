"""Cameras and the differentiable Gaussian rasterizer (gsplat CUDA backend, pure-PyTorch reference)."""

from .rasterizer import RenderOutput, rasterize, render_gaussians

__all__ = ["RenderOutput", "rasterize", "render_gaussians"]
