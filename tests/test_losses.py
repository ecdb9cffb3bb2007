"""Image losses (SSIM vs an independent scipy implementation, LPIPS structure and weight loading) and the
static-VAE objective's weighting."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage

import gvf.train.lpips as lpips_mod
from gvf.gaussians import Gaussians
from gvf.train.losses import (
    LPIPS,
    StaticVAELossConfig,
    kl_divergence,
    l1_loss,
    opacity_regularization,
    ssim,
    static_vae_losses,
    volume_regularization,
)


def _ssim_reference(x, y):
    """Textbook SSIM in float64 numpy/scipy: 11×11 Gaussian (σ 1.5) window, zero padding, mean of the map."""
    r = np.arange(11) - 5
    g = np.exp(-(r**2) / (2 * 1.5**2))
    w = np.outer(g, g) / np.outer(g, g).sum()
    vals = []
    for a, b in zip(x.reshape(-1, *x.shape[-2:]), y.reshape(-1, *y.shape[-2:])):
        f = lambda t: ndimage.correlate(t, w, mode="constant", cval=0.0)  # noqa: E731
        ma, mb = f(a), f(b)
        va, vb, cab = f(a * a) - ma**2, f(b * b) - mb**2, f(a * b) - ma * mb
        c1, c2 = 0.01**2, 0.03**2
        vals.append(((2 * ma * mb + c1) * (2 * cab + c2)) / ((ma**2 + mb**2 + c1) * (va + vb + c2)))
    return float(np.mean(vals))


def test_ssim_matches_scipy_reference_and_is_one_for_identical_images():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 21, 26, generator=g, dtype=torch.float64)
    y = (x + 0.2 * torch.randn(2, 3, 21, 26, generator=g, dtype=torch.float64)).clamp(0, 1)
    assert abs(float(ssim(x, y)) - _ssim_reference(x.numpy(), y.numpy())) < 1e-12
    assert abs(float(ssim(x, x)) - 1.0) < 1e-12
    per_image = ssim(x, y, reduction="none")
    assert per_image.shape == (2,)
    assert abs(float(per_image[1]) - _ssim_reference(x[1:].numpy(), y[1:].numpy())) < 1e-12
    assert abs(float(ssim(x.float(), y.float())) - _ssim_reference(x.numpy(), y.numpy())) < 1e-5
    with pytest.raises(ValueError):
        ssim(x, y[..., :-1])


def test_l1_and_kl():
    a, b = torch.tensor([0.0, 1.0, 3.0]), torch.tensor([1.0, 1.0, 1.0])
    assert float(l1_loss(a, b)) == pytest.approx(1.0)
    mean, logvar = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, math.log(2.0)]])
    # KL terms: 0.5·(1 + 1 − 0 − 1) = 0.5 and 0.5·(0 + 2 − log 2 − 1)
    assert float(kl_divergence(mean, logvar)) == pytest.approx((0.5 + 0.5 * (1 - math.log(2))) / 2)


@pytest.fixture(scope="module")
def random_lpips():
    torch.manual_seed(0)
    return LPIPS(pretrained=False)


def test_lpips_random_backbone_shapes_and_zero_for_identical(random_lpips):
    g = torch.Generator().manual_seed(1)
    x = torch.rand(2, 3, 32, 32, generator=g)
    y = torch.rand(2, 3, 32, 32, generator=g)
    d = random_lpips(x, y)
    assert d.shape == (2,) and bool((d > 0).all())
    assert torch.allclose(random_lpips(x, x), torch.zeros(2), atol=1e-7)
    assert not any(p.requires_grad for p in random_lpips.parameters())
    random_lpips.train()
    assert not random_lpips.training
    x.requires_grad_(True)
    random_lpips(x, y).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    with pytest.raises(ValueError):
        random_lpips(x[:, :2], y[:, :2])


def test_lpips_equals_a_functional_reimplementation(random_lpips):
    """VGG16 taps (relu1_2, relu2_2, relu3_3, relu4_3, relu5_3) written out with F ops on the state_dict."""
    sd = random_lpips.state_dict()
    g = torch.Generator().manual_seed(2)
    x, y = torch.rand(1, 3, 32, 32, generator=g), torch.rand(1, 3, 32, 32, generator=g)
    convs = [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28]
    pools_before = {5, 10, 17, 24}
    taps_after = {2, 7, 14, 21, 28}

    def feats(img):
        h = ((img * 2 - 1) - torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1)) / torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1)
        out = []
        for i in convs:
            if i in pools_before:
                h = F.max_pool2d(h, 2)
            h = F.relu(F.conv2d(h, sd[f"net.features.{i}.weight"], sd[f"net.features.{i}.bias"], padding=1))
            if i in taps_after:
                out.append(h)
        return out

    total = 0.0
    for j, (a, b) in enumerate(zip(feats(x), feats(y))):
        a = a / (a.norm(dim=1, keepdim=True) + 1e-10)
        b = b / (b.norm(dim=1, keepdim=True) + 1e-10)
        w = sd[f"lin.{j}.weight"].view(1, -1, 1, 1)
        total += float(((a - b) ** 2 * w).sum(1).mean())
    assert float(random_lpips(x, y)[0]) == pytest.approx(total, rel=1e-4)


def _fake_weight_files(tmp_path, model):
    """A torchvision-style vgg16 state_dict (features + a classifier entry) and an LPIPS vgg.pth."""
    vgg = {k: torch.randn_like(v).half() for k, v in model.net.state_dict().items()}
    vgg["classifier.0.weight"] = torch.zeros(2, 2)
    lin = {f"lin{i}.model.1.weight": torch.rand(1, c, 1, 1) for i, c in enumerate((64, 128, 256, 512, 512))}
    return vgg, lin


def test_lpips_loads_weights_from_files_and_hub_cache(tmp_path, monkeypatch, random_lpips):
    vgg, lin = _fake_weight_files(tmp_path, random_lpips)
    torch.save(vgg, tmp_path / "vgg16.pth")
    torch.save(lin, tmp_path / "vgg.pth")
    m = LPIPS(pretrained=True, vgg_weights=tmp_path / "vgg16.pth", lin_weights=tmp_path / "vgg.pth")
    torch.testing.assert_close(m.net.features[28].weight, vgg["features.28.weight"].float())
    torch.testing.assert_close(m.lin[3].weight, lin["lin3.model.1.weight"])

    # default sources go through torch.hub's cache (pre-filled here, so nothing is downloaded)
    monkeypatch.setattr(lpips_mod, "_lpips_package_weights", lambda: None)
    hub = tmp_path / "hub"
    (hub / "checkpoints").mkdir(parents=True)
    torch.save(vgg, hub / "checkpoints" / "vgg16-397923af.pth")
    torch.save(lin, hub / "checkpoints" / "lpips_v0.1_vgg.pth")
    old_dir = torch.hub.get_dir()
    torch.hub.set_dir(str(hub))
    try:
        m2 = LPIPS(pretrained=True)
    finally:
        torch.hub.set_dir(old_dir)
    torch.testing.assert_close(m2.lin[4].weight, lin["lin4.model.1.weight"])

    bad = {k.replace("lin2", "lin9"): v for k, v in lin.items()}
    torch.save(bad, tmp_path / "bad.pth")
    with pytest.raises(RuntimeError, match="lin2"):
        LPIPS(pretrained=True, vgg_weights=tmp_path / "vgg16.pth", lin_weights=tmp_path / "bad.pth")
    with pytest.raises(FileNotFoundError):
        LPIPS(pretrained=True, vgg_weights=tmp_path / "missing.pth")


def _gaussians(n, seed):
    g = torch.Generator().manual_seed(seed)
    r = lambda w: torch.randn(n, w, generator=g)  # noqa: E731
    return Gaussians(xyz=r(3), features_dc=r(3), opacity_raw=r(1), scaling_raw=r(3), rotation_raw=r(4))


def test_static_vae_losses_combine_with_the_configured_weights(random_lpips):
    g = torch.Generator().manual_seed(3)
    rendered, target = torch.rand(2, 3, 24, 24, generator=g), torch.rand(2, 3, 24, 24, generator=g)
    mean, logvar = torch.randn(50, 8, generator=g), torch.randn(50, 8, generator=g)
    gs = [_gaussians(16, 0), _gaussians(8, 1)]

    terms = static_vae_losses(rendered, target, mean, logvar, gs, lpips=random_lpips)
    # independent numbers
    l1 = np.abs(rendered.numpy() - target.numpy()).mean()
    s = _ssim_reference(rendered.double().numpy(), target.double().numpy())
    lp = float(random_lpips(rendered, target).mean())
    m, lv = mean.double().numpy(), logvar.double().numpy()
    kl = 0.5 * np.mean(m**2 + np.exp(lv) - lv - 1)
    raw_s = np.concatenate([x.scaling_raw.numpy() for x in gs]).astype(np.float64)
    scales = np.sqrt(np.log1p(np.exp(raw_s + (0.004 + np.log(-np.expm1(-0.004))))) ** 2 + 9e-4**2)
    vol = np.prod(scales, axis=1).mean()
    op = np.concatenate([x.opacity_raw.numpy() for x in gs]).astype(np.float64)
    opac = np.mean((1 / (1 + np.exp(-(op + math.log(0.1 / 0.9)))) - 1) ** 2)

    assert float(terms["l1"]) == pytest.approx(l1, rel=1e-5)
    assert float(terms["ssim"]) == pytest.approx(1 - s, rel=1e-4)
    assert float(terms["kl"]) == pytest.approx(kl, rel=1e-5)
    assert float(terms["reg_vol"]) == pytest.approx(vol, rel=1e-4)
    assert float(terms["reg_opacity"]) == pytest.approx(opac, rel=1e-5)
    expected = l1 + 0.2 * (1 - s) + 0.2 * lp + 1e-6 * kl + 1e4 * vol + 1e-3 * opac
    assert float(terms["loss"]) == pytest.approx(expected, rel=1e-5)

    # weights from an upstream framework dict (spelling "lamda_kl", nested regularisers)
    upstream = {"resolution": 64, "loss_type": "l1", "lambda_ssim": 0.5, "lambda_lpips": 0.0, "lamda_kl": 1e-3,
                "mem_ratio": 0.2, "regularizations": {"MipGS": {"lambda_vol": 2.0, "lambda_opacity": 3.0}}}  # fmt: skip
    t2 = static_vae_losses(rendered, target, mean, logvar, gs, config=upstream)
    assert "lpips" not in t2
    assert float(t2["loss"]) == pytest.approx(l1 + 0.5 * (1 - s) + 1e-3 * kl + 2.0 * vol + 3.0 * opac, rel=1e-5)
    with pytest.raises(ValueError, match="unknown"):
        StaticVAELossConfig.from_dict({"lambda_l1": 1.0})
    with pytest.raises(ValueError, match="LPIPS"):
        static_vae_losses(rendered, target, mean, logvar, gs)
    assert float(volume_regularization(gs)) == pytest.approx(vol, rel=1e-4)
    assert float(opacity_regularization(gs)) == pytest.approx(opac, rel=1e-5)
