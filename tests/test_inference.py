"""Video-to-4D inference: release loading, alignment, the pipeline, the CLI, the 4D file, evaluation.

Everything runs on a tiny random release written in the release format (config.yaml +
dit/motion_vae/latent_stats .safetensors), a tiny canonical PLY and a tiny video written here.
"""

import importlib.util
import json
import math
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import save_file

from gvf.align import align_to_frame, mask_extent, rescale_to_frame, rotate_gaussians_z
from gvf.config import (
    DiffusionExperimentConfig,
    DiTConfig,
    FeaturesConfig,
    MotionVAEConfig,
    StaticVAEBackbone,
    StaticVAEBackboneConfig,
    StaticVAEBackbones,
    StaticVAEConfig,
    to_kwargs,
    to_yaml_dict,
)
from gvf.export import (
    FOUR_D_FILE,
    INPUT_VIEW_VIDEO,
    ORBIT_VIDEO,
    load_4d,
    planned_outputs,
    save_4d,
    spiral_schedule,
)
from gvf.gaussians import Gaussians, load_ply, save_ply
from gvf.hub import WeightsNotFoundError
from gvf.pipeline import VideoTo4DPipeline, load_release
from gvf.render import render_gaussians
from gvf.render._torch_backend import quat_to_rotmat
from gvf.render.cameras import intrinsics_from_fov, orbit_extrinsics

ROOT = Path(__file__).resolve().parents[1]
T_FRAMES = 4


# ------------------------------------------------------------------------------------------ helpers


def tiny_config() -> DiffusionExperimentConfig:
    return DiffusionExperimentConfig(
        model=DiTConfig(resolution=16, in_channels=4, out_channels=4, model_channels=32, image_cond_channels=16, num_blocks=1, num_heads=4),
        motion_vae=MotionVAEConfig(depth=1, dim=24, queries_dim=24, heads=2, num_inputs=64, num_latents=16, latent_dim=4, chunk_size=128),
        features=FeaturesConfig(extractor="simple", extractor_kwargs={"feature_resolution": 32, "token_grid": 4}),
        static_vae=StaticVAEConfig(backbones=StaticVAEBackbones(vae=StaticVAEBackbone(args=StaticVAEBackboneConfig(
            resolution=16, in_channels=16, model_channels=48, num_blocks=2, num_heads=4)))),
    )


def tiny_models(cfg):
    from gvf.models.dit import TemporalDiT
    from gvf.models.motion_vae import VariationFieldVAE
    from gvf.models.static_vae import StaticVAE

    torch.manual_seed(0)
    dit, vae = TemporalDiT(cfg.model), VariationFieldVAE(**to_kwargs(cfg.motion_vae))
    static = StaticVAE(**to_kwargs(cfg.static_vae.backbones.vae.args))
    with torch.no_grad():  # the zero-initialised heads would predict no motion at all
        for p in list(dit.parameters()) + list(vae.parameters()) + list(static.out_layer.parameters()):
            p.add_(torch.randn_like(p) * 0.02)
    return dit, vae, static


def write_tiny_release(directory: Path, normalize_positions: bool = True) -> Path:
    """The exported release layout, written by hand: config.yaml + dit / motion_vae / static_vae / stats safetensors."""
    directory.mkdir(parents=True, exist_ok=True)
    cfg = tiny_config()
    dit, vae, static = tiny_models(cfg)
    tree = to_yaml_dict(cfg)
    tree = {k: tree[k] for k in ("model", "diffusion", "motion_vae", "static_vae", "features")}  # the exported sections
    tree["data"] = {"num_static_gaussians": 64, "normalize_positions": normalize_positions}
    (directory / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(tree)))
    save_file({k: v.contiguous() for k, v in dit.state_dict().items()}, str(directory / "dit.safetensors"))
    save_file({k: v.contiguous() for k, v in vae.state_dict().items()}, str(directory / "motion_vae.safetensors"))
    save_file({k: v.contiguous() for k, v in static.state_dict().items()}, str(directory / "static_vae.safetensors"))
    stats = {"static_mean": torch.zeros(14), "static_std": torch.ones(14),
             "deformation_mean": torch.zeros(4), "deformation_std": torch.full((4,), 0.1)}
    save_file(stats, str(directory / "latent_stats.safetensors"))
    return directory


def asymmetric_gaussians(n=150, seed=0) -> Gaussians:
    """A lopsided, two-coloured blob (so that every azimuth looks different)."""
    g = torch.Generator().manual_seed(seed)
    xyz = (torch.rand(n, 3, generator=g) - 0.5) * 0.5
    xyz[: n // 3, 0] += 0.25
    xyz[n // 3 : n // 2, 1] -= 0.2
    colour = torch.randn(n, 3, generator=g)
    colour[: n // 3] = torch.tensor([2.0, -2.0, -2.0])
    colour[n // 3 : 2 * n // 3] = torch.tensor([-2.0, 2.0, -2.0])
    return Gaussians(xyz, colour, torch.full((n, 1), 3.0), torch.full((n, 3), 2.0), torch.randn(n, 4, generator=g) * 0.2)


def write_video(path: Path, num_frames=6, size=48):
    import imageio.v2 as imageio

    w = imageio.get_writer(str(path), fps=12, codec="libx264", quality=8, pixelformat="yuv420p", macro_block_size=16)
    for t in range(num_frames):
        f = np.full((size, size, 3), 255, np.uint8)
        f[12:36, 10 + t : 30 + t] = (200, 40, 40)
        w.append_data(f)
    w.close()
    return path


def count_frames(path: Path) -> int:
    import imageio.v3 as iio

    return sum(1 for _ in iio.imiter(path))


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("inference")
    release = write_tiny_release(root / "release")
    canonical = root / "canonical.ply"
    save_ply(asymmetric_gaussians(), canonical)
    video = write_video(root / "clip.mp4")
    return {"root": root, "release": release, "canonical": canonical, "video": video}


@pytest.fixture(scope="module")
def cli():
    spec = importlib.util.spec_from_file_location("inference_dpm_latent", ROOT / "inference_dpm_latent.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


FAST = ["--solver", "multistep", "--steps", "2", "--num-frames", str(T_FRAMES), "--align-step", "90", "--align-resolution", "32",
        "--resolution", "32", "--orbit-views", "8", "--no-progress", "--device", "cpu"]


# ---------------------------------------------------------------------------------------- release


def test_load_release(assets):
    release = load_release(assets["release"])
    cfg = tiny_config()
    dit, vae, static = tiny_models(cfg)
    assert release.config.model == cfg.model and release.config.features.extractor == "simple"
    assert release.static_vae is None  # only on request
    for model, loaded in ((dit, release.dit), (vae, release.motion_vae)):
        for k, v in model.state_dict().items():
            torch.testing.assert_close(loaded.state_dict()[k], v, rtol=0, atol=0)
    torch.testing.assert_close(release.stats["deformation_std"], torch.full((4,), 0.1))
    with_static = load_release(assets["release"], static_vae=True)
    torch.testing.assert_close(with_static.static_vae.out_layer.weight, static.out_layer.weight, rtol=0, atol=0)


def test_official_weights_missing(tmp_path):
    with pytest.raises(WeightsNotFoundError, match="ema_diffusion_0.9999_500000.pt"):
        VideoTo4DPipeline.from_official(tmp_path)


def test_incomplete_release(assets, tmp_path):
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "config.yaml").write_text((assets["release"] / "config.yaml").read_text())
    with pytest.raises(WeightsNotFoundError, match="missing dit.safetensors, motion_vae.safetensors, latent_stats.safetensors"):
        load_release(partial)
    with pytest.raises(WeightsNotFoundError, match="not found"):
        load_release(tmp_path / "nothing")


# -------------------------------------------------------------------------------------- alignment


def test_rotate_gaussians_z_matches_matrices():
    g = asymmetric_gaussians(20)
    out = rotate_gaussians_z(g, 37.0)
    th = math.radians(37.0)
    R = torch.tensor([[math.cos(th), -math.sin(th), 0.0], [math.sin(th), math.cos(th), 0.0], [0.0, 0.0, 1.0]])
    torch.testing.assert_close(out.xyz, g.xyz @ R.T, atol=1e-6, rtol=0)
    # orientation matrices: R · R(q) (upstream rotates the matrices and converts back)
    torch.testing.assert_close(quat_to_rotmat(out.rotation), R @ quat_to_rotmat(g.rotation), atol=1e-5, rtol=0)
    q = out.rotation_raw + torch.tensor([1.0, 0.0, 0.0, 0.0])  # stored quaternion
    torch.testing.assert_close(q.norm(dim=-1), torch.ones(20), atol=1e-6, rtol=0)
    assert (q[:, 0] >= 0).all()
    torch.testing.assert_close(out.opacity_raw, g.opacity_raw)
    torch.testing.assert_close(out.scaling_raw, g.scaling_raw)


def test_mask_extent_and_rescale():
    m = torch.zeros(2, 10, 12, dtype=torch.bool)
    m[0, 2:5, 3:9] = True  # rows 2..4 (extent 2), cols 3..8 (extent 5)
    assert mask_extent(m).tolist() == [5, -1]
    img = torch.zeros(3, 20, 20)
    small = rescale_to_frame(img, 0.5)  # 10 px image padded with white: 5 px each side
    assert (small[:, 5:15, 5:15] == 0).all() and (small[:, :5] == 1).all() and (small[:, 15:] == 1).all()
    big = torch.rand(3, 20, 20)
    torch.testing.assert_close(rescale_to_frame(big, 1.0), big)


@pytest.mark.parametrize("true_azimuth", [90.0, -90.0])
def test_alignment_recovers_azimuth(true_azimuth):
    """Render the canonical rotated about +Z; the 90° search must undo it."""
    from gvf.features import get_extractor

    g = asymmetric_gaussians()
    target = rotate_gaussians_z(g, true_azimuth)
    K = intrinsics_from_fov(math.radians(49.1))
    out = render_gaussians(target, orbit_extrinsics(0.0), K, 48)
    res = align_to_frame(g, out.rgb[0, 0], out.alpha[0, 0, ..., 0], extractor=get_extractor("simple", feature_resolution=16),
                         step_deg=90.0, resolution=48)
    # seeing the object rotated by +θ from the front = seeing it unrotated from azimuth −θ
    assert res.azimuth_deg == pytest.approx(-true_azimuth)
    assert res.scale_factor == pytest.approx(1.0)
    torch.testing.assert_close(res.gaussians.xyz, target.xyz, atol=1e-5, rtol=0)
    assert int(torch.argmin(res.scores)) == [-180.0, -90.0, 0.0, 90.0].index(-true_azimuth)


# ------------------------------------------------------------------------------------- pipeline


def test_pipeline_static_condition_normalisation(assets, tmp_path):
    def nearest(a, b):
        return torch.cdist(a, b, compute_mode="donot_use_mm_for_euclid_dist").min(dim=1).values.max()

    g = asymmetric_gaussians()
    rows = g.to_tensor14()
    stats = {"static_mean": torch.full((14,), 1.0), "static_std": torch.full((14,), 2.0)}
    pipe = VideoTo4DPipeline.from_release(assets["release"])  # data.normalize_positions: true
    assert pipe.normalize_positions and pipe.num_static_gaussians == 64
    pipe.stats = {**pipe.stats, **stats}
    static, positions = pipe.static_condition(g)
    assert static.shape == (64, 14) and positions.shape == (16, 3)
    # every static row is a normalised canonical row, every position a normalised canonical centre
    assert nearest(static * 2.0 + 1.0, rows) < 1e-5
    assert nearest(positions * 2.0 + 1.0, rows[:, :3]) < 1e-5
    assert nearest(positions, rows[:, :3]) > 0.1
    # a release trained on raw xyz (the official inference convention) gets raw xyz
    raw_pipe = VideoTo4DPipeline.from_release(write_tiny_release(tmp_path / "raw", normalize_positions=False))
    raw_pipe.stats = {**raw_pipe.stats, **stats}
    assert not raw_pipe.normalize_positions
    assert nearest(raw_pipe.static_condition(g)[1], rows[:, :3]) < 1e-6


def test_pipeline_end_to_end_adaptive(assets):
    pipe = VideoTo4DPipeline.from_release(assets["release"])
    result = pipe(assets["video"], assets["canonical"], num_frames=3, stride=2, solver="adaptive", align_step_deg=90.0,
                  align_resolution=32, progress=False)
    assert result.video.indices == [0, 2, 4]
    assert result.variations.shape == (3, 150, 14) and torch.isfinite(result.variations).all()
    assert result.variations.abs().max() > 0 and result.nfe >= 2
    assert not torch.equal(result.variations[0], result.variations[2])  # the motion differs per frame
    assert result.latents.shape == (3, 16, 4)
    g1 = result.frame(1)
    torch.testing.assert_close(g1.xyz, result.canonical.xyz + result.variations[1, :, :3])


@pytest.mark.cuda
def test_pipeline_cuda_matches_cpu(assets, tmp_path):
    """On the GPU (gsplat when installed, fp16 autocast) the pipeline agrees with the CPU run."""
    from gvf.export import export_result

    kw = dict(num_frames=3, solver="multistep", steps=4, align_step_deg=10.0, align_resolution=128, progress=False)
    cpu = VideoTo4DPipeline.from_release(assets["release"])(assets["video"], assets["canonical"], **kw)
    gpu_pipe = VideoTo4DPipeline.from_release(assets["release"], device="cuda")
    gpu = gpu_pipe(assets["video"], assets["canonical"], **kw)
    half = gpu_pipe(assets["video"], assets["canonical"], dtype="fp16", **kw)
    assert gpu.azimuth_deg == cpu.azimuth_deg and gpu.scale_factor == pytest.approx(cpu.scale_factor, rel=0.02)
    torch.testing.assert_close(gpu.variations, cpu.variations, atol=1e-4, rtol=1e-3)
    torch.testing.assert_close(half.variations, cpu.variations, atol=5e-3, rtol=5e-2)
    paths = export_result(half, tmp_path / "out", resolution=64, orbit_views=8, device="cuda", progress=False)
    assert all(p.is_file() for p in paths)


# ------------------------------------------------------------------------------------------ CLI


def test_cli_writes_every_output(assets, cli, tmp_path, capsys):
    out = tmp_path / "run"
    rc = cli(["--video", str(assets["video"]), "--canonical", str(assets["canonical"]), "--pretrained", str(assets["release"]),
              "--output", str(out), *FAST])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    for name in planned_outputs(T_FRAMES, videos=True):
        assert (out / name).is_file(), name
        assert name in captured.out  # the summary lists every file
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary leftovers
    seq = load_4d(out / FOUR_D_FILE)
    assert seq.num_frames == T_FRAMES and seq.metadata["num_frames"] == T_FRAMES
    assert seq.metadata["fps"] == pytest.approx(12.0) and seq.metadata["frame_indices"] == list(range(T_FRAMES))
    frame2 = load_ply(out / "ply" / "frame_002.ply")
    torch.testing.assert_close(frame2.xyz, seq.frame(2).xyz)
    torch.testing.assert_close(load_ply(out / "canonical.ply").rotation_raw, seq.canonical.rotation_raw)
    assert count_frames(out / INPUT_VIEW_VIDEO) == T_FRAMES
    assert count_frames(out / ORBIT_VIDEO) == T_FRAMES + 8  # input view, then the spiral

    # a second run into the same directory refuses to overwrite ...
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    rc = cli(["--video", str(assets["video"]), "--canonical", str(assets["canonical"]), "--pretrained", str(assets["release"]),
              "--output", str(out), *FAST])
    err = capsys.readouterr().err
    assert rc == 2 and "--overwrite" in err
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before
    # ... unless asked to, and then no stale frame is left behind
    rc = cli(["--video", str(assets["video"]), "--canonical", str(assets["canonical"]), "--pretrained", str(assets["release"]),
              "--output", str(out), *FAST, "--num-frames", "2", "--no-video", "--overwrite"])
    assert rc == 0
    assert sorted(p.name for p in (out / "ply").iterdir()) == ["frame_000.ply", "frame_001.ply"]
    assert load_4d(out / FOUR_D_FILE).num_frames == 2


def _zero_frame_video(tmp_path, assets):
    import imageio_ffmpeg

    path = tmp_path / "zero.mp4"
    cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-loglevel", "error", "-i", str(assets["video"]), "-frames:v", "0", str(path)]
    subprocess.run(cmd, check=True)
    return path


@pytest.mark.parametrize("case", ["missing_video", "unreadable_video", "zero_frame_video", "empty_folder", "mesh_ply",
                                  "missing_canonical", "incomplete_release", "too_few_frames"])
def test_cli_bad_input(assets, cli, tmp_path, capsys, case):
    video, canonical, release = assets["video"], assets["canonical"], assets["release"]
    expect = {
        "missing_video": "video not found", "unreadable_video": "cannot read video", "zero_frame_video": "zero frames|no frames",
        "empty_folder": "contains no frames", "mesh_ply": "not a 3D Gaussian PLY", "missing_canonical": "canonical PLY not found",
        "incomplete_release": "missing", "too_few_frames": "has 6 frames",
    }[case]  # fmt: skip
    extra = []
    if case == "missing_video":
        video = tmp_path / "absent.mp4"
    elif case == "unreadable_video":
        video = tmp_path / "broken.mp4"
        video.write_bytes(b"\x00not a video\x00" * 50)
    elif case == "zero_frame_video":
        video = _zero_frame_video(tmp_path, assets)
    elif case == "empty_folder":
        video = tmp_path / "frames"
        video.mkdir()
    elif case == "mesh_ply":
        canonical = tmp_path / "mesh.ply"
        canonical.write_text("ply\nformat ascii 1.0\nelement vertex 3\nproperty float x\nproperty float y\nproperty float z\n"
                             "element face 1\nproperty list uchar int vertex_indices\nend_header\n0 0 0\n1 0 0\n0 1 0\n3 0 1 2\n")
    elif case == "missing_canonical":
        canonical = tmp_path / "absent.ply"
    elif case == "incomplete_release":
        release = tmp_path / "release"
        release.mkdir()
        (release / "config.yaml").write_text((assets["release"] / "config.yaml").read_text())
    elif case == "too_few_frames":
        extra = ["--num-frames", "7"]
    out = tmp_path / "out"
    rc = cli(["--video", str(video), "--canonical", str(canonical), "--pretrained", str(release), "--output", str(out), *FAST, *extra])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert len(err) == 1 and err[0].startswith("error: ") and re.search(expect, err[0]), err
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


# ------------------------------------------------------------------------------------------ 4D file


def test_4d_file_round_trip(tmp_path):
    g = asymmetric_gaussians(30)
    var = torch.randn(5, 30, 14) * 0.01
    path = save_4d(tmp_path / "seq.safetensors", g, var, {"fps": 24.0, "source": "clip.mp4"})
    seq = load_4d(path)
    for name in ("xyz", "features_dc", "opacity_raw", "scaling_raw", "rotation_raw"):
        assert torch.equal(getattr(seq.canonical, name), getattr(g, name))
    assert torch.equal(seq.variations, var)
    assert seq.metadata["fps"] == 24.0 and seq.metadata["num_gaussians"] == 30 and seq.metadata["format"] == "gvf-4d"
    assert seq.metadata["variation_channels"][13] == "d_opacity_raw" and seq.metadata["canonical_channels"][6] == "opacity"
    torch.testing.assert_close(seq.frame(3).opacity, g.with_variation(var[3]).opacity)
    save_file({"x": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match="not a gvf 4D file"):
        load_4d(tmp_path / "other.safetensors")
    with pytest.raises(ValueError, match=r"shape \(T, 30, 14\)"):
        save_4d(tmp_path / "bad.safetensors", g, torch.zeros(2, 29, 14))


def test_spiral_schedule_is_upstream_order():
    # upstream: 4 segments of 32 frames; frame k of segment s shows time k from view 32·s + k of 128
    times, azimuths = spiral_schedule(32, 128)
    expected = [(k, (32 * s + k) * 360 / 128) for s in range(4) for k in range(32)]
    assert list(zip(times, azimuths)) == expected


# ----------------------------------------------------------------------------------------- evaluate


def test_evaluate_script_smoke(assets, tmp_path):
    spec = importlib.util.spec_from_file_location("evaluate", ROOT / "scripts" / "evaluate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "eval.json"
    # canonical Gaussians from the release's static VAE (the default)
    rc = module.main(["--pretrained", str(assets["release"]), "--num-objects", "1", "--num-frames", "2", "--novel-views", "1",
                      "--resolution", "24", "--input-size", "64", "--feature-views", "2", "--solver", "multistep", "--steps", "2",
                      "--no-lpips", "--output", str(out), "--no-progress", "--device", "cpu"])
    assert rc == 0
    report = json.loads(out.read_text())
    obj = report["objects"][0]
    assert obj["seed"] == 100000
    for method in ("pipeline", "vae_recon", "static"):
        for group in ("input_view", "novel_views"):
            vals = report["summary"][method][group]
            assert 0 < vals["psnr"] < 60 and -1 <= vals["ssim"] <= 1
