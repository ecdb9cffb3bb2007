"""TRELLIS sub-models and the flow sampler against the upstream parity fixtures and manifests.

Sizes, constructor arguments and sampler settings are read from the fixture files.
"""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from gvf.checkpoints import convert_upstream
from gvf.diffusion.flow_euler import FlowEulerSampler, time_grid
from gvf.models.trellis import SLatFlow, SparseStructureDecoder, SparseStructureFlow, occupied_voxels
from gvf.sparse.tensor import SparseTensor

FIXTURES = Path(__file__).parent / "fixtures"


def _load(name):
    return load_file(str(FIXTURES / f"{name}.safetensors")), json.loads((FIXTURES / f"{name}.json").read_text())


def _build(cls, kind, tensors, meta):
    model = cls(**meta["constructor"]).eval()
    sd = {f"module.{k[3:]}": v for k, v in tensors.items() if k.startswith("sd.")}
    model.load_state_dict(convert_upstream(kind, sd), strict=True)
    return model


class _Recorder:
    """First-call outputs of named sub-modules (forward hooks)."""

    def __init__(self):
        self.values = {}

    def hook(self, module, name, pick=lambda inputs, output: output):
        def fn(mod, inputs, output):
            if name not in self.values:
                self.values[name] = pick(inputs, output)

        module.register_forward_hook(fn)


def _close(actual, expected, rtol, atol, what):
    torch.testing.assert_close(actual.float(), expected.float(), rtol=rtol, atol=atol, msg=lambda m: f"{what}: {m}")


# ---- sparse-structure flow -----------------------------------------------------------------------


def test_ss_flow_matches_fixture():
    t, meta = _load("trellis_ss_flow")
    model = _build(SparseStructureFlow, "trellis_ss_flow", t, meta)
    rec = _Recorder()
    rec.hook(model.t_embedder, "t_emb")
    rec.hook(model.input_layer, "input_layer")
    for i, block in enumerate(model.blocks):
        rec.hook(block, f"block{i}_out")
    with torch.no_grad():
        out = model(t["x"], t["t"], t["cond"])
    assert out.shape == t["output"].shape and out.dtype == torch.float32
    _close(out, t["output"], 1e-4, 1e-4, "output")
    for name, value in rec.values.items():
        _close(value, t[f"inter.{name}"], 1e-4, 1e-4, name)
    assert len(rec.values) == len([k for k in t if k.startswith("inter.")])


def test_ss_flow_pos_emb_buffer_equals_upstream_construction():
    t, meta = _load("trellis_ss_flow")
    model = SparseStructureFlow(**meta["constructor"])
    torch.testing.assert_close(model.pos_emb, t["sd.pos_emb"], rtol=0, atol=0)


def test_ss_flow_fp16_torso_runs_close_to_fp32():
    t, meta = _load("trellis_ss_flow")
    model = _build(SparseStructureFlow, "trellis_ss_flow", t, meta)
    model.convert_to_fp16()
    assert model.blocks[0].self_attn.to_qkv.weight.dtype == torch.float16
    assert model.blocks[0].norm2.weight.dtype == torch.float32 and model.input_layer.weight.dtype == torch.float32
    with torch.no_grad():
        out = model(t["x"], t["t"], t["cond"])
    assert out.dtype == torch.float32
    _close(out, t["output"], 0.0, 0.05, "fp16 torso output")


def test_ss_flow_rejects_wrong_input_shape():
    _, meta = _load("trellis_ss_flow")
    model = SparseStructureFlow(**meta["constructor"])
    R = meta["constructor"]["resolution"]
    with pytest.raises(ValueError, match="expected x of shape"):
        model(torch.zeros(1, 3, R, R, R), torch.zeros(1), torch.zeros(1, 2, meta["constructor"]["cond_channels"]))


# ---- sparse-structure decoder ----------------------------------------------------------------


def test_ss_decoder_matches_fixture_and_coords_exact():
    t, meta = _load("trellis_ss_decoder")
    model = _build(SparseStructureDecoder, "trellis_ss_decoder", t, meta)
    rec = _Recorder()
    rec.hook(model.input_layer, "input_layer")
    rec.hook(model.middle_block, "middle_block")
    for i, block in enumerate(model.blocks):
        rec.hook(block, f"blocks{i}_out")
    with torch.no_grad():
        logits = model(t["x"])
    _close(logits, t["logits"], 1e-4, 1e-5, "logits")
    for name, value in rec.values.items():
        _close(value, t[f"inter.{name}"], 1e-4, 1e-5, name)
    coords = occupied_voxels(logits)
    assert coords.dtype == torch.int32
    assert torch.equal(coords, t["coords"])


# ---- structured-latent flow --------------------------------------------------------------------


def test_slat_flow_matches_fixture():
    t, meta = _load("trellis_slat_flow")
    model = _build(SLatFlow, "trellis_slat_flow", t, meta)
    rec = _Recorder()
    feats = lambda i, o: o.feats  # noqa: E731
    rec.hook(model.t_embedder, "t_emb")
    rec.hook(model.input_layer, "input_layer", feats)
    for i, block in enumerate(model.input_blocks):
        rec.hook(block, f"input_block{i}_out", feats)
    for i, block in enumerate(model.blocks):
        rec.hook(block, f"block{i}_out", feats)
    for i, block in enumerate(model.out_blocks):
        rec.hook(block, f"out_block{i}_out", feats)
    rec.hook(model.input_blocks[0].conv1, "conv_in", lambda i, o: i[0].feats)
    rec.hook(model.input_blocks[0].conv1, "conv_out", feats)
    down = next(b.updown for b in model.input_blocks if b.updown is not None)
    rec.hook(down, "downsample_in", lambda i, o: i[0].feats)
    rec.hook(down, "downsample_out", feats)
    rec.hook(down, "coarse_coords", lambda i, o: o.coords)
    rec.hook(model.out_blocks[0].updown, "upsample_out", feats)
    x = SparseTensor(t["feats"], t["coords"])
    with torch.no_grad():
        out = model(x, t["t"], t["cond"])
    assert torch.equal(out.coords, t["output_coords"])
    _close(out.feats, t["output"], 1e-4, 1e-4, "output")
    assert torch.equal(rec.values.pop("coarse_coords"), t["inter.coarse_coords"])
    for name, value in rec.values.items():
        _close(value, t[f"inter.{name}"], 1e-4, 1e-4, name)
    # the APE of the coarse voxels, as added before the transformer blocks
    ape = model.pos_embedder(t["inter.coarse_coords"][:, 1:])
    _close(ape, t["inter.ape"], 0, 1e-6, "ape")


def test_slat_flow_output_does_not_depend_on_voxel_order():
    t, meta = _load("trellis_slat_flow")
    model = _build(SLatFlow, "trellis_slat_flow", t, meta)
    perm = torch.randperm(len(t["coords"]), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = model(SparseTensor(t["feats"][perm], t["coords"][perm]), t["t"], t["cond"])
    assert torch.equal(out.coords, t["coords"][perm])
    _close(out.feats, t["output"][perm], 1e-4, 1e-4, "permuted output")


# ---- manifests of the released configs --------------------------------------------------------


@pytest.mark.parametrize(
    "name,cls",
    [("manifest_trellis_ss_flow", SparseStructureFlow), ("manifest_trellis_ss_decoder", SparseStructureDecoder), ("manifest_trellis_slat_flow", SLatFlow)],
)
def test_released_config_state_dict_matches_manifest(name, cls):
    manifest = json.loads((FIXTURES / f"{name}.json").read_text())
    with torch.device("meta"):
        model = cls(**manifest["constructor"])  # use_fp16 true: torso held in float16 like upstream
    entries = [[k, list(v.shape), str(v.dtype).removeprefix("torch.")] for k, v in model.state_dict().items()]
    assert entries == manifest["entries"]
    assert sum(p.numel() for p in model.parameters()) == manifest["num_parameters"]
    params = dict(model.named_parameters())
    buffers = {k: v for k, v in model.state_dict().items() if k not in params}
    assert sum(b.numel() for b in buffers.values()) == manifest["num_buffer_elements"]


# ---- Euler sampler ----------------------------------------------------------------------------


class ToyVelocity:
    """The fixture's stand-in flow model (README "trellis_flow_euler"), recording every call."""

    def __init__(self, t, R, dtype):
        self.W, self.b, self.Wc, self.Wp = (t[f"toy.{k}"].to(dtype) for k in ("W", "b", "Wc", "Wp"))
        self.R = R
        self.times, self.is_cond = [], []

    def __call__(self, x, t_model, cond):
        self.times.append(t_model.clone())
        self.is_cond.append(bool(cond.abs().sum() > 0))
        assert t_model.dtype == torch.float32
        m = cond.mean(dim=1) @ self.Wc.T  # (B, C)
        if isinstance(x, SparseTensor):
            b = x.coords[:, 0].long()
            pos = (x.coords[:, 1:].to(x.feats.dtype) + 0.5) / self.R - 0.5
            h = x.feats @ self.W.T + self.b + m[b] + pos @ self.Wp.T
            return x.replace(torch.tanh(h) * (1 + t_model.to(h.dtype)[b, None] / 1000))
        ar = (torch.arange(self.R, dtype=x.dtype) + 0.5) / self.R - 0.5
        pos = torch.stack(torch.meshgrid(ar, ar, ar, indexing="ij"), dim=-1)  # (R, R, R, 3)
        h = torch.einsum("oc,bcijk->boijk", self.W, x) + self.b[None, :, None, None, None] + m[:, :, None, None, None]
        h = h + torch.einsum("oc,ijkc->oijk", self.Wp, pos)[None]
        return torch.tanh(h) * (1 + t_model.to(h.dtype)[:, None, None, None, None] / 1000)


def _run_sampler(t, meta, run, dtype):
    params = meta["runs"][run]["sampler_params"]
    src = "sparse" if run == "sparse" else "dense"
    noise, cond = t[f"{src}.noise"].to(dtype), t[f"{src}.cond"].to(dtype)
    if src == "sparse":
        noise = SparseTensor(noise, t["sparse.coords"])
    toy = ToyVelocity(t, meta["toy_R"][src], dtype)
    sampler = FlowEulerSampler(**meta["constructor"])
    out = sampler.sample(
        toy, noise, cond, torch.zeros_like(cond), steps=params["steps"], rescale_t=params["rescale_t"],
        cfg_strength=params["cfg_strength"], cfg_interval=params["cfg_interval"], return_trajectory=True, progress=False,
    )
    return out, toy


@pytest.mark.parametrize("run", ["dense", "sparse", "dense_default"])
def test_flow_euler_matches_fixture(run):
    t, meta = _load("trellis_flow_euler")
    out, toy = _run_sampler(t, meta, run, torch.float32)
    feats = lambda a: a.feats if isinstance(a, SparseTensor) else a  # noqa: E731
    torch.testing.assert_close(torch.from_numpy(out.t_seq), t[f"{run}.t_seq"], rtol=1e-15, atol=0)
    assert out.cfg_applied == t[f"{run}.cfg_applied"].tolist()
    assert out.nfe == int(t[f"{run}.nfe"]) == len(toy.times)
    assert toy.is_cond == t[f"{run}.call_is_cond"].tolist()
    assert torch.equal(torch.stack(toy.times), t[f"{run}.model_t_inputs"])
    _close(feats(out.samples), t[f"{run}.output"], 1e-4, 1e-5, "output")
    _close(torch.stack([feats(a) for a in out.pred_x_t]), t[f"{run}.pred_x_t"], 1e-4, 1e-5, "pred_x_t")
    _close(torch.stack([feats(a) for a in out.pred_x_0]), t[f"{run}.pred_x_0"], 1e-4, 1e-5, "pred_x_0")
    if run == "sparse":
        assert torch.equal(out.samples.coords, t["sparse.coords"])


@pytest.mark.parametrize("run", ["dense", "sparse", "dense_default"])
def test_flow_euler_float64_matches_ref64(run):
    t, meta = _load("trellis_flow_euler")
    out, _ = _run_sampler(t, meta, run, torch.float64)
    result = out.samples.feats if run == "sparse" else out.samples
    torch.testing.assert_close(result, t[f"ref64.{run}.output"], rtol=1e-8, atol=1e-8)


def test_time_grid_boundary_is_guided():
    # 12 steps, rescale 3: t_seq[9] is exactly 0.5 and lies inside the inclusive guidance interval
    grid = time_grid(12, 3.0)
    assert grid[9] == 0.5 and grid[0] == 1.0 and grid[-1] == 0.0
    with pytest.raises(ValueError):
        time_grid(0)


def test_flow_euler_without_guidance_makes_one_call_per_step():
    calls = []

    def model(x, t, cond):
        calls.append(cond)
        return torch.ones_like(x)

    out = FlowEulerSampler().sample(model, torch.zeros(2, 3), torch.zeros(1, 4, 5), None, steps=5, progress=False)
    assert out.nfe == 5 and len(calls) == 5
    assert calls[0].shape == (2, 4, 5)  # a single condition is broadcast over the batch
    torch.testing.assert_close(out.samples, -torch.ones(2, 3), rtol=0, atol=1e-12)  # ∫ v dt from 1 to 0


@pytest.mark.cuda
@pytest.mark.parametrize("torso", [torch.float32, torch.float16, torch.bfloat16])
def test_flow_models_on_cuda(torso):
    tol = dict(rtol=1e-4, atol=1e-4) if torso == torch.float32 else dict(rtol=0.0, atol=0.1)
    t, meta = _load("trellis_ss_flow")
    model = _build(SparseStructureFlow, "trellis_ss_flow", t, meta).cuda()
    model.convert_torso(torso)
    with torch.no_grad():
        out = model(t["x"].cuda(), t["t"].cuda(), t["cond"].cuda())
    _close(out.cpu(), t["output"], what="ss flow on cuda", **tol)

    t, meta = _load("trellis_slat_flow")
    model = _build(SLatFlow, "trellis_slat_flow", t, meta).cuda()
    model.convert_torso(torso)
    with torch.no_grad():
        out = model(SparseTensor(t["feats"].cuda(), t["coords"].cuda()), t["t"].cuda(), t["cond"].cuda())
    assert torch.equal(out.coords.cpu(), t["output_coords"])
    _close(out.feats.cpu(), t["output"], what="slat flow on cuda", **tol)
