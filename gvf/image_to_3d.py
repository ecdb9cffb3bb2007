"""Canonical 3D Gaussians from the first video frame: TRELLIS image-to-3D with GVF's Gaussian decoder.

What GVF runs (spec §1.5) and this module reproduces:

1. `preprocess_image`: the object's alpha (the frame's own, a given mask, or background removal with
   rembg's u2net), a square crop of 1.2× the bounding box of alpha > 0.8·255, 518² LANCZOS, RGB
   premultiplied by alpha (black background).
2. Condition: DINOv2 ViT-L/14-reg pre-norm tokens through a non-affine layer norm, (1, 1374, 1024);
   the negative condition is zeros.
3. `torch.manual_seed(seed)`, then noise (1, 8, 16, 16, 16) from the CPU generator; the sparse-structure
   flow (12 Euler steps, CFG 7.5) and decoder give the occupied voxels (logit > 0) of a 64³ grid.
4. Noise (N, 8), the next CPU draw; the structured-latent flow (12 steps, CFG 3); denormalised with
   pipeline.json's `slat_normalization` (per channel `x·std + mean`).
5. GVF's static-VAE decoder (8 Gaussians per voxel, resolution 64) turns the latent into Gaussians.

Differences from the upstream pipeline, on purpose: the mesh and radiance-field decoders are not run
(their outputs were discarded; spec §10.2.15), and the Gaussian decoder is loaded strictly (upstream
loads it with strict=False, so a mis-keyed checkpoint silently kept random weights; §10.2.13).

Weights: `ImageTo3DPipeline.from_pretrained` reads TRELLIS-image-large (`pipeline.json` and
`ckpts/<model>.json|.safetensors` of the three models used) from the Hugging Face Hub or a local folder
with that layout, GVF's `ema_static_vae_0.9999_200000.pt` through `gvf.hub`, and DINOv2 through
`gvf.features.dinov2`.

Background removal needs the optional package `rembg` (``pip install rembg``; it downloads its u2net
model itself on first use). It is only used for images without transparency and without a mask.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from PIL import Image

from gvf.checkpoints import convert_upstream, load_state_dict_strict, load_torch_file
from gvf.diffusion.flow_euler import FlowEulerSampler
from gvf.gaussians import Gaussians
from gvf.models.trellis import TRELLIS_CLASSES, SLatFlow, SparseStructureDecoder, SparseStructureFlow, occupied_voxels
from gvf.models.trellis.ss_decoder import UpsampleBlock3d
from gvf.sparse.tensor import SparseTensor

logger = logging.getLogger(__name__)

__all__ = [
    "TRELLIS_REPO_ID",
    "GVF_SS_SAMPLER_PARAMS",
    "GVF_SLAT_SAMPLER_PARAMS",
    "SamplerConfig",
    "ImageTo3DPipeline",
    "preprocess_image",
    "denormalize_slat",
    "canonical_gaussians_from_image",
]

TRELLIS_REPO_ID = "JeffreyXiang/TRELLIS-image-large"
# Branch head, as upstream downloads it; the checkpoints were uploaded in hub commit 2476b8d. Pass
# a full commit hash as `revision` to pin a download.
TRELLIS_REVISION = "main"
# The pipeline.json entries GVF uses, and their file stems in TRELLIS-image-large (for error messages).
TRELLIS_MODELS = {
    "sparse_structure_flow_model": "ckpts/ss_flow_img_dit_L_16l8_fp16",
    "sparse_structure_decoder": "ckpts/ss_dec_conv3d_16l8_fp16",
    "slat_flow_model": "ckpts/slat_flow_img_dit_L_64l8p2_fp16",
}
# GVF's overrides of pipeline.json's sampler params (inference_dpm_latent.py).
GVF_SS_SAMPLER_PARAMS = {"steps": 12, "cfg_strength": 7.5}
GVF_SLAT_SAMPLER_PARAMS = {"steps": 12, "cfg_strength": 3.0}
_SAMPLER_KEYS = {"steps", "cfg_strength", "cfg_interval", "rescale_t"}
IMAGE_SIZE = 518


# ---- preprocessing -------------------------------------------------------------------------------


def _to_pil(image) -> Image.Image:
    if isinstance(image, Image.Image):
        return image
    if isinstance(image, (str, Path)):
        path = Path(image)
        if not path.is_file():
            raise FileNotFoundError(f"image not found: {path}")
        return Image.open(path).convert("RGBA")  # what GVF's inference does before the pipeline
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] not in (3, 4):
            raise ValueError(f"a numpy image must be uint8 (H, W, 3|4), got {image.dtype} {image.shape}")
        return Image.fromarray(image, "RGBA" if image.shape[2] == 4 else "RGB")
    raise ValueError(f"expected a PIL image, a path or a uint8 numpy array, got {type(image).__name__}")


def load_rembg_session(model_name: str = "u2net"):
    """A rembg session (rembg downloads the model on first use); clear error if rembg is missing."""
    try:
        import rembg
    except ImportError as err:
        raise ImportError(
            "background removal needs the optional package rembg (pip install rembg); "
            "or pass an image with transparency, or a mask"
        ) from err
    return rembg.new_session(model_name)


def preprocess_image(image, mask=None, rembg_session=None) -> Image.Image:
    """The first frame as TRELLIS's condition image: 518×518 RGB, object premultiplied on black.

    Args:
        image: PIL image, path (opened and converted to RGBA) or uint8 (H, W, 3|4) array.
        mask: optional object mask (PIL image or (H, W) array, 0..255 uint8 or 0..1 float) used as
            alpha instead of the image's own; skips background removal.
        rembg_session: session for background removal (default: u2net, created on demand); only used
            when the image has no transparency and no mask is given.
    Returns:
        PIL RGB image of 518×518.
    """
    image = _to_pil(image)
    if mask is not None:
        alpha = _mask_to_uint8(mask, image.size)
        rgba = image.convert("RGB")
        rgba.putalpha(Image.fromarray(alpha, "L"))
    elif image.mode == "RGBA" and not np.all(np.asarray(image)[:, :, 3] == 255):
        rgba = image
    else:
        rgb = image.convert("RGB")
        scale = min(1.0, 1024 / max(rgb.size))
        if scale < 1:
            rgb = rgb.resize((int(rgb.width * scale), int(rgb.height * scale)), Image.Resampling.LANCZOS)
        session = rembg_session if rembg_session is not None else load_rembg_session()
        import rembg  # present: load_rembg_session checked it

        rgba = rembg.remove(rgb, session=session).convert("RGBA")

    alpha = np.asarray(rgba)[:, :, 3]
    ys, xs = np.nonzero(alpha > 0.8 * 255)
    if len(xs) == 0:
        raise ValueError("the object mask is empty: no pixel has alpha above 0.8·255")
    x0, y0, x1, y1 = int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    size = int(max(x1 - x0, y1 - y0) * 1.2)
    # float box, rounded by PIL like upstream; outside the image PIL pads with transparent black
    crop = rgba.crop((cx - size // 2, cy - size // 2, cx + size // 2, cy + size // 2))
    crop = crop.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.LANCZOS)
    arr = np.asarray(crop).astype(np.float32) / 255
    rgb = arr[:, :, :3] * arr[:, :, 3:4]
    return Image.fromarray((rgb * 255).astype(np.uint8))  # truncation, as upstream


def _mask_to_uint8(mask, size: tuple[int, int]) -> np.ndarray:
    if isinstance(mask, (str, Path)):
        mask = Image.open(mask)
    if isinstance(mask, Image.Image):
        arr = np.asarray(mask.convert("L"))
    else:
        arr = np.asarray(mask)
        if arr.dtype != np.uint8:
            arr = (np.clip(arr.astype(np.float32), 0, 1) * 255).round().astype(np.uint8)
    if arr.ndim != 2 or arr.shape[::-1] != tuple(size):
        raise ValueError(f"mask must be a single-channel image of the frame's size {size}, got shape {arr.shape}")
    return arr


def denormalize_slat(feats: torch.Tensor, normalization: Mapping[str, Any]) -> torch.Tensor:
    """Structured latent back to the decoder's scale: feats (N, C)·std + mean (float32 tensors, like upstream)."""
    std = torch.tensor(normalization["std"], dtype=torch.float32, device=feats.device)[None]
    mean = torch.tensor(normalization["mean"], dtype=torch.float32, device=feats.device)[None]
    return feats * std + mean


# ---- the pipeline --------------------------------------------------------------------------------


@dataclass
class SamplerConfig:
    """A flow sampler of pipeline.json: σ_min and the default `sample` params."""

    sigma_min: float = 1e-5
    params: dict = field(default_factory=lambda: {"steps": 25, "cfg_strength": 5.0, "cfg_interval": [0.5, 1.0], "rescale_t": 3.0})

    @classmethod
    def from_pipeline_json(cls, entry: Mapping) -> "SamplerConfig":
        name = entry.get("name")
        params = dict(entry.get("params", {}))
        if name == "FlowEulerCfgSampler":  # guidance at every step
            params.setdefault("cfg_interval", [0.0, 1.0])
        elif name == "FlowEulerSampler":
            params["cfg_strength"] = 0.0
        elif name != "FlowEulerGuidanceIntervalSampler":
            raise ValueError(f"unsupported sampler {name!r} in pipeline.json (expected a FlowEuler* sampler)")
        return cls(sigma_min=float(entry.get("args", {}).get("sigma_min", 1e-5)), params=params)


class ImageTo3DPipeline:
    """TRELLIS image-to-3D as GVF runs it: one image -> canonical Gaussians (module docstring).

    Args:
        ss_flow, ss_decoder, slat_flow: the TRELLIS models.
        gaussian_decoder: `StaticVAE(decoder_only=True)` with GVF's weights (8 Gaussians per voxel).
        image_encoder: a `DinoV2Extractor` (anything with `trellis_condition(images (B, 3, H, W)) -> (B, L, C)`).
        slat_normalization: {"mean": [C], "std": [C]} of pipeline.json.
        ss_sampler, slat_sampler: pipeline.json's samplers; GVF's step/CFG overrides apply on top.
        progress: show sampler progress bars.
    """

    def __init__(
        self,
        ss_flow: SparseStructureFlow,
        ss_decoder: SparseStructureDecoder,
        slat_flow: SLatFlow,
        gaussian_decoder,
        image_encoder,
        slat_normalization: Mapping[str, Any],
        ss_sampler: SamplerConfig | None = None,
        slat_sampler: SamplerConfig | None = None,
        progress: bool = False,
    ):
        self.ss_flow, self.ss_decoder, self.slat_flow = ss_flow.eval(), ss_decoder.eval(), slat_flow.eval()
        self.gaussian_decoder, self.image_encoder = gaussian_decoder.eval(), image_encoder.eval()
        self.slat_normalization = {k: [float(v) for v in slat_normalization[k]] for k in ("mean", "std")}
        self.ss_sampler = ss_sampler or SamplerConfig()
        self.slat_sampler = slat_sampler or SamplerConfig()
        self.progress = progress
        self.gaussian_decoder_dtype = torch.float32
        self._rembg_session = None
        self._check_sizes()

    def _check_sizes(self) -> None:
        upsamples = sum(isinstance(b, UpsampleBlock3d) for b in self.ss_decoder.blocks)
        occupancy_res = self.ss_flow.resolution * 2**upsamples
        res = {"sparse-structure occupancy": occupancy_res, "SLat flow": self.slat_flow.resolution,
               "Gaussian decoder": self.gaussian_decoder.resolution}  # fmt: skip
        if len(set(res.values())) != 1:
            raise ValueError(f"the models disagree on the voxel grid resolution: {res}")
        if self.ss_decoder.latent_channels != self.ss_flow.out_channels:
            raise ValueError("the sparse-structure decoder's latent channels differ from the flow's output channels")
        if len(self.slat_normalization["mean"]) != self.slat_flow.out_channels:
            n = len(self.slat_normalization["mean"])
            raise ValueError(f"slat_normalization has {n} channels but the SLat flow outputs {self.slat_flow.out_channels}")

    # ---- device / precision ---------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.ss_flow.parameters()).device

    def to(self, device: torch.device | str) -> "ImageTo3DPipeline":
        for m in (self.ss_flow, self.ss_decoder, self.slat_flow, self.gaussian_decoder, self.image_encoder):
            m.to(device)
        return self

    def set_precision(self, dtype: torch.dtype) -> "ImageTo3DPipeline":
        """Torso dtype of the three TRELLIS models (float16 = the released `use_fp16`) and autocast dtype of
        the Gaussian decoder; LayerNorms, input/output layers and DINOv2 stay float32."""
        if dtype not in (torch.float32, torch.float16, torch.bfloat16):
            raise ValueError(f"precision must be float32, float16 or bfloat16, got {dtype}")
        for m in (self.ss_flow, self.ss_decoder, self.slat_flow):
            m.convert_torso(dtype)
        self.gaussian_decoder_dtype = dtype
        return self

    # ---- stages ------------------------------------------------------------------------------
    def preprocess(self, image, mask=None) -> Image.Image:
        """`preprocess_image` with this pipeline's (lazily created, reused) rembg session."""
        image = _to_pil(image)
        needs_rembg = mask is None and not (image.mode == "RGBA" and not np.all(np.asarray(image)[:, :, 3] == 255))
        if needs_rembg and self._rembg_session is None:
            self._rembg_session = load_rembg_session()
        return preprocess_image(image, mask, self._rembg_session)

    @torch.no_grad()
    def encode_condition(self, image: Image.Image) -> dict[str, torch.Tensor]:
        """Preprocessed RGB image -> {"cond": (1, L, C), "neg_cond": zeros}."""
        arr = np.asarray(image.convert("RGB")).astype(np.float32) / 255
        pixels = torch.from_numpy(arr).permute(2, 0, 1)[None].to(self.device)  # (1, 3, H, W)
        cond = self.image_encoder.trellis_condition(pixels).float()
        return {"cond": cond, "neg_cond": torch.zeros_like(cond)}

    def _params(self, sampler: SamplerConfig, gvf: Mapping, override: Mapping | None) -> dict:
        params = {**sampler.params, **gvf, **(override or {})}
        unknown = set(params) - _SAMPLER_KEYS
        if unknown:
            raise ValueError(f"unknown sampler parameters {sorted(unknown)}; expected some of {sorted(_SAMPLER_KEYS)}")
        return params

    @torch.no_grad()
    def sample_structure_latent(self, cond: Mapping[str, torch.Tensor], sampler_params: Mapping | None = None) -> torch.Tensor:
        """Stage 1 flow: noise (1, C, R, R, R) from the CPU generator -> latent z on the pipeline device."""
        flow = self.ss_flow
        R = flow.resolution
        noise = torch.randn(1, flow.in_channels, R, R, R).to(self.device)  # CPU generator, like upstream
        params = self._params(self.ss_sampler, GVF_SS_SAMPLER_PARAMS, sampler_params)
        sampler = FlowEulerSampler(self.ss_sampler.sigma_min)
        out = sampler.sample(flow, noise, cond["cond"], cond["neg_cond"], progress=self.progress, desc="sparse structure", **params)
        return out.samples

    @torch.no_grad()
    def decode_structure(self, z: torch.Tensor) -> torch.Tensor:
        """Latent -> occupied voxels (N, 4) int32 [batch, x, y, z] (logit > 0, ascending)."""
        coords = occupied_voxels(self.ss_decoder(z))
        if len(coords) == 0:
            raise RuntimeError("the sparse-structure decoder found no occupied voxel for this image")
        logger.info("sparse structure: %d occupied voxels", len(coords))
        return coords

    @torch.no_grad()
    def sample_slat(self, cond: Mapping[str, torch.Tensor], coords: torch.Tensor, sampler_params: Mapping | None = None) -> SparseTensor:
        """Stage 2 flow on the voxels: noise (N, C) from the CPU generator -> denormalised latent."""
        flow = self.slat_flow
        noise = SparseTensor(torch.randn(coords.shape[0], flow.in_channels).to(self.device), coords.to(self.device))
        params = self._params(self.slat_sampler, GVF_SLAT_SAMPLER_PARAMS, sampler_params)
        sampler = FlowEulerSampler(self.slat_sampler.sigma_min)
        out = sampler.sample(flow, noise, cond["cond"], cond["neg_cond"], progress=self.progress, desc="structured latent", **params)
        slat = out.samples
        return slat.replace(denormalize_slat(slat.feats, self.slat_normalization))

    @torch.no_grad()
    def decode_gaussians(self, slat: SparseTensor) -> list[Gaussians]:
        """GVF's Gaussian decoder: one float32 `Gaussians` (8 per voxel) per object."""
        dtype = self.gaussian_decoder_dtype
        with torch.autocast(self.device.type, dtype=dtype, enabled=dtype != torch.float32):
            decoded = self.gaussian_decoder.decode(slat.coords, slat.feats)
        return [g.to(torch.float32) for g in self.gaussian_decoder.to_gaussians(slat.coords, decoded.float())]

    @torch.no_grad()
    def run(
        self,
        image,
        seed: int = 0,
        mask=None,
        preprocess: bool = True,
        ss_sampler_params: Mapping | None = None,
        slat_sampler_params: Mapping | None = None,
    ) -> Gaussians:
        """One image -> canonical Gaussians.

        Args:
            image: PIL image / path / uint8 array (see `preprocess_image`); with `preprocess=False` an
                already preprocessed 518² RGB image.
            seed: `torch.manual_seed(seed)` right before the noise draws, as upstream (this reseeds the
                global CPU and CUDA generators).
            mask: optional object mask (see `preprocess_image`).
            ss_sampler_params, slat_sampler_params: overrides of GVF's sampler settings.
        Returns:
            Gaussians (8 per occupied voxel), float32, on the pipeline device.
        """
        image = self.preprocess(image, mask) if preprocess else _to_pil(image)
        cond = self.encode_condition(image)
        torch.manual_seed(seed)
        coords = self.decode_structure(self.sample_structure_latent(cond, ss_sampler_params))
        slat = self.sample_slat(cond, coords, slat_sampler_params)
        return self.decode_gaussians(slat)[0]

    __call__ = run

    # ---- loading -------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls,
        trellis: str | Path = TRELLIS_REPO_ID,
        gvf_static_vae: str | Path = "official",
        *,
        revision: str | None = TRELLIS_REVISION,
        gvf_revision: str | None = None,
        static_vae_config: str | Path | Mapping | None = None,
        dinov2: str | Path | None = None,
        dinov2_revision: str | None = None,
        cache_dir: str | Path | None = None,
        local_files_only: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        progress: bool = False,
    ) -> "ImageTo3DPipeline":
        """Load every model (strictly) and build the pipeline.

        Args:
            trellis: Hub repo id of TRELLIS-image-large or a local folder with its layout
                (`pipeline.json`, `ckpts/<name>.json`, `ckpts/<name>.safetensors`).
            gvf_static_vae: "official" (GVF release on the Hub, via `gvf.hub`), a directory holding
                `ema_static_vae_0.9999_200000.pt`, or a checkpoint file (GVF static VAE `.pt`, or a
                TRELLIS-named 8-Gaussian decoder `.safetensors`).
            revision: Hub revision of `trellis`; gvf_revision: of the GVF release (default gvf.hub's).
            static_vae_config: constructor arguments of the static VAE (default: the official config).
            dinov2, dinov2_revision: DINOv2 weights (default: `gvf.features.dinov2`'s pinned Hub model).
            cache_dir, local_files_only: Hugging Face download settings.
            device: where to run (default CPU); dtype: torso precision (None = the checkpoints'
                `use_fp16`, i.e. float16 for the released models; see `set_precision`).
        Raises:
            gvf.hub.WeightsNotFoundError (one sentence naming the missing files and where they were sought).
        """
        from gvf.features.dinov2 import DINOV2_REPO_ID, DINOV2_REVISION, DinoV2Extractor

        args, files = _trellis_files(trellis, revision, cache_dir, local_files_only)
        models = {name: _load_trellis_model(*files[name], name) for name in TRELLIS_MODELS}
        decoder = _load_gaussian_decoder(gvf_static_vae, static_vae_config, gvf_revision, cache_dir)
        encoder = DinoV2Extractor.from_pretrained(
            str(dinov2 or DINOV2_REPO_ID), revision=dinov2_revision or (None if dinov2 else DINOV2_REVISION),
            local_files_only=local_files_only, cache_dir=None if cache_dir is None else str(cache_dir),
        )
        expected_cond = args.get("image_cond_model")
        if expected_cond and expected_cond != "dinov2_vitl14_reg":
            logger.warning("pipeline.json asks for image condition model %r; using DINOv2 ViT-L/14-reg", expected_cond)
        pipeline = cls(
            models["sparse_structure_flow_model"], models["sparse_structure_decoder"], models["slat_flow_model"],
            decoder, encoder, args["slat_normalization"],
            SamplerConfig.from_pipeline_json(args["sparse_structure_sampler"]),
            SamplerConfig.from_pipeline_json(args["slat_sampler"]), progress=progress,
        )  # fmt: skip
        if dtype is not None:
            pipeline.set_precision(dtype)
        elif models["sparse_structure_flow_model"].dtype == torch.float16:
            pipeline.gaussian_decoder_dtype = torch.float16  # its released JSON says use_fp16 too
        return pipeline.to(device or "cpu")


def _trellis_files(source, revision, cache_dir, local_files_only) -> tuple[dict, dict[str, tuple[Path, Path]]]:
    """pipeline.json args and {entry: (config json, safetensors)} of the three models GVF uses."""
    from gvf.hub import WeightsNotFoundError

    local = Path(source).expanduser()
    if not local.is_dir() and (str(source).startswith(("/", ".", "~")) or str(source).count("/") != 1):
        raise WeightsNotFoundError(
            f"the TRELLIS weights folder {str(source)!r} does not exist (expected a folder with pipeline.json and "
            f"ckpts/*.json|*.safetensors, or a Hub repo id such as {TRELLIS_REPO_ID})"
        )
    if local.is_dir():
        def fetch(rel: str) -> Path:
            path = local / rel
            if not path.is_file():
                raise FileNotFoundError(path)
            return path

        where = str(local)
    else:
        import huggingface_hub

        def fetch(rel: str) -> Path:
            return Path(huggingface_hub.hf_hub_download(
                repo_id=str(source), filename=rel, revision=revision,
                cache_dir=None if cache_dir is None else str(cache_dir), local_files_only=local_files_only,
            ))  # fmt: skip

        where = f"the Hugging Face repo {source} (revision {revision!r}) and cache {cache_dir or huggingface_hub.constants.HF_HUB_CACHE}"

    missing, reason = [], ""

    def try_fetch(rel: str) -> Path | None:
        nonlocal reason
        try:
            return fetch(rel)
        except Exception as exc:  # offline, missing file, bad repo id: reported together below
            missing.append(rel)
            reason = reason or (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            return None

    pipeline_json = try_fetch("pipeline.json")
    stems = dict(TRELLIS_MODELS)
    args: dict = {}
    if pipeline_json is not None:
        args = json.loads(pipeline_json.read_text())["args"]
        stems = {name: args["models"][name] for name in TRELLIS_MODELS}
    files = {}
    for name, stem in stems.items():
        paths = [try_fetch(f"{stem}.json"), try_fetch(f"{stem}.safetensors")]
        files[name] = tuple(paths)
    if missing:
        raise WeightsNotFoundError(
            f"the TRELLIS image-to-3D weights are incomplete: missing {', '.join(missing)} in {where} ({reason}); "
            f"download {TRELLIS_REPO_ID} (pipeline.json and those ckpts files) and pass its folder as `trellis`"
        )
    return args, files


def _load_trellis_model(config_path: Path, weights_path: Path, entry: str):
    from safetensors.torch import load_file

    config = json.loads(Path(config_path).read_text())
    name = config.get("name")
    if name not in TRELLIS_CLASSES:
        raise ValueError(f"{config_path}: unknown TRELLIS model class {name!r} for {entry}")
    cls = TRELLIS_CLASSES[name]
    model = cls(**config["args"])
    kind = {SparseStructureFlow: "trellis_ss_flow", SparseStructureDecoder: "trellis_ss_decoder", SLatFlow: "trellis_slat_flow"}[cls]
    load_state_dict_strict(model, convert_upstream(kind, load_file(str(weights_path))), source=str(weights_path))
    logger.info("loaded %s (%s) from %s", entry, name, weights_path)
    return model.eval()


def _load_gaussian_decoder(source, config, revision, cache_dir):
    """GVF's static-VAE decoder (decoder-only StaticVAE), loaded strictly."""
    from gvf.hub import OFFICIAL_REVISION, WeightsNotFoundError, official_model_config, resolve_weights
    from gvf.models.static_vae import StaticVAE

    path = Path(source).expanduser() if not (isinstance(source, str) and source == "official") else None
    if path is not None and path.is_file():
        ckpt = path
    elif path is not None and not path.is_dir():
        raise WeightsNotFoundError(f"GVF static VAE weights {str(source)!r} are neither 'official', a directory nor a file")
    else:
        ckpt = resolve_weights(source, ["static_vae"], revision=revision or OFFICIAL_REVISION, cache_dir=cache_dir)["static_vae"]
    state = load_torch_file(ckpt)
    trellis_names = any(k.removeprefix("module.").startswith("blocks.") for k in state)
    state = convert_upstream("trellis_slat_gs_decoder" if trellis_names else "static_vae", state)
    cfg = dict(official_model_config("static_vae", config))
    decoder = StaticVAE(**cfg, decoder_only=True)
    decoder.load_decoder_state_dict(state)
    logger.info("loaded the Gaussian decoder from %s", ckpt)
    return decoder.eval()


def canonical_gaussians_from_image(image, pipeline: ImageTo3DPipeline, seed: int = 0, mask=None) -> Gaussians:
    """The canonical (first-frame) Gaussians of a video, as GVF's inference makes them.

    Args:
        image: the canonical frame (path, PIL image or uint8 array); paths are opened as RGBA.
        pipeline: a loaded `ImageTo3DPipeline`.
        seed: the run's seed (GVF passes `--seed`).
        mask: optional object mask (in-the-wild frames); without it an opaque image goes through rembg.
    Returns:
        Gaussians on the pipeline's device.
    """
    return pipeline.run(image, seed=seed, mask=mask)
