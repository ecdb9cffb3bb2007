"""VAE dataset over the prepared layout: readers, re-basing, determinism, collate, DataLoader workers."""
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader
from torch.utils.data.distributed import DistributedSampler

from gvf.data.dataset import VAEDataset, blur_alpha, collate_vae, load_view_image, load_voxel_features
from gvf.data.prepare import PrepareConfig, discover_sources, run_prepare


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("vae_data")
    cfg = PrepareConfig(num_frames=5, num_views=10, resolution=32, ssaa=1, num_points=256,
                        extractor_kwargs={"feature_resolution": 16, "token_grid": 4})
    records = run_prepare(discover_sources(procedural=3, seed=20), root, cfg, progress=False)
    assert all(r["status"] == "ok" for r in records)
    return root


def test_item_shapes_and_rebasing(data_root):
    ds = VAEDataset(data_root, num_frames_per_sample=3, num_cameras=2, num_points=100, seed=1)
    assert len(ds) == 3 and ds.num_views == 10
    item = ds[1]
    assert item["static_pc"].shape == (100, 3) and item["delta_pc"].shape == (3, 100, 3)
    t = item["time_idx"]
    assert t.shape == (3,) and torch.all(t[1:] > t[:-1])
    assert item["coords"].dtype == torch.int32 and item["feats"].shape == (item["coords"].shape[0], 16)
    cams = item["cams"]
    assert cams["image"].shape == (2, 3, 32, 32) and cams["alpha"].shape == (2, 1, 32, 32)
    assert cams["extrinsics"].shape == (2, 4, 4) and cams["intrinsics"].shape == (2, 3, 3)
    assert torch.equal(cams["timestep_idx"], t[:2])
    assert item["static_cams"]["timestep_idx"].tolist() == [0]
    # re-based on frame 0: the stored points + deltas of the sampled frames, rows matched by position
    seq = data_root / item["name"]
    static = torch.load(seq / "objs/mesh_data/static_frame_vertices.pt", weights_only=True)
    deltas = torch.load(seq / "objs/mesh_data/moving_frame_deltas.pt", weights_only=True)
    moving = static[None] + deltas
    d = torch.cdist(item["static_pc"], moving[0], compute_mode="donot_use_mm_for_euclid_dist")
    rows = d.argmin(1)
    assert d.min(1).values.max() < 1e-6
    assert torch.allclose(item["static_pc"][None] + item["delta_pc"], moving[t][:, rows], atol=1e-6)


def test_determinism_per_seed_epoch_index(data_root):
    a = VAEDataset(data_root, num_frames_per_sample=2, num_points=64, seed=3)
    b = VAEDataset(data_root, num_frames_per_sample=2, num_points=64, seed=3)
    x, y = a[2], b[2]
    assert torch.equal(x["static_pc"], y["static_pc"]) and torch.equal(x["time_idx"], y["time_idx"])
    a.set_epoch(1)
    z = a[2]
    assert not torch.equal(x["static_pc"], z["static_pc"])


def test_eval_mode_uses_all_frames_and_first_views(data_root):
    ds = VAEDataset(data_root, num_cameras=2, num_points=256, train=False)
    item = ds[0]
    assert item["time_idx"].tolist() == list(range(5)) and item["delta_pc"].shape == (5, 256, 3)
    assert item["cams"]["view_idx"].tolist() == [0, 1] * 5


def test_image_reader_matches_upstream_formula(data_root, tmp_path):
    from PIL import Image
    from scipy.ndimage import convolve

    rng = np.random.default_rng(0)
    rgba = rng.integers(0, 256, (9, 11, 4), dtype=np.uint8)
    rgba[..., 3] = np.where(rng.random((9, 11)) > 0.5, 255, 0)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "x.png")
    image, alpha = load_view_image(tmp_path / "x.png")
    a = rgba[..., 3].astype(np.float64) / 255
    k = np.outer([1, 2, 1], [1, 2, 1]) / 16.0
    soft = convolve(a, k, mode="mirror")  # scipy 'mirror' == OpenCV BORDER_REFLECT_101
    expect = rgba[..., :3] / 255.0 * soft[..., None] + (1 - soft[..., None])
    assert np.allclose(image.permute(1, 2, 0).numpy(), expect, atol=1e-6)
    assert np.allclose(alpha[0].numpy(), a)
    assert torch.allclose(blur_alpha(torch.from_numpy(a)), torch.from_numpy(soft).float(), atol=1e-6)


def test_feature_pooling_to_coarser_grid(tmp_path):
    rng = np.random.default_rng(0)
    idx = np.unique(rng.integers(0, 64, (200, 3)), axis=0).astype(np.uint8)
    feats = rng.normal(size=(len(idx), 5)).astype(np.float16)
    np.savez(tmp_path / "f.npz", indices=idx, patchtokens=feats)
    coords, pooled = load_voxel_features(tmp_path / "f.npz", 16)
    groups = {}
    for i, f in zip(map(tuple, idx.astype(int) // 4), feats.astype(np.float32)):
        groups.setdefault(i, []).append(f)
    assert coords.shape[0] == len(groups)
    for c, f in zip(map(tuple, coords.numpy()), pooled.numpy()):
        assert np.allclose(f, np.mean(groups[c], 0), atol=1e-6)


def test_collate_and_dataloader_workers(data_root):
    ds = VAEDataset(data_root, num_frames_per_sample=2, num_cameras=1, num_points=64, seed=5)
    batch = collate_vae([ds[0], ds[2]])
    m0, m2 = ds[0]["coords"].shape[0], ds[2]["coords"].shape[0]
    assert batch["coords"].shape == (m0 + m2, 4) and batch["coords"].dtype == torch.int32
    assert batch["coords"][:m0, 0].eq(0).all() and batch["coords"][m0:, 0].eq(1).all()
    assert batch["feats"].shape == (m0 + m2, 16)
    assert batch["static_pc"].shape == (2, 64, 3) and batch["delta_pc"].shape == (2, 2, 64, 3)
    assert batch["cams"]["image"].shape == (2, 1, 3, 32, 32)
    assert batch["static_cams"]["extrinsics"].shape == (2, 1, 4, 4)

    # two shards x two workers see exactly what the single-process loader sees
    ref = {b["names"][0]: b for b in DataLoader(ds, batch_size=1, collate_fn=collate_vae)}
    seen = {}
    for rank in range(2):
        sampler = DistributedSampler(ds, num_replicas=2, rank=rank, shuffle=True, seed=0)
        sampler.set_epoch(0)
        for b in DataLoader(ds, batch_size=1, sampler=sampler, num_workers=2, collate_fn=collate_vae):
            seen[b["names"][0]] = b
    assert set(seen) == set(ref)
    for name, b in seen.items():
        assert torch.equal(b["static_pc"], ref[name]["static_pc"]) and torch.equal(b["feats"], ref[name]["feats"])


def test_bad_root(tmp_path):
    with pytest.raises(ValueError, match="not a directory"):
        VAEDataset(tmp_path / "missing")
    with pytest.raises(ValueError, match="no prepared sequences"):
        VAEDataset(tmp_path)
