"""3D Gaussian Splatting PLY files (binary little-endian), readable by common splat viewers.

Vertex properties, all float32, in the viewer (INRIA 3DGS) convention:
``x y z nx ny nz f_dc_0..2 opacity scale_0..2 rot_0..3`` with ``opacity = logit(activated opacity)``,
``scale = log(activated scale)`` and ``rot`` = the activated unit quaternion (w, x, y, z).

Those values lose the exact raw parametrisation (the 3D-filter floor is folded into the scales), so the
raw fields are stored as well: ``gvf_opacity_raw``, ``gvf_scaling_raw_0..2``, ``gvf_rotation_raw_0..3``.
Files with them load back bitwise; a plain 3DGS file is converted from the viewer convention.
Positions are written in our Z-up world frame, unchanged.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import torch

from gvf.utils.io import atomic_write

from .model import OPACITY_LOGIT_BIAS, SCALE_FLOOR, SCALING_RAW_BIAS, Gaussians

__all__ = ["save_ply", "load_ply"]

logger = logging.getLogger(__name__)

_VIEWER_FIELDS = (
    ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2", "opacity"]
    + [f"scale_{i}" for i in range(3)]
    + [f"rot_{i}" for i in range(4)]
)
_RAW_FIELDS = ["gvf_opacity_raw"] + [f"gvf_scaling_raw_{i}" for i in range(3)] + [f"gvf_rotation_raw_{i}" for i in range(4)]
_REQUIRED = [f for f in _VIEWER_FIELDS if f not in ("nx", "ny", "nz")]

_PLY_TYPES = {
    "char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1",
    "short": "i2", "int16": "i2", "ushort": "u2", "uint16": "u2",
    "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4",
    "float": "f4", "float32": "f4", "double": "f8", "float64": "f8",
}  # fmt: skip


def save_ply(gaussians: Gaussians, path: str | os.PathLike) -> None:
    """Write ``gaussians`` as a binary little-endian 3DGS PLY (float32), atomically.

    float64 Gaussians are rounded to float32; float32 Gaussians round-trip exactly through
    :func:`load_ply`.
    """
    path = Path(path)
    g = gaussians.detach().to("cpu")
    f32 = lambda t: t.to(torch.float32).numpy()  # noqa: E731
    columns = {
        "xyz": f32(g.xyz),
        "normals": np.zeros((len(g), 3), dtype=np.float32),
        "f_dc": f32(g.features_dc),
        # logit(sigmoid(raw + b)) = raw + b: written directly, no saturation for confident opacities
        "opacity": f32(g.opacity_raw.double() + OPACITY_LOGIT_BIAS),
        "scale": f32(torch.log(g.scaling.double())),
        "rot": f32(g.rotation),
        "raw": np.concatenate([f32(g.opacity_raw), f32(g.scaling_raw), f32(g.rotation_raw)], axis=1),
    }
    data = np.concatenate(list(columns.values()), axis=1)
    names = _VIEWER_FIELDS + _RAW_FIELDS
    assert data.shape[1] == len(names)
    record = np.empty(len(g), dtype=[(n, "<f4") for n in names])
    for i, n in enumerate(names):
        record[n] = data[:, i]
    header = "ply\nformat binary_little_endian 1.0\ncomment written by gvf\n"
    header += f"element vertex {len(g)}\n"
    header += "".join(f"property float {n}\n" for n in names)
    header += "end_header\n"

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: tmp.write_bytes(header.encode("ascii") + record.tobytes()))


def _parse_header(f, path: Path):
    first = f.readline()
    if first.strip() != b"ply":
        raise ValueError(f"{path} is not a PLY file (it does not start with 'ply')")
    fmt = None
    elements = []  # [name, count, [(prop_name, dtype or ("list", count_type, item_type))]]
    while True:
        line = f.readline()
        if not line:
            raise ValueError(f"{path}: PLY header has no end_header line")
        words = line.decode("ascii", errors="replace").split()
        if not words or words[0] in ("comment", "obj_info"):
            continue
        if words[0] == "end_header":
            break
        try:
            if words[0] == "format":
                fmt = words[1]
            elif words[0] == "element":
                elements.append([words[1], int(words[2]), []])
            elif words[0] == "property":
                if not elements:
                    raise ValueError("property before any element")
                if words[1] == "list":
                    elements[-1][2].append((words[4], ("list", _PLY_TYPES[words[2]], _PLY_TYPES[words[3]])))
                else:
                    elements[-1][2].append((words[2], _PLY_TYPES[words[1]]))
        except (IndexError, KeyError, ValueError) as exc:
            raise ValueError(f"{path}: malformed PLY header line {line.decode(errors='replace').strip()!r}") from exc
    if fmt not in ("binary_little_endian", "binary_big_endian", "ascii"):
        raise ValueError(f"{path}: unsupported PLY format {fmt!r}")
    return fmt, elements


def _read_vertices(path: Path) -> np.ndarray:
    """The vertex element of a PLY as a structured array (fields converted to float64 later)."""
    with open(path, "rb") as f:
        fmt, elements = _parse_header(f, path)
        names = [e[0] for e in elements]
        if "vertex" not in names:
            raise ValueError(f"{path} has no 'vertex' element, so it holds no 3D Gaussians")
        props = dict(elements[names.index("vertex")][2])
        missing = [p for p in _REQUIRED if p not in props]
        if missing:
            raise ValueError(
                f"{path} is not a 3D Gaussian PLY: its vertices lack {', '.join(missing)} (a mesh or point cloud?)"
            )
        endian = ">" if fmt == "binary_big_endian" else "<"
        if fmt == "ascii":
            lines_before = 0
            for name, count, plist in elements:
                if name == "vertex":
                    break
                lines_before += count
            for _ in range(lines_before):
                f.readline()
            vertex = elements[names.index("vertex")]
            if any(isinstance(t, tuple) for _, t in vertex[2]):
                raise ValueError(f"{path}: list properties in the vertex element are not supported")
            dtype = np.dtype([(n, t) for n, t in vertex[2]])
            rows = [f.readline().split() for _ in range(vertex[1])]
            try:
                values = np.array(rows, dtype=np.float64).reshape(vertex[1], len(vertex[2]))
            except ValueError as exc:
                raise ValueError(f"{path}: truncated or malformed ASCII vertex data") from exc
            out = np.empty(vertex[1], dtype=dtype)
            for i, (n, _) in enumerate(vertex[2]):
                out[n] = values[:, i]
            return out
        offset = f.tell()
        for name, count, plist in elements:
            if any(isinstance(t, tuple) for _, t in plist):
                raise ValueError(f"{path}: element {name!r} with list properties precedes 'vertex' (unsupported layout)")
            dtype = np.dtype([(n, endian + t) for n, t in plist])
            if name == "vertex":
                f.seek(offset)
                buf = f.read(dtype.itemsize * count)
                if len(buf) != dtype.itemsize * count:
                    raise ValueError(f"{path}: file is truncated ({len(buf)} of {dtype.itemsize * count} vertex bytes)")
                return np.frombuffer(buf, dtype=dtype, count=count)
            offset += dtype.itemsize * count
    raise AssertionError("unreachable")


def load_ply(path: str | os.PathLike) -> Gaussians:
    """Read a 3DGS PLY into float32 :class:`Gaussians` (CPU).

    Files written by :func:`save_ply` load bitwise from their raw fields. Other 3DGS files are converted
    from the viewer convention; scales at or below the 3D-filter floor (9e-4) cannot be represented and
    are raised just above it (with a warning). Higher-order SH coefficients (``f_rest_*``) are dropped.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"PLY file not found: {path}")
    v = _read_vertices(path)
    names = v.dtype.names
    col = lambda *ns: np.stack([np.asarray(v[n], dtype=np.float64) for n in ns], axis=1)  # noqa: E731
    t32 = lambda a: torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))  # noqa: E731
    if any(n.startswith("f_rest_") for n in names):
        logger.warning("%s: higher-order SH coefficients (f_rest_*) are ignored; only the DC colour is kept", path)
    xyz = t32(col("x", "y", "z"))
    f_dc = t32(col("f_dc_0", "f_dc_1", "f_dc_2"))
    if all(n in names for n in _RAW_FIELDS):
        raw = {n: np.asarray(v[n], dtype=np.float32) for n in _RAW_FIELDS}
        return Gaussians(
            xyz=xyz,
            features_dc=f_dc,
            opacity_raw=t32(raw["gvf_opacity_raw"][:, None]),
            scaling_raw=t32(np.stack([raw[f"gvf_scaling_raw_{i}"] for i in range(3)], 1)),
            rotation_raw=t32(np.stack([raw[f"gvf_rotation_raw_{i}"] for i in range(4)], 1)),
        )
    if any(n in names for n in _RAW_FIELDS):
        logger.warning("%s: incomplete gvf_* raw fields; converting from the viewer convention instead", path)

    opacity_raw = col("opacity") - OPACITY_LOGIT_BIAS
    scale = np.exp(col("scale_0", "scale_1", "scale_2"))
    excess = scale * scale - SCALE_FLOOR**2  # softplus output squared
    tiny = (SCALE_FLOOR * 1e-3) ** 2
    n_low = int((excess < tiny).sum())
    if n_low:
        logger.warning(
            "%s: %d scale value(s) at or below the 3D-filter floor %g were raised just above it", path, n_low, SCALE_FLOOR
        )
        excess = np.maximum(excess, tiny)
    s = np.sqrt(excess)
    scaling_raw = s + np.log(-np.expm1(-s)) - SCALING_RAW_BIAS
    rotation_raw = col("rot_0", "rot_1", "rot_2", "rot_3") - np.array([1.0, 0.0, 0.0, 0.0])
    return Gaussians(xyz, f_dc, t32(opacity_raw), t32(scaling_raw), t32(rotation_raw))
