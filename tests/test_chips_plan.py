"""Chip plan and inputs: UTM zones, the global grid, AOI parsing and config validation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from shapely.geometry import Point, box, mapping
from shapely.ops import unary_union

from eo_jepa.chips.aois import Aoi, load_aois
from eo_jepa.chips.config import AoiConfig, ChipConfig
from eo_jepa.chips.crs import reproject_geometry, utm_epsg
from eo_jepa.chips.grid import plan_locations
from eo_jepa.config import load_config
from eo_jepa.errors import BandMismatchError, ConfigError, DataError

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs" / "chips").glob("*.yaml"))


@pytest.mark.parametrize(
    ("lon", "lat", "epsg"),
    [
        (9.19, 45.46, 32632),
        (-0.12, 51.5, 32630),
        (151.2, -33.9, 32756),
        (-180.0, 0.0, 32601),
        (179.99, -1.0, 32760),
    ],
)
def test_utm_zone(lon, lat, epsg):
    assert utm_epsg(lon, lat) == epsg


def _write_aois(path: Path, features: list[dict]) -> Path:
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    return path


def test_grid_covers_each_aoi_on_a_global_grid():
    poly = box(11.80, 42.02, 11.83, 42.05)
    aois = [
        Aoi("a", poly, "2023-01-01", "2023-12-31", "train", "water"),
        Aoi("b", box(11.82, 42.04, 11.84, 42.06), "2023-01-01", "2023-12-31", "val", None),
    ]
    locs = plan_locations(aois, 64, 10.0)
    ids = [loc.location_id for loc in locs]
    assert len(ids) == len(set(ids))  # overlapping AOIs do not repeat cells
    for aoi in aois:
        mine = [loc for loc in locs if loc.aoi_id == aoi.aoi_id]
        utm = reproject_geometry(aoi.geometry, 4326, 32632)
        cells = unary_union([box(*loc.bounds) for loc in locs])
        assert cells.buffer(1e-6).covers(utm)  # every point of the AOI lies in some chip
        for loc in mine:
            assert loc.epsg == 32632 and loc.x0 % 640 == 0 and loc.y0 % 640 == 0
            assert box(*loc.bounds).intersection(utm).area > 0 and loc.split == aoi.split
            assert loc.transform == (10.0, 0.0, loc.x0, 0.0, -10.0, loc.y0)
            assert (
                reproject_geometry(loc.footprint, 4326, 32632).symmetric_difference(box(*loc.bounds)).area
                < 1.0
            )
    assert plan_locations(aois, 64, 10.0) == locs  # deterministic


def test_point_aoi_uses_its_own_buffer_property(tmp_path):
    feature = {"type": "Feature", "geometry": mapping(Point(11.81, 42.04))}
    path = _write_aois(
        tmp_path / "p.geojson",
        [
            {**feature, "properties": {"aoi_id": "own", "buffer_m": 100}},
            {**feature, "properties": {"aoi_id": "default"}},
        ],
    )
    own, default = load_aois(path, AoiConfig(point_buffer_m=320.0))
    for aoi, side in ((own, 200), (default, 640)):
        minx, miny, maxx, maxy = reproject_geometry(aoi.geometry, 4326, 32632).bounds
        assert maxx - minx == pytest.approx(side, abs=0.5) and maxy - miny == pytest.approx(side, abs=0.5)
    bad = _write_aois(tmp_path / "b.geojson", [{**feature, "properties": {"buffer_m": -5}}])
    with pytest.raises(DataError, match="buffer -5"):
        load_aois(bad, AoiConfig())


def test_point_aois_get_a_square_buffer(tmp_path):
    path = _write_aois(
        tmp_path / "p.geojson",
        [
            {
                "type": "Feature",
                "properties": {"label": "bare", "split": "test", "start": "2022-03-01", "end": "2022-04-01"},
                "geometry": mapping(Point(11.81, 42.04)),
            }
        ],
    )
    (aoi,) = load_aois(path, AoiConfig(point_buffer_m=320.0))
    utm = reproject_geometry(aoi.geometry, 4326, 32632)
    minx, miny, maxx, maxy = utm.bounds
    assert maxx - minx == pytest.approx(640, abs=0.5) and maxy - miny == pytest.approx(640, abs=0.5)
    assert (aoi.aoi_id, aoi.label, aoi.split, aoi.start, aoi.end) == (
        "aoi-0000",
        "bare",
        "test",
        "2022-03-01",
        "2022-04-01",
    )
    locs = plan_locations([aoi], 64, 10.0)
    assert 1 <= len(locs) <= 4


@pytest.mark.parametrize(
    ("props", "geometry", "message"),
    [
        (
            {"split": "training"},
            mapping(box(0, 0, 0.01, 0.01)),
            "split 'training'; use one of train, val, test",
        ),
        (
            {"start": "2023-05-01", "end": "2023-01-01"},
            mapping(box(0, 0, 0.01, 0.01)),
            "ends (2023-01-01) before it starts",
        ),
        ({"start": "May 2023"}, mapping(box(0, 0, 0.01, 0.01)), "is not an ISO date"),
        ({}, {"type": "LineString", "coordinates": [[0, 0], [1, 1]]}, "AOIs must be polygons or points"),
    ],
)
def test_bad_aois_are_one_clear_sentence(tmp_path, props, geometry, message):
    path = _write_aois(
        tmp_path / "a.geojson", [{"type": "Feature", "properties": props, "geometry": geometry}]
    )
    with pytest.raises(DataError) as err:
        load_aois(path)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_aoi_file_problems(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_aois(tmp_path / "none.geojson")
    dup = {"type": "Feature", "properties": {"aoi_id": "x"}, "geometry": mapping(box(0, 0, 0.01, 0.01))}
    with pytest.raises(DataError, match="repeated"):
        load_aois(_write_aois(tmp_path / "d.geojson", [dup, dup]))
    with pytest.raises(DataError, match="holds no features"):
        load_aois(_write_aois(tmp_path / "e.geojson", []))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_configs_load(path):
    cfg = load_config(ChipConfig, path)
    assert cfg.band_names == [b.lower() for b in cfg.band_names] and cfg.collection in (
        "sentinel-2-l2a",
        "naip",
    )


def test_config_errors_name_the_fix():
    with pytest.raises(BandMismatchError, match="Unknown band 'swir3'"):
        load_config(ChipConfig, None, ["bands=[red, swir3]"])
    with pytest.raises(ConfigError, match="choose one of: 'bilinear', 'nearest'"):
        load_config(ChipConfig, None, ["resampling=cubic"])
    with pytest.raises(ConfigError, match="raise max_candidates"):
        load_config(ChipConfig, None, ["dates_per_location=9"])
    with pytest.raises(ConfigError, match=r"Unknown config key 'stac\.colection'"):
        load_config(ChipConfig, None, ["stac.colection=x"])
    cfg = load_config(
        ChipConfig, None, ["bands=[B04, nir08]", "sensor=sentinel-2-l2a", "aoi.start=2021-01-01"]
    )
    assert cfg.band_names == ["red", "nir08"] and cfg.aoi.start == "2021-01-01"  # YAML dates become ISO text
    with pytest.raises(ConfigError, match=r"aoi\.end must be a date"):
        load_config(ChipConfig, None, ["aoi.end=[1]"])
