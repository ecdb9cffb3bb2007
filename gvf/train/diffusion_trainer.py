"""Training of the temporal DiT on encoded motion latents (spec §5.3-5.4, §6.3-6.4), and the release export.

Per micro-batch: latents x0 (B, T, L, C) (normalised posterior samples of ``data.num_timesteps``
sorted random frames, `gvf.data.latent_dataset`), uniform integer steps t, Gaussian noise, and the
v-prediction MSE of `GaussianDiffusion.training_loss` (no SNR weighting). Classifier-free dropout
zeroes the video features of a sample with probability ``train.uncond_p``; the static latent and
the token positions are always kept. AdamW + linear warm-up, gradient clipping, accumulation,
mixed precision and DDP through accelerate; EMA only on optimizer steps.

Every ``train.sample_interval`` steps (rank 0) the EMA model samples a held-out object with
multistep DPM-Solver++ (a private RNG: training randomness is untouched); the MSE to the object's
encoded latents is logged and, given ``train.vae_checkpoint``, the sample and the encoded latents
are decoded by the motion VAE, applied to the object's static Gaussians and rendered from the
input (front) view over time into ``<run_dir>/samples/step_XXXXXXXX_<name>.mp4``
(left: sample, right: VAE reconstruction).

`export_release` writes the directory the inference pipeline loads (layout in its docstring).
"""

from __future__ import annotations

import logging
import math
import os
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from gvf.config import DiffusionConfig, DiffusionExperimentConfig, to_kwargs, to_yaml_dict
from gvf.data.latent_dataset import (
    LatentDataset,
    collate_latents,
    list_latent_names,
    load_latent_file,
    load_latent_stats,
)
from gvf.diffusion import GaussianDiffusion, dpm_solver_sample
from gvf.export import write_video
from gvf.models.dit import TemporalDiT
from gvf.pipeline import RELEASE_FILES as INFERENCE_FILES
from gvf.pipeline import STATIC_VAE_FILE
from gvf.train.checkpointing import load_checkpoint_state
from gvf.train.ema import EMA
from gvf.train.loop import linear_warmup
from gvf.train.trainer import Trainer
from gvf.utils.io import atomic_write

logger = logging.getLogger(__name__)

__all__ = ["DiffusionTrainer", "build_diffusion", "resolve_data_paths", "render_motion_video", "export_release", "RELEASE_FILES"]

# What inference reads (gvf.pipeline) plus the optional static VAE and the descriptive files.
RELEASE_FILES = {**INFERENCE_FILES, "static_vae": STATIC_VAE_FILE, "info": "release.json", "readme": "README.md"}


def build_diffusion(cfg: DiffusionConfig) -> GaussianDiffusion:
    """The `GaussianDiffusion` of a ``diffusion`` config section (only the official combination of
    options is supported: no learned sigma, no KL term, no respacing, no min-SNR weighting)."""
    if cfg.learn_sigma or cfg.use_kl or cfg.min_snr or cfg.timestep_respacing not in ("", str(cfg.steps)):
        raise ValueError("diffusion: learn_sigma, use_kl, min_snr and timestep_respacing are not supported (the official model uses none)")
    predict = {"v": "v", "eps": "eps", "xstart": "x_start"}[cfg.predict_type]
    return GaussianDiffusion(cfg.steps, cfg.noise_schedule, predict, cfg.rescale_timesteps)


def resolve_data_paths(cfg: DiffusionExperimentConfig) -> tuple[Path, Path, Any]:
    """(latents_dir, cond_dir, stats source) from the data section's defaults."""
    dc = cfg.data
    data_dir = Path(dc.data_dir)
    latents_dir = Path(dc.latents_dir) if dc.latents_dir else data_dir / "latents"
    cond_dir = Path(dc.cond_dir) if dc.cond_dir else data_dir / "cond_features"
    files = {
        "static_mean": dc.static_mean_file,
        "static_std": dc.static_std_file,
        "deformation_mean": dc.deformation_mean_file,
        "deformation_std": dc.deformation_std_file,
    }
    if any(v is not None for v in files.values()):
        stats = files
    else:
        stats = Path(dc.stats_file) if dc.stats_file else latents_dir
    return latents_dir, cond_dir, stats


class DiffusionTrainer(Trainer):
    """Trains a `TemporalDiT` of a `DiffusionExperimentConfig` into ``run_dir``.

    Args: as `gvf.train.trainer.Trainer`.
    """

    cfg: DiffusionExperimentConfig
    kind, label, resume_sections = "diffusion", "diffusion", ("model", "diffusion")

    def check_config(self, cfg: DiffusionExperimentConfig) -> None:
        if cfg.model.in_channels != cfg.motion_vae.latent_dim or cfg.model.out_channels != cfg.motion_vae.latent_dim:
            raise ValueError(
                f"model.in_channels/out_channels ({cfg.model.in_channels}/{cfg.model.out_channels}) must equal "
                f"motion_vae.latent_dim ({cfg.motion_vae.latent_dim})"
            )

    def build(self) -> None:
        cfg, acc = self.cfg, self.accelerator
        tc, dc = cfg.train, cfg.data
        model = TemporalDiT(**to_kwargs(cfg.model))
        self.diffusion = build_diffusion(cfg.diffusion)
        self.ema = EMA(model, tc.ema_rate).to(acc.device)
        optimizer = torch.optim.AdamW(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
        self.scheduler = linear_warmup(optimizer, tc.warmup_steps)

        self.latents_dir, self.cond_dir, stats_source = resolve_data_paths(cfg)
        self.stats = load_latent_stats(stats_source)
        names = list_latent_names(self.latents_dir, dc.txt_file)
        n_val = max(0, int(dc.num_val_objects))
        if n_val >= len(names):
            raise ValueError(f"data.num_val_objects={n_val} leaves no training objects out of {len(names)}")
        self.train_names = names[: len(names) - n_val]
        self.val_names = names[len(names) - n_val :]
        dataset = LatentDataset(
            self.latents_dir,
            self.cond_dir,
            self.train_names,
            stats=self.stats,
            num_frames=dc.num_timesteps,
            num_static=dc.num_static_gaussians,
            normalize_positions=dc.normalize_positions,
            uncond_p=tc.uncond_p,
            train=True,
            seed=tc.seed,
        )
        self.data = self._data_stream(dataset, collate_latents)
        self.model, self.optimizer = acc.prepare(model, optimizer)
        self.motion_vae = None

    @property
    def unwrapped_model(self) -> TemporalDiT:
        return self.accelerator.unwrap_model(self.model)

    # ------------------------------------------------------------------------------- one batch
    def compute_loss(self, batch: dict) -> torch.Tensor:
        """v-prediction MSE of one micro-batch (mean over the batch)."""
        acc = self.accelerator
        dev = acc.device
        x0 = batch["latent"].to(dev)  # (B, T, L, C)
        cond = {
            "cond_images": batch["cond_images"].to(dev),  # (B, T, Lc, Cc)
            "static_latent": batch["static_latent"].to(dev),  # (B, S, 14)
            "deformation_position_xyz": batch["deformation_position_xyz"].to(dev),  # (B, L, 3)
        }
        t = self.diffusion.sample_timesteps(x0.shape[0], device=dev)
        noise = torch.randn_like(x0)
        with acc.autocast():
            loss = self.diffusion.training_loss(self.model, x0, t, noise=noise, model_kwargs=cond)
        return loss.float().mean()

    # ------------------------------------------------------------------------------- hooks
    def modules(self) -> dict[str, torch.nn.Module]:
        return {"dit": self.unwrapped_model}

    def emas(self) -> dict[str, EMA]:
        return {"dit": self.ema}

    def prepared_modules(self) -> list[torch.nn.Module]:
        return [self.model]

    def compute_batch(self, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        loss = self.compute_loss(batch)
        return loss, {"loss": loss.detach(), "cond_dropped": batch["cond_dropped"].float().mean()}

    def step_targets(self):
        return [(self.ema, self.unwrapped_model)], list(self.model.parameters())

    @property
    def periodic_interval(self) -> int:
        return self.cfg.train.sample_interval

    def periodic(self) -> None:
        self.sample_check()

    def log_extras(self, logs: dict[str, Any]) -> None:
        logs["lr"] = self.optimizer.param_groups[0]["lr"]

    def restore_schedule(self) -> None:
        self.scheduler.lr_lambdas[0].__dict__.update(warmup_steps=self.cfg.train.warmup_steps)

    # ------------------------------------------------------------------------------- sampling check
    def _load_motion_vae(self):
        if self.motion_vae is None and self.cfg.train.vae_checkpoint:
            from gvf.train.vae_trainer import load_vae_checkpoint

            vae = load_vae_checkpoint(self.cfg.train.vae_checkpoint, device=self.accelerator.device)
            if vae.cfg.model.latent_dim != self.cfg.model.in_channels:
                raise ValueError(f"{self.cfg.train.vae_checkpoint}: motion VAE latent_dim {vae.cfg.model.latent_dim} "
                                 f"does not match the DiT's {self.cfg.model.in_channels} channels")
            self.motion_vae = vae
        return self.motion_vae

    @torch.no_grad()
    def sample_check(self, name: str | None = None) -> dict[str, Any]:
        """Sample one held-out object with the EMA model; log the latent MSE and write a preview mp4.

        Returns:
            {"name", "mse", "nfe", "video" (path or None)}.
        """
        acc, tc = self.accelerator, self.cfg.train
        dev = acc.device
        name = name or (self.val_names[0] if self.val_names else self.train_names[0])
        dataset = LatentDataset(self.latents_dir, self.cond_dir, [name], stats=self.stats, num_frames=None,
                                num_static=self.cfg.data.num_static_gaussians,
                                normalize_positions=self.cfg.data.normalize_positions, train=False)
        item = dataset[0]
        cond = {k: item[k][None].to(dev) for k in ("cond_images", "static_latent", "deformation_position_xyz")}
        gen = torch.Generator().manual_seed(tc.seed + self.step)  # private: training RNG untouched
        noise = torch.randn((1, *item["latent"].shape), generator=gen).to(dev)
        dtype = {"no": None, "fp16": torch.float16, "bf16": torch.bfloat16}[tc.mixed_precision]
        sample, nfe = dpm_solver_sample(self.ema.module, self.diffusion, noise, cond, method="multistep",
                                        steps=tc.sample_steps, autocast_dtype=dtype, progress=False)
        target = item["latent"][None].to(dev)
        mse = float((sample - target).square().mean())
        logs = {"sample/latent_mse": mse, "sample/nfe": nfe}
        video = None
        vae = self._load_motion_vae()
        if vae is not None:
            s = self.stats
            denorm = lambda z: z * s["deformation_std"].to(dev) + s["deformation_mean"].to(dev)  # noqa: E731
            latents = torch.cat([denorm(sample), denorm(target)])  # (2, T, L, C): sample, reconstruction
            video = self.run_dir / "samples" / f"step_{self.step:08d}_{name}.mp4"
            render_motion_video(vae, load_latent_file(self.latents_dir / f"{name}.safetensors"), latents, video, tc.sample_resolution)
        acc.log(logs, step=self.step)
        logger.info("sample check at step %d on %s: latent MSE %.4f (%d NFE)%s", self.step, name, mse, nfe,
                    f", video {video}" if video else "")
        return {"name": name, "mse": mse, "nfe": nfe, "video": video}


# ------------------------------------------------------------------------------------- previews


@torch.no_grad()
def render_motion_video(vae, latent_file: dict, latents: torch.Tensor, path: str | Path, resolution: int = 128, fps: int = 8) -> Path:
    """Decode motion latents onto an object's static Gaussians and render the front view over time.

    Args:
        vae: a `gvf.train.vae_trainer.VAECheckpoint` (its motion VAE decodes).
        latent_file: `load_latent_file` of the object (static_feats / static_coords give the Gaussians).
        latents: (K, T, L, C) denormalised latents; the K videos are placed side by side.
        path: output .mp4 (written atomically).
    """

    from gvf.gaussians import pad_tensor14
    from gvf.models.static_vae import decoder_output_to_gaussians
    from gvf.render import render_gaussians
    from gvf.render.cameras import DEFAULT_FOV_DEG, intrinsics_from_fov, orbit_extrinsics
    from gvf.train.vae_trainer import gaussian_settings

    motion = vae.motion_vae
    dev = next(motion.parameters()).device
    static = vae.static_vae
    voxel_size, lr = gaussian_settings(vae.cfg.framework.args)
    coords = latent_file["static_coords"].to(dev)
    coords4 = torch.cat([torch.zeros_like(coords[:, :1]), coords], dim=1)
    gaussians = decoder_output_to_gaussians(coords4, latent_file["static_feats"].to(dev), static.resolution,
                                            static.MipGS_perturbation.to(dev), voxel_size, lr)[0]
    queries, _ = pad_tensor14([gaussians.to_tensor14()])  # (1, N, 14)
    K, T = latents.shape[:2]
    extrinsics = orbit_extrinsics(0.0, device=dev)  # the input (front) view
    intrinsics = intrinsics_from_fov(math.radians(DEFAULT_FOV_DEG), device=dev)
    columns = []
    for k in range(K):
        deltas = motion.decode(latents[k : k + 1].to(dev), queries)[0]  # (T, N, 14)
        rgb = render_gaussians([gaussians] * T, extrinsics, intrinsics, resolution, deltas=list(deltas)).rgb[:, 0]  # (T, H, W, 3)
        columns.append(rgb)
    frames = (torch.cat(columns, dim=2).clamp(0, 1) * 255 + 0.5).to(torch.uint8).cpu().numpy()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write(path, lambda tmp: write_video(tmp, frames, fps=fps), suffix=".tmp.mp4")


# ------------------------------------------------------------------------------------- release


def _state_of(path: str | Path, kind: str) -> tuple[dict, Path]:
    from gvf.train.checkpointing import resolve_checkpoint

    ckpt = resolve_checkpoint(path)
    state, _ = load_checkpoint_state(ckpt, None)
    if state.get("kind") != kind:
        raise ValueError(f"{ckpt} is a {state.get('kind')!r} checkpoint, expected a {kind} training checkpoint")
    return state, ckpt


def _config_from_yaml(text: str, schema):
    import tempfile

    from gvf.config import load_config

    with tempfile.TemporaryDirectory() as tmp:
        p = Path(tmp) / "config.yaml"
        p.write_text(text)
        return load_config(p, schema)


def export_release(
    diffusion_checkpoint: str | Path,
    vae_checkpoint: str | Path,
    out_dir: str | Path,
    *,
    stats: str | Path | dict | None = None,
    features: dict | None = None,
    include_static_vae: bool = True,
) -> Path:
    """Write an inference release directory, atomically (built beside `out_dir`, then renamed).

    Layout (read by `gvf.pipeline.load_release`)::

        config.yaml               a DiffusionExperimentConfig: model (DiT), diffusion, motion_vae,
                                  static_vae, features (extractor + kwargs), and data with
                                  num_static_gaussians and normalize_positions only
        dit.safetensors           EMA DiT weights (our = upstream parameter names)
        motion_vae.safetensors    EMA motion-VAE weights
        latent_stats.safetensors  static_mean, static_std (14,), deformation_mean, deformation_std (C,)

    plus ``static_vae.safetensors`` (EMA static VAE, described by ``static_vae``; optional),
    ``release.json`` (provenance, sizes) and ``README.md`` (a summary).

    Args:
        diffusion_checkpoint, vae_checkpoint: training checkpoints (step dirs or run dirs).
        stats: latent statistics source (default: the diffusion run's data config).
        features: {"extractor": name, "extractor_kwargs": {...}} (default: the diffusion config's).
        include_static_vae: also export the static VAE.
    Returns:
        the release directory.
    """
    import json

    from safetensors.torch import save_file

    from gvf.config import DataConfig, VAEExperimentConfig
    from gvf.models.motion_vae import VariationFieldVAE

    d_state, d_ckpt = _state_of(diffusion_checkpoint, "diffusion")
    v_state, v_ckpt = _state_of(vae_checkpoint, "vae")
    d_cfg = _config_from_yaml(d_state["config_yaml"], DiffusionExperimentConfig)
    v_cfg = _config_from_yaml(v_state["config_yaml"], VAEExperimentConfig)
    if v_cfg.model.latent_dim != d_cfg.model.in_channels or v_cfg.model.num_latents != d_cfg.model.resolution:
        raise ValueError(
            f"the VAE (latent_dim {v_cfg.model.latent_dim}, num_latents {v_cfg.model.num_latents}) does not fit the DiT "
            f"(in_channels {d_cfg.model.in_channels}, resolution {d_cfg.model.resolution})"
        )
    if stats is None:
        stats = resolve_data_paths(d_cfg)[2]
    stat_tensors = load_latent_stats(stats)
    if stat_tensors["deformation_mean"].numel() not in (1, d_cfg.model.in_channels):
        raise ValueError(f"deformation statistics have {stat_tensors['deformation_mean'].numel()} channels, the DiT {d_cfg.model.in_channels}")
    feats = dict(features) if features is not None else to_kwargs(d_cfg.features)
    release_cfg = replace(
        d_cfg,
        motion_vae=v_cfg.model,
        static_vae=v_cfg.static_vae,
        features=type(d_cfg.features)(**feats),
        data=DataConfig(num_static_gaussians=d_cfg.data.num_static_gaussians, normalize_positions=d_cfg.data.normalize_positions),
    )
    tree = to_yaml_dict(release_cfg)
    tree = {k: tree[k] for k in ("model", "diffusion", "motion_vae", "static_vae", "features")}
    tree["data"] = {"num_static_gaussians": release_cfg.data.num_static_gaussians,
                    "normalize_positions": release_cfg.data.normalize_positions}
    weights = {"dit": d_state["ema"]["dit"]["shadow"], "motion_vae": v_state["ema"]["motion_vae"]["shadow"]}
    if include_static_vae:
        weights["static_vae"] = v_state["ema"]["static_vae"]["shadow"]
    # the weights must fit the exported config (strict), as the inference loader will check
    TemporalDiT(**to_kwargs(release_cfg.model)).load_state_dict(weights["dit"], strict=True)
    VariationFieldVAE(**to_kwargs(release_cfg.motion_vae)).load_state_dict(weights["motion_vae"], strict=True)

    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.with_name(f".{out_dir.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        params = {}
        for key, sd in weights.items():
            sd = {k: v.detach().cpu().contiguous() for k, v in sd.items()}
            save_file(sd, str(tmp / RELEASE_FILES[key]), metadata={"kind": key, "format": "gvf-release-v1"})
            params[key] = int(sum(v.numel() for v in sd.values() if v.is_floating_point()))
        save_file({k: v.float().contiguous() for k, v in stat_tensors.items()}, str(tmp / RELEASE_FILES["stats"]))
        (tmp / RELEASE_FILES["config"]).write_text(OmegaConf.to_yaml(OmegaConf.create(tree), sort_keys=False))
        sizes = {f.name: f.stat().st_size for f in sorted(tmp.iterdir())}
        info = {
            "format": "gvf-release-v1",
            "dit": {"checkpoint": str(d_ckpt), "step": int(d_state["step"]), "ema_updates": int(d_state["ema"]["dit"]["num_updates"]),
                    "parameters": params["dit"]},
            "motion_vae": {"checkpoint": str(v_ckpt), "step": int(v_state["step"]), "parameters": params["motion_vae"]},
            "static_vae": {"parameters": params.get("static_vae", 0), "included": include_static_vae},
            "features": feats,
            "num_static_gaussians": release_cfg.data.num_static_gaussians,
            "normalize_positions": release_cfg.data.normalize_positions,
            "files": sizes,
            "total_bytes": sum(sizes.values()),
        }
        (tmp / RELEASE_FILES["info"]).write_text(json.dumps(info, indent=1))
        (tmp / RELEASE_FILES["readme"]).write_text(_readme(info, tree))
        for f in tmp.iterdir():
            f.chmod(0o644)  # safetensors writes owner-only files; a release is meant to be shared
        old = None
        if out_dir.exists():
            old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
            os.replace(out_dir, old)
        os.replace(tmp, out_dir)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    logger.info("release written to %s (%.1f MB)", out_dir, info["total_bytes"] / 2**20)
    return out_dir


def _readme(info: dict, tree: dict) -> str:
    m, v = tree["model"], tree["motion_vae"]
    lines = [
        "# GVF release",
        "",
        f"* DiT: {m['num_blocks']} blocks × {m['model_channels']} channels, {info['dit']['parameters'] / 1e6:.2f} M parameters, "
        f"EMA of step {info['dit']['step']} ({info['dit']['checkpoint']})",
        f"* motion VAE: depth {v['depth']}, dim {v['dim']}, {v['num_latents']} latents × {v['latent_dim']} channels, "
        f"{info['motion_vae']['parameters'] / 1e6:.2f} M parameters, EMA of step {info['motion_vae']['step']}",
        f"* static VAE: {'included, ' + format(info['static_vae']['parameters'] / 1e6, '.2f') + ' M parameters' if info['static_vae']['included'] else 'not included'}",
        f"* conditioning features: {info['features'].get('extractor')}",
        f"* total size: {info['total_bytes'] / 2**20:.2f} MB",
        "",
        "| file | bytes |",
        "|---|---|",
        *[f"| {name} | {size} |" for name, size in info["files"].items()],
        "",
    ]
    return "\n".join(lines)
