import dataclasses
import shlex
from pathlib import Path

import pytest
import yaml

from gvf.config import (
    ConfigError,
    DiffusionExperimentConfig,
    DiTConfig,
    MotionVAEConfig,
    StaticVAEConfig,
    VAEExperimentConfig,
    load_config,
    save_run_config,
    to_kwargs,
)

OFFICIAL = Path(__file__).resolve().parents[1] / "configs" / "official"


def _yaml(name):
    with open(OFFICIAL / name) as f:
        return yaml.safe_load(f)


def _assert_section(obj, expected: dict, where=""):
    """Every key/value of the upstream YAML is present, with the same value, in the dataclass."""
    aliases = {f.metadata.get("yaml", f.name): f.name for f in dataclasses.fields(obj)}
    for key, value in expected.items():
        assert key in aliases, f"{where}{key} missing from {type(obj).__name__}"
        got = getattr(obj, aliases[key])
        if isinstance(value, dict):
            _assert_section(got, value, f"{where}{key}.")
        else:
            assert got == value and type(got) in (type(value), float), f"{where}{key}: {got!r} != {value!r}"


def test_official_diffusion_config_loads_unchanged():
    cfg = load_config(OFFICIAL / "diffusion.yml", DiffusionExperimentConfig)
    raw = _yaml("diffusion.yml")
    assert set(raw) == {"model", "diffusion", "motion_vae", "static_vae"}
    for section in raw:
        _assert_section(getattr(cfg, section), raw[section], section + ".")
    assert cfg.model.model_channels == 512 and cfg.model.num_heads == 16 and cfg.model.pe_mode == "ape"
    assert cfg.model.num_head_channels == 64 and cfg.model.share_mod is False and cfg.model.patch_size == 1
    assert cfg.diffusion.noise_schedule == "cosine" and cfg.diffusion.predict_type == "v"
    assert cfg.motion_vae.latent_dim == 16 and cfg.motion_vae.num_latents == 512
    mip = cfg.static_vae.framework.args.representation_config.MipGS
    assert mip.filter_3d_kernel_size == 0.0009 and mip.filter_2d_kernel_size == 0.1 and mip.lr._rotation == 0.1
    assert cfg.static_vae.framework.args.lamda_kl == 1e-6
    assert cfg.static_vae.backbones.vae.name == "SparseTransformerVAE"
    assert cfg.static_vae.backbones.vae.args.window_size == 8


def test_official_vae_config_loads_unchanged():
    cfg = load_config(OFFICIAL / "vae.yml", VAEExperimentConfig)
    raw = _yaml("vae.yml")
    assert set(raw) == {"model", "backbones", "framework"}
    for section in raw:
        _assert_section(getattr(cfg, section), raw[section], section + ".")
    assert cfg.model.dim == 768 and cfg.model.knn_k == 8 and cfg.model.beta == 7.0
    assert cfg.framework.args.regularizations.MipGS.lambda_vol == 10000.0
    assert isinstance(cfg.static_vae, StaticVAEConfig)
    # both files describe the same motion VAE and static VAE
    dcfg = load_config(OFFICIAL / "diffusion.yml", DiffusionExperimentConfig)
    assert cfg.model == dcfg.motion_vae and cfg.static_vae == dcfg.static_vae


def test_to_kwargs_matches_constructor_names():
    kw = to_kwargs(DiTConfig())
    assert kw["model_channels"] == 512 and "no_temporal_attn" in kw and isinstance(kw, dict)
    mk = to_kwargs(MotionVAEConfig(depth=2))
    assert mk["depth"] == 2 and set(mk) >= {"num_timesteps", "chunk_size", "knn_k", "beta"}
    kw["model_channels"] = 1  # a copy
    assert DiTConfig().model_channels == 512


def test_unknown_key_names_key_and_file(tmp_path):
    text = (OFFICIAL / "vae.yml").read_text().replace("  heads: 12\n", "  heads: 12\n  hedas: 3\n", 1)
    path = tmp_path / "typo.yml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(path, VAEExperimentConfig)
    assert "model.hedas" in str(err.value) and "typo.yml" in str(err.value)
    path.write_text("framework:\n  args:\n    representation_config:\n      MipGS:\n        4d_filter: 1\n")
    with pytest.raises(ConfigError, match="typo.yml"):
        load_config(path, VAEExperimentConfig)
    with pytest.raises(ConfigError, match="MipGS.4d_filter"):
        load_config(path, VAEExperimentConfig)


def test_wrong_types_and_bad_files(tmp_path):
    path = tmp_path / "bad.yml"
    path.write_text("model:\n  depth: 1.5\n")
    with pytest.raises(ConfigError, match=r"bad.yml.*model.depth"):
        load_config(path, VAEExperimentConfig)
    path.write_text("model: [1, 2]\n")
    with pytest.raises(ConfigError, match=r"bad.yml.*'model'"):
        load_config(path, VAEExperimentConfig)
    path.write_text("model:\n  pe_mode: sinusoid\n")
    with pytest.raises(ConfigError, match=r"bad.yml.*pe_mode"):
        load_config(path, DiffusionExperimentConfig)
    path.write_text("model: {depth: 2\n")
    with pytest.raises(ConfigError, match="bad.yml"):
        load_config(path, VAEExperimentConfig)
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yml", VAEExperimentConfig)


def test_partial_file_takes_defaults(tmp_path):
    path = tmp_path / "small.yml"
    path.write_text("model:\n  depth: 2\n  dim: 48\n  queries_dim: 48\ntrain:\n  lr: 1.0e-3\ndata:\n")
    cfg = load_config(path, VAEExperimentConfig)
    assert cfg.model.depth == 2 and cfg.model.heads == 12 and cfg.train.lr == 1e-3
    assert cfg.data.num_timesteps == 24
    # The model section is validated on load: dim 48 with the default queries_dim 768 cannot be built.
    path.write_text("model:\n  dim: 48\n")
    with pytest.raises(ConfigError, match="queries_dim"):
        load_config(path, VAEExperimentConfig)


def test_overrides():
    cfg = load_config(
        OFFICIAL / "diffusion.yml",
        DiffusionExperimentConfig,
        ["model.num_blocks=6", "diffusion.steps=50", "static_vae.framework.args.representation_config.MipGS.2d_filter_kernel_size=0.3", "train.lr=1e-4"],
    )
    assert cfg.model.num_blocks == 6 and cfg.diffusion.steps == 50 and cfg.train.lr == 1e-4
    assert cfg.static_vae.framework.args.representation_config.MipGS.filter_2d_kernel_size == 0.3
    with pytest.raises(ConfigError, match=r"model\.num_blockz"):
        load_config(OFFICIAL / "diffusion.yml", DiffusionExperimentConfig, ["model.num_blockz=6"])
    with pytest.raises(ConfigError, match=r"model\.num_blocks"):
        load_config(OFFICIAL / "diffusion.yml", DiffusionExperimentConfig, ["model.num_blocks=six"])
    with pytest.raises(ConfigError, match="key=value"):
        load_config(OFFICIAL / "diffusion.yml", DiffusionExperimentConfig, ["model.num_blocks"])
    with pytest.raises(ConfigError, match="predict_type"):
        load_config(OFFICIAL / "diffusion.yml", DiffusionExperimentConfig, ["diffusion.predict_type=x0"])


def test_save_run_config(tmp_path):
    cfg = load_config(OFFICIAL / "vae.yml", VAEExperimentConfig, ["model.depth=3"])
    argv = ["train_vae.py", "--config", "configs/official/vae.yml", "model.depth=3", "a b"]
    cfg_path, cmd_path = save_run_config(cfg, tmp_path / "run", argv)
    assert cfg_path == tmp_path / "run" / "config.yaml" and cmd_path.name == "command.txt"
    assert shlex.split(cmd_path.read_text()) == argv
    saved = yaml.safe_load(cfg_path.read_text())
    assert saved["model"]["depth"] == 3
    assert saved["framework"]["args"]["representation_config"]["MipGS"]["3d_filter_kernel_size"] == 0.0009
    assert load_config(cfg_path, VAEExperimentConfig) == cfg
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["command.txt", "config.yaml"]
