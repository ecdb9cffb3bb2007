import math

import numpy as np
import pytest
import torch

from gvf.render import cameras as C


def _kiui_upstream_w2c(elev_kiui_deg, azim_deg, radius=2.0):
    """Independent numpy transcription of the upstream recipe: kiui orbit_camera(opengl=True) in a
    Y-up frame -> convert_mat -> flip columns 1, 2 -> inverse."""
    e, a = np.deg2rad(elev_kiui_deg), np.deg2rad(azim_deg)
    campos = np.array([radius * np.cos(e) * np.sin(a), -radius * np.sin(e), radius * np.cos(e) * np.cos(a)])
    fwd = campos / np.linalg.norm(campos)
    right = np.cross([0.0, 1.0, 0.0], fwd)
    right /= np.linalg.norm(right)
    up = np.cross(fwd, right)
    up /= np.linalg.norm(up)
    c2w = np.eye(4)
    c2w[:3, :3] = np.stack([right, up, fwd], axis=1)
    c2w[:3, 3] = campos
    convert = np.array([[1, 0, 0, 0], [0, 0, -1, 0], [0, 1, 0, 0], [0, 0, 0, 1]], dtype=np.float64)
    c2w = convert @ c2w
    c2w[:3, 1:3] *= -1
    return np.linalg.inv(c2w)


def test_focal_of_default_fov():
    fx = C.fov_to_focal(math.radians(49.1))
    assert fx == pytest.approx(1.094617, abs=1e-6)
    K = C.intrinsics_from_fov(math.radians(49.1))
    assert K.dtype == torch.float32 and K.shape == (3, 3)
    np.testing.assert_allclose(K.numpy(), [[1.094617, 0, 0.5], [0, 1.094617, 0.5], [0, 0, 1]], atol=1e-6)
    fx_, fy_ = C.fov_from_intrinsics(K)
    assert float(fx_) == pytest.approx(math.radians(49.1), abs=1e-6)
    assert C.focal_to_fov(fx) == pytest.approx(math.radians(49.1), abs=1e-12)


def test_intrinsics_batched_and_pixel():
    K = C.intrinsics_from_fov(torch.tensor([0.5, 1.0]), torch.tensor([0.7, 1.2]))
    assert K.shape == (2, 3, 3)
    assert float(K[1, 1, 1]) == pytest.approx(0.5 / math.tan(0.6), rel=1e-6)
    P = C.pixel_intrinsics(K, 640, 480)
    assert float(P[0, 0, 0]) == pytest.approx(640 * 0.5 / math.tan(0.25), rel=1e-6)
    assert float(P[0, 1, 1]) == pytest.approx(480 * 0.5 / math.tan(0.35), rel=1e-6)
    assert float(P[0, 0, 2]) == 320 and float(P[0, 1, 2]) == 240 and float(P[0, 2, 2]) == 1


def test_front_camera():
    w2c = C.orbit_extrinsics(0.0)
    assert w2c.shape == (1, 4, 4) and w2c.dtype == torch.float32
    np.testing.assert_allclose(C.camera_center(w2c)[0].numpy(), [0, -2, 0], atol=1e-6)
    R = w2c[0, :3, :3].numpy()
    np.testing.assert_allclose(R[2], [0, 1, 0], atol=1e-6)  # looks along +Y
    np.testing.assert_allclose(R[0], [1, 0, 0], atol=1e-6)  # image right = +X
    np.testing.assert_allclose(R[1], [0, 0, -1], atol=1e-6)  # image down = -Z (up is +Z)


def test_azimuth_90_and_counter_clockwise():
    centers = C.camera_center(C.orbit_extrinsics([0.0, 45.0, 90.0, 180.0]))
    np.testing.assert_allclose(centers[2].numpy(), [2, 0, 0], atol=1e-6)
    np.testing.assert_allclose(centers[3].numpy(), [0, 2, 0], atol=1e-6)
    s = math.sqrt(2)
    np.testing.assert_allclose(centers[1].numpy(), [s, -s, 0], atol=1e-6)


def test_positive_elevation_is_above():
    w2c = C.orbit_extrinsics(30.0, elevation_deg=30.0)
    c = C.camera_center(w2c)[0]
    assert float(c[2]) == pytest.approx(2 * math.sin(math.radians(30)), abs=1e-6)
    # still looking at the origin
    uv, depth = C.project_points(torch.zeros(1, 3), w2c[0], C.intrinsics_from_fov(1.0))
    np.testing.assert_allclose(uv.numpy(), [[0.5, 0.5]], atol=1e-6)
    assert float(depth[0]) == pytest.approx(2.0, abs=1e-6)


@pytest.mark.parametrize("azim, elev", [(0.0, 0.0), (37.0, 0.0), (-123.0, 20.0), (200.0, -45.0), (2.8125, 10.0)])
def test_matches_upstream_construction(azim, elev):
    ref = _kiui_upstream_w2c(-elev, azim)  # kiui's elevation sign is opposite
    ours = C.orbit_extrinsics(azim, elev, dtype=torch.float64)[0].numpy()
    np.testing.assert_allclose(ours, ref, atol=1e-12)


def test_projection_orientation():
    ext, K = C.orbit_cameras(4)
    assert ext.shape == (4, 4, 4) and K.shape == (4, 3, 3)
    pts = torch.tensor([[0.0, 0.0, 0.0], [0.3, 0.0, 0.0], [0.0, 0.0, 0.3]])
    uv, depth = C.project_points(pts, ext[0], K[0])
    np.testing.assert_allclose(uv[0].numpy(), [0.5, 0.5], atol=1e-6)
    assert float(uv[1, 0]) > 0.5 and float(uv[1, 1]) == pytest.approx(0.5, abs=1e-6)  # +X on the right
    assert float(uv[2, 1]) < 0.5  # +Z is up in the image
    # closed form: u = 0.5 + fx * x / depth
    assert float(uv[1, 0]) == pytest.approx(0.5 + 1.094617 * 0.3 / 2.0, abs=1e-5)
    np.testing.assert_allclose(depth.numpy(), [2, 2, 2], atol=1e-6)
    # batched projection over views
    uvb, db = C.project_points(pts.expand(4, 3, 3), ext, K)
    assert uvb.shape == (4, 3, 2) and db.shape == (4, 3)
    np.testing.assert_allclose(uvb[:, 0].numpy(), np.full((4, 2), 0.5), atol=1e-6)
    # azimuths 0, 90, 180, 270
    np.testing.assert_allclose(C.camera_center(ext).numpy(), [[0, -2, 0], [2, 0, 0], [0, 2, 0], [-2, 0, 0]], atol=1e-6)


def test_c2w_round_trip_and_blender_convention():
    # A Blender camera at (0, -2, 0) looking +Y: OpenGL axes right=+X, up=+Z, back=-Y.
    c2w = torch.tensor([[1.0, 0, 0, 0], [0, 0, -1, -2], [0, 1, 0, 0], [0, 0, 0, 1]], dtype=torch.float64)
    w2c = C.opengl_c2w_to_extrinsics(c2w)
    np.testing.assert_allclose(w2c.numpy(), C.orbit_extrinsics(0.0, dtype=torch.float64)[0].numpy(), atol=1e-12)
    np.testing.assert_allclose(C.extrinsics_to_opengl_c2w(w2c).numpy(), c2w.numpy(), atol=1e-12)
    rand = C.orbit_extrinsics(torch.rand(5) * 360, torch.rand(5) * 80 - 40, dtype=torch.float64)
    back = C.opengl_c2w_to_extrinsics(C.extrinsics_to_opengl_c2w(rand))
    np.testing.assert_allclose(back.numpy(), rand.numpy(), atol=1e-12)


def test_look_at_general_target():
    w2c = C.look_at_extrinsics(torch.tensor([1.0, 2.0, 3.0]), target=(0.5, -0.5, 0.0))
    uv, depth = C.project_points(torch.tensor([[0.5, -0.5, 0.0]]), w2c, C.intrinsics_from_fov(0.8))
    np.testing.assert_allclose(uv.numpy(), [[0.5, 0.5]], atol=1e-6)
    assert float(depth[0]) == pytest.approx(math.sqrt(0.25 + 6.25 + 9), rel=1e-6)
    R = w2c[:3, :3]
    np.testing.assert_allclose((R @ R.T).numpy(), np.eye(3), atol=1e-6)
    assert float(torch.det(R)) == pytest.approx(1.0, abs=1e-6)
    # looking straight down stays well defined
    top = C.look_at_extrinsics(torch.tensor([0.0, 0.0, 2.0]))
    assert torch.isfinite(top).all()


def test_bad_inputs():
    with pytest.raises(ValueError, match="intrinsics"):
        C.fov_from_intrinsics(torch.zeros(4, 4))
    with pytest.raises(ValueError, match="elevation"):
        C.orbit_extrinsics(0.0, 90.0)
    with pytest.raises(ValueError, match="num_views"):
        C.orbit_cameras(0)
