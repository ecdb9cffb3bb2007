"""StaticVAE against the upstream parity fixture, the official key manifest and the TRELLIS key mapping."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from gvf.checkpoints import convert_upstream, load_state_dict_strict
from gvf.models import StaticVAE
from gvf.models.static_vae import decoder_output_to_gaussians, hammersley_perturbation

RTOL, ATOL = 1e-4, 1e-5  # parity README, float32
RTOL64, ATOL64 = 1e-6, 1e-6  # parity README, float64 against ref64.*
FIXTURES = Path(__file__).resolve().parent / "fixtures"


@pytest.fixture(scope="module")
def fx():
    tensors = load_file(str(FIXTURES / "static_vae.safetensors"))
    meta = json.loads((FIXTURES / "static_vae.json").read_text())
    sd = {k[len("sd.") :]: v for k, v in tensors.items() if k.startswith("sd.")}
    return tensors, meta, sd


def _model(meta, sd, **kw):
    model = StaticVAE(**meta["constructor"], **kw).eval()
    load_state_dict_strict(model, convert_upstream("static_vae", {"module." + k: v for k, v in sd.items()}))
    return model


def _check_reps(reps, t):
    assert len(reps) == sum(1 for k in t if k.endswith(".xyz") and k.startswith("rep"))
    for i, g in enumerate(reps):
        close = lambda a, name: torch.testing.assert_close(a, t[f"rep{i}.{name}"], rtol=RTOL, atol=ATOL)  # noqa: E731
        close(g.xyz, "xyz")
        close(g.features_dc[:, None, :], "features_dc")
        close(g.scaling, "scaling")
        close(g.rotation, "rotation")
        close(g.opacity, "opacity")
        close(g.xyz + 0.5, "raw_xyz")
        close(g.features_dc[:, None, :], "raw_features_dc")
        close(g.scaling_raw, "raw_scaling")
        close(g.rotation_raw, "raw_rotation")
        close(g.opacity_raw, "raw_opacity")


def test_fixture_parity_float32(fx):
    t, meta, sd = fx
    model = _model(meta, sd)
    inter = {}

    def record(key):
        def hook(module, args, out):
            inter.setdefault(key, out.feats.clone())

        return hook

    for stack, tag in ((model.encoder, "enc"), (model.decoder, "dec")):
        for i, block in enumerate(stack):
            block.register_forward_hook(record(f"inter.{tag}_block{i}_out"))
    with torch.no_grad():
        post = model.encode(t["coords"], t["feats"])
        decoded = model.decode(t["coords"], t["latent"])
        reps = model.to_gaussians(t["coords"], decoded)
    torch.testing.assert_close(post.mean, t["posterior_mean"], rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(post.logvar, t["posterior_logvar"], rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(post.z, post.mean)
    torch.testing.assert_close(decoded, t["decoded"], rtol=RTOL, atol=ATOL)
    names = [k for k in t if k.startswith("inter.")]
    assert names and set(names) <= set(inter)
    for k in names:
        torch.testing.assert_close(inter[k], t[k], rtol=RTOL, atol=ATOL)
    _check_reps(reps, t)
    # the 14-channel tensor of the motion VAE is built from these fields
    g = reps[0]
    torch.testing.assert_close(g.to_tensor14()[:, 7:10], t["rep0.scaling"], rtol=RTOL, atol=ATOL)


def test_fixture_parity_float64(fx):
    t, meta, sd = fx
    model = _model(meta, sd).double()
    with torch.no_grad():
        post = model.encode(t["coords"], t["feats"].double())
        decoded = model.decode(t["coords"], t["latent"].double())
    torch.testing.assert_close(post.mean, t["ref64.posterior_mean"], rtol=RTOL64, atol=ATOL64)
    torch.testing.assert_close(post.logvar, t["ref64.posterior_logvar"], rtol=RTOL64, atol=ATOL64)
    torch.testing.assert_close(decoded, t["ref64.decoded"], rtol=RTOL64, atol=ATOL64)


def test_row_order_and_object_interleaving_do_not_matter(fx):
    t, meta, sd = fx
    model = _model(meta, sd)
    perm = torch.randperm(t["coords"].shape[0], generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        decoded = model.decode(t["coords"][perm], t["latent"][perm])
    torch.testing.assert_close(decoded, t["decoded"][perm], rtol=RTOL, atol=ATOL)
    # Gaussians of an object follow its rows in order: voxel v of the object owns rows 8v .. 8v+7
    reps = decoder_output_to_gaussians(t["coords"][perm], decoded, meta["constructor"]["resolution"], sd["MipGS_perturbation"])
    for i, g in enumerate(reps):
        rows_of_obj = perm[t["coords"][perm][:, 0] == i]  # original row index of each object row, in new order
        start = int((t["coords"][:, 0] < i).sum())
        gauss = (8 * (rows_of_obj - start))[:, None] + torch.arange(8)
        torch.testing.assert_close(g.xyz, t[f"rep{i}.xyz"][gauss.flatten()], rtol=RTOL, atol=ATOL)


def test_manifest_keys_shapes_dtypes():
    manifest = json.loads((FIXTURES / "manifest_static_vae.json").read_text())
    with torch.device("meta"):
        model = StaticVAE(**manifest["constructor"])
    entries = [[k, list(v.shape), str(v.dtype).replace("torch.", "")] for k, v in model.state_dict().items()]
    assert entries == [list(e) for e in manifest["entries"]]
    assert sum(p.numel() for p in model.parameters()) == manifest["num_parameters"]


def test_hammersley_perturbation_values(fx):
    _, _, sd = fx
    spec = torch.tensor(  # upstream spec §3.4
        [
            [-0.804719, -0.804719, -0.804719],
            [-0.549306, 0.0, -0.225993],
            [-0.346574, -0.346574, 0.225993],
            [-0.168236, 0.346574, -0.574311],
            [0.0, -0.549306, -0.074210],
            [0.168236, 0.168236, 0.388852],
            [0.346574, -0.168236, -0.388852],
            [0.549306, 0.549306, 0.074210],
        ]
    )
    p = hammersley_perturbation(8, 1.5)
    assert p.dtype == torch.float32 and p.shape == (8, 3)
    torch.testing.assert_close(p, spec, rtol=0, atol=1e-6)
    torch.testing.assert_close(p, sd["MipGS_perturbation"], rtol=0, atol=1e-7)


def test_gaussian_conversion_closed_form():
    # one voxel at (2, 0, 5) of a 4³ grid, known channels
    coords = torch.tensor([[0, 2, 0, 5 - 2]], dtype=torch.int32)
    feats = torch.linspace(-1, 1, 112, dtype=torch.float64)[None]
    pert = torch.zeros(8, 3, dtype=torch.float64)
    g = decoder_output_to_gaussians(coords, feats, 4, pert, voxel_size=1.5)[0]
    f = feats[0].numpy()
    centre = (np.array([2, 0, 3]) + 0.5) / 4
    xyz = centre + np.tanh(f[:24].reshape(8, 3)) / 4 * 0.5 * 1.5 - 0.5
    np.testing.assert_allclose(g.xyz.numpy(), xyz, rtol=1e-12)
    np.testing.assert_allclose(g.features_dc.numpy(), f[24:48].reshape(8, 3))
    np.testing.assert_allclose(g.scaling_raw.numpy(), f[48:72].reshape(8, 3))
    np.testing.assert_allclose(g.rotation_raw.numpy(), 0.1 * f[72:104].reshape(8, 4))
    np.testing.assert_allclose(g.opacity_raw.numpy(), f[104:112].reshape(8, 1))
    s = np.log1p(np.exp(f[48:72].reshape(8, 3) + (0.004 + np.log(-np.expm1(-0.004)))))
    np.testing.assert_allclose(g.scaling.numpy(), np.sqrt(s**2 + 9e-4**2), rtol=1e-6)
    with pytest.raises(ValueError):
        decoder_output_to_gaussians(coords, feats[:, :100], 4, pert)


def test_trellis_decoder_mapping_round_trip(fx):
    t, meta, sd = fx
    # GVF -> TRELLIS SLatGaussianDecoder names, exactly as the upstream decoder swap does (parity README)
    trellis = {}
    for k, v in sd.items():
        if k.startswith(("decoder.", "from_latent.", "out_layer.")):
            trellis[k.replace("decoder.", "blocks.").replace("from_latent.", "input_layer.")] = v
    trellis["offset_perturbation"] = sd["MipGS_perturbation"].clone()
    assert not any(k.startswith(("decoder.", "from_latent.")) for k in trellis)

    dec = StaticVAE(**meta["constructor"], decoder_only=True).eval()
    assert not any(k.startswith(("input_layer.", "encoder.", "to_latent.")) for k in dec.state_dict())
    dec.load_decoder_state_dict(convert_upstream("trellis_slat_gs_decoder", trellis))
    assert set(convert_upstream("trellis_slat_gs_decoder", trellis)) == set(dec.state_dict())
    with torch.no_grad():
        decoded = dec.decode(t["coords"], t["latent"])
    torch.testing.assert_close(decoded, t["decoded"], rtol=RTOL, atol=ATOL)
    _check_reps(dec.to_gaussians(t["coords"], decoded), t)
    with pytest.raises(RuntimeError, match="no encoder"):
        dec.encode(t["coords"], t["feats"])

    # a full GVF checkpoint also loads into the decoder-only model (encoder keys ignored)
    dec2 = StaticVAE(**meta["constructor"], decoder_only=True)
    dec2.load_decoder_state_dict(sd)
    torch.testing.assert_close(dec2.out_layer.weight, sd["out_layer.weight"])
    # strict on the decoder keys
    broken = dict(sd)
    broken.pop("decoder.1.mlp.mlp.2.bias")
    with pytest.raises(RuntimeError, match="decoder.1.mlp.mlp.2.bias"):
        dec2.load_decoder_state_dict(broken)
    with pytest.raises(RuntimeError, match="unexpected"):
        dec2.load_decoder_state_dict({**sd, "blocks.0.attn.to_qkv.weight": sd["decoder.0.attn.to_qkv.weight"]})


def test_gradients_reach_every_parameter_and_checkpointing_is_exact():
    cfg = dict(resolution=8, in_channels=6, model_channels=12, latent_channels=4, out_channels=28, num_blocks=2, num_heads=2, window_size=4)
    torch.manual_seed(0)
    coords = torch.tensor(sorted({(b, *map(int, torch.randint(0, 8, (3,)))) for b in range(2) for _ in range(30)}), dtype=torch.int32)
    feats = torch.randn(coords.shape[0], 6)
    grads = []
    for ckpt in (False, True):
        model = StaticVAE(**cfg, use_checkpoint=ckpt).train()
        torch.manual_seed(1)
        for p in model.parameters():  # upstream zero-inits the heads, which would block every gradient
            torch.nn.init.normal_(p, std=0.3)
        decoded, _, _ = model(coords, feats, generator=torch.Generator().manual_seed(3))
        loss = decoded.square().mean()  # decoder output only: reaches the encoder through z
        loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
        for n, p in model.named_parameters():
            assert p.grad is not None and p.grad.abs().sum() > 0, n
    for n in grads[0]:
        torch.testing.assert_close(grads[0][n], grads[1][n], rtol=1e-5, atol=1e-7)
    assert model.set_gradient_checkpointing(0.2) == 4 and model.set_gradient_checkpointing(1.0) == 0


def test_posterior_sampling_uses_the_generator():
    model = StaticVAE(resolution=8, in_channels=4, model_channels=12, latent_channels=2, out_channels=14, num_blocks=1, num_heads=2)
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.3)
    coords = torch.tensor([[0, 1, 2, 3], [0, 4, 4, 4], [1, 0, 0, 0]], dtype=torch.int32)
    feats = torch.randn(3, 4)
    with torch.no_grad():
        post = model.encode(coords, feats, sample=True, generator=torch.Generator().manual_seed(5))
    eps = torch.randn(3, 2, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(post.z, post.mean + torch.exp(0.5 * post.logvar) * eps)


def test_bad_inputs():
    model = StaticVAE(resolution=8, in_channels=4, model_channels=12, latent_channels=2, out_channels=14, num_blocks=1, num_heads=2)
    coords = torch.tensor([[0, 1, 2, 8]], dtype=torch.int32)
    with pytest.raises(ValueError, match="resolution|\\[0, 8\\)"):
        model.encode(coords, torch.randn(1, 4))
    with pytest.raises(ValueError, match="feats"):
        model.encode(coords.clamp_max(7), torch.randn(1, 5))
    with pytest.raises(ValueError, match="coords"):
        model.decode(coords.float(), torch.randn(1, 2))
    with pytest.raises(ValueError, match="attn_mode"):
        StaticVAE(attn_mode="shift_window")
    with pytest.raises(ValueError, match="out_channels"):
        StaticVAE(out_channels=100)


def test_benchmark_script_smoke(capsys):
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "scripts" / "benchmark_static_vae.py"
    spec = importlib.util.spec_from_file_location("benchmark_static_vae", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    results = bench.main(["--tiny", "--device", "cpu", "--warmup", "0", "--repeats", "1", "--voxels", "200"])
    assert [(r["mode"], r["dtype"]) for r in results] == [("infer", "fp32"), ("infer", "bf16"), ("train", "fp32"), ("train", "bf16")]
    assert all(r["voxels"] == 200 and r["total_ms"] > 0 for r in results)
    assert "encode ms" in capsys.readouterr().out
    coords = bench.shell_voxels(500, 16)
    assert coords.shape == (500, 4) and len({tuple(c) for c in coords.tolist()}) == 500


@pytest.mark.cuda
def test_bf16_autocast_on_cuda_is_close_to_float32(fx):
    t, meta, sd = fx
    model = _model(meta, sd).cuda()
    coords, latent = t["coords"].cuda(), t["latent"].cuda()
    with torch.no_grad():
        ref = model.decode(coords, latent)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = model.decode(coords, latent)
    torch.testing.assert_close(ref.cpu(), t["decoded"], rtol=RTOL, atol=1e-4)
    assert (out.float() - ref).abs().max() < 0.1 * ref.abs().max()
