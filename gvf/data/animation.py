"""Kinematics and frame sampling shared by every animated-asset source.

* Rigid-body / skinning math (quaternions are glTF order x, y, z, w): `quat_to_matrix`, `quat_slerp`,
  `trs_matrix`, `world_matrices` (forward kinematics over a node hierarchy) and
  `skin_vertices` (linear-blend skinning). Used by the glTF loader and the procedural objects.
* Upstream's sequence preparation (spec §7.4, `data_rendering/blender_new.py`):

  - the object is normalised ONCE, on the pose at load time (here: the first sampled frame, which
    is the animation's start for both sampling passes), by 1/max bbox extent and bbox centring, so
    it sits in [-0.5, 0.5]^3; later frames may leave the cube a little, exactly as upstream's do;
  - an animation spanning fewer than `num_frames // 2` frames is static;
  - pass 1 takes consecutive frames `min(start + t, end)`; when the motion check
    (`mean_displacement` < 0.01, in normalised units) fails, pass 2 samples uniformly over
    [start, end]; when that fails too the sequence is static (`StaticSequenceError`).

  Continuous-time sources (glTF, seconds) are mapped to frames at `fps` (24, Blender's default
  scene rate): frame = time · fps. Upstream truncates keyframe positions and uniform-pass frames
  to integers because Blender frames are integers; with continuous time we keep the exact
  fractional frames (`discrete=False`). Discrete sources (a folder of per-frame meshes) use file
  indices as frames and truncate like upstream (`discrete=True`).
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np

from .mesh import AnimatedMesh, StaticSequenceError

logger = logging.getLogger(__name__)

__all__ = [
    "quat_to_matrix", "quat_slerp", "quat_from_axis_angle", "quat_multiply", "trs_matrix",
    "world_matrices", "skin_vertices", "mean_displacement", "frame_positions", "sample_animation",
    "sample_sequence", "load_animated_asset", "MIN_DISPLACEMENT",
]

MIN_DISPLACEMENT = 0.01  # upstream `check_movement` threshold (normalised units)


# ---------------------------------------------------------------------------------------- rotations
def quat_to_matrix(q: np.ndarray) -> np.ndarray:
    """Unit quaternions (..., 4) in (x, y, z, w) order -> rotation matrices (..., 3, 3).

    The input is normalised first (animation data are often slightly off unit length).
    """
    q = np.asarray(q, dtype=np.float64)
    q = q / np.maximum(np.linalg.norm(q, axis=-1, keepdims=True), 1e-12)
    x, y, z, w = np.moveaxis(q, -1, 0)
    m = np.stack([
        1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w),
        2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w),
        2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y),
    ], axis=-1)
    return m.reshape(q.shape[:-1] + (3, 3))


def quat_from_axis_angle(axis, angle) -> np.ndarray:
    """(x, y, z, w) quaternion(s) rotating by `angle` radians about `axis` (broadcasts)."""
    axis = np.asarray(axis, dtype=np.float64)
    axis = axis / np.maximum(np.linalg.norm(axis, axis=-1, keepdims=True), 1e-12)
    half = 0.5 * np.asarray(angle, dtype=np.float64)[..., None]
    return np.concatenate([axis * np.sin(half), np.cos(half)], axis=-1)


def quat_multiply(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Hamilton product a·b of (x, y, z, w) quaternions (rotation b first, then a)."""
    ax, ay, az, aw = np.moveaxis(np.asarray(a, dtype=np.float64), -1, 0)
    bx, by, bz, bw = np.moveaxis(np.asarray(b, dtype=np.float64), -1, 0)
    return np.stack([
        aw * bx + ax * bw + ay * bz - az * by,
        aw * by - ax * bz + ay * bw + az * bx,
        aw * bz + ax * by - ay * bx + az * bw,
        aw * bw - ax * bx - ay * by - az * bz,
    ], axis=-1)


def quat_slerp(q0: np.ndarray, q1: np.ndarray, s: np.ndarray) -> np.ndarray:
    """Spherical interpolation along the shortest arc; q0, q1 (N, 4) xyzw, s (N,) -> (N, 4) unit."""
    q0 = np.asarray(q0, dtype=np.float64)
    q1 = np.asarray(q1, dtype=np.float64)
    q0 = q0 / np.maximum(np.linalg.norm(q0, axis=-1, keepdims=True), 1e-12)
    q1 = q1 / np.maximum(np.linalg.norm(q1, axis=-1, keepdims=True), 1e-12)
    s = np.asarray(s, dtype=np.float64)[..., None]
    dot = np.sum(q0 * q1, axis=-1, keepdims=True)
    q1 = np.where(dot < 0, -q1, q1)  # q and -q are the same rotation: take the short way
    dot = np.abs(dot)
    theta = np.arccos(np.clip(dot, -1.0, 1.0))
    sin_t = np.sin(theta)
    near = sin_t < 1e-6  # nearly identical: plain lerp is exact enough and avoids 0/0
    safe = np.where(near, 1.0, sin_t)
    w0 = np.where(near, 1 - s, np.sin((1 - s) * theta) / safe)
    w1 = np.where(near, s, np.sin(s * theta) / safe)
    out = w0 * q0 + w1 * q1
    return out / np.maximum(np.linalg.norm(out, axis=-1, keepdims=True), 1e-12)


def trs_matrix(translation: np.ndarray, rotation: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Local transforms M = T·R·S; translation (..., 3), rotation (..., 4) xyzw, scale (..., 3) -> (..., 4, 4)."""
    t = np.asarray(translation, dtype=np.float64)
    r = quat_to_matrix(rotation)
    s = np.asarray(scale, dtype=np.float64)
    shape = np.broadcast_shapes(t.shape[:-1], r.shape[:-2], s.shape[:-1])
    m = np.zeros(shape + (4, 4))
    m[..., :3, :3] = r * s[..., None, :]  # scale columns = R @ diag(s)
    m[..., :3, 3] = t
    m[..., 3, 3] = 1.0
    return m


def world_matrices(local: np.ndarray, parents: np.ndarray) -> np.ndarray:
    """Forward kinematics: world[n] = world[parent[n]] @ local[n].

    Args:
        local: (T, N, 4, 4) local transforms per frame.
        parents: (N,) parent index, -1 for roots; any order (no cycles).
    Returns:
        (T, N, 4, 4) world transforms.
    """
    local = np.asarray(local, dtype=np.float64)
    parents = np.asarray(parents, dtype=np.int64)
    N = parents.shape[0]
    world = np.empty_like(local)
    done = np.zeros(N, dtype=bool)
    for n in range(N):
        chain = []
        m = n
        while m >= 0 and not done[m]:
            chain.append(m)
            m = parents[m]
            if len(chain) > N:
                raise ValueError("node hierarchy contains a cycle")
        for m in reversed(chain):
            p = parents[m]
            world[:, m] = local[:, m] if p < 0 else world[:, p] @ local[:, m]
            done[m] = True
    return world


def skin_vertices(points: np.ndarray, joints: np.ndarray, weights: np.ndarray,
                  joint_matrices: np.ndarray) -> np.ndarray:
    """Linear-blend skinning: v_t = Σ_k w_k · (J_t[j_k] @ [p, 1]).

    Args:
        points: (V, 3) rest positions or (T, V, 3) per-frame (e.g. morphed) rest positions.
        joints: (V, K) int joint indices into `joint_matrices`.
        weights: (V, K) weights (used as given; normalise beforehand).
        joint_matrices: (T, J, 4, 4) skinning matrices (joint world @ inverse bind matrix).
    Returns:
        (T, V, 3) float64 skinned positions.
    """
    J = np.asarray(joint_matrices, dtype=np.float64)[..., :3, :]  # (T, J, 3, 4): the last row is 0 0 0 1
    T = J.shape[0]
    p = np.asarray(points, dtype=np.float64)
    joints = np.asarray(joints, dtype=np.int64)
    weights = np.asarray(weights, dtype=np.float64)
    V = joints.shape[0]
    out = np.empty((T, V, 3), dtype=np.float64)
    chunk = 32768  # bounds the (chunk, K, 3, 4) gather for large meshes
    for t in range(T):
        pt = p[t] if p.ndim == 3 else p
        for a in range(0, V, chunk):
            sl = slice(a, a + chunk)
            blend = np.einsum("vk,vkij->vij", weights[sl], J[t][joints[sl]])  # per-vertex skin matrix
            out[t, sl] = np.einsum("vij,vj->vi", blend[..., :3], pt[sl]) + blend[..., 3]
    return out


# ---------------------------------------------------------------------------------------- sampling
def mean_displacement(seq: AnimatedMesh | np.ndarray) -> float:
    """Upstream's motion measure: mean over frames 1..T-1 of the mean vertex distance to frame 0.

    Args:
        seq: an AnimatedMesh or a (T, V, 3) array. Units are those of the input (upstream applies
            it to normalised meshes, threshold `MIN_DISPLACEMENT` = 0.01).
    """
    v = seq.vertices if isinstance(seq, AnimatedMesh) else np.asarray(seq)
    if v.ndim != 3 or v.shape[0] < 2 or v.shape[1] == 0:
        return 0.0
    v = v.astype(np.float64)
    return float(np.linalg.norm(v[1:] - v[:1], axis=-1).mean())


def frame_positions(start: float, end: float, num_frames: int, mode: str, discrete: bool = False) -> np.ndarray:
    """Frame numbers sampled by upstream: mode "consecutive" (min(start + t, end)) or "uniform".

    Uniform frames are `start + t/(T-1)·(end-start)`, truncated to integers when `discrete`.
    """
    t = np.arange(num_frames, dtype=np.float64)
    if mode == "consecutive":
        return np.minimum(start + t, end)
    if mode == "uniform":
        f = start + t / max(num_frames - 1, 1) * (end - start)
        if discrete:
            f = np.floor(f + 1e-9)
        return np.minimum(f, end)
    raise ValueError(f"frame sampling mode must be 'consecutive' or 'uniform', got {mode!r}")


def sample_animation(
    evaluate: Callable[[np.ndarray], np.ndarray],
    build: Callable[[np.ndarray, np.ndarray], AnimatedMesh],
    start: float,
    end: float,
    *,
    num_frames: int = 24,
    min_displacement: float = MIN_DISPLACEMENT,
    normalize: bool = True,
    discrete: bool = False,
    keep_static: bool = False,
    name: str = "",
) -> AnimatedMesh:
    """Sample `num_frames` frames of an animation as upstream does (module docstring).

    Args:
        evaluate: frames (T,) float -> vertex positions (T, V, 3) in the source's frame units.
        build: (vertices (T, V, 3), frames (T,)) -> AnimatedMesh with the static parts filled in.
        start, end: animation range in frames.
        num_frames: T.
        min_displacement: motion threshold in normalised units (upstream 0.01).
        normalize: return the mesh normalised into [-0.5, 0.5]^3 (on its first frame). The motion
            check always uses normalised units.
        discrete: truncate uniform-pass frames to integers (integer-frame sources).
        keep_static: return the uniformly sampled sequence instead of raising when it is static.
        name: used in messages.
    Raises:
        StaticSequenceError: too short, or still below `min_displacement` after uniform sampling
            (unless `keep_static`).
    """
    if num_frames < 2:
        raise ValueError(f"num_frames must be >= 2, got {num_frames}")
    if not (np.isfinite(start) and np.isfinite(end)) or end < start:
        raise StaticSequenceError(f"{name or 'animation'}: has no animation range")
    modes = ("consecutive", "uniform")
    too_short = end - start < num_frames // 2
    reason = ""
    if too_short:
        reason = (f"spans {end - start:.2f} frames, fewer than num_frames//2 = {num_frames // 2} "
                  f"(upstream treats it as static)")
        modes = ("uniform",) if keep_static else ()
    mesh = None
    for mode in modes:
        frames = frame_positions(start, end, num_frames, mode, discrete)
        mesh = build(evaluate(frames), frames)
        scale, _ = mesh.normalization(0)
        disp = mean_displacement(mesh) * scale
        if disp >= min_displacement and not too_short:
            logger.debug("%s: %s sampling, mean displacement %.4f", name, mode, disp)
            return mesh.normalized(0) if normalize else mesh
        logger.debug("%s: %s sampling moves only %.4f", name, mode, disp)
        if not too_short:
            reason = (f"mean displacement {disp:.4f} < {min_displacement} even with uniform "
                      f"sampling over frames [{start:g}, {end:g}] (static)")
    if keep_static and mesh is not None:
        return mesh.normalized(0) if normalize else mesh
    raise StaticSequenceError(f"{name or 'animation'}: {reason}")


def sample_sequence(mesh: AnimatedMesh, num_frames: int = 24, *, min_displacement: float = MIN_DISPLACEMENT,
                    normalize: bool = True, keep_static: bool = False) -> AnimatedMesh:
    """Upstream frame sampling of an already discrete sequence (frame i = mesh.vertices[i]).

    Frames are the sequence's indices; the returned `times` are the chosen frames' own `times`.
    """
    src = mesh

    def evaluate(frames):
        return src.vertices[np.asarray(frames, dtype=np.int64)]

    def build(vertices, frames):
        return src.replace(vertices=vertices, times=src.times[np.asarray(frames, dtype=np.int64)])

    return sample_animation(evaluate, build, 0.0, float(mesh.num_frames - 1), num_frames=num_frames,
                            min_displacement=min_displacement, normalize=normalize, discrete=True,
                            keep_static=keep_static, name=mesh.name)


def load_animated_asset(path: str | Path, num_frames: int = 24, *, on_static: str = "skip",
                        **kwargs) -> list[AnimatedMesh]:
    """Load any supported animated asset into normalised, upstream-sampled sequences.

    `.glb`/`.gltf` -> one sequence per animation (`load_gltf`); a folder of per-frame `.obj`/`.ply`
    meshes -> one sequence (`load_mesh_sequence` + `sample_sequence`). Static sequences are
    skipped with a warning (`on_static="skip"`), raised (`"raise"`) or kept (`"keep"`).
    """
    from .gltf import load_gltf
    from .mesh_sequence import load_mesh_sequence

    if on_static not in ("skip", "raise", "keep"):
        raise ValueError(f"on_static must be 'skip', 'raise' or 'keep', got {on_static!r}")
    path = Path(path)
    if path.is_dir():
        seq = load_mesh_sequence(path)
        try:
            return [sample_sequence(seq, num_frames, keep_static=on_static == "keep", **kwargs)]
        except StaticSequenceError as err:
            if on_static == "raise":
                raise
            logger.warning("skipping %s", err)
            return []
    return load_gltf(path, num_frames=num_frames, on_static=on_static, **kwargs)
