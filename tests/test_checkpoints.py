"""Checkpoint loading: upstream state_dicts (with `module.`), the official-weights downloader
(huggingface_hub monkeypatched to serve from a temporary directory) and our release format."""

import json
import shutil
from pathlib import Path

import pytest
import torch

import gvf.hub as hub
from gvf.checkpoints import convert_upstream, load_state_dict_strict, load_torch_file
from gvf.models import VariationFieldVAE
from gvf.models.motion_vae import OFFICIAL_CONFIG

from conftest import FIXTURES

TINY = dict(depth=1, dim=24, queries_dim=24, output_dim=14, num_inputs=16, num_latents=4, latent_dim=4, heads=2, num_timesteps=2)


def _randomized(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return model.eval()


def _upstream_sd(model):
    """An upstream-style training checkpoint: every key with the DDP `module.` prefix."""
    return {f"module.{k}": v.clone() for k, v in model.state_dict().items()}


def _same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for k in sa:
        assert sa[k].dtype == sb[k].dtype, k
        torch.testing.assert_close(sa[k], sb[k], rtol=0, atol=0)


def _decode(model):
    g = torch.Generator().manual_seed(1)
    z = torch.randn(2, TINY["num_latents"], TINY["latent_dim"], generator=g)
    q = torch.rand(1, 5, 14, generator=g)
    with torch.no_grad():
        return model.decode(z, q)


# ------------------------------------------------------------------------------------------------
# upstream state_dicts
# ------------------------------------------------------------------------------------------------


def test_fixture_state_dict_with_module_prefix_loads_strictly():
    from safetensors.torch import load_file

    tensors = load_file(str(FIXTURES / "motion_vae_decode.safetensors"))
    meta = json.loads((FIXTURES / "motion_vae_decode.json").read_text())
    sd = {"module." + k[3:]: v for k, v in tensors.items() if k.startswith("sd.")}
    model = VariationFieldVAE(**meta["constructor"]).eval()
    load_state_dict_strict(model, convert_upstream("motion_vae", sd))
    with torch.no_grad():
        out = model.decode(tensors["x"], tensors["queries"])
    torch.testing.assert_close(out, tensors["output"], rtol=1e-4, atol=1e-5)
    assert model.position_encoding[0].omega.dtype == torch.float64


def test_strict_loading_names_the_problem():
    model = VariationFieldVAE(**TINY)
    sd = convert_upstream("motion_vae", _upstream_sd(model))
    sd.pop("proj.bias")
    sd["extra.weight"] = torch.zeros(1)
    sd["mean_fc.weight"] = torch.zeros(3, 3)
    with pytest.raises(RuntimeError, match=r"missing keys \(1\): proj\.bias.*unexpected keys \(1\): extra\.weight.*mean_fc\.weight"):
        load_state_dict_strict(model, sd)


def test_pt_file_round_trip(tmp_path):
    model = _randomized(VariationFieldVAE(**TINY))
    torch.save(_upstream_sd(model), tmp_path / "ckpt.pt")
    other = VariationFieldVAE(**TINY)
    load_state_dict_strict(other, convert_upstream("motion_vae", load_torch_file(tmp_path / "ckpt.pt")))
    _same_weights(model, other)


# ------------------------------------------------------------------------------------------------
# official weights (offline: a fake Hub in a temporary directory)
# ------------------------------------------------------------------------------------------------


@pytest.fixture
def fake_hub(tmp_path, monkeypatch):
    """A 'remote' repository directory and a patched hf_hub_download that copies from it into a
    cache directory, recording its arguments (missing files raise like the real one)."""
    import huggingface_hub
    from huggingface_hub.errors import EntryNotFoundError

    remote = tmp_path / "remote"
    remote.mkdir()
    calls = []

    def fake_download(repo_id, filename, *, revision=None, cache_dir=None, local_dir=None, **kwargs):
        calls.append(dict(repo_id=repo_id, filename=filename, revision=revision, cache_dir=cache_dir, local_dir=local_dir))
        src = remote / filename
        if repo_id != hub.OFFICIAL_REPO_ID or not src.is_file():
            raise EntryNotFoundError(f"404 Client Error: entry {filename} not found\nmore details here")
        target_dir = Path(local_dir) if local_dir else Path(cache_dir or tmp_path / "hf_cache") / "snapshots" / str(revision)
        target_dir.mkdir(parents=True, exist_ok=True)
        shutil.copy(src, target_dir / filename)
        return str(target_dir / filename)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    return remote, calls


def _write_official(directory, model=None, stats=True):
    directory.mkdir(parents=True, exist_ok=True)
    if model is not None:
        torch.save(_upstream_sd(model), directory / hub.OFFICIAL_FILES["motion_vae"])
    if stats:
        torch.save(torch.arange(14.0), directory / "static_mean.pt")
        torch.save(torch.full((14,), 2.0), directory / "static_std.pt")
        torch.save(torch.tensor(0.5), directory / "deformation_mean.pt")
        torch.save(torch.tensor(3.0), directory / "deformation_std.pt")


def test_load_pretrained_official_via_download(fake_hub, tmp_path):
    remote, calls = fake_hub
    model = _randomized(VariationFieldVAE(**TINY))
    _write_official(remote, model)
    loaded = hub.load_pretrained("motion_vae", "official", config=TINY, revision="abc123", cache_dir=tmp_path / "cache")
    _same_weights(model, loaded)
    assert not loaded.training
    torch.testing.assert_close(_decode(loaded), _decode(model), rtol=0, atol=0)
    assert calls == [dict(repo_id=hub.OFFICIAL_REPO_ID, filename="ema_deformation_0.9999_200000.pt", revision="abc123", cache_dir=str(tmp_path / "cache"), local_dir=None)]

    stats = hub.load_normalization("official")
    assert set(stats) == {"static_mean", "static_std", "deformation_mean", "deformation_std"}
    torch.testing.assert_close(stats["static_std"], torch.full((14,), 2.0))
    assert stats["deformation_mean"].dtype == torch.float32 and float(stats["deformation_mean"]) == 0.5


def test_download_official_local_dir_and_missing_files(fake_hub, tmp_path):
    remote, calls = fake_hub
    _write_official(remote)  # stats only, no networks
    paths = hub.download_official(local_dir=tmp_path / "local", names=["static_mean", "deformation_std"])
    assert paths == {"static_mean": tmp_path / "local" / "static_mean.pt", "deformation_std": tmp_path / "local" / "deformation_std.pt"}
    assert all(c["revision"] == hub.OFFICIAL_REVISION for c in calls)
    with pytest.raises(hub.WeightsNotFoundError) as err:
        hub.download_official(cache_dir=tmp_path / "c")
    msg = str(err.value)
    assert "\n" not in msg
    for name in ("ema_deformation_0.9999_200000.pt", "ema_diffusion_0.9999_500000.pt", "ema_static_vae_0.9999_200000.pt"):
        assert name in msg
    assert "static_mean.pt" not in msg and hub.OFFICIAL_REPO_ID in msg and str(tmp_path / "c") in msg


def test_local_directory_source(tmp_path):
    model = _randomized(VariationFieldVAE(**TINY), seed=3)
    _write_official(tmp_path / "weights", model)
    _same_weights(model, hub.load_pretrained("motion_vae", tmp_path / "weights", config=TINY))
    # a single checkpoint file works too
    _same_weights(model, hub.load_pretrained("motion_vae", tmp_path / "weights" / hub.OFFICIAL_FILES["motion_vae"], config=TINY))
    with pytest.raises(hub.WeightsNotFoundError, match=r"missing ema_diffusion_0\.9999_500000\.pt in .*weights"):
        hub.load_pretrained("dit", tmp_path / "weights")
    with pytest.raises(hub.WeightsNotFoundError, match="neither 'official' nor an existing directory"):
        hub.resolve_weights(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="unknown model kind"):
        hub.load_pretrained("nope", tmp_path / "weights")


def test_config_from_yaml_file_section(tmp_path):
    model = _randomized(VariationFieldVAE(**TINY), seed=4)
    _write_official(tmp_path / "w", model)
    cfg = tmp_path / "diffusion.yml"
    cfg.write_text("model:\n  resolution: 8\nmotion_vae:\n" + "".join(f"  {k}: {v}\n" for k, v in TINY.items()))
    _same_weights(model, hub.load_pretrained("motion_vae", tmp_path / "w", config=cfg))


def test_official_configs_are_found():
    cfg = hub.official_model_config("motion_vae")
    assert {k: OFFICIAL_CONFIG[k] for k in cfg} == cfg
    assert hub.official_model_config("dit")["model_channels"] == 512
    assert hub.official_model_config("static_vae")["out_channels"] == 112


def test_upstream_dit_checkpoint_loads(tmp_path):
    from dataclasses import asdict

    from gvf.models.dit import TINY as DIT_TINY
    from gvf.models.dit import TemporalDiT

    dit = _randomized(TemporalDiT(DIT_TINY))
    (tmp_path / "w").mkdir()
    torch.save(_upstream_sd(dit), tmp_path / "w" / hub.OFFICIAL_FILES["dit"])
    _same_weights(dit, hub.load_pretrained("dit", tmp_path / "w", config=asdict(DIT_TINY)))


# ------------------------------------------------------------------------------------------------
# our release format
# ------------------------------------------------------------------------------------------------


def test_save_and_load_pretrained_dir(tmp_path):
    model = _randomized(VariationFieldVAE(**TINY), seed=5)
    out = hub.save_pretrained(model, None, tmp_path / "release")
    assert sorted(p.name for p in out.iterdir()) == ["config.yaml", "model.safetensors"]  # no temp files left
    loaded = hub.load_pretrained_dir(out)
    _same_weights(model, loaded)
    assert loaded.config == model.config
    torch.testing.assert_close(_decode(loaded), _decode(model), rtol=0, atol=0)
    # load_pretrained recognises the format too
    _same_weights(model, hub.load_pretrained("motion_vae", out))
    with pytest.raises(ValueError, match="not 'dit'"):
        hub.load_pretrained("dit", out)


def test_save_pretrained_weight_tied_and_explicit_config(tmp_path):
    cfg = dict(TINY, depth=3, weight_tie_layers=True)
    model = _randomized(VariationFieldVAE(**cfg), seed=6)
    hub.save_pretrained(model, cfg, tmp_path / "tied")
    loaded = hub.load_pretrained_dir(tmp_path / "tied")
    assert loaded.layers[0] is loaded.layers[2]
    _same_weights(model, loaded)


def test_load_pretrained_dir_errors(tmp_path):
    with pytest.raises(hub.WeightsNotFoundError, match="missing config.yaml, model.safetensors"):
        hub.load_pretrained_dir(tmp_path)
    model = VariationFieldVAE(**TINY)
    hub.save_pretrained(model, None, tmp_path / "r")
    (tmp_path / "r" / "config.yaml").write_text("model: {}\n")
    with pytest.raises(ValueError, match="kind"):
        hub.load_pretrained_dir(tmp_path / "r")


def test_offline_stops_retrying_and_uses_cache_only(monkeypatch, tmp_path):
    import huggingface_hub
    from huggingface_hub.errors import LocalEntryNotFoundError

    calls = []

    def offline_download(repo_id, filename, **kwargs):
        calls.append(kwargs.get("local_files_only", False))
        raise LocalEntryNotFoundError("cannot reach the Hub and the file is not in the local cache")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline_download)
    with pytest.raises(hub.WeightsNotFoundError, match="static_mean.pt, static_std.pt, deformation_mean.pt, deformation_std.pt"):
        hub.load_normalization("official", cache_dir=tmp_path)
    assert calls == [False, True, True, True]
