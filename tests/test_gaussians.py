import logging
import math

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from gvf.gaussians import Gaussians, load_ply, pad_tensor14, save_ply
from gvf.gaussians import model as M


def _np_sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _np_softplus(x):
    return np.log1p(np.exp(x))


def _random_gaussians(n=50, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64).to(dtype)  # noqa: E731
    return Gaussians(xyz=r(n, 3) * 0.3, features_dc=r(n, 3), opacity_raw=r(n, 1) * 2, scaling_raw=r(n, 3) * 2, rotation_raw=r(n, 4) * 0.3)


def test_constants():
    assert M.SH_C0 == pytest.approx(1 / (2 * math.sqrt(math.pi)), rel=1e-15)
    assert M.OPACITY_LOGIT_BIAS == pytest.approx(-2.197225, abs=1e-6)
    assert M.SCALING_RAW_BIAS == pytest.approx(-5.519460, abs=1e-6)
    assert _np_softplus(M.SCALING_RAW_BIAS) == pytest.approx(0.004, rel=1e-12)


def test_activations_closed_form():
    g = _random_gaussians(dtype=torch.float64)
    op = _np_sigmoid(g.opacity_raw.numpy() + math.log(0.1 / 0.9))
    sc = np.sqrt(_np_softplus(g.scaling_raw.numpy() + math.log(math.expm1(0.004))) ** 2 + 0.0009**2)
    q = g.rotation_raw.numpy() + np.array([1.0, 0, 0, 0])
    q = q / np.linalg.norm(q, axis=1, keepdims=True)
    rgb = np.maximum(0.5 + 0.28209479177387814 * g.features_dc.numpy(), 0.0)
    np.testing.assert_allclose(g.opacity.numpy(), op, rtol=1e-12)
    np.testing.assert_allclose(g.scaling.numpy(), sc, rtol=1e-12)
    np.testing.assert_allclose(g.rotation.numpy(), q, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(g.rgb.numpy(), rgb, rtol=1e-12)
    assert (g.scaling >= 9e-4).all()
    # zero raw parameters -> opacity 0.1, scale sqrt(0.004² + 0.0009²), identity rotation
    e = Gaussians.empty(2, dtype=torch.float64)
    np.testing.assert_allclose(e.opacity.numpy(), 0.1, rtol=1e-12)
    np.testing.assert_allclose(e.scaling.numpy(), math.hypot(0.004, 0.0009), rtol=1e-12)
    np.testing.assert_allclose(e.rotation.numpy(), [[1, 0, 0, 0]] * 2)


def test_from_activated_round_trip():
    g = _random_gaussians(dtype=torch.float64)
    q = g.rotation  # unit quaternions round-trip exactly through the identity offset
    h = Gaussians.from_activated(g.xyz, g.features_dc, g.opacity, g.scaling, q)
    for a, b in [(h.opacity, g.opacity), (h.scaling, g.scaling), (h.rotation, g.rotation)]:
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(h.opacity_raw, g.opacity_raw, rtol=1e-8, atol=1e-8)
    torch.testing.assert_close(h.scaling_raw, g.scaling_raw, rtol=1e-6, atol=1e-6)
    t = g.to_tensor14()
    torch.testing.assert_close(Gaussians.from_tensor14(t).to_tensor14(), t, rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="floor"):
        Gaussians.from_activated(g.xyz, g.features_dc, g.opacity, torch.full_like(g.scaling, 9e-4), q)
    with pytest.raises(ValueError, match="opacity"):
        Gaussians.from_activated(g.xyz, g.features_dc, torch.ones_like(g.opacity), g.scaling, q)


def test_tensor14_layout():
    g = _random_gaussians(7)
    t = g.to_tensor14()
    assert t.shape == (7, 14)
    torch.testing.assert_close(t[:, 0:3], g.xyz)
    torch.testing.assert_close(t[:, 3:6], g.features_dc)
    torch.testing.assert_close(t[:, 6:7], g.opacity)
    torch.testing.assert_close(t[:, 7:10], g.scaling)
    torch.testing.assert_close(t[:, 10:14], g.rotation)


def test_with_variation_applies_each_channel_at_its_stage():
    g = _random_gaussians(5, dtype=torch.float64)
    d = torch.randn(5, 14, dtype=torch.float64) * 0.2
    v = g.with_variation(d)
    dn = d.numpy()
    # hand-written spec formulas (upstream get_*_with_delta)
    np.testing.assert_allclose(v.xyz.numpy(), g.xyz.numpy() + dn[:, 0:3])
    sc = np.sqrt(_np_softplus(g.scaling_raw.numpy() + M.SCALING_RAW_BIAS + dn[:, 3:6]) ** 2 + 0.0009**2)
    np.testing.assert_allclose(v.scaling.numpy(), sc, rtol=1e-12)
    q = g.rotation_raw.numpy() + np.array([1.0, 0, 0, 0]) + dn[:, 6:10]
    np.testing.assert_allclose(v.rotation.numpy(), q / np.linalg.norm(q, axis=1, keepdims=True), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(v.features_dc.numpy(), g.features_dc.numpy() + dn[:, 10:13])
    np.testing.assert_allclose(v.opacity.numpy(), _np_sigmoid(g.opacity_raw.numpy() + M.OPACITY_LOGIT_BIAS + dn[:, 13:14]), rtol=1e-12)
    # differentiable in the delta and in the static parameters
    d32 = torch.zeros(5, 14, requires_grad=True)
    base = _random_gaussians(5).requires_grad_()
    out = base.with_variation(d32)
    (out.to_tensor14().sum()).backward()
    assert d32.grad is not None and (d32.grad != 0).any() and base.scaling_raw.grad is not None
    with pytest.raises(ValueError, match="delta"):
        g.with_variation(torch.zeros(4, 14, dtype=torch.float64))


def test_container_helpers():
    g = _random_gaussians(10)
    assert len(g) == 10 and g.dtype == torch.float32 and g.device.type == "cpu"
    sub = g[torch.tensor([1, 3])]
    torch.testing.assert_close(sub.xyz, g.xyz[[1, 3]])
    assert len(g[2:5]) == 3 and len(g[4]) == 1 and len(g[g.opacity[:, 0] > 2.0]) == 0
    cat = Gaussians.cat([g[:4], g[4:]])
    torch.testing.assert_close(cat.to_tensor14(), g.to_tensor14())
    g64 = g.to(torch.float64)
    assert g64.dtype == torch.float64 and g64.rotation_raw.dtype == torch.float64
    c = g.clone()
    c.xyz += 1
    assert not torch.equal(c.xyz, g.xyz)
    with pytest.raises(ValueError, match="scaling_raw"):
        Gaussians(g.xyz, g.features_dc, g.opacity_raw, g.scaling_raw[:, :2], g.rotation_raw)
    with pytest.raises(ValueError, match="rows"):
        Gaussians(g.xyz, g.features_dc, g.opacity_raw[:3], g.scaling_raw, g.rotation_raw)


def test_pad_tensor14_layout():
    a, b = torch.rand(4, 14), torch.rand(2, 14)
    padded, lengths = pad_tensor14([a, b])
    assert padded.shape == (2, 4, 14) and lengths.tolist() == [4, 2] and lengths.dtype == torch.int64
    assert torch.equal(padded[0], a) and torch.equal(padded[1, :2], b)
    expected = torch.zeros(2, 14)
    expected[:, 10] = 1.0
    assert torch.equal(padded[1, 2:], expected)


def test_pad_tensor14_matches_fixture(fixtures_dir):
    t = load_file(str(fixtures_dir / "motion_vae_encode.safetensors"))
    n = len([k for k in t if k.startswith("gs_")])
    padded, lengths = pad_tensor14([t[f"gs_{i}"] for i in range(n)])
    assert torch.equal(padded, t["forward_queries"])
    assert torch.equal(lengths, t["forward_valid_lengths"].to(torch.int64))


def test_static_vae_fixture_fields(fixtures_dir):
    t = load_file(str(fixtures_dir / "static_vae.safetensors"))
    i = 0
    while f"rep{i}.xyz" in t:
        p = f"rep{i}."
        g = Gaussians(
            xyz=t[p + "raw_xyz"] - 0.5,  # aabb [-0.5]*3 + [1]*3
            features_dc=t[p + "raw_features_dc"][:, 0],
            opacity_raw=t[p + "raw_opacity"],
            scaling_raw=t[p + "raw_scaling"],
            rotation_raw=t[p + "raw_rotation"],
        )
        expected = torch.cat([t[p + "xyz"], t[p + "features_dc"][:, 0], t[p + "opacity"], t[p + "scaling"], t[p + "rotation"]], -1)
        torch.testing.assert_close(g.to_tensor14(), expected, rtol=1e-6, atol=1e-7)
        i += 1
    assert i >= 1


# ---------------------------------------------------------------------------------------------- PLY


def test_ply_exact_round_trip(tmp_path):
    g = _random_gaussians(33)
    path = tmp_path / "sub" / "g.ply"
    save_ply(g, path)
    h = load_ply(path)
    for name in ("xyz", "features_dc", "opacity_raw", "scaling_raw", "rotation_raw"):
        assert torch.equal(getattr(h, name), getattr(g, name)), name
    assert [p.name for p in path.parent.iterdir()] == ["g.ply"]  # no temp file left behind


def test_ply_viewer_fields(tmp_path):
    g = _random_gaussians(6)
    path = tmp_path / "g.ply"
    save_ply(g, path)
    raw = path.read_bytes()
    header, body = raw.split(b"end_header\n", 1)
    assert b"format binary_little_endian 1.0" in header and b"element vertex 6" in header
    names = [ln.split()[-1].decode() for ln in header.splitlines() if ln.startswith(b"property")]
    assert names[:17] == ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2", "opacity",
                          "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]  # fmt: skip
    data = np.frombuffer(body, dtype="<f4").reshape(6, len(names))
    col = {n: data[:, i] for i, n in enumerate(names)}
    np.testing.assert_allclose(_np_sigmoid(col["opacity"].astype(np.float64)), g.opacity[:, 0].numpy(), rtol=1e-5)
    np.testing.assert_allclose(np.exp(np.stack([col[f"scale_{i}"] for i in range(3)], 1)), g.scaling.numpy(), rtol=1e-5)
    np.testing.assert_allclose(np.stack([col[f"rot_{i}"] for i in range(4)], 1), g.rotation.numpy(), rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(col["nx"], 0)


def _write_plain_3dgs(path, rows, names, fmt="binary_little_endian"):
    header = f"ply\nformat {fmt} 1.0\nelement vertex {len(rows)}\n"
    header += "".join(f"property float {n}\n" for n in names) + "end_header\n"
    with open(path, "wb") as f:
        f.write(header.encode())
        if fmt == "ascii":
            f.write("".join(" ".join(repr(float(x)) for x in r) + "\n" for r in rows).encode())
        else:
            f.write(np.asarray(rows, dtype="<f4").tobytes())


def test_load_plain_3dgs_ply(tmp_path, caplog):
    names = ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"] + [f"f_rest_{i}" for i in range(3)]
    names += ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    # an unnormalised quaternion as 3DGS training leaves it; a scale below the floor in the 2nd row
    rows = [
        [0.1, -0.2, 0.3, 0, 0, 0, 0.5, -0.5, 1.0, 9, 9, 9, 0.0, math.log(0.01), math.log(0.02), math.log(0.05), 2.0, 0.0, 0.0, 0.0],
        [0.0, 0.0, 0.0, 0, 0, 0, 0.0, 0.0, 0.0, 9, 9, 9, -3.0, math.log(1e-4), math.log(0.1), math.log(0.1), 0.5, 0.5, 0.5, 0.5],
    ]
    for fmt in ("binary_little_endian", "ascii"):
        path = tmp_path / f"plain_{fmt}.ply"
        _write_plain_3dgs(path, rows, names, fmt)
        with caplog.at_level(logging.WARNING, logger="gvf.gaussians.ply"):
            g = load_ply(path)
        assert "floor" in caplog.text and "f_rest" in caplog.text
        caplog.clear()
        assert len(g) == 2 and g.dtype == torch.float32
        np.testing.assert_allclose(g.xyz[0].numpy(), [0.1, -0.2, 0.3], rtol=1e-6)
        np.testing.assert_allclose(g.features_dc[0].numpy(), [0.5, -0.5, 1.0], rtol=1e-6)
        np.testing.assert_allclose(g.opacity[:, 0].numpy(), _np_sigmoid(np.array([0.0, -3.0])), rtol=1e-5)
        np.testing.assert_allclose(g.scaling[0].numpy(), [0.01, 0.02, 0.05], rtol=1e-4)
        assert float(g.scaling[1, 0]) == pytest.approx(9e-4, rel=1e-3)  # clamped just above the floor
        np.testing.assert_allclose(g.rotation.numpy(), [[1, 0, 0, 0], [0.5, 0.5, 0.5, 0.5]], atol=1e-6)


def test_mesh_and_garbage_rejected(tmp_path):
    mesh = tmp_path / "mesh.ply"
    header = (
        "ply\nformat binary_little_endian 1.0\nelement vertex 3\nproperty float x\nproperty float y\n"
        "property float z\nelement face 1\nproperty list uchar int vertex_indices\nend_header\n"
    )
    mesh.write_bytes(header.encode() + np.zeros(9, "<f4").tobytes() + bytes([3]) + np.arange(3, dtype="<i4").tobytes())
    with pytest.raises(ValueError, match="mesh.ply.*opacity"):
        load_ply(mesh)
    junk = tmp_path / "junk.ply"
    junk.write_bytes(b"\x89PNG....")
    with pytest.raises(ValueError, match="junk.ply.*not a PLY"):
        load_ply(junk)
    with pytest.raises(FileNotFoundError):
        load_ply(tmp_path / "missing.ply")
