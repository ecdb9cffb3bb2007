"""Procedural animated objects: determinism, variety, normalisation, motion and motion semantics."""
import numpy as np
import pytest

from gvf.data.animation import mean_displacement
from gvf.data.synthetic import list_archetypes, list_motion_kinds, make_procedural_object, procedural_spec

SEEDS = range(30)


@pytest.fixture(scope="module")
def objects():
    return {s: make_procedural_object(s) for s in SEEDS}


def _kinds(mesh):
    return mesh.name.split("_")[-1].split("+")


def _pair_distance_change(mesh, n=300, seed=0):
    """Largest change over frames of the distance between random vertex pairs (0 for rigid motion)."""
    rng = np.random.default_rng(seed)
    a, b = rng.integers(0, mesh.num_vertices, (2, n))
    d = np.linalg.norm(mesh.vertices[:, a] - mesh.vertices[:, b], axis=-1)
    return float(np.abs(d - d[:1]).max())


def test_deterministic_per_seed_and_different_across_seeds(objects):
    again = make_procedural_object(3)
    ref = objects[3]
    np.testing.assert_array_equal(again.vertices, ref.vertices)
    np.testing.assert_array_equal(again.faces, ref.faces)
    np.testing.assert_array_equal(again.vertex_colors, ref.vertex_colors)
    assert len(again.textures) == len(ref.textures)
    for x, y in zip(again.textures, ref.textures):
        np.testing.assert_array_equal(x, y)
    assert again.name == ref.name
    shapes = {(m.num_vertices, m.num_faces) for m in objects.values()}
    assert len(shapes) >= 15
    a, b = objects[0], objects[1]
    assert a.vertices.shape != b.vertices.shape or not np.allclose(a.vertices, b.vertices)


def test_normalised_moving_small_and_well_formed(objects):
    for s, m in objects.items():
        assert m.num_frames == 24 and m.faces.shape[0] <= 5000, s
        np.testing.assert_allclose(np.diff(m.times), 1 / 24)
        lo, hi = m.bounds()  # ALL frames inside the unit cube, touching it along the longest axis
        assert lo.min() >= -0.5 - 1e-5 and hi.max() <= 0.5 + 1e-5, s
        assert (hi - lo).max() == pytest.approx(1.0, abs=1e-5)
        np.testing.assert_allclose((lo + hi) / 2, 0, atol=1e-5)
        assert mean_displacement(m) > 0.01, s
        assert m.vertex_colors.min() >= 0 and m.vertex_colors.max() <= 1
        assert np.isfinite(m.vertices).all()
        # no zero-area faces
        tri = m.vertices[0][m.faces]
        area = np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1)
        assert area.min() > 0, s


def test_variety_of_archetypes_kinds_and_colouring(objects):
    kinds = {k for m in objects.values() for k in _kinds(m)}
    assert kinds == set(list_motion_kinds()) == {"bend", "swing", "twist", "squash", "turn"}
    archetypes = {m.name.split("_")[2] for m in objects.values()}
    assert archetypes == set(list_archetypes())
    textured = [m for m in objects.values() if (m.face_texture >= 0).any()]
    plain = [m for m in objects.values() if (m.face_texture < 0).all()]
    assert len(textured) >= 5 and len(plain) >= 5
    for m in textured:
        assert m.uvs is not None and m.uvs.shape == (m.num_vertices, 2)
        for tex in m.textures:
            assert tex.shape == (64, 64, 3) and tex.dtype == np.uint8
            assert len(np.unique(tex.reshape(-1, 3), axis=0)) == 2  # checker / stripes in two colours
    assert all(len(np.unique(m.face_colors().round(3), axis=0)) >= 2 for m in objects.values())
    assert procedural_spec(7)["archetype"] == objects[7].name.split("_")[2]


def test_turn_is_a_rigid_rotation_about_the_vertical():
    m = make_procedural_object(5, archetype="totem", motion_kinds=["turn"])
    assert _kinds(m) == ["turn"]
    assert _pair_distance_change(m) < 1e-4  # rigid
    np.testing.assert_allclose(m.vertices[..., 2], np.broadcast_to(m.vertices[:1, :, 2], m.vertices.shape[:2]),
                               atol=1e-5)  # heights unchanged by a turn about Z
    assert mean_displacement(m) > 0.02


def test_squash_preserves_bbox_volume_and_changes_height():
    m = make_procedural_object(11, archetype="creature", motion_kinds=["squash"])
    ext = np.stack([np.subtract(*m.bounds(t)[::-1]) for t in range(m.num_frames)])  # (T, 3)
    heights = ext[:, 2] / ext[0, 2]
    assert heights.max() - heights.min() > 0.1
    vol = ext.prod(axis=1)
    np.testing.assert_allclose(vol / vol[0], 1.0, atol=1e-4)


def test_twist_of_a_stack_keeps_heights_but_is_not_rigid():
    m = make_procedural_object(4, archetype="totem", motion_kinds=["twist"])
    np.testing.assert_allclose(m.vertices[..., 2], np.broadcast_to(m.vertices[:1, :, 2], m.vertices.shape[:2]),
                               atol=1e-5)
    assert _pair_distance_change(m) > 0.02  # pieces turn by different angles


@pytest.mark.parametrize("archetype,kind", [("worm", "bend"), ("plant", "bend"), ("creature", "swing"),
                                            ("lamp", "swing"), ("plant", "twist")])
def test_articulated_kinds_deform_non_rigidly(archetype, kind):
    m = make_procedural_object(2, archetype=archetype, motion_kinds=[kind])
    assert _pair_distance_change(m) > 0.02
    assert mean_displacement(m) > 0.01


def test_num_frames_and_bad_arguments():
    m = make_procedural_object(9, num_frames=8)
    assert m.num_frames == 8
    np.testing.assert_allclose(m.times, np.arange(8) / 24)
    with pytest.raises(ValueError, match="archetype"):
        make_procedural_object(0, archetype="dragon")
    with pytest.raises(ValueError, match="lamp"):
        make_procedural_object(0, archetype="lamp", motion_kinds=["bend"])
    with pytest.raises(ValueError, match="num_frames"):
        make_procedural_object(0, num_frames=1)
