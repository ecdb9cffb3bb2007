import pytest

from gvf.utils.io import atomic_write


def test_atomic_write_replaces_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("old")
    seen = []
    assert atomic_write(path, lambda tmp: (seen.append(tmp), tmp.write_text("new"))) == path
    assert path.read_text() == "new"
    assert seen[0].parent == tmp_path and seen[0] != path
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]


def test_atomic_write_failure_keeps_the_old_file(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("old")

    def broken(tmp):
        tmp.write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(path, broken)
    assert path.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]


def test_atomic_write_suffix_for_extension_based_writers(tmp_path):
    np = pytest.importorskip("numpy")
    path = tmp_path / "x.npz"
    atomic_write(path, lambda tmp: np.savez_compressed(tmp, a=np.arange(3)), suffix=".tmp.npz")
    assert np.load(path)["a"].tolist() == [0, 1, 2]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.npz"]
