"""TRELLIS image-to-3D sub-models (microsoft/TRELLIS, TRELLIS-image-large) with the upstream parameter names.

* `SparseStructureFlow` — stage 1 flow DiT on the dense 16³ occupancy latent (`ss_flow.py`);
* `SparseStructureDecoder` — 3-D conv decoder of that latent into 64³ occupancy logits (`ss_decoder.py`);
* `SLatFlow` — stage 2 sparse flow DiT on the occupied voxels (`slat_flow.py`).

The Gaussian decoder GVF runs after them is `gvf.models.static_vae.StaticVAE(decoder_only=True)`;
the pipeline that connects everything is `gvf.image_to_3d`.
"""

from gvf.models.trellis.slat_flow import SLatFlow, SLatFlowConfig, SparseResBlock3d
from gvf.models.trellis.ss_decoder import SparseStructureDecoder, SparseStructureDecoderConfig, occupied_voxels
from gvf.models.trellis.ss_flow import ModulatedCrossBlock, SparseStructureFlow, SparseStructureFlowConfig

# Class names in TRELLIS checkpoint JSONs (`{"name": ..., "args": {...}}`) -> our classes.
TRELLIS_CLASSES = {
    "SparseStructureFlowModel": SparseStructureFlow,
    "SparseStructureDecoder": SparseStructureDecoder,
    "SLatFlowModel": SLatFlow,
    "ElasticSLatFlowModel": SLatFlow,  # memory-elastic training wrapper of the same network
}

__all__ = [
    "ModulatedCrossBlock",
    "SLatFlow",
    "SLatFlowConfig",
    "SparseResBlock3d",
    "SparseStructureDecoder",
    "SparseStructureDecoderConfig",
    "SparseStructureFlow",
    "SparseStructureFlowConfig",
    "TRELLIS_CLASSES",
    "occupied_voxels",
]
