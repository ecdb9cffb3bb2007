"""Benchmark the Gaussian rasterizer: milliseconds per call, forward and forward+backward.

Rows: gsplat called directly (no gvf code; packed=False as our wrapper uses, and gsplat's default
packed=True, which in gsplat 1.5.3 only works without a background), ``gvf.render.rasterize`` with the gsplat backend (the wrapper overhead is its excess over
the direct call), ``render_gaussians`` (adds the parameter activations), and the pure-PyTorch backend
where it fits in time and memory. Scenes: random Gaussians in [-0.5, 0.5]^3 with scales 0.005-0.03, seen
by an orbit of cameras at radius 2 (FoV 49.1°). Timing: warm-up calls, then the median of CUDA-event
timings, each call followed by a synchronisation.

    python scripts/benchmark_render.py                       # 512², 1 and 24 views, 50k and 200k Gaussians
    python scripts/benchmark_render.py --size 128 --gaussians 2000 --views 1 4 --skip-gsplat   # CPU smoke run
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import torch

from gvf.gaussians import Gaussians
from gvf.render import rasterize, render_gaussians
from gvf.render._gsplat_backend import gsplat_available, import_gsplat
from gvf.render.cameras import orbit_cameras, pixel_intrinsics


def make_scene(N: int, V: int, size: int, device: torch.device, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    means = torch.rand(1, N, 3, generator=g) - 0.5
    quats = torch.nn.functional.normalize(torch.randn(1, N, 4, generator=g), dim=-1)
    scales = torch.exp(torch.empty(1, N, 3).uniform_(math.log(0.005), math.log(0.03), generator=g))
    opac = torch.rand(1, N, generator=g) * 0.95 + 0.05
    colors = torch.rand(1, N, 3, generator=g)
    w2c, K_norm = orbit_cameras(V, elevation_deg=20.0)
    Ks = pixel_intrinsics(K_norm, size, size)
    bg = torch.ones(1, V, 3)
    tensors = [t.to(device).contiguous() for t in (means, quats, scales, opac, colors, w2c[None], Ks[None], bg)]
    gaussians = Gaussians.from_activated(tensors[0][0].clone(), torch.randn(N, 3, generator=g).to(device),
                                         tensors[3][0, :, None].clone(), tensors[2][0].clone(), tensors[1][0].clone())
    return tensors, gaussians, w2c.to(device), K_norm.to(device)


def timed(fn, warmup: int, iters: int, device: torch.device) -> float:
    """Median milliseconds of fn() over ``iters`` calls after ``warmup`` calls."""
    cuda = device.type == "cuda"
    t0 = time.perf_counter()
    for _ in range(warmup):
        fn()
    if cuda:
        torch.cuda.synchronize(device)
    if warmup and (time.perf_counter() - t0) / warmup > 5.0:
        iters = 1  # slow configurations: one timed call is enough
    times = []
    for _ in range(iters):
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize(device)
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def methods(tensors, gaussians, w2c, K_norm, size, has_gsplat: bool):
    """name -> (leaves needing gradients, function returning tensors whose sum is the loss)."""
    means, quats, scales, opac, colors, viewmats, Ks, bg = tensors
    leaves = [means, quats, scales, opac, colors]
    out = {}
    if has_gsplat:
        gsplat = import_gsplat()
        for packed in (False, True):
            # gsplat 1.5.3's packed mode rejects batched backgrounds (its rasterize_to_pixels checks them
            # against the packed, batch-less shape), so that row runs without one.
            def direct(packed=packed):
                render, alpha, _ = gsplat.rasterization(
                    means, quats, scales, opac, colors, viewmats, Ks, size, size, near_plane=0.01, far_plane=1e10,
                    eps2d=0.1, sh_degree=None, packed=packed, backgrounds=None if packed else bg,
                    render_mode="RGB+ED", rasterize_mode="antialiased")
                return render, alpha
            out["gsplat direct packed=True, no bg" if packed else "gsplat direct packed=False"] = (leaves, direct)
        out["rasterize(gsplat)"] = (leaves, lambda: rasterize(*leaves, viewmats, Ks, size, size, background=bg, backend="gsplat"))
        raw = [gaussians.xyz, gaussians.features_dc, gaussians.opacity_raw, gaussians.scaling_raw, gaussians.rotation_raw]
        out["render_gaussians(gsplat)"] = (raw, lambda: render_gaussians(gaussians, w2c, K_norm, size, backend="gsplat"))
    out["rasterize(torch)"] = (leaves, lambda: rasterize(*leaves, viewmats, Ks, size, size, background=bg, backend="torch"))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=512, help="image height = width")
    parser.add_argument("--views", type=int, nargs="+", default=[1, 24])
    parser.add_argument("--gaussians", type=int, nargs="+", default=[50_000, 200_000])
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--torch-iters", type=int, default=3, help="timed calls of the slow torch backend")
    parser.add_argument("--torch-max-work", type=float, default=1.5e6,
                        help="run the torch backend only where views x Gaussians <= this (time and memory)")
    parser.add_argument("--skip-gsplat", action="store_true")
    args = parser.parse_args()

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    has_gsplat = device.type == "cuda" and gsplat_available() and not args.skip_gsplat
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"device: {name}; torch {torch.__version__}; image {args.size}x{args.size}; "
          f"median of {args.iters} ({args.torch_iters} for torch) after {args.warmup} warm-up calls")
    header = f"| {'method':<28} | views | Gaussians | fwd ms | fwd+bwd ms | peak GiB (f+b) | vs gsplat direct (f / f+b) |"
    print(header)
    print("|" + "|".join("-" * (len(c)) for c in header.split("|")[1:-1]) + "|")

    references = {}  # (N, V) -> gsplat direct (packed=False) timings
    for phase in ("gsplat", "torch"):  # the slow torch rows last
        for N in args.gaussians:
            for V in args.views:
                tensors, gaussians, w2c, K_norm = make_scene(N, V, args.size, device)
                for label, (leaves, fn) in methods(tensors, gaussians, w2c, K_norm, args.size, has_gsplat).items():
                    is_torch = label == "rasterize(torch)"
                    if is_torch != (phase == "torch"):
                        continue
                    if is_torch and V * N > args.torch_max_work:
                        print(f"| {label:<28} | {V:>5} | {N:>9} | {'skipped: V x N above --torch-max-work':^60} |", flush=True)
                        continue
                    row = bench_row(leaves, fn, device, *((1, args.torch_iters) if is_torch else (args.warmup, args.iters)))
                    if row is None:
                        print(f"| {label:<28} | {V:>5} | {N:>9} | {'out of GPU memory':^60} |", flush=True)
                        continue
                    fwd, fb, peak = row
                    if label == "gsplat direct packed=False":
                        references[(N, V)] = (fwd, fb)
                    ref = references.get((N, V))
                    rel = (f"{100 * (fwd / ref[0] - 1):+.1f}% / {100 * (fb / ref[1] - 1):+.1f}%"
                           if ref and not label.startswith("gsplat direct") else "")
                    print(f"| {label:<28} | {V:>5} | {N:>9} | {fwd:>6.2f} | {fb:>10.2f} | {peak:>14.2f} | {rel:<26} |", flush=True)
                del tensors, gaussians
                if device.type == "cuda":
                    torch.cuda.empty_cache()


def bench_row(leaves, fn, device, warmup, iters):
    """(forward ms, forward+backward ms, peak GiB of forward+backward), or None when out of memory."""
    def forward():
        with torch.no_grad():
            fn()

    def forward_backward():
        for t in leaves:
            t.requires_grad_(True)
            t.grad = None
        loss = sum(o.sum() for o in fn())
        loss.backward()

    try:
        fwd = timed(forward, warmup, iters, device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        fb = timed(forward_backward, warmup, iters, device)
        peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    except torch.cuda.OutOfMemoryError:
        return None
    finally:
        for t in leaves:
            t.requires_grad_(False)
            t.grad = None
    return fwd, fb, peak


if __name__ == "__main__":
    main()
