"""Sparse grouped / windowed / per-object attention against independent brute force."""

import math

import numpy as np
import pytest
import torch

from gvf.nn.attention import MultiHeadAttention
from gvf.sparse import (
    SparseMultiHeadAttention,
    SparseTensor,
    grouped_attention,
    plan_groups,
    sparse_cross_attention_per_object,
    sparse_self_attention_per_object,
    sparse_windowed_attention,
    window_ids,
)


def _masked_dense_attention(q, k, v, allowed):
    """Dense softmax attention over all N rows restricted by an explicit (N, N) boolean mask (numpy, float64)."""
    q, k, v = (np.asarray(t.detach().double()) for t in (q, k, v))
    N, H, D = q.shape
    out = np.zeros((N, H, v.shape[-1]))
    for h in range(H):
        logits = q[:, h] @ k[:, h].T / math.sqrt(D)
        logits = np.where(allowed, logits, -np.inf)
        w = np.exp(logits - logits.max(axis=1, keepdims=True))
        w /= w.sum(axis=1, keepdims=True)
        out[:, h] = w @ v[:, h]
    return torch.from_numpy(out)


def _window_mask(coords, window, shift):
    """Python loops: rows i, j may attend iff same object and same shifted window on every axis."""
    c = coords.tolist()
    ws = (window,) * 3 if isinstance(window, int) else window
    sh = (shift,) * 3 if isinstance(shift, int) else shift
    n = len(c)
    mask = np.zeros((n, n), dtype=bool)
    for i in range(n):
        for j in range(n):
            same = c[i][0] == c[j][0]
            for a in range(3):
                same = same and (c[i][a + 1] + sh[a]) // ws[a] == (c[j][a + 1] + sh[a]) // ws[a]
            mask[i, j] = same
    return mask


def _random_voxels(rng, counts, res):
    """Objects with distinct random voxels, concentrated around window boundaries 3/4, 7/8, 11/12, interleaved rows."""
    rows = []
    for b, n in enumerate(counts):
        axis_vals = np.array([0, 3, 4, 5, 7, 8, 9, 11, 12, 15][: max(2, res // 2)] + list(range(res)))
        axis_vals = axis_vals[axis_vals < res]
        seen = set()
        while len(seen) < n:
            seen.add(tuple(int(rng.choice(axis_vals)) for _ in range(3)))
        rows += [(b, *p) for p in sorted(seen)]
    rows = np.array(rows)
    rows = rows[rng.permutation(len(rows))]  # objects interleaved: rows need not be contiguous
    return torch.tensor(rows, dtype=torch.int32)


@pytest.mark.parametrize("window,shift", [(8, 0), (8, 4), (4, 2), ((4, 8, 6), (1, 0, 3))])
def test_windowed_attention_matches_masked_brute_force(window, shift):
    rng = np.random.default_rng(0)
    coords = _random_voxels(rng, [70, 45], 16)
    N, H, D = coords.shape[0], 2, 5
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(N, H, D, generator=g, dtype=torch.float64) for _ in range(3))
    expected = _masked_dense_attention(q, k, v, _window_mask(coords, window, shift))
    for backend in ("sdpa", "math"):
        out = sparse_windowed_attention(q, k, v, coords, window, shift, backend=backend)
        torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-12)


def test_window_ids_follow_the_upstream_numbering():
    coords = _random_voxels(np.random.default_rng(3), [30, 20, 10], 16)
    c = coords.numpy().astype(np.int64)
    for ws, sh in [(8, 0), (8, 4), (3, 1)]:
        shifted = c[:, 1:] + sh
        num = [math.ceil((m + 1) / ws) for m in shifted.max(0)]
        offset = [num[0] * num[1] * num[2], num[1] * num[2], num[2], 1]
        expected = c[:, 0] * offset[0] + (shifted // ws) @ np.array(offset[1:])
        np.testing.assert_array_equal(window_ids(coords, ws, sh).numpy(), expected)
    with pytest.raises(ValueError):
        window_ids(coords, 8, -20)
    with pytest.raises(ValueError):
        window_ids(coords[:, :3], 8, 0)


def test_grouped_attention_sdpa_equals_math_forward_and_backward():
    g = torch.Generator().manual_seed(0)
    N, H, D = 300, 3, 4
    # ragged groups, a singleton, non-contiguous and unsorted ids
    ids = torch.randint(0, 23, (N,), generator=g) * 5 - 40
    ids[7] = 999
    q, k, v = (torch.randn(N, H, D, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(3))
    w = torch.randn(N, H, D, generator=g, dtype=torch.float64)
    outs, grads = [], []
    for backend in ("sdpa", "math"):
        out = grouped_attention(q, k, v, ids, backend=backend)
        outs.append(out)
        grads.append(torch.autograd.grad((out * w).sum(), (q, k, v)))
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-10, atol=1e-12)
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    # a singleton group attends only to itself
    torch.testing.assert_close(outs[0][7], v[7].detach(), rtol=0, atol=1e-12)
    # a plan can be reused
    plan = plan_groups(ids)
    torch.testing.assert_close(grouped_attention(q, k, v, plan=plan), outs[0], rtol=1e-10, atol=1e-12)


def test_grouped_attention_float32_and_empty_and_errors():
    g = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(50, 2, 8, generator=g) for _ in range(3))
    ids = torch.randint(0, 4, (50,), generator=g)
    torch.testing.assert_close(grouped_attention(q, k, v, ids), grouped_attention(q, k, v, ids, backend="math"), rtol=1e-5, atol=1e-6)
    empty = torch.zeros(0, 2, 8)
    assert grouped_attention(empty, empty, empty, torch.zeros(0, dtype=torch.long)).shape == (0, 2, 8)
    with pytest.raises(ValueError):
        grouped_attention(q, k, v, ids[:10])
    with pytest.raises(ValueError):
        grouped_attention(q, k[:, :1], v, ids)
    with pytest.raises(ValueError):
        grouped_attention(q, k, v, ids, backend="flash_attn")  # needs CUDA half precision


def test_self_attention_per_object_equals_dense_attention_of_each_object():
    coords = _random_voxels(np.random.default_rng(5), [40, 1, 25], 8)
    N, H, D = coords.shape[0], 2, 6
    g = torch.Generator().manual_seed(4)
    q, k, v = (torch.randn(N, H, D, generator=g, dtype=torch.float64) for _ in range(3))
    batch = coords[:, 0].long()
    expected = _masked_dense_attention(q, k, v, (batch[:, None] == batch[None, :]).numpy())
    torch.testing.assert_close(sparse_self_attention_per_object(q, k, v, batch), expected, rtol=1e-10, atol=1e-12)


def test_cross_attention_per_object_equals_per_object_loop():
    g = torch.Generator().manual_seed(6)
    B, S, H, D, N = 3, 7, 2, 4, 60
    batch = torch.randint(0, B, (N,), generator=g)
    batch[batch == 1] = 2  # object 1 has no voxels
    q = torch.randn(N, H, D, generator=g, dtype=torch.float64)
    k, v = (torch.randn(B, S, H, D, generator=g, dtype=torch.float64) for _ in range(2))
    expected = torch.zeros(N, H, D, dtype=torch.float64)
    for i in range(N):
        b = int(batch[i])
        logits = torch.einsum("hd,shd->hs", q[i], k[b]) / math.sqrt(D)
        expected[i] = torch.einsum("hs,shd->hd", logits.softmax(-1), v[b])
    for backend in ("sdpa", "math"):
        out = sparse_cross_attention_per_object(q, k, v, batch, backend=backend)
        torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError):
        sparse_cross_attention_per_object(q, k[:2], v[:2], batch)


def _copy_weights(dst: torch.nn.Module, src: torch.nn.Module):
    dst.load_state_dict(src.state_dict(), strict=True)


@pytest.mark.parametrize("qk_rms_norm", [False, True])
def test_module_full_self_and_cross_attention_match_dense_modules(qk_rms_norm):
    torch.manual_seed(0)
    C, H = 12, 3
    coords = _random_voxels(np.random.default_rng(7), [20, 13], 8)
    feats = torch.randn(coords.shape[0], C, dtype=torch.float64)
    x = SparseTensor(feats, coords)
    sparse_self = SparseMultiHeadAttention(C, H, attn_mode="full", qk_rms_norm=qk_rms_norm).double()
    dense_self = MultiHeadAttention(C, H, type="self", qk_rms_norm=qk_rms_norm).double()
    for p in sparse_self.parameters():
        torch.nn.init.normal_(p, std=0.3)
    _copy_weights(dense_self, sparse_self)
    ctx = torch.randn(2, 5, 7, dtype=torch.float64)
    sparse_cross = SparseMultiHeadAttention(C, H, ctx_channels=7, type="cross", qk_rms_norm=qk_rms_norm).double()
    dense_cross = MultiHeadAttention(C, H, ctx_channels=7, type="cross", qk_rms_norm=qk_rms_norm).double()
    for p in sparse_cross.parameters():
        torch.nn.init.normal_(p, std=0.3)
    _copy_weights(dense_cross, sparse_cross)

    out_self = sparse_self(x).feats
    out_cross = sparse_cross(x, ctx).feats
    for b in range(2):
        rows = (coords[:, 0] == b).nonzero().squeeze(1)
        torch.testing.assert_close(out_self[rows], dense_self(feats[rows][None], backend="math")[0], rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(out_cross[rows], dense_cross(feats[rows][None], ctx[b : b + 1], backend="math")[0], rtol=1e-10, atol=1e-12)


def test_module_windowed_and_old_qkv_layout():
    torch.manual_seed(1)
    C, H = 8, 2
    D = C // H
    coords = _random_voxels(np.random.default_rng(8), [30, 20], 16)
    x = SparseTensor(torch.randn(coords.shape[0], C, dtype=torch.float64), coords)
    new = SparseMultiHeadAttention(C, H, attn_mode="windowed", window_size=8, shift_window=4).double()
    old = SparseMultiHeadAttention(C, H, attn_mode="windowed", window_size=8, shift_window=4, use_old_attn_impl=True).double()
    for p in old.parameters():
        torch.nn.init.normal_(p, std=0.3)
    # old fused channel of (f, h, d) is h·3D + f·D + d; new is f·C + h·D + d
    perm = torch.tensor([h * 3 * D + f * D + d for f in range(3) for h in range(H) for d in range(D)])
    sd = old.state_dict()
    sd["to_qkv.weight"], sd["to_qkv.bias"] = sd["to_qkv.weight"][perm], sd["to_qkv.bias"][perm]
    new.load_state_dict(sd)
    torch.testing.assert_close(new(x).feats, old(x).feats, rtol=1e-10, atol=1e-12)
    # windowed module = projections around the brute-force windowed attention
    qkv = new.to_qkv(x.feats).reshape(-1, 3, H, D)
    expected = _masked_dense_attention(qkv[:, 0], qkv[:, 1], qkv[:, 2], _window_mask(coords, 8, 4))
    torch.testing.assert_close(new(x).feats, new.to_out(expected.reshape(-1, C)), rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError):
        SparseMultiHeadAttention(C, H, type="cross", attn_mode="windowed", window_size=8)


@pytest.mark.cuda
@pytest.mark.parametrize("backend", ["flash_attn", "xformers"])
def test_fast_backends_match_sdpa_on_cuda(backend):
    pytest.importorskip(backend)
    g = torch.Generator(device="cuda").manual_seed(0)
    N, H, D = 4000, 4, 64
    ids = torch.randint(0, 60, (N,), device="cuda", generator=g)
    q, k, v = (torch.randn(N, H, D, device="cuda", dtype=torch.bfloat16, generator=g, requires_grad=True) for _ in range(3))
    ref = grouped_attention(q.float(), k.float(), v.float(), ids, backend="math")
    out = grouped_attention(q, k, v, ids, backend=backend)
    torch.testing.assert_close(out.float(), ref, rtol=2e-2, atol=2e-2)
    gq = torch.autograd.grad(out.float().square().sum(), q)[0]
    gq_ref = torch.autograd.grad(grouped_attention(q, k, v, ids, backend="sdpa").float().square().sum(), q)[0]
    torch.testing.assert_close(gq.float(), gq_ref.float(), rtol=5e-2, atol=5e-2)
    if backend == "flash_attn":
        kc, vc = (torch.randn(3, 9, H, D, device="cuda", dtype=torch.bfloat16, generator=g) for _ in range(2))
        b = torch.randint(0, 3, (N,), device="cuda", generator=g)
        out = sparse_cross_attention_per_object(q, kc, vc, b, backend="flash_attn")
        ref = sparse_cross_attention_per_object(q.float(), kc.float(), vc.float(), b, backend="math")
        torch.testing.assert_close(out.float(), ref, rtol=2e-2, atol=2e-2)
