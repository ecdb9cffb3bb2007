"""Video -> 4D Gaussians: the GVF inference pipeline (upstream ``inference_dpm_latent.py``, spec §1).

    frames ──► centred 512² frames + masks (gvf.video)
           ──► per-frame conditioning tokens (gvf.features)                    (T, L_img, C_img)
    canonical Gaussians (a PLY, or TRELLIS on the first frame for the official model)
           ──► azimuth alignment to the first frame (gvf.align)
           ──► FPS 512 (token positions) and FPS 4096 (static condition)
           ──► normalise with the release statistics
           ──► DPM-Solver++ (adaptive by default, two-scale CFG) on the temporal DiT (T, 512, 16)
           ──► denormalise ──► motion-VAE decode for every Gaussian            (T, N, 14)

The result holds the aligned canonical Gaussians and one variation per frame in the motion VAE's
output layout ``[xyz | scale | rot | f_dc | opacity]`` (`Gaussians.with_variation`).

Two weight sources:

* our release directory (`load_release`; written by ``scripts/export_release.py``,
  `gvf.train.diffusion_trainer.export_release`): ``config.yaml`` (the ``model``, ``diffusion``,
  ``motion_vae``, ``static_vae`` and ``features`` sections of a `gvf.config.DiffusionExperimentConfig`),
  ``dit.safetensors``, ``motion_vae.safetensors``, ``latent_stats.safetensors`` (static_mean,
  static_std, deformation_mean, deformation_std) and optionally ``static_vae.safetensors``;
* the official GVFDiffusion release (`VideoTo4DPipeline.from_official`, files through `gvf.hub`).

Token positions (``deformation_position_xyz``, spec §10.2.1): the upstream training normalised them
with ``static_mean[:3] / static_std[:3]`` but the official inference passes raw xyz. Our releases
say which convention they were trained with (``data.normalize_positions`` in config.yaml, true by
default, `gvf.data.latent_dataset`) and `from_release` follows it; the official weights get raw xyz,
the upstream inference behaviour they were evaluated with.

Conditioning images: our training computes the tokens of RGBA renders composited on the extractor's
background (black by default, spec §7.3); the official in-the-wild inference computes DINOv2 tokens of
the frames on white (§7.5). The pipeline composites the centred frames accordingly
(`condition_background`). Tokens are rounded through float16, as the stored training features were.

Randomness: the diffusion noise is drawn from a CPU generator seeded with `seed` (the same numbers on
every device); farthest point sampling starts at row 0 (upstream starts at a random row).
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn

from gvf.config import DiffusionExperimentConfig, load_config, to_kwargs
from gvf.gaussians import Gaussians, farthest_point_sampling, load_ply
from gvf.video import PreparedVideo, prepare_video

logger = logging.getLogger(__name__)

__all__ = [
    "RELEASE_FILES",
    "STAT_NAMES",
    "STATIC_VAE_FILE",
    "DEMO_RELEASE",
    "Release",
    "load_release",
    "VideoTo4DResult",
    "VideoTo4DPipeline",
]

ROOT = Path(__file__).resolve().parents[1]
DEMO_RELEASE = ROOT / "assets" / "demo" / "model"
# The files inference needs (the exporter also writes release.json and README.md).
RELEASE_FILES = {
    "config": "config.yaml",
    "dit": "dit.safetensors",
    "motion_vae": "motion_vae.safetensors",
    "stats": "latent_stats.safetensors",
}
STATIC_VAE_FILE = "static_vae.safetensors"  # optional: canonical Gaussians from voxel features (evaluation)
STAT_NAMES = ("static_mean", "static_std", "deformation_mean", "deformation_std")
NUM_STATIC_GAUSSIANS = 4096  # rows of the static condition (upstream FPS 4096)


# ------------------------------------------------------------------------------------------ release


@dataclass
class Release:
    """A loaded release: config, the networks (eval mode) and the normalisation statistics.

    `static_vae` is loaded only on request (`load_release(..., static_vae=True)`) and when present.
    """

    config: DiffusionExperimentConfig
    dit: nn.Module
    motion_vae: nn.Module
    stats: dict[str, torch.Tensor]
    directory: Path
    static_vae: nn.Module | None = None


def _check_release_dir(directory: Path) -> None:
    from gvf.hub import WeightsNotFoundError

    if not directory.is_dir():
        raise WeightsNotFoundError(f"release directory not found: {directory}")
    missing = [name for name in RELEASE_FILES.values() if not (directory / name).is_file()]
    if missing:
        raise WeightsNotFoundError(
            f"{directory} is not a complete gvf release: missing {', '.join(missing)} "
            f"(expected {', '.join(RELEASE_FILES.values())})"
        )


def _load_weights(model: nn.Module, path: Path) -> None:
    from gvf.checkpoints import load_state_dict_strict, load_torch_file, strip_module_prefix

    try:
        state = load_torch_file(path)
    except Exception as exc:  # safetensors raises its own error types for corrupt files
        raise ValueError(f"cannot read weights {path}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    load_state_dict_strict(model, strip_module_prefix(state), source=str(path))


def _load_stats(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        stats = load_file(str(path))
    except Exception as exc:
        raise ValueError(f"cannot read latent statistics {path}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    missing = [n for n in STAT_NAMES if n not in stats]
    if missing:
        raise ValueError(f"{path} lacks {', '.join(missing)} (expected {', '.join(STAT_NAMES)})")
    return {n: stats[n].float() for n in STAT_NAMES}


def load_release(directory: str | Path, device: torch.device | str | None = None, *, static_vae: bool = False) -> Release:
    """Load a release directory (layout in the module docstring); networks in eval mode on `device`.

    Args:
        static_vae: also load ``static_vae.safetensors`` (an error if the release has none).
    Raises:
        gvf.hub.WeightsNotFoundError (a FileNotFoundError) for a missing directory or file,
        gvf.config.ConfigError / ValueError for a config or weights that do not fit.
    """
    from gvf.models.dit import TemporalDiT
    from gvf.models.motion_vae import VariationFieldVAE

    directory = Path(directory).expanduser()
    _check_release_dir(directory)
    cfg = load_config(directory / RELEASE_FILES["config"], DiffusionExperimentConfig)
    dit = TemporalDiT(cfg.model)
    vae = VariationFieldVAE(**to_kwargs(cfg.motion_vae))
    _load_weights(dit, directory / RELEASE_FILES["dit"])
    _load_weights(vae, directory / RELEASE_FILES["motion_vae"])
    stats = _load_stats(directory / RELEASE_FILES["stats"])
    static = None
    if static_vae:
        from gvf.hub import WeightsNotFoundError
        from gvf.models.static_vae import StaticVAE

        if not (directory / STATIC_VAE_FILE).is_file():
            raise WeightsNotFoundError(f"{directory} has no {STATIC_VAE_FILE} (exported with --no-static-vae?)")
        static = StaticVAE(**to_kwargs(cfg.static_vae.backbones.vae.args))
        _load_weights(static, directory / STATIC_VAE_FILE)
        static = static.eval().to(device)
    logger.info("loaded release %s (DiT %d blocks × %d channels, features %s)", directory, cfg.model.num_blocks,
                cfg.model.model_channels, cfg.features.extractor)
    return Release(cfg, dit.eval().to(device), vae.eval().to(device), stats, directory, static)


# ------------------------------------------------------------------------------------------- result


@dataclass
class VideoTo4DResult:
    """4D Gaussians predicted from a video.

    Attributes:
        canonical: aligned canonical Gaussians (N), CPU float32.
        variations: (T, N, 14) per-frame variations in the motion-VAE output layout, CPU float32.
        video: the prepared input (centred frames, masks, indices, fps).
        azimuth_deg: azimuth found by the alignment (the canonical was rotated by −azimuth).
        scale_factor: input object size / rendered object size (renders are zoomed by it to match
            the input framing).
        nfe: network evaluations of the sampler.
        latents: (T, L, C) denormalised motion latents.
        settings: the run's settings (seed, solver, guidance, source ...), JSON-serialisable.
    """

    canonical: Gaussians
    variations: torch.Tensor
    video: PreparedVideo
    azimuth_deg: float
    scale_factor: float
    nfe: int
    latents: torch.Tensor
    settings: dict = field(default_factory=dict)

    @property
    def num_frames(self) -> int:
        return int(self.variations.shape[0])

    def frame(self, t: int) -> Gaussians:
        """The Gaussians of frame t (canonical with the frame's variation applied)."""
        return self.canonical.with_variation(self.variations[t])


# ----------------------------------------------------------------------------------------- pipeline


def _dtype_from_name(dtype) -> torch.dtype | None:
    """None / 'fp32' -> None (no autocast); 'fp16' / 'bf16' or a torch dtype -> that dtype."""
    if dtype is None or dtype in ("fp32", "float32", torch.float32):
        return None
    names = {"fp16": torch.float16, "float16": torch.float16, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}
    if isinstance(dtype, str):
        if dtype not in names:
            raise ValueError(f"dtype must be one of fp32, fp16, bf16, got {dtype!r}")
        return names[dtype]
    if dtype in (torch.float16, torch.bfloat16):
        return dtype
    raise ValueError(f"dtype must be float32, float16 or bfloat16, got {dtype}")


def _stat(t: torch.Tensor, device) -> torch.Tensor:
    return torch.as_tensor(t, dtype=torch.float32).to(device)


class VideoTo4DPipeline:
    """Turn a video (and canonical Gaussians) into per-frame Gaussian variations.

    Build with `from_release(dir)` or `from_official(...)`; call with a video.

    Args:
        dit: the temporal DiT (predicts v).
        motion_vae: the variation-field VAE (its decoder is used).
        schedule: `gvf.diffusion.GaussianDiffusion` the DiT was trained with.
        stats: static_mean, static_std, deformation_mean, deformation_std.
        extractor: `gvf.features` extractor giving the per-frame conditioning tokens (and the
            alignment's semantic term).
        normalize_positions: normalise the token positions with static_mean/std[:3] (upstream training)
            instead of passing raw xyz (our training and the official inference).
        condition_background: grey level the frames are composited on for the tokens (0 black, 1 white).
        num_static_gaussians: rows of the static condition (4096).
        image_to_3d: optional `gvf.image_to_3d.ImageTo3DPipeline` making canonical Gaussians from the
            first frame when none are given.
        source: a description of the weights (written into outputs).
        device: where to run (default: the DiT's device).
    """

    def __init__(
        self,
        dit: nn.Module,
        motion_vae: nn.Module,
        schedule,
        stats: Mapping[str, torch.Tensor],
        extractor,
        *,
        normalize_positions: bool,
        condition_background: float,
        num_static_gaussians: int = NUM_STATIC_GAUSSIANS,
        image_to_3d=None,
        source: str = "",
        device: torch.device | str | None = None,
    ):
        self.device = torch.device(device) if device is not None else next(dit.parameters()).device
        self.dit = dit.eval().to(self.device)
        self.motion_vae = motion_vae.eval().to(self.device)
        self.schedule = schedule
        missing = [n for n in STAT_NAMES if n not in stats]
        if missing:
            raise ValueError(f"stats lack {', '.join(missing)}")
        self.stats = {n: _stat(stats[n], self.device) for n in STAT_NAMES}
        self.extractor = extractor
        self.normalize_positions = bool(normalize_positions)
        self.condition_background = float(condition_background)
        self.num_static_gaussians = int(num_static_gaussians)
        self.image_to_3d = image_to_3d
        self.source = source
        dit_cfg, vae_cfg = dit.config, motion_vae.config
        if dit_cfg.in_channels != vae_cfg.latent_dim or dit_cfg.out_channels != vae_cfg.latent_dim:
            raise ValueError(
                f"the DiT works on {dit_cfg.in_channels}-channel latents but the motion VAE's latent_dim is {vae_cfg.latent_dim}"
            )
        channels = getattr(extractor, "feature_channels", None)
        if channels and channels != dit_cfg.image_cond_channels:
            raise ValueError(
                f"the feature extractor {getattr(extractor, 'name', '?')!r} gives {channels}-channel tokens but the DiT "
                f"expects image_cond_channels={dit_cfg.image_cond_channels}"
            )

    # ---- construction --------------------------------------------------------------------------
    @classmethod
    def from_release(
        cls,
        directory: str | Path | Release = DEMO_RELEASE,
        *,
        device: torch.device | str | None = None,
        extractor=None,
        **kwargs,
    ) -> "VideoTo4DPipeline":
        """Pipeline from one of our release directories (see `load_release`) or a loaded `Release`.

        Args:
            extractor: override the release's feature extractor (default: built from ``features``).
            kwargs: further constructor arguments (e.g. num_static_gaussians, image_to_3d).
        """
        from gvf.diffusion import GaussianDiffusion
        from gvf.features import get_extractor

        release = directory if isinstance(directory, Release) else load_release(directory, device=device)
        cfg = release.config
        if extractor is None:
            extractor = get_extractor(cfg.features.extractor, **dict(cfg.features.extractor_kwargs))
            extractor = extractor.to(device) if device is not None else extractor
        kwargs.setdefault("normalize_positions", cfg.data.normalize_positions)  # as trained (gvf.data.latent_dataset)
        kwargs.setdefault("num_static_gaussians", cfg.data.num_static_gaussians)  # as trained
        kwargs.setdefault("condition_background", float(getattr(extractor, "background", 0.0)))
        return cls(
            release.dit, release.motion_vae, GaussianDiffusion.from_config(cfg.diffusion), release.stats, extractor,
            source=str(release.directory), device=device, **kwargs,
        )  # fmt: skip

    @classmethod
    def from_official(
        cls,
        source: str | Path = "official",
        *,
        device: torch.device | str | None = None,
        image_to_3d: bool | Any = False,
        trellis: str | Path | None = None,
        revision: str | None = None,
        cache_dir: str | Path | None = None,
        extractor=None,
        **kwargs,
    ) -> "VideoTo4DPipeline":
        """Pipeline with the official GVFDiffusion weights (Hub download via `gvf.hub`, or a local folder).

        Args:
            source: "official" or a directory holding the official files.
            image_to_3d: True to load TRELLIS-image-large (+ GVF's Gaussian decoder) for canonical
                Gaussians from the first frame, or a loaded `ImageTo3DPipeline`.
            trellis: TRELLIS repo id or local folder (default: the Hub model).
            revision, cache_dir: Hub settings of the GVF release.
            extractor: override DINOv2 (e.g. an already loaded one).
        """
        from gvf import hub
        from gvf.diffusion import GaussianDiffusion
        from gvf.features import get_extractor

        revision = revision or hub.OFFICIAL_REVISION
        # fail fast (one message naming every missing file) before loading anything
        hub.resolve_weights(source, ["dit", "motion_vae", *hub.STAT_NAMES], revision=revision, cache_dir=cache_dir)
        cfg = load_config(hub.OFFICIAL_CONFIG_DIR / "diffusion.yml", DiffusionExperimentConfig)
        dit = hub.load_pretrained("dit", source, revision=revision, cache_dir=cache_dir, device=device)
        vae = hub.load_pretrained("motion_vae", source, revision=revision, cache_dir=cache_dir, device=device)
        stats = hub.load_normalization(source, revision=revision, cache_dir=cache_dir)
        if extractor is None:
            extractor = get_extractor("dinov2", device=device)
        if image_to_3d is True:
            from gvf.image_to_3d import TRELLIS_REPO_ID, ImageTo3DPipeline

            image_to_3d = ImageTo3DPipeline.from_pretrained(trellis or TRELLIS_REPO_ID, gvf_static_vae=source, device=device)
        kwargs.setdefault("normalize_positions", False)  # upstream inference: raw xyz (spec §10.2.1)
        kwargs.setdefault("condition_background", 1.0)  # upstream in-the-wild frames are on white
        return cls(
            dit, vae, GaussianDiffusion.from_config(cfg.diffusion), stats, extractor,
            image_to_3d=image_to_3d or None, source=f"official:{source}", device=device, **kwargs,
        )  # fmt: skip

    # ---- stages ----------------------------------------------------------------------------------
    @torch.no_grad()
    def condition_tokens(self, video: PreparedVideo, batch_size: int = 8, progress: bool = False) -> torch.Tensor:
        """Per-frame conditioning tokens (T, L_img, C_img) of the centred frames."""
        from tqdm.auto import tqdm

        images = torch.from_numpy(video.images_float()).permute(0, 3, 1, 2)  # (T, 3, H, W) on white
        alpha = torch.from_numpy(video.masks_float())[:, None]  # (T, 1, H, W)
        # on white: c·a + (1 − a); on a background b: c·a + b·(1 − a)
        images = (images - (1.0 - alpha) * (1.0 - self.condition_background)).clamp(0.0, 1.0)
        device = getattr(self.extractor, "device", self.device)
        out = []
        for i in tqdm(range(0, images.shape[0], batch_size), desc="image features", disable=not progress, leave=False):
            out.append(self.extractor.conditioning_tokens(images[i : i + batch_size].to(device)).float().to(self.device))
        tokens = torch.cat(out)
        return tokens.half().float()  # the training features are stored as float16

    def canonical_from_first_frame(self, video: PreparedVideo, seed: int = 0) -> Gaussians:
        """TRELLIS canonical Gaussians of the first centred frame (needs `image_to_3d`)."""
        if self.image_to_3d is None:
            raise ValueError("no canonical Gaussians given and this pipeline has no image-to-3D model; pass a canonical PLY")
        from gvf.image_to_3d import canonical_gaussians_from_image

        return canonical_gaussians_from_image(video.images[0], self.image_to_3d, seed=seed, mask=video.masks[0])

    def static_condition(self, canonical: Gaussians) -> tuple[torch.Tensor, torch.Tensor]:
        """FPS of the canonical Gaussians: normalised static rows (S, 14) and token positions (L, 3)."""
        rows = canonical.to_tensor14().to(self.device, torch.float32)  # (N, 14)
        N, L = rows.shape[0], self.motion_vae.config.num_latents
        if N < L:
            raise ValueError(f"the canonical Gaussians number {N}, fewer than the {L} latent tokens the model needs")
        S = min(self.num_static_gaussians, N)
        if S < self.num_static_gaussians:
            logger.warning("only %d canonical Gaussians: the static condition uses %d rows instead of %d", N, S, self.num_static_gaussians)
        xyz = rows[None, :, :3]
        static_rows = rows[farthest_point_sampling(xyz, S)[0]]  # (S, 14)
        token_rows = rows[farthest_point_sampling(xyz, L)[0]]  # (L, 14)
        mean, std = self.stats["static_mean"], self.stats["static_std"]
        static = (static_rows - mean) / std
        positions = token_rows[:, :3]
        if self.normalize_positions:
            m3 = mean[..., :3] if mean.ndim else mean
            s3 = std[..., :3] if std.ndim else std
            positions = (positions - m3) / s3
        return static, positions

    @torch.no_grad()
    def sample_latents(
        self,
        tokens: torch.Tensor,
        static: torch.Tensor,
        positions: torch.Tensor,
        *,
        seed: int = 0,
        solver: str = "adaptive",
        steps: int = 100,
        guidance_scale: float = 1.0,
        guidance_scale2: float = 1.0,
        dtype=None,
        progress: bool = False,
    ) -> tuple[torch.Tensor, int]:
        """DPM-Solver++ sample of the normalised motion latents, denormalised: (T, L, C), NFE."""
        from gvf.diffusion import dpm_solver_sample

        T = tokens.shape[0]
        L, C = positions.shape[0], self.dit.config.in_channels
        generator = torch.Generator().manual_seed(int(seed))
        noise = torch.randn((1, T, L, C), generator=generator, dtype=torch.float32).to(self.device)
        condition = {
            "cond_images": tokens[None].to(self.device),
            "static_latent": static[None].to(self.device),
            "deformation_position_xyz": positions[None].to(self.device),
        }
        sample, nfe = dpm_solver_sample(
            self.dit, self.schedule, noise, condition, method=solver, steps=steps,
            guidance_scale=guidance_scale, guidance_scale2=guidance_scale2,
            autocast_dtype=_dtype_from_name(dtype), progress=progress,
        )  # fmt: skip
        mean, std = self.stats["deformation_mean"], self.stats["deformation_std"]
        try:
            latents = sample[0] * std + mean
        except RuntimeError:
            raise ValueError(
                f"the deformation statistics of shapes {tuple(std.shape)} / {tuple(mean.shape)} do not broadcast "
                f"to the latents (T={T}, L={L}, C={C})"
            ) from None
        return latents, nfe

    @torch.no_grad()
    def decode_variations(self, latents: torch.Tensor, canonical: Gaussians, dtype=None) -> torch.Tensor:
        """Motion-VAE decode of every canonical Gaussian: (T, L, C) latents -> (T, N, 14) variations."""
        queries = canonical.to_tensor14().to(self.device, torch.float32)[None]  # (1, N, 14)
        autocast = _dtype_from_name(dtype)
        ctx = torch.autocast(self.device.type, dtype=autocast) if autocast is not None else contextlib.nullcontext()
        with ctx:
            out = self.motion_vae.decode(latents.to(self.device), queries, num_frames=latents.shape[0])
        return out[0].float()

    # ---- the whole run -------------------------------------------------------------------------
    @torch.no_grad()
    def __call__(
        self,
        video: str | Path | np.ndarray | PreparedVideo,
        canonical: Gaussians | str | Path | None = None,
        *,
        mask=None,
        num_frames: int | None = None,
        start: int = 0,
        stride: int = 1,
        seed: int = 0,
        solver: str = "adaptive",
        steps: int = 100,
        guidance_scale: float = 1.0,
        guidance_scale2: float = 1.0,
        dtype=None,
        align_step_deg: float | None = 1.0,
        align_resolution: int = 512,
        progress: bool = True,
    ) -> VideoTo4DResult:
        """Run the whole pipeline.

        Args:
            video: a video file / frame folder / (T, H, W, 3|4) uint8 array, or a `PreparedVideo`.
            canonical: Gaussians or a PLY path; None runs `image_to_3d` on the first frame.
            mask, num_frames, start, stride: input options (`gvf.video.prepare_video`).
            seed: diffusion noise (and TRELLIS) seed.
            solver: "adaptive" (upstream reference run) or "multistep" (`steps` evaluations).
            guidance_scale, guidance_scale2: s1 (static condition) and s2 (video condition); 1, 1 = no CFG.
            dtype: None/"fp32", "fp16" or "bf16": autocast precision of the networks.
            align_step_deg: azimuth search step (1 in the wild, 90 for renders); None or 0 skips the
                alignment (the canonical is used as given, scale factor 1).
            align_resolution: render side of the alignment (upstream 512).
            progress: progress bars.
        """
        if not isinstance(video, PreparedVideo):
            video = prepare_video(video, num_frames, start, stride, mask, progress=progress)
        if isinstance(canonical, (str, Path)):
            canonical = load_ply(canonical)
        if canonical is None:
            canonical = self.canonical_from_first_frame(video, seed=seed)
        canonical = canonical.to(self.device, torch.float32)
        T = video.num_frames
        logger.info("video-to-4D: %d frames, %d canonical Gaussians, solver %s", T, len(canonical), solver)

        tokens = self.condition_tokens(video, progress=progress)
        azimuth, scale = 0.0, 1.0
        if align_step_deg:
            from gvf.align import align_to_frame

            aligned = align_to_frame(
                canonical, video.images[0], video.masks[0], extractor=self.extractor, step_deg=align_step_deg,
                resolution=align_resolution, progress=progress,
            )  # fmt: skip
            canonical, azimuth, scale = aligned.gaussians, aligned.azimuth_deg, aligned.scale_factor
        static, positions = self.static_condition(canonical)
        latents, nfe = self.sample_latents(
            tokens, static, positions, seed=seed, solver=solver, steps=steps, guidance_scale=guidance_scale,
            guidance_scale2=guidance_scale2, dtype=dtype, progress=progress,
        )  # fmt: skip
        variations = self.decode_variations(latents, canonical, dtype=dtype)
        if not bool(torch.isfinite(variations).all()):
            raise RuntimeError("the predicted variations contain NaN or inf values (try --dtype fp32)")
        settings = {
            "weights": self.source, "seed": int(seed), "solver": solver, "steps": int(steps) if solver == "multistep" else None,
            "guidance_scale": float(guidance_scale), "guidance_scale2": float(guidance_scale2),
            "dtype": str(dtype or "fp32"), "align_step_deg": align_step_deg or None,
            "normalize_positions": self.normalize_positions,
        }  # fmt: skip
        return VideoTo4DResult(
            canonical=canonical.to("cpu"), variations=variations.cpu(), video=video, azimuth_deg=azimuth,
            scale_factor=scale, nfe=nfe, latents=latents.cpu(), settings=settings,
        )  # fmt: skip
