#!/usr/bin/env python
"""Train the temporal DiT on encoded motion latents (v-prediction, classifier-free dropout of the video features).

    accelerate launch train_diffusion.py --config configs/diffusion.yaml [dotted.key=value ...]
    python train_diffusion.py --config configs/demo/diffusion.yaml --run-dir runs/demo_diffusion --max-steps 2000
    python train_diffusion.py --config configs/demo/diffusion.yaml --run-dir runs/demo_diffusion --resume auto

Outputs in the run directory: config.yaml + command.txt (resolved config, command line),
checkpoints/step_XXXXXXXX/ (atomic, complete; `latest` names the newest), tb/ (TensorBoard),
samples/ (preview mp4s of the sampling check). Details: gvf/train/diffusion_trainer.py.
Prerequisites: scripts/encode_latents.py and scripts/latent_stats.py (data.latents_dir).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from gvf.config import ConfigError, DiffusionExperimentConfig, load_config
from gvf.train.checkpointing import resolve_checkpoint
from gvf.train.loop import setup_logging

logger = logging.getLogger("train_diffusion")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="experiment YAML (DiffusionExperimentConfig)")
    p.add_argument("--run-dir", default=None, help="output directory (default runs/<config name>)")
    p.add_argument("--resume", default=None, help="'auto' (latest checkpoint of --run-dir, if any) or a checkpoint path")
    p.add_argument("--max-steps", type=int, default=None, help="override train.max_steps")
    p.add_argument("--no-tensorboard", action="store_true", help="no TensorBoard logging")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--cpu", action="store_true", help="run on the CPU even if a GPU is present")
    p.add_argument("overrides", nargs="*", help="dotted config overrides, e.g. train.lr=1e-4")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    overrides = list(args.overrides) + ([f"train.max_steps={args.max_steps}"] if args.max_steps is not None else [])
    try:
        cfg = load_config(args.config, DiffusionExperimentConfig, overrides)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    run_dir = Path(args.run_dir) if args.run_dir else Path("runs") / Path(args.config).stem
    try:
        resume = resolve_checkpoint(args.resume, run_dir)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    from gvf.train.diffusion_trainer import DiffusionTrainer

    setup_logging(os.environ.get("RANK", "0") == "0")
    trainer = None
    try:
        trainer = DiffusionTrainer(cfg, run_dir, resume=resume, log_with=None if args.no_tensorboard else "tensorboard",
                             progress=not args.no_progress, cpu=args.cpu, argv=[sys.executable, *(sys.argv if argv is None else ["train_diffusion.py", *argv])])
        trainer.train()
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    finally:
        if trainer is not None:
            trainer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
