"""Training: EMA, atomic checkpoints, resumable data, both trainers (resume = uninterrupted run),
latent encoding / statistics, the latent dataset (frames, CFG dropout) and the release export.

Everything runs on the CPU on two tiny procedural sequences prepared at 32 px.
"""

import json
import math
import random
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from gvf.config import DiffusionExperimentConfig, VAEExperimentConfig, load_config
from gvf.data.latent_dataset import (
    LATENT_KEYS,
    LatentDataset,
    collate_latents,
    compute_latent_stats,
    load_latent_file,
    load_latent_stats,
    save_latent_file,
)
from gvf.train import checkpointing
from gvf.train.checkpointing import CheckpointManager, capture_rng_state, resolve_checkpoint, restore_rng_state
from gvf.train.ema import EMA
from gvf.train.loop import DataStream, build_accelerator, optimizer_step

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT))

NUM_FRAMES = 4
COND_TOKENS, FEAT_CHANNELS = 5, 16  # simple extractor, token_grid 2 -> 2·2 + 1 tokens

VAE_YAML = """
model: {depth: 1, dim: 24, queries_dim: 24, output_dim: 14, num_inputs: 128, num_latents: 16, latent_dim: 4, heads: 2}
backbones:
  vae:
    args: {resolution: 16, in_channels: 16, model_channels: 32, out_channels: 112, latent_channels: 4,
           num_blocks: 1, num_heads: 2, window_size: 8}
framework:
  args: {resolution: 16, lambda_lpips: 0.0, mem_ratio: 0.5}
train: {lr: 1.0e-3, batch_size: 2, gradient_accumulation_steps: 2, warmup_steps: 2, max_steps: 5, static_vae_steps: 2,
        ema_rate: 0.9, log_interval: 1, save_interval: 3, preview_interval: 5, render_lpips_weight: 0.2,
        lpips_pretrained: false, render_resolution: 32, xyz_loss_weight: 1.0, keep_last: 5}
data: {num_timesteps: 2, load_camera: 2, num_workers: 0}
"""

DIFF_YAML = """
model: {resolution: 16, in_channels: 4, out_channels: 4, model_channels: 32, image_cond_channels: 16,
        num_blocks: 2, num_heads: 4}
motion_vae: {depth: 1, dim: 24, queries_dim: 24, output_dim: 14, num_inputs: 128, num_latents: 16, latent_dim: 4, heads: 2}
features: {extractor: simple, extractor_kwargs: {feature_resolution: 16, token_grid: 2}}
train: {lr: 1.0e-3, batch_size: 1, warmup_steps: 2, max_steps: 4, ema_rate: 0.9, log_interval: 1, save_interval: 2,
        sample_interval: 4, sample_steps: 3, sample_resolution: 32}
data: {num_timesteps: 2, num_workers: 0, num_val_objects: 1, num_static_gaussians: 40}
"""


# ------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module", autouse=True)
def _fresh_accelerate_state():
    """Leave no CPU-forced accelerate state behind for other test modules (on GPU machines)."""
    yield
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("train")


@pytest.fixture(scope="module")
def data_dir(work):
    from gvf.data.prepare import PrepareConfig, discover_sources, run_prepare

    cfg = PrepareConfig(num_frames=NUM_FRAMES, num_views=4, resolution=32, ssaa=1, num_points=256, extractor="simple",
                        extractor_kwargs={"feature_resolution": 16, "token_grid": 2})
    out = work / "data"
    records = run_prepare(discover_sources(procedural=2), out, cfg, progress=False)
    assert [r["status"] for r in records] == ["ok", "ok"]
    return out


def _config(work, text, schema, name, overrides=()):
    path = work / name
    path.write_text(text)
    return load_config(path, schema, list(overrides))


@pytest.fixture(scope="module")
def vae_runs(work, data_dir):
    """Run A: 5 steps uninterrupted (checkpoints at 3 and 5). Run B: resumed from A's step 3."""
    from gvf.train.vae_trainer import VAETrainer

    cfg = _config(work, VAE_YAML, VAEExperimentConfig, "vae.yaml", [f"data.data_dir={data_dir}"])
    a = VAETrainer(cfg, work / "vae_a", progress=False, cpu=True)
    motion_lr_phase1 = a.optimizer.param_groups[1]["lr"]
    hist_a = a.train()
    ema_updates = (a.ema_static.num_updates, a.ema_motion.num_updates)
    a.close()
    b = VAETrainer(cfg, work / "vae_b", resume=work / "vae_a" / "checkpoints" / "step_00000003", log_with=None, progress=False,
                   cpu=True)
    resumed_step = b.step
    hist_b = b.train()
    b.close()
    return {"cfg": cfg, "a": work / "vae_a", "b": work / "vae_b", "hist_a": hist_a, "hist_b": hist_b,
            "ema_updates": ema_updates, "resumed_step": resumed_step, "motion_lr_phase1": motion_lr_phase1}


@pytest.fixture(scope="module")
def latents(work, data_dir, vae_runs):
    import encode_latents
    import latent_stats

    out = work / "latents"
    assert encode_latents.main(["--vae-checkpoint", str(vae_runs["a"]), "--data-dir", str(data_dir),
                                "--latents-dir", str(out), "--num-static", "48", "--cpu"]) == 0
    assert latent_stats.main(["--latents-dir", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def diffusion_runs(work, data_dir, vae_runs, latents):
    from gvf.train.diffusion_trainer import DiffusionTrainer

    cfg = _config(work, DIFF_YAML, DiffusionExperimentConfig, "diffusion.yaml",
                  [f"data.data_dir={data_dir}", f"data.latents_dir={latents}", f"train.vae_checkpoint={vae_runs['a']}"])
    a = DiffusionTrainer(cfg, work / "diff_a", log_with=None, progress=False, cpu=True)
    hist_a = a.train()
    ema_updates = a.ema.num_updates
    a.close()
    b = DiffusionTrainer(cfg, work / "diff_b", resume=work / "diff_a" / "checkpoints" / "step_00000002", log_with=None,
                         progress=False, cpu=True)
    hist_b = b.train()
    b.close()
    return {"cfg": cfg, "a": work / "diff_a", "hist_a": hist_a, "hist_b": hist_b, "ema_updates": ema_updates}


def _state(run_dir, step):
    return torch.load(Path(run_dir) / "checkpoints" / f"step_{step:08d}" / "state.pt", weights_only=True)


# ------------------------------------------------------------------------------------- building blocks


def test_ema_updates_only_on_optimizer_steps():
    acc = build_accelerator("no", gradient_accumulation_steps=2, log_with=None, cpu=True)
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    rate = 0.5
    ema = EMA(model, rate)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    model, opt = acc.prepare(model, opt)
    expected = {k: v.clone() for k, v in model.state_dict().items()}
    before = None
    stepped = []
    for i in range(6):
        before = {k: v.clone() for k, v in model.state_dict().items()}
        with acc.accumulate(model):
            loss = model(torch.full((4, 3), float(i + 1))).square().mean()
            acc.backward(loss)
            res = optimizer_step(acc, [opt], [], [(ema, model)], list(model.parameters()), grad_clip=None)
        stepped.append(res.stepped)
        now = model.state_dict()
        if res.stepped:
            expected = {k: rate * expected[k] + (1 - rate) * now[k] for k in now}
        else:  # no optimizer update on an accumulation micro-step
            assert all(torch.equal(before[k], now[k]) for k in now)
    assert stepped == [False, True] * 3
    assert ema.num_updates == 3
    for k, v in ema.module.state_dict().items():
        torch.testing.assert_close(v, expected[k])


def test_rng_capture_restore_round_trip():
    state = capture_rng_state()
    first = (random.random(), float(np.random.rand()), torch.rand(3))
    restore_rng_state(torch.load(_roundtrip(state), weights_only=True))
    again = (random.random(), float(np.random.rand()), torch.rand(3))
    assert first[0] == again[0] and first[1] == again[1] and torch.equal(first[2], again[2])


def _roundtrip(obj):
    import io

    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return buf


def test_checkpoint_crash_leaves_previous_intact(tmp_path, monkeypatch):
    mgr = CheckpointManager(tmp_path / "ckpt", keep_last=2)
    first = mgr.save(1, {"weights": torch.arange(3.0)})

    def crash(obj, path):
        with open(path, "wb") as f:
            f.write(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(checkpointing, "_write_torch", crash)
    with pytest.raises(OSError, match="disk full"):
        mgr.save(2, {"weights": torch.zeros(3)})
    monkeypatch.undo()
    assert mgr.latest() == first and (tmp_path / "ckpt" / "latest").read_text().strip() == "step_00000001"
    assert not (tmp_path / "ckpt" / "step_00000002").exists()
    state, rng = mgr.load(mgr.latest())
    assert torch.equal(state["weights"], torch.arange(3.0)) and state["step"] == 1 and rng is not None

    # killed between writing and renaming: the temp directory is ignored, then cleaned by the next save
    class Killed(BaseException):
        pass

    def killed(*args):
        raise Killed()

    real_replace = checkpointing.os.replace
    monkeypatch.setattr(checkpointing.os, "replace", killed)
    with pytest.raises(Killed):
        mgr.save(2, {"weights": torch.zeros(3)})
    monkeypatch.setattr(checkpointing.os, "replace", real_replace)
    assert (tmp_path / "ckpt" / ".tmp-step_00000002").is_dir() and mgr.latest() == first
    for step in (2, 3, 4):
        mgr.save(step, {"weights": torch.full((3,), float(step))})
    assert [p.name for p in mgr.checkpoints()] == ["step_00000003", "step_00000004"]  # keep_last=2
    assert not list((tmp_path / "ckpt").glob(".tmp-*"))
    assert resolve_checkpoint("auto", tmp_path) is None  # the run dir holds no checkpoints/ folder
    assert resolve_checkpoint(tmp_path / "ckpt") == tmp_path / "ckpt" / "step_00000004"
    with pytest.raises(FileNotFoundError):
        resolve_checkpoint(tmp_path / "nothing")


class _Items(torch.utils.data.Dataset):
    def __init__(self, n):
        self.n, self.epoch = n, 0

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return torch.tensor([self.epoch, i])


def test_data_stream_shards_and_resumes():
    streams = [DataStream(_Items(7), 2, num_replicas=2, rank=r, seed=3) for r in range(2)]
    epoch0 = [torch.cat([next(s) for _ in range(2)]) for s in streams]  # 4 items per rank (7 padded to 8)
    seen = torch.cat(epoch0)[:, 1]
    assert set(seen.tolist()) == set(range(7)) and (torch.cat(epoch0)[:, 0] == 0).all()
    s = DataStream(_Items(7), 2, num_replicas=2, rank=1, seed=3)
    for _ in range(3):  # into epoch 1
        next(s)
    state = s.state_dict()
    assert state["epoch"] == 1 and state["batches_in_epoch"] == 1
    expected = [next(s) for _ in range(3)]
    r = DataStream(_Items(7), 2, num_replicas=2, rank=1, seed=3)
    r.load_state_dict(state)
    got = [next(r) for _ in range(3)]
    assert all(torch.equal(a, b) for a, b in zip(expected, got))
    with pytest.raises(ValueError, match="batch size"):
        DataStream(_Items(1), 2)


# ------------------------------------------------------------------------------------- VAE trainer


def test_vae_resume_reproduces_the_uninterrupted_run(vae_runs):
    hist_a, hist_b = vae_runs["hist_a"], vae_runs["hist_b"]
    assert len(hist_a) == 5 and vae_runs["resumed_step"] == 3 and len(hist_b) == 2
    assert all(math.isfinite(x) for x in hist_a)
    assert hist_b == pytest.approx(hist_a[3:], rel=1e-6, abs=1e-9)
    sa, sb = _state(vae_runs["a"], 5), _state(vae_runs["b"], 5)
    for group in ("models", "ema"):
        for name in ("static_vae", "motion_vae"):
            ta = sa[group][name]["shadow"] if group == "ema" else sa[group][name]
            tb = sb[group][name]["shadow"] if group == "ema" else sb[group][name]
            for k in ta:
                torch.testing.assert_close(ta[k], tb[k], rtol=1e-5, atol=1e-7)
    assert sa["data"] == sb["data"]


def test_vae_trainer_bookkeeping(vae_runs):
    run = vae_runs["a"]
    # accumulation 2: 10 micro-batches, 5 optimizer steps; the motion EMA only in phase 2 (steps 3-5)
    assert vae_runs["ema_updates"] == (5, 3)
    assert vae_runs["motion_lr_phase1"] == 0.0  # motion group warms up from phase 2 only
    state = _state(run, 5)
    assert state["ema"]["static_vae"]["num_updates"] == 5 and state["step"] == 5
    assert state["scheduler"]["last_epoch"] == 5
    assert (run / "config.yaml").is_file() and (run / "command.txt").is_file()
    assert (run / "previews" / "step_00000005.png").is_file()
    assert list((run / "tb").rglob("events.out.tfevents.*"))
    assert (run / "checkpoints" / "latest").read_text().strip() == "step_00000005"
    saved = load_config(run / "config.yaml", VAEExperimentConfig)
    assert saved == vae_runs["cfg"]
    # YAML 1.1 reads a bare `no` as false: it still means no mixed precision
    assert load_config(run / "config.yaml", VAEExperimentConfig, ["train.mixed_precision=no"]).train.mixed_precision == "no"


def test_static_vae_init_from_file(tmp_path):
    from gvf.models.static_vae import StaticVAE
    from gvf.train.vae_trainer import init_static_vae

    kw = dict(resolution=16, in_channels=8, model_channels=16, num_blocks=1, num_heads=2, window_size=8)
    torch.manual_seed(1)
    src = StaticVAE(out_channels=14 * 2, **kw)  # 2 Gaussians per voxel: out_layer does not fit
    torch.save({"module." + k: v for k, v in src.state_dict().items()}, tmp_path / "init.pt")  # DDP-style keys
    torch.manual_seed(2)
    dst = StaticVAE(out_channels=112, **kw)
    fresh_out = dst.out_layer.weight.clone()
    missing = init_static_vae(dst, tmp_path / "init.pt")
    assert missing == ["MipGS_perturbation", "out_layer.bias", "out_layer.weight"]
    assert torch.equal(dst.encoder[0].attn.to_qkv.weight, src.encoder[0].attn.to_qkv.weight)
    assert torch.equal(dst.out_layer.weight, fresh_out)
    torch.save({"bogus.weight": torch.zeros(1)}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="does not fit"):
        init_static_vae(dst, tmp_path / "bad.pt")


def test_vae_cli_reports_bad_input(work, vae_runs, capsys):
    import train_vae

    bad = work / "bad.yaml"
    bad.write_text("model: {depht: 2}\n")
    assert train_vae.main(["--config", str(bad), "--run-dir", str(work / "bad_run")]) == 2
    assert "model.depht" in capsys.readouterr().err
    assert train_vae.main(["--config", str(work / "vae.yaml"), "--resume", str(work / "missing")]) == 2
    assert "no training checkpoint" in capsys.readouterr().err


# ------------------------------------------------------------------------------------- latents


def test_encode_latents_and_stats_files(latents, data_dir, vae_runs):
    from gvf.models.static_vae import decoder_output_to_gaussians, hammersley_perturbation

    index = json.loads((latents / "index.json").read_text())
    names = sorted(p.name for p in data_dir.iterdir() if p.is_dir() and not p.name.startswith(".") and p.name != "cond_features")
    assert sorted(index["objects"]) == names
    all_static, all_mean, all_std = [], [], []
    for name in names:
        f = load_latent_file(latents / f"{name}.safetensors")
        assert set(f) == set(LATENT_KEYS)
        assert f["latent_mean"].shape == (NUM_FRAMES, 16, 4) and f["latent_std"].shape == (NUM_FRAMES, 16, 4)
        assert (f["latent_std"] > 0).all()
        assert f["fps_gaussians_512"].shape == (16, 14) and f["fps_gaussians_4096"].shape == (48, 14)
        assert f["static_coords"].dtype == torch.int32 and f["static_coords"].shape[1] == 3
        assert int(f["static_coords"].min()) >= 0 and int(f["static_coords"].max()) < 16
        assert f["static_feats"].shape == (f["static_coords"].shape[0], 112)
        # both FPS sets are distinct rows of the object's static Gaussians, rebuilt from the stored decoder output
        coords = torch.cat([torch.zeros_like(f["static_coords"][:, :1]), f["static_coords"]], 1)
        rows = decoder_output_to_gaussians(coords, f["static_feats"], 16, hammersley_perturbation(8))[0].to_tensor14()
        for key in ("fps_gaussians_512", "fps_gaussians_4096"):
            d = (f[key][:, None, :] - rows[None, :, :]).norm(dim=-1)  # exact (cdist rounds near 0)
            assert float(d.min(dim=1).values.max()) < 1e-5
            assert len(set(d.argmin(dim=1).tolist())) == f[key].shape[0]
        all_static.append(f["fps_gaussians_4096"].double())
        all_mean.append(f["latent_mean"].double().reshape(-1, 4))
        all_std.append(f["latent_std"].double().reshape(-1, 4))
    stats = load_file(str(latents / "stats.safetensors"))
    rows, m, s = torch.cat(all_static), torch.cat(all_mean), torch.cat(all_std)
    torch.testing.assert_close(stats["static_mean"], rows.mean(0).float())
    torch.testing.assert_close(stats["static_std"], rows.std(0, unbiased=False).clamp_min(1e-6).float(), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(stats["deformation_mean"], m.mean(0).float())
    total_std = (m.var(0, unbiased=False) + (s * s).mean(0)).sqrt()  # std of mean + std·ε
    torch.testing.assert_close(stats["deformation_std"], total_std.float())
    for key in ("static_mean", "static_std", "deformation_mean", "deformation_std"):
        torch.testing.assert_close(torch.load(latents / f"{key}.pt", weights_only=True), stats[key])
    assert {k: v.shape for k, v in load_latent_stats(latents).items()} == {k: v.shape for k, v in stats.items()}


def _synthetic_latents(tmp_path, T0=5, L=6, C=3, S=8, zero_std=False):
    g = torch.Generator().manual_seed(0)
    lat, cond = tmp_path / "lat", tmp_path / "cond"
    cond.mkdir(parents=True)
    files = {}
    for name in ("a", "b"):
        t = {
            "latent_mean": torch.randn(T0, L, C, generator=g),
            "latent_std": torch.zeros(T0, L, C) if zero_std else torch.rand(T0, L, C, generator=g) + 0.1,
            "fps_gaussians_512": torch.randn(L, 14, generator=g),
            "fps_gaussians_4096": torch.randn(S, 14, generator=g),
            "static_feats": torch.randn(4, 112, generator=g),
            "static_coords": torch.randint(0, 16, (4, 3), generator=g, dtype=torch.int32),
        }
        save_latent_file(lat / f"{name}.safetensors", t, {"name": name})
        feats = (torch.rand(T0, 7, 5, generator=g) + 0.5).numpy().astype(np.float16)
        np.savez_compressed(cond / f"{name}.npz", features=feats)
        files[name] = (t, feats)
    stats = {"static_mean": torch.randn(14, generator=g), "static_std": torch.rand(14, generator=g) + 0.5,
             "deformation_mean": torch.randn(C, generator=g), "deformation_std": torch.rand(C, generator=g) + 0.5}
    return lat, cond, files, stats


def test_latent_dataset_frames_normalisation_and_cfg_dropout(tmp_path):
    lat, cond, files, stats = _synthetic_latents(tmp_path, zero_std=True)
    ds = LatentDataset(lat, cond, stats=stats, num_frames=3, num_static=5, uncond_p=1.0, seed=1)
    assert ds.names == ["a", "b"]
    for i, name in enumerate(ds.names):
        t, feats = files[name]
        item = ds[i]
        idx = item["frame_idx"]
        assert idx.shape == (3,) and torch.equal(idx, idx.sort().values) and len(set(idx.tolist())) == 3
        # std = 0: the latent is the normalised posterior mean of exactly those frames
        torch.testing.assert_close(item["latent"], (t["latent_mean"][idx] - stats["deformation_mean"]) / stats["deformation_std"])
        # CFG dropout zeroes the video features only; static latent and positions are kept
        assert item["cond_dropped"] and item["cond_images"].shape == (3, 7, 5) and (item["cond_images"] == 0).all()
        # the static condition: the first num_static (FPS-order) rows, normalised per channel
        torch.testing.assert_close(item["static_latent"], (t["fps_gaussians_4096"][:5] - stats["static_mean"]) / stats["static_std"])
        # positions normalised with the xyz statistics (data.normalize_positions, the default)
        torch.testing.assert_close(item["deformation_position_xyz"],
                                   (t["fps_gaussians_512"][:, :3] - stats["static_mean"][:3]) / stats["static_std"][:3])
    kept = LatentDataset(lat, cond, stats=stats, num_frames=3, num_static=None, normalize_positions=False, uncond_p=0.0, seed=1)[0]
    assert not kept["cond_dropped"] and kept["static_latent"].shape == (8, 14)
    torch.testing.assert_close(kept["deformation_position_xyz"], files["a"][0]["fps_gaussians_512"][:, :3])  # raw xyz
    torch.testing.assert_close(kept["cond_images"], torch.from_numpy(files["a"][1][kept["frame_idx"].numpy()].astype(np.float32)))
    batch = collate_latents([kept, kept])
    assert batch["latent"].shape == (2, 3, 6, 3) and batch["names"] == ["a", "a"]
    with pytest.raises(ValueError, match="frames"):
        LatentDataset(lat, cond, stats=stats, num_frames=6, num_static=5)[0]
    with pytest.raises(ValueError, match="static rows"):
        LatentDataset(lat, cond, stats=stats, num_frames=3, num_static=9)[0]


def test_latent_dataset_sampling_is_seeded_per_item(tmp_path):
    lat, cond, files, stats = _synthetic_latents(tmp_path)
    ds = LatentDataset(lat, cond, stats=stats, num_frames=5, num_static=None, uncond_p=0.5, seed=2)
    a, b = ds[0], ds[0]
    assert torch.equal(a["latent"], b["latent"])  # same (seed, epoch, index): same draw
    drops, values = [], []
    for epoch in range(40):
        ds.set_epoch(epoch)
        item = ds[1]
        drops.append(bool(item["cond_dropped"]))
        values.append(item["latent"] * stats["deformation_std"] + stats["deformation_mean"])
    assert 8 <= sum(drops) <= 32  # p = 0.5
    z = torch.stack(values)  # (40, T, L, C): fresh posterior samples mean + std·eps each epoch
    t = files["b"][0]
    eps = (z - t["latent_mean"]) / t["latent_std"]
    assert abs(float(eps.mean())) < 0.15 and abs(float(eps.std()) - 1.0) < 0.1
    stats2 = compute_latent_stats([lat / "a.safetensors", lat / "b.safetensors"])
    assert stats2["deformation_std"].shape == (3,) and stats2["static_mean"].shape == (14,)


# ------------------------------------------------------------------------------------- diffusion


def test_diffusion_resume_and_sampling_check(diffusion_runs):
    hist_a, hist_b = diffusion_runs["hist_a"], diffusion_runs["hist_b"]
    assert len(hist_a) == 4 and all(math.isfinite(x) for x in hist_a)
    assert hist_b == pytest.approx(hist_a[2:], rel=1e-6, abs=1e-9)
    assert diffusion_runs["ema_updates"] == 4
    videos = list((diffusion_runs["a"] / "samples").glob("step_00000004_*.mp4"))
    assert len(videos) == 1 and videos[0].stat().st_size > 0
    import imageio.v2 as imageio

    frames = imageio.mimread(videos[0])
    assert len(frames) == NUM_FRAMES and frames[0].shape[:2] == (32, 64)  # sample | reconstruction


def test_diffusion_cli_resume_matches(work, diffusion_runs):
    import train_diffusion

    cfg_path = work / "diffusion_cli.yaml"
    from omegaconf import OmegaConf

    from gvf.config import to_yaml_dict

    OmegaConf.save(OmegaConf.create(to_yaml_dict(diffusion_runs["cfg"])), cfg_path)
    run = work / "diff_cli"
    ckpt = diffusion_runs["a"] / "checkpoints" / "step_00000002"
    assert train_diffusion.main(["--config", str(cfg_path), "--run-dir", str(run), "--resume", str(ckpt),
                                 "--no-progress", "--no-tensorboard", "--cpu", "train.sample_interval=0"]) == 0
    sa, sc = _state(diffusion_runs["a"], 4), _state(run, 4)
    for k, v in sa["ema"]["dit"]["shadow"].items():
        torch.testing.assert_close(v, sc["ema"]["dit"]["shadow"][k], rtol=1e-5, atol=1e-7)


def test_export_release(work, vae_runs, diffusion_runs, latents):
    import export_release

    from gvf.models.dit import TemporalDiT
    from gvf.models.motion_vae import VariationFieldVAE
    from gvf.config import to_kwargs

    out = work / "release"
    assert export_release.main(["--diffusion-checkpoint", str(diffusion_runs["a"]), "--vae-checkpoint", str(vae_runs["a"]),
                                "--out", str(out)]) == 0
    assert {p.name for p in out.iterdir()} == {"config.yaml", "dit.safetensors", "motion_vae.safetensors", "static_vae.safetensors",
                                               "latent_stats.safetensors", "release.json", "README.md"}
    cfg = load_config(out / "config.yaml", DiffusionExperimentConfig)
    assert cfg.features.extractor == "simple" and cfg.motion_vae == vae_runs["cfg"].model
    assert cfg.data.num_static_gaussians == 40 and cfg.data.normalize_positions is True
    from gvf.pipeline import load_release

    release = load_release(out)  # the inference side reads it
    assert release.dit.config.model_channels == 32 and set(release.stats) == {"static_mean", "static_std", "deformation_mean", "deformation_std"}
    dit = TemporalDiT(**to_kwargs(cfg.model))
    dit.load_state_dict(load_file(str(out / "dit.safetensors")), strict=True)
    ema = _state(diffusion_runs["a"], 4)["ema"]["dit"]["shadow"]
    assert all(torch.equal(v, ema[k]) for k, v in dit.state_dict().items())
    VariationFieldVAE(**to_kwargs(cfg.motion_vae)).load_state_dict(load_file(str(out / "motion_vae.safetensors")), strict=True)
    stats = load_file(str(out / "latent_stats.safetensors"))
    ref = load_file(str(latents / "stats.safetensors"))
    assert all(torch.equal(stats[k], ref[k]) for k in ref)
    info = json.loads((out / "release.json").read_text())
    assert info["dit"]["step"] == 4 and info["total_bytes"] < 30 * 2**20
    assert not list(work.glob(".release.tmp-*"))


@pytest.mark.cuda
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_trainers_on_gpu_mixed_precision(work, data_dir, latents, precision):
    """Both trainers on CUDA (gsplat when installed) under autocast: finite losses, EMA per optimizer step."""
    from gvf.train.diffusion_trainer import DiffusionTrainer
    from gvf.train.vae_trainer import VAETrainer

    cfg = _config(work, VAE_YAML, VAEExperimentConfig, f"vae_{precision}.yaml",
                  [f"data.data_dir={data_dir}", f"train.mixed_precision={precision}", "train.max_steps=4"])
    vae = VAETrainer(cfg, work / f"gpu_vae_{precision}", log_with=None, progress=False)
    assert vae.accelerator.device.type == "cuda"
    hist = vae.train()
    vae.close()
    assert len(hist) == 4 and all(math.isfinite(x) for x in hist)
    dcfg = _config(work, DIFF_YAML, DiffusionExperimentConfig, f"diffusion_{precision}.yaml",
                   [f"data.data_dir={data_dir}", f"data.latents_dir={latents}", f"train.mixed_precision={precision}",
                    f"train.vae_checkpoint={work / f'gpu_vae_{precision}'}"])
    dit = DiffusionTrainer(dcfg, work / f"gpu_diff_{precision}", log_with=None, progress=False)
    hist = dit.train()
    dit.close()
    assert len(hist) == 4 and all(math.isfinite(x) for x in hist)
    # fp16: the grad scaler may skip overflowing steps, which then update no EMA
    assert dit.ema.num_updates == 4 if precision == "bf16" else 1 <= dit.ema.num_updates <= 4
