"""The chip store: direct Blosc chunk writes read back through zarr, direct reads equal zarr's; fallbacks."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

from eo_jepa.chips import store
from eo_jepa.chips.store import ChipWriter, create_arrays, open_arrays, open_chunk_readers
from eo_jepa.errors import DataError


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


def test_direct_reads_equal_zarr_reads_of_chunks_zarr_wrote(tmp_path):
    """The reader decodes chunk files that zarr itself wrote (not only our writer's), and
    rows never written read as the fill value, as through zarr."""
    create_arrays(tmp_path, 5, 4, 24, "uint16")
    chips = _chips(3)
    pixels = zarr.open_array(str(tmp_path / "chips.zarr" / "pixels"), mode="r+")
    valid = zarr.open_array(str(tmp_path / "chips.zarr" / "valid"), mode="r+")
    for row, (p, v) in zip((0, 3, 4), chips, strict=True):
        pixels[row] = p  # zarr's own encoder
        valid[row] = v
    fast_pixels, fast_valid = open_chunk_readers(tmp_path)
    assert fast_pixels.direct and fast_valid.direct  # decoded from the files, not through zarr
    for row in range(5):
        got_p, got_v = fast_pixels[row], fast_valid[row]
        assert got_p.dtype == np.uint16 and got_v.dtype == bool and got_p.shape == (4, 24, 24)
        assert np.array_equal(got_p, pixels[row]) and np.array_equal(got_v, valid[row])
        into = np.full((4, 24, 24), 7, np.uint16)
        assert fast_pixels.read(row, into) is into and np.array_equal(into, pixels[row])
    assert not fast_pixels[1].any() and not fast_valid[2].any()


def test_stores_with_nested_chunk_keys_still_use_the_direct_path(tmp_path):
    """Stores built before the flat ``c.<row>.0.0.0`` keys use zarr's ``c/<row>/0/0/0``: still written
    and read directly, and what is written reads back through zarr."""
    from zarr.codecs import BloscCodec

    codec = BloscCodec(cname="lz4", clevel=5, shuffle="bitshuffle")
    group = zarr.open_group(str(tmp_path / "chips.zarr"), mode="w", zarr_format=3)
    group.create_array(
        "pixels", shape=(3, 4, 24, 24), chunks=(1, 4, 24, 24), dtype="uint16", compressors=codec
    )
    group.create_array("valid", shape=(3, 24, 24), chunks=(1, 24, 24), dtype="bool", compressors=codec)
    writer = ChipWriter(tmp_path)
    assert set(writer._direct) == {"pixels", "valid"}
    ((p, v),) = _chips(1)
    writer.write(2, p, v)
    writer.close()
    assert (tmp_path / "chips.zarr" / "pixels" / "c" / "2" / "0" / "0" / "0").is_file()
    pixels, _valid = open_arrays(tmp_path)
    fast_pixels, fast_valid = open_chunk_readers(tmp_path)
    assert fast_pixels.direct and fast_valid.direct
    assert (
        np.array_equal(pixels[2], p)
        and np.array_equal(fast_pixels[2], p)
        and np.array_equal(fast_valid[2], v)
    )
    assert not fast_pixels[0].any()


@pytest.mark.parametrize(
    "damage",
    [lambda b: b[:40], lambda b: b[:10], lambda b: b"x" * len(b)],
    ids=["truncated", "stub", "garbage"],
)
def test_a_corrupt_chunk_file_is_one_clear_error(tmp_path, damage):
    """Truncated or overwritten chunk files fail with one sentence naming the file. (Blosc frames carry
    no checksum, so a payload zeroed behind an intact header cannot be noticed.)"""
    create_arrays(tmp_path, 2, 4, 24, "uint16")
    writer = ChipWriter(tmp_path)
    for row, (p, v) in enumerate(_chips(2)):
        writer.write(row, p, v)
    writer.close()
    chunk = tmp_path / "chips.zarr" / "pixels" / "c.1.0.0.0"
    chunk.write_bytes(damage(chunk.read_bytes()))  # truncated or overwritten, as by a full disk or a bad copy
    pixels, _ = open_chunk_readers(tmp_path)
    assert pixels[0].shape == (4, 24, 24)  # the other chips still read
    with pytest.raises(DataError, match=r"c\.1\.0\.0\.0 is corrupt .*rebuild the chip store"):
        pixels[1]


def test_new_stores_have_flat_chunk_files(tmp_path):
    create_arrays(tmp_path, 2, 4, 24, "uint16")
    writer = ChipWriter(tmp_path)
    ((p, v),) = _chips(1)
    writer.write(1, p, v)
    writer.close()
    files = sorted(f.name for f in (tmp_path / "chips.zarr" / "pixels").iterdir())
    assert files == ["c.1.0.0.0", "zarr.json"]
    assert not any(f.is_dir() for f in (tmp_path / "chips.zarr" / "valid").iterdir())


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
    fast_pixels, fast_valid = open_chunk_readers(tmp_path)  # zstd: read back through zarr too
    assert not fast_pixels.direct
    assert np.array_equal(fast_pixels[1], p) and np.array_equal(fast_valid[1], v)
