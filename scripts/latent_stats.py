#!/usr/bin/env python
"""Normalisation statistics of encoded latents.

    python scripts/latent_stats.py --latents-dir data/demo/latents

Writes ``<latents_dir>/stats.safetensors`` (static_mean, static_std (14,); deformation_mean,
deformation_std (C,)) and the same four tensors as official-format ``static_mean.pt``,
``static_std.pt``, ``deformation_mean.pt``, ``deformation_std.pt`` (``torch.save`` of a tensor).
Definitions: gvf.data.latent_dataset.compute_latent_stats. Compute them on the training objects
(``--names``); held-out objects may be included, they change little.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gvf.data.latent_dataset import compute_latent_stats, list_latent_names, save_latent_stats  # noqa: E402
from gvf.train.cli import script_parser  # noqa: E402
from gvf.train.loop import setup_logging  # noqa: E402

logger = logging.getLogger("latent_stats")


def parse_args(argv=None) -> argparse.Namespace:
    p = script_parser(__doc__)
    p.add_argument("--latents-dir", required=True, help="directory of <name>.safetensors latent files")
    p.add_argument("--names", default=None, help="text file with one object name per line (default: all files)")
    p.add_argument("--out-dir", default=None, help="where to write the statistics (default: --latents-dir)")
    p.add_argument("--no-pt", action="store_true", help="skip the four official-format .pt files")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    setup_logging(True)
    latents_dir = Path(args.latents_dir)
    try:
        names = list_latent_names(latents_dir, args.names)
        stats = compute_latent_stats(latents_dir / f"{n}.safetensors" for n in names)
    except (FileNotFoundError, ValueError) as err:
        logger.error("%s", err)
        return 2
    path = save_latent_stats(stats, Path(args.out_dir) if args.out_dir else latents_dir, official_files=not args.no_pt)
    for key, value in stats.items():
        logger.info("%s %s: %s", key, tuple(value.shape), [round(float(v), 5) for v in value])
    logger.info("statistics of %d objects written to %s", len(names), path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
