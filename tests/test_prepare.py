"""Sample preparation: camera set + JSON conventions, surface points, voxelisation, voxel features, CLI."""
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from gvf.data.prepare import PrepareConfig, discover_sources, run_prepare
from gvf.data.surface import point_deltas, sample_surface, surface_points
from gvf.data.views import (FIXED_VIEW_DIRECTIONS, load_view_json, sequence_views, track_to_c2w, view_metadata,
                            write_view_json)
from gvf.data.voxelize import voxel_centers, voxel_features, voxel_indices, voxelize_surface

ROOT = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------------------- cameras
def _blender_track_quat_negz_y(direction):
    """Independent reference: Blender's ``Vector.to_track_quat('-Z', 'Y')`` (BLI ``vec_to_quat``) -> R."""
    vec = -np.asarray(direction, dtype=np.float64)  # the Python wrapper negates, track '-Z' copies
    L = np.linalg.norm(vec)
    axis = np.array([-vec[1], vec[0], 0.0])
    if abs(vec[0]) + abs(vec[1]) < 1e-4:
        axis = np.array([1.0, 0.0, 0.0])
    axis /= np.linalg.norm(axis)
    ang = math.acos(np.clip(vec[2] / L, -1, 1))
    q = np.array([math.cos(ang / 2), *(axis * math.sin(ang / 2))])

    def to_mat(q):  # columns = images of the x, y, z axes
        w, x, y, z = q
        return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                         [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                         [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])

    fp = to_mat(q)[:, 2]
    a = -0.5 * math.atan2(-fp[0], -fp[1])
    q2 = np.array([math.cos(a), *(vec * math.sin(a) / L)])
    w1, x1, y1, z1 = q2
    w2, x2, y2, z2 = q
    prod = np.array([w1 * w2 - x1 * x2 - y1 * y2 - z1 * z2, w1 * x2 + x1 * w2 + y1 * z2 - z1 * y2,
                     w1 * y2 + y1 * w2 + z1 * x2 - x1 * z2, w1 * z2 + z1 * w2 + x1 * y2 - y1 * x2])
    return to_mat(prod)


def test_camera_orientation_matches_blender_track_quat():
    rng = np.random.default_rng(3)
    dirs = list(FIXED_VIEW_DIRECTIONS.values()) + list(rng.normal(size=(20, 3)) * [1, 1, 0.5])
    for d in dirs:
        c2w = track_to_c2w(d, 2.0)
        assert np.allclose(c2w[:3, :3], _blender_track_quat_negz_y(d), atol=1e-9)
        assert np.allclose(c2w[:3, 3], -2.0 * np.asarray(d) / np.linalg.norm(d))


def test_view_set_layout():
    vs = sequence_views(3, 12, seed=5)
    assert vs.c2w.shape == (3, 12, 4, 4)
    # front camera at (0, -2, 0); fixed views identical over frames; random ones differ
    assert np.allclose(vs.c2w[0, 0, :3, 3], [0, -2, 0])
    assert np.allclose(vs.c2w[:, :8], vs.c2w[:1, :8])
    assert not np.allclose(vs.c2w[0, 8:], vs.c2w[1, 8:])
    assert np.allclose(np.linalg.norm(vs.c2w[..., :3, 3], axis=-1), 2.0)
    # random polar angle in [75, 135] degrees: viewing direction d = -position/2, cos(polar) = d_z
    polar = np.degrees(np.arccos(-vs.c2w[:, 8:, 2, 3] / 2.0))
    assert polar.min() >= 75 - 1e-9 and polar.max() <= 135 + 1e-9
    assert np.array_equal(sequence_views(3, 12, seed=5).c2w, vs.c2w)  # reproducible


def test_view_json_roundtrip_and_upstream_reader(tmp_path):
    vs = sequence_views(1, 10, seed=0)
    meta = view_metadata(vs.c2w[0, 9], vs.fov, vs.fov, (np.full(3, -0.5), np.full(3, 0.5)))
    write_view_json(tmp_path / "v.json", meta)
    raw = json.loads((tmp_path / "v.json").read_text())
    assert raw["format_version"] == 6 and raw["max_depth"] == 5.0
    M = np.array(raw["matrix_world"])
    assert np.allclose(raw["origin"], M[:3, 3]) and np.allclose(raw["x"], M[:3, 0])
    assert np.allclose(raw["y"], -M[:3, 1]) and np.allclose(raw["z"], -M[:3, 2])
    E, K = load_view_json(tmp_path / "v.json")
    # upstream reader, written out independently: flip columns 1:3, invert; fx = 0.5 / tan(fov / 2)
    c2w = M.copy()
    c2w[:3, 1:3] *= -1
    assert np.allclose(E.numpy(), np.linalg.inv(c2w), atol=1e-6)
    assert np.allclose(K.numpy(), [[0.5 / math.tan(raw["x_fov"] / 2), 0, 0.5], [0, 0.5 / math.tan(raw["x_fov"] / 2), 0.5], [0, 0, 1]])
    # the front camera sees +X to the right and +Z up
    E0, K0 = load_view_json_from(vs, 0, tmp_path)
    p = torch.tensor([[0.3, 0.0, 0.0], [0.0, 0.0, 0.3]]) @ E0[:3, :3].T + E0[:3, 3]
    uv = (p @ K0.T)[:, :2] / p[:, 2:]
    assert uv[0, 0] > 0.5 and abs(uv[0, 1] - 0.5) < 1e-6 and uv[1, 1] < 0.5
    with pytest.raises(ValueError, match="not a readable upstream view JSON"):
        (tmp_path / "bad.json").write_text("{}")
        load_view_json(tmp_path / "bad.json")


def load_view_json_from(vs, v, tmp_path):
    write_view_json(tmp_path / f"f{v}.json", view_metadata(vs.c2w[0, v], vs.fov))
    return load_view_json(tmp_path / f"f{v}.json")


# ----------------------------------------------------------------------------------------- surface
def _point_triangle_distance(p, a, b, c):
    """Brute-force distance of points (N, 3) to one triangle via a fine barycentric grid + plane check."""
    n = np.cross(b - a, c - a)
    n /= np.linalg.norm(n)
    plane = np.abs((p - a) @ n)
    # in-triangle test of the projection
    q = p - ((p - a) @ n)[:, None] * n
    v0, v1, v2 = c - a, b - a, q - a
    d00, d01, d11 = v0 @ v0, v0 @ v1, v1 @ v1
    d20, d21 = v2 @ v0, v2 @ v1
    den = d00 * d11 - d01 * d01
    u = (d11 * d20 - d01 * d21) / den
    w = (d00 * d21 - d01 * d20) / den
    inside = (u >= -1e-9) & (w >= -1e-9) & (u + w <= 1 + 1e-9)
    return np.where(inside, plane, np.inf)


def test_surface_points_lie_on_every_frame():
    from gvf.data.synthetic import make_procedural_object

    mesh = make_procedural_object(3, num_frames=4)
    static, deltas = point_deltas(mesh, 300, seed=1)
    assert static.shape == (300, 3) and deltas.shape == (4, 300, 3)
    assert np.abs(deltas[0]).max() == 0
    for t in (0, 3):
        pts = static + deltas[t]
        V = mesh.vertices[t].astype(np.float64)
        best = np.full(len(pts), np.inf)
        for f in mesh.faces:
            if np.linalg.norm(np.cross(V[f[1]] - V[f[0]], V[f[2]] - V[f[0]])) < 1e-12:
                continue
            best = np.minimum(best, _point_triangle_distance(pts.astype(np.float64), V[f[0]], V[f[1]], V[f[2]]))
        assert best.max() < 1e-5, t
    # the same material points move: frame-3 points differ from frame 0
    assert np.abs(deltas[3]).max() > 1e-3


def test_surface_sampling_is_area_weighted_and_seeded():
    v = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [3, 0, 0], [0, 3, 0]], dtype=np.float64)
    f = np.array([[0, 1, 2], [0, 3, 4]])  # areas 0.5 and 4.5
    s = sample_surface(v, f, 20000, seed=0)
    frac = (s.face == 1).mean()
    assert abs(frac - 0.9) < 0.01
    assert np.all(s.bary >= 0) and np.allclose(s.bary.sum(1), 1)
    pts = surface_points(v, f, s)
    assert pts[:, 2].max() == 0 and (pts[:, :2].sum(1) <= 3 + 1e-6).all()
    assert np.array_equal(sample_surface(v, f, 50, seed=4).face, sample_surface(v, f, 50, seed=4).face)


# ----------------------------------------------------------------------------------------- voxels
def _box_mesh(lo, hi):
    c = np.array([[x, y, z] for x in (0, 1) for y in (0, 1) for z in (0, 1)], float)
    v = np.asarray(lo) + c * (np.asarray(hi) - np.asarray(lo))
    quads = [(0, 1, 3, 2), (4, 6, 7, 5), (0, 4, 5, 1), (2, 3, 7, 6), (0, 2, 6, 4), (1, 5, 7, 3)]
    f = [t for a, b, cc, d in quads for t in ((a, b, cc), (a, cc, d))]
    return v, np.array(f)


def test_voxelize_box_matches_analytic_shell():
    lo, hi = np.array([-0.301, -0.207, -0.113]), np.array([0.289, 0.198, 0.121])  # off the grid planes
    v, f = _box_mesh(lo, hi)
    got = voxelize_surface(v, f, 64).numpy()
    i0, i1 = np.floor((lo + 0.5) * 64).astype(int), np.floor((hi + 0.5) * 64).astype(int)
    grid = np.stack(np.meshgrid(*[np.arange(a, b + 1) for a, b in zip(i0, i1)], indexing="ij"), -1).reshape(-1, 3)
    shell = grid[((grid == i0) | (grid == i1)).any(1)]
    assert len(got) == len(shell)
    assert set(map(tuple, got)) == set(map(tuple, shell))
    assert len(np.unique(got, axis=0)) == len(got)


def test_voxelize_sphere_matches_analytic_shell():
    # finely tessellated sphere vs voxels whose box meets the exact sphere: min dist <= r <= max dist
    r, n, m, R = 0.41, 90, 180, 32
    th, ph = np.linspace(0, np.pi, n), np.linspace(0, 2 * np.pi, m, endpoint=False)
    v = r * np.stack([np.outer(np.sin(th), np.cos(ph)), np.outer(np.sin(th), np.sin(ph)), np.outer(np.cos(th), np.ones(m))], -1)
    i, j = np.meshgrid(np.arange(n - 1), np.arange(m), indexing="ij")
    a, b, c, d = i * m + j, i * m + (j + 1) % m, (i + 1) * m + j, (i + 1) * m + (j + 1) % m
    f = np.concatenate([np.stack([a, b, d], -1).reshape(-1, 3), np.stack([a, d, c], -1).reshape(-1, 3)])
    got = set(map(tuple, voxelize_surface(v.reshape(-1, 3), f, R).numpy()))
    g = np.stack(np.meshgrid(*[np.arange(R)] * 3, indexing="ij"), -1).reshape(-1, 3)
    lo, hi = g / R - 0.5, (g + 1) / R - 0.5
    dmin = np.linalg.norm(np.maximum(np.maximum(lo, -hi), 0), axis=1)
    dmax = np.linalg.norm(np.maximum(np.abs(lo), np.abs(hi)), axis=1)
    expect = set(map(tuple, g[(dmin <= r) & (dmax >= r)]))
    assert len(got ^ expect) <= 0.01 * len(expect)


def test_voxelize_triangle_superset_of_samples_and_tight():
    rng = np.random.default_rng(0)
    v = rng.uniform(-0.45, 0.45, (3, 3))
    got = voxelize_surface(v, np.array([[0, 1, 2]]), 32).numpy()
    # every voxel containing a point of the triangle is found
    r = rng.random((20000, 2))
    r[r.sum(1) > 1] = 1 - r[r.sum(1) > 1]
    pts = v[0] + r[:, :1] * (v[1] - v[0]) + r[:, 1:] * (v[2] - v[0])
    need = np.unique(np.floor((pts + 0.5) * 32).astype(int), axis=0)
    assert set(map(tuple, need)) <= set(map(tuple, got))
    # and every found voxel is within half a diagonal of the triangle (its centre is near the plane)
    n = np.cross(v[1] - v[0], v[2] - v[0])
    n /= np.linalg.norm(n)
    centres = voxel_centers(torch.from_numpy(got), 32).double().numpy()
    assert np.abs((centres - v[0]) @ n).max() <= math.sqrt(3) / 2 / 32 + 1e-9
    assert len(got) < 2 * len(need) + 50
    # centre <-> index round trip
    assert torch.equal(voxel_indices(voxel_centers(torch.from_numpy(got), 32), 32), torch.from_numpy(got))


def test_voxel_features_project_linear_feature_maps():
    # feature map = the normalised image coordinates of each texel centre: bilinear sampling at a
    # projected point returns its (u, v), so the mean over views is the mean projected (u, v)
    vs = sequence_views(1, 10, seed=2)
    E, K = vs.cameras(0)
    h = 32
    centres = (torch.arange(h) + 0.5) / h
    fmap = torch.stack([centres.expand(h, h), centres[:, None].expand(h, h)])[None].expand(10, 2, h, h)
    pts = torch.tensor([[0.1, -0.2, 0.05], [-0.3, 0.2, 0.25], [0.0, 0.0, 0.0]])
    feats = voxel_features(pts, fmap.contiguous(), E, K, views_per_batch=3)
    cam = pts[None] @ E[:, :3, :3].transpose(1, 2) + E[:, None, :3, 3]
    uv = (cam[..., :2] / cam[..., 2:]) * torch.stack([K[:, 0, 0], K[:, 1, 1]], -1)[:, None] + 0.5
    assert torch.allclose(feats, uv.mean(0), atol=1e-5)


# ----------------------------------------------------------------------------------------- end to end
TINY = dict(num_frames=4, num_views=11, resolution=64, ssaa=1, num_points=512)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("prep")
    inputs = root / "inputs"
    inputs.mkdir()
    (inputs / "broken.glb").write_bytes(b"glTF\x02\x00\x00\x00garbage")
    from gvf.data.mesh_sequence import save_obj

    still = inputs / "still"  # per-frame meshes that never move
    still.mkdir()
    v, f = _box_mesh([-0.2, -0.2, -0.2], [0.2, 0.2, 0.2])
    for t in range(4):
        save_obj(still / f"frame_{t:03d}.obj", v, f)
    out = root / "out"
    cfg = PrepareConfig(**TINY, extractor_kwargs={"feature_resolution": 16, "token_grid": 4})
    sources = discover_sources([inputs], procedural=2, seed=7)
    records = run_prepare(sources, out, cfg, workers=2, progress=False)
    return out, cfg, sources, records


def test_prepare_outputs_and_manifest(prepared):
    out, cfg, sources, records = prepared
    status = {r["name"]: r for r in records}
    assert status["procedural_00007"]["status"] == "ok" and status["procedural_00008"]["status"] == "ok"
    assert status["broken"]["status"] == "failed" and "broken.glb" in status["broken"]["reason"]
    assert status["still"]["status"] == "skipped" and "static" in status["still"]["reason"].lower()
    lines = [json.loads(x) for x in (out / "manifest.jsonl").read_text().splitlines()]
    assert {x["name"] for x in lines} == set(status)
    assert all({"name", "source", "status", "reason", "frames", "views", "seconds"} <= set(x) for x in lines)
    seq = out / "procedural_00007"
    T, V, N = cfg.num_frames, cfg.num_views, cfg.num_points
    assert len(list((seq / "imgs").glob("*.png"))) == T * V and len(list((seq / "meta_data").glob("*.json"))) == T * V
    static = torch.load(seq / "objs/mesh_data/static_frame_vertices.pt", weights_only=True)
    deltas = torch.load(seq / "objs/mesh_data/moving_frame_deltas.pt", weights_only=True)
    assert static.shape == (N, 3) and deltas.shape == (T, N, 3) and static.dtype == torch.float32
    assert deltas[0].abs().max() == 0
    with np.load(seq / "features_all_timesteps/0/simple.npz") as z:
        assert z["indices"].dtype == np.uint8 and z["indices"].shape[1] == 3
        assert z["patchtokens"].dtype == np.float16 and z["patchtokens"].shape == (len(z["indices"]), 16)
    with np.load(out / "cond_features/procedural_00007.npz") as z:
        assert z["features"].shape == (T, 17, 16) and z["features"].dtype == np.float16
    assert not list(out.glob(".tmp-*"))


def _check_points_inside_masks(seq, frames, views, res):
    from PIL import Image

    static = torch.load(seq / "objs/mesh_data/static_frame_vertices.pt", weights_only=True)
    deltas = torch.load(seq / "objs/mesh_data/moving_frame_deltas.pt", weights_only=True)
    for t in frames:
        pts = static + deltas[t]
        for v in views:
            E, K = load_view_json(seq / f"meta_data/timestep_{t:02d}_view_{v:02d}.json")
            cam = pts @ E[:3, :3].T + E[:3, 3]
            uv = (cam @ K.T)[:, :2] / cam[:, 2:]
            px = (uv * res).floor().long().clamp(0, res - 1)
            alpha = np.asarray(Image.open(seq / f"imgs/timestep_{t:02d}_view_{v:02d}.png"))[..., 3]
            # a surface point always projects onto the object's silhouette (visible or occluded)
            grown = np.maximum.reduce([np.roll(alpha, (dy, dx), (0, 1)) for dy in (-1, 0, 1) for dx in (-1, 0, 1)])
            inside = grown[px[:, 1].numpy(), px[:, 0].numpy()] > 0
            assert inside.mean() > 0.995, (seq.name, t, v, inside.mean())
            # and the silhouette is not just everything
            assert (alpha > 0).mean() < 0.5


def test_saved_cameras_project_surface_points_into_alpha_masks(prepared):
    out, cfg, _, _ = prepared
    _check_points_inside_masks(out / "procedural_00008", (0, 3), (0, 2, 5, 8, 9, 10), cfg.resolution)  # fixed + random


def test_prepare_real_glb(shared_assets, tmp_path):
    cfg = PrepareConfig(num_frames=4, num_views=9, resolution=48, ssaa=1, num_points=256,
                        extractor_kwargs={"feature_resolution": 16, "token_grid": 4})
    records = run_prepare(discover_sources([shared_assets / "RobotExpressive.glb"]), tmp_path, cfg, progress=False)
    status = {r["name"]: r for r in records}
    assert len(status) == 14 and all(n.startswith("RobotExpressive__") for n in status)
    assert sum(r["status"] == "ok" for r in records) >= 10
    assert status["RobotExpressive__Idle"]["status"] == "skipped" and "static" in status["RobotExpressive__Idle"]["reason"]
    _check_points_inside_masks(tmp_path / "RobotExpressive__Wave", (0, 3), (0, 3, 8), cfg.resolution)


def test_voxel_features_come_from_frame0_views(prepared):
    out, cfg, _, _ = prepared
    seq = out / "procedural_00007"
    with np.load(seq / "features_all_timesteps/0/simple.npz") as z:
        idx, feats = z["indices"], z["patchtokens"].astype(np.float32)
    # channel 3 of the simple extractor is alpha: every surface voxel centre projects (mostly) onto the
    # object in every view, so its mean alpha is high; voxels are near the surface points
    assert np.median(feats[:, 3]) > 0.5
    static = torch.load(seq / "objs/mesh_data/static_frame_vertices.pt", weights_only=True)
    occupied = set(map(tuple, voxel_indices(static, 64).clamp(0, 63).numpy()))
    assert occupied <= set(map(tuple, idx.astype(int)))


def test_resume_skips_completed(prepared):
    out, cfg, sources, _ = prepared
    records = run_prepare(sources, out, cfg, workers=1, progress=False)
    status = {r["name"]: r for r in records}
    assert status["procedural_00007"]["status"] == "skipped" and status["procedural_00007"]["reason"] == "already prepared"
    assert status["procedural_00008"]["status"] == "skipped"
    assert status["broken"]["status"] == "failed"  # failures are retried, and fail again
    # a deleted sequence is rebuilt; a leftover temp dir is ignored and cleaned
    import shutil

    shutil.rmtree(out / "procedural_00008")
    (out / ".tmp-procedural_00008-99999").mkdir()
    (out / ".tmp-procedural_00008-99999" / "half_written.png").write_bytes(b"")
    records = run_prepare([s for s in sources if s.key == "procedural_00008"], out, cfg, progress=False)
    assert [r["status"] for r in records] == ["ok"]
    assert (out / "procedural_00008" / "info.json").is_file() and not list(out.glob(".tmp-*"))


def test_cli_bad_input_folder_exits_nonzero(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = subprocess.run([sys.executable, str(ROOT / "scripts/prepare_data.py"), str(empty), "--out", str(tmp_path / "o")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and "contains no .glb/.gltf files" in err[0]
    with pytest.raises(ValueError, match="does not exist"):
        discover_sources([tmp_path / "missing"])


@pytest.mark.cuda
def test_prepare_on_cuda_matches_cpu(tmp_path):
    cfg = PrepareConfig(**TINY, extractor_kwargs={"feature_resolution": 16, "token_grid": 4})
    src = discover_sources(procedural=1, seed=3)
    run_prepare(src, tmp_path / "cpu", cfg, progress=False)
    cfg.device = "cuda"
    run_prepare(src, tmp_path / "gpu", cfg, progress=False)
    from PIL import Image

    name = src[0].key
    for stem in ("timestep_00_view_00", "timestep_03_view_09"):
        a = np.asarray(Image.open(tmp_path / "cpu" / name / "imgs" / f"{stem}.png")).astype(int)
        b = np.asarray(Image.open(tmp_path / "gpu" / name / "imgs" / f"{stem}.png")).astype(int)
        assert (np.abs(a - b) > 2).mean() < 1e-3
    with np.load(tmp_path / "cpu" / name / "features_all_timesteps/0/simple.npz") as za, \
            np.load(tmp_path / "gpu" / name / "features_all_timesteps/0/simple.npz") as zb:
        assert np.array_equal(za["indices"], zb["indices"])
        assert np.abs(za["patchtokens"].astype(np.float32) - zb["patchtokens"].astype(np.float32)).max() < 2e-2
