#!/usr/bin/env python
"""Export the inference release of a trained GVF: EMA DiT + EMA motion VAE + latent statistics.

    python scripts/export_release.py --diffusion-checkpoint runs/diffusion --vae-checkpoint runs/vae \
        --out releases/gvf-demo

Writes, atomically (built beside ``--out`` and renamed into place), ``config.yaml`` (model /
diffusion / motion_vae / static_vae / features sections of a DiffusionExperimentConfig),
``dit.safetensors``, ``motion_vae.safetensors``, ``static_vae.safetensors`` (unless
``--no-static-vae``), ``latent_stats.safetensors``, ``release.json`` and ``README.md``
(layout: gvf.train.diffusion_trainer.export_release). The statistics default to those of the
diffusion run's data config (``<latents_dir>/stats.safetensors``).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gvf.train.cli import script_parser  # noqa: E402
from gvf.train.diffusion_trainer import export_release  # noqa: E402
from gvf.train.loop import setup_logging  # noqa: E402

logger = logging.getLogger("export_release")


def parse_args(argv=None) -> argparse.Namespace:
    p = script_parser(__doc__)
    p.add_argument("--diffusion-checkpoint", required=True, help="diffusion training checkpoint or run directory")
    p.add_argument("--vae-checkpoint", required=True, help="VAE training checkpoint or run directory")
    p.add_argument("--out", required=True, help="release directory to write")
    p.add_argument("--stats", default=None, help="stats.safetensors or a directory with it / the four .pt files")
    p.add_argument("--extractor", default=None, help="conditioning feature extractor name (default: the diffusion config's)")
    p.add_argument("--extractor-kwargs", default=None, help="JSON object of extractor keyword arguments")
    p.add_argument("--no-static-vae", action="store_true", help="leave the static VAE out")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    setup_logging(True)
    features = None
    if args.extractor is not None or args.extractor_kwargs is not None:
        try:
            kwargs = json.loads(args.extractor_kwargs) if args.extractor_kwargs else {}
        except json.JSONDecodeError as err:
            logger.error("--extractor-kwargs is not valid JSON: %s", err)
            return 2
        if not isinstance(kwargs, dict):
            logger.error("--extractor-kwargs must be a JSON object")
            return 2
        features = {"extractor": args.extractor or "dinov2", "extractor_kwargs": kwargs}
    try:
        out = export_release(args.diffusion_checkpoint, args.vae_checkpoint, args.out, stats=args.stats,
                             features=features, include_static_vae=not args.no_static_vae)
    except (FileNotFoundError, ValueError) as err:
        logger.error("%s", err)
        return 2
    print((out / "README.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
