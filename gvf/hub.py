"""Pretrained weights: the official GVFDiffusion release on the Hugging Face Hub, and our own format.

Official release (spec §1.2): repository `BwZhang/GaussianVariationFieldDiffusion`, upstream `.pt`
state_dicts (keys may carry the DDP `module.` prefix) plus four normalisation tensors:

    >>> paths = download_official()                      # {name: Path}, cached by huggingface_hub
    >>> vae = load_pretrained("motion_vae", "official")  # or a local directory holding the files
    >>> stats = load_normalization("official")           # static/deformation mean and std

Our release format is a directory with `config.yaml` (`kind` + the model's constructor arguments)
and `model.safetensors` (our parameter names): `save_pretrained` / `load_pretrained_dir`.
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from gvf.checkpoints import convert_upstream, load_state_dict_strict, load_torch_file
from gvf.utils.io import atomic_write

logger = logging.getLogger(__name__)

__all__ = [
    "OFFICIAL_REPO_ID",
    "OFFICIAL_REVISION",
    "OFFICIAL_FILES",
    "WeightsNotFoundError",
    "download_official",
    "resolve_weights",
    "official_model_config",
    "load_pretrained",
    "load_normalization",
    "save_pretrained",
    "load_pretrained_dir",
]

OFFICIAL_REPO_ID = "BwZhang/GaussianVariationFieldDiffusion"
# The upstream downloads from the branch head too (spec §1.2); no commit hash of the release is
# known to us, so "main" it is. Pass a commit hash as `revision` to pin a download.
OFFICIAL_REVISION = "main"

# logical name -> file name in the official repository
OFFICIAL_FILES: dict[str, str] = {
    "motion_vae": "ema_deformation_0.9999_200000.pt",
    "dit": "ema_diffusion_0.9999_500000.pt",
    "static_vae": "ema_static_vae_0.9999_200000.pt",
    "static_mean": "static_mean.pt",
    "static_std": "static_std.pt",
    "deformation_mean": "deformation_mean.pt",
    "deformation_std": "deformation_std.pt",
}
STAT_NAMES = ("static_mean", "static_std", "deformation_mean", "deformation_std")

CONFIG_FILE = "config.yaml"
WEIGHTS_FILE = "model.safetensors"
OFFICIAL_CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs" / "official"


@dataclasses.dataclass(frozen=True)
class _Kind:
    module: str
    cls: str
    # (file in configs/official, dotted key of the constructor arguments), first found wins
    config_sections: tuple[tuple[str, str], ...]


_KINDS: dict[str, _Kind] = {
    "motion_vae": _Kind("gvf.models.motion_vae", "VariationFieldVAE", (("diffusion.yml", "motion_vae"), ("vae.yml", "model"))),
    "dit": _Kind("gvf.models.dit", "TemporalDiT", (("diffusion.yml", "model"),)),
    "static_vae": _Kind(
        "gvf.models.static_vae", "StaticVAE", (("diffusion.yml", "static_vae.backbones.vae.args"), ("vae.yml", "backbones.vae.args"))
    ),
}


class WeightsNotFoundError(FileNotFoundError):
    """Weights could neither be found locally nor downloaded."""


def _check_kind(kind: str) -> _Kind:
    if kind not in _KINDS:
        raise ValueError(f"unknown model kind {kind!r}; expected one of {', '.join(_KINDS)}")
    return _KINDS[kind]


def _model_class(kind: str) -> type[nn.Module]:
    spec = _check_kind(kind)
    return getattr(importlib.import_module(spec.module), spec.cls)


def _check_names(names: Sequence[str] | None) -> list[str]:
    names = list(OFFICIAL_FILES) if names is None else list(names)
    unknown = [n for n in names if n not in OFFICIAL_FILES]
    if unknown:
        raise ValueError(f"unknown official file name(s) {unknown}; expected some of {', '.join(OFFICIAL_FILES)}")
    return names


# -------------------------------------------------------------------------------------------------
# Finding the files
# -------------------------------------------------------------------------------------------------


def download_official(
    revision: str = OFFICIAL_REVISION,
    cache_dir: str | Path | None = None,
    local_dir: str | Path | None = None,
    names: Sequence[str] | None = None,
) -> dict[str, Path]:
    """Fetch official files with `huggingface_hub.hf_hub_download` (cached; reused offline).

    Args:
        revision: branch, tag or commit hash of the Hub repository.
        cache_dir: Hugging Face cache directory (default: the library's, `HF_HOME`).
        local_dir: copy the files into this directory instead of only the cache.
        names: logical names from `OFFICIAL_FILES` (default: all seven).
    Returns:
        {logical name: local Path}.
    Raises:
        WeightsNotFoundError naming every file that could not be obtained.
    """
    import huggingface_hub

    names = _check_names(names)
    from huggingface_hub.errors import LocalEntryNotFoundError

    paths: dict[str, Path] = {}
    failed: list[str] = []
    reason = ""
    offline = False  # once the Hub is unreachable, only look in the cache (no retries per file)
    for name in names:
        filename = OFFICIAL_FILES[name]
        kwargs = {"local_files_only": True} if offline else {}
        try:
            path = huggingface_hub.hf_hub_download(
                repo_id=OFFICIAL_REPO_ID,
                filename=filename,
                revision=revision,
                cache_dir=None if cache_dir is None else str(cache_dir),
                local_dir=None if local_dir is None else str(local_dir),
                **kwargs,
            )
        except Exception as exc:  # offline, missing file, auth: all reported together below
            offline = offline or isinstance(exc, LocalEntryNotFoundError)
            failed.append(filename)
            reason = reason or (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            continue
        paths[name] = Path(path)
        logger.info("official %s: %s", name, path)
    if failed:
        where = local_dir if local_dir is not None else (cache_dir or huggingface_hub.constants.HF_HUB_CACHE)
        raise WeightsNotFoundError(
            f"could not get {', '.join(failed)} from https://huggingface.co/{OFFICIAL_REPO_ID} (revision {revision!r}, "
            f"looked in {where}): {reason}; download them by hand into a directory and pass that directory instead of 'official'"
        )
    return paths


def resolve_weights(
    source: str | Path,
    names: Sequence[str] | None = None,
    *,
    revision: str = OFFICIAL_REVISION,
    cache_dir: str | Path | None = None,
) -> dict[str, Path]:
    """Local paths of official files.

    Args:
        source: "official" (download / Hugging Face cache) or a directory holding the files under
            their official names (`OFFICIAL_FILES`).
        names: logical names wanted (default: all).
    Returns:
        {logical name: Path}.
    """
    names = _check_names(names)
    if isinstance(source, str) and source == "official":
        return download_official(revision=revision, cache_dir=cache_dir, names=names)
    root = Path(source).expanduser()
    if not root.is_dir():
        raise WeightsNotFoundError(f"weights source {str(source)!r} is neither 'official' nor an existing directory")
    paths = {n: root / OFFICIAL_FILES[n] for n in names}
    missing = [p.name for p in paths.values() if not p.is_file()]
    if missing:
        raise WeightsNotFoundError(f"missing {', '.join(missing)} in {root} (pass 'official' to download them from {OFFICIAL_REPO_ID})")
    return paths


# -------------------------------------------------------------------------------------------------
# Configs
# -------------------------------------------------------------------------------------------------


def _read_yaml(path: str | Path) -> dict:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(OmegaConf.load(str(path)), resolve=True)


def _section(tree: Mapping, dotted: str) -> Mapping | None:
    node: Any = tree
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node if isinstance(node, Mapping) else None


def official_model_config(kind: str, config: str | Path | Mapping | None = None) -> dict:
    """Constructor arguments of `kind`.

    Args:
        config: None (the official configs in `configs/official/`), a mapping of arguments, or a
            YAML file: its upstream section for `kind` (e.g. `motion_vae:` of diffusion.yml,
            `model:` of vae.yml) if present, else the whole file.
    """
    spec = _check_kind(kind)
    if isinstance(config, Mapping):
        return dict(config)
    if config is not None:
        tree = _read_yaml(config)
        for _, key in spec.config_sections:
            found = _section(tree, key)
            if found is not None:
                return dict(found)
        return dict(tree)
    for filename, key in spec.config_sections:
        path = OFFICIAL_CONFIG_DIR / filename
        if path.is_file():
            found = _section(_read_yaml(path), key)
            if found is not None:
                return dict(found)
    raise FileNotFoundError(f"no official config for {kind!r} in {OFFICIAL_CONFIG_DIR}; pass config= explicitly")


# -------------------------------------------------------------------------------------------------
# Loading
# -------------------------------------------------------------------------------------------------


def load_pretrained(
    kind: str,
    source: str | Path = "official",
    config: str | Path | Mapping | None = None,
    *,
    revision: str = OFFICIAL_REVISION,
    cache_dir: str | Path | None = None,
    device: torch.device | str | None = None,
) -> nn.Module:
    """Build a model and load pretrained weights (strictly), in eval mode.

    Args:
        kind: "motion_vae", "dit" or "static_vae".
        source: "official" (Hub download), a directory with the official files, a directory in our
            release format (`config.yaml` + `model.safetensors`), or one checkpoint file
            (upstream `.pt` or `.safetensors` state_dict).
        config: constructor arguments, see `official_model_config` (ignored for our format, which
            carries its own).
        revision, cache_dir: Hub download settings.
        device: where to put the model (default CPU).
    """
    _check_kind(kind)
    if not (isinstance(source, str) and source == "official"):
        path = Path(source).expanduser()
        if path.is_dir() and not (path / OFFICIAL_FILES[kind]).is_file() and (path / CONFIG_FILE).is_file():
            model = load_pretrained_dir(path, device=device)
            if _kind_of(model) != kind:
                raise ValueError(f"{path} holds a {_kind_of(model)!r} model, not {kind!r}")
            return model
        if path.is_file():
            ckpt = path
        else:
            ckpt = resolve_weights(path, [kind])[kind]
    else:
        ckpt = resolve_weights(source, [kind], revision=revision, cache_dir=cache_dir)[kind]
    model = _model_class(kind)(**official_model_config(kind, config))
    state = convert_upstream(kind, load_torch_file(ckpt))
    load_state_dict_strict(model, state, source=str(ckpt))
    logger.info("loaded %s weights from %s", kind, ckpt)
    return model.to(device).eval() if device is not None else model.eval()


def load_normalization(
    source: str | Path = "official",
    *,
    revision: str = OFFICIAL_REVISION,
    cache_dir: str | Path | None = None,
) -> dict[str, torch.Tensor]:
    """The four normalisation tensors (static/deformation mean/std) as float32 CPU tensors.

    Latents are normalised as (x − mean) / std; the static ones apply to 14-channel Gaussian rows.
    """
    paths = resolve_weights(source, STAT_NAMES, revision=revision, cache_dir=cache_dir)
    stats = {}
    for name, path in paths.items():
        value = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(value, torch.Tensor):
            raise ValueError(f"{path} should hold a tensor, found {type(value).__name__}")
        stats[name] = value.float()
    return stats


# -------------------------------------------------------------------------------------------------
# Our release format
# -------------------------------------------------------------------------------------------------


def _kind_of(model: nn.Module) -> str:
    for kind, spec in _KINDS.items():
        if type(model).__name__ == spec.cls and type(model).__module__ == spec.module:
            return kind
    raise ValueError(f"{type(model).__name__} is not one of the known model kinds ({', '.join(_KINDS)})")


def save_pretrained(model: nn.Module, config_dict: Mapping | None, directory: str | Path) -> Path:
    """Write `config.yaml` and `model.safetensors` to `directory` (each atomically).

    Args:
        model: a VariationFieldVAE, TemporalDiT or StaticVAE.
        config_dict: its constructor arguments; None uses `model.config` (a dataclass).
    Returns:
        the directory.
    """
    from omegaconf import OmegaConf
    from safetensors.torch import save_file

    kind = _kind_of(model)
    if config_dict is None:
        if not dataclasses.is_dataclass(getattr(model, "config", None)):
            raise ValueError(f"{type(model).__name__} has no dataclass `config`; pass config_dict")
        config_dict = dataclasses.asdict(model.config)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors, seen = {}, set()
    for key, value in model.state_dict().items():
        value = value.detach().cpu()
        ptr = (value.untyped_storage().data_ptr(), value.storage_offset())
        # safetensors refuses shared storage (e.g. weight-tied layers): store copies
        tensors[key] = value.clone() if ptr in seen else value.contiguous()
        seen.add(ptr)
    atomic_write(directory / WEIGHTS_FILE, lambda tmp: save_file(tensors, tmp, metadata={"kind": kind}))
    # the config goes last: its presence marks a complete directory
    config = {"kind": kind, "model": dict(config_dict)}
    atomic_write(directory / CONFIG_FILE, lambda tmp: OmegaConf.save(OmegaConf.create(config), tmp))
    logger.info("saved %s to %s", kind, directory)
    return directory


def load_pretrained_dir(directory: str | Path, device: torch.device | str | None = None) -> nn.Module:
    """Load a directory written by `save_pretrained`; returns the model in eval mode."""
    directory = Path(directory)
    missing = [f for f in (CONFIG_FILE, WEIGHTS_FILE) if not (directory / f).is_file()]
    if missing:
        raise WeightsNotFoundError(f"missing {', '.join(missing)} in {directory} (expected a directory written by save_pretrained)")
    config = _read_yaml(directory / CONFIG_FILE)
    if not isinstance(config, Mapping) or "kind" not in config or not isinstance(config.get("model"), Mapping):
        raise ValueError(f"{directory / CONFIG_FILE} must hold `kind` and a `model` mapping of constructor arguments")
    model = _model_class(config["kind"])(**config["model"])
    load_state_dict_strict(model, load_torch_file(directory / WEIGHTS_FILE), source=str(directory / WEIGHTS_FILE))
    return model.to(device).eval() if device is not None else model.eval()
