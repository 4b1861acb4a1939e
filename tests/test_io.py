"""Atomic writes: the final name holds either the old content or the complete new one."""

from __future__ import annotations

import pytest

from eo_jepa.utils.io import atomic_path, atomic_write_text


def test_atomic_path_renames_on_success_and_cleans_up_on_error(tmp_path):
    target = tmp_path / "sub" / "out.tif"
    with atomic_path(target, suffix=".tif") as tmp:
        assert tmp.parent == target.parent and tmp != target
        tmp.write_bytes(b"new")
    assert target.read_bytes() == b"new"

    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_bytes(b"half-writ")
        raise RuntimeError("writer died")
    assert target.read_bytes() == b"new"  # old content survives
    assert sorted(p.name for p in target.parent.iterdir()) == ["out.tif"]  # no temp left behind


def test_atomic_write_text_replaces_whole_file(tmp_path):
    target = tmp_path / "a.json"
    atomic_write_text(target, "first")
    atomic_write_text(target, "second")
    assert target.read_text() == "second"
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]
