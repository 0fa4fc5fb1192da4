"""The project's one atomic writer (maskformer/utils/file_io.py)."""

import os

import pytest

from maskformer.utils import file_io
from maskformer.utils.file_io import atomic_open, atomic_path, remove_stale_temporaries


def test_atomic_open_replaces_the_file_only_when_complete(tmp_path):
    path = tmp_path / "result.json"
    path.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_open(str(path), "w") as f:
            f.write("half")
            raise RuntimeError("writer died")
    assert path.read_text() == "old"
    assert sorted(os.listdir(tmp_path)) == ["result.json"]  # no temporary left
    with atomic_open(str(path), "w") as f:
        f.write("new")
    assert path.read_text() == "new" and sorted(os.listdir(tmp_path)) == ["result.json"]


def test_atomic_path_keeps_the_suffix_for_writers_that_need_it(tmp_path):
    with atomic_path(str(tmp_path / "drawing.png"), keep_suffix=True) as partial:
        assert partial.endswith(".png") and os.path.basename(partial).startswith(".drawing.png.")
        assert os.path.dirname(partial) == str(
            tmp_path
        )  # same folder: the rename stays on one disk
        with open(partial, "wb") as f:
            f.write(b"png")
    assert (tmp_path / "drawing.png").read_bytes() == b"png"


def test_atomic_open_refuses_modes_that_do_not_write_a_whole_file(tmp_path):
    with pytest.raises(ValueError, match="mode 'a'"):
        with atomic_open(str(tmp_path / "x"), "a"):
            pass


def test_works_where_a_folder_cannot_be_opened(tmp_path, monkeypatch):
    """Windows cannot open a directory: the write must not depend on it."""
    real_open = os.open

    def no_directories(path, flags, *args):
        if os.path.isdir(path):
            raise PermissionError(f"cannot open directory {path}")
        return real_open(path, flags, *args)

    monkeypatch.setattr(file_io.os, "open", no_directories)
    monkeypatch.setattr(file_io.os, "name", "nt")
    with atomic_open(str(tmp_path / "a.txt"), "w") as f:
        f.write("ok")
    assert (tmp_path / "a.txt").read_text() == "ok"


def test_stale_temporaries_of_a_killed_writer_are_removed(tmp_path):
    (tmp_path / "model_final.pth").write_bytes(b"keep")
    (tmp_path / ".model_0000009.pth.1a2b3c4d.tmp").write_bytes(b"partial")
    (tmp_path / ".drawing.png.1a2b3c4d.tmp.png").write_bytes(b"partial")
    removed = remove_stale_temporaries(str(tmp_path))
    assert sorted(os.path.basename(p) for p in removed) == [
        ".drawing.png.1a2b3c4d.tmp.png",
        ".model_0000009.pth.1a2b3c4d.tmp",
    ]
    assert sorted(os.listdir(tmp_path)) == ["model_final.pth"]
