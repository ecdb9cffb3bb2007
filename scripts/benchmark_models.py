#!/usr/bin/env python
"""Benchmark the GVF networks at the official sizes and print a table.

Rows:
* TemporalDiT forward (B=1, T=32, N=512, 1370 image tokens, 4096 static rows) in fp32, fp16 autocast
  and bf16 autocast, with the conditions projected on every call ("uncached") or once
  ("cached", as the sampler does): median milliseconds per evaluation and peak memory.
* A full adaptive DPM-Solver++ sample at that size (wall time, number of evaluations).
* The motion VAE decoding 32 frames for 100k query Gaussians (median time, peak memory).

Weights are random (re-drawn like the parity fixtures so that no layer is zero); the adaptive
solver's step count depends on the weights, so its NFE here is only indicative.

    python scripts/benchmark_models.py                      # GPU, official sizes
    python scripts/benchmark_models.py --tiny --device cpu  # smoke test
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import importlib.util
import json
import logging
import math
import os
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from gvf.diffusion import GaussianDiffusion, dpm_solver_sample  # noqa: E402
from gvf.models.dit import TINY as DIT_TINY  # noqa: E402
from gvf.models.dit import TemporalDiT  # noqa: E402
from gvf.config import DiTConfig  # noqa: E402

logger = logging.getLogger("benchmark_models")

PRECISIONS = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}
# (B, T, N, L image tokens, S static rows, query Gaussians)
OFFICIAL_SIZES = dict(B=1, T=32, N=512, L=1370, S=4096, Q=100_000)
TINY_SIZES = dict(B=1, T=3, N=16, L=10, S=24, Q=500)
TINY_VAE = dict(depth=1, dim=48, queries_dim=48, output_dim=14, num_latents=16, latent_dim=4, heads=4, num_timesteps=3)


class Timer:
    """Median wall time of a callable: CUDA events on GPU, perf_counter on CPU."""

    def __init__(self, device: torch.device, warmup: int, repeats: int):
        self.device, self.warmup, self.repeats = device, warmup, repeats

    def __call__(self, fn) -> float:
        for _ in range(self.warmup):
            fn()
        self._sync()
        times = []
        for _ in range(self.repeats):
            if self.device.type == "cuda":
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                end.synchronize()
                times.append(start.elapsed_time(end))
            else:
                t0 = time.perf_counter()
                fn()
                times.append(1e3 * (time.perf_counter() - t0))
        return statistics.median(times)

    def _sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


def reset_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_gib(device: torch.device) -> float:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")


def autocast(device: torch.device, dtype: torch.dtype | None):
    return torch.autocast(device_type=device.type, dtype=dtype, enabled=dtype is not None)


@torch.no_grad()
def randomize_(model: torch.nn.Module, seed: int = 0) -> None:
    """Re-draw every parameter like the parity fixtures: matrices N(0, 1/fan_in), gains 1 + 0.2·N, biases 0.1·N."""
    g = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        if p.ndim >= 2:
            fan_in = p[0].numel()
            value = torch.randn(p.shape, generator=g) / math.sqrt(fan_in)
        elif name.endswith("bias"):
            value = 0.1 * torch.randn(p.shape, generator=g)
        else:
            value = 1 + 0.2 * torch.randn(p.shape, generator=g)
        p.copy_(value.to(p.dtype))


def dit_inputs(cfg: DiTConfig, sizes: dict, device: torch.device, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, dict]:
    g = torch.Generator().manual_seed(seed)
    B, T, N, L, S = (sizes[k] for k in "BTNLS")
    x = torch.randn(B, T, N, cfg.in_channels, generator=g)
    t = torch.full((B,), 500.0)
    cond = {
        "cond_images": torch.randn(B, T, L, cfg.image_cond_channels, generator=g),
        "static_latent": torch.randn(B, S, cfg.static_cond_channels, generator=g),
        "deformation_position_xyz": torch.rand(B, N, 3, generator=g) - 0.5,
    }
    return x.to(device), t.to(device), {k: v.to(device) for k, v in cond.items()}


@contextlib.contextmanager
def attention_backend(spec: str):
    """"auto", a gvf backend ("sdpa", "flash_attn", "xformers", "math") or "sdpa:<kernel>" with
    kernel one of flash, efficient, cudnn, math (PyTorch's SDPA kernel choice)."""
    name, _, kernel = spec.partition(":")
    previous = os.environ.get("GVF_ATTN_BACKEND")
    if name != "auto":
        if name in ("flash_attn", "xformers") and importlib.util.find_spec(name) is None:
            raise RuntimeError(f"{name} is not installed")
        os.environ["GVF_ATTN_BACKEND"] = name
    try:
        if kernel:
            from torch.nn.attention import SDPBackend, sdpa_kernel

            kernels = {
                "flash": SDPBackend.FLASH_ATTENTION,
                "efficient": SDPBackend.EFFICIENT_ATTENTION,
                "cudnn": SDPBackend.CUDNN_ATTENTION,
                "math": SDPBackend.MATH,
            }
            with sdpa_kernel([kernels[kernel]]):
                yield
        else:
            yield
    finally:
        if previous is None:
            os.environ.pop("GVF_ATTN_BACKEND", None)
        else:
            os.environ["GVF_ATTN_BACKEND"] = previous


def bench_dit(variants, cfg, sizes, device, timer, precisions, attn_specs) -> list[dict]:
    """Rows for every (variant, precision, uncached/cached, attention backend); backends other than
    "auto" are timed for the cached half-precision forwards of the first variant only.
    A variant is (name, network, fold_static) (see `TemporalDiT.precompute_conditions`)."""
    rows = []
    x, t, cond = dit_inputs(cfg, sizes, device)
    for index, (variant, net, fold) in enumerate(variants):
        for pname in precisions:
            dtype = PRECISIONS[pname]
            for cached in (False, True) if index == 0 or "compiled" in variant else (True,):
                for spec in attn_specs if (cached and dtype is not None and index == 0) else ["auto"]:
                    reset_memory(device)
                    cache, note = None, ""
                    try:
                        with torch.no_grad(), autocast(device, dtype), attention_backend(spec):
                            cache = net.precompute_conditions(**cond, fold_static=fold)
                            if cached:
                                ms = timer(lambda: net(x, t, cache=cache))
                            else:
                                ms = timer(lambda: net(x, t, cache=net.precompute_conditions(**cond, fold_static=fold)))
                    except Exception as exc:  # e.g. a kernel unavailable here; report and go on
                        ms, note = float("nan"), f"failed: {type(exc).__name__}: {str(exc).splitlines()[0][:80]}"
                    if spec != "auto":
                        note = f"attention {spec}" + (f"; {note}" if note else "")
                    rows.append(
                        dict(
                            what=f"DiT forward ({variant})",
                            precision=pname,
                            conditions="cached" if cached else "uncached",
                            ms=ms,
                            peak_gib=peak_memory_gib(device),
                            note=note,
                        )
                    )
                    del cache
    return rows


def bench_sampler(model, cfg, sizes, device, precision, guidance: tuple[float, float]) -> dict:
    x, _, cond = dit_inputs(cfg, sizes, device, seed=1)
    schedule = GaussianDiffusion()
    reset_memory(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    _, nfe = dpm_solver_sample(
        model,
        schedule,
        x,
        cond,
        method="adaptive",
        guidance_scale=guidance[0],
        guidance_scale2=guidance[1],
        autocast_dtype=PRECISIONS[precision],
        progress=False,
    )
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - t0
    label = "DPM-Solver++ adaptive sample" + ("" if guidance == (1.0, 1.0) else f" (CFG {guidance[0]}, {guidance[1]})")
    return dict(
        what=label,
        precision=precision,
        conditions="cached",
        ms=1e3 * seconds,
        peak_gib=peak_memory_gib(device),
        note=f"NFE {nfe}, {1e3 * seconds / max(nfe, 1):.1f} ms/NFE",
    )


def attention_micro(device, timer) -> list[dict]:
    """The DiT's and the motion VAE's attention calls alone (fp16), per SDPA kernel: ms and TFLOP/s
    (4·L·S·D·H·B multiply-adds counted as 2 FLOPs each, i.e. QKᵀ and PV)."""
    from gvf.nn import attention

    shapes = {  # name: (B, L, S, H, D, D_v)
        "static cross (unfolded)": (1, 16384, 4096, 16, 32, 32),
        "static cross (folded, W=16)": (1, 16384 * 16, 4096, 1, 16, 16),
        "image cross": (32, 512, 1370, 16, 32, 32),
        "spatial self": (32, 512, 512, 16, 32, 32),
        "temporal self": (512, 32, 32, 16, 32, 32),
        "VAE decode chunk (8192 q)": (32, 8192, 1024, 8, 64, 64),
        "VAE decode chunk, v width 16": (32, 8192, 1024, 8, 64, 16),
    }
    rows = []
    g = torch.Generator(device=device).manual_seed(0)
    for name, (B, L, S, H, D, Dv) in shapes.items():
        q = torch.randn(B, L, H, D, device=device, dtype=torch.float16, generator=g)
        k = torch.randn(B, S, H, D, device=device, dtype=torch.float16, generator=g)
        v = torch.randn(B, S, H, Dv, device=device, dtype=torch.float16, generator=g)
        flops = 2 * B * H * L * S * (D + Dv)
        for spec in ("sdpa:flash", "sdpa:cudnn", "sdpa:efficient"):
            try:
                with torch.no_grad(), attention_backend(spec):
                    ms = timer(lambda: attention(q, k, v))
                note = f"{flops / ms / 1e9:.0f} TFLOP/s"
            except Exception as exc:
                ms, note = float("nan"), f"failed: {type(exc).__name__}: {str(exc).splitlines()[0][:60]}"
            rows.append(dict(what=f"attention {name}", precision="fp16", conditions=spec, ms=ms, peak_gib=float("nan"), note=note))
    # matmul reference: the DiT's MLP up-projection
    a = torch.randn(16384, 512, device=device, dtype=torch.float16)
    w = torch.randn(2048, 512, device=device, dtype=torch.float16)
    ms = timer(lambda: torch.nn.functional.linear(a, w))
    rows.append(dict(what="matmul 16384x512 @ 512x2048", precision="fp16", conditions="-", ms=ms, peak_gib=float("nan"), note=f"{2 * 16384 * 512 * 2048 / ms / 1e9:.0f} TFLOP/s"))
    return rows


def profile_dit(model, cfg, sizes, device, dtype, fold, top: int = 25) -> str:
    """Kernel-level profile (CUDA time per kernel name) of one cached forward."""
    from torch.profiler import ProfilerActivity, profile

    x, t, cond = dit_inputs(cfg, sizes, device)
    with torch.no_grad(), autocast(device, dtype):
        cache = model.precompute_conditions(**cond, fold_static=fold)
        for _ in range(3):
            model(x, t, cache=cache)
        torch.cuda.synchronize(device)
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(5):
                model(x, t, cache=cache)
            torch.cuda.synchronize(device)
    events = [e for e in prof.key_averages() if e.device_type.name == "CUDA" or getattr(e, "self_device_time_total", 0) > 0]
    total = sum(e.self_device_time_total for e in events)
    events.sort(key=lambda e: -e.self_device_time_total)
    lines = [f"# profile fold_static={fold} {dtype}: {total / 5e3:.2f} ms of kernels per forward"]
    for e in events[:top]:
        lines.append(f"{e.self_device_time_total / 5e3:8.3f} ms {100 * e.self_device_time_total / total:5.1f}%  x{e.count // 5:<4d} {e.key[:110]}")
    return "\n".join(lines)


def bench_vae(sizes, device, timer, precisions, tiny, attn_specs=("auto",)) -> list[dict]:
    try:
        from gvf.models import VariationFieldVAE
        from gvf.models.motion_vae import OFFICIAL_CONFIG
    except Exception as exc:  # written in parallel by another helper
        nan = float("nan")
        return [dict(what="motion VAE decode", precision="-", conditions="-", ms=nan, peak_gib=nan, note=f"skipped: {exc}")]
    kwargs = dict(TINY_VAE) if tiny else official_vae_kwargs(OFFICIAL_CONFIG)
    vae = VariationFieldVAE(**kwargs).to(device).eval()
    randomize_(vae)
    g = torch.Generator().manual_seed(2)
    B, T, Q = sizes["B"], sizes["T"], sizes["Q"]
    z = torch.randn(B, T, vae.config.num_latents, vae.config.latent_dim, generator=g).to(device)
    xyz = torch.rand(B, Q, 3, generator=g) - 0.5
    colour_opacity_scale = torch.rand(B, Q, 7, generator=g)
    quaternion = torch.nn.functional.normalize(torch.randn(B, Q, 4, generator=g), dim=-1)
    queries = torch.cat([xyz, colour_opacity_scale, quaternion], dim=-1).to(device)  # (B, Q, 14) Gaussian rows
    rows = []
    for pname in precisions:
        for spec in attn_specs if PRECISIONS[pname] is not None else ["auto"]:
            reset_memory(device)
            note = "" if spec == "auto" else f"attention {spec}"
            try:
                with torch.no_grad(), autocast(device, PRECISIONS[pname]), attention_backend(spec):
                    ms = timer(lambda: vae.decode(z, queries))
            except Exception as exc:
                ms, note = float("nan"), f"{note}; failed: {type(exc).__name__}: {str(exc).splitlines()[0][:80]}"
            what = f"motion VAE decode ({T} frames, {Q} Gaussians)"
            rows.append(dict(what=what, precision=pname, conditions="-", ms=ms, peak_gib=peak_memory_gib(device), note=note))
    if device.type == "cuda" and "fp16" in precisions:  # narrower folded values (efficient kernel)
        vae.fold_value_width = 16
        reset_memory(device)
        with torch.no_grad(), autocast(device, torch.float16):
            ms = timer(lambda: vae.decode(z, queries))
        rows.append(dict(what=what, precision="fp16", conditions="-", ms=ms, peak_gib=peak_memory_gib(device), note="fold_value_width 16"))
        vae.fold_value_width = None
    return rows


def official_vae_kwargs(fallback: dict) -> dict:
    """configs/official/vae.yml `model`, or the built-in official configuration."""
    path = ROOT / "configs" / "official" / "vae.yml"
    try:
        from gvf.config import VAEExperimentConfig, load_config, to_kwargs

        return to_kwargs(load_config(path, VAEExperimentConfig).model)
    except Exception as exc:
        logger.warning("using the built-in motion VAE config (%s)", exc)
        return dict(fallback)


def official_dit_config() -> DiTConfig:
    path = ROOT / "configs" / "official" / "diffusion.yml"
    try:
        from gvf.config import DiffusionExperimentConfig, load_config

        return load_config(path, DiffusionExperimentConfig).model
    except Exception as exc:
        logger.warning("using the built-in DiT config (%s)", exc)
        return DiTConfig()


def format_table(rows: list[dict]) -> str:
    header = f"{'what':<48} {'precision':<9} {'conditions':<10} {'ms':>10} {'peak GiB':>9}  note"
    lines = [header, "-" * len(header)]
    for r in rows:
        lines.append(f"{r['what']:<48} {r['precision']:<9} {r['conditions']:<10} {r['ms']:>10.2f} {r['peak_gib']:>9.2f}  {r['note']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--tiny", action="store_true", help="tiny models and sizes (smoke test)")
    parser.add_argument("--precisions", default="fp32,fp16,bf16", help="comma list of fp32, fp16, bf16")
    parser.add_argument("--sampler-precision", choices=list(PRECISIONS), help="default: bf16 on GPU, fp32 on CPU")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--cfg", nargs=2, type=float, metavar=("S1", "S2"), help="also time a guided sample (batch of 3)")
    parser.add_argument("--compile", action="store_true", help="also time DiT forwards with torch.compile'd blocks")
    parser.add_argument(
        "--compile-mode",
        default="default",
        help="torch.compile mode for --compile: default, reduce-overhead (CUDA graphs), max-autotune-no-cudagraphs, ...",
    )
    parser.add_argument("--compile-model", action="store_true", help="compile the whole DiT forward instead of each block")
    parser.add_argument("--compile-precisions", help="precisions of the compiled rows (default: --precisions)")
    parser.add_argument("--no-fold", action="store_true", help="also time the unfolded static cross-attention (eager)")
    parser.add_argument("--profile", action="store_true", help="print a kernel profile of the cached half-precision DiT forward")
    parser.add_argument("--attn-micro", action="store_true", help="time the attention calls alone per SDPA kernel")
    parser.add_argument(
        "--attn",
        default="auto",
        help="comma list of attention backends for the cached half-precision rows: auto, sdpa, flash_attn, "
        "xformers, math, sdpa:flash, sdpa:efficient, sdpa:cudnn",
    )
    parser.add_argument("--skip", default="", help="comma list of dit, sampler, vae")
    parser.add_argument("--json", type=Path, help="also write the rows to this file")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda requested but CUDA is not available")
    precisions = [p.strip() for p in args.precisions.split(",") if p.strip()]
    bad = [p for p in precisions if p not in PRECISIONS]
    if bad:
        parser.error(f"unknown precision(s) {bad}; choose from {list(PRECISIONS)}")
    sampler_precision = args.sampler_precision or ("bf16" if device.type == "cuda" else "fp32")
    if device.type == "cpu":  # CPU autocast supports bf16 only
        precisions = [p for p in precisions if p != "fp16"]
        sampler_precision = "fp32" if sampler_precision == "fp16" else sampler_precision
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}

    sizes = TINY_SIZES if args.tiny else OFFICIAL_SIZES
    timer = Timer(device, args.warmup, args.repeats)
    rows: list[dict] = []
    if device.type == "cuda":
        print(f"# {torch.cuda.get_device_name(device)}, torch {torch.__version__}, TF32 matmul {torch.backends.cuda.matmul.allow_tf32}")
    print(f"# sizes {sizes}")

    if not {"dit", "sampler"} <= skip:
        cfg = DIT_TINY if args.tiny else official_dit_config()
        model = TemporalDiT(cfg).to(device).eval()
        randomize_(model)
        if args.profile and device.type == "cuda":
            for fold in (False, None):
                print(profile_dit(model, cfg, sizes, device, torch.float16, fold), flush=True)
        if "dit" not in skip:
            variants = [("eager", model, None)]
            if args.no_fold:
                variants.append(("eager, static attention unfolded", model, False))
            attn_specs = [a.strip() for a in args.attn.split(",") if a.strip()]
            rows += bench_dit(variants, cfg, sizes, device, timer, precisions, attn_specs)
            print(format_table(rows), flush=True)
            if args.compile:
                compiled = copy.deepcopy(model)
                mode = None if args.compile_mode == "default" else args.compile_mode
                if args.compile_model:
                    compiled.compile(mode=mode)
                    label = f"compiled model, {args.compile_mode}"
                else:
                    for block in compiled.blocks:  # regional compilation: one graph, reused by every block
                        block.compile(mode=mode)
                    label = f"compiled blocks, {args.compile_mode}"
                cprec = [p.strip() for p in (args.compile_precisions or ",".join(precisions)).split(",") if p.strip()]
                rows += bench_dit([(label, compiled, None)], cfg, sizes, device, timer, cprec, ["auto"])
                del compiled
        if "sampler" not in skip:
            rows.append(bench_sampler(model, cfg, sizes, device, sampler_precision, (1.0, 1.0)))
            if args.cfg:
                rows.append(bench_sampler(model, cfg, sizes, device, sampler_precision, tuple(args.cfg)))
        del model
    if "vae" not in skip:
        rows += bench_vae(sizes, device, timer, precisions, args.tiny, [a.strip() for a in args.attn.split(",") if a.strip()])
    if args.attn_micro and device.type == "cuda":
        rows += attention_micro(device, timer)

    print(format_table(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return rows


if __name__ == "__main__":
    main()
