"""Mesh rasteriser: colours (texture / vertex colours, sRGB), coverage, depth order, perspective, light."""
import math

import numpy as np
import pytest
import torch

from gvf.data.mesh import AnimatedMesh
from gvf.data.render_mesh import MeshLighting, MeshRenderer, linear_to_srgb, render_mesh, srgb_to_linear

UNLIT = MeshLighting(ambient=1.0, diffuse=0.0)
FOV = math.radians(49.1)
F_NORM = 0.5 / math.tan(FOV / 2)


def _srgb2lin(c):
    c = np.asarray(c, dtype=np.float64)
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)


def _lin2srgb(c):
    c = np.clip(np.asarray(c, dtype=np.float64), 0, 1)
    return np.where(c <= 0.0031308, 12.92 * c, 1.055 * c ** (1 / 2.4) - 0.055)


def front_camera(n=1):
    """Camera at (0, -2, 0) looking +Y, image right = +X, image down = -Z (OpenCV w2c)."""
    E = torch.tensor([[1.0, 0, 0, 0], [0, 0, -1, 0], [0, 1, 0, 2], [0, 0, 0, 1]])
    K = torch.tensor([[F_NORM, 0, 0.5], [0, F_NORM, 0.5], [0, 0, 1]])
    return E.expand(n, 4, 4).clone(), K.expand(n, 3, 3).clone()


def back_camera():
    """Camera at (0, 2, 0) looking -Y."""
    E = torch.tensor([[-1.0, 0, 0, 0], [0, 0, -1, 0], [0, -1, 0, 2], [0, 0, 0, 1]])
    K = torch.tensor([[F_NORM, 0, 0.5], [0, F_NORM, 0.5], [0, 0, 1]])
    return E[None], K[None]


def quad(x0, x1, z0, z1, y, color=(1, 1, 1), uvs=False, tex=None):
    """A quad in the plane y = const, corners (x0, z1) top-left ... as two triangles."""
    v = np.array([[x0, y, z1], [x1, y, z1], [x1, y, z0], [x0, y, z0]], dtype=np.float32)
    f = np.array([[0, 1, 2], [0, 2, 3]])
    uv = np.array([[0, 0], [1, 0], [1, 1], [0, 1]], dtype=np.float32) if uvs else None  # glTF: v=0 top
    return AnimatedMesh(vertices=v[None], faces=f, vertex_colors=np.tile(np.float32(color), (4, 1)), uvs=uv,
                        textures=[] if tex is None else [tex], face_texture=np.full(2, 0 if tex is not None else -1),
                        times=np.zeros(1))


def merge(*meshes):
    verts, faces, cols, off = [], [], [], 0
    for m in meshes:
        verts.append(m.vertices)
        faces.append(m.faces + off)
        cols.append(m.vertex_colors)
        off += m.num_vertices
    F = sum(len(f) for f in faces)
    return AnimatedMesh(vertices=np.concatenate(verts, 1), faces=np.concatenate(faces), vertex_colors=np.concatenate(cols),
                        uvs=None, textures=[], face_texture=np.full(F, -1), times=np.zeros(1))


def pixel_of(x, z, y_cam_dist, res):
    """Pixel (col, row) float coordinates of world (x, ., z) at camera depth y_cam_dist (front camera)."""
    return (F_NORM * x / y_cam_dist + 0.5) * res, (F_NORM * -z / y_cam_dist + 0.5) * res


def test_vertex_colour_is_srgb_and_unlit_exact():
    m = quad(-0.3, 0.3, -0.3, 0.3, 0.0, color=(0.8, 0.4, 0.1))
    E, K = front_camera()
    out = render_mesh(m.vertices[0], m, E, K, 32, ssaa=1, lighting=UNLIT)
    rgba = out.rgba[0].numpy()
    assert np.allclose(rgba[16, 16], [0.8, 0.4, 0.1, 1.0], atol=1e-5)
    assert np.all(rgba[0, 0] == 0)  # background: transparent black


def test_texture_orientation_bilinear_and_product_with_vertex_colour():
    # 2x2 texture; glTF uv (0, 0) is the image's top-left texel
    tex = np.array([[[255, 0, 0], [0, 255, 0]], [[0, 0, 255], [255, 255, 0]]], dtype=np.uint8)
    big = np.repeat(np.repeat(tex, 2, 0), 2, 1)  # 4x4: each quadrant one flat colour
    m = quad(-0.4, 0.4, -0.4, 0.4, 0.0, color=(1, 1, 1), uvs=True, tex=big)
    E, K = front_camera()
    res = 64
    out = render_mesh(m.vertices[0], m, E, K, res, ssaa=1, lighting=UNLIT).rgba[0].numpy()
    # around quadrant centres (uv 0.25 / 0.75) bilinear lookups only mix texels of one colour
    for (x, z), texel in [((-0.2, 0.2), tex[0, 0]), ((0.2, 0.2), tex[0, 1]), ((-0.2, -0.2), tex[1, 0]), ((0.2, -0.2), tex[1, 1])]:
        c, r = pixel_of(x, z, 2.0, res)
        assert np.allclose(out[int(r), int(c), :3], texel / 255.0, atol=1e-5), (x, z)
    # texture x vertex colour multiply in linear RGB
    grey = np.full((2, 2, 3), 180, dtype=np.uint8)
    vc = (0.5, 0.9, 0.2)
    m2 = quad(-0.4, 0.4, -0.4, 0.4, 0.0, color=vc, uvs=True, tex=grey)
    px = render_mesh(m2.vertices[0], m2, E, K, res, ssaa=1, lighting=UNLIT).rgba[0, res // 2, res // 2, :3].numpy()
    expect = _lin2srgb(_srgb2lin(180 / 255.0) * _srgb2lin(np.array(vc)))
    assert np.allclose(px, expect, atol=1e-4)


def test_alpha_coverage_matches_projected_area():
    x0, x1, z0, z1 = -0.31, 0.27, -0.22, 0.35
    m = quad(x0, x1, z0, z1, 0.0)
    E, K = front_camera()
    res = 48
    # ssaa=1: exactly the pixels whose centres fall inside the projected rectangle
    alpha = render_mesh(m.vertices[0], m, E, K, res, ssaa=1, lighting=UNLIT).rgba[0, ..., 3].numpy()
    c0, r1 = pixel_of(x0, z0, 2.0, res)
    c1, r0 = pixel_of(x1, z1, 2.0, res)
    centres = np.arange(res) + 0.5
    expect = ((centres[None] >= c0) & (centres[None] <= c1)) & ((centres[:, None] >= r0) & (centres[:, None] <= r1))
    assert np.array_equal(alpha > 0.5, expect)
    assert set(np.unique(alpha)) <= {0.0, 1.0}
    # ssaa=4: total coverage approximates the exact area; edge pixels are fractional
    alpha4 = render_mesh(m.vertices[0], m, E, K, res, ssaa=4, lighting=UNLIT).rgba[0, ..., 3].numpy()
    area = (c1 - c0) * (r1 - r0)
    assert abs(alpha4.sum() - area) < 0.15 * 2 * ((c1 - c0) + (r1 - r0)) / 4 + 1
    assert ((alpha4 > 0) & (alpha4 < 1)).any()


@pytest.mark.parametrize("near_first", [True, False])
def test_depth_order_two_quads(near_first):
    near = quad(-0.3, 0.1, -0.3, 0.1, -0.2, color=(1, 0, 0))  # closer to the front camera (y = -0.2)
    far = quad(-0.1, 0.3, -0.1, 0.3, 0.2, color=(0, 0, 1))
    m = merge(near, far) if near_first else merge(far, near)
    res = 64
    E, K = front_camera()
    out = render_mesh(m.vertices[0], m, E, K, res, ssaa=1, lighting=UNLIT)
    img, depth = out.rgba[0].numpy(), out.depth[0].numpy()
    c, r = pixel_of(0.0, 0.0, 1.8, res)  # inside both quads: the near (red) one wins
    assert np.allclose(img[int(r), int(c), :3], [1, 0, 0], atol=1e-5)
    assert abs(depth[int(r), int(c)] - 1.8) < 1e-4
    c, r = pixel_of(0.25, 0.25, 2.2, res)  # only the far quad
    assert np.allclose(img[int(r), int(c), :3], [0, 0, 1], atol=1e-5)
    assert abs(depth[int(r), int(c)] - 2.2) < 1e-4
    assert np.isinf(depth[0, 0]) and out.face_id[0, 0, 0] == -1
    # from behind, the blue quad is in front
    Eb, Kb = back_camera()
    img_b = render_mesh(m.vertices[0], m, Eb, Kb, res, ssaa=1, lighting=UNLIT).rgba[0].numpy()
    assert np.allclose(img_b[res // 2, res // 2, :3], [0, 0, 1], atol=1e-5)


def test_perspective_correct_depth_on_slanted_plane():
    # plane through y = 0.6 z (tilted away from the camera at the top); the ray through pixel centre
    # (u, v) hits it where y_world = 0.6 z_world; camera depth = 2 + y_world
    v = np.array([[-0.4, -0.24, -0.4], [0.4, -0.24, -0.4], [0.4, 0.24, 0.4], [-0.4, 0.24, 0.4]], dtype=np.float32)
    m = AnimatedMesh(vertices=v[None], faces=np.array([[0, 1, 2], [0, 2, 3]]), vertex_colors=np.ones((4, 3)),
                     uvs=None, textures=[], face_texture=np.full(2, -1), times=np.zeros(1))
    res = 40
    E, K = front_camera()
    out = render_mesh(m.vertices[0], m, E, K, res, ssaa=1, lighting=UNLIT)
    rows, cols = np.nonzero(out.face_id[0].numpy() >= 0)
    # camera ray: x_c = (c + 0.5)/res - 0.5) / f · d, y_c (down) = ((r + 0.5)/res - 0.5)/f · d, z_c = d
    # world: x = x_c, z = -y_c, y = d - 2; plane: d - 2 = 0.6 · (-y_c) => d = 2 / (1 + 0.6 · a), a = ((r+.5)/res-.5)/f
    a = ((rows + 0.5) / res - 0.5) / F_NORM
    expect = 2.0 / (1.0 + 0.6 * a)
    assert np.allclose(out.depth[0].numpy()[rows, cols], expect, atol=2e-5)


def test_lambert_lighting_follows_documented_formula():
    light = MeshLighting(ambient=0.3, diffuse=0.7, direction=(0.0, -1.0, 1.0))
    m = quad(-0.3, 0.3, -0.3, 0.3, 0.0, color=(0.6, 0.6, 0.6))
    E, K = front_camera()
    px = render_mesh(m.vertices[0], m, E, K, 16, ssaa=1, lighting=light).rgba[0, 8, 8, 0].item()
    # quad normal faces the camera (-Y); cos to the light = 1/sqrt(2)
    expect = _lin2srgb(_srgb2lin(0.6) * (0.3 + 0.7 / math.sqrt(2)))
    assert abs(px - expect) < 1e-4


def test_multiple_views_and_chunking_agree():
    rng = np.random.default_rng(0)
    v = rng.uniform(-0.4, 0.4, (60, 3)).astype(np.float32)
    f = rng.integers(0, 60, (80, 3))
    f = f[(f[:, 0] != f[:, 1]) & (f[:, 1] != f[:, 2]) & (f[:, 0] != f[:, 2])]
    m = AnimatedMesh(vertices=v[None], faces=f, vertex_colors=rng.uniform(0, 1, (60, 3)), uvs=None, textures=[],
                     face_texture=np.full(len(f), -1), times=np.zeros(1))
    from gvf.render.cameras import orbit_cameras

    E, K = orbit_cameras(3, elevation_deg=20.0)
    big = MeshRenderer(m).render(v, E, K, 32, ssaa=2)
    small = MeshRenderer(m, max_pairs=97).render(v, E, K, 32, ssaa=2)
    assert torch.equal(big.face_id, small.face_id)
    assert torch.allclose(big.rgba, small.rgba)
    single = MeshRenderer(m).render(v, E[1:2], K[1:2], 32, ssaa=2)
    assert torch.allclose(single.rgba[0], big.rgba[1])


def test_bad_inputs():
    m = quad(-0.3, 0.3, -0.3, 0.3, 0.0)
    E, K = front_camera()
    with pytest.raises(ValueError, match="vertices"):
        render_mesh(np.zeros((3, 3)), m, E, K, 16)
    with pytest.raises(ValueError, match="extrinsics"):
        render_mesh(m.vertices[0], m, E[:, :3], K, 16)


def test_srgb_roundtrip():
    x = torch.linspace(0, 1, 101)
    assert torch.allclose(linear_to_srgb(srgb_to_linear(x)), x, atol=1e-6)
    assert torch.allclose(srgb_to_linear(torch.tensor([0.5])), torch.tensor([0.2140411]), atol=1e-6)


@pytest.mark.cuda
def test_cuda_matches_cpu():
    from gvf.data.synthetic import make_procedural_object
    from gvf.data.views import sequence_views

    m = make_procedural_object(1, num_frames=2)
    E, K = sequence_views(1, 10, seed=0).cameras(0)
    cpu = MeshRenderer(m).render(m.vertices[1], E, K, 96, ssaa=2)
    gpu = MeshRenderer(m, device="cuda").render(m.vertices[1], E.cuda(), K.cuda(), 96, ssaa=2)
    same_face = (cpu.face_id == gpu.face_id.cpu()).float().mean()
    assert same_face > 0.999
    diff = (cpu.rgba - gpu.rgba.cpu()).abs()
    assert (diff > 2 / 255).float().mean() < 1e-3
