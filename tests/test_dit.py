"""TemporalDiT: parity with the upstream DiT fixtures, the official state-dict manifest, the condition
cache, initialisation, checkpointing and input validation."""

import importlib.util
import json

import pytest
import torch
from safetensors.torch import load_file

from gvf.checkpoints import convert_upstream, load_state_dict_strict
from gvf.config import DiffusionExperimentConfig, DiTConfig, load_config, to_kwargs
from gvf.models import TemporalDiT
from gvf.models.dit import TINY

DIT_FIXTURES = ["dit_forward", "dit_forward_no_temporal"]
COND_KEYS = ("cond_images", "static_latent", "deformation_position_xyz")


def _close(actual, expected, rtol, atol):
    """max |a − b| / (atol + rtol·|b|) — at most 1 passes (the README's measure)."""
    expected = expected.to(torch.float64)
    return ((actual.to(torch.float64) - expected).abs() / (atol + rtol * expected.abs())).max().item()


def _load(fixtures_dir, name, dtype=torch.float32):
    tensors = load_file(str(fixtures_dir / f"{name}.safetensors"))
    meta = json.loads((fixtures_dir / f"{name}.json").read_text())
    state = convert_upstream("dit", {k[len("sd."):]: v for k, v in tensors.items() if k.startswith("sd.")})
    model = TemporalDiT(**meta["constructor"])
    load_state_dict_strict(model, state, source=name)
    model = model.eval().to(dtype)
    inputs = {k: tensors[k].to(dtype) for k in ("x", "t", *COND_KEYS)}
    return model, inputs, tensors, meta


@pytest.mark.parametrize("name", DIT_FIXTURES)
def test_forward_and_intermediates_match_upstream(fixtures_dir, name):
    model, inp, ref, meta = _load(fixtures_dir, name)
    assert {k for k, *_ in meta["state_dict"]["entries"]} == set(model.state_dict())
    seen = {}
    model.t_embedder.register_forward_hook(lambda m, i, o: seen.__setitem__("inter.t_emb", o))
    model.pos_embedder.register_forward_hook(lambda m, i, o: seen.__setitem__("inter.ape", o))
    model.input_layer.register_forward_hook(lambda m, i, o: seen.__setitem__("inter.input_layer", o))
    for i, block in enumerate(model.blocks):
        block.register_forward_hook(lambda m, a, o, i=i: seen.__setitem__(f"inter.block{i}_out", o))
    with torch.no_grad():
        out = model(inp["x"], inp["t"], **{k: inp[k] for k in COND_KEYS})
    assert out.shape == ref["output"].shape
    assert _close(out, ref["output"], 1e-4, 1e-5) <= 1
    inter = [k for k in ref if k.startswith("inter.")]
    assert len(inter) == len(model.blocks) + 3
    for key in inter:
        assert _close(seen[key], ref[key], 1e-4, 1e-5) <= 1, key


@pytest.mark.parametrize("name", DIT_FIXTURES)
def test_cached_conditions_match_upstream_and_are_reusable(fixtures_dir, name):
    model, inp, ref, _ = _load(fixtures_dir, name)
    with torch.no_grad():
        cache = model.precompute_conditions(**{k: inp[k] for k in COND_KEYS})
        out = model(inp["x"], inp["t"], cache=cache)
        assert _close(out, ref["output"], 1e-4, 1e-5) <= 1
        # The same cache serves other x and t (as in every solver step).
        x2, t2 = torch.randn_like(inp["x"]), inp["t"].flip(0) * 0.5
        cached = model(x2, t2, cache=cache)
        plain = model(x2, t2, **{k: inp[k] for k in COND_KEYS})
    torch.testing.assert_close(cached, plain, rtol=1e-6, atol=1e-6)
    assert (cached - out).abs().max() > 1e-2  # the output does depend on x and t


@pytest.mark.parametrize("name", DIT_FIXTURES)
def test_float64_matches_reference(fixtures_dir, name):
    model, inp, ref, _ = _load(fixtures_dir, name, torch.float64)
    with torch.no_grad():
        out = model(inp["x"], inp["t"], **{k: inp[k] for k in COND_KEYS})
    assert out.dtype == torch.float64
    assert _close(out, ref["ref64.output"], 1e-4, 1e-4) <= 1


def test_static_rows_shared_by_frames(fixtures_dir):
    """Frames with identical inputs get identical outputs only through shared static context:
    a frame-permutation of x and the image tokens permutes the output (no temporal position code)."""
    model, inp, _, _ = _load(fixtures_dir, "dit_forward")
    perm = torch.arange(inp["x"].shape[1]).flip(0)
    with torch.no_grad():
        out = model(inp["x"], inp["t"], **{k: inp[k] for k in COND_KEYS})
        cond = dict((k, inp[k]) for k in COND_KEYS)
        cond["cond_images"] = inp["cond_images"][:, perm]
        out_perm = model(inp["x"][:, perm], inp["t"], **cond)
    torch.testing.assert_close(out_perm, out[:, perm], rtol=1e-5, atol=1e-5)


def test_manifest_matches_official_config(fixtures_dir):
    manifest = json.loads((fixtures_dir / "manifest_dit.json").read_text())
    path = fixtures_dir.parents[1] / "configs" / "official" / "diffusion.yml"
    kwargs = to_kwargs(load_config(path, DiffusionExperimentConfig).model) if path.is_file() else manifest["constructor"]
    with torch.device("meta"):
        model = TemporalDiT(**kwargs)
    state = model.state_dict()
    expected = {key: (tuple(shape), dtype) for key, shape, dtype in manifest["entries"]}
    assert len(state) == manifest["num_entries"] == len(expected)
    assert {k: (tuple(v.shape), str(v.dtype).replace("torch.", "")) for k, v in state.items()} == expected
    assert sum(p.numel() for p in model.parameters()) == manifest["num_parameters"]


def test_default_config_is_official(fixtures_dir):
    manifest = json.loads((fixtures_dir / "manifest_dit.json").read_text())
    with torch.device("meta"):
        model = TemporalDiT()
    assert sum(p.numel() for p in model.parameters()) == manifest["num_parameters"]


def _tiny_inputs(cfg=TINY, B=2, T=3, N=5, L=4, S=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(B, T, N, cfg.in_channels, generator=g),
        torch.rand(B, generator=g) * 999,
        {
            "cond_images": torch.randn(B, T, L, cfg.image_cond_channels, generator=g),
            "static_latent": torch.randn(B, S, cfg.static_cond_channels, generator=g),
            "deformation_position_xyz": torch.rand(B, N, 3, generator=g) - 0.5,
        },
    )


def _randomize(model, seed=0):
    """Re-draw all parameters (like the fixtures) so that no branch is zero-initialised."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if name.endswith("bias"):
                p.copy_(0.1 * noise)
            elif name.endswith("gamma") or p.ndim == 1:
                p.copy_(1 + 0.2 * noise)
            else:
                p.copy_(noise / p[0].numel() ** 0.5)


def test_fresh_model_outputs_zeros_and_trains():
    torch.manual_seed(0)
    model = TemporalDiT(TINY)
    x, t, cond = _tiny_inputs()
    out = model(x, t, **cond)
    assert out.shape == x.shape[:-1] + (TINY.out_channels,)
    assert torch.count_nonzero(out) == 0
    out.square().sum().backward()  # zero output layer still receives gradients
    assert model.final_layer.linear.weight.grad is not None


def test_gradient_checkpointing_same_values_and_grads():
    x, t, cond = _tiny_inputs()
    ref = TemporalDiT(TINY)
    _randomize(ref)
    ckpt = TemporalDiT(DiTConfig(**{**to_kwargs(TINY), "use_checkpoint": True}))
    ckpt.load_state_dict(ref.state_dict())
    outs, grads = [], []
    for model in (ref, ckpt):
        model.zero_grad()
        out = model(x, t, **cond)
        out.square().mean().backward()
        outs.append(out.detach())
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    torch.testing.assert_close(outs[0], outs[1])
    torch.testing.assert_close(grads[0], grads[1])


def test_temporal_attention_mixes_frames_only_when_enabled():
    x, t, cond = _tiny_inputs()
    for no_temporal in (False, True):
        model = TemporalDiT(DiTConfig(**{**to_kwargs(TINY), "no_temporal_attn": no_temporal}))
        _randomize(model, 1)
        cond_static = dict(cond, cond_images=torch.zeros_like(cond["cond_images"]))
        x2 = x.clone()
        x2[:, 0] += 1.0  # perturb frame 0 only
        with torch.no_grad():
            delta = (model(x2, t, **cond_static) - model(x, t, **cond_static))[:, 1:].abs().max()
        assert (delta > 1e-4) if not no_temporal else (delta == 0)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda x, t, c: (x[..., :-1], t, c), "x must be"),
        (lambda x, t, c: (x[0], t, c), "x must be"),
        (lambda x, t, c: (x, t[:1], c), "t must have shape"),
        (lambda x, t, c: (x, t, dict(c, cond_images=c["cond_images"][..., :-1])), "cond_images must be"),
        (lambda x, t, c: (x, t, dict(c, cond_images=c["cond_images"][:, :-1])), "conditions are for"),
        (lambda x, t, c: (x, t, dict(c, static_latent=c["static_latent"][:1])), "static_latent must be"),
        (lambda x, t, c: (x, t, dict(c, deformation_position_xyz=c["deformation_position_xyz"][..., :2])), "deformation_position_xyz must be"),
        (lambda x, t, c: (x, t, dict(c, deformation_position_xyz=c["deformation_position_xyz"][:, :-1])), "positions"),
        (lambda x, t, c: (x, t, {k: v for k, v in c.items() if k != "deformation_position_xyz"}), "required"),
        (lambda x, t, c: (x, t, {k: v for k, v in c.items() if k != "static_latent"}), "needs cond_images and static_latent"),
    ],
)
def test_bad_shapes_raise_value_error(change, message):
    model = TemporalDiT(TINY)
    x, t, cond = change(*_tiny_inputs())
    with pytest.raises(ValueError, match=message):
        model(x, t, **cond)


def test_bad_arguments_raise_value_error():
    with pytest.raises(ValueError, match="unknown TemporalDiT argument"):
        TemporalDiT(model_channel=8)
    with pytest.raises(ValueError, match="share_mod"):
        TemporalDiT(**{**to_kwargs(TINY), "share_mod": True})
    with pytest.raises(ValueError, match="pe_mode"):
        TemporalDiT(**{**to_kwargs(TINY), "pe_mode": "rope"})
    model = TemporalDiT(TINY)
    x, t, cond = _tiny_inputs()
    cache = model.precompute_conditions(**cond)
    with pytest.raises(ValueError, match="not both"):
        model(x, t, cache=cache, **cond)
    with pytest.raises(ValueError, match="conditions are for"):
        model(x[:1], t[:1], cache=cache)


def test_learnable_and_no_position_modes():
    for pe_mode in ("learnable", "none"):
        cfg = DiTConfig(**{**to_kwargs(TINY), "pe_mode": pe_mode, "resolution": 5})
        model = TemporalDiT(cfg)
        assert ("pos_embedder" in model.state_dict()) == (pe_mode == "learnable")
        x, t, cond = _tiny_inputs(N=5)
        cond.pop("deformation_position_xyz")
        assert model(x, t, **cond).shape == x.shape


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_autocast_on_gpu_close_to_float32(fixtures_dir, dtype):
    model, inp, ref, _ = _load(fixtures_dir, "dit_forward")
    model = model.cuda()
    inp = {k: v.cuda() for k, v in inp.items()}
    with torch.no_grad(), torch.autocast("cuda", dtype=dtype):
        cache = model.precompute_conditions(**{k: inp[k] for k in COND_KEYS})
        out = model(inp["x"], inp["t"], cache=cache).float().cpu()
    err = (out - ref["output"]).abs().max() / ref["output"].abs().max()
    assert err < (3e-2 if dtype == torch.float16 else 8e-2)  # catches structural errors (O(1))


def test_benchmark_script_runs_tiny_on_cpu(fixtures_dir, tmp_path, capsys):
    script = fixtures_dir.parents[1] / "scripts" / "benchmark_models.py"
    spec = importlib.util.spec_from_file_location("benchmark_models", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    rows = module.main(["--tiny", "--device", "cpu", "--precisions", "fp32", "--warmup", "0", "--repeats", "1", "--json", str(tmp_path / "rows.json")])
    text = capsys.readouterr().out
    assert "DiT forward" in text and "DPM-Solver++ adaptive sample" in text and "motion VAE decode" in text
    assert {r["conditions"] for r in rows if r["what"].startswith("DiT")} == {"cached", "uncached"}
    sample = next(r for r in rows if r["what"].startswith("DPM"))
    assert sample["note"].startswith("NFE ") and int(sample["note"].split()[1].rstrip(",")) % 2 == 0
    assert json.loads((tmp_path / "rows.json").read_text())[0]["what"] == rows[0]["what"]



# --- static cross-attention fold and batched adaLN (speed paths; must be the same function) ---


@pytest.mark.parametrize("name", DIT_FIXTURES)
def test_folded_static_attention_matches_upstream(fixtures_dir, name):
    model, inp, ref, _ = _load(fixtures_dir, name)
    cond = {k: inp[k] for k in COND_KEYS}
    with torch.no_grad():
        cache = model.precompute_conditions(**cond, fold_static=True)
        assert all(type(kv).__name__ == "FoldedStaticAttention" for kv in cache.static_kv)
        out = model(inp["x"], inp["t"], cache=cache)
    assert _close(out, ref["output"], 1e-4, 1e-5) <= 1
    model64, inp64, _, _ = _load(fixtures_dir, name, torch.float64)
    with torch.no_grad():
        cache64 = model64.precompute_conditions(**{k: inp64[k] for k in COND_KEYS}, fold_static=True)
        out64 = model64(inp64["x"], inp64["t"], cache=cache64)
    assert _close(out64, ref["ref64.output"], 1e-4, 1e-4) <= 1


def test_folded_static_attention_zero_rows_and_gradients():
    """All-zero static rows (the unconditional CFG branch) and the parameter gradients agree with the
    unfolded computation (float64)."""
    model = TemporalDiT(TINY).double()
    _randomize(model, seed=3)
    x, t, cond = _tiny_inputs(B=2, S=7)
    x, cond = x.double(), {k: v.double() for k, v in cond.items()}
    cond["static_latent"][1] = 0.0
    outs, grads = [], []
    for fold in (False, True):
        model.zero_grad()
        out = model(x, t.double(), cache=model.precompute_conditions(**cond, fold_static=fold))
        (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).reshape(out.shape)).sum().backward()
        outs.append(out.detach())
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    torch.testing.assert_close(outs[1], outs[0], rtol=1e-10, atol=1e-10)
    # The static branch's weights get the same gradients through the folded products.
    for key in ("blocks.0.static_cross_attn.to_q.weight", "blocks.1.static_cross_attn.to_kv.weight", "static_cond_proj.weight", "blocks.0.adaLN_modulation.1.weight"):
        torch.testing.assert_close(grads[1][key], grads[0][key], rtol=1e-8, atol=1e-10)


def test_fold_static_choice_and_rms_norm_cross():
    model = TemporalDiT(TINY)  # head dim 8 < 16 padded static channels: auto does not fold
    _, _, cond = _tiny_inputs()
    assert isinstance(model.precompute_conditions(**cond).static_kv[0], tuple)
    big = TemporalDiT(resolution=4, in_channels=4, out_channels=4, model_channels=64, image_cond_channels=8, num_blocks=1, num_heads=2)
    g = torch.Generator().manual_seed(0)
    cond = {"cond_images": torch.randn(1, 2, 3, 8, generator=g), "static_latent": torch.randn(1, 5, 14, generator=g), "deformation_position_xyz": torch.rand(1, 4, 3, generator=g)}
    assert not isinstance(big.precompute_conditions(**cond).static_kv[0], tuple)  # head dim 32 > 16: folded
    normed = TemporalDiT(TINY.__class__(**{**TINY.__dict__, "qk_rms_norm_cross": True}))
    _, _, cond = _tiny_inputs()
    assert isinstance(normed.precompute_conditions(**cond).static_kv[0], tuple)
    with pytest.raises(ValueError, match="qk_rms_norm_cross"):
        normed.precompute_conditions(**cond, fold_static=True)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_folded_static_attention_under_autocast(fixtures_dir, dtype):
    model, inp, ref, _ = _load(fixtures_dir, "dit_forward")
    model = model.cuda()
    inp = {k: v.cuda() for k, v in inp.items()}
    with torch.no_grad(), torch.autocast("cuda", dtype=dtype):
        cond = {k: inp[k] for k in COND_KEYS}
        folded = model(inp["x"], inp["t"], cache=model.precompute_conditions(**cond, fold_static=True)).float().cpu()
        plain = model(inp["x"], inp["t"], cache=model.precompute_conditions(**cond, fold_static=False)).float().cpu()
    scale = ref["output"].abs().max()
    assert (folded - ref["output"]).abs().max() / scale < (3e-2 if dtype == torch.float16 else 8e-2)
    assert (folded - plain).abs().max() / scale < (1e-2 if dtype == torch.float16 else 4e-2)  # rounding only
