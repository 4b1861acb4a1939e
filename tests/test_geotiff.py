"""The one GeoTIFF writer: plain GTiff maps (eval) and COGs (demo sources), read back with rasterio."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
from affine import Affine

from eo_jepa.utils.geotiff import cog_blocksize, write_geotiff

TRANSFORM = Affine(10.0, 0.0, 500_000.0, 0.0, -10.0, 4_600_000.0)


@pytest.mark.parametrize(
    ("shape", "blocks"),
    [((3, 8, 9), None), ((2, 40, 300), (16, 256)), ((1, 300, 20), (256, 16)), ((1, 300, 260), (256, 256))],
)
def test_gtiff_round_trips_and_tiles_by_size(tmp_path, shape, blocks):
    rng = np.random.default_rng(0)
    data = rng.standard_normal(shape).astype(np.float32)
    names = [f"pc{i + 1}" for i in range(shape[0])]
    path = write_geotiff(
        tmp_path / "m.tif", data, crs="EPSG:32632", transform=TRANSFORM, nodata=-9999.0, descriptions=names
    )
    with rasterio.open(path) as ds:
        np.testing.assert_array_equal(ds.read(), data)
        assert ds.driver == "GTiff" and ds.compression.name.lower() == "deflate"
        assert ds.crs.to_epsg() == 32632 and ds.transform == TRANSFORM and ds.nodata == -9999.0
        assert list(ds.descriptions) == names
        assert ds.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") != "COG" and not ds.overviews(1)
        if blocks is None:  # under 16 px a side: strips
            assert not ds.profile.get("tiled", False)
        else:
            assert ds.profile["tiled"] and (ds.profile["blockysize"], ds.profile["blockxsize"]) == blocks
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.tif"]  # no temporary file left behind


def test_two_dimensional_array_is_one_band(tmp_path):
    data = np.arange(20 * 30, dtype=np.uint16).reshape(20, 30)
    with rasterio.open(write_geotiff(tmp_path / "b.tif", data, crs="EPSG:4326", transform=TRANSFORM)) as ds:
        assert ds.count == 1 and ds.nodata is None
        np.testing.assert_array_equal(ds.read(1), data)


def test_cog_has_overviews_predictor_and_the_largest_tile_that_leaves_room_for_them(tmp_path):
    rng = np.random.default_rng(1)
    data = rng.integers(1, 5000, (1, 384, 384), dtype=np.uint16)
    path = write_geotiff(
        tmp_path / "c.tif",
        data,
        crs="EPSG:32632",
        transform=TRANSFORM,
        nodata=0,
        cog=True,
        overview_resampling="mode",
    )
    with rasterio.open(path) as ds:
        np.testing.assert_array_equal(ds.read(), data)
        assert ds.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
        assert ds.tags(ns="IMAGE_STRUCTURE").get("PREDICTOR") == "2"
        assert ds.compression.name.lower() == "deflate" and ds.nodata == 0
        assert ds.block_shapes[0] == (256, 256) and ds.overviews(1)
    # Tile sizes: multiples of 16 up to 256, strictly smaller than the raster's shorter side.
    assert [cog_blocksize(n, 1000) for n in (10, 17, 64, 65, 200, 257, 5000)] == [
        16,
        16,
        32,
        64,
        128,
        256,
        256,
    ]
