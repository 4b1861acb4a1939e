"""The band catalogue: provider asset keys, aliases, Sentinel-2 offsets."""

from __future__ import annotations

import pytest

from eo_jepa.bands import (
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
