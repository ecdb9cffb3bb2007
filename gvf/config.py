"""Typed configuration: YAML files -> dataclasses (OmegaConf structured configs).

One schema per experiment kind mirrors the upstream YAML files section by section and key by key:

* :class:`VAEExperimentConfig` — ``configs/official/vae.yml``: ``model`` (motion VAE), ``backbones`` and
  ``framework`` (static VAE), plus our ``train`` / ``data`` sections;
* :class:`DiffusionExperimentConfig` — ``configs/official/diffusion.yml``: ``model`` (temporal DiT),
  ``diffusion``, ``motion_vae``, ``static_vae``, plus ``train`` / ``data``.

Model sections use the constructor keyword names, so a model is built with
``Model(**to_kwargs(cfg.model))``. Defaults are the official YAML values (so ``DiTConfig()`` is the
released architecture); fields the official YAML does not set carry the upstream constructor defaults.
Comments mark where an upstream constructor default differs from the official value.

Loading is strict: an unknown key, a value of the wrong type or a missing mandatory value raises
:class:`ConfigError` naming the key and the file (or the command-line override). Overrides are dotted
``key=value`` strings (``model.num_blocks=6``). Upstream keys that are not Python identifiers
(``2d_filter_kernel_size``) are declared with a ``yaml`` alias in the field metadata and keep their
upstream spelling in YAML.
"""

from __future__ import annotations

import dataclasses
import os
import shlex
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence, TypeVar

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, MissingMandatoryValue, OmegaConfBaseException

from gvf.utils.io import atomic_write

__all__ = [
    "ConfigError",
    "MotionVAEConfig",
    "DiTConfig",
    "StaticVAEBackboneConfig",
    "StaticVAEBackbone",
    "StaticVAEBackbones",
    "GaussianLRConfig",
    "MipGSRepresentationConfig",
    "RepresentationConfig",
    "MipGSRegularizationConfig",
    "RegularizationsConfig",
    "SparseVAEFrameworkArgs",
    "StaticVAEFramework",
    "StaticVAEConfig",
    "DiffusionConfig",
    "TrainConfig",
    "DataConfig",
    "FeaturesConfig",
    "VAEExperimentConfig",
    "DiffusionExperimentConfig",
    "load_config",
    "save_run_config",
    "to_kwargs",
    "to_yaml_dict",
    "model_config",
]

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration file or override that does not fit its schema."""


def _choice(obj, name: str, allowed) -> None:
    value = getattr(obj, name)
    if value not in allowed:
        raise ValueError(f"{type(obj).__name__}.{name} must be one of {sorted(allowed)}, got {value!r}")


def model_config(cls: type[T], config: Optional[T], kwargs: dict, owner: str) -> T:
    """The config a model builds from: ``config`` itself, or ``cls(**kwargs)`` (never both).

    Raises ValueError on an unknown keyword (naming ``owner``, the model class) or a config of another type.
    """
    if config is None:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(kwargs) - known)
        if unknown:
            raise ValueError(f"unknown {owner} argument(s): {', '.join(unknown)}; expected some of {', '.join(sorted(known))}")
        return cls(**kwargs)
    if not isinstance(config, cls):
        raise ValueError(f"config must be a gvf.config.{cls.__name__}, got {type(config).__name__}")
    if kwargs:
        raise ValueError(f"pass either a {cls.__name__} or keyword arguments, not both")
    return config


def _alias(yaml_key: str, default):
    """A field spelled ``yaml_key`` in YAML files (not a valid Python identifier)."""
    return field(default=default, metadata={"yaml": yaml_key})


# ------------------------------------------------------------------------------------------ models


@dataclass
class MotionVAEConfig:
    """Motion (variation-field) VAE, upstream ``GSKLTemporalVariationalAutoEncoder`` kwargs (spec §2.1).

    ``num_timesteps`` (frames decoded per latent sequence), ``chunk_size`` (decoder query chunk) and
    ``knn_k`` / ``beta`` (encoder displacement interpolation) are injected by the upstream scripts.
    ``num_timesteps`` is only a default frame count: ``decode`` infers T from its inputs.
    ``enable_flash_attn`` has no effect (the dispatch of ``gvf.nn.attention`` picks the kernel).
    ``use_checkpoint`` checkpoints each decoder chunk when gradients are on (upstream always does);
    ``drop_path`` is the stochastic-depth rate of the latent self-attention blocks (training only).
    ``output_dim=None`` drops the output head (upstream ``nn.Identity``).
    """

    depth: int = 12  # upstream constructor default: 24
    dim: int = 768  # upstream constructor default: 512
    queries_dim: int = 768  # upstream constructor default: 512
    input_dim: int = 3
    gs_dim: int = 14
    output_dim: Optional[int] = 14  # upstream constructor default: 10
    num_inputs: int = 8192
    num_latents: int = 512  # upstream constructor default: 1024
    latent_dim: int = 16  # upstream constructor default: 128
    heads: int = 12  # upstream constructor default: 8
    dim_head: int = -1  # -1: dim // heads
    weight_tie_layers: bool = False
    decoder_ff: bool = False
    enable_flash_attn: bool = True  # upstream constructor default: False; no effect here
    num_timesteps: int = 24
    chunk_size: int = 8192
    knn_k: int = 8
    beta: float = 7.0
    use_checkpoint: bool = True
    drop_path: float = 0.1

    def __post_init__(self):
        if self.heads < 1 or self.dim % self.heads:
            raise ValueError(f"dim ({self.dim}) must be divisible by heads ({self.heads})")
        if self.dim_head not in (-1, self.dim // self.heads):
            raise ValueError(f"dim_head must be -1 or dim // heads = {self.dim // self.heads}, got {self.dim_head}")
        if self.queries_dim != self.dim:
            # Upstream embeds queries to `dim` and feeds them to a `queries_dim` attention: only equal sizes run.
            raise ValueError(f"queries_dim ({self.queries_dim}) must equal dim ({self.dim})")
        if self.dim % 6:
            raise ValueError(f"dim must be divisible by 6 for the point embedding, got {self.dim}")
        for name in ("depth", "input_dim", "gs_dim", "num_inputs", "num_latents", "latent_dim", "chunk_size", "knn_k", "num_timesteps"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)}")
        if self.gs_dim < 3:
            raise ValueError(f"gs_dim must be at least 3 (xyz first), got {self.gs_dim}")
        if not 0.0 <= self.drop_path < 1.0:
            raise ValueError(f"drop_path must lie in [0, 1), got {self.drop_path}")

    @property
    def head_dim(self) -> int:
        return self.dim // self.heads


@dataclass
class DiTConfig:
    """Temporal DiT, upstream ``model/dit.py::DiT`` kwargs (incl. constructor defaults absent from the YAML)."""

    resolution: int = 512  # number of latent tokens per frame
    in_channels: int = 16
    model_channels: int = 512
    static_cond_channels: int = 14
    image_cond_channels: int = 1024
    out_channels: int = 16
    num_blocks: int = 12
    num_heads: Optional[int] = 16  # None: model_channels // num_head_channels
    num_head_channels: Optional[int] = 64
    mlp_ratio: float = 4.0
    patch_size: int = 1
    pe_mode: str = "ape"  # ape | rope | learnable | none (upstream constructor default: learnable)
    use_fp16: bool = True  # no effect on weights upstream; precision comes from autocast
    use_checkpoint: bool = False
    use_skip_connection: bool = True  # unused upstream
    share_mod: bool = False
    qk_rms_norm: bool = True
    qk_rms_norm_cross: bool = False
    no_temporal_attn: bool = False  # upstream constructor default: True

    def __post_init__(self):
        _choice(self, "pe_mode", {"ape", "rope", "learnable", "none"})


@dataclass
class StaticVAEBackboneConfig:
    """Static VAE backbone, upstream ``SparseTransformerVAE`` kwargs (``backbones.vae.args``).

    ``out_channels`` is 14 channels per Gaussian (xyz offset 3, SH-DC 3, scale 3, rotation 4,
    opacity 1) times the Gaussians per voxel. ``use_fp16`` has no effect on the weights (mixed
    precision comes from autocast). ``use_old_attn_impl`` selects upstream's older fused-qkv channel
    order. ``gvf.models.static_vae.StaticVAE`` builds ``attn_mode`` "swin" (official) or "full" (each
    object attends to itself) with ``pe_mode`` "ape".
    """

    resolution: int = 64
    in_channels: int = 1024
    model_channels: int = 768
    out_channels: int = 112
    latent_channels: int = 8
    num_blocks: int = 12
    window_size: int = 8  # upstream constructor default: 1024
    num_heads: Optional[int] = 12  # None: model_channels // num_head_channels
    num_head_channels: int = 64
    mlp_ratio: float = 4.0
    attn_mode: str = "swin"
    pe_mode: str = "ape"
    use_fp16: bool = True
    use_checkpoint: bool = False
    use_old_attn_impl: bool = False  # upstream constructor default: True
    norm_output: bool = True  # upstream constructor default: False

    def __post_init__(self):
        _choice(self, "attn_mode", {"full", "swin", "shift_window", "shift_sequence", "shift_order"})
        _choice(self, "pe_mode", {"ape", "rope"})
        if self.out_channels < 1 or self.out_channels % 14:
            raise ValueError(f"out_channels must be a positive multiple of 14 (channels per Gaussian), got {self.out_channels}")


@dataclass
class StaticVAEBackbone:
    name: str = "SparseTransformerVAE"
    args: StaticVAEBackboneConfig = field(default_factory=StaticVAEBackboneConfig)


@dataclass
class StaticVAEBackbones:
    vae: StaticVAEBackbone = field(default_factory=StaticVAEBackbone)


@dataclass
class GaussianLRConfig:
    """Per-field multipliers applied to the decoder's raw outputs (names as the upstream Gaussian fields)."""

    _xyz: float = 1.0
    _features_dc: float = 1.0
    _opacity: float = 1.0
    _scaling: float = 1.0
    _rotation: float = 0.1


@dataclass
class MipGSRepresentationConfig:
    """How the static decoder's 112 channels become 8 Gaussians per voxel (spec §3.3)."""

    lr: GaussianLRConfig = field(default_factory=GaussianLRConfig)
    perturb_offset: bool = True
    reg_mode: str = "soft_invoxel"
    voxel_size: float = 1.5
    num_gaussians: int = 8
    filter_2d_kernel_size: float = _alias("2d_filter_kernel_size", 0.1)
    filter_3d_kernel_size: float = _alias("3d_filter_kernel_size", 0.0009)
    scaling_bias: float = 0.004
    opacity_bias: float = 0.1
    scaling_activation: str = "softplus"

    def __post_init__(self):
        _choice(self, "reg_mode", {"soft_invoxel", "invoxel"})
        _choice(self, "scaling_activation", {"softplus", "exp"})


@dataclass
class RepresentationConfig:
    MipGS: MipGSRepresentationConfig = field(default_factory=MipGSRepresentationConfig)


@dataclass
class MipGSRegularizationConfig:
    lambda_vol: float = 10000.0
    lambda_opacity: float = 0.001


@dataclass
class RegularizationsConfig:
    MipGS: MipGSRegularizationConfig = field(default_factory=MipGSRegularizationConfig)


@dataclass
class SparseVAEFrameworkArgs:
    """Upstream ``SparseVAE`` kwargs (``framework.args``); ``lamda_kl`` keeps the upstream spelling."""

    resolution: int = 64
    loss_type: str = "l1"
    lambda_ssim: float = 0.2
    lambda_lpips: float = 0.2
    lamda_kl: float = 1e-6
    mem_ratio: float = 0.2
    representation_config: RepresentationConfig = field(default_factory=RepresentationConfig)
    regularizations: RegularizationsConfig = field(default_factory=RegularizationsConfig)


@dataclass
class StaticVAEFramework:
    name: str = "SparseVAE"
    args: SparseVAEFrameworkArgs = field(default_factory=SparseVAEFrameworkArgs)


@dataclass
class StaticVAEConfig:
    """The ``static_vae`` section of diffusion.yml (the ``backbones`` + ``framework`` pair of vae.yml)."""

    backbones: StaticVAEBackbones = field(default_factory=StaticVAEBackbones)
    framework: StaticVAEFramework = field(default_factory=StaticVAEFramework)


@dataclass
class DiffusionConfig:
    """Upstream ``create_gaussian_diffusion`` kwargs (defaults: the official diffusion.yml)."""

    steps: int = 1000
    learn_sigma: bool = False
    sigma_small: bool = False
    noise_schedule: str = "cosine"
    use_kl: bool = False
    predict_type: str = "v"
    predict_xstart: bool = False  # deprecated upstream, ignored
    rescale_timesteps: bool = True
    rescale_learned_sigmas: bool = True
    timestep_respacing: str = ""  # "" = all steps
    beta_start: float = 0.0001  # linear schedule only
    beta_end: float = 0.02
    min_snr: bool = False

    def __post_init__(self):
        _choice(self, "noise_schedule", {"linear", "cosine"})
        _choice(self, "predict_type", {"eps", "xstart", "v"})


# ------------------------------------------------------------------------------ our own sections


@dataclass
class TrainConfig:
    """Optimisation settings shared by the VAE and diffusion trainers (upstream CLI defaults).

    Steps count optimizer steps (one step = ``gradient_accumulation_steps`` micro-batches).
    Fields after ``save_interval`` were added by the trainers (gvf.train); each says who reads it.
    """

    lr: float = 5e-5
    weight_decay: float = 0.0
    batch_size: int = 1
    gradient_accumulation_steps: int = 1
    warmup_steps: int = 1000
    max_steps: int = 500_000
    max_minutes: Optional[float] = None  # wall-clock budget of one call: stop (and checkpoint) when spent
    grad_clip: float = 1.0
    ema_rate: float = 0.9999
    mixed_precision: str = "no"  # no | fp16 | bf16
    seed: int = 0
    log_interval: int = 100
    save_interval: int = 1000
    # both trainers
    keep_last: int = 3  # training checkpoints kept (the newest ones)
    preview_interval: int = 1000  # VAE: render previews; 0 = never
    find_unused_parameters: bool = False  # DDP
    # VAE trainer (upstream main_vae.py CLI defaults; the README run used static_vae_steps 150000,
    # kl_weight 1e-6, xyz_loss_weight 1.0)
    static_vae_steps: int = 5000  # phase 1 (static VAE alone) length
    static_lr_scale: float = 0.1  # static-VAE lr = lr · static_lr_scale
    kl_weight: float = 1e-5  # motion-VAE KL
    xyz_loss_weight: float = 0.1  # mesh-guided xyz loss
    render_l1_weight: float = 1.0
    render_ssim_weight: float = 0.2
    render_lpips_weight: float = 0.2
    lpips_pretrained: bool = True  # false: random VGG (offline tests / demo only; values meaningless)
    static_vae_init: Optional[str] = None  # static-VAE weights to start from: a file or "official"
    freeze_static_encoder: bool = False  # upstream freeze_encoder: the encoder blocks only
    render_resolution: Optional[int] = None  # training image side (None: as stored)
    # diffusion trainer
    uncond_p: float = 0.1  # classifier-free dropout of the video features
    sample_interval: int = 0  # DPM-Solver sampling check every N steps; 0 = never
    sample_steps: int = 25  # multistep DPM-Solver++ steps of the check
    sample_resolution: int = 128  # preview video side
    vae_checkpoint: Optional[str] = None  # VAE training checkpoint (or run dir) for decoding samples

    def __post_init__(self):
        if str(self.mixed_precision).lower() == "false":  # YAML 1.1 reads a bare `no` as false
            self.mixed_precision = "no"
        _choice(self, "mixed_precision", {"no", "fp16", "bf16"})


@dataclass
class DataConfig:
    """Where the training data live and how samples are drawn.

    Fields after ``deformation_std_file`` were added by the trainers (gvf.train).
    """

    data_dir: str = "data/"
    txt_file: Optional[str] = None  # object/video names, one per line
    num_timesteps: int = 24  # frames per sample
    num_workers: int = 1
    static_mean_file: Optional[str] = None
    static_std_file: Optional[str] = None
    deformation_mean_file: Optional[str] = None
    deformation_std_file: Optional[str] = None
    load_camera: int = 1  # VAE: frames of a sample rendered for the motion loss
    feature_name: Optional[str] = None  # VAE: features_all_timesteps/0/<name>.npz (None: the only one)
    cond_dir: Optional[str] = None  # conditioning features (default <data_dir>/cond_features)
    latents_dir: Optional[str] = None  # encoded latents (default <data_dir>/latents)
    stats_file: Optional[str] = None  # latent statistics (default <latents_dir>/stats.safetensors)
    num_val_objects: int = 1  # diffusion: last names held out for the sampling check
    num_static_gaussians: int = 4096  # rows of the DiT's static condition (training and inference)
    # DiT token positions: (xyz − static_mean[:3]) / static_std[:3] as upstream training (true), or raw
    # xyz as the official inference (false); releases carry it to the inference pipeline
    normalize_positions: bool = True


@dataclass
class FeaturesConfig:
    """The image feature extractor of the conditioning tokens (`gvf.features.get_extractor`)."""

    extractor: str = "dinov2"
    extractor_kwargs: dict = field(default_factory=dict)


# ------------------------------------------------------------------------------------ experiments


@dataclass
class VAEExperimentConfig:
    """configs/official/vae.yml: motion VAE (``model``) + static VAE (``backbones``, ``framework``)."""

    model: MotionVAEConfig = field(default_factory=MotionVAEConfig)
    backbones: StaticVAEBackbones = field(default_factory=StaticVAEBackbones)
    framework: StaticVAEFramework = field(default_factory=StaticVAEFramework)
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)

    @property
    def static_vae(self) -> StaticVAEConfig:
        """The static VAE sections grouped as in diffusion.yml."""
        return StaticVAEConfig(backbones=self.backbones, framework=self.framework)


@dataclass
class DiffusionExperimentConfig:
    """configs/official/diffusion.yml: DiT (``model``), ``diffusion``, ``motion_vae``, ``static_vae``,
    plus our ``train`` / ``data`` sections and ``features`` (the conditioning feature extractor)."""

    model: DiTConfig = field(default_factory=DiTConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    motion_vae: MotionVAEConfig = field(default_factory=MotionVAEConfig)
    static_vae: StaticVAEConfig = field(default_factory=StaticVAEConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)
    features: FeaturesConfig = field(default_factory=FeaturesConfig)


# ---------------------------------------------------------------------------------------- loading


def _unwrap_type(tp):
    """Optional[X] -> X; anything else unchanged."""
    if typing.get_origin(tp) is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def _rename_keys(node, cls, to_python: bool, source: str = "", prefix: str = ""):
    """Rename aliased keys of a plain dict tree between YAML spelling and dataclass field names.

    Going to Python names it also checks that every dataclass-typed node is a mapping (an empty
    YAML section counts as an empty mapping), so that the error can name the section.
    """
    if not dataclasses.is_dataclass(cls):
        return node
    if node is None and to_python:
        return {}
    if not isinstance(node, dict):
        if to_python:
            where = f"'{prefix}'" if prefix else "the top level"
            raise ConfigError(f"{source}: {where} must be a mapping of {cls.__name__} keys, got {type(node).__name__} {node!r}")
        return node
    hints = typing.get_type_hints(cls)
    flds = {(f.metadata.get("yaml", f.name) if to_python else f.name): f for f in dataclasses.fields(cls)}
    out = {}
    for key, value in node.items():
        f = flds.get(key)
        if f is None:  # unknown: left for the schema merge to report
            out[key] = value
            continue
        new_key = f.name if to_python else f.metadata.get("yaml", f.name)
        sub = f"{prefix}.{key}" if prefix else str(key)
        out[new_key] = _rename_keys(value, _unwrap_type(hints[f.name]), to_python, source, sub)
    return out


def _describe(exc: OmegaConfBaseException, source: str) -> str:
    key = getattr(exc, "full_key", None) or "?"
    msg = str(getattr(exc, "msg", None) or exc).splitlines()[0]
    if isinstance(exc, ConfigKeyError):
        return f"{source}: unknown key '{key}' ({msg})"
    if isinstance(exc, MissingMandatoryValue):
        return f"{source}: missing value for '{key}'"
    return f"{source}: invalid value for '{key}': {msg}"


def _merge(base: DictConfig, node: dict, schema, source: str) -> DictConfig:
    try:
        return OmegaConf.merge(base, OmegaConf.create(_rename_keys(node, schema, True, source)))
    except OmegaConfBaseException as exc:
        raise ConfigError(_describe(exc, source)) from None


def load_config(path: str | os.PathLike, schema: type[T], overrides: Sequence[str] = ()) -> T:
    """Load a YAML file into ``schema`` (a dataclass type), strictly, then apply dotted overrides.

    Args:
        path: YAML file.
        schema: e.g. :class:`DiffusionExperimentConfig`.
        overrides: ``"section.key=value"`` strings (values parsed as YAML).
    Returns:
        an instance of ``schema`` (nested dataclasses).
    Raises:
        ConfigError: unreadable file, unknown key, wrong type, bad override — naming key and source.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        raw = OmegaConf.load(path)
    except Exception as exc:  # YAML syntax errors come from several libraries
        raise ConfigError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if raw is None or (isinstance(raw, DictConfig) and len(raw) == 0):
        raw = OmegaConf.create({})
    if not isinstance(raw, DictConfig):
        raise ConfigError(f"{path}: the top level must be a mapping of sections, got a {type(raw).__name__}")
    cfg = _merge(OmegaConf.structured(schema), OmegaConf.to_container(raw, resolve=False), schema, str(path))
    for item in overrides:
        if "=" not in item or not item.split("=", 1)[0].strip():
            raise ConfigError(f"override {item!r} must look like section.key=value")
        try:
            node = OmegaConf.to_container(OmegaConf.from_dotlist([item]), resolve=False)
        except OmegaConfBaseException as exc:
            raise ConfigError(f"override {item!r}: {str(exc).splitlines()[0]}") from None
        cfg = _merge(cfg, node, schema, f"override {item!r}")
    try:
        return OmegaConf.to_object(cfg)
    except OmegaConfBaseException as exc:
        raise ConfigError(_describe(exc, str(path))) from None
    except ValueError as exc:  # __post_init__ checks
        source = f"{path} with overrides {list(overrides)}" if overrides else str(path)
        raise ConfigError(f"{source}: {exc}") from None


def to_kwargs(section: Any) -> dict:
    """Constructor kwargs of a config section (dataclass or DictConfig) as a plain, deep-copied dict."""
    if dataclasses.is_dataclass(section) and not isinstance(section, type):
        return dataclasses.asdict(section)
    if isinstance(section, DictConfig):
        return OmegaConf.to_container(section, resolve=True)
    if isinstance(section, dict):
        return dict(section)
    raise TypeError(f"to_kwargs expects a config dataclass or mapping, got {type(section).__name__}")


def to_yaml_dict(cfg: Any) -> dict:
    """A config dataclass as a plain dict with the upstream YAML key spellings."""
    return _rename_keys(dataclasses.asdict(cfg), type(cfg), to_python=False)


def save_run_config(cfg: Any, run_dir: str | os.PathLike, argv: Sequence[str] | None = None) -> tuple[Path, Path]:
    """Write the resolved ``config.yaml`` and the command line (``command.txt``) into ``run_dir``.

    Args:
        cfg: a loaded config dataclass.
        run_dir: created if needed.
        argv: the command line; defaults to ``[sys.executable, *sys.argv]``.
    Returns:
        the two paths written.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if argv is None:
        argv = [sys.executable, *sys.argv]
    config_path = run_dir / "config.yaml"
    command_path = run_dir / "command.txt"
    config_text = OmegaConf.to_yaml(OmegaConf.create(to_yaml_dict(cfg)), sort_keys=False)
    atomic_write(config_path, lambda tmp: tmp.write_text(config_text, encoding="utf-8"))
    command_text = shlex.join([str(a) for a in argv]) + "\n"
    atomic_write(command_path, lambda tmp: tmp.write_text(command_text, encoding="utf-8"))
    return config_path, command_path
