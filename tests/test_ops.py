import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from gvf.gaussians.ops import farthest_point_sampling, knn_points


def _np_fps(pts, k, start=0):
    """Textbook greedy FPS in float64 numpy (ties -> lowest index)."""
    pts = np.asarray(pts, dtype=np.float64)
    sel = [start]
    best = np.full(len(pts), np.inf)
    for _ in range(k - 1):
        best = np.minimum(best, ((pts - pts[sel[-1]]) ** 2).sum(1))
        sel.append(int(np.argmax(best)))
    return sel


def _np_knn(q, r, k):
    """Brute force with a full lexicographic (distance, index) sort per query."""
    out_idx, out_d = [], []
    for p in q:
        d = [float(((p - x) ** 2).sum()) for x in r]
        order = sorted(range(len(r)), key=lambda j: (d[j], j))[:k]
        out_idx.append(order)
        out_d.append([d[j] for j in order])
    return np.array(out_idx), np.array(out_d)


def test_fps_matches_fixture(fixtures_dir):
    t = load_file(str(fixtures_dir / "motion_vae_encode.safetensors"))
    gs = [t[f"gs_{i}"] for i in range(len([k for k in t if k.startswith("gs_")]))]
    per = t["sampled_static_gs"].shape[1]
    # separately
    offset, expected = 0, []
    for g in gs:
        expected.append(farthest_point_sampling(g[None, :, :3], per)[0] + offset)
        offset += len(g)
    assert torch.equal(torch.cat(expected), t["fps_idx"])
    # batched with padding
    lengths = torch.tensor([len(g) for g in gs])
    P = torch.full((len(gs), int(lengths.max()), 3), 123.0)  # padding far away: must never be picked
    for b, g in enumerate(gs):
        P[b, : len(g)] = g[:, :3]
    idx = farthest_point_sampling(P, per, lengths=lengths)
    offsets = torch.cumsum(lengths, 0) - lengths
    assert torch.equal((idx + offsets[:, None]).reshape(-1), t["fps_idx"])
    rows = torch.cat(gs)[t["fps_idx"]].reshape(t["sampled_static_gs"].shape)
    assert torch.equal(rows, t["sampled_static_gs"])


def test_fps_against_numpy_reference():
    g = torch.Generator().manual_seed(0)
    pts = torch.rand(3, 200, 3, generator=g)
    idx = farthest_point_sampling(pts, 40, start_idx=5)
    for b in range(3):
        assert idx[b].tolist() == _np_fps(pts[b].numpy(), 40, start=5)
    # exact ties on a grid: the lowest index must win
    grid = torch.stack(torch.meshgrid(*[torch.arange(3.0)] * 3, indexing="ij"), -1).reshape(1, -1, 3)
    assert farthest_point_sampling(grid, 10)[0].tolist() == _np_fps(grid[0].numpy(), 10)


def test_fps_random_start_and_errors():
    pts = torch.rand(2, 50, 3)
    a = farthest_point_sampling(pts, 5, start_idx=None, generator=torch.Generator().manual_seed(3))
    b = farthest_point_sampling(pts, 5, start_idx=None, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    lengths = torch.tensor([50, 7])
    c = farthest_point_sampling(pts, 7, lengths=lengths, start_idx=None, generator=torch.Generator().manual_seed(1))
    assert c[1].max() < 7 and len(set(c[1].tolist())) == 7
    with pytest.raises(ValueError, match="k=8"):
        farthest_point_sampling(pts, 8, lengths=lengths)
    with pytest.raises(ValueError):
        farthest_point_sampling(pts[0], 3)
    with pytest.raises(ValueError, match="start_idx"):
        farthest_point_sampling(pts, 3, lengths=lengths, start_idx=9)


def test_knn_matches_fixture(fixtures_dir):
    t = load_file(str(fixtures_dir / "motion_vae_encode.safetensors"))
    K = t["knn_idx"].shape[-1]
    for exact_only in (False, True):
        d, i = knn_points(t["input_static_gs"], t["static_pc"], K, exact_only=exact_only)
        assert torch.equal(i, t["knn_idx"])
        torch.testing.assert_close(d, t["knn_dists"], rtol=0, atol=0)


@pytest.mark.parametrize("exact_only", [False, True])
def test_knn_against_bruteforce_with_padding_and_ties(exact_only):
    g = torch.Generator().manual_seed(1)
    q = torch.rand(2, 30, 3, generator=g)
    r = torch.rand(2, 60, 3, generator=g)
    # duplicated reference points and a query on an exact grid make ties
    r[0, 40:50] = r[0, 3]
    q[0, 0] = r[0, 3]
    r[1, :27] = torch.stack(torch.meshgrid(*[torch.arange(3.0)] * 3, indexing="ij"), -1).reshape(27, 3)
    q[1, 0] = torch.tensor([1.0, 1.0, 1.0])
    lengths = torch.tensor([60, 45])
    r[1, 45:] = 0.0  # padding close to the queries: must be skipped
    d, i = knn_points(q, r, 9, ref_lengths=lengths, chunk_size=7, exact_only=exact_only)
    for b in range(2):
        ref_i, ref_d = _np_knn(q[b].double().numpy(), r[b, : lengths[b]].double().numpy(), 9)
        assert i[b].tolist() == ref_i.tolist()
        np.testing.assert_allclose(d[b].numpy(), ref_d, rtol=1e-6, atol=1e-7)
    assert (d[..., 1:] >= d[..., :-1]).all()


def test_knn_fast_path_falls_back_correctly():
    # Far from the origin the GEMM distances lose precision: the certificate must catch it.
    g = torch.Generator().manual_seed(2)
    r = torch.rand(1, 300, 3, generator=g) * 1e-3 + 100.0
    q = torch.rand(1, 20, 3, generator=g) * 1e-3 + 100.0
    d, i = knn_points(q, r, 5)
    ref_i, _ = _np_knn(q[0].double().numpy(), r[0].double().numpy(), 5)
    # float32 Σ(diff²) is itself the reference metric, compare to it where float64 agrees
    d32, i32 = knn_points(q, r, 5, exact_only=True)
    assert torch.equal(i, i32)
    assert (np.array(i[0].tolist()) == ref_i).mean() > 0.9


def test_knn_gradients_and_errors():
    q = torch.rand(1, 4, 3, requires_grad=True)
    r = torch.rand(1, 10, 3, requires_grad=True)
    d, i = knn_points(q, r, 2)
    d.sum().backward()
    nb = r.detach()[0, i[0]]  # (4, 2, 3)
    torch.testing.assert_close(q.grad[0], (2 * (q.detach()[0, :, None] - nb)).sum(1))
    with pytest.raises(ValueError, match="k=11"):
        knn_points(q, r, 11)
    with pytest.raises(ValueError):
        knn_points(q[0], r[0], 2)
