"""DPM-Solver++ against the upstream runs of the `dpm_solver` fixture (toy model as the fixture
README defines it), closed-form single steps, guidance batching and the TemporalDiT cache."""

import json

import pytest
import torch
from safetensors.torch import load_file

from gvf.diffusion import DPMSolverPP, GaussianDiffusion, GuidedNoiseModel, dpm_solver_sample
from gvf.models import TemporalDiT
from gvf.models.dit import TINY

RUNS = {
    "multistep": dict(method="multistep", steps=20),
    "adaptive": dict(method="adaptive"),
    "multistep_cfg": dict(method="multistep", steps=20, guidance_scale=2.0, guidance_scale2=3.0),
}
# README tolerances: (output rtol=atol, model-time atol) for float32 and float64 runs
TOL32 = {"multistep": (1e-4, 2e-4), "multistep_cfg": (1e-4, 2e-4), "adaptive": (1e-3, 0.1)}
TOL64 = {"multistep": (1e-8, 1e-9), "multistep_cfg": (1e-8, 1e-9), "adaptive": (1e-6, 1e-6)}


class Toy:
    """The fixture's stand-in network; records the time tensor of every call."""

    def __init__(self, tensors, dtype):
        self.w = {k[len("toy."):]: v.to(dtype) for k, v in tensors.items() if k.startswith("toy.")}
        self.times, self.batches = [], []

    def __call__(self, x, t, cond_images, static_latent, deformation_position_xyz):
        self.times.append(t.clone())
        self.batches.append(x.shape[0])
        w = self.w
        h = (
            x @ w["W"]
            + w["b"]
            + (cond_images.mean(dim=2) @ w["Wi"])[:, :, None]  # (B, T, 1, C)
            + (static_latent.mean(dim=1) @ w["Ws"])[:, None, None]  # (B, 1, 1, C)
            + (deformation_position_xyz @ w["Wp"])[:, None]  # (B, 1, N, C)
        )
        return torch.tanh(h) * (1 + t / 1000)[:, None, None, None]


@pytest.fixture(scope="module")
def fixture(request):
    root = request.config.rootpath / "tests" / "fixtures"
    return load_file(str(root / "dpm_solver.safetensors")), json.loads((root / "dpm_solver.json").read_text())


@pytest.fixture(scope="module")
def schedule(fixture):
    return GaussianDiffusion()


def test_schedule_table_matches_upstream(fixture, schedule):
    ref, meta = fixture
    torch.testing.assert_close(schedule.betas, ref["betas"], rtol=1e-12, atol=1e-15)
    assert schedule.total_N == meta["constructor"]["total_N"]
    t_table, log_alpha = schedule.discrete_log_alpha_table(torch.float32)
    torch.testing.assert_close(t_table, ref["t_array"], rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(log_alpha, ref["log_alpha_array"], rtol=1e-6, atol=1e-7)
    solver = DPMSolverPP(lambda x, t: x, schedule)
    grid = solver.time_steps("time_uniform", 1.0, 1e-3, 20, ref["noise"])
    torch.testing.assert_close(grid, ref["multistep.timesteps"], rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("run", list(RUNS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_runs_match_upstream(fixture, schedule, run, dtype):
    ref, meta = fixture
    prefix = "" if dtype == torch.float32 else "ref64."
    out_tol, time_tol = (TOL32 if dtype == torch.float32 else TOL64)[run]
    toy = Toy(ref, dtype)
    cond = {k[len("cond."):]: v.to(dtype) for k, v in ref.items() if k.startswith("cond.")}
    x, nfe = dpm_solver_sample(toy, schedule, ref["noise"].to(dtype), cond, progress=False, **RUNS[run])
    assert x.dtype == dtype and x.shape == ref["noise"].shape
    assert nfe == len(toy.times) == int(ref[f"{prefix}{run}.nfe"]) == meta["nfe" if dtype == torch.float32 else "nfe_float64"][run]
    assert set(toy.batches) == set(meta["model_call_batch_sizes"][run])
    torch.testing.assert_close(torch.stack(toy.times), ref[f"{prefix}{run}.model_t_inputs"], rtol=0, atol=time_tol)
    torch.testing.assert_close(x, ref[f"{prefix}{run}.output"], rtol=out_tol, atol=out_tol)


def _gaussian_data_model(schedule, m=0.7, s=0.5):
    """Exact ε for data x0 ~ N(m, s²) in every coordinate, as a v-predicting network in model time."""

    def model(x, t_model, **unused):
        t = t_model / 1000 + 1 / schedule.total_N  # back to continuous time
        a, sig = schedule.marginal_alpha(t)[:, None, None, None], schedule.marginal_sigma(t)[:, None, None, None]
        x0 = m + s**2 * a * (x - a * m) / (a**2 * s**2 + sig**2)  # posterior mean E[x0 | x_t]
        eps = (x - a * x0) / sig
        return (eps - sig * x) / a  # v with ε = α·v + σ·x

    return model


def test_single_first_order_step_closed_form(schedule):
    """steps=1, order 1: x_t = σ_t/σ_s·x − α_t(e^{−h} − 1)·x0(x, s) with h = λ_t − λ_s."""
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    model = _gaussian_data_model(schedule)
    out, nfe = dpm_solver_sample(model, schedule, x, {}, steps=1, order=1, t_start=0.9, t_end=0.3, progress=False)
    s, t = torch.tensor(0.9, dtype=torch.float64), torch.tensor(0.3, dtype=torch.float64)
    a_s, sig_s = schedule.marginal_alpha(s), schedule.marginal_sigma(s)
    a_t, sig_t = schedule.marginal_alpha(t), schedule.marginal_sigma(t)
    x0 = 0.7 + 0.25 * a_s * (x - a_s * 0.7) / (a_s**2 * 0.25 + sig_s**2)
    h = torch.log(a_t / sig_t) - torch.log(a_s / sig_s)
    assert nfe == 1
    torch.testing.assert_close(out, sig_t / sig_s * x - a_t * torch.expm1(-h) * x0, rtol=1e-10, atol=1e-10)


def _gaussian_ode_error(schedule, **kwargs):
    """For Gaussian data the probability-flow ODE maps x_1 at t=1 affinely to
    x_end = m·α_e + sqrt(α_e² s² + σ_e²)·(x_1 − α_1 m)/sqrt(α_1² s² + σ_1²) (quantiles are kept)."""
    x1 = torch.randn(2, 2, 8, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    out, nfe = dpm_solver_sample(_gaussian_data_model(schedule), schedule, x1, {}, progress=False, **kwargs)
    te, ts = torch.tensor(1e-3, dtype=torch.float64), torch.tensor(1.0, dtype=torch.float64)
    a_e, sig_e, a_1, sig_1 = schedule.marginal_alpha(te), schedule.marginal_sigma(te), schedule.marginal_alpha(ts), schedule.marginal_sigma(ts)
    exact = 0.7 * a_e + torch.sqrt(a_e**2 * 0.25 + sig_e**2) * (x1 - a_1 * 0.7) / torch.sqrt(a_1**2 * 0.25 + sig_1**2)
    return (out - exact).abs().max().item(), nfe


def test_multistep_converges_with_second_order(schedule):
    err_25, nfe_25 = _gaussian_ode_error(schedule, method="multistep", steps=25)
    err_100, nfe_100 = _gaussian_ode_error(schedule, method="multistep", steps=100)
    assert (nfe_25, nfe_100) == (25, 100)
    assert err_100 < 1.5e-2 and err_25 / err_100 > 10  # 4x the steps: ~16x smaller error (2nd order)


def test_adaptive_error_follows_its_tolerances(schedule):
    err_default, nfe_default = _gaussian_ode_error(schedule, method="adaptive")
    err_tight, nfe_tight = _gaussian_ode_error(schedule, method="adaptive", atol=1e-4, rtol=1e-4)
    assert nfe_default % 2 == 0 and nfe_tight % 2 == 0 and nfe_tight > nfe_default
    assert err_default < 0.3 and err_tight < 5e-3


def test_lower_order_final_changes_only_the_last_step(schedule):
    x = torch.randn(1, 2, 3, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    model = _gaussian_data_model(schedule, m=1.5, s=0.1)
    a, _ = dpm_solver_sample(model, schedule, x, {}, steps=6, lower_order_final=True, progress=False)
    b, _ = dpm_solver_sample(model, schedule, x, {}, steps=6, lower_order_final=False, progress=False)
    c, _ = dpm_solver_sample(model, schedule, x, {}, steps=12, lower_order_final=True, progress=False)
    d, _ = dpm_solver_sample(model, schedule, x, {}, steps=12, lower_order_final=False, progress=False)
    assert (a - b).abs().max() > 1e-6  # < 10 steps: the final step is first order
    assert torch.equal(c, d)  # >= 10 steps: no effect


def test_guidance_batches_and_combination(schedule):
    """One call on [full-uncond | uncond | cond]; combined as e_fu + s1(e_u − e_fu) + s2(e_c − e_u)."""
    calls = []

    def model(x, t, cond_images, static_latent):
        calls.append((cond_images.clone(), static_latent.clone()))
        return x * 0 + cond_images.mean(dim=(2, 3))[:, :, None, None] + 2 * static_latent.mean(dim=(1, 2))[:, None, None, None]

    cond = {"cond_images": torch.rand(2, 3, 4, 5) + 1, "static_latent": torch.rand(2, 6, 14) + 1}
    noise_model = GuidedNoiseModel(model, schedule, cond, guidance_scale=2.0, guidance_scale2=3.0)
    x = torch.zeros(2, 3, 4, 1)
    t = torch.tensor(0.5)
    eps = noise_model(x, t)
    images, static = calls[0]
    assert images.shape[0] == static.shape[0] == 6
    assert images[:4].abs().max() == 0 and torch.equal(images[4:], cond["cond_images"])
    assert static[:2].abs().max() == 0 and torch.equal(static[2:], cond["static_latent"].repeat(2, 1, 1))
    alpha = schedule.marginal_alpha(t)
    e_img, e_st = alpha * cond["cond_images"].mean(dim=(2, 3)), alpha * 2 * cond["static_latent"].mean(dim=(1, 2))
    e_fu, e_u, e_c = 0 * e_img, e_st[:, None].expand_as(e_img), e_img + e_st[:, None]
    expected = e_fu + 2.0 * (e_u - e_fu) + 3.0 * (e_c - e_u)
    torch.testing.assert_close(eps[..., 0, 0], expected)
    plain = GuidedNoiseModel(model, schedule, cond)  # s1 = s2 = 1: one conditional call, batch B
    plain(x, t)
    assert calls[-1][0].shape[0] == 2 and torch.equal(calls[-1][0], cond["cond_images"])


def test_dit_cache_built_once_and_same_samples(schedule):
    torch.manual_seed(0)
    model = TemporalDiT(TINY).eval()
    with torch.no_grad():  # random weights so that the output is not zero
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * (p.shape[-1] ** -0.5 if p.ndim > 1 else 0.1))
    g = torch.Generator().manual_seed(3)
    noise = torch.randn(2, 3, 5, TINY.in_channels, generator=g)
    cond = {
        "cond_images": torch.randn(2, 3, 4, TINY.image_cond_channels, generator=g),
        "static_latent": torch.randn(2, 6, 14, generator=g),
        "deformation_position_xyz": torch.rand(2, 5, 3, generator=g) - 0.5,
    }
    builds = []
    original = model.precompute_conditions
    def counting(*args, **kwargs):
        builds.append((args[0] if args else kwargs["cond_images"]).shape[0])
        return original(*args, **kwargs)

    model.precompute_conditions = counting
    for scales in ((1.0, 1.0), (1.5, 2.0)):
        builds.clear()
        cached, nfe = dpm_solver_sample(model, schedule, noise, cond, steps=4, guidance_scale=scales[0], guidance_scale2=scales[1], progress=False)
        assert builds == [2 if scales == (1.0, 1.0) else 6] and nfe == 4
        # a plain function of the same network (conditions projected on every call)
        plain, _ = dpm_solver_sample(lambda x, t, **c: model(x, t, **c), schedule, noise, cond, steps=4, guidance_scale=scales[0], guidance_scale2=scales[1], progress=False)
        torch.testing.assert_close(cached, plain, rtol=1e-5, atol=1e-5)
        assert cached.abs().max() > 0


def test_progress_bar_and_bad_arguments(schedule, capsys):
    x = torch.zeros(1, 1, 2, 2)
    model = lambda x, t, **c: torch.zeros_like(x)  # noqa: E731
    dpm_solver_sample(model, schedule, x, {}, steps=3, progress=True)
    for kwargs, message in [
        (dict(method="singlestep"), "method"),
        (dict(t_start=0.1, t_end=0.5), "t_end < t_start"),
        (dict(method="adaptive", order=3), "order 2"),
        (dict(order=3), "order must be 1 or 2"),
        (dict(steps=1), "at least the order"),
    ]:
        with pytest.raises(ValueError, match=message):
            dpm_solver_sample(model, schedule, x, {}, progress=False, **kwargs)
    with pytest.raises(ValueError, match="float32 or float64"):
        dpm_solver_sample(model, schedule, x.half(), {}, progress=False)
    with pytest.raises(ValueError, match="batch"):
        dpm_solver_sample(model, schedule, x, {"static_latent": torch.zeros(2, 3, 14)}, progress=False)
    with pytest.raises(ValueError, match="cond_images"):
        GuidedNoiseModel(model, schedule, {"static_latent": torch.zeros(1, 3, 14)}, guidance_scale=2.0)


@pytest.mark.cuda
def test_bf16_autocast_sample_on_gpu_close_to_float32(schedule):
    torch.manual_seed(0)
    model = TemporalDiT(TINY).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * (p.shape[-1] ** -0.5 if p.ndim > 1 else 0.1))
    g = torch.Generator().manual_seed(4)
    noise = torch.randn(1, 4, 32, TINY.in_channels, generator=g)
    cond = {
        "cond_images": torch.randn(1, 4, 20, TINY.image_cond_channels, generator=g),
        "static_latent": torch.randn(1, 40, 14, generator=g),
        "deformation_position_xyz": torch.rand(1, 32, 3, generator=g) - 0.5,
    }
    ref, _ = dpm_solver_sample(model, schedule, noise, cond, steps=10, progress=False)
    model = model.cuda()
    out, nfe = dpm_solver_sample(
        model, schedule, noise.cuda(), {k: v.cuda() for k, v in cond.items()}, steps=10, autocast_dtype=torch.bfloat16, progress=False
    )
    assert nfe == 10 and out.dtype == torch.float32
    assert (out.cpu() - ref).abs().max() / ref.abs().max() < 0.05
