"""Attention dispatch (gvf.nn.attention): every backend against an explicit float64 softmax, and
MultiHeadAttention / MultiHeadRMSNorm against hand-written per-head references."""

import importlib.util
import math

import pytest
import torch

from gvf.nn import MultiHeadAttention, MultiHeadRMSNorm, attention, math_attention, resolve_backend


def _reference(q, k, v, scale=None):
    """softmax(q kᵀ·scale) v per batch and head with python loops, in float64. (B, L, H, D) layout."""
    q, k, v = q.double(), k.double(), v.double()
    B, L, H, D = q.shape
    scale = 1 / math.sqrt(D) if scale is None else scale
    out = torch.empty(B, L, H, v.shape[-1], dtype=torch.float64)
    for b in range(B):
        for h in range(H):
            logits = q[b, :, h] @ k[b, :, h].T * scale  # (L, S)
            weights = torch.exp(logits - logits.max(dim=1, keepdim=True).values)
            out[b, :, h] = (weights / weights.sum(dim=1, keepdim=True)) @ v[b, :, h]
    return out


def _qkv(B=2, L=7, S=5, H=3, D=8, dtype=torch.float32, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    make = lambda n: (torch.randn(B, n, H, D, generator=g) * 1.5).to(device=device, dtype=dtype)  # noqa: E731
    return make(L), make(S), make(S)


@pytest.mark.parametrize("backend", ["math", "sdpa"])
@pytest.mark.parametrize("dtype, tol", [(torch.float32, 2e-6), (torch.float64, 1e-12)])
def test_cpu_backends_match_reference(backend, dtype, tol):
    q, k, v = _qkv(dtype=dtype)
    out = attention(q, k, v, backend=backend)
    assert out.dtype == dtype and out.shape == q.shape
    torch.testing.assert_close(out.double(), _reference(q, k, v), rtol=tol, atol=tol)
    out = attention(q, k, v, backend=backend, scale=0.3)
    torch.testing.assert_close(out.double(), _reference(q, k, v, scale=0.3), rtol=tol, atol=tol)


def test_sdpa_backward_matches_math():
    grads = []
    for backend in ("math", "sdpa"):
        q, k, v = (t.double().requires_grad_() for t in _qkv())
        (attention(q, k, v, backend=backend) * torch.linspace(-1, 1, 8, dtype=torch.float64)).sum().backward()
        grads.append(torch.cat([q.grad.flatten(), k.grad.flatten(), v.grad.flatten()]))
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-10, atol=1e-12)


def test_backend_selection_and_errors(monkeypatch):
    q, k, v = _qkv()
    assert resolve_backend(q) == "sdpa"  # CPU float32
    monkeypatch.setenv("GVF_ATTN_BACKEND", "math")
    assert resolve_backend(q) == "math"
    with pytest.raises(ValueError, match="unknown attention backend"):
        attention(q, k, v, backend="cudnn_magic")
    with pytest.raises(ValueError, match=r"\(B, L, H, D\)"):
        attention(q[0], k, v)
    assert torch.equal(math_attention(q, k, v), attention(q, k, v, backend="math"))


@pytest.mark.cuda
@pytest.mark.parametrize("backend", ["sdpa", "flash_attn", "xformers", "math"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_gpu_backends_match_reference(backend, dtype):
    if backend in ("flash_attn", "xformers") and importlib.util.find_spec(backend) is None:
        pytest.skip(f"{backend} is not installed")
    q, k, v = _qkv(B=2, L=300, S=130, H=4, D=32, dtype=dtype, device="cuda")
    ref = _reference(q.cpu(), k.cpu(), v.cpu())
    out = attention(q, k, v, backend=backend).double().cpu()
    tol = 1e-2 if dtype == torch.float16 else 3e-2
    torch.testing.assert_close(out, ref, rtol=tol, atol=tol)
    if backend != "math":  # backward against the math path, same dtype
        qs, ks, vs = (t.clone().requires_grad_() for t in (q, k, v))
        qm, km, vm = (t.clone().requires_grad_() for t in (q, k, v))
        attention(qs, ks, vs, backend=backend).float().square().sum().backward()
        attention(qm, km, vm, backend="math").float().square().sum().backward()
        for a, b in ((qs, qm), (ks, km), (vs, vm)):
            assert (a.grad.float() - b.grad.float()).abs().max() <= 5e-2 * b.grad.float().abs().max()


def _heads(x, H):
    B, L, C = x.shape
    return x.reshape(B, L, H, C // H)


def _rms(x, gamma):
    """Per-head L2 normalisation times gamma·sqrt(D), written out."""
    D = x.shape[-1]
    return x / x.pow(2).sum(-1, keepdim=True).sqrt() * gamma * math.sqrt(D)


def _randomize(module, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            p.copy_(1 + 0.2 * torch.randn(p.shape, generator=g) if name.endswith("gamma") else torch.randn(p.shape, generator=g) * 0.3)
    return module.double()


@pytest.mark.parametrize("qk_rms_norm", [False, True])
def test_self_attention_matches_hand_written(qk_rms_norm):
    C, H = 24, 4
    mha = _randomize(MultiHeadAttention(C, H, type="self", qk_rms_norm=qk_rms_norm))
    x = torch.randn(2, 9, C, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    W, b = mha.to_qkv.weight, mha.to_qkv.bias
    q, k, v = (_heads(x @ W[i * C : (i + 1) * C].T + b[i * C : (i + 1) * C], H) for i in range(3))
    if qk_rms_norm:
        q, k = _rms(q, mha.q_rms_norm.gamma), _rms(k, mha.k_rms_norm.gamma)
    ref = _reference(q, k, v).reshape(2, 9, C) @ mha.to_out.weight.T + mha.to_out.bias
    with torch.no_grad():
        torch.testing.assert_close(mha(x), ref, rtol=1e-6, atol=1e-6)  # RMS norm runs in float32 (upstream)
        torch.testing.assert_close(mha(x, backend="math"), ref, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("qk_rms_norm", [False, True])
def test_cross_attention_matches_hand_written_and_precomputed_kv(qk_rms_norm):
    C, Cctx, H = 24, 10, 3
    mha = _randomize(MultiHeadAttention(C, H, ctx_channels=Cctx, type="cross", qk_rms_norm=qk_rms_norm), seed=2)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 6, C, dtype=torch.float64, generator=g)
    ctx = torch.randn(2, 11, Cctx, dtype=torch.float64, generator=g)
    q = _heads(x @ mha.to_q.weight.T + mha.to_q.bias, H)
    kv = ctx @ mha.to_kv.weight.T + mha.to_kv.bias
    k, v = _heads(kv[..., :C], H), _heads(kv[..., C:], H)  # keys first
    if qk_rms_norm:
        q, k = _rms(q, mha.q_rms_norm.gamma), _rms(k, mha.k_rms_norm.gamma)
    ref = _reference(q, k, v).reshape(2, 6, C) @ mha.to_out.weight.T + mha.to_out.bias
    with torch.no_grad():
        torch.testing.assert_close(mha(x, context=ctx), ref, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(mha(x, kv=mha.project_kv(ctx)), ref, rtol=1e-6, atol=1e-6)


def test_rms_norm_closed_form_and_dtype():
    norm = _randomize(MultiHeadRMSNorm(8, 3)).float()
    x = torch.randn(2, 5, 3, 8, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(norm(x), _rms(x, norm.gamma.detach()), rtol=1e-6, atol=1e-6)
    assert norm(x.half()).dtype == torch.float16
    assert list(MultiHeadAttention(24, 4, qk_rms_norm=True).state_dict()) == [
        "to_qkv.weight", "to_qkv.bias", "q_rms_norm.gamma", "k_rms_norm.gamma", "to_out.weight", "to_out.bias",
    ]
    with pytest.raises(ValueError, match="divisible"):
        MultiHeadAttention(10, 3)
