"""Shared layers: attention dispatch, multi-head attention, embeddings, norms, feed-forwards."""

from gvf.nn.attention import MultiHeadAttention, MultiHeadRMSNorm, attention, math_attention, resolve_backend
from gvf.nn.embeddings import AbsolutePositionEmbedder, PointEmbed, TimestepEmbedder, timestep_embedding
from gvf.nn.layers import GEGLU, FeedForwardNet, GEGLUFeedForward, LayerNorm32, modulate

__all__ = [
    "AbsolutePositionEmbedder",
    "FeedForwardNet",
    "GEGLU",
    "GEGLUFeedForward",
    "LayerNorm32",
    "MultiHeadAttention",
    "MultiHeadRMSNorm",
    "PointEmbed",
    "TimestepEmbedder",
    "attention",
    "math_attention",
    "modulate",
    "resolve_backend",
    "timestep_embedding",
]
