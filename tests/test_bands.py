"""The band catalogue: provider asset keys, aliases, Sentinel-2 offsets and SCL mask, sensors without rules."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from eo_jepa.bands import (
    DEFAULT_SCL_MASK,
    EARTH_SEARCH,
    PLANETARY_COMPUTER,
    SENTINEL2_L2A,
    band_info,
    check_bands,
    get_sensor,
    s2_offset_for_baseline,
)
from eo_jepa.errors import BandMismatchError, ConfigError


def test_s2_asset_keys_for_both_providers():
    red = SENTINEL2_L2A.band("red")
    assert red.asset_key(PLANETARY_COMPUTER) == "B04"
    assert red.asset_key(EARTH_SEARCH) == "red"
    assert SENTINEL2_L2A.band("B11").name == "swir16"
    assert SENTINEL2_L2A.band("swir1").name == "swir16"
    assert len(SENTINEL2_L2A.bands) == 12
    gsd = {b.name: b.gsd_m for b in SENTINEL2_L2A.bands}
    assert {n for n, g in gsd.items() if g == 10} == {"blue", "green", "red", "nir"}


def test_resolve_keeps_order_and_rejects_unknown():
    names = [b.name for b in SENTINEL2_L2A.resolve(["B04", "green", "blue", "nir", "swir16"])]
    assert names == ["red", "green", "blue", "nir", "swir16"]
    with pytest.raises(BandMismatchError, match="Did you mean 'swir16'"):
        SENTINEL2_L2A.resolve(["swir61"])
    with pytest.raises(BandMismatchError, match="repeats red"):
        SENTINEL2_L2A.resolve(["red", "B04"])


@pytest.mark.parametrize(
    ("baseline", "offset"),
    [("03.01", 0), ("02.14", 0), ("04.00", -1000), ("05.09", -1000), (None, 0), ("garbage", 0)],
)
def test_processing_baseline_offset(baseline, offset):
    assert s2_offset_for_baseline(baseline) == offset


def test_unknown_sensor_and_band_mismatch():
    with pytest.raises(ConfigError, match="known sensors are"):
        get_sensor("landsat-9")
    with pytest.raises(BandMismatchError, match="expected"):
        check_bands(["red", "green"], ["green", "red"])
    assert band_info("swir22").wavelength_nm > 2000


def test_scl_mask_marks_class_0_as_no_data_and_the_listed_classes_as_cloud():
    """Sentinel2L2A.mask_from against np.isin over every SCL value (a direct, second formulation)."""
    values = np.arange(256, dtype=np.uint8).reshape(16, 16)
    for classes in (DEFAULT_SCL_MASK, [3, 8], [0], [9, 10, 11, 255]):
        nodata, cloud = SENTINEL2_L2A.mask_from(values, classes)
        assert np.array_equal(nodata, values == 0)
        assert np.array_equal(cloud, np.isin(values, [c for c in classes if c != 0]))
    assert SENTINEL2_L2A.mask_key(PLANETARY_COMPUTER) == "SCL" and SENTINEL2_L2A.mask_key(EARTH_SEARCH) == "scl"


def test_a_sensor_without_rules_keeps_its_numbers_and_reads_no_mask():
    naip = get_sensor("naip")
    assert naip.offset_for(SimpleNamespace(baseline="05.09", datetime="2024-06-01T00:00:00Z")) == (0, "none")
    assert naip.mask_key(PLANETARY_COMPUTER) is None and naip.mask_note([3]) is None
    assert naip.harmonization_note(True, []) is None and not naip.multi_resolution
    with pytest.raises(NotImplementedError, match="'naip' has no quality mask"):
        naip.mask_from(np.zeros((2, 2), np.uint8), [3])
    item = SimpleNamespace(id="x", baseline=None, product_uri=None, datetime="2023-03-01T10:00:00Z")
    assert SENTINEL2_L2A.offset_fallback(item) == "no s2:processing_baseline: offset -1000 decided by its acquisition date"
    assert SENTINEL2_L2A.offset_fallback(SimpleNamespace(baseline="04.00")) is None
