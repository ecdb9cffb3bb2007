"""Feature extractors: the weight-free `simple` one and the DINOv2 wrapper (tiny random config, offline)."""
import re

import numpy as np
import pytest
import torch

from gvf.features import available_extractors, composite, get_extractor
from gvf.features.dinov2 import DINOV2_FEATURE_NAME, DINOV2_REPO_ID, DINOV2_REVISION, DinoV2Extractor
from gvf.features.simple import SimpleExtractor


# ----------------------------------------------------------------------------------------- simple
def test_registry():
    assert {"simple", "dinov2"} <= set(available_extractors())
    assert isinstance(get_extractor("simple", feature_resolution=16, token_grid=4), SimpleExtractor)
    with pytest.raises(ValueError, match="unknown feature extractor"):
        get_extractor("nope")


def test_simple_shapes_and_channels():
    ex = get_extractor("simple", feature_resolution=16, token_grid=4)
    img = torch.zeros(2, 4, 64, 64)
    img[:, :3] = torch.tensor([0.2, 0.5, 0.9])[None, :, None, None]
    img[0, 3, 16:48, 16:48] = 1.0  # object square in image 0; image 1 fully transparent
    fmap = ex.patch_feature_map(img)
    assert fmap.shape == (2, 16, 16, 16) and ex.feature_channels == 16
    # channels 0-2: colour on black (premultiplied), 3: alpha, 10: luminance
    assert torch.allclose(fmap[0, :3, 8, 8], torch.tensor([0.2, 0.5, 0.9]))
    assert torch.allclose(fmap[0, 3, 8, 8], torch.tensor(1.0)) and fmap[0, 3, 0, 0] == 0
    assert torch.allclose(fmap[0, 10, 8, 8], torch.tensor(0.2126 * 0.2 + 0.7152 * 0.5 + 0.0722 * 0.9))
    assert fmap[1, :4].abs().max() == 0
    # flat interior: no gradients, no local variation; silhouette edge: alpha gradient
    assert fmap[0, 11:13, 8, 8].abs().max() < 1e-6 and fmap[0, 13:, 8, 8].abs().max() < 1e-6
    assert fmap[0, 12, 8, 4] > 0.1
    tokens = ex.conditioning_tokens(img)
    assert tokens.shape == (2, 4 * 4 + 1, 16)
    # patch token (row-major) = mean of its 4x4 cell; global token = alpha-weighted mean
    assert torch.allclose(tokens[0, 1 * 4 + 2], fmap[0, :, 4:8, 8:12].mean((1, 2)), atol=1e-6)
    w = fmap[0, 3] / fmap[0, 3].sum()
    assert torch.allclose(tokens[0, -1], (fmap[0] * w).sum((1, 2)), atol=1e-6)
    # opaque RGB input: alpha channel 1
    assert torch.allclose(ex.patch_feature_map(img[:, :3])[:, 3], torch.ones(2, 16, 16))


def test_composite():
    rgba = torch.tensor([0.5, 1.0, 0.0, 0.25]).view(1, 4, 1, 1)
    assert torch.allclose(composite(rgba, 0.0).flatten(), torch.tensor([0.125, 0.25, 0.0]))
    assert torch.allclose(composite(rgba, 1.0).flatten(), torch.tensor([0.875, 1.0, 0.75]))
    with pytest.raises(ValueError):
        composite(torch.zeros(1, 2, 4, 4))


# ----------------------------------------------------------------------------------------- DINOv2
@pytest.fixture(scope="module")
def tiny_dinov2(tmp_path_factory):
    from transformers import Dinov2WithRegistersConfig, Dinov2WithRegistersModel

    torch.manual_seed(0)
    cfg = Dinov2WithRegistersConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=48,
                                    patch_size=14, image_size=56, num_register_tokens=4, layerscale_value=0.5)
    path = tmp_path_factory.mktemp("dinov2_tiny")
    Dinov2WithRegistersModel(cfg).save_pretrained(path)
    return path


def test_pinned_weights_constants():
    assert DINOV2_REPO_ID == "facebook/dinov2-with-registers-large"
    assert re.fullmatch(r"[0-9a-f]{40}", DINOV2_REVISION)
    assert DINOV2_FEATURE_NAME == "dinov2_vitl14_reg"


def test_dinov2_token_layouts(tiny_dinov2):
    ex = get_extractor("dinov2", model_path=str(tiny_dinov2), local_files_only=True)
    assert isinstance(ex, DinoV2Extractor) and ex.name == "dinov2_vitl14_reg"
    g, R, C = 4, 4, 32  # 56 / 14 patches per side, registers, width
    P = g * g
    torch.manual_seed(1)
    img = torch.rand(3, 4, 56, 56)
    pre = ex.prenorm_tokens(img)
    assert pre.shape == (3, 1 + R + P, C)
    # independent reference: the model's own hidden states / final layer norm
    x = ex.preprocess(img)
    with torch.no_grad():
        ref = ex.model(pixel_values=x, output_hidden_states=True)
    assert torch.allclose(pre, ref.hidden_states[-1], atol=1e-5)
    assert torch.allclose(ex.model.layernorm(pre), ref.last_hidden_state, atol=1e-5)

    cond = ex.conditioning_tokens(img)  # 1369 + 1 analogue: patches, then CLS
    assert cond.shape == (3, P + 1, C)
    assert torch.allclose(cond[:, :P], pre[:, 1 + R:]) and torch.allclose(cond[:, P], pre[:, 0])

    trellis = ex.trellis_condition(img)  # 1374 analogue: all tokens, non-affine LN
    assert trellis.shape == (3, 1 + R + P, C)
    mu = pre.mean(-1, keepdim=True)
    var = pre.var(-1, unbiased=False, keepdim=True)
    assert torch.allclose(trellis, (pre - mu) / torch.sqrt(var + 1e-5), atol=1e-5)

    fmap = ex.patch_feature_map(img)  # (B, C, g, g), row-major patches
    assert fmap.shape == (3, C, g, g)
    for i, j in [(0, 0), (1, 3), (3, 2)]:
        assert torch.allclose(fmap[:, :, i, j], pre[:, 1 + R + i * g + j])


def test_dinov2_preprocess_matches_upstream_recipe(tiny_dinov2):
    from PIL import Image

    ex = DinoV2Extractor.from_pretrained(str(tiny_dinov2), local_files_only=True)
    rng = np.random.default_rng(0)
    rgba = rng.integers(0, 256, (40, 40, 4), dtype=np.uint8)
    img = torch.from_numpy(rgba).permute(2, 0, 1)[None].float() / 255
    got = ex.preprocess(img)[0]
    # upstream: PIL LANCZOS resize of the RGBA PNG, /255, premultiply, ImageNet normalisation
    arr = np.asarray(Image.fromarray(rgba, "RGBA").resize((56, 56), Image.Resampling.LANCZOS), dtype=np.float32) / 255
    rgb = arr[..., :3] * arr[..., 3:]
    ref = (rgb - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
    assert torch.allclose(got, torch.from_numpy(ref).permute(2, 0, 1).float(), atol=1e-5)


def test_dinov2_offline_without_weights_fails_clearly(tmp_path):
    with pytest.raises(OSError, match="could not load DINOv2 weights"):
        DinoV2Extractor.from_pretrained(DINOV2_REPO_ID, local_files_only=True, cache_dir=str(tmp_path))


@pytest.mark.cuda
def test_dinov2_cuda_fp16_matches_cpu(tiny_dinov2):
    cpu = DinoV2Extractor.from_pretrained(str(tiny_dinov2), local_files_only=True)
    gpu = DinoV2Extractor.from_pretrained(str(tiny_dinov2), local_files_only=True, device="cuda", dtype=torch.float16)
    img = torch.rand(2, 4, 56, 56)
    a = cpu.conditioning_tokens(img)
    b = gpu.conditioning_tokens(img.cuda()).cpu()
    assert b.dtype == torch.float32 and torch.allclose(a, b, atol=5e-2, rtol=5e-2)
