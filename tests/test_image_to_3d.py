"""First-frame preprocessing and the whole image-to-3D pipeline on tiny random models (CPU, offline).

The tiny models are saved exactly as the real ones are published: a TRELLIS folder with pipeline.json
and ckpts/<name>.json|.safetensors, GVF's static VAE as an upstream `.pt` state_dict (with the DDP
prefix), and a DINOv2 folder written by transformers' `save_pretrained`.
"""

import importlib.util
import json
import math
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import load_file, save_file

from gvf.gaussians import Gaussians, load_ply
from gvf.hub import WeightsNotFoundError
from gvf.image_to_3d import ImageTo3DPipeline, canonical_gaussians_from_image, denormalize_slat, preprocess_image
from gvf.models.static_vae import StaticVAE
from gvf.models.trellis import SLatFlow, SparseStructureDecoder, SparseStructureFlow

FIXTURES = Path(__file__).parent / "fixtures"
ROOT = Path(__file__).resolve().parents[1]

COND = 32  # tiny DINOv2 width = condition channels
SS_FLOW = dict(resolution=4, in_channels=8, out_channels=8, model_channels=24, cond_channels=COND, num_blocks=1,
               num_heads=2, mlp_ratio=2, patch_size=1, pe_mode="ape", qk_rms_norm=True, use_fp16=True)
SS_DEC = dict(out_channels=1, latent_channels=8, num_res_blocks=1, num_res_blocks_middle=1, channels=[16, 8], use_fp16=True)
SLAT_FLOW = dict(resolution=8, in_channels=8, out_channels=8, model_channels=24, cond_channels=COND, num_blocks=1,
                 num_heads=2, mlp_ratio=2, patch_size=2, num_io_res_blocks=2, io_block_channels=[8], pe_mode="ape",
                 qk_rms_norm=True, use_fp16=True)
STATIC_VAE = dict(resolution=8, in_channels=16, out_channels=112, model_channels=24, latent_channels=8, num_blocks=2,
                  num_heads=2, mlp_ratio=2, attn_mode="swin", window_size=8, use_fp16=True, use_old_attn_impl=False, norm_output=True)
NORMALIZATION = {"mean": [-2.17, 0.0, -0.13, -0.08, -0.53, 0.72, -1.14, 1.2], "std": [2.38, 2.39, 2.12, 2.17, 2.66, 2.37, 2.62, 2.68]}


def _randomize(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Re-draw every parameter (the upstream zero-inits would give empty occupancy)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim >= 2:
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(fan_in))
            elif name.endswith("weight") or name.endswith("gamma"):
                p.copy_(1 + 0.2 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
    return model


def _sampler(steps):
    return {"name": "FlowEulerGuidanceIntervalSampler", "args": {"sigma_min": 1e-5},
            "params": {"steps": steps, "cfg_strength": 5.0, "cfg_interval": [0.5, 1.0], "rescale_t": 3.0}}


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    root = tmp_path_factory.mktemp("weights")
    trellis = root / "trellis"
    (trellis / "ckpts").mkdir(parents=True)
    models = {"sparse_structure_flow_model": ("ckpts/ss_flow_tiny", "SparseStructureFlowModel", SparseStructureFlow, SS_FLOW),
              "sparse_structure_decoder": ("ckpts/ss_dec_tiny", "SparseStructureDecoder", SparseStructureDecoder, SS_DEC),
              "slat_flow_model": ("ckpts/slat_flow_tiny", "SLatFlowModel", SLatFlow, SLAT_FLOW)}
    for i, (stem, name, cls, args) in enumerate(models.values()):
        model = _randomize(cls(**args), seed=10 + i)
        (trellis / f"{stem}.json").write_text(json.dumps({"name": name, "args": args}))
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(trellis / f"{stem}.safetensors"))
    pipeline_json = {"name": "TrellisImageTo3DPipeline", "args": {
        "models": {k: v[0] for k, v in models.items()} | {"slat_decoder_gs": "ckpts/unused"},
        "sparse_structure_sampler": _sampler(25), "slat_sampler": _sampler(25),
        "slat_normalization": NORMALIZATION, "image_cond_model": "dinov2_vitl14_reg"}}
    (trellis / "pipeline.json").write_text(json.dumps(pipeline_json))

    vae = _randomize(StaticVAE(**STATIC_VAE), seed=20)
    torch.save({f"module.{k}": v for k, v in vae.state_dict().items()}, root / "ema_static_vae_0.9999_200000.pt")
    (root / "static_vae.yaml").write_text(yaml.safe_dump(STATIC_VAE))

    from transformers import Dinov2WithRegistersConfig, Dinov2WithRegistersModel

    torch.manual_seed(0)
    cfg = Dinov2WithRegistersConfig(hidden_size=COND, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                                    image_size=56, patch_size=14, num_register_tokens=4)
    Dinov2WithRegistersModel(cfg).save_pretrained(root / "dinov2")
    return {"root": root, "trellis": trellis, "static_vae": root / "ema_static_vae_0.9999_200000.pt",
            "static_vae_config": root / "static_vae.yaml", "dinov2": root / "dinov2", "decoder": vae}


@pytest.fixture(scope="module")
def pipeline(weights):
    return ImageTo3DPipeline.from_pretrained(
        weights["trellis"], weights["static_vae"], static_vae_config=weights["static_vae_config"],
        dinov2=weights["dinov2"], local_files_only=True, dtype=torch.float32,
    )


def _rgba_image(w=90, h=70, box=(20, 15, 61, 48)):
    """Coloured noise with an opaque rectangle `box` = (x0, y0, x1, y1) inclusive, soft alpha elsewhere."""
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, (h, w, 4), dtype=np.uint8)
    arr[:, :, 3] = rng.integers(0, 150, (h, w))  # below 0.8·255 = 204: outside the bbox test
    x0, y0, x1, y1 = box
    arr[y0 : y1 + 1, x0 : x1 + 1, 3] = 255
    return Image.fromarray(arr, "RGBA")


# ---- preprocessing ---------------------------------------------------------------------------------


def test_preprocess_crop_resize_premultiply():
    image = _rgba_image()
    out = preprocess_image(image)
    assert out.mode == "RGB" and out.size == (518, 518)
    # bbox x 20..61, y 15..48 -> centre (40.5, 31.5), side int(41·1.2) = 49, box ±24
    crop = image.crop((16, 8, 64, 56))  # PIL rounds the float box (16.5, 7.5, 64.5, 55.5) half-to-even
    arr = np.asarray(crop.resize((518, 518), Image.Resampling.LANCZOS)).astype(np.float32) / 255
    expected = (arr[:, :, :3] * arr[:, :, 3:4] * 255).astype(np.uint8)
    np.testing.assert_array_equal(np.asarray(out), expected)


def test_preprocess_mask_replaces_alpha():
    image = _rgba_image()
    alpha = np.asarray(image)[:, :, 3].copy()
    rgb = image.convert("RGB")
    from_mask = preprocess_image(rgb, mask=Image.fromarray(alpha, "L"))
    np.testing.assert_array_equal(np.asarray(from_mask), np.asarray(preprocess_image(image)))
    float_mask = preprocess_image(rgb, mask=alpha.astype(np.float32) / 255)
    np.testing.assert_array_equal(np.asarray(float_mask), np.asarray(from_mask))
    with pytest.raises(ValueError, match="mask must be"):
        preprocess_image(rgb, mask=np.zeros((3, 3), np.uint8))
    with pytest.raises(ValueError, match="empty"):
        preprocess_image(rgb, mask=np.zeros(alpha.shape, np.uint8))


@pytest.mark.skipif(importlib.util.find_spec("rembg") is not None, reason="rembg is installed")
def test_opaque_image_without_rembg_fails_clearly():
    with pytest.raises(ImportError, match="pip install rembg"):
        preprocess_image(Image.new("RGB", (40, 30), (255, 255, 255)))


def test_opaque_image_goes_through_rembg(monkeypatch):
    calls = {}
    fake = types.ModuleType("rembg")

    def new_session(name):
        calls["session"] = name
        return "session"

    def remove(img, session):
        calls["size"], calls["got_session"] = img.size, session
        alpha = np.zeros(img.size[::-1], np.uint8)
        alpha[10:200, 30:300] = 255
        return Image.fromarray(np.dstack([np.asarray(img), alpha]), "RGBA")

    fake.new_session, fake.remove = new_session, remove
    monkeypatch.setitem(sys.modules, "rembg", fake)
    out = preprocess_image(Image.new("RGB", (2048, 1024), (200, 10, 10)))
    assert calls == {"session": "u2net", "size": (1024, 512), "got_session": "session"}  # ≤ 1024 before rembg
    assert out.size == (518, 518)


def test_denormalize_matches_fixture():
    t = load_file(str(FIXTURES / "trellis_flow_euler.safetensors"))
    norm = {"mean": t["slat_normalization.mean"].tolist(), "std": t["slat_normalization.std"].tolist()}
    torch.testing.assert_close(denormalize_slat(t["sparse.output"], norm), t["sparse.denormalized"], rtol=1e-6, atol=1e-6)


# ---- the pipeline --------------------------------------------------------------------------------


def test_pipeline_end_to_end_is_deterministic(pipeline):
    image = _rgba_image()
    g1 = pipeline.run(image, seed=3)
    g2 = pipeline.run(image, seed=3)
    g3 = pipeline.run(image, seed=4)
    assert isinstance(g1, Gaussians) and len(g1) > 0 and len(g1) % 8 == 0
    assert g1.xyz.dtype == torch.float32 and torch.isfinite(g1.to_tensor14()).all()
    assert g1.xyz.abs().max() <= 0.5 + 0.75 / 8  # voxel centres in the unit box, offsets ≤ 0.75 voxel
    torch.testing.assert_close(g1.to_tensor14(), g2.to_tensor14(), rtol=0, atol=0)
    assert len(g1) != len(g3) or not torch.equal(g1.to_tensor14(), g3.to_tensor14())


def test_pipeline_noise_is_seeded_like_upstream(pipeline):
    first_x = {}

    def spy(name):
        def hook(module, args):
            first_x.setdefault(name, args[0])

        return hook

    h1 = pipeline.ss_flow.register_forward_pre_hook(spy("ss"))
    h2 = pipeline.slat_flow.register_forward_pre_hook(spy("slat"))
    try:
        gaussians = pipeline.run(_rgba_image(), seed=7)
    finally:
        h1.remove(), h2.remove()
    R = SS_FLOW["resolution"]
    torch.manual_seed(7)
    ss_noise = torch.randn(1, 8, R, R, R)
    slat_noise = torch.randn(len(gaussians) // 8, 8)  # the next draw of the CPU generator
    torch.testing.assert_close(first_x["ss"], ss_noise, rtol=0, atol=0)
    torch.testing.assert_close(first_x["slat"].feats, slat_noise, rtol=0, atol=0)
    coords = first_x["slat"].coords
    assert torch.equal(coords, torch.unique(coords, dim=0))  # argwhere order: ascending [b, x, y, z]


def test_pipeline_runs_with_fp16_torsos(weights):
    pipe = ImageTo3DPipeline.from_pretrained(
        weights["trellis"], weights["static_vae"], static_vae_config=weights["static_vae_config"],
        dinov2=weights["dinov2"], local_files_only=True,
    )
    assert pipe.ss_flow.dtype == torch.float16 and pipe.slat_flow.dtype == torch.float16  # released use_fp16
    gaussians = canonical_gaussians_from_image(_rgba_image(), pipe, seed=1)
    assert len(gaussians) > 0 and torch.isfinite(gaussians.to_tensor14()).all()


def test_gaussian_decoder_weights_are_loaded_strictly(pipeline, weights):
    ref = weights["decoder"].state_dict()
    for key, value in pipeline.gaussian_decoder.state_dict().items():
        torch.testing.assert_close(value, ref[key], rtol=0, atol=0)


def test_missing_weights_fail_with_one_sentence(tmp_path, weights):
    with pytest.raises(WeightsNotFoundError) as err:
        ImageTo3DPipeline.from_pretrained(tmp_path, weights["static_vae"], static_vae_config=weights["static_vae_config"],
                                          dinov2=weights["dinov2"], local_files_only=True)
    msg = str(err.value)
    assert "pipeline.json" in msg and "ckpts/ss_flow_img_dit_L_16l8_fp16.safetensors" in msg and str(tmp_path) in msg
    assert "\n" not in msg
    with pytest.raises(WeightsNotFoundError, match="JeffreyXiang/TRELLIS-image-large"):
        ImageTo3DPipeline.from_pretrained(cache_dir=tmp_path / "empty_cache", local_files_only=True)
    with pytest.raises(WeightsNotFoundError, match="does not exist"):
        ImageTo3DPipeline.from_pretrained(tmp_path / "nowhere")


def test_script_writes_ply(weights, tmp_path):
    spec = importlib.util.spec_from_file_location("image_to_3d_script", ROOT / "scripts" / "image_to_3d.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    _rgba_image().save(tmp_path / "frame.png")
    out = tmp_path / "out" / "g.ply"
    rc = script.main([str(tmp_path / "frame.png"), "-o", str(out), "--seed", "2", "--device", "cpu", "--trellis", str(weights["trellis"]),
                      "--static-vae", str(weights["static_vae"]), "--static-vae-config", str(weights["static_vae_config"]),
                      "--dinov2", str(weights["dinov2"]), "--local-files-only", "--save-preprocessed", str(tmp_path / "cond.png")])
    assert rc == 0 and out.is_file() and (tmp_path / "cond.png").is_file()
    assert len(load_ply(out)) > 0
    assert script.main([str(tmp_path / "missing.png"), "-o", str(out)]) == 2


def test_benchmark_script_tiny_smoke(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("benchmark_trellis_script", ROOT / "scripts" / "benchmark_trellis.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "rows.json"
    assert bench.main(["--tiny", "--device", "cpu", "--repeats", "1", "--warmup", "0", "--modes", "fp32", "--voxels", "100", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())
    assert len(rows) == 1 and rows[0]["mode"] == "fp32" and rows[0]["voxels"] == 100
    assert all(rows[0][s] > 0 for s in bench.STAGES)
    assert "total [s]" in capsys.readouterr().out
    assert bench.main(["--tiny", "--device", "cpu", "--modes", "fp64"]) == 2
