"""The chip store writer: direct Blosc chunk writes read back through zarr; fallbacks."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

from eo_jepa.chips import store
from eo_jepa.chips.store import ChipWriter, create_arrays, open_arrays


def _chips(n: int, c: int = 4, size: int = 24):
    rng = np.random.default_rng(0)
    return [
        (rng.integers(0, 65535, (c, size, size)).astype("uint16"), rng.random((size, size)) > 0.4)
        for _ in range(n)
    ]


@pytest.mark.parametrize("syncfs", [True, False])
def test_direct_chunks_read_back_through_zarr(tmp_path, monkeypatch, syncfs):
    if not syncfs:  # the per-file fsync fallback (non-Linux)
        monkeypatch.setattr(store, "_syncfs", lambda path: False)
    create_arrays(tmp_path, 6, 4, 24, "uint16")
    chips = _chips(3)
    writer = ChipWriter(tmp_path)
    assert set(writer._direct) == {"pixels", "valid"}
    for row, (p, v) in zip((5, 0, 2), chips, strict=True):
        writer.write(row, p, v)
    writer.close()
    pixels, valid = open_arrays(tmp_path)
    for row, (p, v) in zip((5, 0, 2), chips, strict=True):
        assert np.array_equal(pixels[row], p) and np.array_equal(valid[row], v)
    assert not pixels[1].any() and not valid[3].any()  # untouched rows read as fill
    assert not list(tmp_path.rglob("*.partial"))


def test_other_codecs_fall_back_to_zarr(tmp_path):
    group = zarr.open_group(str(tmp_path / "chips.zarr"), mode="w", zarr_format=3)
    group.create_array("pixels", shape=(2, 4, 24, 24), chunks=(1, 4, 24, 24), dtype="uint16")  # zstd default
    group.create_array("valid", shape=(2, 24, 24), chunks=(1, 24, 24), dtype="bool")
    writer = ChipWriter(tmp_path)
    assert writer._direct == {}
    ((p, v),) = _chips(1)
    writer.write(1, p, v)
    writer.close()
    pixels, valid = open_arrays(tmp_path)
    assert np.array_equal(pixels[1], p) and np.array_equal(valid[1], v)
