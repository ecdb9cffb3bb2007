"""glTF 2.0 / GLB loader: animated, skinned, morphed, coloured meshes -> `AnimatedMesh` per animation.

A small self-contained reader on numpy (+ PIL for images) covering what animated Objaverse-style
assets use: GLB containers and `.gltf` files with external or data-URI buffers; accessors of every
component type (normalised integers, byteStride, sparse); the node hierarchy with TRS or matrix;
animations with LINEAR / STEP / CUBICSPLINE samplers (shortest-path slerp for rotations); skins
(several per file, JOINTS_n/WEIGHTS_n sets, renormalised weights); morph targets with default and
animated weights; base colour from the texture (TEXCOORD_n, KHR_texture_transform), COLOR_0 and
the material factor (also the legacy spec-gloss `diffuse` channel).

World frame: glTF is Y up, upstream's Blender world is Z up; positions are mapped
(x, y, z)_gltf -> (x, -z, y), as Blender's glTF importer does.

Colours: glTF factors and COLOR_0 are linear; textures are sRGB. `AnimatedMesh.vertex_colors`
stores sRGB(factor · COLOR_0), so that texture(uv) · vertex_colors approximates the displayed colour
(exact for a pure power-law gamma).

Not supported (clear `AssetError`): Draco / meshopt compressed geometry, glTF 1.0.
"""
from __future__ import annotations

import base64
import io
import json
import logging
import struct
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .animation import (MIN_DISPLACEMENT, quat_slerp, sample_animation, skin_vertices, trs_matrix,
                        world_matrices)
from .mesh import AnimatedMesh, AssetError, StaticSequenceError

logger = logging.getLogger(__name__)

__all__ = ["GltfAsset", "GltfAnimation", "load_gltf", "sample_channel", "linear_to_srgb"]

_GLB_MAGIC = 0x46546C67  # b"glTF"
_CHUNK_JSON = 0x4E4F534A
_CHUNK_BIN = 0x004E4942
_COMPONENT_DTYPES = {5120: "<i1", 5121: "<u1", 5122: "<i2", 5123: "<u2", 5125: "<u4", 5126: "<f4"}
_NORMALIZE_DIV = {5120: 127.0, 5121: 255.0, 5122: 32767.0, 5123: 65535.0}
_TYPE_SIZES = {"SCALAR": 1, "VEC2": 2, "VEC3": 3, "VEC4": 4, "MAT2": 4, "MAT3": 9, "MAT4": 16}
_UNSUPPORTED_EXTENSIONS = {"KHR_draco_mesh_compression", "EXT_meshopt_compression", "KHR_meshopt_compression"}
# (x, y, z) Y-up -> (x, -z, y) Z-up
_Y_UP_TO_Z_UP = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]])


def linear_to_srgb(c: np.ndarray) -> np.ndarray:
    """Linear colour in [0, 1] -> sRGB-encoded (IEC 61966-2-1 transfer curve)."""
    c = np.clip(np.asarray(c, dtype=np.float64), 0.0, 1.0)
    return np.where(c <= 0.0031308, 12.92 * c, 1.055 * np.power(c, 1 / 2.4) - 0.055)


# ============================================================================================ document
class _Document:
    """The parsed JSON plus resolved binary buffers of one glTF/GLB file."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.name = self.path.name
        if not self.path.is_file():
            raise AssetError(f"{self.path}: file not found")
        data = self.path.read_bytes()
        if not data:
            raise AssetError(f"{self.path}: file is empty")
        glb_bin = None
        if data[:4] == b"glTF":
            gltf, glb_bin = self._parse_glb(data)
        else:
            try:
                gltf = json.loads(data.decode("utf-8-sig"))
            except (UnicodeDecodeError, json.JSONDecodeError) as err:
                raise AssetError(f"{self.path}: neither a GLB container nor glTF JSON ({err})") from None
        if not isinstance(gltf, dict):
            raise AssetError(f"{self.path}: glTF JSON must be an object")
        version = str(gltf.get("asset", {}).get("version", ""))
        if not version.startswith("2"):
            raise AssetError(f"{self.path}: glTF version {version or '?'} is not supported (need 2.x)")
        required = set(gltf.get("extensionsRequired", []))
        bad = required & _UNSUPPORTED_EXTENSIONS
        if bad:
            raise AssetError(f"{self.path}: requires unsupported extension(s) {sorted(bad)} (compressed geometry)")
        for ext in sorted(required - bad):
            logger.debug("%s: required extension %s treated as optional", self.name, ext)
        self.gltf = gltf
        self.buffers = [self._load_buffer(i, b, glb_bin) for i, b in enumerate(gltf.get("buffers", []))]
        self._accessor_cache: dict[int, np.ndarray] = {}
        self._image_cache: dict[int, np.ndarray | None] = {}

    def fail(self, reason: str) -> AssetError:
        return AssetError(f"{self.path}: {reason}")

    # ----------------------------------------------------------------------- containers and buffers
    def _parse_glb(self, data: bytes):
        if len(data) < 20:
            raise self.fail("GLB file is truncated (shorter than its header)")
        magic, version, length = struct.unpack_from("<III", data, 0)
        if version != 2:
            raise self.fail(f"GLB container version {version} is not supported (need 2)")
        if length > len(data):
            raise self.fail(f"GLB header declares {length} bytes but the file has {len(data)} (truncated)")
        offset, gltf, binary = 12, None, None
        while offset + 8 <= length:
            chunk_len, chunk_type = struct.unpack_from("<II", data, offset)
            body = data[offset + 8: offset + 8 + chunk_len]
            if len(body) != chunk_len:
                raise self.fail("GLB chunk runs past the end of the file (truncated)")
            if chunk_type == _CHUNK_JSON and gltf is None:
                try:
                    gltf = json.loads(body.decode("utf-8"))
                except (UnicodeDecodeError, json.JSONDecodeError) as err:
                    raise self.fail(f"GLB JSON chunk is corrupt ({err})") from None
            elif chunk_type == _CHUNK_BIN and binary is None:
                binary = body
            offset += 8 + chunk_len + (-chunk_len % 4)
        if gltf is None:
            raise self.fail("GLB container has no JSON chunk")
        return gltf, binary

    def _read_uri(self, uri: str, what: str) -> bytes:
        if uri.startswith("data:"):
            head, _, payload = uri.partition(",")
            if not head.endswith(";base64"):
                return urllib.parse.unquote_to_bytes(payload)
            try:
                return base64.b64decode(payload, validate=False)
            except ValueError as err:
                raise self.fail(f"{what} has a corrupt base64 data URI ({err})") from None
        file = self.path.parent / urllib.parse.unquote(uri)
        if not file.is_file():
            raise self.fail(f"{what} refers to missing file {file.name!r}")
        return file.read_bytes()

    def _load_buffer(self, index: int, buf: dict, glb_bin: bytes | None) -> bytes:
        if "uri" in buf:
            data = self._read_uri(buf["uri"], f"buffer {index}")
        elif index == 0 and glb_bin is not None:
            data = glb_bin
        else:
            raise self.fail(f"buffer {index} has no uri and there is no GLB binary chunk")
        if len(data) < buf.get("byteLength", 0):
            raise self.fail(f"buffer {index} holds {len(data)} bytes, fewer than its byteLength "
                            f"{buf['byteLength']} (truncated)")
        return data

    def _view(self, index: int) -> tuple[bytes, int, int, int | None]:
        """(buffer bytes, byte offset, byte length, byte stride) of a bufferView."""
        try:
            view = self.gltf["bufferViews"][index]
            data = self.buffers[view["buffer"]]
        except (KeyError, IndexError, TypeError):
            raise self.fail(f"bufferView {index} or its buffer does not exist") from None
        off, length = view.get("byteOffset", 0), view["byteLength"]
        if off + length > len(data):
            raise self.fail(f"bufferView {index} runs past the end of its buffer")
        return data, off, length, view.get("byteStride")

    # ----------------------------------------------------------------------- accessors
    def _read_elements(self, view_index: int, byte_offset: int, count: int, ctype: int, atype: str,
                       use_stride: bool) -> np.ndarray:
        """Raw elements (count, ncomp) in the stored dtype, honouring stride and matrix column padding."""
        if ctype not in _COMPONENT_DTYPES or atype not in _TYPE_SIZES:
            raise self.fail(f"unknown accessor componentType {ctype} / type {atype!r}")
        dtype = np.dtype(_COMPONENT_DTYPES[ctype])
        n = _TYPE_SIZES[atype]
        if atype.startswith("MAT"):
            rows = int(round(n ** 0.5))
            col_bytes = rows * dtype.itemsize
            col_stride = col_bytes + (-col_bytes % 4)  # matrix columns start on 4-byte boundaries
            elem = rows * col_stride
        else:
            rows, col_bytes, col_stride, elem = 1, n * dtype.itemsize, n * dtype.itemsize, n * dtype.itemsize
        data, view_off, view_len, stride = self._view(view_index)
        stride = stride if (use_stride and stride) else elem
        if count == 0:
            return np.zeros((0, n), dtype=dtype)
        need = byte_offset + (count - 1) * stride + elem
        if need > view_len:
            raise self.fail(f"accessor data ({need} bytes) run past bufferView {view_index} ({view_len} bytes)")
        raw = np.frombuffer(data, dtype=np.uint8, count=need - byte_offset, offset=view_off + byte_offset)
        rows_u8 = np.lib.stride_tricks.as_strided(raw, shape=(count, elem), strides=(stride, 1))
        if atype.startswith("MAT"):
            cols = rows_u8.reshape(count, rows, col_stride)[:, :, :col_bytes]
            return np.ascontiguousarray(cols).view(dtype).reshape(count, n)
        return np.ascontiguousarray(rows_u8).view(dtype).reshape(count, n)

    def accessor(self, index: int) -> np.ndarray:
        """Accessor data: SCALAR (N,), VECk (N, k), MATk (N, k, k) row-major.

        Floats and normalised integers come back as float32, other integers as int64.
        """
        if index in self._accessor_cache:
            return self._accessor_cache[index]
        try:
            acc = self.gltf["accessors"][index]
            ctype, atype, count = acc["componentType"], acc["type"], int(acc["count"])
        except (KeyError, IndexError, TypeError):
            raise self.fail(f"accessor {index} does not exist or lacks componentType/type/count") from None
        n = _TYPE_SIZES.get(atype)
        if n is None or ctype not in _COMPONENT_DTYPES:
            raise self.fail(f"accessor {index} has unknown componentType {ctype} / type {atype!r}")
        if "bufferView" in acc:
            arr = self._read_elements(acc["bufferView"], acc.get("byteOffset", 0), count, ctype, atype, True)
        else:
            arr = np.zeros((count, n), dtype=_COMPONENT_DTYPES[ctype])
        arr = arr.copy()
        sparse = acc.get("sparse")
        if sparse:
            k = int(sparse["count"])
            ind, val = sparse["indices"], sparse["values"]
            idx = self._read_elements(ind["bufferView"], ind.get("byteOffset", 0), k, ind["componentType"],
                                      "SCALAR", False).reshape(-1).astype(np.int64)
            vals = self._read_elements(val["bufferView"], val.get("byteOffset", 0), k, ctype, atype, False)
            if k and (idx.min() < 0 or idx.max() >= count):
                raise self.fail(f"accessor {index} has sparse indices outside [0, {count})")
            arr[idx] = vals
        if ctype == 5126:
            out = arr.astype(np.float32)
        elif acc.get("normalized", False):
            out = np.maximum(arr.astype(np.float32) / _NORMALIZE_DIV[ctype], -1.0)
        else:
            out = arr.astype(np.int64)
        if atype == "SCALAR":
            out = out.reshape(count)
        elif atype.startswith("MAT"):
            k = int(round(n ** 0.5))
            out = out.reshape(count, k, k).transpose(0, 2, 1)  # stored column-major
        self._accessor_cache[index] = out
        return out

    # ----------------------------------------------------------------------- images
    def image(self, index: int) -> np.ndarray | None:
        """Decoded image (H, W, 3|4) uint8, or None (with a warning) if it cannot be read."""
        if index in self._image_cache:
            return self._image_cache[index]
        from PIL import Image

        img = None
        try:
            info = self.gltf["images"][index]
            if "bufferView" in info:
                data, off, length, _ = self._view(info["bufferView"])
                blob = data[off: off + length]
            else:
                blob = self._read_uri(info["uri"], f"image {index}")
            with Image.open(io.BytesIO(blob)) as pil:
                has_alpha = pil.mode in ("RGBA", "LA", "PA") or "transparency" in pil.info
                img = np.asarray(pil.convert("RGBA" if has_alpha else "RGB"), dtype=np.uint8).copy()
        except Exception as err:  # noqa: BLE001 - a broken texture must not kill the asset
            logger.warning("%s: image %d cannot be read (%s); its faces use the material colour",
                           self.name, index, err)
        self._image_cache[index] = img
        return img


# ============================================================================================ animation
@dataclass
class GltfAnimation:
    """One glTF animation: name, index and time range in seconds."""

    index: int
    name: str
    start: float
    end: float


def _interp_indices(keys: np.ndarray, t: np.ndarray):
    """Segment index i (keys[i] <= t < keys[i+1]) and local parameter s in [0, 1], clamped to the ends."""
    K = keys.shape[0]
    tc = np.clip(t, keys[0], keys[-1])
    i = np.clip(np.searchsorted(keys, tc, side="right") - 1, 0, max(K - 2, 0))
    if K < 2:
        return i, np.zeros_like(tc), np.ones_like(tc)
    dt = keys[i + 1] - keys[i]
    s = np.where(dt > 0, (tc - keys[i]) / np.where(dt > 0, dt, 1.0), 1.0)
    return i, np.clip(s, 0.0, 1.0), dt


def sample_channel(keys: np.ndarray, values: np.ndarray, interpolation: str, t: np.ndarray,
                   rotation: bool = False) -> np.ndarray:
    """Evaluate one glTF animation sampler.

    Args:
        keys: (K,) increasing key times.
        values: (K, C) key values, or (3K, C) [in-tangent, value, out-tangent] per key for CUBICSPLINE.
        interpolation: "LINEAR", "STEP" or "CUBICSPLINE".
        t: (T,) evaluation times (clamped to the key range).
        rotation: values are (x, y, z, w) quaternions: LINEAR uses shortest-path slerp, results are unit.
    Returns:
        (T, C) float64.
    """
    keys = np.asarray(keys, dtype=np.float64)
    values = np.asarray(values, dtype=np.float64)
    t = np.asarray(t, dtype=np.float64)
    K = keys.shape[0]
    if interpolation not in ("LINEAR", "STEP", "CUBICSPLINE"):
        logger.warning("unknown interpolation %r, using LINEAR", interpolation)
        interpolation = "LINEAR"
    if interpolation == "CUBICSPLINE":
        if values.shape[0] != 3 * K:
            raise ValueError(f"CUBICSPLINE sampler needs 3×{K} output values, got {values.shape[0]}")
        a, v, b = values[0::3], values[1::3], values[2::3]  # in-tangents, values, out-tangents
    else:
        if values.shape[0] != K:
            raise ValueError(f"{interpolation} sampler needs {K} output values, got {values.shape[0]}")
        v = values
    if K == 1:
        out = np.repeat(v[:1], t.shape[0], axis=0)
    elif interpolation == "STEP":
        j = np.clip(np.searchsorted(keys, t, side="right") - 1, 0, K - 1)
        out = v[j]
    elif interpolation == "LINEAR":
        i, s, _ = _interp_indices(keys, t)
        if rotation:
            out = quat_slerp(v[i], v[i + 1], s)
        else:
            out = v[i] * (1 - s)[:, None] + v[i + 1] * s[:, None]
    else:
        i, s, dt = _interp_indices(keys, t)
        s2, s3 = s * s, s * s * s
        h00 = 2 * s3 - 3 * s2 + 1
        h10 = s3 - 2 * s2 + s
        h01 = -2 * s3 + 3 * s2
        h11 = s3 - s2
        dt = dt[:, None]
        out = (h00[:, None] * v[i] + h10[:, None] * dt * b[i]
               + h01[:, None] * v[i + 1] + h11[:, None] * dt * a[i + 1])
    if rotation:
        out = out / np.maximum(np.linalg.norm(out, axis=-1, keepdims=True), 1e-12)
    return out


# ============================================================================================ asset
@dataclass
class _Primitive:
    positions: np.ndarray           # (V, 3) float64, mesh space (Y up)
    targets: np.ndarray | None      # (K, V, 3) position displacements
    joints: np.ndarray | None       # (V, J) int64 skin-local joint indices
    weights: np.ndarray | None      # (V, J) float64, rows sum to 1 (or 0 = unskinned vertex)
    faces: np.ndarray               # (F, 3) int64
    colors: np.ndarray              # (V, 3) float32 sRGB
    uvs: np.ndarray | None          # (V, 2) float32
    image: int | None               # glTF image index of the base-colour texture


class GltfAsset:
    """A parsed glTF 2.0 / GLB file whose meshes can be posed at any time of any animation.

    Args:
        path: `.glb` or `.gltf` file.
    Attributes:
        animations: list of `GltfAnimation` (may be empty).
    """

    def __init__(self, path: str | Path):
        self.doc = _Document(path)
        self.path = self.doc.path
        g = self.doc.gltf
        try:
            self._setup(g)
        except AssetError:
            raise
        except (KeyError, IndexError, TypeError, ValueError) as err:
            raise self.doc.fail(f"malformed glTF ({type(err).__name__}: {err})") from None

    # ----------------------------------------------------------------------- static structure
    def _setup(self, g: dict) -> None:
        nodes = g.get("nodes", [])
        N = len(nodes)
        self.parents = np.full(N, -1, dtype=np.int64)
        for n, node in enumerate(nodes):
            for c in node.get("children", []):
                if self.parents[c] >= 0:
                    raise self.doc.fail(f"node {c} has two parents")
                self.parents[c] = n
        scenes = g.get("scenes", [])
        if scenes:
            roots = scenes[g.get("scene", 0)].get("nodes", [])
        else:
            roots = [n for n in range(N) if self.parents[n] < 0]
        reachable, stack = [], list(roots)
        seen = np.zeros(N, dtype=bool)
        while stack:
            n = stack.pop()
            if seen[n]:
                raise self.doc.fail(f"node {n} is reachable twice (cycle or shared child)")
            seen[n] = True
            reachable.append(n)
            stack.extend(nodes[n].get("children", []))

        # rest pose: TRS (animatable) or fixed matrix
        self.rest_t = np.zeros((N, 3))
        self.rest_r = np.tile([0.0, 0.0, 0.0, 1.0], (N, 1))
        self.rest_s = np.ones((N, 3))
        self.fixed = {}
        for n, node in enumerate(nodes):
            if "matrix" in node:
                self.fixed[n] = np.asarray(node["matrix"], dtype=np.float64).reshape(4, 4).T
            self.rest_t[n] = node.get("translation", self.rest_t[n])
            self.rest_r[n] = node.get("rotation", self.rest_r[n])
            self.rest_s[n] = node.get("scale", self.rest_s[n])

        self.meshes_prims = {}
        self.instances = []  # (node, mesh, skin or None)
        for n in sorted(reachable):
            if "mesh" in nodes[n]:
                m = nodes[n]["mesh"]
                if m not in self.meshes_prims:
                    self.meshes_prims[m] = [p for p in (self._primitive(m, i, prim) for i, prim in
                                                        enumerate(g["meshes"][m]["primitives"])) if p is not None]
                if self.meshes_prims[m]:
                    self.instances.append((n, m, nodes[n].get("skin")))
        if not self.instances:
            raise self.doc.fail("contains no triangle meshes in its scene")
        self.default_weights = {}
        for n, m, _ in self.instances:
            K = self._num_targets(m)
            w = nodes[n].get("weights", g["meshes"][m].get("weights", [0.0] * K))
            self.default_weights[n] = np.asarray(w, dtype=np.float64)[:K]
        self.animations = []
        for a, anim in enumerate(g.get("animations", [])):
            starts, ends = [], []
            for smp in anim.get("samplers", []):
                keys = self.doc.accessor(smp["input"])
                if keys.size:
                    starts.append(float(keys.min()))
                    ends.append(float(keys.max()))
            if starts:
                self.animations.append(GltfAnimation(a, anim.get("name") or f"animation_{a}", min(starts), max(ends)))
        self._build_template()

    def _num_targets(self, mesh: int) -> int:
        prims = self.meshes_prims[mesh]
        return max((0 if p.targets is None else p.targets.shape[0]) for p in prims)

    def _primitive(self, m: int, i: int, prim: dict) -> _Primitive | None:
        g, doc = self.doc.gltf, self.doc
        mode = prim.get("mode", 4)
        attrs = prim.get("attributes", {})
        if mode not in (4, 5, 6) or "POSITION" not in attrs:
            logger.debug("%s: mesh %d primitive %d skipped (mode %d / no POSITION)", doc.name, m, i, mode)
            return None
        pos = doc.accessor(attrs["POSITION"]).astype(np.float64)
        V = pos.shape[0]
        idx = doc.accessor(prim["indices"]).astype(np.int64) if "indices" in prim else np.arange(V)
        if idx.size and (idx.min() < 0 or idx.max() >= V):
            raise doc.fail(f"mesh {m} primitive {i} has indices outside [0, {V})")
        faces = _triangulate(idx, mode)
        if faces.shape[0] == 0:
            return None

        targets = None
        if prim.get("targets"):
            targets = np.zeros((len(prim["targets"]), V, 3))
            for k, tgt in enumerate(prim["targets"]):
                if "POSITION" in tgt:
                    targets[k] = doc.accessor(tgt["POSITION"])

        joints = weights = None
        sets = sorted(int(k.split("_")[1]) for k in attrs if k.startswith("JOINTS_"))
        if sets:
            js, ws = [], []
            for s in sets:
                if f"WEIGHTS_{s}" not in attrs:
                    continue
                js.append(doc.accessor(attrs[f"JOINTS_{s}"]).reshape(V, -1).astype(np.int64))
                ws.append(doc.accessor(attrs[f"WEIGHTS_{s}"]).reshape(V, -1).astype(np.float64))
            if js:
                joints = np.concatenate(js, axis=1)
                weights = np.maximum(np.concatenate(ws, axis=1), 0.0)
                total = weights.sum(axis=1, keepdims=True)
                weights = np.where(total > 0, weights / np.where(total > 0, total, 1.0), 0.0)

        # colour: sRGB(baseColorFactor * COLOR_0), texture multiplies on top
        factor, tex_info = np.ones(3), None
        if "material" in prim:
            mat = g["materials"][prim["material"]]
            pbr = mat.get("pbrMetallicRoughness")
            sg = mat.get("extensions", {}).get("KHR_materials_pbrSpecularGlossiness")
            if pbr is None and sg is not None:
                factor = np.asarray(sg.get("diffuseFactor", [1, 1, 1, 1])[:3], dtype=np.float64)
                tex_info = sg.get("diffuseTexture")
            elif pbr is not None:
                factor = np.asarray(pbr.get("baseColorFactor", [1, 1, 1, 1])[:3], dtype=np.float64)
                tex_info = pbr.get("baseColorTexture")
        colors = np.broadcast_to(factor, (V, 3)).astype(np.float64)
        if "COLOR_0" in attrs:
            c = doc.accessor(attrs["COLOR_0"]).reshape(V, -1).astype(np.float64)
            colors = colors * c[:, :3]
        colors = linear_to_srgb(colors).astype(np.float32)

        uvs, image = None, None
        if tex_info is not None:
            image, uvs = self._texture(tex_info, attrs, m, i)
        return _Primitive(pos, targets, joints, weights, faces, colors, uvs, image)

    def _texture(self, tex_info: dict, attrs: dict, m: int, i: int):
        g, doc = self.doc.gltf, self.doc
        tex = g["textures"][tex_info["index"]]
        source = tex.get("source")
        for ext in ("EXT_texture_webp", "KHR_texture_basisu", "MSFT_texture_dds"):
            if source is None and ext in tex.get("extensions", {}):
                source = tex["extensions"][ext].get("source")
        transform = tex_info.get("extensions", {}).get("KHR_texture_transform", {})
        tc = transform.get("texCoord", tex_info.get("texCoord", 0))
        if source is None or f"TEXCOORD_{tc}" not in attrs:
            logger.warning("%s: mesh %d primitive %d texture unusable (no image or TEXCOORD_%d)", doc.name, m, i, tc)
            return None, None
        if doc.image(source) is None:
            return None, None
        uv = doc.accessor(attrs[f"TEXCOORD_{tc}"]).astype(np.float64)
        if transform:
            ox, oy = transform.get("offset", [0.0, 0.0])
            sx, sy = transform.get("scale", [1.0, 1.0])
            r = transform.get("rotation", 0.0)
            c, s = np.cos(r), np.sin(r)
            # uv' = T · R · S · uv with R = [[c, s], [-s, c]] (extension spec)
            su = uv * [sx, sy]
            uv = np.stack([c * su[:, 0] + s * su[:, 1] + ox, -s * su[:, 0] + c * su[:, 1] + oy], axis=1)
        return source, uv.astype(np.float32)

    def _build_template(self) -> None:
        """Concatenate all primitives of all mesh instances: faces, colours, uvs, textures."""
        faces, colors, uvs, face_tex, images = [], [], [], [], {}
        offset, any_tex = 0, False
        for n, m, _ in self.instances:
            for p in self.meshes_prims[m]:
                faces.append(p.faces + offset)
                colors.append(p.colors)
                V = p.positions.shape[0]
                if p.image is not None:
                    any_tex = True
                    slot = images.setdefault(p.image, len(images))
                    uvs.append(p.uvs)
                    face_tex.append(np.full(p.faces.shape[0], slot, dtype=np.int64))
                else:
                    uvs.append(np.zeros((V, 2), dtype=np.float32))
                    face_tex.append(np.full(p.faces.shape[0], -1, dtype=np.int64))
                offset += V
        self.faces = np.concatenate(faces)
        self.vertex_colors = np.concatenate(colors)
        self.uvs = np.concatenate(uvs) if any_tex else None
        self.face_texture = np.concatenate(face_tex)
        self.textures = [self.doc.image(i) for i in sorted(images, key=images.get)]
        self.num_vertices = offset

    # ----------------------------------------------------------------------- posing
    def _pose(self, animation: int | None, times: np.ndarray):
        """Node world matrices (T, N, 4, 4) and morph weights {node: (T, K)} at `times` (seconds)."""
        T = times.shape[0]
        trs = [np.repeat(self.rest_t[None], T, 0), np.repeat(self.rest_r[None], T, 0),
               np.repeat(self.rest_s[None], T, 0)]
        weights = {n: np.repeat(w[None], T, 0) for n, w in self.default_weights.items()}
        if animation is not None:
            g = self.doc.gltf
            anim = g["animations"][animation]
            for ch in anim.get("channels", []):
                target = ch.get("target", {})
                node, path = target.get("node"), target.get("path")
                if node is None:
                    continue
                smp = anim["samplers"][ch["sampler"]]
                keys = self.doc.accessor(smp["input"])
                vals = self.doc.accessor(smp["output"])
                interp = smp.get("interpolation", "LINEAR")
                rows = keys.shape[0] * (3 if interp == "CUBICSPLINE" else 1)
                width = {"translation": 3, "rotation": 4, "scale": 3}.get(path)
                if path == "weights":
                    width = weights[node].shape[1] if node in weights else 0
                if not width or keys.size == 0:
                    continue  # unknown path, or morph weights of a node without targets
                if node in self.fixed and path != "weights":
                    logger.warning("%s: node %d has a matrix and an animated %s; channel ignored",
                                   self.doc.name, node, path)
                    continue
                if vals.size != rows * width:
                    raise self.doc.fail(f"animation {animation} channel on node {node} ({path}, {interp}) has "
                                        f"{vals.size} output values, expected {rows}×{width}")
                out = sample_channel(keys, vals.reshape(rows, width), interp, times, rotation=path == "rotation")
                if path == "weights":
                    weights[node] = out
                else:
                    trs[{"translation": 0, "rotation": 1, "scale": 2}[path]][:, node] = out
        local = trs_matrix(*trs)
        for n, mat in self.fixed.items():
            local[:, n] = mat
        return world_matrices(local, self.parents), weights

    def evaluate(self, animation: int | None, times) -> np.ndarray:
        """Merged vertex positions (T, V, 3) float32 in the Z-up world at `times` (seconds).

        Args:
            animation: index into the file's `animations` array (glTF index), or None for the rest pose.
            times: (T,) seconds (clamped to each channel's key range, as glTF players do).
        """
        times = np.atleast_1d(np.asarray(times, dtype=np.float64))
        world, weights = self._pose(animation, times)
        T = times.shape[0]
        out = np.empty((T, self.num_vertices, 3), dtype=np.float64)
        g = self.doc.gltf
        offset = 0
        for n, m, skin in self.instances:
            joint_mats = None
            if skin is not None:
                sk = g["skins"][skin]
                jn = np.asarray(sk["joints"], dtype=np.int64)
                ibm = (self.doc.accessor(sk["inverseBindMatrices"]).astype(np.float64)
                       if "inverseBindMatrices" in sk else np.tile(np.eye(4), (len(jn), 1, 1)))
                # extra last "joint": the mesh node itself, for vertices without any weight
                joint_mats = np.concatenate([world[:, jn] @ ibm, world[:, n:n + 1]], axis=1)
            for p in self.meshes_prims[m]:
                V = p.positions.shape[0]
                pts = p.positions
                if p.targets is not None and weights.get(n) is not None and weights[n].shape[1]:
                    w = weights[n][:, : p.targets.shape[0]]
                    pts = pts[None] + np.einsum("tk,kvc->tvc", w, p.targets[: w.shape[1]])
                if joint_mats is not None and p.joints is not None:
                    J = joint_mats.shape[1] - 1
                    if p.joints.max(initial=0) >= J:
                        raise self.doc.fail(f"mesh {m} uses joint index {p.joints.max()} "
                                            f"but skin {skin} has {J} joints")
                    jj, ww = p.joints, p.weights
                    unweighted = ww.sum(axis=1) == 0
                    if unweighted.any():
                        jj, ww = jj.copy(), ww.copy()
                        jj[unweighted, 0], ww[unweighted, 0] = J, 1.0
                    pos = skin_vertices(pts, jj, ww, joint_mats)
                else:
                    # skinned meshes ignore their node transform; unskinned ones use it
                    M = world[:, n]
                    pts_t = pts if pts.ndim == 3 else np.broadcast_to(pts, (T,) + pts.shape)
                    pos = np.einsum("tij,tvj->tvi", M[:, :3, :3], pts_t) + M[:, None, :3, 3]
                out[:, offset: offset + V] = pos
                offset += V
        return (out @ _Y_UP_TO_Z_UP.T).astype(np.float32)

    def to_mesh(self, vertices: np.ndarray, times: np.ndarray, name: str = "") -> AnimatedMesh:
        """Wrap posed vertices (T, V, 3) with the asset's faces, colours and textures."""
        return AnimatedMesh(vertices=vertices, faces=self.faces, vertex_colors=self.vertex_colors, uvs=self.uvs,
                            textures=self.textures, face_texture=self.face_texture, times=times, name=name)

    def animation_mesh(self, animation: int | None, times, name: str | None = None) -> AnimatedMesh:
        """An AnimatedMesh of animation `animation` (glTF index, None = rest pose) at `times` seconds."""
        times = np.atleast_1d(np.asarray(times, dtype=np.float64))
        if name is None:
            name = next((a.name for a in self.animations if a.index == animation), "rest")
        return self.to_mesh(self.evaluate(animation, times), times, name)


def _triangulate(idx: np.ndarray, mode: int) -> np.ndarray:
    """Index list -> (F, 3) triangles for TRIANGLES (4), TRIANGLE_STRIP (5), TRIANGLE_FAN (6)."""
    if mode == 4:
        n = idx.shape[0] // 3 * 3
        return idx[:n].reshape(-1, 3)
    if idx.shape[0] < 3:
        return np.zeros((0, 3), dtype=np.int64)
    i = np.arange(idx.shape[0] - 2)
    if mode == 5:  # keep a consistent winding: odd triangles swap their first two vertices
        odd = i % 2
        return np.stack([idx[i + odd], idx[i + 1 - odd], idx[i + 2]], axis=1)
    return np.stack([idx[i + 1], idx[i + 2], np.full_like(i, idx[0])], axis=1)


def load_gltf(path: str | Path | GltfAsset, num_frames: int = 24, *, fps: float = 24.0, normalize: bool = True,
              on_static: str = "skip", min_displacement: float = MIN_DISPLACEMENT,
              animations: list[str | int] | None = None) -> list[AnimatedMesh]:
    """Load every animation of a glTF/GLB file as its own upstream-sampled sequence.

    Each animation's range [start, end] seconds is mapped to frames at `fps`; frames are sampled as
    upstream's Blender script does (`gvf.data.animation.sample_animation`): consecutive frames first,
    uniform over the range if that barely moves; normalised into [-0.5, 0.5]^3 on the first frame.

    Args:
        path: `.glb` / `.gltf` file, or an already parsed `GltfAsset` (avoids re-reading the file).
        num_frames: T frames per sequence.
        fps: frame rate used to turn seconds into frames (Blender's default 24).
        normalize: normalise each sequence into the unit cube.
        on_static: "skip" (log and drop), "raise" (StaticSequenceError) or "keep" static animations.
        min_displacement: motion threshold in normalised units.
        animations: optional subset by name or glTF index.
    Returns:
        list of AnimatedMesh (name = animation name), in file order; empty if all are static.
    Raises:
        AssetError: missing/empty/corrupt file, no meshes, or no animations.
    """
    if on_static not in ("skip", "raise", "keep"):
        raise ValueError(f"on_static must be 'skip', 'raise' or 'keep', got {on_static!r}")
    asset = path if isinstance(path, GltfAsset) else GltfAsset(path)
    if not asset.animations:
        raise AssetError(f"{asset.path}: has no animations (a static asset gives no 4D sequence)")
    chosen = asset.animations
    if animations is not None:
        wanted = set(animations)
        chosen = [a for a in chosen if a.name in wanted or a.index in wanted]
        if not chosen:
            raise ValueError(f"{asset.path}: none of the animations {sorted(map(str, wanted))} exist; "
                             f"available: {[a.name for a in asset.animations]}")
    out = []
    for anim in chosen:
        def evaluate(frames, _a=anim):
            return asset.evaluate(_a.index, _a.start + np.asarray(frames) / fps)

        def build(vertices, frames, _a=anim):
            return asset.to_mesh(vertices, _a.start + np.asarray(frames) / fps, _a.name)

        try:
            out.append(sample_animation(evaluate, build, 0.0, (anim.end - anim.start) * fps, num_frames=num_frames,
                                        min_displacement=min_displacement, normalize=normalize,
                                        keep_static=on_static == "keep", name=f"{asset.path.name}:{anim.name}"))
        except StaticSequenceError as err:
            if on_static == "raise":
                raise
            logger.warning("skipping %s", err)
    return out
