#!/usr/bin/env python
"""Time and memory of the static VAE (encode + decode) on one object.

Default: the official size (768 channels, 12 + 12 swin blocks, 64³ grid) on one object with 20k occupied
voxels arranged like a surface (a ~2-voxel-thick spherical shell), fp32 and bf16 autocast, inference
(no grad) and a training step (forward + backward). Prints one table row per setting.

    python scripts/benchmark_static_vae.py                      # GPU, official size
    python scripts/benchmark_static_vae.py --tiny --device cpu  # smoke test
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gvf.models.static_vae import STATIC_VAE_OFFICIAL, STATIC_VAE_TINY, StaticVAE  # noqa: E402

logger = logging.getLogger("benchmark_static_vae")


def shell_voxels(n: int, resolution: int, seed: int = 0) -> torch.Tensor:
    """(n, 4) int32 coords of one object: the n voxels closest to a sphere of radius 0.42·resolution."""
    r = torch.arange(resolution, dtype=torch.float32)
    grid = torch.stack(torch.meshgrid(r, r, r, indexing="ij"), dim=-1).reshape(-1, 3)
    dist = ((grid + 0.5 - resolution / 2).norm(dim=-1) - 0.42 * resolution).abs()
    dist = dist + 1e-3 * torch.rand(dist.shape, generator=torch.Generator().manual_seed(seed))  # break ties
    if n > grid.shape[0]:
        raise ValueError(f"cannot place {n} voxels in a {resolution}³ grid")
    idx = dist.argsort()[:n]
    idx = idx[torch.randperm(n, generator=torch.Generator().manual_seed(seed + 1))]
    return torch.cat([torch.zeros(n, 1, dtype=torch.int32), grid[idx].to(torch.int32)], dim=1)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_mib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


def run(model, coords, feats, device, dtype_name: str, train: bool, warmup: int, repeats: int) -> dict:
    autocast = (
        torch.autocast(device_type=device.type, dtype=torch.bfloat16) if dtype_name == "bf16" else contextlib.nullcontext()
    )
    times = {"encode": 0.0, "decode": 0.0, "backward": 0.0}
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    for it in range(warmup + repeats):
        grad = torch.enable_grad() if train else torch.no_grad()
        with grad, autocast:
            _sync(device)
            t0 = time.perf_counter()
            post = model.encode(coords, feats, sample=train)
            _sync(device)
            t1 = time.perf_counter()
            out = model.decode(coords, post.z)
            _sync(device)
            t2 = time.perf_counter()
        if train:
            out.float().square().mean().backward()
            model.zero_grad(set_to_none=True)
            _sync(device)
        t3 = time.perf_counter()
        if it >= warmup:
            times["encode"] += (t1 - t0) / repeats
            times["decode"] += (t2 - t1) / repeats
            times["backward"] += (t3 - t2) / repeats if train else 0.0
        del post, out
    return {
        "mode": "train" if train else "infer",
        "dtype": dtype_name,
        "voxels": coords.shape[0],
        "encode_ms": 1e3 * times["encode"],
        "decode_ms": 1e3 * times["decode"],
        "backward_ms": 1e3 * times["backward"],
        "total_ms": 1e3 * sum(times.values()),
        "peak_mib": _peak_mib(device),
    }


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--voxels", type=int, default=20000, help="occupied voxels of the object")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    parser.add_argument("--modes", nargs="+", default=["infer", "train"], choices=["infer", "train"])
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--checkpointing", action="store_true", help="gradient checkpointing in training mode")
    parser.add_argument("--tiny", action="store_true", help="tiny model and grid (smoke test)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    device = torch.device(args.device)
    cfg = dict(STATIC_VAE_TINY if args.tiny else STATIC_VAE_OFFICIAL)
    voxels = min(args.voxels, 300) if args.tiny else args.voxels
    torch.manual_seed(0)
    model = StaticVAE(**{**cfg, "use_checkpoint": args.checkpointing}).to(device)
    for p in model.parameters():  # non-zero heads so that every layer does real work
        torch.nn.init.normal_(p, std=0.02)
    coords = shell_voxels(voxels, cfg["resolution"]).to(device)
    feats = torch.randn(voxels, cfg["in_channels"], device=device)
    n_params = sum(p.numel() for p in model.parameters())
    logger.info("StaticVAE %d channels, %d+%d blocks, %.1fM parameters, %d voxels, device %s%s",
                cfg["model_channels"], cfg["num_blocks"], cfg["num_blocks"], n_params / 1e6, voxels, device,
                f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else "")  # fmt: skip

    results = []
    for mode in args.modes:
        model.train(mode == "train")
        for dtype_name in args.dtypes:
            results.append(run(model, coords, feats, device, dtype_name, mode == "train", args.warmup, args.repeats))

    header = f"{'mode':<6} {'dtype':<5} {'voxels':>7} {'encode ms':>10} {'decode ms':>10} {'backward ms':>12} {'total ms':>9} {'peak MiB':>9}"
    print(header)
    print("-" * len(header))
    for r in results:
        peak = f"{r['peak_mib']:9.0f}" if r["peak_mib"] is not None else f"{'n/a':>9}"
        print(f"{r['mode']:<6} {r['dtype']:<5} {r['voxels']:>7} {r['encode_ms']:10.1f} {r['decode_ms']:10.1f} "
              f"{r['backward_ms']:12.1f} {r['total_ms']:9.1f} {peak}")  # fmt: skip
    return results


if __name__ == "__main__":
    main()
