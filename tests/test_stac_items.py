"""Real-shaped Planetary Computer and Earth Search items: baselines, flags, collections, null geometry."""

from __future__ import annotations

import json
import logging

import pytest
from shapely.geometry import box, mapping, shape
from stac_items import earth_search_item, planetary_computer_item

from eo_jepa.bands import SENTINEL2_L2A, parse_baseline, s2_offset_for_baseline
from eo_jepa.chips.aois import Aoi
from eo_jepa.chips.build import make_plan
from eo_jepa.chips.config import ChipConfig
from eo_jepa.config import from_dict
from eo_jepa.errors import StacError
from eo_jepa.stac import parse_item, search_items


@pytest.mark.parametrize(
    ("text", "value", "offset"),
    [
        ("N0212", 2.12, 0),
        ("N0400", 4.0, -1000),
        ("N0509", 5.09, -1000),
        ("0301", 3.01, 0),
        ("05.09", 5.09, -1000),
    ],
)
def test_product_id_baselines_parse_as_versions(text, value, offset):
    assert parse_baseline(text) == pytest.approx(value)
    assert s2_offset_for_baseline(text) == offset


def test_missing_baseline_falls_back_to_product_uri_then_to_the_date():
    item = parse_item(planetary_computer_item(baseline=None))  # product uri says N0509
    assert item.baseline is None
    assert SENTINEL2_L2A.offset_for(item) == (-1000, "s2:product_uri")
    raw = planetary_computer_item(date="20200315", baseline="02.14")
    del raw["properties"]["s2:processing_baseline"]
    assert SENTINEL2_L2A.offset_for(parse_item(raw)) == (0, "s2:product_uri")
    for date, offset in (("20220301", -1000), ("20220124", 0), ("20210601", 0)):
        bare = parse_item(planetary_computer_item(date=date, baseline=None, product_uri=False))
        assert SENTINEL2_L2A.offset_for(bare) == (offset, "acquisition date"), date
    with_property = parse_item(planetary_computer_item(baseline="04.00"))
    assert SENTINEL2_L2A.offset_for(with_property) == (-1000, "s2:processing_baseline")
    assert SENTINEL2_L2A.offset_for(with_property, harmonize=False) == (0, "harmonize=false")


@pytest.mark.parametrize(
    ("flag", "offset"), [(True, 0), ("true", 0), ("True", 0), (False, -1000), ("false", -1000), (None, -1000)]
)
def test_earth_search_offset_flag_strings_are_parsed(flag, offset):
    item = parse_item(earth_search_item(boa_offset_applied=flag))
    assert item.epsg == 32632  # proj:code
    assert SENTINEL2_L2A.offset_for(item)[0] == offset


def test_unparseable_flag_is_one_clear_sentence():
    with pytest.raises(StacError, match=r"earthsearch:boa_offset_applied='maybe'; expected true or false"):
        parse_item(earth_search_item(boa_offset_applied="maybe"))


def _cfg(provider: str, **stac: str) -> ChipConfig:
    return from_dict(
        ChipConfig, {"stac": {"provider": provider, **stac}, "bands": ["red", "blue"], "chip_size": 32}
    )


def test_earth_search_collections_both_accepted_and_drops_counted(tmp_path, caplog):
    items = [
        earth_search_item(collection="sentinel-2-l2a"),
        earth_search_item(collection="sentinel-2-c1-l2a", boa_offset_applied=None),
    ]
    path = tmp_path / "items.json"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": items}))
    es = _cfg("earth-search")
    assert es.collections == ("sentinel-2-l2a", "sentinel-2-c1-l2a")
    aoi = box(11.79, 41.98, 11.80, 41.99)
    found = search_items(
        str(path), collection=es.collections, intersects=mapping(aoi), start="2023-07-01", end="2023-07-31"
    )
    assert sorted(i.collection for i in found) == ["sentinel-2-c1-l2a", "sentinel-2-l2a"]
    c1 = next(i for i in found if i.collection == "sentinel-2-c1-l2a")
    assert SENTINEL2_L2A.offset_for(c1) == (-1000, "s2:processing_baseline")  # collection 1: not applied

    aois = [Aoi("a", aoi, "2023-07-01", "2023-07-31", "train", None)]
    only_legacy = _cfg("earth-search", collection="sentinel-2-l2a")
    with caplog.at_level(logging.WARNING, logger="eo_jepa.chips.build"):
        plan = make_plan(aois, only_legacy, str(path))
    assert plan.items_dropped_by_collection == {"sentinel-2-c1-l2a": 1}
    assert any("1 item(s)" in r.getMessage() and "stac.collection" in r.getMessage() for r in caplog.records)
    with pytest.raises(
        StacError, match=r"2 item\(s\) of other collections were left out \(sentinel-2-c1-l2a, sentinel"
    ):
        make_plan(aois, _cfg("earth-search", collection="x"), str(path))


def test_null_geometry_uses_bbox_or_says_what_to_fix(caplog):
    raw = planetary_computer_item()
    raw["geometry"] = None
    with caplog.at_level(logging.WARNING, logger="eo_jepa.stac"):
        item = parse_item(raw)
    assert shape(item.geometry).bounds == pytest.approx((11.77, 41.97, 11.82, 42.01))
    assert any("geometry null" in r.getMessage() for r in caplog.records)
    del raw["bbox"]
    with pytest.raises(StacError, match=r"has geometry null and no bbox.*give it a footprint"):
        parse_item(raw)
