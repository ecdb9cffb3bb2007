"""Sparse voxel tensors, shifted-window sparse attention and sparse convolution in plain PyTorch."""

from gvf.sparse.tensor import SparseLinear, SparseTensor
from gvf.sparse.attention import (
    GroupPlan,
    SparseMultiHeadAttention,
    grouped_attention,
    plan_groups,
    sparse_cross_attention_per_object,
    sparse_self_attention_per_object,
    sparse_windowed_attention,
    window_ids,
)
from gvf.sparse.conv import SparseConv3d, SparseDownsample, SparseUpsample
from gvf.sparse.modules import SparseTransformerBlock

__all__ = [
    "GroupPlan",
    "SparseLinear",
    "SparseConv3d",
    "SparseDownsample",
    "SparseMultiHeadAttention",
    "SparseTensor",
    "SparseTransformerBlock",
    "SparseUpsample",
    "grouped_attention",
    "plan_groups",
    "sparse_cross_attention_per_object",
    "sparse_self_attention_per_object",
    "sparse_windowed_attention",
    "window_ids",
]
