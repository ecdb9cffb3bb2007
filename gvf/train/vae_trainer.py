"""Joint training of the static VAE and the motion (variation-field) VAE (spec §6.1).

Phase 1 (``step < train.static_vae_steps``): the static VAE alone, on one random frame-0 view per
object:

    L_static = L1 + 0.2·(1 − SSIM) + 0.2·LPIPS + 1e-6·KL + 1e4·mean Π scales + 1e-3·mean (opacity − 1)²

Phase 2: both VAEs. The static VAE's Gaussians (with gradients) are the motion VAE's queries; per
object and frame t of the sample the motion VAE predicts a 14-channel variation of every Gaussian:

    L = L_static + kl_weight·KL_motion + xyz_loss_weight·|Δxyz − Δxyz_mesh|
        + Σ_views [l1·L1 + ssim·(1 − SSIM) + lpips·LPIPS](render(G ⊕ Δ_t), GT view of frame t)

where Δxyz_mesh is the KNN interpolation of the mesh motion at every Gaussian (K = 8, β = 7).

Differences from upstream (deliberate, spec §10.2 #11):
* one AdamW with two parameter groups (motion lr, static lr × `static_lr_scale`) instead of two
  optimizers: the same update, but one fp16 grad-scaler step (two prepared optimizers sharing a
  scaler unscale the second one twice); each group has its own linear warm-up — the static group's
  starts at step 0, the motion group's when phase 2 starts;
* the EMAs are updated only after real optimizer steps (static: always; motion: in phase 2);
* `--resume` restores everything (`gvf.train.checkpointing`), never EMA weights into the live model;
* the motion VAE's farthest point sampling starts at a random point (as upstream) drawn from the
  global torch generator, so it is part of the checkpointed RNG state.

Upstream's start from a TRELLIS SLat VAE with frozen encoder blocks is `train.static_vae_init`
(a file, or "official" for the released GVF static VAE) and `train.freeze_static_encoder`.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from omegaconf import OmegaConf

from gvf.config import VAEExperimentConfig, save_run_config, to_kwargs, to_yaml_dict
from gvf.data.dataset import VAEDataset, collate_vae
from gvf.gaussians import farthest_point_sampling, pad_tensor14
from gvf.models.motion_vae import VariationFieldVAE, interpolate_mesh_motion, xyz_interpolation_loss
from gvf.models.static_vae import StaticVAE, decoder_output_to_gaussians
from gvf.render import render_gaussians
from gvf.train.checkpointing import CheckpointManager, capture_rng_state, load_checkpoint_state, restore_rng_state
from gvf.train.ema import EMA
from gvf.train.loop import (
    Averager,
    DataStream,
    LinearWarmup,
    ProgressBar,
    WallClock,
    build_accelerator,
    flat_config,
    optimizer_step,
    save_image_grid,
    seed_everything,
)
from gvf.train.losses import LPIPS, StaticVAELossConfig, l1_loss, ssim, static_vae_losses

logger = logging.getLogger(__name__)

__all__ = ["VAETrainer", "StartedWarmup", "init_static_vae", "load_vae_checkpoint", "VAECheckpoint", "encode_sequence", "gaussian_settings"]

WHITE = (1.0, 1.0, 1.0)


class StartedWarmup(LinearWarmup):
    """Linear warm-up over `warmup_steps` that begins at global step `start` (lr factor 0 before)."""

    def __init__(self, warmup_steps: int, start: int = 0):
        super().__init__(warmup_steps)
        self.start = int(start)

    def __call__(self, step: int) -> float:
        if step < self.start:
            return 0.0
        return super().__call__(step - self.start)


def gaussian_settings(framework_args) -> tuple[float, dict[str, float]]:
    """(voxel_size, per-field lr factors) of the MipGS representation config."""
    mip = framework_args.representation_config.MipGS
    lr = mip.lr
    return mip.voxel_size, {"xyz": lr._xyz, "features_dc": lr._features_dc, "scaling": lr._scaling, "rotation": lr._rotation, "opacity": lr._opacity}


def init_static_vae(model: StaticVAE, source: str | Path) -> list[str]:
    """Load starting weights into a static VAE (upstream ``--static_vae_ckpt``).

    Args:
        model: the freshly built static VAE.
        source: "official" (the released GVF static VAE, via `gvf.hub`) or a state-dict file (upstream
            ``.pt`` with or without ``module.``, or ``.safetensors``).
    Behaviour (upstream's rule): if ``out_layer`` has another shape (e.g. a 32-Gaussian TRELLIS decoder),
    ``out_layer.*`` and ``MipGS_perturbation`` are dropped and keep their fresh (zero) init. Any other
    shape mismatch or unknown key is an error; keys the file lacks keep their init and are returned.
    """
    from gvf.checkpoints import convert_upstream, load_torch_file

    if str(source) == "official":
        from gvf.hub import resolve_weights

        path = resolve_weights("official", ["static_vae"])["static_vae"]
    else:
        path = Path(source)
    state = convert_upstream("static_vae", load_torch_file(path))
    own = model.state_dict()
    if "out_layer.weight" in state and tuple(state["out_layer.weight"].shape) != tuple(own["out_layer.weight"].shape):
        logger.info("%s: out_layer %s does not fit %s; it restarts from its init", path,
                    tuple(state["out_layer.weight"].shape), tuple(own["out_layer.weight"].shape))
        for key in ("out_layer.weight", "out_layer.bias", "MipGS_perturbation"):
            state.pop(key, None)
    unexpected = sorted(k for k in state if k not in own)
    mismatched = sorted(k for k in state if k in own and tuple(state[k].shape) != tuple(own[k].shape))
    if unexpected or mismatched:
        raise ValueError(f"{path} does not fit the static VAE: unexpected keys {unexpected[:5]}, shape mismatches {mismatched[:5]}")
    missing = sorted(k for k in own if k not in state)
    if missing:
        logger.warning("%s lacks %d static-VAE tensors (kept at their init): %s", path, len(missing), ", ".join(missing[:8]))
    model.load_state_dict(state, strict=False)
    return missing


def _images_bchw(rgb: torch.Tensor) -> torch.Tensor:
    """(B, V, H, W, 3) renders -> (B·V, 3, H, W)."""
    B, V, H, W, C = rgb.shape
    return rgb.reshape(B * V, H, W, C).permute(0, 3, 1, 2)


class VAETrainer:
    """Trains the two VAEs of a `VAEExperimentConfig` into ``run_dir``.

    Args:
        cfg: the experiment config (``model`` = motion VAE, ``backbones``/``framework`` = static VAE).
        run_dir: outputs: config.yaml, command.txt, checkpoints/, tb/, previews/.
        resume: checkpoint directory to continue from (see `gvf.train.checkpointing.resolve_checkpoint`).
        log_with: "tensorboard" or None.
        progress: show the tqdm bar (rank 0).
        argv: command line recorded in command.txt.
        cpu: run on the CPU even if a GPU is present.
    """

    def __init__(
        self,
        cfg: VAEExperimentConfig,
        run_dir: str | Path,
        *,
        resume: str | Path | None = None,
        log_with: str | None = "tensorboard",
        progress: bool = True,
        argv: Sequence[str] | None = None,
        cpu: bool = False,
    ):
        self.cfg = cfg
        tc, dc = cfg.train, cfg.data
        self.run_dir = Path(run_dir)
        self.progress = progress
        if dc.load_camera > dc.num_timesteps:
            raise ValueError(f"data.load_camera ({dc.load_camera}) cannot exceed data.num_timesteps ({dc.num_timesteps})")
        self.accelerator = acc = build_accelerator(
            tc.mixed_precision, tc.gradient_accumulation_steps, self.run_dir, log_with, tc.find_unused_parameters, cpu=cpu
        )
        seed_everything(tc.seed)  # the same initial weights (and EMA copies) on every rank
        if acc.is_main_process:
            save_run_config(cfg, self.run_dir, argv)

        static = StaticVAE(**to_kwargs(cfg.backbones.vae.args))
        static.set_gradient_checkpointing(cfg.framework.args.mem_ratio)
        if tc.static_vae_init:
            with acc.main_process_first():  # "official" downloads once
                init_static_vae(static, tc.static_vae_init)
        if tc.freeze_static_encoder:
            static.encoder.requires_grad_(False)  # as upstream: input_layer and to_latent keep training
        motion = VariationFieldVAE(**to_kwargs(cfg.model))
        self.voxel_size, self.gs_lr = gaussian_settings(cfg.framework.args)
        self.static_loss_cfg = StaticVAELossConfig.from_dict(to_kwargs(cfg.framework.args))
        needs_lpips = self.static_loss_cfg.lambda_lpips > 0 or tc.render_lpips_weight > 0
        self.lpips = None
        if needs_lpips:
            with acc.main_process_first():  # one download into the shared cache
                self.lpips = LPIPS(pretrained=tc.lpips_pretrained).to(acc.device)
        self.ema_static = EMA(static, tc.ema_rate).to(acc.device)
        self.ema_motion = EMA(motion, tc.ema_rate).to(acc.device)

        # one AdamW, two groups; each group warms up from the start of its phase
        self.static_params = [p for p in static.parameters() if p.requires_grad]
        self.motion_params = list(motion.parameters())
        optimizer = torch.optim.AdamW(
            [
                {"params": self.static_params, "lr": tc.lr * tc.static_lr_scale, "name": "static_vae"},
                {"params": self.motion_params, "lr": tc.lr, "name": "motion_vae"},
            ],
            lr=tc.lr,
            weight_decay=tc.weight_decay,
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, [StartedWarmup(tc.warmup_steps, 0), StartedWarmup(tc.warmup_steps, tc.static_vae_steps)]
        )

        dataset = VAEDataset(
            dc.data_dir,
            names=dc.txt_file,
            num_frames_per_sample=dc.num_timesteps,
            num_cameras=dc.load_camera,
            num_points=cfg.model.num_inputs,
            feature_name=dc.feature_name,
            vae_resolution=cfg.backbones.vae.args.resolution,
            image_size=tc.render_resolution,
            train=True,
            seed=tc.seed,
        )
        self.data = DataStream(
            dataset,
            tc.batch_size,
            collate_vae,
            num_workers=dc.num_workers,
            seed=tc.seed,
            num_replicas=acc.num_processes,
            rank=acc.process_index,
            pin_memory=acc.device.type == "cuda",
        )
        self.static_vae, self.motion_vae, self.optimizer = acc.prepare(static, motion, optimizer)
        seed_everything(tc.seed, acc.process_index)  # per-rank training randomness
        self.checkpoints = CheckpointManager(
            self.run_dir / "checkpoints",
            tc.keep_last,
            process_index=acc.process_index,
            is_main=acc.is_main_process,
            barrier=acc.wait_for_everyone if acc.num_processes > 1 else None,
        )
        self.step = 0
        if resume is not None:
            self.load_checkpoint(resume)
        if log_with:
            acc.init_trackers("vae", config=flat_config(cfg))

    # ------------------------------------------------------------------------------- helpers
    @property
    def unwrapped_static(self) -> StaticVAE:
        return self.accelerator.unwrap_model(self.static_vae)

    @property
    def unwrapped_motion(self) -> VariationFieldVAE:
        return self.accelerator.unwrap_model(self.motion_vae)

    def in_phase2(self, step: int | None = None) -> bool:
        return (self.step if step is None else step) >= self.cfg.train.static_vae_steps

    def _to_gaussians(self, coords: torch.Tensor, decoded: torch.Tensor):
        static = self.unwrapped_static
        return decoder_output_to_gaussians(coords, decoded.float(), static.resolution, static.MipGS_perturbation, self.voxel_size, self.gs_lr)

    # ------------------------------------------------------------------------------- one batch
    def compute_losses(self, batch: dict, phase2: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict]:
        """Loss of one micro-batch.

        Returns:
            (loss, detached scalar terms, preview tensors).
        """
        acc, tc = self.accelerator, self.cfg.train
        dev = acc.device
        coords = batch["coords"].to(dev)
        feats = batch["feats"].to(dev)
        sc = {k: v.to(dev) for k, v in batch["static_cams"].items()}
        B = sc["image"].shape[0]
        H, W = sc["image"].shape[-2:]

        with acc.autocast():
            decoded, mean, logvar = self.static_vae(coords, feats)  # posterior sampled
        gaussians = self._to_gaussians(coords, decoded)
        rendered = render_gaussians(gaussians, sc["extrinsics"], sc["intrinsics"], (H, W), background=WHITE)
        pred_static = _images_bchw(rendered.rgb)  # (B, 3, H, W)
        gt_static = sc["image"].reshape(-1, 3, H, W)
        terms = static_vae_losses(pred_static, gt_static, mean.float(), logvar.float(), gaussians, self.lpips, self.static_loss_cfg)
        loss = terms["loss"]
        scalars = {f"static/{k}": v.detach() for k, v in terms.items() if k != "loss"}
        preview = {"gt_static": gt_static.detach(), "pred_static": pred_static.detach()}
        if not phase2:
            scalars["loss"] = loss.detach()
            return loss, scalars, preview

        # phase 2: the static Gaussians (with gradients) drive the motion VAE
        static_pc = batch["static_pc"].to(dev)  # (B, P, 3)
        delta_pc = batch["delta_pc"].to(dev)  # (B, T, P, 3)
        padded, lengths = pad_tensor14([g.to_tensor14() for g in gaussians])  # (B, N, 14)
        L = self.cfg.model.num_latents
        fps_idx = farthest_point_sampling(padded[..., :3].detach(), L, lengths=lengths, start_idx=None)
        with acc.autocast():
            out = self.motion_vae(padded, static_pc, delta_pc, lengths=lengths, fps_idx=fps_idx)
        pred = out["logits"].float()  # (B, T, N, 14) output layout
        kl = out["kl"].float().mean()
        estimate = interpolate_mesh_motion(
            padded[..., :3].detach(), static_pc, static_pc[:, None] + delta_pc, self.cfg.model.knn_k, self.cfg.model.beta, lengths
        )
        xyz = xyz_interpolation_loss(pred[..., :3], estimate)
        loss = loss + tc.kl_weight * kl + tc.xyz_loss_weight * xyz
        scalars.update({"motion/kl": kl.detach(), "motion/xyz": xyz.detach()})

        if "cams" in batch:
            cams = {k: v.to(dev) for k, v in batch["cams"].items()}
            C = cams["image"].shape[1]  # camera c shows frame c of the sample
            Hc, Wc = cams["image"].shape[-2:]
            items, deltas = [], []
            for b in range(B):
                n = int(lengths[b])
                for c in range(C):
                    items.append(gaussians[b])
                    deltas.append(pred[b, c, :n])
            rendered = render_gaussians(
                items,
                cams["extrinsics"].reshape(B * C, 1, 4, 4),
                cams["intrinsics"].reshape(B * C, 1, 3, 3),
                (Hc, Wc),
                background=WHITE,
                deltas=deltas,
            )
            pred_img = _images_bchw(rendered.rgb)  # (B·C, 3, H, W)
            gt_img = cams["image"].reshape(B * C, 3, Hc, Wc)
            r_l1 = l1_loss(pred_img, gt_img)
            r_ssim = 1.0 - ssim(pred_img, gt_img)
            loss = loss + tc.render_l1_weight * r_l1 + tc.render_ssim_weight * r_ssim
            scalars.update({"motion/render_l1": r_l1.detach(), "motion/render_ssim": r_ssim.detach()})
            if tc.render_lpips_weight > 0:
                r_lpips = self.lpips(pred_img, gt_img).mean()
                loss = loss + tc.render_lpips_weight * r_lpips
                scalars["motion/render_lpips"] = r_lpips.detach()
            preview.update(gt_motion=gt_img.detach(), pred_motion=pred_img.detach())
        scalars["loss"] = loss.detach()
        return loss, scalars, preview

    # ------------------------------------------------------------------------------- one step
    def train_step(self) -> dict[str, float]:
        """One optimizer step (``gradient_accumulation_steps`` micro-batches). Returns mean scalars."""
        acc, tc = self.accelerator, self.cfg.train
        phase2 = self.in_phase2()
        self.static_vae.train()
        self.motion_vae.train()
        avg = Averager()
        result = None
        for _ in range(tc.gradient_accumulation_steps):
            batch = next(self.data)
            with acc.accumulate(self.static_vae, self.motion_vae):
                loss, scalars, preview = self.compute_losses(batch, phase2)
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"non-finite VAE loss at step {self.step}: {float(loss)}")
                acc.backward(loss)
                params = self.static_params + (self.motion_params if phase2 else [])
                emas = [(self.ema_static, self.unwrapped_static)] + ([(self.ema_motion, self.unwrapped_motion)] if phase2 else [])
                result = optimizer_step(acc, [self.optimizer], [self.scheduler], emas, params, tc.grad_clip)
            avg.add(scalars)
        self._last_preview = preview
        metrics = avg.means()
        if result is not None and result.grad_norm is not None:
            metrics["grad_norm"] = result.grad_norm
        metrics["stepped"] = float(bool(result and result.stepped))
        return metrics

    # ------------------------------------------------------------------------------- the loop
    def train(self, max_steps: int | None = None) -> list[float]:
        """Train until `max_steps` optimizer steps (default ``train.max_steps``).

        Returns:
            the loss of every step run by this call (rank-local mean over micro-batches).
        """
        acc, tc = self.accelerator, self.cfg.train
        max_steps = int(tc.max_steps if max_steps is None else max_steps)
        bar = ProgressBar(max_steps, self.step, enabled=self.progress and acc.is_main_process, desc="vae")
        log_avg = Averager()
        history: list[float] = []
        saved_at = None
        t0 = time.perf_counter()
        clock = WallClock(tc.max_minutes)
        while self.step < max_steps:
            metrics = self.train_step()
            self.step += 1
            history.append(metrics["loss"])
            log_avg.add({k: v for k, v in metrics.items() if k != "stepped"})
            bar.update(1, loss=metrics["loss"], phase=2 if self.in_phase2(self.step - 1) else 1)
            if tc.log_interval > 0 and self.step % tc.log_interval == 0:
                self._log(log_avg, time.perf_counter() - t0)
                log_avg.reset()
                t0 = time.perf_counter()
            if tc.preview_interval > 0 and self.step % tc.preview_interval == 0 and acc.is_main_process:
                self.save_preview()
            if tc.save_interval > 0 and self.step % tc.save_interval == 0:
                self.save_checkpoint()
                saved_at = self.step
            if tc.log_interval > 0 and self.step % tc.log_interval == 0 and clock.spent(acc):
                logger.info("train.max_minutes (%s) spent at step %d: stopping", tc.max_minutes, self.step)
                break
        if saved_at != self.step and history:
            self.save_checkpoint()
        bar.close()
        return history

    def _log(self, avg: Averager, seconds: float) -> None:
        acc = self.accelerator
        means = avg.means()
        keys = sorted(means)
        values = torch.tensor([means[k] for k in keys], device=acc.device, dtype=torch.float64)
        if acc.num_processes > 1:
            values = acc.reduce(values, reduction="mean")
        logs = dict(zip(keys, values.tolist()))
        for group in self.optimizer.param_groups:
            logs[f"lr/{group.get('name', 'group')}"] = group["lr"]
        logs["phase"] = 2 if self.in_phase2(self.step - 1) else 1
        logs["epoch"] = self.data.epoch
        logs["steps_per_second"] = self.cfg.train.log_interval / max(seconds, 1e-9)
        acc.log(logs, step=self.step)
        if acc.is_main_process:
            logger.info("step %d: loss %.5f", self.step, logs.get("loss", math.nan))

    def save_preview(self) -> Path | None:
        """PNG of the last batch: per object [GT view | render] (+ [GT frame | deformed render] in phase 2)."""
        p = getattr(self, "_last_preview", None)
        if not p:
            return None
        rows = []
        B = p["gt_static"].shape[0]
        C = p["gt_motion"].shape[0] // B if "gt_motion" in p else 0
        for b in range(min(B, 4)):
            row = [p["gt_static"][b], p["pred_static"][b]]
            if C:
                row += [p["gt_motion"][b * C], p["pred_motion"][b * C]]
            rows.append(row)
        return save_image_grid(self.run_dir / "previews" / f"step_{self.step:08d}.png", rows)

    # ------------------------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        acc = self.accelerator
        return {
            "kind": "vae",
            "models": {"static_vae": self.unwrapped_static.state_dict(), "motion_vae": self.unwrapped_motion.state_dict()},
            "ema": {"static_vae": self.ema_static.state_dict(), "motion_vae": self.ema_motion.state_dict()},
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": acc.scaler.state_dict() if acc.scaler is not None else None,
            "data": self.data.state_dict(),
            "config_yaml": OmegaConf.to_yaml(OmegaConf.create(to_yaml_dict(self.cfg)), sort_keys=False),
            "world_size": acc.num_processes,
        }

    def save_checkpoint(self) -> Path:
        """Atomic checkpoint of everything at the current step (all ranks call this)."""
        return self.checkpoints.save(self.step, self.state_dict() if self.accelerator.is_main_process else {}, capture_rng_state())

    def load_checkpoint(self, path: str | Path) -> None:
        """Restore models, EMAs, optimizer, scheduler, scaler, data position, step and RNG states."""
        acc = self.accelerator
        state, rng = load_checkpoint_state(path, acc.process_index)
        if state.get("kind") != "vae":
            raise ValueError(f"{path} is a {state.get('kind')!r} checkpoint, not a VAE training checkpoint")
        _warn_config_change(state.get("config_yaml"), self.cfg, ("model", "backbones", "framework"), path)
        self.unwrapped_static.load_state_dict(state["models"]["static_vae"])
        self.unwrapped_motion.load_state_dict(state["models"]["motion_vae"])
        self.ema_static.load_state_dict(state["ema"]["static_vae"])
        self.ema_motion.load_state_dict(state["ema"]["motion_vae"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        # the schedule follows the current config (load_state_dict restored the saved lambda fields)
        self.scheduler.lr_lambdas[0].__dict__.update(StartedWarmup(self.cfg.train.warmup_steps, 0).__dict__)
        self.scheduler.lr_lambdas[1].__dict__.update(StartedWarmup(self.cfg.train.warmup_steps, self.cfg.train.static_vae_steps).__dict__)
        if acc.scaler is not None and state.get("scaler"):
            acc.scaler.load_state_dict(state["scaler"])
        self.data.load_state_dict(state["data"])
        self.step = int(state["step"])
        if rng is not None:
            restore_rng_state(rng)
        logger.info("resumed from %s at step %d", path, self.step)

    def close(self) -> None:
        self.accelerator.end_training()


def _warn_config_change(saved_yaml: str | None, cfg, sections: Sequence[str], path) -> None:
    if not saved_yaml:
        return
    saved = OmegaConf.to_container(OmegaConf.create(saved_yaml))
    now = to_yaml_dict(cfg)
    changed = [s for s in sections if saved.get(s) != now.get(s)]
    if changed:
        raise ValueError(f"{path} was trained with different {', '.join(changed)} sections; resume with the run's own config")


# ---------------------------------------------------------------------------------- reading back


@dataclass
class VAECheckpoint:
    """The EMA models of a VAE training checkpoint (eval mode) and its config."""

    cfg: VAEExperimentConfig
    static_vae: StaticVAE
    motion_vae: VariationFieldVAE
    step: int
    path: Path


def load_vae_checkpoint(path: str | Path, device: torch.device | str | None = None, ema: bool = True) -> VAECheckpoint:
    """Build both VAEs from a VAE training checkpoint (a step directory, a run dir or its checkpoints/).

    Args:
        ema: load the EMA weights (default) or the live ones.
    """
    from gvf.config import load_config
    from gvf.train.checkpointing import resolve_checkpoint

    ckpt = resolve_checkpoint(path)
    state, _ = load_checkpoint_state(ckpt, None)
    if state.get("kind") != "vae":
        raise ValueError(f"{ckpt} is a {state.get('kind')!r} checkpoint, not a VAE training checkpoint")
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        cfg_path = Path(tmp) / "config.yaml"
        cfg_path.write_text(state["config_yaml"])
        cfg = load_config(cfg_path, VAEExperimentConfig)
    static = StaticVAE(**to_kwargs(cfg.backbones.vae.args))
    motion = VariationFieldVAE(**to_kwargs(cfg.model))
    if ema:
        static.load_state_dict(state["ema"]["static_vae"]["shadow"])
        motion.load_state_dict(state["ema"]["motion_vae"]["shadow"])
    else:
        static.load_state_dict(state["models"]["static_vae"])
        motion.load_state_dict(state["models"]["motion_vae"])
    static.eval().requires_grad_(False)
    motion.eval().requires_grad_(False)
    if device is not None:
        static.to(device)
        motion.to(device)
    return VAECheckpoint(cfg, static, motion, int(state["step"]), Path(ckpt))


@torch.no_grad()
def encode_sequence(
    vae: VAECheckpoint,
    item: dict,
    num_static: int = 4096,
    autocast_dtype: torch.dtype | None = None,
) -> dict[str, torch.Tensor]:
    """Encode one prepared sequence with the (EMA) VAEs into the latent-file tensors.

    Deterministic: the static posterior MEAN is decoded (upstream sampled it), and both farthest
    point samplings start at row 0.

    Args:
        vae: from `load_vae_checkpoint` (models on the device to use).
        item: a `VAEDataset(train=False)` item (all frames, the first num_inputs points in order).
        num_static: rows of the static condition (``fps_gaussians_4096``), in FPS order; fewer (all
            Gaussians) when the object has fewer.
        autocast_dtype: run the networks under autocast in this dtype (e.g. bf16 on a GPU).
    Returns:
        the tensors of `gvf.data.latent_dataset.LATENT_KEYS` (CPU, float32 / int32).
    """
    import contextlib

    static, motion = vae.static_vae, vae.motion_vae
    device = next(static.parameters()).device
    voxel_size, lr = gaussian_settings(vae.cfg.framework.args)
    coords = item["coords"].to(device=device, dtype=torch.int32)
    coords4 = torch.cat([torch.zeros_like(coords[:, :1]), coords], dim=1)  # batch column
    feats = item["feats"].to(device)
    ctx = torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype is not None else contextlib.nullcontext()
    with ctx:
        post = static.encode(coords4, feats, sample=False)
        decoded = static.decode(coords4, post.mean).float()  # (M, 112)
    gaussians = decoder_output_to_gaussians(coords4, decoded, static.resolution, static.MipGS_perturbation, voxel_size, lr)[0]
    rows = gaussians.to_tensor14()  # (N, 14) input layout
    name = item.get("name", "object")
    if rows.shape[0] < motion.num_latents:
        raise ValueError(f"{name}: the static VAE gives {rows.shape[0]} Gaussians, fewer than num_latents={motion.num_latents}")
    if rows.shape[0] < num_static:
        logger.warning("%s: only %d Gaussians; %d static rows stored instead of %d", name, rows.shape[0], rows.shape[0], num_static)
        num_static = rows.shape[0]
    static_idx = farthest_point_sampling(rows[None, :, :3], num_static, start_idx=0)[0]  # in sampling order
    static_pc = item["static_pc"].to(device)[None]  # (1, P, 3)
    delta_pc = item["delta_pc"].to(device)[None]  # (1, T, P, 3)
    with ctx:
        post_m = motion.encode(static_pc, delta_pc, rows[None], fps_start=0)
    out = {
        "latent_mean": post_m.mean.float(),  # (T, L, C): B = 1
        "latent_std": post_m.std.float(),
        "fps_gaussians_512": post_m.fps_gaussians[0].float(),
        "fps_gaussians_4096": rows[static_idx],
        "static_feats": decoded,
        "static_coords": coords,
    }
    bad = [k for k, v in out.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise FloatingPointError(f"{name}: non-finite values in {', '.join(bad)}")
    return {k: v.cpu() for k, v in out.items()}
