"""Inputs as users have them: unlabelled AOIs, bow-ties, metres without a CRS, items without a
baseline, overlapping AOIs over other dates, an --out that cannot be written."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from eo_jepa.chips import ChipConfig, ChipDataset, build_chips
from eo_jepa.chips.aois import load_aois
from eo_jepa.chips.card import read_front_matter
from eo_jepa.config import load_config
from eo_jepa.errors import DataError

REPO = Path(__file__).resolve().parents[1]
DEMO_CONFIG = REPO / "configs" / "chips" / "s2_5band_64_demo.yaml"
TINY = REPO / "configs" / "train" / "tiny_cpu.yaml"


def cfg(*overrides: str) -> ChipConfig:
    return load_config(ChipConfig, DEMO_CONFIG, list(overrides))


def _features(path: Path, features: list[dict], **extra) -> Path:
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features, **extra}))
    return path


def _polygon(coords, **props) -> dict:
    return {"type": "Feature", "properties": props, "geometry": {"type": "Polygon", "coordinates": [coords]}}


@pytest.fixture(scope="module")
def unlabelled_store(demo_scenes_tiny, tmp_path_factory) -> Path:
    aois = demo_scenes_tiny.aois()
    for f in aois["features"]:
        f["properties"].pop("label", None)
    root = tmp_path_factory.mktemp("unlabelled")
    path = _features(root / "aois.geojson", aois["features"])
    build_chips(path, cfg(), root / "store", stac=str(demo_scenes_tiny.items_path))
    return root / "store"


def test_unlabelled_aois_give_a_dataset_with_no_labels(unlabelled_store):
    ds = ChipDataset(unlabelled_store, "train")
    assert len(ds) > 0 and set(ds.labels) == {None}
    assert ds[0]["label"] is None


@pytest.mark.timeout(300)
def test_unlabelled_store_trains_embeds_and_eval_says_what_is_missing(unlabelled_store, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "EO_JEPA_NO_PROGRESS": "1"}
    train = subprocess.run(
        [sys.executable, "-m", "eo_jepa", "train", "--config", str(TINY), "--data", str(unlabelled_store),
         f"output_dir={tmp_path}", "name=u", "max_steps=2", "checkpoint.every=2", "log.tensorboard=false", "data.batch_size=4"],
        capture_output=True, text=True, timeout=280, env=env, cwd=tmp_path,
    )  # fmt: skip
    assert train.returncode == 0, train.stderr[-2000:]

    from eo_jepa.eval.baseline import RandomProjectionEncoder
    from eo_jepa.eval.datasets import open_labelled
    from eo_jepa.eval.embed import embed_chips

    bands = tuple(json.loads((unlabelled_store / "dataset.json").read_text())["bands"])
    stats = ChipDataset(unlabelled_store).norm_stats
    enc = RandomProjectionEncoder(bands, img_size=64, norm_stats=stats)
    out = embed_chips(enc, unlabelled_store, tmp_path / "emb.parquet")
    import geopandas as gpd

    emb = gpd.read_parquet(out)
    assert len(emb) == len(ChipDataset(unlabelled_store)) and emb["label"].isna().all()
    with pytest.raises(DataError, match="has no labelled chips"):
        open_labelled(unlabelled_store)


def test_bow_tie_aoi_is_repaired_with_a_warning(caplog, tmp_path):
    bow = [[11.78, 42.0], [11.80, 41.98], [11.80, 42.0], [11.78, 41.98], [11.78, 42.0]]  # self-intersecting
    path = _features(tmp_path / "a.geojson", [_polygon(bow, aoi_id="bow")])
    with caplog.at_level(logging.WARNING, logger="eo_jepa.chips.aois"):
        (aoi,) = load_aois(path)
    assert aoi.geometry.is_valid and aoi.geometry.area == pytest.approx(2 * 0.5 * 0.02 * 0.01, rel=1e-6)
    assert any("'bow'" in r.getMessage() and "make_valid" in r.getMessage() for r in caplog.records)


def test_aoi_in_metres_without_crs_is_one_sentence(tmp_path):
    square = [[700000, 4650000], [702000, 4650000], [702000, 4648000], [700000, 4648000], [700000, 4650000]]
    path = _features(tmp_path / "m.geojson", [_polygon(square, aoi_id="m")])
    with pytest.raises(DataError, match=r"not longitude/latitude degrees \(metres\?\); declare its CRS"):
        load_aois(path)


def test_missing_baseline_is_recovered_and_recorded(demo_scenes_tiny, tmp_path):
    """Items without s2:processing_baseline: two still carry s2:product_uri, two only their date. The
    chips equal those of the complete items, and the index and card say what decided each offset."""
    items = demo_scenes_tiny.items()
    for k, item in enumerate(items):
        del item["properties"]["s2:processing_baseline"]
        if k % 2:
            del item["properties"]["s2:product_uri"]
    path = _features(tmp_path / "items.json", items)
    full = build_chips(
        demo_scenes_tiny.aois_path, cfg(), tmp_path / "full", stac=str(demo_scenes_tiny.items_path)
    )
    bare = build_chips(demo_scenes_tiny.aois_path, cfg(), tmp_path / "bare", stac=str(path))
    assert bare.ok == full.ok
    a, b = ChipDataset(tmp_path / "full"), ChipDataset(tmp_path / "bare")
    assert np.array_equal(a.read_pixels(range(len(a)))[0], b.read_pixels(range(len(b)))[0])
    assert set(b.index["offset_source"]) == {"s2:product_uri", "acquisition date"}
    assert set(a.index["offset_source"]) == {"s2:processing_baseline"}
    card = read_front_matter((tmp_path / "bare" / "data_card.md").read_text())
    shifted = {h["source"]: h["chips"] for h in card["harmonisation"] if h["offset"] == -1000}
    assert sum(shifted.values()) == int((b.index["offset"] == -1000).sum()) > 0
    raw = build_chips(demo_scenes_tiny.aois_path, cfg("harmonize=false"), tmp_path / "raw", stac=str(path))
    text = (tmp_path / "raw" / "data_card.md").read_text()
    assert raw.ok and "subtracted" not in text and "harmonize=false" in text  # never claims an offset


def test_second_aoi_over_the_same_place_with_other_dates_is_warned(demo_scenes_tiny, tmp_path, caplog):
    first = demo_scenes_tiny.aois()["features"][0]
    second = json.loads(json.dumps(first))
    first["properties"].update(aoi_id="early", start="2021-01-01", end="2021-12-31")
    second["properties"].update(aoi_id="late", start="2023-01-01", end="2023-12-31")
    path = _features(tmp_path / "two.geojson", [first, second])
    with caplog.at_level(logging.WARNING, logger="eo_jepa.chips.grid"):
        build_chips(path, cfg(), tmp_path / "out", stac=str(demo_scenes_tiny.items_path))
    said = [r.getMessage() for r in caplog.records if "shares" in r.getMessage()]
    assert len(said) == 1 and "AOI late" in said[0] and "AOI early" in said[0] and "separately" in said[0]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("where", ["under_file", "proc"])
def test_unwritable_out_is_found_before_the_search(demo_scenes_tiny, tmp_path, where):
    from eo_jepa.demo.servers import fault_http_server

    blocker = tmp_path / "file"
    blocker.write_text("x")
    out = blocker / "out" if where == "under_file" else Path("/proc/eo-jepa-out")
    with fault_http_server("blackhole") as url:  # a search would hang until the 20 s timeout
        t0 = time.perf_counter()
        with pytest.raises(DataError, match=r"--out .* cannot be written"):
            build_chips(demo_scenes_tiny.aois_path, cfg("stac.timeout_s=20"), out, stac=url)
        assert time.perf_counter() - t0 < 10
