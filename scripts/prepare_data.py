#!/usr/bin/env python
"""Prepare animated assets for VAE / diffusion training in upstream's on-disk layout.

Examples:
    python scripts/prepare_data.py --out data/demo --procedural 8 --seed 0 --resolution 256
    python scripts/prepare_data.py assets/glbs/ more/walk.glb --out data/objaverse4d --workers 2
    python scripts/prepare_data.py --out data/x --procedural 4 --extractor dinov2 --device cuda

Re-running the same command resumes: finished sequences are skipped. Layout and file formats:
`gvf/data/prepare.py` and docs/data.md.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gvf.data.prepare import PrepareConfig, discover_sources, run_prepare  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("inputs", nargs="*", help=".glb/.gltf files, folders of them, or folders of per-frame .obj/.ply")
    p.add_argument("--out", required=True, help="output data directory")
    p.add_argument("--procedural", type=int, default=0, help="number of procedural objects to add")
    p.add_argument("--seed", type=int, default=0, help="first procedural seed and base seed of views/points")
    p.add_argument("--num-frames", type=int, default=24)
    p.add_argument("--num-views", type=int, default=16, help="views per frame: 8 fixed directions, then random")
    p.add_argument("--resolution", type=int, default=512)
    p.add_argument("--fov", type=float, default=49.1, help="camera field of view in degrees")
    p.add_argument("--ssaa", type=int, default=2, help="supersampling factor of the renderer")
    p.add_argument("--num-points", type=int, default=8192)
    p.add_argument("--extractor", default="simple", choices=["simple", "dinov2"])
    p.add_argument("--dinov2-path", default=None, help="DINOv2 Hub id or local folder (default: pinned official)")
    p.add_argument("--dinov2-revision", default=None, help="Hub revision (default: the pinned commit)")
    p.add_argument("--local-files-only", action="store_true", help="never download weights")
    p.add_argument("--workers", type=int, default=1, help="parallel processes over sequences")
    p.add_argument("--device", default="cpu", help="torch device for rendering and features, e.g. cuda")
    p.add_argument("--png-compress-level", type=int, default=1)
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--log-level", default="INFO")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log = logging.getLogger("prepare_data")
    if not args.inputs and args.procedural <= 0:
        print("error: give input paths and/or --procedural N", file=sys.stderr)
        return 2
    extractor_kwargs = {}
    if args.extractor == "dinov2":
        if args.dinov2_path:
            extractor_kwargs["model_path"] = args.dinov2_path
        if args.dinov2_revision:
            extractor_kwargs["revision"] = args.dinov2_revision
        extractor_kwargs["local_files_only"] = args.local_files_only
    cfg = PrepareConfig(num_frames=args.num_frames, num_views=args.num_views, resolution=args.resolution,
                        fov_deg=args.fov, ssaa=args.ssaa, num_points=args.num_points, extractor=args.extractor,
                        extractor_kwargs=extractor_kwargs, device=args.device, seed=args.seed,
                        png_compress_level=args.png_compress_level)
    try:
        cfg.validate()
        sources = discover_sources(args.inputs, procedural=args.procedural, seed=args.seed)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    log.info("%d source(s) -> %s", len(sources), args.out)
    records = run_prepare(sources, args.out, cfg, workers=args.workers, progress=not args.no_progress)
    counts = {s: sum(r["status"] == s for r in records) for s in ("ok", "skipped", "failed")}
    log.info("done: %s (details in %s)", json.dumps(counts), Path(args.out) / "manifest.jsonl")
    return 0


if __name__ == "__main__":
    sys.exit(main())
