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


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_atomic_writes_honour_the_umask(tmp_path, umask):
    """As open() would: 0666 less the umask (mkstemp alone gives 0600 whatever the umask)."""
    import os
    import stat

    from eo_jepa.utils.io import atomic_open

    old = os.umask(umask)
    try:
        atomic_write_text(tmp_path / "a.json", "x")
        with atomic_path(tmp_path / "b.bin") as tmp:
            tmp.write_bytes(b"y")
        with atomic_open(tmp_path / "c.bin") as fh:
            fh.write(b"z")
        with open(tmp_path / "plain", "w") as fh:  # the reference: a plain open()
            fh.write("p")
    finally:
        os.umask(old)
    expected = stat.S_IMODE(os.stat(tmp_path / "plain").st_mode)
    assert expected == 0o666 & ~umask
    for name in ("a.json", "b.bin", "c.bin"):
        assert stat.S_IMODE(os.stat(tmp_path / name).st_mode) == expected, name


def test_disk_full_names_the_file_and_keeps_the_previous_one(tmp_path):
    """A real small filesystem: torch.save, safetensors and plain writes all end in DiskFullError."""
    import torch
    from disk_full import small_disk
    from safetensors.torch import save_file

    from eo_jepa.errors import DiskFullError
    from eo_jepa.utils.io import atomic_open, atomic_write_bytes

    state = {"w": torch.zeros(256 * 1024)}  # 1 MiB
    with small_disk(tmp_path, 512 * 1024) as disk:
        target = disk / "state.pt"
        atomic_write_bytes(target, b"previous complete file")
        with pytest.raises(DiskFullError) as exc, atomic_open(target, size_hint=1 << 20) as fh:
            torch.save(state, fh)  # torch: RuntimeError [enforce fail at inline_container.cc]
        msg = str(exc.value)
        assert msg.startswith(f"Could not write {str(target)!r}: the disk is full (1.0 MiB needed")
        assert "\n" not in msg
        with (
            pytest.raises(DiskFullError, match=r"Could not write .*model\.safetensors.*disk is full"),
            atomic_path(disk / "model.safetensors") as tmp,
        ):
            save_file(state, str(tmp))  # safetensors: SafetensorError
        with pytest.raises(DiskFullError, match=r"Could not write .*big\.bin.*\(1\.0 MiB needed"):
            atomic_write_bytes(disk / "big.bin", bytes(1 << 20))  # plain OSError ENOSPC
        assert target.read_bytes() == b"previous complete file"
        assert sorted(p.name for p in disk.iterdir()) == ["state.pt"]  # no temporary files left
