"""Evaluate video-to-4D on held-out procedural sequences: PSNR / SSIM / LPIPS against ground truth.

    python scripts/evaluate.py --pretrained path/to/release --num-objects 8 --first-seed 100000 --output eval.json

For each seed (never used in training: the default seeds start at 100000) a procedural animated object
(`gvf.data.synthetic.make_procedural_object`) is rendered with the data pipeline's mesh renderer:
the front view (azimuth 0) of every frame is the input video, and the front view plus `--novel-views`
other azimuths (elevation 0, radius 2, FoV 49.1°) are the ground truth. The canonical Gaussians come
from a static VAE — the release's ``static_vae.safetensors`` or ``--static-vae`` — applied to the data
pipeline's voxel features of frame 0 (posterior mean, decoded with the release's MipGS settings), or
from ``--canonical PLY`` (``{seed}`` is replaced by the seed).

Methods compared, each rendered from the ground-truth cameras (world frame, no alignment zoom):

* ``pipeline``: the video-to-4D result;
* ``vae_recon``: the motion VAE's own reconstruction (encode the ground-truth mesh motion, decode the
  posterior mean) — an upper bound for what the diffusion model can reach;
* ``static``: the canonical Gaussians without motion — the lower bound.

Metrics are computed per image on white backgrounds and averaged over frames, then over objects,
separately for the input view and the novel views. LPIPS uses `gvf.train.losses.LPIPS`; when its
pretrained weights cannot be loaded (offline) random weights are used and a note says so (those values
are then only comparable with each other). Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

logger = logging.getLogger("evaluate")

METHODS = ("pipeline", "vae_recon", "static")
INPUT_SIZE = 512  # default side of the rendered input frames (the data pipeline's resolution)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--pretrained", required=True, help="release directory (config.yaml, dit/motion_vae/latent_stats .safetensors)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--static-vae", help="static VAE weights (.safetensors, upstream .pt or a gvf.hub model dir) for the canonical "
                     "Gaussians (default: the release's static_vae.safetensors)")
    src.add_argument("--canonical", help="canonical PLY path; '{seed}' is replaced by each seed")
    p.add_argument("--static-vae-config", help="YAML with the static VAE's constructor arguments (upstream .pt files only)")
    p.add_argument("--seeds", type=int, nargs="*", default=None, help="procedural seeds (default: --num-objects from --first-seed)")
    p.add_argument("--num-objects", type=int, default=4)
    p.add_argument("--first-seed", type=int, default=100_000, help="first held-out seed (training uses small seeds)")
    p.add_argument("--num-frames", type=int, default=24)
    p.add_argument("--novel-views", type=int, default=3, help="novel azimuths, evenly spaced (90, 180, 270 for 3)")
    p.add_argument("--resolution", type=int, default=256, help="metric render size")
    p.add_argument("--input-size", type=int, default=INPUT_SIZE, help="size of the rendered input frames and feature views")
    p.add_argument("--feature-views", type=int, default=16, help="frame-0 views averaged into the static VAE's voxel features")
    p.add_argument("--solver", choices=["adaptive", "multistep"], default="adaptive")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--guidance-scale", type=float, default=1.0)
    p.add_argument("--guidance-scale2", type=float, default=1.0)
    p.add_argument("--align-step", type=float, default=0.0,
                   help="also run the azimuth alignment with this step (0: the canonical is already in the world frame)")
    p.add_argument("--seed", type=int, default=0, help="diffusion seed")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", choices=["fp32", "fp16", "bf16"], default="fp32")
    p.add_argument("--backend", choices=["auto", "torch", "gsplat"], default="auto")
    p.add_argument("--no-lpips", action="store_true", help="skip LPIPS")
    p.add_argument("--lpips-random", action="store_true", help="LPIPS with random weights (offline smoke runs)")
    p.add_argument("--no-vae-recon", action="store_true", help="skip the motion-VAE reconstruction")
    p.add_argument("--output", type=Path, default=Path("eval_results.json"))
    p.add_argument("--export-example", type=Path, default=None,
                   help="also write the first object's input video (example.mp4) and canonical Gaussians (canonical.ply) here")
    p.add_argument("--example-fps", type=int, default=10)
    p.add_argument("--no-progress", action="store_true")
    return p


# ------------------------------------------------------------------------------------------ metrics


def psnr(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR (dB) of (B, 3, H, W) images in [0, 1]."""
    mse = ((x - y) ** 2).flatten(1).mean(1)
    return -10.0 * torch.log10(mse.clamp_min(1e-10))


class Metrics:
    """PSNR, SSIM and (optionally) LPIPS per image."""

    def __init__(self, lpips: str, device: torch.device):
        self.device = device
        self.lpips = None
        self.lpips_note = None
        if lpips == "off":
            return
        from gvf.train.losses import LPIPS

        if lpips == "pretrained":
            try:
                self.lpips = LPIPS(pretrained=True).to(device)
            except Exception as exc:  # offline: urllib / hub errors of many kinds
                self.lpips_note = f"LPIPS weights unavailable ({str(exc).splitlines()[0][:120]}); using RANDOM weights"
        else:
            self.lpips_note = "LPIPS with RANDOM weights (--lpips-random)"
        if self.lpips is None:
            self.lpips = LPIPS(pretrained=False).to(device)
            self.lpips_note += ": its values are only comparable with each other, not with published numbers"
            print(f"note: {self.lpips_note}")

    @torch.no_grad()
    def __call__(self, pred: torch.Tensor, gt: torch.Tensor, batch: int = 16) -> dict[str, torch.Tensor]:
        """(B, 3, H, W) images -> {'psnr', 'ssim', 'lpips'} (B,) each."""
        from gvf.train.losses import ssim

        out = {"psnr": [], "ssim": [], "lpips": []}
        for i in range(0, pred.shape[0], batch):
            x, y = pred[i : i + batch].to(self.device), gt[i : i + batch].to(self.device)
            out["psnr"].append(psnr(x, y).cpu())
            out["ssim"].append(ssim(x, y, reduction="none").cpu())
            if self.lpips is not None:
                out["lpips"].append(self.lpips(x, y).cpu())
        return {k: torch.cat(v) for k, v in out.items() if v}


# --------------------------------------------------------------------------------------- the object


def render_ground_truth(mesh, azimuths: list[float], resolution: int, device, input_size: int = INPUT_SIZE):
    """(T, V, 3, H, W) ground-truth renders on white, and the input frames (T, S, S, 4) uint8 (S = input_size)."""
    from gvf.data.render_mesh import MeshRenderer, to_uint8
    from gvf.render.cameras import DEFAULT_FOV_DEG, intrinsics_from_fov, orbit_extrinsics

    renderer = MeshRenderer(mesh, device=device)
    E = orbit_extrinsics(azimuths, 0.0, dtype=torch.float32, device=device)
    K = intrinsics_from_fov(math.radians(DEFAULT_FOV_DEG), dtype=torch.float32, device=device).expand(len(azimuths), 3, 3)
    gt, inputs = [], []
    for t in range(mesh.num_frames):
        rgba = renderer.render(mesh.vertices[t], E, K, resolution).rgba  # (V, H, W, 4) straight alpha
        gt.append((rgba[..., :3] * rgba[..., 3:] + (1.0 - rgba[..., 3:])).permute(0, 3, 1, 2).cpu())
        front = renderer.render(mesh.vertices[t], E[:1], K[:1], input_size).rgba if resolution != input_size else rgba[:1]
        inputs.append(to_uint8(front)[0])
    return torch.stack(gt), np.stack(inputs)


def canonical_from_static_vae(mesh, static_vae, framework_args, extractor, num_views: int, seed: int, device,
                              image_size: int = INPUT_SIZE):
    """Canonical Gaussians of frame 0 through the static VAE, with the data pipeline's voxel features."""
    from gvf.data.dataset import DATA_VOXEL_RESOLUTION, load_voxel_features
    from gvf.data.render_mesh import MeshRenderer
    from gvf.data.views import sequence_views
    from gvf.data.voxelize import voxel_centers, voxel_features, voxelize_surface
    from gvf.train.vae_trainer import gaussian_settings

    R = DATA_VOXEL_RESOLUTION
    indices = voxelize_surface(mesh.vertices[0], mesh.faces, R, device=device)
    views = sequence_views(1, num_views, seed=seed)
    E, K = views.cameras(0, device=device)
    rgba = MeshRenderer(mesh, device=device).render(mesh.vertices[0], E, K, image_size).rgba  # (V, H, W, 4)
    fmap = extractor.patch_feature_map(rgba.permute(0, 3, 1, 2).to(extractor.device))
    feats = voxel_features(voxel_centers(indices, R).to(fmap.device), fmap, E.to(fmap.device), K.to(fmap.device))
    with tempfile.TemporaryDirectory() as tmp:  # the same pooling as training, through the stored format
        path = Path(tmp) / "features.npz"
        np.savez(path, indices=indices.cpu().numpy().astype(np.uint8), patchtokens=feats.cpu().numpy().astype(np.float16))
        coords, feats = load_voxel_features(path, static_vae.resolution)
    coords = torch.cat([torch.zeros(len(coords), 1, dtype=torch.int32), coords], 1).to(device)
    with torch.no_grad():
        post = static_vae.encode(coords, feats.to(device))
        decoded = static_vae.decode(coords, post.mean)
        voxel_size, lr = gaussian_settings(framework_args)
        return static_vae.to_gaussians(coords, decoded.float(), voxel_size, lr)[0].to(torch.float32)


@torch.no_grad()
def render_predictions(canonical, variations, azimuths, resolution, device, backend, batch: int = 4) -> torch.Tensor:
    """(T, V, 3, H, W) renders of canonical + variations (None: static) on white."""
    from gvf.render import render_gaussians
    from gvf.render.cameras import DEFAULT_FOV_DEG, intrinsics_from_fov, orbit_extrinsics

    E = orbit_extrinsics(azimuths, 0.0, dtype=torch.float32, device=device)
    K = intrinsics_from_fov(math.radians(DEFAULT_FOV_DEG), dtype=torch.float32, device=device)
    g = canonical.to(device, torch.float32)
    T = variations.shape[0]
    out = []
    for i in range(0, T, batch):
        deltas = variations[i : i + batch].to(device, torch.float32)
        rgb = render_gaussians(g, E, K, resolution, background=(1.0, 1.0, 1.0), deltas=deltas, backend=backend).rgb
        out.append(rgb.clamp(0, 1).permute(0, 1, 4, 2, 3).cpu())
    return torch.cat(out)


@torch.no_grad()
def vae_reconstruction(mesh, canonical, vae, seed: int, device) -> torch.Tensor:
    """Motion-VAE encode (posterior mean) -> decode of the ground-truth motion: (T, N, 14)."""
    from gvf.data.surface import point_deltas

    static, deltas = point_deltas(mesh, vae.config.num_inputs, seed)
    static_pc = torch.from_numpy(static)[None].to(device)
    delta_pc = torch.from_numpy(deltas)[None].to(device)
    rows = canonical.to(device, torch.float32).to_tensor14()
    L = vae.config.num_latents
    noise = torch.zeros(delta_pc.shape[1], L, vae.config.latent_dim, device=device)
    post = vae.encode(static_pc, delta_pc, [rows], noise=noise)  # zero noise: z = posterior mean
    return vae.decode(post.z, rows[None], num_frames=delta_pc.shape[1])[0].float().cpu()


def export_example(out_dir: Path, frames: np.ndarray, canonical, fps: int) -> None:
    """The demo inputs: the front-view video on white (example.mp4) and its canonical Gaussians (canonical.ply)."""
    from gvf.export import write_video
    from gvf.gaussians import save_ply

    out_dir.mkdir(parents=True, exist_ok=True)
    rgb = frames[..., :3].astype(np.float32) / 255.0
    alpha = frames[..., 3:].astype(np.float32) / 255.0
    on_white = np.clip(np.round((rgb * alpha + (1.0 - alpha)) * 255.0), 0, 255).astype(np.uint8)
    write_video(out_dir / "example.mp4", on_white, fps=fps)
    save_ply(canonical, out_dir / "canonical.ply")
    logger.info("wrote the example video and canonical PLY to %s", out_dir)


# ----------------------------------------------------------------------------------------------- main


def summarise(per_object: list[dict]) -> dict:
    """Mean over objects of every (method, view group, metric)."""
    summary: dict = {}
    for method in METHODS:
        for group in ("input_view", "novel_views"):
            vals: dict[str, list[float]] = {}
            for obj in per_object:
                for metric, value in obj.get(method, {}).get(group, {}).items():
                    vals.setdefault(metric, []).append(value)
            if vals:
                summary.setdefault(method, {})[group] = {k: float(np.mean(v)) for k, v in vals.items()}
    return summary


def print_table(summary: dict) -> None:
    metrics = ["psnr", "ssim", "lpips"]
    header = f"{'method':<11} {'view':<12}" + "".join(f"{m.upper():>9}" for m in metrics)
    print(header)
    print("-" * len(header))
    for method, groups in summary.items():
        for group, vals in groups.items():
            cells = "".join(f"{vals[m]:>9.4f}" if m in vals else f"{'-':>9}" for m in metrics)
            print(f"{method:<11} {group:<12}{cells}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    progress = not args.no_progress

    from gvf.data.synthetic import make_procedural_object
    from gvf.gaussians import load_ply
    from gvf.pipeline import VideoTo4DPipeline, load_release
    from gvf.video import prepare_video

    seeds = args.seeds if args.seeds else list(range(args.first_seed, args.first_seed + args.num_objects))
    try:
        release = load_release(args.pretrained, device=device, static_vae=args.canonical is None and not args.static_vae)
        pipeline = VideoTo4DPipeline.from_release(release, device=device)
        static_vae = release.static_vae
        if args.static_vae:
            from gvf.hub import load_pretrained

            static_vae = load_pretrained("static_vae", args.static_vae, config=args.static_vae_config, device=device)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {str(err).splitlines()[0]}", file=sys.stderr)
        return 2
    metrics = Metrics("off" if args.no_lpips else ("random" if args.lpips_random else "pretrained"), device)
    novel = [360.0 * (k + 1) / (args.novel_views + 1) for k in range(args.novel_views)]
    azimuths = [0.0] + novel

    per_object = []
    started = time.perf_counter()
    for seed in seeds:
        t0 = time.perf_counter()
        mesh = make_procedural_object(seed, num_frames=args.num_frames)
        gt, inputs = render_ground_truth(mesh, azimuths, args.resolution, device, args.input_size)
        if static_vae is not None:
            canonical = canonical_from_static_vae(mesh, static_vae, release.config.static_vae.framework.args, pipeline.extractor,
                                                  args.feature_views, seed, device, args.input_size)
        else:
            canonical = load_ply(args.canonical.format(seed=seed))
        video = prepare_video(inputs)
        if args.export_example is not None and seed == seeds[0]:
            export_example(args.export_example, inputs, canonical, args.example_fps)
        result = pipeline(
            video, canonical, seed=args.seed, solver=args.solver, steps=args.steps, guidance_scale=args.guidance_scale,
            guidance_scale2=args.guidance_scale2, dtype=args.dtype, align_step_deg=args.align_step or None, progress=progress,
        )  # fmt: skip
        predictions = {"pipeline": (result.canonical, result.variations)}
        if not args.no_vae_recon:
            predictions["vae_recon"] = (canonical, vae_reconstruction(mesh, canonical, pipeline.motion_vae, seed, device))
        predictions["static"] = (canonical, torch.zeros(args.num_frames, len(canonical), 14))
        record = {"seed": seed, "name": mesh.name, "num_gaussians": len(canonical), "azimuth_deg": result.azimuth_deg, "nfe": result.nfe}
        T, V = gt.shape[:2]
        for method, (g, variations) in predictions.items():
            pred = render_predictions(g, variations, azimuths, args.resolution, device, args.backend)  # (T, V, 3, H, W)
            scores = metrics(pred.flatten(0, 1), gt.flatten(0, 1))
            record[method] = {}
            for group, views in (("input_view", [0]), ("novel_views", list(range(1, V)))):
                if views:
                    # mean over frames of the per-frame (view-averaged) values
                    record[method][group] = {k: float(v.view(T, V)[:, views].mean()) for k, v in scores.items()}
        record["seconds"] = round(time.perf_counter() - t0, 2)
        per_object.append(record)
        logger.info("seed %d (%s): pipeline input-view PSNR %.2f dB, %.1f s", seed, mesh.name,
                    record["pipeline"]["input_view"]["psnr"], record["seconds"])

    summary = summarise(per_object)
    print()
    print_table(summary)
    report = {
        "summary": summary,
        "objects": per_object,
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "azimuths": azimuths,
        "lpips_note": metrics.lpips_note,
        "seconds": round(time.perf_counter() - started, 2),
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2))
    print(f"\nwrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
