"""glTF/GLB loader, per-frame mesh folders, AnimatedMesh and upstream frame sampling.

Small glTF files are built by hand here (JSON + packed binary) so every expected position is
computed independently, on paper, from the glTF 2.0 specification.
"""
import base64
import io
import json
import struct

import numpy as np
import pytest

from gvf.data.animation import (frame_positions, load_animated_asset, mean_displacement, quat_slerp,
                                sample_animation, sample_sequence)
from gvf.data.gltf import GltfAsset, linear_to_srgb, load_gltf, sample_channel
from gvf.data.mesh import AnimatedMesh, AssetError, StaticSequenceError, sample_texture
from gvf.data.mesh_sequence import load_mesh_sequence, read_obj, read_ply, save_obj, save_ply

S45 = np.sqrt(0.5)
FLOAT, UBYTE, BYTE, USHORT, SHORT, UINT = 5126, 5121, 5120, 5123, 5122, 5125
CTYPE_DTYPE = {FLOAT: "<f4", UBYTE: "<u1", BYTE: "<i1", USHORT: "<u2", SHORT: "<i2", UINT: "<u4"}


# ============================================================================================ builder
class Builder:
    """Hand-assembles a glTF 2.0 document and one binary buffer."""

    def __init__(self):
        self.bin = bytearray()
        self.g = {"asset": {"version": "2.0"}, "scene": 0, "scenes": [{"nodes": []}], "nodes": [], "meshes": [],
                  "accessors": [], "bufferViews": [], "buffers": [], "animations": []}

    def view(self, raw: bytes, stride=None) -> int:
        while len(self.bin) % 4:
            self.bin += b"\0"
        view = {"buffer": 0, "byteOffset": len(self.bin), "byteLength": len(raw)}
        if stride:
            view["byteStride"] = stride
        self.bin += raw
        self.g["bufferViews"].append(view)
        return len(self.g["bufferViews"]) - 1

    def accessor(self, values, ctype=FLOAT, atype="VEC3", normalized=False, **extra) -> int:
        arr = np.asarray(values)
        raw = arr.astype(CTYPE_DTYPE[ctype]).tobytes()
        acc = {"bufferView": self.view(raw), "componentType": ctype, "type": atype,
               "count": int(arr.shape[0]), **extra}
        if normalized:
            acc["normalized"] = True
        if ctype == FLOAT and atype != "MAT4":  # min/max are required for positions & inputs
            flat = arr.reshape(arr.shape[0], -1)
            acc["min"], acc["max"] = flat.min(0).tolist(), flat.max(0).tolist()
        self.g["accessors"].append(acc)
        return len(self.g["accessors"]) - 1

    def mesh(self, positions, faces=None, **prim_extra) -> int:
        prim = {"attributes": {"POSITION": self.accessor(np.asarray(positions, np.float32))}, **prim_extra}
        if faces is not None:
            prim["indices"] = self.accessor(np.asarray(faces, np.uint16).reshape(-1), USHORT, "SCALAR")
        self.g["meshes"].append({"primitives": [prim]})
        return len(self.g["meshes"]) - 1

    def node(self, root=True, **fields) -> int:
        self.g["nodes"].append(fields)
        n = len(self.g["nodes"]) - 1
        if root:
            self.g["scenes"][0]["nodes"].append(n)
        return n

    def animation(self, channels, name="anim"):
        """channels: list of (node, path, times, values, interpolation)."""
        samplers, chans = [], []
        for node, path, times, values, interp in channels:
            vals = np.asarray(values, np.float32)
            atype = {1: "SCALAR", 3: "VEC3", 4: "VEC4"}[vals.shape[1] if vals.ndim == 2 else 1]
            samplers.append({"input": self.accessor(np.asarray(times, np.float32), FLOAT, "SCALAR"),
                             "output": self.accessor(vals.reshape(-1) if atype == "SCALAR" else vals, FLOAT, atype),
                             "interpolation": interp})
            chans.append({"sampler": len(samplers) - 1, "target": {"node": node, "path": path}})
        self.g["animations"].append({"name": name, "samplers": samplers, "channels": chans})

    def glb(self) -> bytes:
        g = dict(self.g, buffers=[{"byteLength": len(self.bin)}])
        js = json.dumps(g).encode()
        js += b" " * (-len(js) % 4)
        binary = bytes(self.bin) + b"\0" * (-len(self.bin) % 4)
        body = struct.pack("<II", len(js), 0x4E4F534A) + js + struct.pack("<II", len(binary), 0x004E4942) + binary
        return struct.pack("<III", 0x46546C67, 2, 12 + len(body)) + body

    def gltf_embedded(self) -> str:
        uri = "data:application/octet-stream;base64," + base64.b64encode(bytes(self.bin)).decode()
        return json.dumps(dict(self.g, buffers=[{"byteLength": len(self.bin), "uri": uri}]))

    def write(self, path):
        path.write_bytes(self.glb())
        return path


TRI = [[1, 0, 0], [0, 0, 1], [0, 0, 0]]


def zup(p):
    """(x, y, z) Y-up -> (x, -z, y) Z-up, by hand."""
    p = np.asarray(p, dtype=np.float64)
    return np.stack([p[..., 0], -p[..., 2], p[..., 1]], -1)


# ============================================================================================ accessors
def test_accessor_component_types_normalized_stride_and_sparse(tmp_path):
    b = Builder()
    i8 = b.accessor(np.array([-128, -127, 0, 127]), BYTE, "SCALAR", normalized=True)
    u8 = b.accessor(np.array([0, 51, 255]), UBYTE, "SCALAR", normalized=True)
    i16 = b.accessor(np.array([-32768, 0, 32767]), SHORT, "SCALAR", normalized=True)
    u16 = b.accessor(np.array([0, 65535]), USHORT, "SCALAR", normalized=True)
    u32 = b.accessor(np.array([7, 4000000000]), UINT, "SCALAR")
    s16 = b.accessor(np.array([-5, 9]), SHORT, "SCALAR")
    # interleaved: [x y z (float) | r g b a (ubyte)] = 16-byte stride
    rec = np.zeros(2, dtype=[("p", "<f4", 3), ("c", "u1", 4)])
    rec["p"] = [[1, 2, 3], [4, 5, 6]]
    rec["c"] = [[255, 0, 0, 255], [0, 255, 0, 255]]
    v = b.view(rec.tobytes(), stride=16)
    b.g["accessors"].append({"bufferView": v, "byteOffset": 0, "componentType": FLOAT, "type": "VEC3", "count": 2})
    pos = len(b.g["accessors"]) - 1
    b.g["accessors"].append({"bufferView": v, "byteOffset": 12, "componentType": UBYTE, "type": "VEC4", "count": 2,
                             "normalized": True})
    col = len(b.g["accessors"]) - 1
    # sparse over zeros (no bufferView): elements 1 and 3 replaced
    si = b.view(np.array([1, 3], "<u2").tobytes())
    sv = b.view(np.array([[1, 2, 3], [4, 5, 6]], "<f4").tobytes())
    b.g["accessors"].append({"componentType": FLOAT, "type": "VEC3", "count": 4, "sparse": {
        "count": 2, "indices": {"bufferView": si, "componentType": USHORT}, "values": {"bufferView": sv}}})
    sp = len(b.g["accessors"]) - 1
    # sparse on top of real data
    base = b.accessor(np.array([10, 20, 30], np.float32), FLOAT, "SCALAR")
    b.g["accessors"][base]["sparse"] = {"count": 1, "indices": {"bufferView": b.view(np.array([2], "<u1").tobytes()),
                                                                 "componentType": UBYTE},
                                        "values": {"bufferView": b.view(np.array([-1], "<f4").tobytes())}}
    # MAT4 stored column-major: translation (1, 2, 3) sits in the last column
    m = np.eye(4)
    m[:3, 3] = [1, 2, 3]
    mat = b.accessor(m.T.reshape(1, 16), FLOAT, "MAT4")
    b.mesh(TRI)
    b.node(mesh=0)
    doc = GltfAsset(b.write(tmp_path / "acc.glb")).doc
    np.testing.assert_allclose(doc.accessor(i8), [-1, -1, 0, 1])
    np.testing.assert_allclose(doc.accessor(u8), [0, 0.2, 1])
    np.testing.assert_allclose(doc.accessor(i16), [-1, 0, 1])
    np.testing.assert_allclose(doc.accessor(u16), [0, 1])
    np.testing.assert_array_equal(doc.accessor(u32), [7, 4000000000])
    np.testing.assert_array_equal(doc.accessor(s16), [-5, 9])
    np.testing.assert_allclose(doc.accessor(pos), [[1, 2, 3], [4, 5, 6]])
    np.testing.assert_allclose(doc.accessor(col), [[1, 0, 0, 1], [0, 1, 0, 1]])
    np.testing.assert_allclose(doc.accessor(sp), [[0, 0, 0], [1, 2, 3], [0, 0, 0], [4, 5, 6]])
    np.testing.assert_allclose(doc.accessor(base), [10, 20, -1])
    np.testing.assert_allclose(doc.accessor(mat)[0], m)


# ============================================================================================ hierarchy
def test_node_hierarchy_trs_matrix_and_y_up_to_z_up(tmp_path):
    b = Builder()
    mesh = b.mesh(TRI)
    child = b.node(root=False, mesh=mesh, translation=[0, 1, 0], scale=[2, 2, 2])
    b.node(children=[child], translation=[1, 0, 0], rotation=[0, 0, S45, S45])  # 90° about +Z
    m = np.eye(4)
    m[:3, 3] = [5, 0, 0]
    b.node(mesh=mesh, matrix=m.T.reshape(-1).tolist())
    asset = GltfAsset(b.write(tmp_path / "h.glb"))
    v = asset.evaluate(None, [0.0])[0]
    # child: T(0,1,0)·S(2); parent: T(1,0,0)·Rz(90°): (x, y) -> (-y, x)
    #   (1,0,0) -> (2,1,0) -> (-1,2,0) -> (0,2,0);  (0,0,1) -> (0,1,2) -> (-1,0,2) -> (0,0,2);  0 -> (0,1,0) -> 0
    expected_a = [[0, 2, 0], [0, 0, 2], [0, 0, 0]]
    expected_b = [[6, 0, 0], [5, 0, 1], [5, 0, 0]]
    np.testing.assert_allclose(v[:3], zup(expected_a), atol=1e-6)
    np.testing.assert_allclose(v[3:], zup(expected_b), atol=1e-6)
    np.testing.assert_allclose(zup([[0, 1, 0]]), [[0, 0, 1]])  # glTF up is Z-up's up


def test_merges_primitives_and_reuses_mesh_per_node(tmp_path):
    b = Builder()
    b.mesh(TRI, faces=[0, 1, 2])
    b.g["meshes"][0]["primitives"].append(dict(b.g["meshes"][0]["primitives"][0]))
    b.node(mesh=0)
    b.node(mesh=0, translation=[0, 3, 0])
    asset = GltfAsset(b.write(tmp_path / "m.glb"))
    assert asset.num_vertices == 12 and asset.faces.shape == (4, 3)
    np.testing.assert_array_equal(asset.faces[1], [3, 4, 5])
    v = asset.evaluate(None, [0.0])[0]
    np.testing.assert_allclose(v[9:], zup(np.asarray(TRI) + [0, 3, 0]), atol=1e-6)


# ============================================================================================ samplers
def test_sample_channel_linear_step_cubic_by_hand():
    keys = np.array([0.0, 1.0, 2.0])
    vals = np.array([[0.0, 0, 0], [2, 0, 0], [2, 4, 0]])
    t = np.array([-1.0, 0.5, 1.0, 1.5, 3.0])
    np.testing.assert_allclose(sample_channel(keys, vals, "LINEAR", t),
                               [[0, 0, 0], [1, 0, 0], [2, 0, 0], [2, 2, 0], [2, 4, 0]])
    np.testing.assert_allclose(sample_channel(keys, vals, "STEP", np.array([0.99, 1.0, 1.99, 5.0])),
                               [[0, 0, 0], [2, 0, 0], [2, 0, 0], [2, 4, 0]])
    # Hermite: keys 0, 2; v0 = 0, v1 = 1, out-tangent b0 = 1, in-tangent a1 = 0 -> at s = 0.5, dt = 2:
    # 0.5·0 + 0.125·2·1 + 0.5·1 + (−0.125)·2·0 = 0.75; at s = 0.25: 0.15625·... computed below
    cub = np.array([[9.0], [0.0], [1.0], [0.0], [1.0], [9.0]])  # [a0, v0, b0, a1, v1, b1]
    got = sample_channel(np.array([0.0, 2.0]), cub, "CUBICSPLINE", np.array([0.0, 0.5, 1.0, 2.0]))
    s = 0.25
    h10, h01 = s ** 3 - 2 * s ** 2 + s, -2 * s ** 3 + 3 * s ** 2
    np.testing.assert_allclose(got[:, 0], [0.0, h10 * 2 + h01, 0.75, 1.0])
    # single key: constant
    np.testing.assert_allclose(sample_channel(np.array([1.0]), np.array([[3.0]]), "LINEAR", np.array([0.0, 9.0])),
                               [[3.0], [3.0]])


def test_slerp_is_spherical_and_takes_the_short_way():
    q0 = np.array([[0.0, 0, 0, 1]])
    q90 = np.array([[0.0, 0, S45, S45]])
    for s, deg in [(0.25, 22.5), (0.5, 45.0), (1.0, 90.0)]:
        q = quat_slerp(q0, -q90, np.array([s]))[0]  # -q is the same rotation; must not go the long way
        angle = np.degrees(2 * np.arctan2(q[2], q[3]))
        assert abs(angle - deg) < 1e-9 or abs(angle - deg + 360) < 1e-9 or abs(angle - deg - 360) < 1e-9, (s, angle)
    q = sample_channel(np.array([0.0, 1.0]), np.concatenate([q0, -q90]), "LINEAR", np.array([0.25]), rotation=True)
    assert np.degrees(2 * np.arccos(abs(q[0, 3]))) == pytest.approx(22.5)  # nlerp would give 21.6°


def test_animated_node_trs_all_interpolations(tmp_path):
    b = Builder()
    mesh = b.mesh(TRI)
    lin = b.node(mesh=mesh)
    stp = b.node(mesh=mesh)
    rot = b.node(mesh=mesh)
    cub = b.node(mesh=mesh)
    b.animation([
        (lin, "translation", [0, 1, 2], [[0, 0, 0], [2, 0, 0], [2, 4, 0]], "LINEAR"),
        (stp, "scale", [0, 1], [[1, 1, 1], [3, 3, 3]], "STEP"),
        (rot, "rotation", [0, 1], [[0, 0, 0, 1], [0, 0, -S45, -S45]], "LINEAR"),
        (cub, "translation", [0, 2], [[9, 9, 9], [0, 0, 0], [1, 0, 0], [0, 0, 0], [1, 0, 0], [9, 9, 9]], "CUBICSPLINE"),
    ])
    asset = GltfAsset(b.write(tmp_path / "a.glb"))
    assert asset.animations[0].start == 0 and asset.animations[0].end == 2
    v = asset.evaluate(0, [0.5, 1.0])
    tri = np.asarray(TRI, dtype=np.float64)
    np.testing.assert_allclose(v[0, 0:3], zup(tri + [1, 0, 0]), atol=1e-6)       # translation (1,0,0)
    np.testing.assert_allclose(v[0, 3:6], zup(tri), atol=1e-6)                   # STEP: still key 0
    np.testing.assert_allclose(v[1, 3:6], zup(tri * 3), atol=1e-6)               # STEP: key 1 at t = 1
    c, s = np.cos(np.pi / 4), np.sin(np.pi / 4)                                  # 45° about +Z at t = 0.5
    np.testing.assert_allclose(v[0, 6], zup([c, s, 0]), atol=1e-6)
    np.testing.assert_allclose(v[1, 6], zup([0, 1, 0]), atol=1e-6)
    np.testing.assert_allclose(v[1, 9:12], zup(tri + [0.75, 0, 0]), atol=1e-6)    # Hermite value at s = 0.5


# ============================================================================================ skins
def _skinned_builder():
    b = Builder()
    pos = np.array([[0, 0, 0], [0, 2, 0], [1, 1, 0], [0.4, 1, 0]], np.float32)
    prim = {"attributes": {
        "POSITION": b.accessor(pos),
        "JOINTS_0": b.accessor(np.array([[0, 0, 0, 0], [1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 0]]), UBYTE, "VEC4"),
        # unnormalised on purpose (row 2 sums to 2): the loader must renormalise
        "WEIGHTS_0": b.accessor(np.array([[1, 0, 0, 0], [1, 0, 0, 0], [1, 1, 0, 0], [0.25, 0, 0, 0]]), FLOAT, "VEC4"),
        "JOINTS_1": b.accessor(np.array([[0, 0, 0, 0]] * 3 + [[1, 0, 0, 0]]), USHORT, "VEC4"),
        "WEIGHTS_1": b.accessor(np.array([[0, 0, 0, 0]] * 3 + [[0.75, 0, 0, 0]]), FLOAT, "VEC4"),
    }, "indices": b.accessor(np.array([0, 1, 2, 0, 2, 3], np.uint8), UBYTE, "SCALAR")}
    b.g["meshes"].append({"primitives": [prim]})
    j1 = b.node(root=False, translation=[0, 1, 0])
    j0 = b.node(children=[j1])
    ibm = np.stack([np.eye(4), np.eye(4)])
    ibm[1, :3, 3] = [0, -1, 0]
    b.g["skins"] = [{"joints": [j0, j1], "inverseBindMatrices": b.accessor(ibm.transpose(0, 2, 1).reshape(2, 16),
                                                                             FLOAT, "MAT4")}]
    b.node(mesh=0, skin=0, translation=[10, 0, 0])  # a skinned mesh's own transform is ignored
    b.animation([(j1, "rotation", [0, 1], [[0, 0, 0, 1], [0, 0, S45, S45]], "LINEAR")], name="bend")
    return b


def test_two_joint_skin_by_hand(tmp_path):
    asset = GltfAsset(_skinned_builder().write(tmp_path / "skin.glb"))
    rest, bent = asset.evaluate(0, [0.0, 1.0])
    np.testing.assert_allclose(rest, zup([[0, 0, 0], [0, 2, 0], [1, 1, 0], [0.4, 1, 0]]), atol=1e-6)
    # joint 1 at (0,1,0) turned 90° about +Z: skin matrix = T(0,1,0)·Rz·T(0,-1,0)
    #   (0,2,0) -> (-1,1,0);  (1,1,0): ½·(1,1,0) + ½·(0,2,0) = (0.5,1.5,0)
    #   (0.4,1,0): 0.25·(0.4,1,0) + 0.75·(0,1.4,0) = (0.1,1.3,0)   (4+ weights via JOINTS_1/WEIGHTS_1)
    np.testing.assert_allclose(bent, zup([[0, 0, 0], [-1, 1, 0], [0.5, 1.5, 0], [0.1, 1.3, 0]]), atol=1e-6)


def test_skin_joint_out_of_range_is_an_asset_error(tmp_path):
    b = _skinned_builder()
    b.g["skins"][0]["joints"] = b.g["skins"][0]["joints"][:1]
    b.g["skins"][0].pop("inverseBindMatrices")
    with pytest.raises(AssetError, match="joint"):
        GltfAsset(b.write(tmp_path / "badskin.glb")).evaluate(0, [0.0])


# ============================================================================================ morphs
def test_morph_targets_default_and_animated_weights(tmp_path):
    b = Builder()
    pos = b.accessor(np.array(TRI, np.float32))
    t0 = b.accessor(np.array([[0, 1, 0], [0, 0, 0], [0, 0, 0]], np.float32))
    # target 1 as a sparse accessor without bufferView: only vertex 1 moves by (1, 0, 0)
    b.g["accessors"].append({"componentType": FLOAT, "type": "VEC3", "count": 3, "sparse": {
        "count": 1, "indices": {"bufferView": b.view(np.array([1], "<u4").tobytes()), "componentType": UINT},
        "values": {"bufferView": b.view(np.array([1, 0, 0], "<f4").tobytes())}}})
    t1 = len(b.g["accessors"]) - 1
    b.g["meshes"].append({"primitives": [{"attributes": {"POSITION": pos},
                                          "targets": [{"POSITION": t0}, {"POSITION": t1}]}], "weights": [0.5, 0.0]})
    n = b.node(mesh=0)
    b.node(mesh=0, translation=[0, 0, 5])
    b.animation([(n, "weights", [0, 1], [0, 0, 1, 0.5], "LINEAR")], name="morph")
    asset = GltfAsset(b.write(tmp_path / "morph.glb"))
    tri = np.asarray(TRI, np.float64)
    rest = asset.evaluate(None, [0.0])[0]
    np.testing.assert_allclose(rest[:3], zup(tri + [[0, 0.5, 0], [0, 0, 0], [0, 0, 0]]), atol=1e-6)
    half, key = asset.evaluate(0, [0.5, 1.0])
    # weights (0.5, 0.25) at t = 0.5 and (1, 0.5) at t = 1
    np.testing.assert_allclose(half[:3], zup(tri + [[0, 0.5, 0], [0.25, 0, 0], [0, 0, 0]]), atol=1e-6)
    np.testing.assert_allclose(key[:3], zup(tri + [[0, 1, 0], [0.5, 0, 0], [0, 0, 0]]), atol=1e-6)
    # the second, unanimated instance keeps the mesh's default weights
    np.testing.assert_allclose(key[3:], zup(tri + [[0, 0.5, 5], [0, 0, 5], [0, 0, 5]]), atol=1e-6)


# ============================================================================================ colours
def _png_data_uri(pixels):
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.asarray(pixels, np.uint8)).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def test_colours_from_factor_vertex_colour_and_texture(tmp_path):
    b = Builder()
    tex_pixels = [[[255, 0, 0], [0, 255, 0]], [[0, 0, 255], [255, 255, 255]]]
    b.g["images"] = [{"uri": _png_data_uri(tex_pixels)}]
    b.g["textures"] = [{"source": 0}]
    b.g["materials"] = [{"pbrMetallicRoughness": {"baseColorFactor": [0.5, 0.25, 1.0, 1.0]}},
                        {"pbrMetallicRoughness": {"baseColorTexture": {"index": 0}}}]
    plain = {"attributes": {"POSITION": b.accessor(np.array(TRI, np.float32)),
                            "COLOR_0": b.accessor(np.array([[255, 255, 255], [0, 255, 0], [255, 0, 0]]), UBYTE,
                                                  "VEC3", normalized=True)}, "material": 0}
    textured = {"attributes": {"POSITION": b.accessor(np.array(TRI, np.float32)),
                               "TEXCOORD_0": b.accessor(np.array([[0.25, 0.25], [0.75, 0.25], [0.25, 0.75]],
                                                                 np.float32), FLOAT, "VEC2")}, "material": 1}
    b.g["meshes"].append({"primitives": [plain, textured]})
    b.node(mesh=0)
    b.animation([(0, "translation", [0, 1], [[0, 0, 0], [1, 0, 0]], "LINEAR")])
    path = tmp_path / "col.gltf"
    path.write_text(b.gltf_embedded())  # .gltf JSON with data-URI buffer and image
    m = load_gltf(path, num_frames=24)[0]
    # sRGB(0.5·1) = 0.7354, sRGB(0.25) = 0.5371, sRGB(1) = 1 — IEC 61966-2-1 values
    np.testing.assert_allclose(m.vertex_colors[0], [0.735357, 0.537099, 1.0], atol=1e-5)
    np.testing.assert_allclose(m.vertex_colors[1], [0.0, 0.537099, 0.0], atol=1e-5)
    np.testing.assert_allclose(m.vertex_colors[2], [0.735357, 0.0, 0.0], atol=1e-5)
    np.testing.assert_allclose(linear_to_srgb(np.array([0.0, 0.0031308, 0.5, 1.0])),
                               [0.0, 0.04045, 0.735357, 1.0], atol=1e-5)
    assert len(m.textures) == 1 and m.textures[0].shape == (2, 2, 3)
    np.testing.assert_array_equal(m.face_texture, [-1, 0])
    # texel centres (uv origin top-left): vertex 0 of face 1 sits on red, vertex 1 on green
    np.testing.assert_allclose(m.color_at(np.array([1, 1, 1]), np.eye(3)), [[1, 0, 0], [0, 1, 0], [0, 0, 1]],
                               atol=1e-6)
    np.testing.assert_allclose(m.color_at(np.array([0]), np.array([[1.0, 0, 0]])), [[0.735357, 0.537099, 1.0]],
                               atol=1e-5)


def test_texture_transform_and_strip_fan_modes(tmp_path):
    b = Builder()
    b.g["images"] = [{"uri": _png_data_uri(np.zeros((2, 2, 3)))}]
    b.g["textures"] = [{"source": 0}]
    # uv' = offset + R(rotation)·S·uv (KHR_texture_transform); rotation 90°: (u, v) -> (v, -u)
    tt = {"KHR_texture_transform": {"offset": [0.5, 0.0], "scale": [0.5, 2.0], "rotation": np.pi / 2}}
    b.g["materials"] = [{"pbrMetallicRoughness": {"baseColorTexture": {"index": 0, "extensions": tt}}}]
    quad = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [1, 1, 0]], np.float32)
    uv = b.accessor(np.array([[1, 0], [0, 1], [0, 0], [1, 1]], np.float32), FLOAT, "VEC2")
    strip = {"attributes": {"POSITION": b.accessor(quad), "TEXCOORD_0": uv}, "mode": 5, "material": 0}
    fan = {"attributes": {"POSITION": b.accessor(quad)}, "mode": 6}
    b.g["meshes"].append({"primitives": [strip, fan]})
    b.node(mesh=0)
    asset = GltfAsset(b.write(tmp_path / "modes.glb"))
    # strip: (0,1,2), then (2,1,3) keeps the winding; fan: (1,2,0), (2,3,0); offset 4 for the 2nd primitive
    np.testing.assert_array_equal(asset.faces, [[0, 1, 2], [2, 1, 3], [5, 6, 4], [6, 7, 4]])
    # (1,0) -> S (0.5,0) -> R (0,-0.5) -> +offset (0.5,-0.5);  (0,1) -> (0,2) -> (2,0) -> (2.5,0)
    np.testing.assert_allclose(asset.uvs[:2], [[0.5, -0.5], [2.5, 0.0]], atol=1e-6)
    np.testing.assert_array_equal(asset.face_texture, [0, 0, -1, -1])


def test_sample_texture_bilinear_and_repeat():
    img = np.array([[[0], [255]], [[255], [255]]], np.uint8)
    np.testing.assert_allclose(sample_texture(img, np.array([[0.5, 0.5]]))[:, 0], [0.75])   # average of 4 texels
    np.testing.assert_allclose(sample_texture(img, np.array([[1.25, 0.25]]))[:, 0], [0.0])  # wraps to (0.25, 0.25)


# ============================================================================================ containers
def test_glb_gltf_external_bin_and_embedded_agree(tmp_path):
    b = _skinned_builder()
    glb = b.write(tmp_path / "s.glb")
    emb = tmp_path / "s_embedded.gltf"
    emb.write_text(b.gltf_embedded())
    (tmp_path / "data buffer.bin").write_bytes(bytes(b.bin))
    ext = tmp_path / "s_external.gltf"
    ext.write_text(json.dumps(dict(b.g, buffers=[{"byteLength": len(b.bin), "uri": "data%20buffer.bin"}])))
    t = [0.0, 0.3, 1.0]
    ref = GltfAsset(glb).evaluate(0, t)
    np.testing.assert_array_equal(GltfAsset(emb).evaluate(0, t), ref)
    np.testing.assert_array_equal(GltfAsset(ext).evaluate(0, t), ref)


def test_every_animation_is_its_own_sequence(tmp_path):
    b = Builder()
    n = b.node(mesh=b.mesh(TRI))
    b.animation([(n, "translation", [0, 2], [[0, 0, 0], [4, 0, 0]], "LINEAR")], name="slide")
    b.animation([(n, "scale", [1, 3], [[1, 1, 1], [2, 2, 2]], "LINEAR")], name="grow")
    b.animation([(n, "translation", [0, 2], [[0, 0, 0], [0, 0, 0]], "LINEAR")], name="still")
    path = b.write(tmp_path / "multi.glb")
    seqs = load_gltf(path, num_frames=8)
    assert [s.name for s in seqs] == ["slide", "grow"]  # "still" is skipped as static
    slide, grow = seqs
    np.testing.assert_allclose(slide.times, np.arange(8) / 24)  # consecutive frames at 24 fps
    np.testing.assert_allclose(grow.times, 1 + np.arange(8) / 24)  # range starts at the first key
    lo, hi = slide.bounds(0)
    assert (hi - lo).max() == pytest.approx(1.0) and np.allclose((lo + hi) / 2, 0, atol=1e-6)
    with pytest.raises(StaticSequenceError, match="still"):
        load_gltf(path, num_frames=8, on_static="raise")
    assert [s.name for s in load_gltf(path, num_frames=8, on_static="keep")][-1] == "still"
    assert [s.name for s in load_gltf(path, num_frames=8, animations=["grow"])] == ["grow"]
    assert [s.name for s in load_gltf(GltfAsset(path), num_frames=8)] == ["slide", "grow"]
    assert [s.name for s in load_animated_asset(path, num_frames=8)] == ["slide", "grow"]


# ============================================================================================ errors
def test_bad_files_give_clear_errors(tmp_path):
    empty = tmp_path / "empty.glb"
    empty.write_bytes(b"")
    with pytest.raises(AssetError, match="empty.glb.*empty"):
        load_gltf(empty)
    junk = tmp_path / "junk.glb"
    junk.write_bytes(np.random.default_rng(0).integers(0, 256, 300, dtype=np.uint8).tobytes())
    with pytest.raises(AssetError, match="junk.glb"):
        load_gltf(junk)
    b = Builder()
    b.node(mesh=b.mesh(TRI))
    good = b.glb()
    trunc = tmp_path / "trunc.glb"
    trunc.write_bytes(good[: len(good) - 10])
    with pytest.raises(AssetError, match="trunc.glb.*truncated"):
        load_gltf(trunc)
    static = b.write(tmp_path / "static.glb")
    with pytest.raises(AssetError, match="static.glb.*no animations"):
        load_gltf(static)
    with pytest.raises(AssetError, match="not found"):
        load_gltf(tmp_path / "missing.glb")
    draco = tmp_path / "draco.gltf"
    draco.write_text(json.dumps(dict(b.g, extensionsRequired=["KHR_draco_mesh_compression"])))
    with pytest.raises(AssetError, match="KHR_draco_mesh_compression"):
        load_gltf(draco)
    b.animation([(0, "translation", [0, 1], [[0, 0, 0]], "LINEAR")])  # one output for two keys
    with pytest.raises(AssetError, match="bad_anim.glb.*output values"):
        load_gltf(b.write(tmp_path / "bad_anim.glb"))
    nomesh = Builder()
    nomesh.node()
    with pytest.raises(AssetError, match="no triangle meshes"):
        load_gltf(nomesh.write(tmp_path / "nomesh.glb"))


# ============================================================================================ real asset
def test_robot_expressive_every_animation_moves(shared_assets):
    path = shared_assets / "RobotExpressive.glb"
    if not path.is_file():
        pytest.skip("RobotExpressive.glb is absent")
    asset = GltfAsset(path)
    names = ["Dance", "Death", "Idle", "Jump", "No", "Punch", "Running", "Sitting", "Standing", "ThumbsUp",
             "Walking", "WalkJump", "Wave", "Yes"]
    assert [a.name for a in asset.animations] == names
    assert len(asset.doc.gltf["skins"]) == 4
    seqs = load_gltf(path, num_frames=8, on_static="raise")
    assert [s.name for s in seqs] == names
    for s in seqs:
        assert s.vertices.shape == (8, asset.num_vertices, 3) and np.isfinite(s.vertices).all()
        assert mean_displacement(s) >= 0.01, s.name
        lo, hi = s.bounds(0)
        assert (hi - lo).max() == pytest.approx(1.0, abs=1e-5)
        np.testing.assert_allclose((lo + hi) / 2, 0, atol=1e-5)
        for t in range(s.num_frames):  # no part flies off: every pose stays robot-sized
            lo, hi = s.bounds(t)
            assert (hi - lo).max() < 1.5, (s.name, t)
    idle = seqs[names.index("Idle")]
    lo, hi = idle.bounds(0)
    assert np.argmax(hi - lo) == 2  # a standing robot is tallest along Z after the Y-up -> Z-up turn
    # sampled at 24 fps: consecutive frames for the long Dance
    np.testing.assert_allclose(seqs[0].times, np.arange(8) / 24, atol=1e-9)
    colours = np.unique(np.round(seqs[0].vertex_colors, 3), axis=0)
    assert len(colours) >= 3 and np.ptp(colours) > 0.3  # grey, orange, black materials
    # with upstream's 24 frames, the 10-frame Sitting and Standing clips are "too short" (< 12 frames)
    long_seqs = load_gltf(path, num_frames=24, animations=["Sitting", "Standing", "Jump"])
    assert [s.name for s in long_seqs] == ["Jump"]


# ============================================================================================ sampling
def _line_sequence(speed, n=100):
    """A unit segment translated along x by `speed` per frame (frames in [0, n))."""
    base = np.array([[0.0, 0, 0], [1.0, 0, 0], [0.0, 1.0, 0]])

    def evaluate(frames):
        return base[None] + np.asarray(frames)[:, None, None] * np.array([speed, 0, 0])

    def build(v, frames):
        return AnimatedMesh(v, [[0, 1, 2]], np.ones((3, 3)), None, [], [-1], np.asarray(frames, float))

    return evaluate, build


def test_mean_displacement_by_hand():
    v = np.zeros((3, 2, 3))
    v[1, 0] = [3, 4, 0]     # frame 1: vertex 0 moved 5, vertex 1 still -> mean 2.5
    v[2, :] = [0, 0, 1]     # frame 2: both moved 1 -> mean 1
    assert mean_displacement(v) == pytest.approx((2.5 + 1) / 2)
    assert mean_displacement(v[:1]) == 0.0


def test_sampling_consecutive_then_uniform_then_static():
    ev, build = _line_sequence(0.01)  # moves enough at the native rate
    m = sample_animation(ev, build, 0, 99, num_frames=24)
    np.testing.assert_allclose(m.times, np.arange(24))
    ev, build = _line_sequence(0.0005)  # too slow frame-to-frame, but moves over the whole range
    m = sample_animation(ev, build, 0, 99, num_frames=24)
    np.testing.assert_allclose(m.times, np.linspace(0, 99, 24))
    ev, build = _line_sequence(0.00001)
    with pytest.raises(StaticSequenceError, match="static"):
        sample_animation(ev, build, 0, 99, num_frames=24)
    assert sample_animation(ev, build, 0, 99, num_frames=24, keep_static=True).num_frames == 24
    ev, build = _line_sequence(0.1)
    with pytest.raises(StaticSequenceError, match="fewer than"):
        sample_animation(ev, build, 0, 11, num_frames=24)  # 11 frames < 24 // 2
    np.testing.assert_allclose(frame_positions(0, 5, 8, "consecutive"), [0, 1, 2, 3, 4, 5, 5, 5])
    np.testing.assert_allclose(frame_positions(0, 10, 4, "uniform", discrete=True), [0, 3, 6, 10])


def test_normalisation_uses_first_frame_only():
    ev, build = _line_sequence(0.01)
    m = sample_animation(ev, build, 0, 99, num_frames=24)
    # frame 0 is the unit triangle: scale 1, centre (0.5, 0.5, 0) moved to the origin
    np.testing.assert_allclose(m.vertices[0], [[-0.5, -0.5, 0], [0.5, -0.5, 0], [-0.5, 0.5, 0]], atol=1e-6)
    np.testing.assert_allclose(m.vertices[23, 0], [-0.5 + 0.23, -0.5, 0], atol=1e-6)


# ============================================================================================ AnimatedMesh
def test_animated_mesh_helpers_and_validation():
    v = np.zeros((3, 3, 3), np.float32)
    v[:, 1, 0] = [2, 4, 6]
    v[:, 2, 1] = 1
    m = AnimatedMesh(v, [[0, 1, 2]], np.ones((3, 3)), None, [], [-1], np.arange(3.0), name="m")
    assert m.num_frames == 3 and m.frame(2)[1, 0] == 6
    sub = m.subsample_frames([2, 0])
    np.testing.assert_allclose(sub.times, [2, 0])
    n = m.normalized(None)  # all frames: x in [0, 6] -> scale 1/6
    lo, hi = n.bounds()
    np.testing.assert_allclose([lo, hi], [[-0.5, -1 / 12, 0], [0.5, 1 / 12, 0]], atol=1e-6)
    with pytest.raises(ValueError, match="face indices"):
        AnimatedMesh(v, [[0, 1, 3]], np.ones((3, 3)), None, [], [-1], np.arange(3.0))
    with pytest.raises(ValueError, match="uvs"):
        AnimatedMesh(v, [[0, 1, 2]], np.ones((3, 3)), None, [np.zeros((2, 2, 3), np.uint8)], [0], np.arange(3.0))
    with pytest.raises(ValueError, match="times"):
        AnimatedMesh(v, [[0, 1, 2]], np.ones((3, 3)), None, [], [-1], np.arange(2.0))


# ============================================================================================ OBJ / PLY
def test_read_obj_polygons_negative_indices_colours_and_uvs(tmp_path):
    (tmp_path / "m.mtl").write_text("newmtl red\nKd 1 0 0\nnewmtl tex\nmap_Kd t.png\n")
    from PIL import Image

    Image.fromarray(np.full((2, 2, 3), 200, np.uint8)).save(tmp_path / "t.png")
    (tmp_path / "a.obj").write_text(
        "# quad + triangle\nmtllib m.mtl\n"
        "v 0 0 0 1 0 0\nv 1 0 0 0 1 0\nv 1 1 0 0 0 1\nv 0 1 0 1 1 1\nv 0 0 1 0.5 0.5 0.5\n"
        "vt 0 0\nvt 1 0\nvt 1 1\nvt 0 1\n"
        "usemtl red\nf 1 2 3 4\nusemtl tex\nf -5/1 -4/2 -1/4\n")
    fr = read_obj(tmp_path / "a.obj")
    assert fr.faces.shape == (3, 3)
    tri = fr.vertices[fr.faces]
    # the quad is split into (1,2,3), (1,3,4); the textured triangle is (1,2,5)
    np.testing.assert_allclose(tri[0], [[0, 0, 0], [1, 0, 0], [1, 1, 0]])
    np.testing.assert_allclose(tri[1], [[0, 0, 0], [1, 1, 0], [0, 1, 0]])
    np.testing.assert_allclose(tri[2], [[0, 0, 0], [1, 0, 0], [0, 0, 1]])
    np.testing.assert_array_equal(fr.face_texture, [-1, -1, 0])
    np.testing.assert_allclose(fr.uvs[fr.faces[2]], [[0, 1], [1, 1], [0, 0]])  # v flipped to top-left origin
    np.testing.assert_allclose(fr.colors[fr.faces[0]], [[1, 0, 0], [0, 0, 0], [0, 0, 0]])  # Kd red × colour


def test_read_ply_binary_big_endian_ascii_and_quads(tmp_path):
    head = ("ply\nformat binary_big_endian 1.0\ncomment hi\nelement vertex 4\nproperty float x\nproperty float y\n"
            "property float z\nproperty uchar red\nproperty uchar green\nproperty uchar blue\n"
            "element face 1\nproperty list uchar int vertex_indices\nend_header\n").encode()
    body = b"".join(struct.pack(">fffBBB", *p) for p in [(0, 0, 0, 255, 0, 0), (1, 0, 0, 0, 255, 0),
                                                          (1, 1, 0, 0, 0, 255), (0, 1, 0, 255, 255, 255)])
    body += struct.pack(">Biiii", 4, 0, 1, 2, 3)
    (tmp_path / "b.ply").write_bytes(head + body)
    fr = read_ply(tmp_path / "b.ply")
    np.testing.assert_array_equal(fr.faces, [[0, 1, 2], [0, 2, 3]])
    np.testing.assert_allclose(fr.colors[2], [0, 0, 1])
    (tmp_path / "a.ply").write_text("ply\nformat ascii 1.0\nelement vertex 3\nproperty double x\nproperty double y\n"
                                    "property double z\nelement face 1\nproperty list uchar uint vertex_index\n"
                                    "end_header\n0 0 0\n2 0 0\n0 3 0\n3 2 1 0\n")
    fr = read_ply(tmp_path / "a.ply")
    np.testing.assert_allclose(fr.vertices[2], [0, 3, 0])
    np.testing.assert_array_equal(fr.faces, [[2, 1, 0]])
    assert fr.colors is None


def test_mesh_sequence_folder_round_trip_natural_order(tmp_path):
    rng = np.random.default_rng(0)
    faces = np.array([[0, 1, 2], [1, 3, 2], [0, 3, 1]])
    verts = rng.normal(size=(12, 4, 3)).astype(np.float32)
    cols = rng.random((4, 3)).astype(np.float32)
    for kind in ("obj", "ply", "ascii"):
        d = tmp_path / kind
        d.mkdir()
        for t in range(12):  # frame10 must come after frame9, not after frame1
            if kind == "obj":
                save_obj(d / f"frame{t}.obj", verts[t], faces, cols)
            else:
                save_ply(d / f"frame{t}.ply", verts[t], faces, cols, binary=kind == "ply")
        m = load_mesh_sequence(d)
        assert m.name == kind
        np.testing.assert_allclose(m.vertices, verts, atol=1e-6)
        np.testing.assert_array_equal(m.faces, faces)
        np.testing.assert_allclose(m.vertex_colors, cols, atol=0.5 / 255 + 1e-6)
        np.testing.assert_allclose(m.times, np.arange(12))
    s = sample_sequence(m, num_frames=4, min_displacement=0.0)
    np.testing.assert_allclose(s.times, [0, 1, 2, 3])
    (s,) = load_animated_asset(tmp_path / "obj", num_frames=6)  # random frames move a lot: consecutive
    np.testing.assert_allclose(s.times, np.arange(6))
    lo, hi = s.bounds(0)
    assert (hi - lo).max() == pytest.approx(1.0)


def test_mesh_sequence_errors(tmp_path):
    with pytest.raises(AssetError, match="no .obj or .ply"):
        load_mesh_sequence(tmp_path)
    faces = np.array([[0, 1, 2]])
    save_obj(tmp_path / "f0.obj", np.eye(3), faces)
    save_obj(tmp_path / "f1.obj", np.eye(4)[:, :3], np.array([[0, 1, 2], [1, 2, 3]]))
    with pytest.raises(AssetError, match="f1.obj.*topology"):
        load_mesh_sequence(tmp_path)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "f0.ply").write_bytes(b"ply\nformat binary_little_endian 1.0\nelement vertex 5\nproperty float x\n"
                                 b"property float y\nproperty float z\nend_header\n\x00\x01")
    with pytest.raises(AssetError, match="f0.ply"):
        load_mesh_sequence(bad)
    (bad / "f0.ply").write_bytes(b"")
    with pytest.raises(AssetError, match="empty"):
        load_mesh_sequence(bad)
    (bad / "f0.ply").unlink()
    (bad / "f0.obj").write_text("v 0 0 0\nv 1 zero 0\n")
    with pytest.raises(AssetError, match="line 2"):
        load_mesh_sequence(bad)
