"""Animated meshes stored as a folder of per-frame OBJ or PLY files with constant topology.

Small own readers (no trimesh): OBJ `v` (optionally with `r g b`), `vt`, `f` (polygons fan-
triangulated, negative indices), `mtllib`/`usemtl` with `Kd` and `map_Kd`; PLY ascii and binary
(little/big endian) with `x y z`, optional `red green blue`, and face lists of any polygon size.
Frames are ordered naturally by file name (`frame2` before `frame10`). Writers for the same
formats (`save_obj`, `save_ply`) produce upstream's `objs/frame{t}.obj` layout.

Positions are returned as stored (no axis change, no normalisation); use
`gvf.data.animation.sample_sequence` for upstream frame sampling and normalisation.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .mesh import AnimatedMesh, AssetError

logger = logging.getLogger(__name__)

__all__ = ["load_mesh_sequence", "read_obj", "read_ply", "save_obj", "save_ply", "natural_key", "MeshFrame"]

MESH_SUFFIXES = (".obj", ".ply")


@dataclass
class MeshFrame:
    """One static triangle mesh as read from a file (per-vertex attributes after uv splitting)."""

    vertices: np.ndarray                # (V, 3) float32
    faces: np.ndarray                   # (F, 3) int64
    colors: np.ndarray | None = None    # (V, 3) float32 in [0, 1]
    uvs: np.ndarray | None = None       # (V, 2) float32, glTF convention (origin top-left)
    textures: list | None = None        # list of (H, W, 3|4) uint8
    face_texture: np.ndarray | None = None  # (F,) int64, -1 = untextured


def natural_key(name: str):
    """Sort key treating digit runs as numbers: frame2 < frame10."""
    return [int(p) if p.isdigit() else p.lower() for p in re.split(r"(\d+)", str(name))]


# ============================================================================================ OBJ
def _fan(poly: list[int]) -> list[tuple[int, int, int]]:
    return [(poly[0], poly[i], poly[i + 1]) for i in range(1, len(poly) - 1)]


def _read_mtl(path: Path) -> dict[str, dict]:
    mats, cur = {}, None
    for line in path.read_text(errors="replace").splitlines():
        parts = line.strip().split()
        if not parts:
            continue
        if parts[0] == "newmtl":
            cur = mats.setdefault(" ".join(parts[1:]), {})
        elif cur is not None and parts[0] == "Kd" and len(parts) >= 4:
            cur["Kd"] = np.array([float(x) for x in parts[1:4]], dtype=np.float32)
        elif cur is not None and parts[0] == "map_Kd" and len(parts) >= 2:
            cur["map_Kd"] = parts[-1]  # options (-s, -o, ...) come before the file name
    return mats


def read_obj(path: str | Path) -> MeshFrame:
    """Read a Wavefront OBJ as a triangle mesh.

    Vertices referenced with different `vt` indices are split so uvs are per vertex; uvs are
    converted to the glTF convention (v flipped). Materials (`Kd`, `map_Kd`) are read from `mtllib`.
    """
    path = Path(path)
    text = _read_text(path)
    pos, cols, vts, corners, face_mat = [], [], [], [], []
    mtllibs, mat_names, cur_mat = [], [], -1
    for ln, line in enumerate(text.splitlines(), 1):
        parts = line.split()
        if not parts or parts[0].startswith("#"):
            continue
        key = parts[0]
        try:
            if key == "v":
                pos.append([float(x) for x in parts[1:4]])
                if len(parts) >= 7:
                    cols.append([float(x) for x in parts[4:7]])
            elif key == "vt":
                vts.append([float(x) for x in parts[1:3]] if len(parts) >= 3 else [float(parts[1]), 0.0])
            elif key == "f":
                poly = []
                for tok in parts[1:]:
                    fields = tok.split("/")
                    vi = int(fields[0])
                    ti = int(fields[1]) if len(fields) > 1 and fields[1] else 0
                    vi = vi - 1 if vi > 0 else len(pos) + vi
                    ti = ti - 1 if ti > 0 else (len(vts) + ti if ti < 0 else -1)
                    poly.append((vi, ti))
                if len(poly) < 3:
                    continue
                for tri in _fan(poly):
                    corners.extend(tri)
                    face_mat.append(cur_mat)
            elif key == "mtllib":
                mtllibs.append(" ".join(parts[1:]))
            elif key == "usemtl":
                name = " ".join(parts[1:])
                if name not in mat_names:
                    mat_names.append(name)
                cur_mat = mat_names.index(name)
        except (ValueError, IndexError):
            raise AssetError(f"{path}: line {ln} is not valid OBJ: {line.strip()[:80]!r}") from None
    if not pos:
        raise AssetError(f"{path}: contains no vertices")
    if not corners:
        raise AssetError(f"{path}: contains no faces")
    V = len(pos)
    corner = np.asarray(corners, dtype=np.int64).reshape(-1, 2)
    if corner[:, 0].min() < 0 or corner[:, 0].max() >= V:
        raise AssetError(f"{path}: a face refers to a vertex outside 1..{V}")
    if vts and (corner[:, 1].max() >= len(vts) or corner[:, 1].min() < -1):
        raise AssetError(f"{path}: a face refers to a texture coordinate outside 1..{len(vts)}")
    vertices = np.asarray(pos, dtype=np.float32)
    colors = np.asarray(cols, dtype=np.float32) if len(cols) == V else None
    face_mat = np.asarray(face_mat, dtype=np.int64)

    mats = {}
    for lib in mtllibs:
        if (path.parent / lib).is_file():
            mats.update(_read_mtl(path.parent / lib))
        else:
            logger.warning("%s: material library %s not found", path.name, lib)

    uvs = None
    if vts and (corner[:, 1] >= 0).any():
        # one output vertex per distinct (position, uv) pair
        pairs, inverse = np.unique(corner, axis=0, return_inverse=True)
        faces = inverse.reshape(-1, 3).astype(np.int64)
        src = pairs[:, 0]
        vt = np.asarray(vts, dtype=np.float32)
        uvs = np.where(pairs[:, 1:2] >= 0, vt[np.maximum(pairs[:, 1], 0)], 0.0).astype(np.float32)
        uvs[:, 1] = 1.0 - uvs[:, 1]  # OBJ v points up, glTF v points down
        vertices = vertices[src]
        colors = colors[src] if colors is not None else None
    else:
        faces = corner[:, 0].reshape(-1, 3)
        src = np.arange(V)

    # material colour (Kd) and textures (map_Kd)
    textures, face_texture = [], np.full(faces.shape[0], -1, dtype=np.int64)
    kd = np.ones((faces.shape[0], 3), dtype=np.float32)
    tex_slot = {}
    for m, name in enumerate(mat_names):
        info = mats.get(name, {})
        sel = face_mat == m
        if "Kd" in info:
            kd[sel] = info["Kd"]
        if "map_Kd" in info and uvs is not None:
            img = _read_image(path.parent / info["map_Kd"])
            if img is not None:
                if info["map_Kd"] not in tex_slot:
                    tex_slot[info["map_Kd"]] = len(textures)
                    textures.append(img)
                face_texture[sel] = tex_slot[info["map_Kd"]]
    if mat_names and (kd != 1).any():
        # Kd is per face, colours per vertex: give each vertex the Kd of (one of) its faces
        vkd = np.ones((vertices.shape[0], 3), dtype=np.float32)
        vkd[faces.reshape(-1)] = np.repeat(kd, 3, axis=0)
        colors = vkd if colors is None else colors * vkd
    return MeshFrame(vertices, faces, colors, uvs if textures else None, textures,
                     face_texture if textures else None)


def _read_image(path: Path) -> np.ndarray | None:
    from PIL import Image

    try:
        with Image.open(path) as pil:
            has_alpha = pil.mode in ("RGBA", "LA", "PA") or "transparency" in pil.info
            return np.asarray(pil.convert("RGBA" if has_alpha else "RGB"), dtype=np.uint8).copy()
    except Exception as err:  # noqa: BLE001 - a missing texture falls back to the material colour
        logger.warning("texture %s cannot be read (%s)", path, err)
        return None


def _read_text(path: Path) -> str:
    if not path.is_file():
        raise AssetError(f"{path}: file not found")
    data = path.read_bytes()
    if not data.strip():
        raise AssetError(f"{path}: file is empty")
    return data.decode("utf-8", errors="replace")


def save_obj(path: str | Path, vertices: np.ndarray, faces: np.ndarray, colors: np.ndarray | None = None) -> None:
    """Write a triangle mesh as OBJ (`v x y z [r g b]`, 1-based `f`)."""
    vertices = np.asarray(vertices, dtype=np.float64)
    lines = []
    if colors is not None:
        for p, c in zip(vertices, np.asarray(colors, dtype=np.float64)):
            lines.append(f"v {p[0]:.7g} {p[1]:.7g} {p[2]:.7g} {c[0]:.6g} {c[1]:.6g} {c[2]:.6g}")
    else:
        lines.extend(f"v {p[0]:.7g} {p[1]:.7g} {p[2]:.7g}" for p in vertices)
    lines.extend(f"f {a + 1} {b + 1} {c + 1}" for a, b, c in np.asarray(faces, dtype=np.int64))
    Path(path).write_text("\n".join(lines) + "\n")


# ============================================================================================ PLY
_PLY_TYPES = {
    "char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1", "short": "i2", "int16": "i2",
    "ushort": "u2", "uint16": "u2", "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4",
    "float": "f4", "float32": "f4", "double": "f8", "float64": "f8",
}


def _ply_header(path: Path, data: bytes):
    if not data.startswith(b"ply"):
        raise AssetError(f"{path}: not a PLY file (no 'ply' magic)")
    end = data.find(b"end_header")
    if end < 0:
        raise AssetError(f"{path}: PLY header has no end_header")
    body_start = data.index(b"\n", end) + 1
    fmt, elements = None, []
    for line in data[:end].decode("ascii", errors="replace").splitlines()[1:]:
        parts = line.split()
        if not parts or parts[0] in ("comment", "obj_info"):
            continue
        if parts[0] == "format":
            fmt = parts[1]
        elif parts[0] == "element":
            elements.append({"name": parts[1], "count": int(parts[2]), "props": []})
        elif parts[0] == "property":
            if not elements:
                raise AssetError(f"{path}: PLY property before any element")
            try:
                if parts[1] == "list":
                    elements[-1]["props"].append((parts[4], _PLY_TYPES[parts[2]], _PLY_TYPES[parts[3]]))
                else:
                    elements[-1]["props"].append((parts[2], _PLY_TYPES[parts[1]], None))
            except (KeyError, IndexError):
                raise AssetError(f"{path}: unsupported PLY property line {line!r}") from None
    if fmt not in ("ascii", "binary_little_endian", "binary_big_endian"):
        raise AssetError(f"{path}: unsupported PLY format {fmt!r}")
    return fmt, elements, body_start


def read_ply(path: str | Path) -> MeshFrame:
    """Read a PLY triangle/polygon mesh (ascii or binary): x y z, optional red green blue, face lists."""
    path = Path(path)
    if not path.is_file():
        raise AssetError(f"{path}: file not found")
    data = path.read_bytes()
    if not data.strip():
        raise AssetError(f"{path}: file is empty")
    fmt, elements, offset = _ply_header(path, data)
    values = {}
    try:
        if fmt == "ascii":
            tokens = data[offset:].split()
            pos = 0
            for el in elements:
                rows, pos = _ply_ascii_element(el, tokens, pos)
                values[el["name"]] = rows
        else:
            endian = "<" if fmt == "binary_little_endian" else ">"
            for el in elements:
                rows, offset = _ply_binary_element(el, data, offset, endian)
                values[el["name"]] = rows
    except (ValueError, IndexError) as err:
        raise AssetError(f"{path}: PLY body is truncated or corrupt ({err})") from None
    vert = values.get("vertex")
    if vert is None or not all(k in vert for k in "xyz") or len(vert["x"]) == 0:
        raise AssetError(f"{path}: PLY has no vertex x/y/z data")
    vertices = np.stack([vert["x"], vert["y"], vert["z"]], axis=1).astype(np.float32)
    colors = None
    if all(k in vert for k in ("red", "green", "blue")):
        c = np.stack([vert["red"], vert["green"], vert["blue"]], axis=1)
        colors = (c.astype(np.float32) / 255.0) if np.issubdtype(c.dtype, np.integer) else c.astype(np.float32)
    face = values.get("face", {})
    polys = face.get("vertex_indices", face.get("vertex_index"))
    if polys is None or len(polys) == 0:
        raise AssetError(f"{path}: PLY has no faces")
    if isinstance(polys, np.ndarray):  # all faces have the same size
        k = polys.shape[1]
        i = np.arange(1, k - 1)
        faces = np.stack([np.repeat(polys[:, :1], k - 2, 1), polys[:, i], polys[:, i + 1]], -1).reshape(-1, 3)
    else:
        faces = np.asarray([t for p in polys for t in _fan(list(p))], dtype=np.int64).reshape(-1, 3)
    faces = faces.astype(np.int64)
    if faces.size == 0 or faces.min() < 0 or faces.max() >= len(vertices):
        raise AssetError(f"{path}: PLY faces refer to vertices outside [0, {len(vertices)})")
    return MeshFrame(vertices, faces, colors)


def _ply_ascii_element(el, tokens, pos):
    props, n = el["props"], el["count"]
    if all(p[2] is None for p in props):
        k = len(props)
        block = np.asarray(tokens[pos: pos + n * k], dtype=np.float64).reshape(n, k)
        if block.shape[0] != n:
            raise ValueError(f"element {el['name']} needs {n} rows")
        return {p[0]: block[:, j].astype(p[1]) for j, p in enumerate(props)}, pos + n * k
    out = {p[0]: [] for p in props}
    for _ in range(n):
        for name, t, lt in props:
            if lt is None:
                out[name].append(float(tokens[pos]))
                pos += 1
            else:
                cnt = int(tokens[pos])
                out[name].append([int(float(x)) for x in tokens[pos + 1: pos + 1 + cnt]])
                if len(out[name][-1]) != cnt:
                    raise ValueError(f"element {el['name']} list is truncated")
                pos += 1 + cnt
    return {k: _pack_lists(v) for k, v in out.items()}, pos


def _pack_lists(rows):
    if rows and isinstance(rows[0], list):
        if len({len(r) for r in rows}) == 1:
            return np.asarray(rows, dtype=np.int64)
        return rows
    return np.asarray(rows)


def _ply_binary_element(el, data, offset, endian):
    props, n = el["props"], el["count"]
    if all(p[2] is None for p in props):
        dt = np.dtype([(p[0], endian + p[1]) for p in props])
        arr = np.frombuffer(data, dtype=dt, count=n, offset=offset)
        return {p[0]: arr[p[0]].copy() for p in props}, offset + n * dt.itemsize
    # fast path: every list has the same length as the first record's (typical all-triangle meshes)
    try:
        fields, probe = [], offset
        for name, t, lt in props:
            if lt is None:
                fields.append((name, endian + t))
                probe += np.dtype(t).itemsize
            else:
                cnt = int(np.frombuffer(data, dtype=endian + t, count=1, offset=probe)[0])
                fields.append((name + "__n", endian + t))
                fields.append((name, endian + lt, (cnt,)))
                probe += np.dtype(t).itemsize + cnt * np.dtype(lt).itemsize
        dt = np.dtype(fields)
        arr = np.frombuffer(data, dtype=dt, count=n, offset=offset)
        if all((arr[f[0] + "__n"] == arr[f[0]].shape[1]).all() for f in fields if len(f) == 3):
            out = {}
            for f in fields:
                if f[0].endswith("__n"):
                    continue
                out[f[0]] = arr[f[0]].astype(np.int64) if len(f) == 3 else arr[f[0]].copy()
            return out, offset + n * dt.itemsize
    except ValueError:
        pass
    out = {p[0]: [] for p in props}
    for _ in range(n):
        for name, t, lt in props:
            if lt is None:
                out[name].append(np.frombuffer(data, dtype=endian + t, count=1, offset=offset)[0])
                offset += np.dtype(t).itemsize
            else:
                cnt = int(np.frombuffer(data, dtype=endian + t, count=1, offset=offset)[0])
                offset += np.dtype(t).itemsize
                items = np.frombuffer(data, dtype=endian + lt, count=cnt, offset=offset)
                out[name].append(items.astype(np.int64).tolist())
                offset += cnt * np.dtype(lt).itemsize
    return {k: _pack_lists(v) for k, v in out.items()}, offset


def save_ply(path: str | Path, vertices: np.ndarray, faces: np.ndarray, colors: np.ndarray | None = None,
             binary: bool = True) -> None:
    """Write a triangle mesh as PLY (binary little endian or ascii), colours as uchar red/green/blue."""
    vertices = np.asarray(vertices, dtype=np.float32)
    faces = np.asarray(faces, dtype=np.int64)
    header = ["ply", f"format {'binary_little_endian' if binary else 'ascii'} 1.0",
              f"element vertex {len(vertices)}", "property float x", "property float y", "property float z"]
    if colors is not None:
        header += ["property uchar red", "property uchar green", "property uchar blue"]
        c8 = np.clip(np.round(np.asarray(colors) * 255), 0, 255).astype(np.uint8)
    header += [f"element face {len(faces)}", "property list uchar int vertex_indices", "end_header"]
    head = ("\n".join(header) + "\n").encode("ascii")
    if binary:
        vfields = [("x", "<f4"), ("y", "<f4"), ("z", "<f4")] + (
            [("red", "u1"), ("green", "u1"), ("blue", "u1")] if colors is not None else [])
        v = np.zeros(len(vertices), dtype=vfields)
        v["x"], v["y"], v["z"] = vertices.T
        if colors is not None:
            v["red"], v["green"], v["blue"] = c8.T
        f = np.zeros(len(faces), dtype=[("n", "u1"), ("i", "<i4", (3,))])
        f["n"], f["i"] = 3, faces
        Path(path).write_bytes(head + v.tobytes() + f.tobytes())
    else:
        rows = [" ".join(f"{x:.7g}" for x in p) + ("" if colors is None else " " + " ".join(str(int(x)) for x in c))
                for p, c in zip(vertices, c8 if colors is not None else vertices)]
        rows += [f"3 {a} {b} {c}" for a, b, c in faces]
        Path(path).write_bytes(head + ("\n".join(rows) + "\n").encode("ascii"))


# ============================================================================================ folder
def read_mesh_file(path: str | Path) -> MeshFrame:
    """Read one `.obj` or `.ply` file."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".obj":
        return read_obj(path)
    if suffix == ".ply":
        return read_ply(path)
    raise AssetError(f"{path}: unsupported mesh format {suffix!r} (expected .obj or .ply)")


def load_mesh_sequence(folder: str | Path, name: str | None = None) -> AnimatedMesh:
    """Load a folder of per-frame meshes (same topology in every frame) as one AnimatedMesh.

    Args:
        folder: directory of `.obj` or `.ply` files (one format), ordered naturally by file name.
        name: sequence name (default: the folder name).
    Returns:
        AnimatedMesh with `times` = frame index (0, 1, ...), positions as stored. Colours and
        textures come from the first frame (vertex colours, OBJ `Kd`/`map_Kd`; white if none).
    Raises:
        AssetError: missing/empty folder, mixed formats, unreadable file, or changing topology.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise AssetError(f"{folder}: not a directory of per-frame meshes")
    files = sorted((p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in MESH_SUFFIXES),
                   key=lambda p: natural_key(p.name))
    if not files:
        raise AssetError(f"{folder}: contains no .obj or .ply frames")
    kinds = {p.suffix.lower() for p in files}
    if len(kinds) > 1:
        raise AssetError(f"{folder}: mixes {sorted(kinds)} frames; use one format per sequence")
    first = read_mesh_file(files[0])
    frames = [first.vertices]
    for p in files[1:]:
        fr = read_mesh_file(p)
        if fr.vertices.shape != first.vertices.shape or not np.array_equal(fr.faces, first.faces):
            raise AssetError(f"{p}: topology differs from {files[0].name} "
                             f"({fr.vertices.shape[0]} vertices / {fr.faces.shape[0]} faces vs "
                             f"{first.vertices.shape[0]} / {first.faces.shape[0]}); a sequence needs constant topology")
        frames.append(fr.vertices)
    V, F = first.vertices.shape[0], first.faces.shape[0]
    colors = first.colors if first.colors is not None else np.ones((V, 3), dtype=np.float32)
    face_texture = first.face_texture if first.face_texture is not None else np.full(F, -1, dtype=np.int64)
    return AnimatedMesh(vertices=np.stack(frames), faces=first.faces, vertex_colors=np.clip(colors, 0, 1),
                        uvs=first.uvs, textures=first.textures or [], face_texture=face_texture,
                        times=np.arange(len(files), dtype=np.float64), name=name or folder.name)
