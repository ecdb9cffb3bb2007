"""gvf: Gaussian Variation Field Diffusion (video-to-4D) in clean, tested PyTorch.

Sub-packages:
  gaussians  the 3D Gaussian representation (parametrisation, PLY, FPS/KNN)
  render     cameras and the differentiable Gaussian rasterizer (gsplat / torch backends)
  nn         shared layers: attention dispatch, embeddings, norms, feed-forwards
  sparse     sparse voxel tensors, windowed attention, sparse convolution
  models     one file per network (motion VAE, temporal DiT, static VAE, TRELLIS)
  diffusion  noise schedule, v-prediction loss, DPM-Solver++ sampling
  features   image feature extractors (DINOv2, a weight-free extractor)
  data       animated assets -> training samples, datasets
  train      training loops, EMA, checkpoints
"""

__version__ = "0.1.0"
