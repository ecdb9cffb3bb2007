"""GaussianDiffusion: schedule arrays, q_sample / v-target / training loss against the upstream
fixture, closed forms, and the continuous (DPM-Solver) view of the schedule."""

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from gvf.config import DiffusionConfig, DiffusionExperimentConfig, load_config
from gvf.diffusion import GaussianDiffusion, interpolate


@pytest.fixture(scope="module")
def fixture(request):
    root = request.config.rootpath / "tests" / "fixtures"
    return load_file(str(root / "diffusion_schedule.safetensors")), json.loads((root / "diffusion_schedule.json").read_text())


@pytest.fixture(scope="module")
def diffusion(fixture):
    return GaussianDiffusion.from_config(DiffusionConfig(**fixture[1]["constructor"]))


def test_schedule_arrays_match_upstream(fixture, diffusion):
    ref, meta = fixture
    assert diffusion.num_timesteps == meta["constructor"]["steps"]
    for name in ("base_betas", "betas", "alphas_cumprod", "sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod"):
        value = getattr(diffusion, name)
        assert value.dtype == torch.float64, name
        torch.testing.assert_close(value, ref[name], rtol=1e-12, atol=1e-15, msg=name)
    assert torch.equal(diffusion.timestep_map, ref["timestep_map"])


def test_cosine_betas_closed_form(diffusion):
    N = diffusion.num_timesteps
    abar = lambda t: math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    for i in (0, 1, N // 2, N - 2):
        assert diffusion.base_betas[i].item() == pytest.approx(min(1 - abar((i + 1) / N) / abar(i / N), 0.999), rel=1e-12)
    assert diffusion.base_betas[-1].item() == 0.999  # clipped
    torch.testing.assert_close(diffusion.alphas_cumprod, torch.cumprod(1 - diffusion.base_betas, 0), rtol=1e-12, atol=0)


def test_q_sample_v_target_and_loss_match_upstream(fixture, diffusion):
    ref, _ = fixture
    x0, noise, t = ref["x0"], ref["noise"], ref["t"]
    tol = dict(rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(diffusion.q_sample(x0, t, noise), ref["q_sample"], **tol)
    torch.testing.assert_close(diffusion.v_target(x0, noise, t), ref["v_target"], **tol)
    seen = []

    def stand_in(x_t, model_t):
        seen.append((x_t, model_t))
        return ref["model_output"]

    terms = diffusion.training_loss(stand_in, x0, t, noise=noise, return_terms=True)
    torch.testing.assert_close(seen[0][1], ref["model_t"], rtol=0, atol=0)
    assert seen[0][1].dtype == torch.float32
    torch.testing.assert_close(seen[0][0], ref["x_t"], **tol)
    torch.testing.assert_close(terms["mse"], ref["mse"], **tol)
    torch.testing.assert_close(terms["loss"], ref["loss"], **tol)
    loss = diffusion.training_loss(stand_in, x0, t, noise=noise)
    assert loss.shape == (x0.shape[0],)
    torch.testing.assert_close(loss, ref["loss"], **tol)


def test_coefficients_are_float64_rounded_to_float32(diffusion):
    """Upstream gathers from the float64 tables and rounds to float32 before multiplying."""
    t = torch.tensor([0, 17, 998])
    x0 = torch.ones(3, 2)
    expected = diffusion.sqrt_alphas_cumprod[t].float()[:, None]
    assert torch.equal(diffusion.q_sample(x0, t, torch.zeros_like(x0)), expected.expand(3, 2))


def test_v_parametrisation_round_trips(diffusion):
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(5, 3, 4, generator=g, dtype=torch.float64), torch.randn(5, 3, 4, generator=g, dtype=torch.float64)
    t = torch.tensor([0, 250, 500, 750, 999])
    # float64 inputs: the float32-rounded coefficients still satisfy a² + s² ≈ 1 to float32 precision
    x_t = diffusion.q_sample(x0, t, eps)
    v = diffusion.v_target(x0, eps, t)
    torch.testing.assert_close(diffusion.x0_from_v(x_t, t, v), x0, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(diffusion.eps_from_v(x_t, t, v), eps, rtol=1e-6, atol=1e-6)


def test_other_targets_and_min_snr():
    g = torch.Generator().manual_seed(1)
    x0, eps = torch.randn(4, 6, generator=g), torch.randn(4, 6, generator=g)
    t = torch.tensor([0, 10, 500, 999])
    zero = lambda x, tt: torch.zeros_like(x)  # noqa: E731
    eps_model = GaussianDiffusion(predict_type="eps")
    torch.testing.assert_close(eps_model.training_loss(zero, x0, t, noise=eps), eps.square().mean(1))
    x0_model = GaussianDiffusion(predict_type="xstart")
    torch.testing.assert_close(x0_model.training_loss(zero, x0, t, noise=eps), x0.square().mean(1))
    snr_model = GaussianDiffusion(min_snr=True)
    a, s = snr_model.sqrt_alphas_cumprod[t].float(), snr_model.sqrt_one_minus_alphas_cumprod[t].float()
    weight = torch.clamp((a / s) ** 2, max=5.0)
    v = a[:, None] * eps - s[:, None] * x0
    torch.testing.assert_close(snr_model.training_loss(zero, x0, t, noise=eps), v.square().mean(1) * weight)


def test_sample_timesteps_uniform_and_reproducible(diffusion):
    t1 = diffusion.sample_timesteps(4096, torch.Generator().manual_seed(5))
    t2 = diffusion.sample_timesteps(4096, torch.Generator().manual_seed(5))
    assert t1.dtype == torch.int64 and torch.equal(t1, t2)
    assert t1.min() >= 0 and t1.max() < diffusion.num_timesteps
    counts = torch.bincount(t1 // 100, minlength=10).float()
    assert (counts - 409.6).abs().max() < 100  # ten bins of a uniform draw


def test_official_config_and_bad_options(request):
    path = request.config.rootpath / "configs" / "official" / "diffusion.yml"
    if path.is_file():
        d = GaussianDiffusion.from_config(load_config(path, DiffusionExperimentConfig).diffusion)
        assert (d.num_timesteps, d.predict_type, d.noise_schedule) == (1000, "v", "cosine")
    with pytest.raises(ValueError, match="unknown diffusion option"):
        GaussianDiffusion.from_config(step=10)
    with pytest.raises(ValueError, match="learned sigmas"):
        GaussianDiffusion.from_config(learn_sigma=True)
    with pytest.raises(ValueError, match="timestep_respacing"):
        GaussianDiffusion.from_config(timestep_respacing="ddim50")
    with pytest.raises(ValueError, match="noise_schedule"):
        GaussianDiffusion(noise_schedule="sigmoid")
    d = GaussianDiffusion()
    with pytest.raises(ValueError, match="noise"):
        d.q_sample(torch.zeros(2, 3), torch.zeros(2, dtype=torch.long), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="t must have shape"):
        d.training_loss(lambda x, t: x, torch.zeros(2, 3), torch.zeros(3, dtype=torch.long))


# ------------------------------------------------------------------------------ continuous view


def test_clipped_table_closed_form(diffusion):
    """log α_n = ½ Σ log(1 − β); entries whose half-logSNR is below −5.1 are dropped."""
    log_alpha = 0.5 * torch.cumsum(torch.log(1 - diffusion.betas), 0)
    lam = log_alpha - 0.5 * torch.log(1 - torch.exp(2 * log_alpha))
    keep = int((lam >= -5.1).sum())
    assert bool((lam[:keep] >= -5.1).all()) and bool((lam[keep:] < -5.1).all())
    assert diffusion.total_N == keep == 996
    t_table, table = diffusion.discrete_log_alpha_table(torch.float64)
    torch.testing.assert_close(table, log_alpha[:keep], rtol=0, atol=0)
    torch.testing.assert_close(t_table, torch.arange(1, keep + 1, dtype=torch.float64) / keep, rtol=1e-15, atol=1e-15)
    t32, table32 = diffusion.discrete_log_alpha_table()
    assert t32.dtype == table32.dtype == torch.float32
    assert torch.equal(table32, log_alpha[:keep].float())


def test_marginals_interpolate_and_extrapolate(diffusion):
    t_table, table = diffusion.discrete_log_alpha_table(torch.float64)
    # at the knots: the table; between knots: the chord; below 1/N: the first segment extended
    torch.testing.assert_close(diffusion.marginal_log_alpha(t_table[[0, 10, 500, -1]]), table[[0, 10, 500, -1]], rtol=1e-14, atol=1e-14)
    mid = (t_table[10] + t_table[11]) / 2
    torch.testing.assert_close(diffusion.marginal_log_alpha(mid), (table[10] + table[11]) / 2, rtol=1e-14, atol=1e-14)
    t = torch.tensor(1e-3, dtype=torch.float64)
    slope = (table[1] - table[0]) / (t_table[1] - t_table[0])
    torch.testing.assert_close(diffusion.marginal_log_alpha(t), table[0] + (t - t_table[0]) * slope, rtol=1e-14, atol=1e-16)
    ts = torch.linspace(0.002, 1.0, 37, dtype=torch.float64)
    alpha, sigma = diffusion.marginal_alpha(ts), diffusion.marginal_sigma(ts)
    torch.testing.assert_close(alpha**2 + sigma**2, torch.ones_like(ts), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(diffusion.marginal_lambda(ts), torch.log(alpha) - torch.log(sigma), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(diffusion.inverse_lambda(diffusion.marginal_lambda(ts)), ts, rtol=1e-9, atol=1e-9)


def test_interpolate_matches_numpy_inside_and_lines_outside():
    import numpy as np

    xp = torch.tensor([0.0, 1.0, 3.0, 4.0], dtype=torch.float64)
    yp = torch.tensor([1.0, -1.0, 5.0, 6.0], dtype=torch.float64)
    x = torch.tensor([-2.0, 0.0, 0.5, 1.0, 2.5, 4.0, 7.0], dtype=torch.float64)
    expected = torch.from_numpy(np.interp(x.numpy(), xp.numpy(), yp.numpy()))
    expected[0], expected[-1] = 1.0 + (-2.0) * (-2.0), 6.0 + 3.0 * 1.0  # linear extrapolation
    torch.testing.assert_close(interpolate(x, xp, yp), expected, rtol=1e-15, atol=1e-15)


def test_model_time_map(diffusion):
    t = torch.tensor([1.0, 1 / 996, 1e-3])
    torch.testing.assert_close(diffusion.model_time(t), (t - 1 / 996) * 1000, rtol=0, atol=0)
    assert diffusion.model_time(torch.tensor(1.0)).item() == pytest.approx(1000 * 995 / 996, abs=1e-4)
    assert diffusion.model_time(torch.tensor(1e-3)).item() < 0  # t_end lies below the first knot
