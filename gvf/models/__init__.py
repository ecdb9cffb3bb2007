"""Networks, one file each. Classes are imported lazily so that importing one model never
pulls in the dependencies of another."""

import importlib

_LAZY = {
    "VariationFieldVAE": "gvf.models.motion_vae",
    "TemporalDiT": "gvf.models.dit",
    "StaticVAE": "gvf.models.static_vae",
}

__all__ = list(_LAZY)


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'gvf.models' has no attribute {name!r}")
