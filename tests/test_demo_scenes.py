"""Demo scenes: valid COGs, honest STAC items in Planetary Computer's format, physics that the chip
builder relies on (baseline offset, SCL clouds, nodata), labelled AOIs inside one land-cover class."""

from __future__ import annotations

import json
import os
import re

import numpy as np
import pystac
import pytest
import rasterio
import shapely
from pyproj import Transformer
from rasterio.features import geometry_mask
from shapely.geometry import box, shape

from eo_jepa.bands import SENTINEL2_L2A, s2_offset_for_baseline
from eo_jepa.demo.scenes import CLASS_CODES, CLASSES, make_demo_scenes, rewrite_hrefs
from eo_jepa.errors import ConfigError

BAND_KEYS = [b.asset_key("planetary-computer") for b in SENTINEL2_L2A.bands]
PC_ID = re.compile(r"^S2[AB]_MSIL2A_\d{8}T\d{6}_R\d{3}_T\d{2}[A-Z]{3}_\d{8}T\d{6}$")


def _read(href: str) -> np.ndarray:
    with rasterio.open(href) as ds:
        return ds.read()


def _scl(item) -> np.ndarray:
    return _read(item["assets"]["SCL"]["href"])[0]


def _to_20m(a: np.ndarray) -> np.ndarray:
    h, w = a.shape
    return a.reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3))


@pytest.fixture(scope="module")
def scenes(demo_scenes_tiny):
    return demo_scenes_tiny


@pytest.fixture(scope="module")
def items(scenes):
    return scenes.items()


def test_items_are_planetary_computer_sentinel2_items(scenes, items):
    assert len(items) == len(scenes.dates) * len(scenes.tiles) == 4
    for it in items:
        assert PC_ID.match(it["id"]), it["id"]
        item = pystac.Item.from_dict(it)  # parses as a STAC item
        assert item.collection_id == "sentinel-2-l2a"
        p = it["properties"]
        assert p["s2:mgrs_tile"] in it["id"] and p["proj:epsg"] == 32632
        assert p["platform"] in ("Sentinel-2A", "Sentinel-2B") and p["instruments"] == ["msi"]
        assert {*BAND_KEYS, "SCL", "visual"} <= set(it["assets"])
        for key in [*BAND_KEYS, "SCL", "visual"]:
            a = it["assets"][key]
            assert a["type"] == "image/tiff; application=geotiff; profile=cloud-optimized"
            assert os.path.isabs(a["href"]) and os.path.isfile(a["href"])
            assert {"proj:shape", "proj:transform", "proj:bbox", "gsd", "roles"} <= set(a)
        assert it["assets"]["B04"]["eo:bands"][0]["common_name"] == "red"
        # Baseline agrees with the date (04.00 from 25 January 2022).
        newer = p["datetime"] >= "2022-01-25"
        assert (float(p["s2:processing_baseline"]) >= 4.0) == newer
    baselines = {float(it["properties"]["s2:processing_baseline"]) >= 4.0 for it in items}
    assert baselines == {True, False}, "scenes must lie on both sides of baseline 04.00"
    coll = pystac.Collection.from_dict(scenes.collection())
    assert coll.id == "sentinel-2-l2a"
    fc = pystac.ItemCollection.from_file(str(scenes.items_path))
    assert [i.id for i in fc] == [it["id"] for it in items]


def test_assets_are_cogs_matching_their_proj_fields(items):
    tile_origins = {199980, 300000, 399960, 499980, 600000, 699960, 799980}
    for it in items:
        for key, a in it["assets"].items():
            with rasterio.open(a["href"]) as ds:
                assert ds.profile["tiled"], key
                assert ds.overviews(1), f"{key} has no overviews"
                assert ds.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG", key
                assert ds.compression is not None and ds.compression.name.lower() == "deflate"
                assert ds.nodata == 0
                assert ds.dtypes[0] == ("uint8" if key in ("visual", "SCL") else "uint16")  # as on PC
                assert ds.crs.to_epsg() == it["properties"]["proj:epsg"]
                assert list(ds.transform)[:6] == pytest.approx(a["proj:transform"])
                assert [ds.height, ds.width] == a["proj:shape"]
                assert list(ds.bounds) == pytest.approx(a["proj:bbox"])
                assert ds.res[0] == pytest.approx(a["gsd"])
            expected_gsd = (
                20.0 if key == "SCL" else 10.0 if key == "visual" else SENTINEL2_L2A.band(key).gsd_m
            )
            assert a["gsd"] == expected_gsd
        # The raster lies inside its MGRS tile, whose upper-left corner is on the S2 tiling grid.
        minx = it["assets"]["B04"]["proj:bbox"][0]
        assert any(0 <= minx - ox < 109_800 and (minx - ox) % 60 == 0 for ox in tile_origins)
        # Aligned with the chip builder's zone-global chip grid (origins at multiples of 640/1280 m).
        bounds = np.array(it["assets"]["B04"]["proj:bbox"])
        assert np.all(bounds % 1280 == 0)
        # Item geometry (EPSG:4326) is the raster footprint.
        to_utm = Transformer.from_crs(4326, 32632, always_xy=True)
        footprint = shapely.transform(shape(it["geometry"]), to_utm.transform, interleaved=False)
        raster = box(*it["assets"]["B04"]["proj:bbox"])
        assert footprint.symmetric_difference(raster).area / raster.area < 1e-3
        assert it["bbox"] == pytest.approx(list(shape(it["geometry"]).bounds))


def test_baseline_offset_exactly_on_new_baselines(scenes, items):
    """Stored DN = reflectance + 1000 exactly on baseline >= 04.00; harmonised values agree across dates."""
    with rasterio.open(scenes.landcover_paths[scenes.tiles[0]]) as ds:
        lc20 = ds.read(1)[::2, ::2]
    medians = {}
    for it in items:
        baseline = it["properties"]["s2:processing_baseline"]
        offset = -s2_offset_for_baseline(baseline)
        scl = _scl(it)
        valid = scl > 0
        mins = []
        for key in BAND_KEYS:
            band = _read(it["assets"][key]["href"])[0]
            mins.append(band[band > 0].min())
        # Dark water in the SWIR is ~40 DN: below 1000 only when no offset is stored.
        assert (min(mins) > 1000) == (offset == 1000), (it["id"], min(mins))
        b12 = _read(it["assets"]["B12"]["href"])[0].astype(float)
        clear_water = (scl == 6) & (lc20 == CLASS_CODES["water"]) & valid
        assert clear_water.sum() > 100
        medians[it["id"]] = np.median(b12[clear_water]) - offset
    values = np.array(list(medians.values()))
    assert values.max() < 150 and values.min() > 0, medians  # one scale once harmonised


def _harmonized_20m(item, key):
    offset = -s2_offset_for_baseline(item["properties"]["s2:processing_baseline"])
    return _to_20m(_read(item["assets"][key]["href"])[0].astype(float)) - offset


def test_scl_marks_clouds_where_bands_are_bright(items):
    seen_cloud = seen_shadow = False
    reference = min(items, key=lambda it: it["properties"]["eo:cloud_cover"])
    ref_nir, ref_clear = _harmonized_20m(reference, "B08"), np.isin(_scl(reference), (4, 5, 6))
    for it in items:
        scl = _scl(it)
        offset = -s2_offset_for_baseline(it["properties"]["s2:processing_baseline"])
        blue = _to_20m(_read(it["assets"]["B02"]["href"])[0].astype(float)) - offset
        cloud = np.isin(scl, (8, 9))
        clear = np.isin(scl, (4, 5, 6))
        if cloud.sum() > 50:
            seen_cloud = True
            assert np.median(blue[scl == 9]) > 4000
            assert np.median(blue[clear]) < 1500
        # Shadows are darker than the same ground seen clear on the clearest date.
        shadow = (scl == 3) & ref_clear
        if shadow.sum() > 50:
            seen_shadow = True
            ratio = _harmonized_20m(it, "B08")[shadow] / ref_nir[shadow]
            assert np.median(ratio) < 0.7
    assert seen_cloud and seen_shadow


def test_cloud_cover_property_matches_the_scl(items):
    covers = []
    for it in items:
        scl = _scl(it)
        valid = (scl > 0).sum()
        expected = 100.0 * np.isin(scl, (8, 9, 10)).sum() / valid
        assert it["properties"]["eo:cloud_cover"] == pytest.approx(expected, abs=1e-4)
        nodata = 100.0 * (scl == 0).sum() / scl.size
        assert it["properties"]["s2:nodata_pixel_percentage"] == pytest.approx(nodata, abs=1e-4)
        covers.append(expected)
    assert min(covers) < 5 and max(covers) > 50  # one nearly clear date, one mostly cloudy


def test_nodata_strip_agrees_across_bands_and_scl(items):
    with_nodata = [it for it in items if it["properties"]["s2:nodata_pixel_percentage"] > 0]
    assert len(with_nodata) == 1
    for it in items:
        scl0 = _scl(it) == 0
        for key in ("B04", "B11", "B01"):
            band = _read(it["assets"][key]["href"])[0]
            f = band.shape[0] / scl0.shape[0]
            if f >= 1:
                expected = np.kron(scl0, np.ones((int(f), int(f)), bool))
            else:
                k = round(1 / f)
                expected = scl0[::k, ::k]
            np.testing.assert_array_equal(band == 0, expected)


def test_spectra_are_plausible(scenes, items):
    """NDVI high on vegetation, negative on water, low on bare soil/urban (clear pixels, summer date)."""
    summer = [it for it in items if it["properties"]["datetime"][5:7] in ("06", "07", "08")]
    with rasterio.open(scenes.landcover_paths[scenes.tiles[0]]) as ds:
        lc = ds.read(1)
    for it in summer:
        offset = -s2_offset_for_baseline(it["properties"]["s2:processing_baseline"])
        red = _read(it["assets"]["B04"]["href"])[0].astype(float) - offset
        nir = _read(it["assets"]["B08"]["href"])[0].astype(float) - offset
        clear = np.kron(np.isin(_scl(it), (4, 5, 6)), np.ones((2, 2), bool))
        ndvi = (nir - red) / (nir + red + 1e-6)
        med = {c: np.median(ndvi[clear & (lc == CLASS_CODES[c])]) for c in CLASSES}
        assert med["vegetation"] > 0.6 and med["water"] < 0 and med["bare"] < 0.3 and med["urban"] < 0.3
        assert med["vegetation"] > med["urban"]


def test_aois_each_lie_in_one_landcover_class(scenes):
    aois = scenes.aois()["features"]
    to_utm = Transformer.from_crs(4326, 32632, always_xy=True)
    with rasterio.open(scenes.landcover_paths[scenes.tiles[0]]) as ds:
        lc, transform, shp = ds.read(1), ds.transform, ds.shape
    counts = {}
    for f in aois:
        p = f["properties"]
        assert {"aoi_id", "label", "split", "start", "end"} <= set(p)
        geom = shapely.transform(shape(f["geometry"]), to_utm.transform, interleaved=False)
        if f["geometry"]["type"] == "Point":
            geom = geom.buffer(p["buffer_m"])
        inside = ~geometry_mask([geom], out_shape=shp, transform=transform, all_touched=True)
        assert inside.sum() > 0
        assert set(np.unique(lc[inside])) == {CLASS_CODES[p["label"]]}, p["aoi_id"]
        counts.setdefault(p["label"], set()).add(p["split"])
    assert set(counts) == set(CLASSES)
    assert all(splits == {"train", "val", "test"} for splits in counts.values())
    assert sum(f["geometry"]["type"] == "Point" for f in aois) >= 2
    assert len({f["properties"]["aoi_id"] for f in aois}) == len(aois)


def test_deterministic_idempotent_and_seeded(tmp_path, scenes):
    again = make_demo_scenes(scenes.root, seed=0, size="tiny")
    assert again.items_path == scenes.items_path
    mtime = os.stat(scenes.items_path).st_mtime_ns
    make_demo_scenes(scenes.root, seed=0, size="tiny")
    assert os.stat(scenes.items_path).st_mtime_ns == mtime  # complete output is reused, not rewritten

    other = make_demo_scenes(tmp_path / "copy", seed=0, size="tiny", n_dates=2)
    ids = [it["id"] for it in other.items()]
    assert set(ids) < {it["id"] for it in scenes.items()}
    for it in other.items():
        src = next(i for i in scenes.items() if i["id"] == it["id"])
        for key in ("B04", "SCL", "B09"):
            np.testing.assert_array_equal(_read(it["assets"][key]["href"]), _read(src["assets"][key]["href"]))
    other_seed = make_demo_scenes(tmp_path / "seed1", seed=1, size="tiny", n_dates=2)
    a = _read(other_seed.items()[0]["assets"]["B04"]["href"])
    b = _read(other.items()[0]["assets"]["B04"]["href"])
    assert not np.array_equal(a, b)


def test_interrupted_output_is_regenerated(tmp_path):
    out = make_demo_scenes(tmp_path / "d", size="tiny", n_dates=2)
    victim = out.items()[0]["assets"]["B04"]["href"]
    os.truncate(victim, 100)  # a damaged file: the manifest no longer matches
    again = make_demo_scenes(tmp_path / "d", size="tiny", n_dates=2)
    with rasterio.open(again.items()[0]["assets"]["B04"]["href"]) as ds:
        assert ds.read(1).shape == (384, 384)


def test_rewrite_hrefs_and_static_catalog(scenes, items):
    rewritten = rewrite_hrefs(items, scenes.cog_dir, "http://127.0.0.1:9999/")
    for old, new in zip(items, rewritten, strict=True):
        rel = os.path.relpath(old["assets"]["B04"]["href"], scenes.cog_dir)
        assert new["assets"]["B04"]["href"] == f"http://127.0.0.1:9999/{rel}"
    assert items[0]["assets"]["B04"]["href"].startswith("/")  # originals untouched
    cat = pystac.Catalog.from_file(str(scenes.catalog_path))
    found = sorted(i.id for i in cat.get_items(recursive=True))
    assert found == sorted(it["id"] for it in items)
    written = scenes.write_items(scenes.root / "items_http.json", "http://127.0.0.1:9999")
    assert json.loads(written.read_text())["features"][0]["assets"]["B04"]["href"].startswith("http://")


def test_bad_parameters_raise_clear_errors(tmp_path):
    with pytest.raises(ConfigError, match="Unknown demo size 'huge'; choose one of: tiny, small"):
        make_demo_scenes(tmp_path, size="huge")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="n_dates=1 is out of range"):
        make_demo_scenes(tmp_path, n_dates=1)


def test_naip_like_tiles(tmp_path):
    from eo_jepa.demo.naip import NAIP_EPSG, make_naip_scenes

    naip = make_naip_scenes(tmp_path / "naip", cells=3, years=(2020, 2022))
    items = naip.items()
    assert [it["properties"]["naip:year"] for it in items] == ["2020", "2022"]
    with rasterio.open(naip.landcover_path) as ds:
        lc, lc_transform, lc_shape = ds.read(1), ds.transform, ds.shape
    for it in items:
        pystac.Item.from_dict(it)
        a = it["assets"]["image"]
        assert [b["common_name"] for b in a["eo:bands"]] == ["red", "green", "blue", "nir"]
        with rasterio.open(a["href"]) as ds:
            assert ds.count == 4 and ds.dtypes[0] == "uint8" and ds.crs.to_epsg() == NAIP_EPSG
            assert ds.res == (0.6, 0.6) and ds.overviews(1)
            assert ds.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
            assert list(ds.transform)[:6] == pytest.approx(a["proj:transform"])
            assert [ds.height, ds.width] == a["proj:shape"] == [672, 672]
            img = ds.read().astype(float)
        ndvi = (img[3] - img[0]) / (img[3] + img[0] + 1e-6)
        assert np.median(ndvi[lc == CLASS_CODES["vegetation"]]) > 0.4
        assert np.median(ndvi[lc == CLASS_CODES["water"]]) < 0
    to_utm = Transformer.from_crs(4326, NAIP_EPSG, always_xy=True)
    for f in json.loads(naip.aois_path.read_text())["features"]:
        geom = shapely.transform(shape(f["geometry"]), to_utm.transform, interleaved=False)
        inside = ~geometry_mask([geom], out_shape=lc_shape, transform=lc_transform, all_touched=True)
        assert set(np.unique(lc[inside])) == {CLASS_CODES[f["properties"]["label"]]}


def test_demo_modules_import_no_private_names():
    """Each demo module uses the others through their public names (the NAIP tiles once reached into
    the Sentinel-2 scenes' private helpers)."""
    import ast
    from pathlib import Path

    import eo_jepa.demo

    found = []
    for path in sorted(Path(eo_jepa.demo.__file__).parent.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("eo_jepa"):
                names = [a.name for a in node.names if a.name.startswith("_") and not a.name.startswith("__")]
                found += [f"{path.name}: {node.module}.{name}" for name in names]
    assert found == []
