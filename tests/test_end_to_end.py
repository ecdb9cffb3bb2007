"""The whole chain on a CPU, as a user runs it: prepare 4 procedural sequences -> a few VAE steps ->
encode latents -> statistics -> a few DiT steps -> export a release -> video-to-4D inference with it
(scripts/train_demo.sh stages with tiny budgets, then inference_dpm_latent.py)."""

import os
import subprocess
import sys

import pytest
import torch

from conftest import ROOT

pytestmark = pytest.mark.slow


def _run(cmd, env, timeout=240):
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{cmd} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def test_prepare_train_encode_train_export_infer(tmp_path):
    env = dict(os.environ, PYTHON=sys.executable, DEMO_DATA=str(tmp_path / "data"), DEMO_RUNS=str(tmp_path / "runs"),
               DEMO_RELEASE=str(tmp_path / "release"), DEMO_OBJECTS="4", DEMO_WORKERS="1", DEMO_VAE_STEPS="4",
               DEMO_DIT_STEPS="2", OMP_NUM_THREADS="1")  # fmt: skip
    overrides = ["train.batch_size=2", "data.num_workers=0", "train.static_vae_steps=2", "train.sample_interval=0",
                 "train.mixed_precision=no", "data.num_static_gaussians=256"]  # fmt: skip
    _run(["bash", "scripts/train_demo.sh", "--", *overrides], env)

    release = tmp_path / "release"
    for name in ("config.yaml", "dit.safetensors", "motion_vae.safetensors", "latent_stats.safetensors"):
        assert (release / name).is_file(), name
    assert len(list((tmp_path / "data" / "latents").glob("*.safetensors"))) == 5  # 4 objects + stats

    out = tmp_path / "out"
    video = tmp_path / "data" / "procedural_00000" / "imgs"  # a folder of RGBA frames, view 00 = front
    frames = tmp_path / "frames"
    frames.mkdir()
    for png in sorted(video.glob("timestep_*_view_00.png")):
        (frames / png.name).symlink_to(png)
    from gvf.gaussians import Gaussians, save_ply

    g = torch.Generator().manual_seed(0)
    n = 300
    canonical = Gaussians(xyz=torch.rand(n, 3, generator=g) * 0.6 - 0.3, features_dc=torch.randn(n, 3, generator=g) * 0.3,
                          opacity_raw=torch.ones(n, 1), scaling_raw=torch.full((n, 3), 2.0), rotation_raw=torch.zeros(n, 4))  # fmt: skip
    save_ply(canonical, tmp_path / "canonical.ply")
    proc = _run([sys.executable, "inference_dpm_latent.py", "--video", str(frames), "--canonical", str(tmp_path / "canonical.ply"),
                 "--pretrained", str(release), "--output", str(out), "--align-step", "90", "--resolution", "64",
                 "--orbit-views", "8", "--solver", "multistep", "--steps", "3", "--device", "cpu", "--no-progress"], env)  # fmt: skip
    assert "wrote" in proc.stdout
    from gvf.export import load_4d

    seq = load_4d(out / "gaussians_4d.safetensors")
    assert seq.variations.shape[:2] == (16, n) and torch.isfinite(seq.variations).all()
    assert len(list((out / "ply").glob("frame_*.ply"))) == 16
    assert (out / "input_view.mp4").stat().st_size > 0 and (out / "orbit.mp4").stat().st_size > 0
