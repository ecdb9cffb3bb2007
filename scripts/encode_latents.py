#!/usr/bin/env python
"""Encode prepared sequences into motion latents with the EMA VAEs of a VAE training run.

    python scripts/encode_latents.py --vae-checkpoint runs/vae --data-dir data/demo
    accelerate launch scripts/encode_latents.py --vae-checkpoint runs/vae/checkpoints/step_00050000 \
        --data-dir data/objaverse4d --latents-dir data/objaverse4d/latents --mixed-precision bf16

Writes ``<latents_dir>/<name>.safetensors`` per object (keys and shapes: gvf/data/latent_dataset.py)
and ``<latents_dir>/index.json``; ``latents_dir`` defaults to ``<data_dir>/latents``, the diffusion
config's default. Objects are split over the processes; existing files are kept unless
``--overwrite``. Then run scripts/latent_stats.py.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from gvf.data.dataset import VAEDataset  # noqa: E402
from gvf.data.latent_dataset import INDEX_FILE, save_latent_file, write_index  # noqa: E402
from gvf.train.cli import script_parser  # noqa: E402
from gvf.train.loop import setup_logging  # noqa: E402
from gvf.train.vae_trainer import encode_sequence, load_vae_checkpoint  # noqa: E402

logger = logging.getLogger("encode_latents")


def parse_args(argv=None) -> argparse.Namespace:
    p = script_parser(__doc__)
    p.add_argument("--vae-checkpoint", required=True, help="VAE training checkpoint dir, its run dir, or 'checkpoints/'")
    p.add_argument("--data-dir", required=True, help="prepared data (gvf.data.prepare layout)")
    p.add_argument("--latents-dir", default=None, help="output directory (default <data-dir>/latents)")
    p.add_argument("--names", default=None, help="text file with one object name per line (default: all)")
    p.add_argument("--feature-name", default=None, help="voxel feature npz stem (default: the only one)")
    p.add_argument("--num-static", type=int, default=4096, help="rows of the static condition (fps_gaussians_4096)")
    p.add_argument("--mixed-precision", default="no", choices=["no", "fp16", "bf16"])
    p.add_argument("--cpu", action="store_true", help="run on the CPU even if a GPU is present")
    p.add_argument("--overwrite", action="store_true", help="re-encode objects whose file exists")
    p.add_argument("--live-weights", action="store_true", help="use the live weights instead of the EMA")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    from accelerate import PartialState

    state = PartialState(cpu=args.cpu)
    setup_logging(state.is_main_process)
    data_dir = Path(args.data_dir)
    latents_dir = Path(args.latents_dir) if args.latents_dir else data_dir / "latents"
    try:
        vae = load_vae_checkpoint(args.vae_checkpoint, device=state.device, ema=not args.live_weights)
    except (FileNotFoundError, ValueError) as err:
        logger.error("%s", err)
        return 2
    dataset = VAEDataset(
        data_dir,
        names=args.names,
        num_cameras=0,
        num_points=vae.cfg.model.num_inputs,
        feature_name=args.feature_name,
        vae_resolution=vae.cfg.backbones.vae.args.resolution,
        train=False,
    )
    dtype = {"no": None, "fp16": torch.float16, "bf16": torch.bfloat16}[args.mixed_precision]
    latents_dir.mkdir(parents=True, exist_ok=True)
    mine = list(range(state.process_index, len(dataset), state.num_processes))
    from tqdm.auto import tqdm

    failed = []
    for i in tqdm(mine, desc="encode", disable=not state.is_main_process):
        name = dataset.names[i]
        path = latents_dir / f"{name}.safetensors"
        if path.is_file() and not args.overwrite:
            continue
        try:
            item = dataset.load(i)
            tensors = encode_sequence(vae, item, args.num_static, dtype)
        except (OSError, ValueError, RuntimeError, FloatingPointError) as err:
            logger.warning("%s: not encoded (%s)", name, err)
            failed.append(name)
            continue
        save_latent_file(path, tensors, {"name": name, "frames": tensors["latent_mean"].shape[0],
                                         "static_resolution": vae.static_vae.resolution, "vae_step": vae.step})
    state.wait_for_everyone()
    if state.is_main_process:
        from safetensors import safe_open

        entries = {}
        for name in dataset.names:
            path = latents_dir / f"{name}.safetensors"
            if not path.is_file():
                continue
            with safe_open(str(path), "pt") as f:
                meta = f.metadata() or {}
                mean_shape = f.get_slice("latent_mean").get_shape()
                entries[name] = {"file": path.name, "latent_shape": list(mean_shape),
                                 "num_voxels": f.get_slice("static_coords").get_shape()[0],
                                 "num_static": f.get_slice("fps_gaussians_4096").get_shape()[0],
                                 "vae_step": int(meta.get("vae_step", -1))}
        write_index(latents_dir, entries, {"vae_checkpoint": str(vae.path), "data_dir": str(data_dir)})
        logger.info("%d objects encoded in %s (%s)", len(entries), latents_dir, INDEX_FILE)
    if failed:
        logger.error("%d object(s) failed on this process: %s", len(failed), ", ".join(failed))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
