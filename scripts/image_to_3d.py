"""Canonical 3D Gaussians from one image (GVF's first-frame stage: TRELLIS + GVF's Gaussian decoder).

    python scripts/image_to_3d.py frame.png -o gaussians.ply [--seed 0] [--device cuda] [--dtype float16]

Writes a 3DGS PLY (viewer fields + the raw upstream parameters). Weights come from the Hugging Face
Hub (TRELLIS-image-large, the GVF release, DINOv2) or from local folders (--trellis, --static-vae,
--dinov2). Opaque images without --mask need the optional package rembg for background removal.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gvf.image_to_3d import TRELLIS_REPO_ID, TRELLIS_REVISION, ImageTo3DPipeline  # noqa: E402

logger = logging.getLogger("image_to_3d")

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("image", type=Path, help="input image (RGBA with transparency, or any image plus --mask / rembg)")
    p.add_argument("-o", "--output", type=Path, required=True, help="output .ply")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda, cuda:1, ...")
    p.add_argument("--dtype", default="auto", choices=["auto", *DTYPES],
                   help="precision of the TRELLIS torsos and the Gaussian decoder (auto: float16 on CUDA as released, float32 on CPU)")
    p.add_argument("--mask", type=Path, help="object mask (single channel, same size) used as alpha instead of rembg")
    p.add_argument("--trellis", default=TRELLIS_REPO_ID, help="TRELLIS-image-large Hub id or local folder")
    p.add_argument("--revision", default=TRELLIS_REVISION, help="Hub revision of --trellis")
    p.add_argument("--static-vae", default="official", help="'official', a folder with the GVF release files, or a checkpoint file")
    p.add_argument("--static-vae-config", type=Path, help="YAML with the static VAE's constructor arguments (default: official)")
    p.add_argument("--dinov2", help="DINOv2 Hub id or local folder (default: the pinned official model)")
    p.add_argument("--local-files-only", action="store_true", help="never download; use the Hugging Face cache / folders")
    p.add_argument("--save-preprocessed", type=Path, help="also save the 518x518 condition image here")
    p.add_argument("--progress", action="store_true", help="show sampler progress bars")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if not args.image.is_file():
        print(f"error: input image {args.image} does not exist", file=sys.stderr)
        return 2
    if args.output.suffix.lower() != ".ply":
        print(f"error: the output must be a .ply file, got {args.output}", file=sys.stderr)
        return 2
    if args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(args.device)
    dtype = DTYPES[args.dtype] if args.dtype != "auto" else (torch.float16 if device.type == "cuda" else torch.float32)

    from gvf.gaussians import save_ply
    from gvf.hub import WeightsNotFoundError

    try:
        pipeline = ImageTo3DPipeline.from_pretrained(
            args.trellis, args.static_vae, revision=args.revision, static_vae_config=args.static_vae_config,
            dinov2=args.dinov2, local_files_only=args.local_files_only, device=device, dtype=dtype, progress=args.progress,
        )  # fmt: skip
        image = pipeline.preprocess(args.image, args.mask)
        if args.save_preprocessed:
            image.save(args.save_preprocessed)
        gaussians = pipeline.run(image, seed=args.seed, preprocess=False)
    except (WeightsNotFoundError, ImportError, ValueError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    args.output.parent.mkdir(parents=True, exist_ok=True)
    save_ply(gaussians, args.output)
    logger.info("wrote %d Gaussians to %s", len(gaussians), args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
