"""Loading checkpoints: upstream (GVFDiffusion / TRELLIS) key conversion, strict loading with
readable errors, and safe `.pt` reading.

Every upstream state_dict goes through `convert_upstream(kind, state_dict)`: the leading `module.`
(DDP) is stripped and names are mapped with the explicit rename table of that kind below. Where our
module names equal the upstream's, the table is empty (identity) on purpose: the names are good.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Mapping

import torch

logger = logging.getLogger(__name__)

# kind -> ordered list of (regex on the upstream key, replacement). Applied once per key, first
# match wins. Keys listed in _DROP[kind] (regexes) are removed (e.g. parts another model owns).
_RENAMES: dict[str, list[tuple[str, str]]] = {
    "motion_vae": [],
    "dit": [],
    "static_vae": [],
    # TRELLIS SLatGaussianDecoder names -> our StaticVAE decoder names (spec §3.6). The result holds the
    # decoder half only: load it with StaticVAE.load_decoder_state_dict (or into StaticVAE(decoder_only=True)).
    "trellis_slat_gs_decoder": [
        (r"^input_layer\.", "from_latent."),
        (r"^blocks\.", "decoder."),
        (r"^offset_perturbation$", "MipGS_perturbation"),
    ],
    "trellis_ss_flow": [],
    "trellis_ss_decoder": [],
    "trellis_slat_flow": [],
}
_DROP: dict[str, list[str]] = {}

KINDS = tuple(_RENAMES)


def strip_module_prefix(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Remove the leading `module.` that DistributedDataParallel checkpoints carry."""
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in state_dict.items()}


def convert_upstream(kind: str, state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map an upstream state_dict of `kind` to our module names.

    Args:
        kind: one of `KINDS` (e.g. "motion_vae", "dit", "static_vae").
        state_dict: as stored upstream, with or without the `module.` prefix.
    Returns:
        A new dict ready for `model.load_state_dict(..., strict=True)`.
    """
    if kind not in _RENAMES:
        raise ValueError(f"unknown checkpoint kind {kind!r}; expected one of {', '.join(KINDS)}")
    rules = [(re.compile(p), r) for p, r in _RENAMES[kind]]
    drops = [re.compile(p) for p in _DROP.get(kind, [])]
    out: dict[str, torch.Tensor] = {}
    for key, value in strip_module_prefix(state_dict).items():
        if any(d.search(key) for d in drops):
            continue
        for pattern, repl in rules:
            if pattern.search(key):
                key = pattern.sub(repl, key, count=1)
                break
        out[key] = value
    return out


def load_state_dict_strict(model: torch.nn.Module, state_dict: Mapping[str, torch.Tensor], *, source: str = "checkpoint") -> None:
    """`model.load_state_dict(strict=True)` with an error that names every missing/unexpected key
    and every shape mismatch (instead of PyTorch's truncated message)."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    mismatched = sorted(
        f"{k}: {tuple(state_dict[k].shape)} in {source}, {tuple(own[k].shape)} in model"
        for k in set(own) & set(state_dict)
        if tuple(own[k].shape) != tuple(state_dict[k].shape)
    )
    if missing or unexpected or mismatched:
        parts = []
        if missing:
            parts.append(f"missing keys ({len(missing)}): {', '.join(missing)}")
        if unexpected:
            parts.append(f"unexpected keys ({len(unexpected)}): {', '.join(unexpected)}")
        if mismatched:
            parts.append(f"shape mismatches ({len(mismatched)}): {'; '.join(mismatched)}")
        raise RuntimeError(f"{source} does not fit {type(model).__name__}: " + " | ".join(parts))
    model.load_state_dict(state_dict, strict=True)


def load_torch_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a `.pt`/`.pth` (with `weights_only=True`) or `.safetensors` state_dict on the CPU."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    obj = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        raise ValueError(f"{path} does not hold a state_dict (found {type(obj).__name__})")
    return dict(obj)
