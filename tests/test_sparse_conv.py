"""Sparse 3-D convolution and 2x pooling: against dense `F.conv3d`, brute force and the TRELLIS fixture."""

import importlib.util
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from gvf.sparse.conv import SparseConv3d, SparseDownsample, SparseUpsample, neighbour_table
from gvf.sparse.tensor import SparseTensor


def _random_voxels(seed: int, batch: int, res: int, density: float, channels: int):
    g = torch.Generator().manual_seed(seed)
    occ = torch.rand(batch, res, res, res, generator=g) < density
    coords = torch.argwhere(occ).to(torch.int32)
    coords = coords[torch.randperm(len(coords), generator=g)]  # the order must not matter
    feats = torch.randn(len(coords), channels, generator=g, dtype=torch.float64)
    return coords, feats


def _dense(coords, feats, batch, res):
    grid = torch.zeros(batch, feats.shape[1], res, res, res, dtype=feats.dtype)
    b, x, y, z = coords.long().unbind(1)
    grid[b, :, x, y, z] = feats
    return grid


def _gather(grid, coords):
    b, x, y, z = coords.long().unbind(1)
    return grid[b, :, x, y, z]


@pytest.mark.parametrize("seed,kernel", [(0, 3), (1, 3), (2, 5)])
def test_submanifold_conv_matches_dense_conv3d(seed, kernel):
    batch, res, cin, cout = 2, 7, 3, 5
    coords, feats = _random_voxels(seed, batch, res, 0.35, cin)
    conv = SparseConv3d(cin, cout, kernel).double()
    out = conv(SparseTensor(feats, coords, batch_size=batch)).feats
    # Dense reference: spconv weight (O, a, b, c, I) -> torch (O, I, a, b, c); conv3d is a
    # cross-correlation whose kernel axes follow the x, y, z grid axes; only active outputs are kept.
    weight = conv.conv.weight.permute(0, 4, 1, 2, 3)
    ref = F.conv3d(_dense(coords, feats, batch, res), weight, conv.conv.bias, padding=kernel // 2)
    torch.testing.assert_close(out, _gather(ref, coords), rtol=1e-12, atol=1e-12)


def test_submanifold_conv_backward_matches_dense():
    batch, res, cin, cout = 2, 6, 4, 3
    coords, feats = _random_voxels(3, batch, res, 0.4, cin)
    conv = SparseConv3d(cin, cout).double()
    feats_a = feats.clone().requires_grad_(True)
    grad_out = torch.randn(len(coords), cout, dtype=torch.float64)
    (conv(SparseTensor(feats_a, coords)).feats * grad_out).sum().backward()

    feats_b = feats.clone().requires_grad_(True)
    weight = conv.conv.weight.detach().clone().requires_grad_(True)
    bias = conv.conv.bias.detach().clone().requires_grad_(True)
    dense = _dense(coords, feats_b, batch, res)
    ref = _gather(F.conv3d(dense, weight.permute(0, 4, 1, 2, 3), bias, padding=1), coords)
    (ref * grad_out).sum().backward()
    torch.testing.assert_close(feats_a.grad, feats_b.grad, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(conv.conv.weight.grad, weight.grad, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(conv.conv.bias.grad, bias.grad, rtol=1e-12, atol=1e-12)


def test_neighbours_stay_inside_their_object():
    # the same voxel in two objects: neighbours of object 0 must never come from object 1
    coords = torch.tensor([[0, 1, 1, 1], [1, 1, 1, 2], [1, 1, 1, 0], [0, 0, 0, 0]], dtype=torch.int32)
    table = neighbour_table(coords)  # (27, N)
    centre = 13
    assert table[centre].tolist() == [0, 1, 2, 3]
    b = coords[:, 0]
    for k in range(27):
        found = table[k] >= 0
        assert torch.equal(b[table[k][found]], b[found])
    # object 1 voxel (1,1,2) sees (1,1,0)? no: offset 2 is outside a 3³ kernel
    assert (table[:, 1] >= 0).sum() == 1


def test_state_dict_layout():
    conv = SparseConv3d(4, 6)
    assert {k: tuple(v.shape) for k, v in conv.state_dict().items()} == {"conv.weight": (6, 3, 3, 3, 4), "conv.bias": (6,)}
    with pytest.raises(ValueError, match="odd kernel"):
        SparseConv3d(4, 6, 2)
    with pytest.raises(ValueError, match="channels"):
        conv(SparseTensor(torch.zeros(2, 3), torch.zeros(2, 4, dtype=torch.int32)))


def test_downsample_brute_force_and_upsample_roundtrip():
    coords, feats = _random_voxels(4, 2, 8, 0.3, 3)
    x = SparseTensor(feats, coords)
    down = SparseDownsample(2)(x)
    cells = {}
    for c, f in zip(coords.tolist(), feats):
        key = (c[0], c[1] // 2, c[2] // 2, c[3] // 2)
        cells.setdefault(key, []).append(f)
    keys = sorted(cells)  # ascending (batch, x, y, z)
    assert down.coords.tolist() == [list(k) for k in keys]
    # upstream's scatter-mean includes the zero start value: sum / (n + 1)
    expected = torch.stack([torch.stack(cells[k]).sum(0) / (len(cells[k]) + 1) for k in keys])
    torch.testing.assert_close(down.feats, expected, rtol=1e-12, atol=1e-12)

    up = SparseUpsample(2)(down.replace(down.feats * 2))
    assert torch.equal(up.coords, coords)
    cell_row = {k: i for i, k in enumerate(keys)}
    rows = [cell_row[(c[0], c[1] // 2, c[2] // 2, c[3] // 2)] for c in coords.tolist()]
    torch.testing.assert_close(up.feats, 2 * expected[rows])
    with pytest.raises(ValueError, match="SparseDownsample"):
        SparseUpsample(2)(x)


FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="module")
def slat_fixture():
    return load_file(str(FIXTURES / "trellis_slat_flow.safetensors"))


def test_fixture_convolution(slat_fixture):
    t = slat_fixture
    w = t["sd.input_blocks.0.conv1.conv.weight"]
    conv = SparseConv3d(w.shape[-1], w.shape[0])
    conv.load_state_dict({"conv.weight": w, "conv.bias": t["sd.input_blocks.0.conv1.conv.bias"]})
    with torch.no_grad():
        out = conv(SparseTensor(t["inter.conv_in"], t["coords"])).feats
    torch.testing.assert_close(out, t["inter.conv_out"], rtol=1e-4, atol=1e-5)


def test_fixture_downsample_upsample(slat_fixture):
    t = slat_fixture
    x = SparseTensor(t["inter.downsample_in"], t["coords"])
    down = SparseDownsample(2)(x)
    assert torch.equal(down.coords, t["inter.coarse_coords"])
    torch.testing.assert_close(down.feats, t["inter.downsample_out"], rtol=1e-4, atol=1e-5)
    up = SparseUpsample(2)(down)
    assert torch.equal(up.coords, t["coords"])


@pytest.mark.cuda
@pytest.mark.skipif(importlib.util.find_spec("spconv") is None, reason="spconv is not installed")
def test_spconv_backend_matches_reference(monkeypatch):
    coords, feats = _random_voxels(5, 2, 16, 0.2, 32)
    conv = SparseConv3d(32, 16).cuda()
    x = SparseTensor(feats.float().cuda(), coords.cuda())
    monkeypatch.setenv("GVF_SPARSE_CONV_BACKEND", "torch")
    ref = conv(x).feats
    monkeypatch.setenv("GVF_SPARSE_CONV_BACKEND", "spconv")
    out = conv(SparseTensor(x.feats, x.coords)).feats
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
