#!/usr/bin/env python
"""Train the static VAE and the motion (variation-field) VAE (phase 1: static alone, phase 2: joint).

    accelerate launch train_vae.py --config configs/vae.yaml [dotted.key=value ...]
    python train_vae.py --config configs/demo/vae.yaml --run-dir runs/demo_vae --max-steps 2000
    python train_vae.py --config configs/demo/vae.yaml --run-dir runs/demo_vae --resume auto

Outputs in the run directory: config.yaml + command.txt (resolved config, command line),
checkpoints/step_XXXXXXXX/ (atomic, complete; `latest` names the newest), tb/ (TensorBoard),
previews/ (PNG renders). Losses, phases and the resumption rules: gvf/train/vae_trainer.py.
Flags and exit codes: gvf/train/cli.py.
"""

from __future__ import annotations

import sys

from gvf.config import VAEExperimentConfig
from gvf.train.cli import train_main


def main(argv=None) -> int:
    return train_main(VAEExperimentConfig, "gvf.train.vae_trainer:VAETrainer", "train_vae.py", __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
