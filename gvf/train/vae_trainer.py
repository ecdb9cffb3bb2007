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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from gvf.config import VAEExperimentConfig, to_kwargs
from gvf.data.dataset import VAEDataset, collate_vae
from gvf.gaussians import farthest_point_sampling, pad_tensor14
from gvf.models.motion_vae import VariationFieldVAE, interpolate_mesh_motion, xyz_interpolation_loss
from gvf.models.static_vae import StaticVAE, decoder_output_to_gaussians
from gvf.render import render_gaussians
from gvf.train.checkpointing import load_checkpoint_state
from gvf.train.ema import EMA
from gvf.train.loop import LinearWarmup, save_image_grid
from gvf.train.losses import LPIPS, StaticVAELossConfig, l1_loss, ssim, static_vae_losses
from gvf.train.trainer import Trainer

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


class VAETrainer(Trainer):
    """Trains the two VAEs of a `VAEExperimentConfig` into ``run_dir`` (previews in ``previews/``).

    Args: as `gvf.train.trainer.Trainer`; ``cfg.model`` is the motion VAE, ``cfg.backbones`` /
    ``cfg.framework`` the static VAE.
    """

    cfg: VAEExperimentConfig
    kind, label, resume_sections = "vae", "VAE", ("model", "backbones", "framework")

    def check_config(self, cfg: VAEExperimentConfig) -> None:
        dc = cfg.data
        if dc.load_camera > dc.num_timesteps:
            raise ValueError(f"data.load_camera ({dc.load_camera}) cannot exceed data.num_timesteps ({dc.num_timesteps})")

    def build(self) -> None:
        cfg, acc = self.cfg, self.accelerator
        tc, dc = cfg.train, cfg.data

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
        self.data = self._data_stream(dataset, collate_vae)
        self.static_vae, self.motion_vae, self.optimizer = acc.prepare(static, motion, optimizer)

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

    # ------------------------------------------------------------------------------- hooks
    def modules(self) -> dict[str, torch.nn.Module]:
        return {"static_vae": self.unwrapped_static, "motion_vae": self.unwrapped_motion}

    def emas(self) -> dict[str, EMA]:
        return {"static_vae": self.ema_static, "motion_vae": self.ema_motion}

    def prepared_modules(self) -> list[torch.nn.Module]:
        return [self.static_vae, self.motion_vae]

    def compute_batch(self, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        loss, scalars, self._last_preview = self.compute_losses(batch, self.in_phase2())
        return loss, scalars

    def step_targets(self):
        """Phase 1: the static VAE alone; phase 2: both (parameters and EMAs)."""
        if self.in_phase2():
            return ([(self.ema_static, self.unwrapped_static), (self.ema_motion, self.unwrapped_motion)],
                    self.static_params + self.motion_params)
        return [(self.ema_static, self.unwrapped_static)], self.static_params

    @property
    def periodic_interval(self) -> int:
        return self.cfg.train.preview_interval

    def periodic(self) -> None:
        self.save_preview()

    def progress_postfix(self, metrics: dict[str, float]) -> dict[str, Any]:
        return {"phase": 2 if self.in_phase2(self.step - 1) else 1}

    def log_extras(self, logs: dict[str, Any]) -> None:
        for group in self.optimizer.param_groups:
            logs[f"lr/{group.get('name', 'group')}"] = group["lr"]
        logs["phase"] = 2 if self.in_phase2(self.step - 1) else 1

    def restore_schedule(self) -> None:
        tc = self.cfg.train
        self.scheduler.lr_lambdas[0].__dict__.update(StartedWarmup(tc.warmup_steps, 0).__dict__)
        self.scheduler.lr_lambdas[1].__dict__.update(StartedWarmup(tc.warmup_steps, tc.static_vae_steps).__dict__)

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
