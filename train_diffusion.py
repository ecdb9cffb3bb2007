#!/usr/bin/env python
"""Train the temporal DiT on encoded motion latents (v-prediction, classifier-free dropout of the video features).

    accelerate launch train_diffusion.py --config configs/diffusion.yaml [dotted.key=value ...]
    python train_diffusion.py --config configs/demo/diffusion.yaml --run-dir runs/demo_diffusion --max-steps 2000
    python train_diffusion.py --config configs/demo/diffusion.yaml --run-dir runs/demo_diffusion --resume auto

Outputs in the run directory: config.yaml + command.txt (resolved config, command line),
checkpoints/step_XXXXXXXX/ (atomic, complete; `latest` names the newest), tb/ (TensorBoard),
samples/ (preview mp4s of the sampling check). Details: gvf/train/diffusion_trainer.py.
Prerequisites: scripts/encode_latents.py and scripts/latent_stats.py (data.latents_dir).
Flags and exit codes: gvf/train/cli.py.
"""

from __future__ import annotations

import sys

from gvf.config import DiffusionExperimentConfig
from gvf.train.cli import train_main


def main(argv=None) -> int:
    return train_main(DiffusionExperimentConfig, "gvf.train.diffusion_trainer:DiffusionTrainer", "train_diffusion.py", __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
