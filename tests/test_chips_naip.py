"""A NAIP-like multi-band uint8 asset in another CRS (NAD83 UTM): band indexes by name, WarpedVRT path."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from pyproj import Transformer
from shapely.geometry import Point, Polygon, box, mapping

from eo_jepa.chips import ChipDataset, build_chips
from eo_jepa.chips.config import ChipConfig
from eo_jepa.config import load_config

REPO_CONFIG = "configs/chips/naip_rgbn_224.yaml"



def write_naip_cog(root: Path, data: np.ndarray, x0: float, y0: float, res: float) -> tuple[Path, Polygon]:
    """A 4-band uint8 COG in UTM 10N (EPSG:26910) with its top-left corner at (x0, y0), as NAIP ships
    them, and its footprint in lon/lat."""
    size = data.shape[-1]
    path = root / "m_3712213_ne_10_060_20220101.tif"
    profile = dict(driver="COG", width=size, height=size, count=4, dtype="uint8", crs="EPSG:26910",
                   transform=Affine(res, 0, x0, 0, -res, y0), blocksize=128)  # fmt: skip
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    to_geo = Transformer.from_crs(26910, 4326, always_xy=True).transform
    (lon0, lon1), (lat0, lat1) = zip(to_geo(x0, y0), to_geo(x0 + size * res, y0 - size * res), strict=True)
    return path, box(min(lon0, lon1), min(lat0, lat1), max(lon0, lon1), max(lat0, lat1))


def write_item_and_point_aoi(root: Path, item: dict, footprint: Polygon, properties: dict) -> tuple[Path, Path]:
    """``items.json`` holding ``item`` and ``aois.geojson`` with one point AOI at the footprint's centre."""
    items = root / "items.json"
    items.write_text(json.dumps({"type": "FeatureCollection", "features": [item]}))
    center = footprint.centroid
    aois = root / "aois.geojson"
    feature = {"type": "Feature", "properties": properties, "geometry": mapping(Point(center.x, center.y))}
    aois.write_text(json.dumps({"type": "FeatureCollection", "features": [feature]}))
    return items, aois


@pytest.fixture(scope="module")
def naip(tmp_path_factory):
    root = tmp_path_factory.mktemp("naip")
    x0, y0, res, size = 500_040.0, 4_200_000.0, 0.6, 400
    rng = np.random.default_rng(0)
    # band i holds values around 40 * i so a channel mix-up cannot go unnoticed
    data = np.stack([np.clip(40 * i + rng.normal(0, 3, (size, size)), 1, 255) for i in (1, 2, 3, 4)]).astype(
        np.uint8
    )
    path, footprint = write_naip_cog(root, data, x0, y0, res)
    item = {
        "type": "Feature", "stac_version": "1.0.0", "id": "naip-test", "collection": "naip",
        "geometry": mapping(footprint), "bbox": list(footprint.bounds),
        "properties": {"datetime": "2022-01-01T00:00:00Z", "proj:code": "EPSG:26910", "naip:state": "ca"},
        "assets": {"image": {"href": path.name, "type": "image/tiff; application=geotiff; profile=cloud-optimized",
                             "proj:shape": [size, size], "proj:transform": [res, 0, x0, 0, -res, y0]}},
        "links": [],
    }  # fmt: skip
    items, aois = write_item_and_point_aoi(root, item, footprint, {"aoi_id": "p", "label": "urban"})
    return root, items, aois, data


def test_naip_rgbn_chips(naip, tmp_path):
    _, items, aois, data = naip
    cfg = load_config(
        ChipConfig, REPO_CONFIG, ["chip_size=32", "aoi.point_buffer_m=30", "aoi.start=2021-01-01"]
    )
    report = build_chips(
        aois, cfg, tmp_path / "naip", stac=str(items)
    )  # relative href resolved next to the file
    assert report.ok >= 1 and not report.skipped_items
    ds = ChipDataset(tmp_path / "naip")
    assert ds.sensor == "naip" and ds.bands == ("red", "green", "blue", "nir")
    meta = json.loads((tmp_path / "naip" / "dataset.json").read_text())
    assert meta["dtype"] == "uint8" and meta["gsd_m"] == 0.6
    for i in range(len(ds)):
        sample = ds[i]
        v = sample["valid"]
        means = [float(sample["pixels"][c][v].mean()) for c in range(4)]
        assert means == pytest.approx([40, 80, 120, 160], abs=3)  # R, G, B, N from asset bands 1..4
    stats = json.loads((tmp_path / "naip" / "norm_stats.json").read_text())
    assert stats["bands"]["nir"]["max"] <= 255 and stats["bands"]["red"]["mean"] == pytest.approx(40, abs=2)
    assert "Public domain" in (tmp_path / "naip" / "data_card.md").read_text()
    assert data.shape[0] == 4


@pytest.fixture(scope="module")
def naip_off_grid(tmp_path_factory):
    """A NAIP-like tile whose pixel lattice is off the UTM chip grid (origin 0.3 m off a 0.6 m step)."""
    root = tmp_path_factory.mktemp("naip_off")
    x0, y0, res, size = 500_040.3, 4_200_000.3, 0.6, 256
    rng = np.random.default_rng(1)
    data = rng.integers(1, 256, (4, size, size), dtype=np.uint8)  # texture: resampling cannot hide
    path, footprint = write_naip_cog(root, data, x0, y0, res)
    item = {
        "type": "Feature", "stac_version": "1.0.0", "id": "naip-off-grid", "collection": "naip",
        "geometry": mapping(footprint), "bbox": list(footprint.bounds),
        "properties": {"datetime": "2022-01-01T00:00:00Z", "proj:epsg": 26910},
        "assets": {"image": {"href": path.name, "proj:shape": [size, size], "proj:transform": [res, 0, x0, 0, -res, y0]}},
        "links": [],
    }  # fmt: skip
    items, aois = write_item_and_point_aoi(root, item, footprint, {"aoi_id": "p"})  # an unlabelled AOI
    return items, aois, data, (x0, y0, res)


def test_snap_to_source_gives_exact_source_pixels_and_the_card_says_so(naip_off_grid, tmp_path):
    items, aois, data, (x0, y0, res) = naip_off_grid
    base = ["chip_size=32", "aoi.point_buffer_m=40", "aoi.start=2021-01-01"]
    snapped = build_chips(
        aois,
        load_config(ChipConfig, REPO_CONFIG, [*base, "grid.snap=source"]),
        tmp_path / "s",
        stac=str(items),
    )
    assert snapped.ok >= 4
    ds = ChipDataset(tmp_path / "s")
    assert set(ds.index["crs"]) == {"EPSG:26910"} and not ds.index["warped"].any()
    for i in range(len(ds)):
        t = ds.index.at[i, "transform"]
        col, row = (t[2] - x0) / res, (y0 - t[5]) / res
        assert col == pytest.approx(round(col), abs=1e-6) and row == pytest.approx(round(row), abs=1e-6)
        want = data[:, round(row) : round(row) + 32, round(col) : round(col) + 32]
        assert np.array_equal(ds[i]["pixels"].astype(np.uint8), want)  # every pixel is a source pixel
    card = (tmp_path / "s" / "data_card.md").read_text()
    assert "no chip was reprojected" in card

    default = build_chips(aois, load_config(ChipConfig, REPO_CONFIG, base), tmp_path / "u", stac=str(items))
    du = ChipDataset(tmp_path / "u")
    assert default.ok >= 1 and du.index["warped"].all()
    assert (
        f"{default.ok} of {default.ok} chips were reprojected/resampled"
        in (tmp_path / "u" / "data_card.md").read_text()
    )
