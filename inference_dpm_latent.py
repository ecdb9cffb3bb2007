"""Video -> 4D Gaussians (GVFDiffusion inference).

    python inference_dpm_latent.py                                    # the bundled demo
    python inference_dpm_latent.py --video clip.mp4 --canonical object.ply --pretrained path/to/release
    python inference_dpm_latent.py --video frames/ --pretrained official   # TRELLIS canonical from frame 1

Writes into --output: gaussians_4d.safetensors (canonical + per-frame variations), canonical.ply,
ply/frame_XXX.ply, input_view.mp4 and orbit.mp4 (see gvf/export.py). Bad input (missing file,
unreadable or empty video, PLY without Gaussians, incomplete release) -> one line on stderr, exit
code 2, nothing written.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent
DEMO_VIDEO = ROOT / "assets" / "demo" / "example.mp4"
DEMO_CANONICAL = ROOT / "assets" / "demo" / "canonical.ply"
DEMO_MODEL = ROOT / "assets" / "demo" / "model"

logger = logging.getLogger("inference")


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows defaults, except empty ones (None / False), which the help texts describe."""

    def _get_help_string(self, action):
        if action.default in (None, False):
            return action.help
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=_HelpFormatter)
    io = p.add_argument_group("input / output")
    io.add_argument("--video", type=Path, default=None,
                    help="video file (mp4, mov, webm, gif, ...) or folder of frames (default: the demo video)")
    io.add_argument("--canonical", type=Path, default=None,
                    help="canonical 3D Gaussians (.ply); optional with --pretrained official (TRELLIS on the first frame)")
    io.add_argument("--mask", type=Path, default=None,
                    help="object mask: folder of masks or mask video (per frame), or one image (first frame); "
                         "default: the frames' alpha, else a plain background is estimated")
    io.add_argument("--pretrained", default="demo",
                    help="'demo' (assets/demo/model), 'official' (Hugging Face), a release directory, or a directory "
                         "holding the official files")
    io.add_argument("--output", type=Path, default=None, help="output directory (default: outputs/<video name>)")
    io.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    frames = p.add_argument_group("frames")
    frames.add_argument("--num-frames", type=int, default=None, help="frames to use (default: up to 32, the upstream length)")
    frames.add_argument("--start", type=int, default=0, help="first frame index")
    frames.add_argument("--stride", type=int, default=1, help="take every n-th frame")
    sample = p.add_argument_group("sampling")
    sample.add_argument("--guidance-scale", type=float, default=1.0, help="CFG scale of the static-Gaussian condition (1 = off)")
    sample.add_argument("--guidance-scale2", type=float, default=1.0, help="CFG scale of the video condition (1 = off)")
    sample.add_argument("--solver", choices=["adaptive", "multistep"], default="adaptive", help="DPM-Solver++ variant")
    sample.add_argument("--steps", type=int, default=100, help="multistep solver steps")
    sample.add_argument("--seed", type=int, default=0)
    sample.add_argument("--align-step", type=float, default=1.0, help="azimuth search step in degrees (90 for renders; 0 = no alignment)")
    sample.add_argument("--align-resolution", type=int, default=None, help="alignment render size (default: 512 on a GPU, 128 on the CPU)")
    run = p.add_argument_group("runtime")
    run.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda, cuda:1, ...")
    run.add_argument("--dtype", choices=["fp32", "fp16", "bf16"], default="fp32", help="autocast precision of the networks")
    run.add_argument("--backend", choices=["auto", "torch", "gsplat"], default="auto", help="Gaussian rasterizer")
    run.add_argument("--resolution", type=int, default=512, help="render size of the videos")
    run.add_argument("--orbit-views", type=int, default=128, help="views of the orbit video's spiral")
    run.add_argument("--no-video", action="store_true", help="skip the mp4 renders")
    run.add_argument("--trellis", default=None, help="TRELLIS-image-large Hub id or folder (--pretrained official without --canonical)")
    run.add_argument("--no-progress", action="store_true", help="hide progress bars")
    return p


class InputError(Exception):
    """Bad input: reported as one line, exit code 2."""


def _is_official(pretrained: str) -> bool:
    """'official', or a directory with the official release files (rather than our release format)."""
    from gvf.hub import OFFICIAL_FILES

    return pretrained == "official" or (Path(pretrained) / OFFICIAL_FILES["dit"]).is_file()


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def _check_args(args) -> None:
    """Resolve demo defaults and check every path before anything heavy runs."""
    demo_video = args.video is None
    if demo_video:
        args.video = DEMO_VIDEO
    if args.canonical is None and demo_video and args.pretrained == "demo":
        args.canonical = DEMO_CANONICAL
    if args.pretrained == "demo":
        args.pretrained = str(DEMO_MODEL)
    if not args.video.exists():
        hint = " (the demo assets are missing: pass --video)" if demo_video else ""
        raise InputError(f"video not found: {args.video}{hint}")
    if args.canonical is None and not _is_official(args.pretrained):
        raise InputError("--canonical is required (only --pretrained official can make canonical Gaussians from the first frame)")
    if args.canonical is not None and not args.canonical.is_file():
        raise InputError(f"canonical PLY not found: {args.canonical}")
    if args.mask is not None and not args.mask.exists():
        raise InputError(f"mask not found: {args.mask}")
    for name in ("num_frames", "steps", "resolution", "orbit_views", "stride"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise InputError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    if args.start < 0:
        raise InputError(f"--start must be >= 0, got {args.start}")
    if args.align_step < 0:
        raise InputError(f"--align-step must be >= 0, got {args.align_step}")
    if args.output is None:
        args.output = ROOT / "outputs" / (args.video.stem or "video")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    progress = not args.no_progress
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)

    from gvf.config import ConfigError
    from gvf.export import check_outputs, export_result
    from gvf.gaussians import load_ply
    from gvf.hub import WeightsNotFoundError
    from gvf.pipeline import VideoTo4DPipeline
    from gvf.video import VideoError, prepare_video

    started = time.perf_counter()
    # ---- inputs: everything is read and checked before any output is written
    try:
        _check_args(args)
        canonical = load_ply(args.canonical) if args.canonical is not None else None
        if canonical is not None and len(canonical) == 0:
            raise InputError(f"{args.canonical} holds no Gaussians")
        video = prepare_video(args.video, args.num_frames, args.start, args.stride, args.mask, progress=progress)
        check_outputs(args.output, video.num_frames, videos=not args.no_video, overwrite=args.overwrite)
        if _is_official(args.pretrained):
            pipeline = VideoTo4DPipeline.from_official(args.pretrained, device=device, image_to_3d=canonical is None, trellis=args.trellis)
        else:
            pipeline = VideoTo4DPipeline.from_release(args.pretrained, device=device)
    except (InputError, VideoError, WeightsNotFoundError, ConfigError, FileExistsError, FileNotFoundError, ValueError, ImportError) as err:
        return _fail(str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__)

    align_res = args.align_resolution or (512 if device.type != "cpu" else 128)
    try:
        result = pipeline(
            video, canonical, seed=args.seed, solver=args.solver, steps=args.steps, guidance_scale=args.guidance_scale,
            guidance_scale2=args.guidance_scale2, dtype=args.dtype, align_step_deg=args.align_step or None,
            align_resolution=align_res, progress=progress,
        )  # fmt: skip
        written = export_result(
            result, args.output, resolution=args.resolution, orbit_views=args.orbit_views, videos=not args.no_video,
            overwrite=args.overwrite, device=device, backend=args.backend, progress=progress,
            extra_metadata={"weights": str(args.pretrained)},
        )  # fmt: skip
    except (ValueError, FileExistsError) as err:
        return _fail(str(err).strip().splitlines()[0])
    except RuntimeError as err:
        print(f"error: {str(err).strip().splitlines()[0]}", file=sys.stderr)
        return 1

    seconds = time.perf_counter() - started
    print(f"\n{result.num_frames} frames, {len(result.canonical)} Gaussians, azimuth {result.azimuth_deg:.1f} deg, "
          f"scale {result.scale_factor:.3f}, {result.nfe} network evaluations, {seconds:.1f} s")
    print(f"wrote {len(written)} files to {args.output}:")
    for path in written:
        print(f"  {path.relative_to(args.output).as_posix()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
