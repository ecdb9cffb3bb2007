"""Motion VAE (VariationFieldVAE): parity with the upstream fixtures, fast vs reference decoder,
KNN interpolation against a brute-force loop, posterior formulas, state_dict manifest, bad inputs.

Sizes and constructor arguments are read from the fixture files.
"""

import json
import math
from functools import lru_cache

import pytest
import torch
from safetensors.torch import load_file

from gvf.models import VariationFieldVAE
from gvf.models.motion_vae import (
    OFFICIAL_CONFIG,
    MotionPosterior,
    interpolate_mesh_motion,
    xyz_interpolation_loss,
)

from conftest import FIXTURES

RTOL, ATOL = 1e-4, 1e-5  # float32 network outputs (fixtures README)
RTOL64, ATOL64 = 1e-9, 1e-10


@lru_cache(maxsize=None)
def _fixture(name):
    tensors = load_file(str(FIXTURES / f"{name}.safetensors"))
    meta = json.loads((FIXTURES / f"{name}.json").read_text())
    return tensors, meta


def _model(name, dtype=torch.float32):
    t, meta = _fixture(name)
    model = VariationFieldVAE(**meta["constructor"]).eval()
    model.load_state_dict({k[3:]: v for k, v in t.items() if k.startswith("sd.")}, strict=True)
    return model.to(dtype), t, meta


def _gs_list(t, dtype=None):
    n = sum(1 for k in t if k.startswith("gs_"))
    out = [t[f"gs_{i}"] for i in range(n)]
    return [g.to(dtype) for g in out] if dtype else out


def _local_fps_idx(t):
    lengths = torch.tensor([g.shape[0] for g in _gs_list(t)])
    offsets = torch.cumsum(lengths, 0) - lengths
    return t["fps_idx"].view(len(lengths), -1) - offsets[:, None]


def _close(a, b, rtol=RTOL, atol=ATOL):
    torch.testing.assert_close(a, b.to(a.dtype), rtol=rtol, atol=atol)


# ------------------------------------------------------------------------------------------------
# decoder
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fast,value_width", [(False, None), (True, None), (True, 24)])
@pytest.mark.parametrize("backend", ["sdpa", "math"])
def test_decode_matches_fixture(fast, value_width, backend):
    model, t, meta = _model("motion_vae_decode")
    model.fold_value_width = value_width
    with torch.no_grad():
        _close(model.proj(t["x"]), t["inter.proj_out"])
        _close(model.decode_latents(t["x"], backend=backend), t["inter.latents_after_self_attn"])
        out = model.decode(t["x"], t["queries"], fast=fast, backend=backend)
    assert out.shape == t["output"].shape and out.dtype == torch.float32
    _close(out, t["output"])


def test_decode_float64_matches_ref64():
    model, t, _ = _model("motion_vae_decode", torch.float64)
    assert model.position_encoding[0].omega.dtype == torch.float64
    with torch.no_grad():
        for fast in (True, False):
            out = model.decode(t["x"].double(), t["queries"].double(), fast=fast)
            _close(out, t["ref64.output"], RTOL64, ATOL64)


def test_decode_chunking_invariance_and_frame_inference():
    model, t, meta = _model("motion_vae_decode")
    x, q = t["x"], t["queries"]
    B, Q = q.shape[:2]
    T = x.shape[0] // B
    with torch.no_grad():
        ref = model.decode(x, q, chunk_size=Q)
        for chunk in (1, 7, Q - 1, 10 * Q):
            torch.testing.assert_close(model.decode(x, q, chunk_size=chunk), ref, rtol=1e-6, atol=1e-6)
        # (B, T, L, C) latents and an explicit frame count give the same result
        torch.testing.assert_close(model.decode(x.reshape(B, T, *x.shape[1:]), q), ref, rtol=0, atol=0)
        torch.testing.assert_close(model.decode(x, q, num_frames=T), ref, rtol=0, atol=0)
        # a frame count other than the constructor's num_timesteps works (T is not an attribute)
        one_frame = x.reshape(B, T, *x.shape[1:])[:, :1].reshape(B, *x.shape[1:])
        out1 = model.decode(one_frame, q)
        assert out1.shape == (B, 1, Q, 14)
        torch.testing.assert_close(out1[:, 0], ref[:, 0], rtol=1e-6, atol=1e-6)


def test_padding_rows_do_not_change_real_rows():
    model, t, _ = _model("motion_vae_decode")
    x, q, lengths = t["x"], t["queries"], t["valid_lengths"]
    B = q.shape[0]
    T = x.shape[0] // B
    with torch.no_grad():
        full = model.decode(x, q)
        for b in range(B):
            n = int(lengths[b])
            alone = model.decode(x[b * T : (b + 1) * T], t[f"gs_{b}"][None])
            torch.testing.assert_close(alone[0], full[b, :, :n], rtol=1e-5, atol=1e-6)


def test_fast_and_reference_gradients_agree():
    model, t, _ = _model("motion_vae_decode", torch.float64)
    x, q = t["x"].double(), t["queries"].double()
    w = torch.randn(t["output"].shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    grads = []
    for fast in (True, False):
        model.zero_grad()
        (model.decode(x, q, fast=fast) * w).sum().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and "decoder_cross_attn.fn.to_out.weight" in grads[0]
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], rtol=1e-9, atol=1e-11)


def test_fast_path_with_head_width_values():
    # head width 48 >= 14 output channels: the folded values are padded to the head width, which
    # selects the fused SDPA kernels (here on the CPU), with a stride-0 query shared by the frames
    _, meta = _fixture("motion_vae_decode")
    torch.manual_seed(0)
    model = VariationFieldVAE(**dict(meta["constructor"], dim=96, queries_dim=96, heads=2, depth=1)).eval()
    for p in model.parameters():
        torch.nn.init.normal_(p, std=p.shape[-1] ** -0.5 if p.ndim > 1 else 0.1)
    z = torch.randn(6, 8, meta["constructor"]["latent_dim"])
    q = torch.rand(2, 33, 14) - 0.5
    with torch.no_grad():
        ref = model.decode(z, q, fast=False, backend="math")
        for width in (None, 16):
            model.fold_value_width = width
            torch.testing.assert_close(model.decode(z, q, chunk_size=10), ref, rtol=1e-4, atol=1e-5)
    model.fold_value_width = 8
    with pytest.raises(ValueError, match="fold_value_width"):
        model.decode(z, q)


def test_decoder_ff_variant_fast_equals_reference():
    _, meta = _fixture("motion_vae_decode")
    torch.manual_seed(0)
    model = VariationFieldVAE(**dict(meta["constructor"], decoder_ff=True, depth=1)).double().eval()
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.3)
    assert any(k.startswith("decoder_ff.") for k in model.state_dict())
    z = torch.randn(4, meta["constructor"]["num_latents"], meta["constructor"]["latent_dim"], dtype=torch.float64)
    q = torch.rand(2, 9, 14, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(model.decode(z, q, fast=True), model.decode(z, q, fast=False))


# ------------------------------------------------------------------------------------------------
# encoder and forward
# ------------------------------------------------------------------------------------------------


def test_encode_matches_fixture():
    model, t, meta = _model("motion_vae_encode")
    gs = _gs_list(t)
    with torch.no_grad():
        post = model.encode(t["static_pc"], t["delta_pc"], gs, noise=t["posterior_noise"])
    assert isinstance(post, MotionPosterior)
    # deterministic FPS (start at row 0) reproduces the fixture's subset, in order
    assert torch.equal(post.fps_idx, _local_fps_idx(t))
    assert torch.equal(post.fps_gaussians, t["sampled_static_gs"])
    _close(post.est_deltas, t["est_deltas"], 1e-5, 1e-7)
    _close(post.mean, t["posterior_mean"])
    _close(post.logvar, t["posterior_logvar"])
    _close(post.kl, t["kl"], 1e-5, 1e-7)
    _close(post.z, t["z"])
    assert post.mean.shape == (t["delta_pc"].shape[0] * t["delta_pc"].shape[1], *t["posterior_mean"].shape[1:])


def test_knn_of_sampled_gaussians_is_exact():
    _, t, _ = _model("motion_vae_encode")
    est = interpolate_mesh_motion(t["input_static_gs"], t["static_pc"], t["delta_pc"] + t["static_pc"][:, None], k=t["knn_idx"].shape[-1])
    assert torch.equal(est.knn_idx, t["knn_idx"])
    torch.testing.assert_close(est.knn_sq_dists, t["knn_dists"], rtol=0, atol=0)
    _close(est.deltas, t["est_deltas"], 1e-5, 1e-7)


def test_encode_noise_from_generator_like_upstream():
    # upstream: torch.manual_seed(noise_seed) then torch.randn(mean.shape) on the CPU
    model, t, meta = _model("motion_vae_encode")
    with torch.no_grad():
        post = model.encode(t["static_pc"], t["delta_pc"], _gs_list(t), generator=torch.Generator().manual_seed(meta["noise_seed"]))
    torch.testing.assert_close(post.noise, t["posterior_noise"], rtol=0, atol=0)
    _close(post.z, t["z"])


def test_encode_inputs_padded_tensor_and_given_fps_idx():
    model, t, _ = _model("motion_vae_encode")
    padded, lengths = t["forward_queries"], t["forward_valid_lengths"]
    with torch.no_grad():
        post = model.encode(t["static_pc"], t["delta_pc"], padded, lengths=lengths, fps_idx=_local_fps_idx(t), noise=t["posterior_noise"])
    assert torch.equal(post.fps_gaussians, t["sampled_static_gs"])
    _close(post.mean, t["posterior_mean"])
    _close(post.z, t["z"])


def test_encode_float64_matches_ref64():
    model, t, _ = _model("motion_vae_encode", torch.float64)
    with torch.no_grad():
        post = model.encode(t["static_pc"].double(), t["delta_pc"].double(), _gs_list(t, torch.float64), noise=t["posterior_noise"])
    _close(post.est_deltas, t["ref64.est_deltas"], 1e-9, 1e-12)
    _close(post.mean, t["ref64.posterior_mean"], RTOL64, ATOL64)
    _close(post.logvar, t["ref64.posterior_logvar"], RTOL64, ATOL64)
    _close(post.kl, t["ref64.kl"], 1e-9, 1e-12)


@pytest.mark.parametrize("fast", [True, False])
def test_forward_matches_fixture(fast):
    model, t, _ = _model("motion_vae_encode")
    with torch.no_grad():
        out = model(_gs_list(t), t["static_pc"], t["delta_pc"], noise=t["posterior_noise"], fast=fast)
    assert torch.equal(out["lengths"].cpu(), t["forward_valid_lengths"])
    _close(out["logits"], t["forward_logits"])
    _close(out["kl"], t["kl"], 1e-5, 1e-7)


def test_posterior_round_trip_and_kl_formula():
    model, t, _ = _model("motion_vae_encode")
    with torch.no_grad():
        post = model.encode(t["static_pc"], t["delta_pc"], _gs_list(t), noise=torch.zeros_like(t["posterior_noise"]))
    assert torch.equal(post.z, post.mean) and torch.equal(post.mode(), post.mean)
    m, lv = post.mean.double(), post.logvar.double()
    kl = 0.5 * (m**2 + lv.exp() - 1 - lv).mean(dim=(1, 2))
    torch.testing.assert_close(post.kl.double(), kl, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(post.std, torch.exp(0.5 * post.logvar))
    s = post.sample(torch.Generator().manual_seed(3))
    torch.testing.assert_close(s, post.mean + post.std * torch.randn(post.mean.shape, generator=torch.Generator().manual_seed(3)))


def test_logvar_is_clamped():
    model, t, _ = _model("motion_vae_encode")
    with torch.no_grad():
        model.logvar_fc.bias.fill_(100.0)
        post = model.encode(t["static_pc"], t["delta_pc"], _gs_list(t), noise=t["posterior_noise"])
    assert float(post.logvar.max()) == 20.0


# ------------------------------------------------------------------------------------------------
# KNN interpolation (independent brute-force loop)
# ------------------------------------------------------------------------------------------------


def _brute_force_interp(gs, pc, moving, k, beta, n_valid):
    B, N, _ = gs.shape
    T = moving.shape[1]
    out = torch.zeros(B, T, N, 3, dtype=torch.float64)
    for b in range(B):
        for i in range(n_valid[b]):
            d2 = ((pc[b] - gs[b, i]) ** 2).sum(-1)
            order = sorted(range(pc.shape[1]), key=lambda j: (float(d2[j]), j))[:k]
            dd = d2[order]
            r = math.sqrt(float(dd.mean())) + 1e-6
            w = torch.where(dd <= r * r, torch.exp(-beta * dd / (r * r)), torch.zeros_like(dd))
            w = w / (w.sum() + 1e-8)
            for tt in range(T):
                out[b, tt, i] = (w[:, None] * (moving[b, tt, order] - pc[b, order])).sum(0)
    return out


def test_interpolate_mesh_motion_brute_force_with_padding():
    g = torch.Generator().manual_seed(0)
    B, N, P, T, K = 2, 13, 40, 3, 5
    gs = torch.rand(B, N, 3, generator=g, dtype=torch.float64) - 0.5
    pc = torch.rand(B, P, 3, generator=g, dtype=torch.float64) - 0.5
    moving = pc[:, None] + 0.05 * torch.randn(B, T, P, 3, generator=g, dtype=torch.float64)
    lengths = torch.tensor([N, 8])
    est = interpolate_mesh_motion(gs, pc, moving, k=K, beta=7.0, lengths=lengths)
    ref = _brute_force_interp(gs, pc, moving, K, 7.0, lengths.tolist())
    torch.testing.assert_close(est.deltas, ref, rtol=1e-12, atol=1e-14)
    assert est.valid.tolist() == [[True] * N, [True] * 8 + [False] * (N - 8)]
    assert torch.all(est.deltas[1, :, 8:] == 0) and torch.all(est.weights[1, 8:] == 0)
    torch.testing.assert_close(est.weights[est.valid].sum(-1), torch.ones(int(lengths.sum()), dtype=torch.float64), rtol=0, atol=2e-5)  # S / (S + 1e-8)


def test_rigid_translation_is_recovered_and_loss():
    g = torch.Generator().manual_seed(1)
    pc = torch.rand(1, 50, 3, generator=g) - 0.5
    gs = torch.rand(1, 20, 3, generator=g) - 0.5
    shift = torch.tensor([[0.1, -0.2, 0.05], [0.0, 0.3, 0.0]])  # (T, 3)
    moving = pc[:, None] + shift[None, :, None]
    est = interpolate_mesh_motion(gs, pc, moving, k=8, beta=7.0, lengths=torch.tensor([15]))
    torch.testing.assert_close(est.deltas[0, :, :15], shift[:, None].expand(2, 15, 3), rtol=1e-5, atol=1e-6)
    pred = est.deltas.clone()
    pred[..., :15, :] += 0.5  # valid rows off by 0.5 everywhere; padding rows arbitrary
    pred[..., 15:, :] = 123.0
    torch.testing.assert_close(xyz_interpolation_loss(pred, est), torch.tensor(0.5))


# ------------------------------------------------------------------------------------------------
# structure
# ------------------------------------------------------------------------------------------------


def test_official_state_dict_matches_manifest():
    manifest = json.loads((FIXTURES / "manifest_motion_vae.json").read_text())
    with torch.device("meta"):
        model = VariationFieldVAE(**manifest["constructor"])
    sd = model.state_dict()
    got = [[k, list(v.shape), str(v.dtype).replace("torch.", "")] for k, v in sd.items()]
    assert got == manifest["entries"]
    assert sum(p.numel() for p in model.parameters()) == manifest["num_parameters"]
    assert {k: v for k, v in OFFICIAL_CONFIG.items() if k in manifest["constructor"]} == manifest["constructor"]


def test_fixture_state_dict_dtypes_and_half_keeps_omega_float64():
    model, t, meta = _model("motion_vae_decode")
    entries = meta["state_dict"]["entries"]
    assert [[k, list(v.shape), str(v.dtype).replace("torch.", "")] for k, v in model.state_dict().items()] == entries
    omega = model.position_encoding[0].omega.clone()
    model.half()
    assert model.position_encoding[0].omega.dtype == torch.float64
    torch.testing.assert_close(model.position_encoding[0].omega, omega, rtol=0, atol=0)


def test_weight_tying_shares_modules_but_keeps_keys():
    _, meta = _fixture("motion_vae_decode")
    cfg = dict(meta["constructor"], depth=3)
    tied = VariationFieldVAE(**dict(cfg, weight_tie_layers=True))
    untied = VariationFieldVAE(**cfg)
    assert list(tied.state_dict()) == list(untied.state_dict())
    assert tied.layers[0] is tied.layers[2] and untied.layers[0] is not untied.layers[2]


def test_drop_path_only_in_training():
    model, t, _ = _model("motion_vae_decode")
    with torch.no_grad():
        ref = model.decode_latents(t["x"])
        model.train()
        torch.manual_seed(0)
        dropped = model.decode_latents(t["x"])
        model.drop_path = 0.0
        torch.testing.assert_close(model.decode_latents(t["x"]), ref)
    assert not torch.allclose(dropped, ref)


def test_bad_inputs_raise_clear_errors():
    model, t, meta = _model("motion_vae_encode")
    pc, dpc, gs = t["static_pc"], t["delta_pc"], _gs_list(t)
    with pytest.raises(ValueError, match="num_inputs"):
        model.encode(pc[:, :-1], dpc[:, :, :-1], gs)
    with pytest.raises(ValueError, match="delta_pc"):
        model.encode(pc, dpc[:, :, :, :2], gs)
    with pytest.raises(ValueError, match=r"static_gs\[1\]"):
        model.encode(pc, dpc, [gs[0], gs[1][:, :13]])
    with pytest.raises(ValueError, match="num_latents"):
        model.encode(pc, dpc, [gs[0], gs[1][:5]])
    with pytest.raises(ValueError, match="fps_idx"):
        model.encode(pc, dpc, gs, fps_idx=torch.zeros(2, 3, dtype=torch.int64))
    with pytest.raises(ValueError, match="noise"):
        model.encode(pc, dpc, gs, noise=torch.zeros(1, 2, 3))
    z, q = t["posterior_mean"], t["forward_queries"]
    with pytest.raises(ValueError, match="queries"):
        model.decode(z, q[..., :13])
    with pytest.raises(ValueError, match="z must have shape"):
        model.decode(z[..., :-1], q)
    with pytest.raises(ValueError, match="multiple"):
        model.decode(z[:-1], q)
    with pytest.raises(ValueError, match="B·T"):
        model.decode(z, q, num_frames=1)
    with pytest.raises(ValueError, match="unknown VariationFieldVAE"):
        VariationFieldVAE(depth=1, dims=3)
    with pytest.raises(ValueError, match="queries_dim"):
        VariationFieldVAE(dim=48, queries_dim=96, heads=4)
    with pytest.raises(ValueError, match="heads"):
        VariationFieldVAE(dim=48, queries_dim=48, heads=5)


# ------------------------------------------------------------------------------------------------
# GPU (run by the lead on an H100)
# ------------------------------------------------------------------------------------------------


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cuda_autocast_fast_matches_reference(dtype):
    model, t, _ = _model("motion_vae_decode")
    model = model.cuda()
    x, q = t["x"].cuda(), t["queries"].cuda()
    with torch.inference_mode(), torch.autocast("cuda", dtype=dtype):
        fast = model.decode(x, q)
        ref = model.decode(x, q, fast=False)
    assert fast.dtype == torch.float32
    tol = 2e-2 if dtype == torch.bfloat16 else 3e-3
    torch.testing.assert_close(fast, ref, rtol=tol, atol=tol)
    torch.testing.assert_close(fast.cpu(), t["output"], rtol=5 * tol, atol=5 * tol)


@pytest.mark.cuda
@pytest.mark.parametrize("value_width", [None, 16])
def test_cuda_official_size_decode_speed_and_memory(value_width):
    torch.manual_seed(0)
    model = VariationFieldVAE(**OFFICIAL_CONFIG).cuda().eval()
    model.fold_value_width = value_width
    for p in model.parameters():  # non-trivial head (the init zeroes it)
        torch.nn.init.normal_(p, std=p.shape[-1] ** -0.5 if p.ndim > 1 else 0.02)
    B, T, Q = 1, 32, 100_000
    z = torch.randn(B * T, 512, 16, device="cuda")
    q = torch.rand(B, Q, 14, device="cuda") - 0.5
    with torch.inference_mode(), torch.autocast("cuda", dtype=torch.float16):
        out = model.decode(z, q)
        ref = model.decode(z, q[:, :4096], fast=False)
        torch.testing.assert_close(out[:, :, :4096], ref, rtol=3e-2, atol=3e-2)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(5):
            out = model.decode(z, q)
        end.record()
        torch.cuda.synchronize()
    ms = start.elapsed_time(end) / 5
    peak_gb = (torch.cuda.max_memory_allocated() - base) / 2**30
    print(f"motion VAE decode B=1 T=32 Q=100k fp16, value width {value_width}: {ms:.1f} ms, peak +{peak_gb:.2f} GiB")
    assert out.shape == (B, T, Q, 14)
    assert peak_gb < 2.5
