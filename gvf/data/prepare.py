"""Animated assets -> upstream training layout (spec §7.1-§7.3); `scripts/prepare_data.py` is the CLI.

Per sequence ``<out>/<name>/``:

* ``imgs/timestep_{TT:02d}_view_{VV:02d}.png``: RGBA renders (`render_mesh.MeshRenderer`) of T frames ×
  V views (`views.sequence_views`: 8 fixed directions, then random ones);
* ``meta_data/timestep_{TT:02d}_view_{VV:02d}.json``: upstream camera JSON (`views.view_metadata`);
* ``objs/mesh_data/static_frame_vertices.pt`` (N, 3) and ``moving_frame_deltas.pt`` (T, N, 3)
  (`surface.point_deltas`);
* ``features_all_timesteps/0/<extractor name>.npz``: ``indices`` (M, 3) uint8 surface voxels of frame 0
  and ``patchtokens`` (M, C) float16 = mean over the frame-0 views of the projected feature maps;
* ``info.json``: source, frames, views, seeds and timings of the sequence.

and ``<out>/cond_features/<name>.npz`` (key ``features`` (T, L, C) float16): conditioning tokens of
the front view (view 0) of every frame.

Robustness: each sequence is built in ``<out>/.tmp-<name>-<pid>/`` and renamed into place when complete,
so a sequence directory exists only if it is whole; ``<out>/.done/<source>.json`` lists what a source
produced, so a re-run skips finished sources without loading them. Broken or static assets are
recorded with their reason in ``<out>/manifest.jsonl`` (one JSON line per sequence) and never stop
the run.
"""
from __future__ import annotations

import json
import logging
import multiprocessing as mp
import os
import re
import shutil
import time
import traceback
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np
import torch

from gvf.utils.io import atomic_write

from .animation import MIN_DISPLACEMENT, mean_displacement, sample_sequence
from .mesh import AnimatedMesh, AssetError, StaticSequenceError
from .render_mesh import MeshRenderer, to_uint8
from .surface import point_deltas
from .views import DEFAULT_FOV_DEG, sequence_views, view_metadata, view_stem, write_view_json
from .voxelize import voxel_centers, voxel_features, voxelize_surface

logger = logging.getLogger(__name__)

__all__ = ["PrepareConfig", "Source", "discover_sources", "load_source", "prepare_sequence", "run_prepare",
           "MANIFEST_NAME", "COND_DIR"]

MANIFEST_NAME = "manifest.jsonl"
COND_DIR = "cond_features"
DONE_DIR = ".done"
ASSET_SUFFIXES = (".glb", ".gltf")
MESH_FRAME_SUFFIXES = (".obj", ".ply")


@dataclass
class PrepareConfig:
    """Options of the preparation (the CLI flags map one to one).

    Attributes:
        num_frames: T frames per sequence.
        num_views: V views per frame (8 fixed directions, then random ones).
        resolution: rendered image side in pixels.
        fov_deg: camera field of view (degrees).
        distance: camera distance from the origin.
        ssaa: supersampling factor of the renderer.
        num_points: surface points carried through the frames.
        voxel_resolution: voxel grid side (64 upstream).
        extractor: feature extractor name (`gvf.features.get_extractor`).
        extractor_kwargs: keyword arguments of the extractor factory.
        device: torch device for rendering and features.
        seed: base seed (views and points get per-sequence seeds derived from it and the name).
        png_compress_level: zlib level of the PNGs (0-9; 1 is fast with slightly bigger files).
    """

    num_frames: int = 24
    num_views: int = 16
    resolution: int = 512
    fov_deg: float = DEFAULT_FOV_DEG
    distance: float = 2.0
    ssaa: int = 2
    num_points: int = 8192
    voxel_resolution: int = 64
    extractor: str = "simple"
    extractor_kwargs: dict = field(default_factory=dict)
    device: str = "cpu"
    seed: int = 0
    png_compress_level: int = 1

    def validate(self) -> None:
        if self.num_frames < 2:
            raise ValueError(f"num_frames must be >= 2, got {self.num_frames}")
        if self.num_views < 1:
            raise ValueError(f"num_views must be >= 1, got {self.num_views}")
        if self.resolution < 8 or self.ssaa < 1:
            raise ValueError(f"resolution must be >= 8 and ssaa >= 1, got {self.resolution}, {self.ssaa}")
        if not 0 < self.voxel_resolution <= 256:
            raise ValueError(f"voxel_resolution must lie in [1, 256] (uint8 indices), got {self.voxel_resolution}")


@dataclass
class Source:
    """One input: an asset file, a folder of per-frame meshes, or a procedural object seed.

    Attributes:
        key: unique, filesystem-safe name; the sequence name (or its prefix for multi-animation files).
        kind: "gltf", "mesh_folder" or "procedural".
        path: input path (None for procedural).
        seed: procedural seed (None otherwise).
    """

    key: str
    kind: str
    path: str | None = None
    seed: int | None = None

    def describe(self) -> str:
        return self.path if self.path is not None else f"procedural:{self.seed}"


# ------------------------------------------------------------------------------------- discovery
def _safe_name(text: str) -> str:
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("._")
    return name or "unnamed"


def _is_mesh_folder(path: Path) -> bool:
    return path.is_dir() and any(p.suffix.lower() in MESH_FRAME_SUFFIXES for p in path.iterdir() if p.is_file())


def discover_sources(inputs: Iterable[str | Path] = (), procedural: int = 0, seed: int = 0) -> list[Source]:
    """Sources from input paths and a number of procedural objects.

    An input may be a ``.glb``/``.gltf`` file, a folder of per-frame ``.obj``/``.ply`` meshes, or a
    folder whose entries are such files / folders (one level).

    Args:
        inputs: paths.
        procedural: number of procedural objects (seeds ``seed, seed + 1, ...``).
        seed: first procedural seed.
    Raises:
        ValueError: an input does not exist or holds nothing usable (one sentence naming it).
    """
    sources: list[Source] = []
    for raw in inputs:
        path = Path(raw)
        if not path.exists():
            raise ValueError(f"input {path} does not exist")
        if path.is_file():
            if path.suffix.lower() not in ASSET_SUFFIXES:
                raise ValueError(f"input file {path} is not a .glb or .gltf asset")
            sources.append(Source(_safe_name(path.stem), "gltf", str(path)))
        elif _is_mesh_folder(path):
            sources.append(Source(_safe_name(path.name), "mesh_folder", str(path)))
        else:
            found = []
            for child in sorted(path.iterdir()):
                if child.name.startswith("."):
                    continue
                if child.is_file() and child.suffix.lower() in ASSET_SUFFIXES:
                    found.append(Source(_safe_name(child.stem), "gltf", str(child)))
                elif _is_mesh_folder(child):
                    found.append(Source(_safe_name(child.name), "mesh_folder", str(child)))
            if not found:
                raise ValueError(f"input folder {path} contains no .glb/.gltf files and no folders of "
                                 f"per-frame .obj/.ply meshes")
            sources.extend(found)
    if procedural < 0:
        raise ValueError(f"procedural must be >= 0, got {procedural}")
    sources += [Source(f"procedural_{s:05d}", "procedural", seed=s) for s in range(seed, seed + procedural)]
    # unique keys (two inputs may share a stem)
    seen: dict[str, int] = {}
    for src in sources:
        n = seen.get(src.key, 0)
        seen[src.key] = n + 1
        if n:
            src.key = f"{src.key}_{n}"
    return sources


# ------------------------------------------------------------------------------------- loading
def load_source(source: Source, num_frames: int) -> list[tuple[str, AnimatedMesh | Exception]]:
    """Sequences of a source as (name, mesh) pairs; a static or broken animation gives (name, error).

    Raises:
        AssetError / ValueError: the source as a whole cannot be read.
    """
    if source.kind == "procedural":
        from .synthetic import make_procedural_object

        return [(source.key, make_procedural_object(int(source.seed), num_frames=num_frames))]
    if source.kind == "mesh_folder":
        from .mesh_sequence import load_mesh_sequence

        seq = load_mesh_sequence(source.path)
        try:
            return [(source.key, sample_sequence(seq, num_frames))]
        except StaticSequenceError as err:
            return [(source.key, err)]
    if source.kind == "gltf":
        from .gltf import GltfAsset, load_gltf

        asset = GltfAsset(source.path)  # parsed once, posed per animation
        anims = asset.animations
        if not anims:
            raise AssetError(f"{source.path}: has no animations (a static asset gives no 4D sequence)")
        out = []
        for anim in anims:
            name = source.key if len(anims) == 1 else f"{source.key}__{_safe_name(anim.name or str(anim.index))}"
            try:
                out.append((name, load_gltf(asset, num_frames, on_static="raise", animations=[anim.index])[0]))
            except (StaticSequenceError, AssetError) as err:
                out.append((name, err))
        return out
    raise ValueError(f"unknown source kind {source.kind!r}")


# ------------------------------------------------------------------------------------- one sequence
def _sequence_seed(base: int, name: str) -> int:
    return (int(base) * 1000003 + zlib.crc32(name.encode())) % (2**31)


def _save_png(path: Path, rgba: np.ndarray, level: int) -> None:
    from PIL import Image

    Image.fromarray(rgba, "RGBA").save(path, compress_level=level)


def prepare_sequence(mesh: AnimatedMesh, seq_dir: Path, cond_path: Path, cfg: PrepareConfig, extractor,
                     *, name: str, renderer_cls=MeshRenderer) -> dict:
    """Write one sequence (layout in the module docstring) into `seq_dir` and its condition file.

    Args:
        mesh: normalised T-frame animated mesh (T must equal ``cfg.num_frames``).
        seq_dir: (temporary) output directory, created here.
        cond_path: where to write the ``features`` npz.
        cfg: options.
        extractor: a `gvf.features.FeatureExtractor` on ``cfg.device``.
        name: sequence name (seeds views and points).
    Returns:
        dict of timings (seconds): render, io, points, voxels, features, and counts.
    """
    T, V = mesh.num_frames, cfg.num_views
    if T != cfg.num_frames:
        raise ValueError(f"{name}: mesh has {T} frames, expected {cfg.num_frames}")
    seed = _sequence_seed(cfg.seed, name)
    timing = {"render": 0.0, "io": 0.0, "points": 0.0, "voxels": 0.0, "features": 0.0}
    device = torch.device(cfg.device)
    (seq_dir / "imgs").mkdir(parents=True, exist_ok=True)
    (seq_dir / "meta_data").mkdir(exist_ok=True)
    (seq_dir / "objs" / "mesh_data").mkdir(parents=True, exist_ok=True)
    feat_dir = seq_dir / "features_all_timesteps" / "0"
    feat_dir.mkdir(parents=True, exist_ok=True)

    views = sequence_views(T, V, seed=seed, fov_deg=cfg.fov_deg, distance=cfg.distance)
    renderer = renderer_cls(mesh, device=device)
    front = []  # view 0 of every frame, uint8 (H, W, 4)
    frame0 = None
    for t in range(T):
        t0 = time.perf_counter()
        E, K = views.cameras(t, device=device)
        out = renderer.render(mesh.vertices[t], E, K, cfg.resolution, ssaa=cfg.ssaa)
        images = to_uint8(out.rgba)  # (V, H, W, 4)
        t1 = time.perf_counter()
        lo, hi = mesh.bounds(t)
        for v in range(V):
            stem = view_stem(t, v)
            _save_png(seq_dir / "imgs" / f"{stem}.png", images[v], cfg.png_compress_level)
            write_view_json(seq_dir / "meta_data" / f"{stem}.json",
                            view_metadata(views.c2w[t, v], views.fov, views.fov, (lo, hi)))
        timing["render"] += t1 - t0
        timing["io"] += time.perf_counter() - t1
        front.append(images[0])
        if t == 0:
            frame0 = images
    if not frame0[..., 3].any():
        raise ValueError(f"{name}: the object is invisible in every frame-0 view")

    t0 = time.perf_counter()
    static, deltas = point_deltas(mesh, cfg.num_points, seed)
    t1 = time.perf_counter()
    torch.save(torch.from_numpy(static), seq_dir / "objs" / "mesh_data" / "static_frame_vertices.pt")
    torch.save(torch.from_numpy(deltas), seq_dir / "objs" / "mesh_data" / "moving_frame_deltas.pt")
    timing["points"] += t1 - t0
    timing["io"] += time.perf_counter() - t1

    t0 = time.perf_counter()
    R = cfg.voxel_resolution
    indices = voxelize_surface(mesh.vertices[0], mesh.faces, R, device=device)
    if indices.shape[0] == 0:
        raise ValueError(f"{name}: frame 0 has no surface voxels inside [-0.5, 0.5]^3")
    t1 = time.perf_counter()
    images0 = torch.from_numpy(frame0).to(device).permute(0, 3, 1, 2).float() / 255.0  # (V, 4, H, W)
    fmap = extractor.patch_feature_map(images0)  # (V, C, h, w)
    E0, K0 = views.cameras(0, device=device)
    feats = voxel_features(voxel_centers(indices, R).to(device), fmap, E0, K0)  # (M, C)
    fronts = torch.from_numpy(np.stack(front)).to(device).permute(0, 3, 1, 2).float() / 255.0  # (T, 4, H, W)
    cond = extractor.conditioning_tokens(fronts)  # (T, L, C)
    t2 = time.perf_counter()
    np.savez_compressed(feat_dir / f"{extractor.name}.npz", indices=indices.cpu().numpy().astype(np.uint8),
                        patchtokens=feats.cpu().numpy().astype(np.float16))
    cond_path.parent.mkdir(parents=True, exist_ok=True)
    cond_np = cond.cpu().numpy().astype(np.float16)
    atomic_write(cond_path, lambda tmp: np.savez_compressed(tmp, features=cond_np), suffix=".tmp.npz")
    timing["voxels"] += t1 - t0
    timing["features"] += t2 - t1
    timing["io"] += time.perf_counter() - t2
    return {**{k: round(v, 3) for k, v in timing.items()}, "voxels_count": int(indices.shape[0]),
            "cond_tokens": list(cond.shape[1:]), "seed": seed}


# ------------------------------------------------------------------------------------- the run
_WORKER: dict = {}


def _init_worker(cfg_dict: dict, threads: int) -> None:
    """Per-process state: torch threads and the feature extractor (built once)."""
    from ..features import get_extractor

    if threads > 0:
        torch.set_num_threads(threads)
    cfg = PrepareConfig(**cfg_dict)
    extractor = get_extractor(cfg.extractor, device=cfg.device, **cfg.extractor_kwargs)
    _WORKER.update(cfg=cfg, extractor=extractor.to(cfg.device))


def _record(name, source, status, reason="", frames=0, views=0, seconds=0.0, **extra) -> dict:
    return {"name": name, "source": source.describe(), "status": status, "reason": reason, "frames": frames,
            "views": views, "seconds": round(seconds, 2), **extra}


def _done_path(out_root: Path, source: Source) -> Path:
    return out_root / DONE_DIR / f"{source.key}.json"


def _is_done(out_root: Path, source: Source) -> list[str] | None:
    """Names of a finished source (all still present), else None."""
    path = _done_path(out_root, source)
    if not path.is_file():
        return None
    try:
        names = json.loads(path.read_text())["names"]
    except (ValueError, KeyError):
        return None
    ok = all((out_root / n).is_dir() and (out_root / COND_DIR / f"{n}.npz").is_file() for n in names)
    return names if ok else None


def _process_source(source: Source, out_root: Path) -> list[dict]:
    """Load and prepare every sequence of one source; never raises (errors become records)."""
    cfg: PrepareConfig = _WORKER["cfg"]
    extractor = _WORKER["extractor"]
    start = time.perf_counter()
    try:
        sequences = load_source(source, cfg.num_frames)
    except Exception as err:  # a broken asset must not stop the run
        reason = f"{type(err).__name__}: {err}"
        logger.warning("%s failed to load: %s", source.describe(), reason)
        return [_record(source.key, source, "failed", reason, seconds=time.perf_counter() - start)]
    load_time = time.perf_counter() - start
    records, produced = [], []
    for name, mesh in sequences:
        t0 = time.perf_counter()
        if isinstance(mesh, Exception):
            status = "skipped" if isinstance(mesh, StaticSequenceError) else "failed"
            records.append(_record(name, source, status, f"{type(mesh).__name__}: {mesh}"))
            continue
        if (out_root / name).is_dir() and (out_root / COND_DIR / f"{name}.npz").is_file():
            records.append(_record(name, source, "skipped", "already prepared"))
            produced.append(name)
            continue
        disp = mean_displacement(mesh)
        if disp < MIN_DISPLACEMENT:
            reason = f"static: mean displacement {disp:.4f} < {MIN_DISPLACEMENT}"
            records.append(_record(name, source, "skipped", reason))
            continue
        for stale in out_root.glob(f".tmp-{name}-*"):  # left by an interrupted run
            shutil.rmtree(stale, ignore_errors=True)
        tmp = out_root / f".tmp-{name}-{os.getpid()}"
        try:
            info = prepare_sequence(mesh, tmp, out_root / COND_DIR / f"{name}.npz", cfg, extractor, name=name)
            info.update(name=name, source=source.describe(), frames=mesh.num_frames, views=cfg.num_views,
                        extractor=extractor.name, config=asdict(cfg), load=round(load_time, 3))
            (tmp / "info.json").write_text(json.dumps(info, indent=1))
            final = out_root / name
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
        except Exception as err:
            shutil.rmtree(tmp, ignore_errors=True)
            reason = f"{type(err).__name__}: {err}"
            logger.warning("%s (%s) failed: %s", name, source.describe(), reason)
            logger.debug("%s", traceback.format_exc())
            records.append(_record(name, source, "failed", reason, seconds=time.perf_counter() - t0))
            continue
        produced.append(name)
        timings = {k: info[k] for k in ("render", "io", "points", "voxels", "features")}
        records.append(_record(name, source, "ok", "", mesh.num_frames, cfg.num_views,
                               time.perf_counter() - t0 + load_time, timings=timings))
        load_time = 0.0
    if all(r["status"] != "failed" for r in records):
        path = _done_path(out_root, source)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"source": source.describe(), "names": produced}))
    return records


def _worker_task(args):
    source, out_root = args
    return _process_source(source, Path(out_root))


def run_prepare(sources: list[Source], out_root: str | Path, cfg: PrepareConfig, *, workers: int = 1,
                progress: bool = True) -> list[dict]:
    """Prepare all sources into `out_root` (resumable), appending one manifest line per sequence.

    Args:
        sources: from `discover_sources`.
        out_root: output directory (created).
        cfg: options.
        workers: parallel processes over sources (1 = in this process).
        progress: show a tqdm bar.
    Returns:
        the manifest records of this run.
    """
    from tqdm import tqdm

    cfg.validate()
    out_root = Path(out_root)
    out_root.mkdir(parents=True, exist_ok=True)
    manifest = out_root / MANIFEST_NAME
    records: list[dict] = []

    def emit(recs):
        with open(manifest, "a") as f:
            for r in recs:
                f.write(json.dumps(r) + "\n")
                logger.info("%s: %s%s", r["name"], r["status"], f" ({r['reason']})" if r["reason"] else "")
        records.extend(recs)

    todo = []
    for src in sources:
        names = _is_done(out_root, src)
        if names is not None:
            emit([_record(n, src, "skipped", "already prepared") for n in names]
                 or [_record(src.key, src, "skipped", "already processed (no sequence)")])
        else:
            todo.append(src)
    bar = tqdm(total=len(todo), desc="prepare", unit="source", disable=not progress)
    cpu = os.cpu_count() or 1
    if workers <= 1 or len(todo) <= 1:
        previous = torch.get_num_threads()
        _init_worker(asdict(cfg), 0)
        try:
            for src in todo:
                emit(_process_source(src, out_root))
                bar.update(1)
        finally:
            torch.set_num_threads(previous)
            _WORKER.clear()
    else:
        ctx = mp.get_context("spawn")  # safe with threads and CUDA
        threads = max(1, cpu // workers)
        with ctx.Pool(workers, initializer=_init_worker, initargs=(asdict(cfg), threads)) as pool:
            for recs in pool.imap_unordered(_worker_task, [(s, str(out_root)) for s in todo]):
                emit(recs)
                bar.update(1)
    bar.close()
    return records
