"""Image feature extractors: DINOv2 with registers (official) and a weight-free extractor.

`get_extractor("simple")` or `get_extractor("dinov2", ...)`; see `base.FeatureExtractor` for the protocol.
"""
from .base import FeatureExtractor, available_extractors, composite, get_extractor, register_extractor

__all__ = ["FeatureExtractor", "available_extractors", "composite", "get_extractor", "register_extractor"]
