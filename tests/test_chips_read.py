"""Batched chip reads (``prefetch``) equal chip-by-chip reads; the chip writer's commits; partial format."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import rasterio

from eo_jepa import bands
from eo_jepa.bands import Sensor
from eo_jepa.chips.config import ChipConfig
from eo_jepa.chips.grid import Location
from eo_jepa.chips.read import read_chip
from eo_jepa.chips.sources import ReadError, SourceCache
from eo_jepa.chips.stats import BandHistograms
from eo_jepa.chips.store import ChipWriter, create_arrays, open_arrays
from eo_jepa.chips.windows import prefetch, read_to_grid
from eo_jepa.config import load_config
from eo_jepa.stac import load_static_items

DEMO_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "chips" / "s2_5band_64_demo.yaml"


def _row_of_locations(item, size: int, gsd: float, n: int, *, row: int = 1) -> list[Location]:
    """``n`` horizontally adjacent chip locations on the global grid, wholly inside the item's 10 m raster
    at its east edge, then the next one, which is not (never batched: it must be read alone)."""
    t = item.assets["B04"].transform
    width = item.assets["B04"].shape[1]
    span = size * gsd
    x_first = math.ceil(t[2] / span) * span
    y0 = math.floor(t[5] / span) * span - row * span
    fit = int((t[2] + width * 10.0 - x_first) // span)
    assert fit >= n
    xs = [x_first + (fit - n + k) * span for k in range(n + 1)]  # the last n inside, then one past the edge
    return [
        Location(f"l{k}", "a", "train", None, "", "", item.epsg, float(x), float(y0), gsd, size, None)
        for k, x in enumerate(xs)
    ]


@pytest.mark.parametrize(
    ("size", "gsd", "resampling"),
    [(64, 10.0, "bilinear"), (64, 10.0, "nearest"), (24, 20.0, "bilinear"), (48, 5.0, "bilinear")],
)
def test_prefetched_windows_equal_chip_by_chip_reads(demo_scenes_tiny, size, gsd, resampling):
    """One windowed read of a row of chips, sliced, gives exactly each chip's own windowed read: for
    10 m bands at and off the chip GSD and the upsampled 20 m bands and SCL (GDAL's bilinear kernel takes
    its source pixels beyond the window edge either way); chips not wholly inside are not batched."""
    item = load_static_items(demo_scenes_tiny.items_path)[0]
    locs = _row_of_locations(item, size, gsd, 4)
    cache = SourceCache()
    batched = 0
    for key, alg in (("B04", resampling), ("B11", resampling), ("SCL", "nearest")):
        href = item.assets[key].href
        prefetch(cache, href, [1], alg, locs)
        ds = cache.open(href).dataset
        for loc in locs:
            window = cache.window(href, [1], alg, loc)
            want, covered = read_to_grid(ds, [1], loc, alg)
            if window is None:
                continue
            batched += 1
            assert covered.all() and window.shape == want.shape == (1, size, size)
            assert np.array_equal(window, want), (key, loc.location_id)
        assert cache.window(href, [1], alg, locs[-1]) is None  # past the raster edge: read alone
    assert batched == 3 * 4
    cache.close()
    assert cache.window(item.assets["B04"].href, [1], resampling, locs[0]) is None  # per task only


def test_prefetch_is_speculative(demo_scenes_tiny, tmp_path):
    """A source that cannot be opened leaves nothing behind: no window, and no remembered failure (the
    chip-by-chip read that follows reports it as it always did)."""
    item = load_static_items(demo_scenes_tiny.items_path)[0]
    locs = _row_of_locations(item, 64, 10.0, 3)
    cache = SourceCache()
    missing = str(tmp_path / "missing.tif")
    prefetch(cache, missing, [1], "nearest", locs)
    assert cache.window(missing, [1], "nearest", locs[0]) is None and not cache.failed


def _chip(seed: int, size: int = 16) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 9000, (3, size, size)).astype("uint16"), rng.random((size, size)) > 0.2


def test_commit_runs_after_its_chips_and_not_after_a_failed_write(tmp_path, monkeypatch):
    create_arrays(tmp_path, 6, 3, 16, "uint16")
    writer = ChipWriter(tmp_path)
    seen: list[int] = []

    def then(n_expected: int) -> int:
        pixels, _ = open_arrays(tmp_path)
        seen.append(int(sum(pixels[r].any() for r in range(6))))  # chunks on disk when the journal runs
        return n_expected

    for row in (0, 1):
        writer.write(row, *_chip(row))
    first = writer.commit(lambda: then(2))
    writer.write(2, *_chip(2))
    second = writer.commit(lambda: then(3))
    assert first.result() == 2 and second.result() == 3 and seen == [2, 3]

    def broken(row: int, data: np.ndarray) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(writer._direct["pixels"], "write", broken)
    writer.write(4, *_chip(4))
    failed = writer.commit(lambda: then(99))
    with pytest.raises(OSError, match="disk full"):
        failed.result()
    assert seen == [2, 3]  # the callback (a task's journal entry) never ran
    writer.close()


def test_sparse_partials_round_trip_and_old_list_form(tmp_path):
    rng = np.random.default_rng(1)
    hist = BandHistograms(["a", "b"], "uint16")
    pixels = rng.integers(0, 12000, (5, 2, 8, 8)).astype("uint16")
    valid = rng.random((5, 8, 8)) > 0.3
    for p, v in zip(pixels, valid, strict=True):
        hist.update(p, v)
    sparse = json.loads(json.dumps(hist.to_sparse()))  # travels as JSON
    back = BandHistograms.from_sparse(sparse)
    want = np.stack([np.bincount(pixels[:, c][valid], minlength=65536) for c in range(2)])
    assert np.array_equal(back.counts, want)
    legacy = {  # the [values, counts] list form of partials journalled by earlier versions
        "bands": ["a", "b"],
        "dtype": "uint16",
        "hist": {
            b: [np.flatnonzero(want[i]).tolist(), want[i][want[i] > 0].tolist()] for i, b in enumerate("ab")
        },
    }
    both = BandHistograms.from_sparse(sparse).merge_sparse(legacy)
    assert np.array_equal(both.counts, 2 * want)
    with pytest.raises(ValueError, match="different bands"):
        back.merge_sparse({**legacy, "bands": ["a", "c"]})


def test_a_failed_source_is_not_served_from_its_prefetched_windows(demo_scenes_tiny):
    """Once a chip read of a source failed in a task, later chips of that task get the same error, as
    chip-by-chip reads did, even where a batched window of that source was read before the failure."""
    item = load_static_items(demo_scenes_tiny.items_path)[0]
    locs = _row_of_locations(item, 64, 10.0, 3)
    cache = SourceCache()
    href = item.assets["B04"].href
    prefetch(cache, href, [1], "bilinear", locs)
    assert cache.window(href, [1], "bilinear", locs[0]) is not None
    cache.fail(href, "cannot read B04: boom")
    with pytest.raises(ReadError, match="boom"):
        cache.window(href, [1], "bilinear", locs[1])


def _window(href: str, loc: Location, resampling: str) -> np.ndarray:
    with rasterio.open(href) as ds:
        return read_to_grid(ds, [1], loc, resampling)[0][0]


@dataclasses.dataclass(frozen=True)
class _BitFlagSensor(Sensor):
    """A sensor with rules of its own, as Landsat's would be: bit 3 of the quality mask means cloud
    (QA_PIXEL style, not SCL classes), and every scene's numbers carry an offset of +7."""

    def mask_from(self, values: np.ndarray, classes) -> tuple[np.ndarray, np.ndarray]:
        return values == 0, (values & 0b1000) != 0

    def offset_for(self, item, harmonize: bool = True) -> tuple[int, str]:
        return 7, "a rule of this sensor"


def test_a_new_sensor_is_its_bands_plus_one_class(demo_scenes_tiny, monkeypatch):
    """The chip reader applies the sensor's own mask and offset rules, knowing no sensor by name: a
    subclass of Sensor over the demo's assets gives chips masked and offset by its rules, checked
    against the raw windows and the rules written out here."""
    s2 = bands.SENTINEL2_L2A
    toy = _BitFlagSensor(**{**{f.name: getattr(s2, f.name) for f in dataclasses.fields(Sensor)}, "name": "toy"})
    monkeypatch.setitem(bands.SENSORS, "toy", toy)
    cfg = load_config(ChipConfig, DEMO_CONFIG, ["sensor=toy"])
    differs = 0
    for item in load_static_items(demo_scenes_tiny.items_path):
        for loc in _row_of_locations(item, 64, 10.0, 3)[:3]:
            chip = read_chip(item, loc, cfg, SourceCache())
            scl = _window(item.assets["SCL"].href, loc, "nearest")
            raw = np.stack([_window(item.assets[s2.band(b).sensor_band].href, loc, cfg.resampling) for b in cfg.bands])
            want_valid = (scl != 0) & (scl & 0b1000 == 0) & (raw != 0).all(axis=0)
            assert np.array_equal(chip.valid, want_valid)
            assert np.array_equal(chip.pixels, np.minimum(raw.astype(np.int64) + 7, 65535).astype(np.uint16))
            assert (chip.offset, chip.offset_source) == (7, "a rule of this sensor")
            s2_valid = ~np.isin(scl, cfg.mask_classes) & (raw != 0).all(axis=0)
            differs += not np.array_equal(want_valid, s2_valid)
    assert differs  # the two sensors' rules disagree on some of these chips: the test can tell them apart
