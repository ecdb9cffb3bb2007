"""Time the first-frame image-to-3D pipeline (TRELLIS + GVF's Gaussian decoder) per stage.

Random weights at the released sizes (no download): DINOv2 ViT-L/14-reg condition, sparse-structure
flow (12 Euler steps, CFG 7.5 -> 22 calls), occupancy decoder, structured-latent flow (12 steps, CFG 3 ->
22 calls) on a synthetic voxel shell of --voxels voxels (random weights give meaningless occupancy), and
the 8-Gaussian decoder. Prints seconds per image and peak GPU memory per stage for each precision mode:

    fp32            everything float32 (--tf32 allows TF32 matmuls)
    fp16 / bf16     TRELLIS torsos held in half precision (fp16 = the released `use_fp16` run), the
                    Gaussian decoder under autocast of that dtype, DINOv2 float32
    fp16-autocast / bf16-autocast   float32 weights, every stage under torch.autocast

    python scripts/benchmark_trellis.py --device cuda                      # the H100 numbers
    python scripts/benchmark_trellis.py --tiny --device cpu --repeats 1    # smoke test
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gvf.image_to_3d import ImageTo3DPipeline, SamplerConfig  # noqa: E402
from gvf.models.static_vae import STATIC_VAE_OFFICIAL, StaticVAE  # noqa: E402
from gvf.models.trellis import SLatFlow, SparseStructureDecoder, SparseStructureFlow, occupied_voxels  # noqa: E402
from gvf.models.trellis import slat_flow as slat_flow_mod  # noqa: E402
from gvf.models.trellis import ss_decoder as ss_decoder_mod  # noqa: E402
from gvf.models.trellis import ss_flow as ss_flow_mod  # noqa: E402

logger = logging.getLogger("benchmark_trellis")

STAGES = ("cond", "ss_flow", "ss_decoder", "slat_flow", "gs_decoder")
MODES = {
    "fp32": (torch.float32, None),
    "fp16": (torch.float16, None),
    "bf16": (torch.bfloat16, None),
    "fp16-autocast": (torch.float32, torch.float16),
    "bf16-autocast": (torch.float32, torch.bfloat16),
}
SLAT_NORMALIZATION = {"mean": [0.0] * 8, "std": [1.0] * 8}
PIPELINE_SAMPLER = {"steps": 25, "cfg_strength": 5.0, "cfg_interval": [0.5, 1.0], "rescale_t": 3.0}  # pipeline.json

RELEASED = {
    "dinov2": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
                   image_size=518, patch_size=14, num_register_tokens=4),
    "ss_flow": ss_flow_mod.TRELLIS_IMAGE_LARGE,
    "ss_decoder": ss_decoder_mod.TRELLIS_IMAGE_LARGE,
    "slat_flow": slat_flow_mod.TRELLIS_IMAGE_LARGE,
    "static_vae": STATIC_VAE_OFFICIAL,
}
TINY = {
    "dinov2": dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, image_size=56,
                   patch_size=14, num_register_tokens=4),
    "ss_flow": dict(ss_flow_mod.TRELLIS_IMAGE_LARGE, resolution=4, model_channels=24, cond_channels=32, num_blocks=1, num_heads=2),
    "ss_decoder": dict(ss_decoder_mod.TRELLIS_IMAGE_LARGE, channels=[16, 8], num_res_blocks=1, num_res_blocks_middle=1),
    "slat_flow": dict(slat_flow_mod.TRELLIS_IMAGE_LARGE, resolution=8, model_channels=24, cond_channels=32, num_blocks=1,
                      num_heads=2, io_block_channels=[8]),
    "static_vae": dict(STATIC_VAE_OFFICIAL, resolution=8, model_channels=24, num_blocks=2, num_heads=2),
}


def build_pipeline(sizes: dict, device: torch.device) -> ImageTo3DPipeline:
    """Random-weight pipeline of the given sizes, built directly on `device`."""
    from gvf.features.dinov2 import DinoV2Extractor
    from transformers import Dinov2WithRegistersConfig

    with torch.device(device):
        ss_flow = SparseStructureFlow(**sizes["ss_flow"])
        ss_decoder = SparseStructureDecoder(**sizes["ss_decoder"])
        slat_flow = SLatFlow(**sizes["slat_flow"])
        decoder = StaticVAE(**sizes["static_vae"], decoder_only=True)
    encoder = DinoV2Extractor.from_config(Dinov2WithRegistersConfig(**sizes["dinov2"]), device=device)
    sampler = SamplerConfig(1e-5, dict(PIPELINE_SAMPLER))
    return ImageTo3DPipeline(ss_flow, ss_decoder, slat_flow, decoder, encoder, SLAT_NORMALIZATION, sampler, sampler).to(device)


def voxel_shell(resolution: int, count: int, device) -> torch.Tensor:
    """(count, 4) int32 voxels of a spherical shell (radius 0.35·R), the shape of a typical object surface."""
    ar = torch.arange(resolution, dtype=torch.float32)
    grid = torch.stack(torch.meshgrid(ar, ar, ar, indexing="ij"), dim=-1).reshape(-1, 3)
    dist = ((grid + 0.5 - resolution / 2).norm(dim=-1) - 0.35 * resolution).abs()
    keep = torch.argsort(dist)[: min(count, len(grid))].sort().values  # ascending = argwhere order
    xyz = grid[keep].to(torch.int32)
    return torch.cat([torch.zeros(len(xyz), 1, dtype=torch.int32), xyz], dim=1).to(device)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_once(pipe: ImageTo3DPipeline, image: Image.Image, coords: torch.Tensor, autocast: torch.dtype | None) -> dict:
    """One image through every stage: {stage: (seconds, peak GiB or None)}."""
    device = pipe.device
    ctx = torch.autocast(device.type, dtype=autocast) if autocast is not None else contextlib.nullcontext()
    results = {}

    def timed(stage, fn):
        _sync(device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        start = time.perf_counter()
        with ctx:
            out = fn()
        _sync(device)
        peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
        results[stage] = (time.perf_counter() - start, peak)
        return out

    with torch.no_grad():
        cond = timed("cond", lambda: pipe.encode_condition(image))
        torch.manual_seed(0)
        z = timed("ss_flow", lambda: pipe.sample_structure_latent(cond))
        timed("ss_decoder", lambda: occupied_voxels(pipe.ss_decoder(z)))
        slat = timed("slat_flow", lambda: pipe.sample_slat(cond, coords))
        timed("gs_decoder", lambda: pipe.decode_gaussians(slat))
    return results


def benchmark(args) -> list[dict]:
    device = torch.device(args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    if args.tf32 and device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    unknown = [m for m in args.modes if m not in MODES]
    if unknown:
        raise ValueError(f"unknown mode(s) {', '.join(unknown)}; expected some of {', '.join(MODES)}")
    sizes = TINY if args.tiny else RELEASED
    pipe = build_pipeline(sizes, device)
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (518, 518, 3), dtype=np.uint8))
    coords = voxel_shell(pipe.slat_flow.resolution, args.voxels, device)
    rows = []
    for mode in args.modes:
        torso, autocast = MODES[mode]
        if device.type == "cpu" and torso == torch.float16:
            logger.warning("float16 torsos on the CPU are slow; timing anyway")
        pipe.set_precision(torso)
        for _ in range(args.warmup):
            run_once(pipe, image, coords, autocast)
        runs = [run_once(pipe, image, coords, autocast) for _ in range(args.repeats)]
        row = {"mode": mode, "voxels": len(coords), "device": str(device)}
        for stage in STAGES:
            row[stage] = float(np.mean([r[stage][0] for r in runs]))
            peaks = [r[stage][1] for r in runs if r[stage][1] is not None]
            row[f"{stage}_peak_gib"] = max(peaks) if peaks else None
        row["total"] = sum(row[s] for s in STAGES)
        rows.append(row)
    return rows


def format_table(rows: list[dict]) -> str:
    head = ["mode", *STAGES, "total [s]", "peak [GiB]"]
    lines = [" | ".join(f"{h:>13}" for h in head)]
    for r in rows:
        peaks = [r[f"{s}_peak_gib"] for s in STAGES if r[f"{s}_peak_gib"] is not None]
        peak = f"{max(peaks):.2f}" if peaks else "-"
        cells = [r["mode"], *[f"{r[s]:.3f}" for s in STAGES], f"{r['total']:.3f}", peak]
        lines.append(" | ".join(f"{c:>13}" for c in cells))
    peaks = {r["mode"]: {s: r[f"{s}_peak_gib"] for s in STAGES} for r in rows if r["device"].startswith("cuda")}
    if peaks:
        lines.append("peak GiB per stage: " + json.dumps({m: {s: round(v, 2) for s, v in p.items()} for m, p in peaks.items()}))
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="auto")
    p.add_argument("--modes", default="fp32,fp16,bf16-autocast", type=lambda s: [m for m in s.split(",") if m],
                   help=f"comma-separated, from {', '.join(MODES)}")
    p.add_argument("--voxels", type=int, default=20000, help="occupied voxels given to the SLat flow / decoder")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--tiny", action="store_true", help="tiny random models (smoke test)")
    p.add_argument("--tf32", action="store_true", help="allow TF32 matmuls/convolutions in fp32 mode (CUDA)")
    p.add_argument("--json", type=Path, help="also write the rows as JSON here")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        rows = benchmark(args)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(format_table(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
