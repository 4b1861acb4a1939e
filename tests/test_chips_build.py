"""The chip builder end to end on realistic demo COGs: store contract, correctness, faults, resume, parallel."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import zarr

from eo_jepa.chips import ChipConfig, ChipDataset, build_chips
from eo_jepa.chips.card import read_front_matter
from eo_jepa.config import load_config
from eo_jepa.errors import BandMismatchError, ConfigError, DataError, StacError

REPO = Path(__file__).resolve().parents[1]
DEMO_CONFIG = REPO / "configs" / "chips" / "s2_5band_64_demo.yaml"
INDEX_COLUMNS = {
    "chip_id", "row", "location_id", "aoi_id", "split", "label", "datetime", "crs", "transform",
    "geometry", "item_ids", "hrefs", "cloud_fraction", "nodata_fraction", "status", "reason",
}  # fmt: skip


@pytest.fixture(scope="module")
def scenes(demo_scenes_tiny):
    """The session's tiny demo scenes (tests/conftest.py): 1 S2 tile, 4 dates across baseline 04.00."""
    return demo_scenes_tiny


def cfg(*overrides: str) -> ChipConfig:
    return load_config(ChipConfig, DEMO_CONFIG, list(overrides))


@pytest.fixture(scope="module")
def reference(reference_chips):
    """The session's default demo build (tests/conftest.py): (store, report, cards); read-only."""
    return reference_chips


def load_store(root: Path) -> dict:
    group = zarr.open_group(str(root / "chips.zarr"), mode="r")
    index = gpd.read_parquet(root / "index.parquet")
    meta = json.loads((root / "dataset.json").read_text())
    return {
        "pixels": group["pixels"][:],
        "valid": group["valid"][:],
        "index": index,
        "stats": json.loads((root / "norm_stats.json").read_text()),
        "meta": meta,
    }


def assert_same_store(a: Path, b: Path, *, hrefs_differ: bool = False) -> None:
    sa, sb = load_store(a), load_store(b)
    assert np.array_equal(sa["pixels"], sb["pixels"])
    assert np.array_equal(sa["valid"], sb["valid"])
    ia, ib = sa["index"], sb["index"]
    drop = ["hrefs"] if hrefs_differ else []
    assert ia.drop(columns=drop).equals(ib.drop(columns=drop))
    assert sa["stats"] == sb["stats"]
    for key in ("sensor", "bands", "chip_size", "gsd_m", "dtype", "counts", "skipped_items"):
        assert sa["meta"][key] == sb["meta"][key], key


# --------------------------------------------------------------------------- the store contract


def test_store_layout_index_and_card(reference, scenes):
    root, report, cards = reference
    store = load_store(root)
    meta, index = store["meta"], store["index"]
    n = len(index)
    assert report.planned == n and report.ok + report.rejected == n and report.ok > 10
    assert store["pixels"].shape == (n, 5, 64, 64) and store["pixels"].dtype == np.uint16
    assert store["valid"].shape == (n, 64, 64) and store["valid"].dtype == bool
    arr = zarr.open_group(str(root / "chips.zarr"), mode="r")["pixels"]
    assert arr.metadata.zarr_format == 3 and arr.chunks == (1, 5, 64, 64)
    assert set(index.columns) >= INDEX_COLUMNS
    assert index.crs.to_epsg() == 4326
    ok = index[index["status"] == "ok"]
    assert sorted(ok["row"]) == sorted(set(ok["row"])) and (ok["row"] >= 0).all()
    assert (index.loc[index["status"] == "rejected", "row"] == -1).all()
    assert index.loc[index["status"] == "rejected", "reason"].notna().all()
    assert set(index["split"]) <= {"train", "val", "test"} and set(ok["label"]) <= set(scenes.classes)
    assert (ok["crs"] == "EPSG:32632").all() and all(len(t) == 6 for t in ok["transform"])
    assert all(len(ids) == 1 for ids in ok["item_ids"])
    # rejected chips were filtered for a recorded reason, not dropped
    for _, r in index[index["status"] == "rejected"].iterrows():
        assert r["nodata_fraction"] > 0.2 or r["cloud_fraction"] > 0.5 or "scene" in r["reason"]
    # rows that were never written hold nothing; the rest hold data
    written = np.zeros(n, bool)
    written[ok["row"].to_numpy()] = True
    assert (
        not store["pixels"][~written].any()
        and store["pixels"][written].reshape(written.sum(), -1).any(1).all()
    )
    assert meta["bands"] == ["red", "green", "blue", "nir", "swir16"] and meta["sensor"] == "sentinel-2-l2a"
    assert meta["counts"]["ok"] == len(ok) and meta["dtype"] == "uint16" and meta["chip_size"] == 64
    assert meta["config"]["bands"] == meta["bands"] and meta["eo_jepa_version"]
    # data card: YAML front matter with provenance, query, AOIs, counts, stats, licence; copied to card_dir
    card = (root / "data_card.md").read_text()
    front = read_front_matter(card)
    assert front["counts"]["ok"] == len(ok) and "Copernicus" in front["license"]
    assert front["query"]["collection"] == "sentinel-2-l2a" and len(front["aois"]) == len(
        scenes.aois()["features"]
    )
    assert front["stats"]["red"]["mean"] == pytest.approx(store["stats"]["bands"]["red"]["mean"])
    assert "{{" not in card and "| red |" in card
    assert (cards / "s2-5band-64-demo.md").read_text() == card


def test_stats_equal_float64_numpy_over_valid_pixels(reference):
    root, _, _ = reference
    store = load_store(root)
    ok = store["index"][store["index"]["status"] == "ok"]["row"].to_numpy()
    pixels, valid = store["pixels"][ok], store["valid"][ok]
    for c, band in enumerate(store["stats"]["band_order"]):
        values = pixels[:, c][valid].astype(np.float64)
        got = store["stats"]["bands"][band]
        assert got["count"] == values.size
        for key, want in (
            ("mean", values.mean()),
            ("std", values.std()),
            ("min", values.min()),
            ("max", values.max()),
        ):
            assert abs(got[key] - want) <= 1e-6 * abs(want), (band, key)
        for key, q in (("p1", 1), ("p2", 2), ("p98", 98), ("p99", 99)):
            assert got[key] == pytest.approx(np.percentile(values, q), rel=1e-6), (band, key)


def test_chip_equals_direct_rasterio_read(reference):
    """Every band/mask of a few chips equals an independent rasterio read + offset + SCL mask."""
    import rasterio
    from rasterio.enums import Resampling
    from rasterio.windows import from_bounds

    from eo_jepa.stac import load_static_items

    root, _, _ = reference
    store = load_store(root)
    ok = store["index"][store["index"]["status"] == "ok"]
    picks = [ok[ok["offset"] == -1000].iloc[0], ok[ok["offset"] == 0].iloc[0], ok.iloc[-1]]
    src = json.loads((root / "dataset.json").read_text())["source"]
    items = {i.id: i for i in load_static_items(src)}
    for chip in picks:
        item = items[chip["item_ids"][0]]
        x0, y0 = chip["transform"][2], chip["transform"][5]
        bounds = (x0, y0 - 640, x0 + 640, y0)

        def window_read(key: str, item=item, bounds=bounds) -> np.ndarray:
            with rasterio.open(item.assets[key].href) as ds:
                return ds.read(1, window=from_bounds(*bounds, transform=ds.transform))

        raw10 = {k: window_read(k).astype(np.int64) for k in ("B04", "B03", "B02", "B08")}
        scl = np.repeat(np.repeat(window_read("SCL"), 2, 0), 2, 1)  # 20 m -> 10 m nearest
        offset = 1000 if float(item.baseline) >= 4.0 else 0
        got = store["pixels"][chip["row"]]
        for c, key in enumerate(("B04", "B03", "B02", "B08")):
            assert np.array_equal(got[c], np.clip(raw10[key] - offset, 0, None)), (chip["chip_id"], key)
        with rasterio.open(item.assets["B11"].href) as ds:  # 20 m band: only its no-data matters here
            swir = ds.read(
                1,
                window=from_bounds(*bounds, transform=ds.transform),
                out_shape=(64, 64),
                resampling=Resampling.bilinear,
            )
        nodata = (scl == 0) | np.logical_or.reduce([raw10[k] == 0 for k in raw10]) | (swir == 0)
        expected_valid = ~nodata & ~np.isin(scl, [1, 3, 8, 9, 10])
        assert np.array_equal(store["valid"][chip["row"]], expected_valid)
        assert chip["nodata_fraction"] == pytest.approx(nodata.mean())
        assert chip["cloud_fraction"] == pytest.approx(np.isin(scl, [1, 3, 8, 9, 10]).mean())


def test_mixed_baselines_share_one_scale(reference, scenes):
    """Scenes after baseline 04.00 come out on the same scale as older ones (and would not without it)."""
    from eo_jepa.chips.aois import load_aois
    from eo_jepa.chips.grid import plan_locations
    from eo_jepa.chips.read import SourceCache, read_chip
    from eo_jepa.stac import load_static_items

    items = sorted(load_static_items(scenes.items_path), key=lambda i: i.datetime)
    old = [i for i in items if float(i.baseline) < 4]
    new = [i for i in items if float(i.baseline) >= 4]
    assert old and new
    harm, raw = cfg(), cfg("harmonize=false")
    locs = plan_locations(load_aois(scenes.aois_path, harm.aoi), 64, 10.0)
    cache = SourceCache()
    best = None
    for loc in locs:
        reads = [read_chip(i, loc, harm, cache) for i in (old[0], new[-1])]
        both = reads[0].valid & reads[1].valid
        if best is None or both.sum() > best[0].sum():
            best = (both, loc)
    both, loc = best
    assert both.sum() > 500
    a, b = (read_chip(i, loc, harm, cache).pixels[:4] for i in (old[0], new[-1]))
    b_raw = read_chip(new[-1], loc, raw, cache).pixels[:4]
    # an item whose provider already removed the offset (Earth Search flag) is not shifted twice
    flagged = dataclasses.replace(new[-1], offset_applied=True)
    assert np.array_equal(read_chip(flagged, loc, harm, cache).pixels[:4], b_raw)
    for c in range(4):
        diff = float(np.median(b[c][both].astype(float)) - np.median(a[c][both].astype(float)))
        raw_diff = float(np.median(b_raw[c][both].astype(float)) - np.median(a[c][both].astype(float)))
        assert abs(diff) < 250 and raw_diff - diff == pytest.approx(1000, abs=60), (c, diff, raw_diff)
    cache.close()


def test_nearest_resampling_of_20m_band_repeats_pixels(reference):
    import rasterio
    from rasterio.windows import from_bounds

    from eo_jepa.chips.grid import Location
    from eo_jepa.chips.read import SourceCache, read_chip
    from eo_jepa.stac import load_static_items

    root, _, _ = reference
    chip = load_store(root)["index"].query("status == 'ok' and offset == 0").iloc[0]
    items = {i.id: i for i in load_static_items(json.loads((root / "dataset.json").read_text())["source"])}
    item = items[chip["item_ids"][0]]
    x0, y0 = chip["transform"][2], chip["transform"][5]
    loc = Location(chip["location_id"], "a", "train", None, "", "", 32632, x0, y0, 10.0, 64, chip["geometry"])
    read = read_chip(item, loc, cfg("resampling=nearest"), SourceCache())
    with rasterio.open(item.assets["B11"].href) as ds:
        swir = ds.read(1, window=from_bounds(x0, y0 - 640, x0 + 640, y0, transform=ds.transform))
    assert np.array_equal(read.pixels[4], np.repeat(np.repeat(swir, 2, 0), 2, 1))
    bilinear = load_store(root)["pixels"][chip["row"]][4]
    assert not np.array_equal(bilinear, read.pixels[4])  # the default smooths
    assert abs(float(bilinear.mean()) - float(read.pixels[4].mean())) < 0.05 * float(read.pixels[4].mean())


def test_other_utm_zone_goes_through_warped_vrt(scenes):
    """A chip in zone 33 from a zone-32 item equals rasterio.warp.reproject of the source (nearest)."""
    import rasterio
    from affine import Affine
    from pyproj import Transformer
    from rasterio.warp import Resampling, reproject
    from shapely.geometry import box

    from eo_jepa.chips.grid import Location
    from eo_jepa.chips.read import SourceCache, read_chip
    from eo_jepa.stac import load_static_items

    item = load_static_items(scenes.items_path)[0]
    href = item.assets["B04"].href
    with rasterio.open(href) as ds:
        cx, cy = (ds.bounds.left + ds.bounds.right) / 2, (ds.bounds.bottom + ds.bounds.top) / 2
        src = ds.read(1)
        src_transform, src_crs = ds.transform, ds.crs
    x, y = Transformer.from_crs(32632, 32633, always_xy=True).transform(cx, cy)
    x0, y0 = round(x / 10) * 10.0, round(y / 10) * 10.0
    loc = Location("z33", "a", "train", None, "", "", 32633, x0, y0, 10.0, 64, box(0, 0, 1, 1))
    read = read_chip(item, loc, cfg("resampling=nearest"), SourceCache())
    expected = np.zeros((64, 64), np.uint16)
    reproject(src, expected, src_transform=src_transform, src_crs=src_crs, dst_transform=Affine(*loc.transform),
              dst_crs="EPSG:32633", resampling=Resampling.nearest)  # fmt: skip
    offset = 1000 if float(item.baseline) >= 4 else 0
    assert read.nodata_fraction < 0.01
    assert np.array_equal(read.pixels[0], np.clip(expected.astype(int) - offset, 0, None))


# --------------------------------------------------------------------------- the reader


def test_chip_dataset_reader(reference):
    root, report, _ = reference
    store = load_store(root)
    ds = ChipDataset(root)
    assert (
        len(ds) == report.ok
        and ds.bands == ("red", "green", "blue", "nir", "swir16")
        and ds.sensor == "sentinel-2-l2a"
    )
    sample = ds[3]
    assert sample["pixels"].dtype == np.float32 and sample["pixels"].shape == (5, 64, 64)
    assert np.array_equal(sample["pixels"], store["pixels"][sample["row"]].astype(np.float32))
    assert np.array_equal(sample["valid"], store["valid"][sample["row"]])
    assert sample["chip_id"] == ds.index.loc[3, "chip_id"] and sample["label"] == ds.labels[3]
    assert ds.norm_stats["nir"]["mean"] == store["stats"]["bands"]["nir"]["mean"]
    sub = ChipDataset(root, "train", bands=["nir", "red"])
    assert set(sub.index["split"]) == {"train"} and 0 < len(sub) < len(ds)
    s = sub[0]
    assert np.array_equal(s["pixels"], store["pixels"][s["row"]][[3, 0]].astype(np.float32))
    assert sum(len(v) for v in ds.locations().values()) == len(ds)
    with pytest.raises(BandMismatchError, match="not in the chip store"):
        ChipDataset(root, bands=["red", "rededge1"])
    with pytest.raises(DataError, match="Unknown split"):
        ChipDataset(root, "training")
    import torch

    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=4)))
    assert batch["pixels"].shape == (4, 5, 64, 64)


def test_dates_per_location_share_location_id(scenes, tmp_path):
    report = build_chips(
        scenes.aois_path,
        cfg("dates_per_location=2", "max_nodata_fraction=1.0", "max_cloud_fraction=1.0"),
        tmp_path / "s",
        stac=str(scenes.items_path),
    )
    ds = ChipDataset(tmp_path / "s")
    assert report.ok == report.planned == len(ds)
    groups = ds.locations()
    assert all(len(v) == 2 for v in groups.values())
    for members in groups.values():
        rows = ds.index.loc[members]
        assert rows["datetime"].nunique() == 2 and set(rows["slot"]) == {0, 1}
        assert rows["geometry"].iloc[0].equals(rows["geometry"].iloc[1])


# --------------------------------------------------------------------------- faults


def test_empty_search_writes_nothing(scenes, tmp_path):
    far = tmp_path / "far.geojson"
    far.write_text(
        json.dumps(
            {
                "type": "FeatureCollection",
                "features": [
                    {
                        "type": "Feature",
                        "properties": {"aoi_id": "x"},
                        "geometry": {"type": "Point", "coordinates": [-60.0, -10.0]},
                    }
                ],
            }
        )
    )
    with pytest.raises(StacError, match=r"found no 'sentinel-2-l2a' items.*Nothing was written"):
        build_chips(far, cfg(), tmp_path / "out", stac=str(scenes.items_path))
    assert not (tmp_path / "out").exists()


def test_corrupt_cog_is_skipped_and_reported(scenes, reference, tmp_path):
    root, _, _ = reference
    index = load_store(root)["index"]
    ok = index[index["status"] == "ok"]
    victim = ok["item_ids"].map(lambda v: v[0]).value_counts().index[0]  # the most used item
    cogs = tmp_path / "cogs"
    shutil.copytree(scenes.cog_dir, cogs)
    b04 = cogs / victim / "B04.tif"
    b04.write_bytes(b04.read_bytes()[: b04.stat().st_size // 3])  # truncated mid-file
    items = tmp_path / "items.json"
    scenes.write_items(items)
    text = items.read_text().replace(str(scenes.cog_dir.resolve()), str(cogs))
    items.write_text(text)
    report = build_chips(scenes.aois_path, cfg(), tmp_path / "out", stac=str(items))
    assert victim in report.skipped_items and "B04" in report.skipped_items[victim]
    meta = load_store(tmp_path / "out")["meta"]
    assert victim in meta["skipped_items"] and meta["counts"]["items_skipped"] == 1
    new = load_store(tmp_path / "out")["index"]
    assert report.ok >= 0.5 * len(ok)
    assert not any(victim in ids for ids in new.loc[new["status"] == "ok", "item_ids"])


def test_batched_reads_change_nothing_even_with_a_corrupt_cog(scenes, reference, tmp_path, monkeypatch):
    """Rows of chips read in one windowed read (``prefetch``) give the same store as chip-by-chip reads,
    also when a truncated COG makes some windows fail and others not (then chips fall back to their own
    reads, in the same order, reporting the same errors)."""
    from eo_jepa.chips import build as build_module

    index = load_store(reference[0])["index"]
    victim = index.loc[index["status"] == "ok", "item_ids"].map(lambda v: v[0]).value_counts().index[0]
    cogs = tmp_path / "cogs"
    shutil.copytree(scenes.cog_dir, cogs)
    b04 = cogs / victim / "B04.tif"
    b04.write_bytes(b04.read_bytes()[: b04.stat().st_size * 2 // 3])  # its first blocks still decode
    items = tmp_path / "items.json"
    scenes.write_items(items)
    items.write_text(items.read_text().replace(str(scenes.cog_dir.resolve()), str(cogs)))
    batched = build_chips(scenes.aois_path, cfg("task_size=6"), tmp_path / "batched", stac=str(items))
    monkeypatch.setattr(build_module, "prefetch", lambda *args, **kwargs: None)
    single = build_chips(scenes.aois_path, cfg("task_size=6"), tmp_path / "single", stac=str(items))
    assert victim in batched.skipped_items and batched.skipped_items == single.skipped_items
    assert_same_store(tmp_path / "batched", tmp_path / "single")
    ok = load_store(tmp_path / "batched")["index"].query("status == 'ok'")
    from_victim = ok["item_ids"].map(lambda v: v[0] == victim).sum()
    assert (
        0 < from_victim < (index.loc[index["status"] == "ok", "item_ids"].map(lambda v: v[0]) == victim).sum()
    )


def test_non_empty_out_needs_resume_and_same_config(scenes, reference, tmp_path):
    root, _, _ = reference
    with pytest.raises(DataError, match="already holds a chip store"):
        build_chips(scenes.aois_path, cfg(), root, stac=str(scenes.items_path))
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "junk").write_text("x")
    with pytest.raises(DataError, match="pass --resume"):
        build_chips(scenes.aois_path, cfg(), tmp_path / "x", stac=str(scenes.items_path))
    killed_while_planning = tmp_path / "p"
    (killed_while_planning / "chips.zarr").mkdir(parents=True)
    (killed_while_planning / ".build" / "partials").mkdir(parents=True)
    with pytest.raises(DataError, match="pass --resume"):
        build_chips(scenes.aois_path, cfg(), killed_while_planning, stac=str(scenes.items_path))
    report = build_chips(
        scenes.aois_path, cfg(), killed_while_planning, stac=str(scenes.items_path), resume=True
    )
    assert report.tasks_run == report.tasks
    assert_same_store(root, killed_while_planning)
    with pytest.raises(ConfigError, match="config differs"):
        build_chips(scenes.aois_path, cfg("chip_size=32"), root, stac=str(scenes.items_path), resume=True)


def test_kill_9_then_resume_is_identical(scenes, reference, tmp_path):
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "eo_jepa", "-q", "chips", "build", "--aois", str(scenes.aois_path), "--config",
           str(DEMO_CONFIG), "--out", str(out), "--stac", str(scenes.items_path), "task_size=1"]  # fmt: skip
    env = {**os.environ, "EO_JEPA_NO_PROGRESS": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    partials = out / ".build" / "partials"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if partials.is_dir() and len(list(partials.glob("*.json"))) >= 2:
            break
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    assert not (out / "dataset.json").exists()
    done = len(list(partials.glob("*.json")))
    plan = json.loads((out / ".build" / "plan.json").read_text())
    assert 2 <= done < len(plan["locations"])  # killed mid-build
    report = build_chips(scenes.aois_path, cfg("task_size=1"), out, stac=str(scenes.items_path), resume=True)
    assert report.tasks_resumed >= done and report.tasks_run == report.tasks - report.tasks_resumed
    assert_same_store(reference[0], out)
    # resuming a finished build changes nothing
    before = (out / "index.parquet").read_bytes()
    again = build_chips(scenes.aois_path, cfg("task_size=1"), out, stac=str(scenes.items_path), resume=True)
    assert again.tasks_run == 0 and (out / "index.parquet").read_bytes() == before


# A build of these inputs (configs/chips/s2_5band_64_demo.yaml over the tiny demo scenes, seed 0) written by
# eo-jepa at commit 5d9a306, before plan.json and the journals were read through dataclasses, then cut
# short as a kill would leave it: plan.json, task 0's journal and chunks; tasks 1-4 and the final files
# never written. Its paths under the demo folder read "@DEMO@".
OLD_BUILD = Path(__file__).parent / "data" / "chips_build_interrupted_5d9a306.tar.gz"


def test_a_build_journalled_by_an_earlier_version_resumes_identically(scenes, reference, tmp_path):
    import tarfile

    from eo_jepa.chips.records import Plan, TaskJournal

    out = tmp_path / "old"
    with tarfile.open(OLD_BUILD) as tar:
        tar.extractall(out, filter="data")
    assert scenes.items_path.parent == scenes.root and scenes.cog_dir.parent == scenes.root
    for path in (out / ".build").rglob("*.json"):
        path.write_text(path.read_text().replace("@DEMO@", str(scenes.root)))
    plan_text = (out / ".build" / "plan.json").read_text()
    journal_text = (out / ".build" / "partials" / "task-000000.json").read_text()
    # read and written back, the old files are the same JSON (same keys, values and key order)
    assert json.dumps(Plan.from_dict(json.loads(plan_text)).to_dict()) == json.dumps(json.loads(plan_text))
    assert json.dumps(TaskJournal.from_dict(json.loads(journal_text)).to_dict()) == json.dumps(
        json.loads(journal_text)
    )
    report = build_chips(scenes.aois_path, cfg(), out, stac=str(scenes.items_path), resume=True)
    assert (report.tasks, report.tasks_resumed) == (5, 1)
    assert_same_store(reference[0], out)


# --------------------------------------------------------------------------- parallel, HTTP, real API, CLI


@pytest.mark.parametrize("executor", ["thread", "process"])
def test_local_workers_equal_serial(scenes, reference, tmp_path, executor):
    build_chips(
        scenes.aois_path,
        cfg(f"executor={executor}", "task_size=2"),
        tmp_path / "s",
        stac=str(scenes.items_path),
        workers=2,
    )
    assert_same_store(reference[0], tmp_path / "s")


def test_dask_cluster_equals_serial(scenes, reference, tmp_path):
    from distributed import Client, LocalCluster

    with (
        LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None) as cluster,
        Client(cluster) as client,
    ):
        build_chips(
            scenes.aois_path,
            cfg("task_size=3"),
            tmp_path / "d",
            stac=str(scenes.items_path),
            scheduler=client,
        )
        build_chips(
            scenes.aois_path,
            cfg("task_size=3"),
            tmp_path / "a",
            stac=str(scenes.items_path),
            scheduler=cluster.scheduler_address,
        )
    assert_same_store(reference[0], tmp_path / "d")
    assert_same_store(reference[0], tmp_path / "a")


def test_cogs_over_http_equal_local_files(scenes, reference, tmp_path, cog_http_url):
    url = cog_http_url
    items = scenes.write_items(tmp_path / "items.json", base_url=url)
    build_chips(scenes.aois_path, cfg(), tmp_path / "h", stac=str(items))
    assert_same_store(reference[0], tmp_path / "h", hrefs_differ=True)
    hrefs = load_store(tmp_path / "h")["index"]["hrefs"]
    assert all(h.startswith(url) for hs in hrefs for h in hs)


@pytest.mark.pgstac
def test_build_from_real_stac_api(scenes, reference, tmp_path, stac_api_url):
    """pgstac search (paging, query) + COGs over HTTP give the same chips as the local ItemCollection."""
    url = stac_api_url
    report = build_chips(scenes.aois_path, cfg("stac.page_size=2"), tmp_path / "api", stac=url)
    assert report.ok == reference[1].ok
    a, b = load_store(reference[0]), load_store(tmp_path / "api")
    assert np.array_equal(a["pixels"], b["pixels"]) and a["stats"] == b["stats"]
    assert b["meta"]["source"] == url


def test_cli_build_info_and_errors(scenes, tmp_path, capsys, monkeypatch):
    from eo_jepa.cli import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "data_cards").mkdir()
    args = ["chips", "build", "--aois", str(scenes.aois_path), "--config", str(DEMO_CONFIG), "--out", "out",
            "--stac", str(scenes.items_path), "chip_size=32", "name=cli-test"]  # fmt: skip
    with pytest.raises(SystemExit) as exit_:
        main(args)
    assert exit_.value.code in (0, None)
    assert "chips ok" in capsys.readouterr().out
    assert (tmp_path / "data_cards" / "cli-test.md").is_file()  # default card dir ./data_cards
    assert json.loads((tmp_path / "out" / "dataset.json").read_text())["chip_size"] == 32
    with pytest.raises(SystemExit) as exit_:
        main(["chips", "info", "out"])
    assert "sentinel-2-l2a 32x32" in capsys.readouterr().out
    for bad, message in (
        (args, "already holds a chip store"),
        ([*args[:-2], "chip_sise=3"], "Unknown config key 'chip_sise'"),
    ):
        with pytest.raises(SystemExit) as exit_:
            main([*bad[:7], "fresh" if bad is not args else "out", *bad[8:]])
        err = capsys.readouterr().err
        assert exit_.value.code == 2 and message in err and len(err.strip().splitlines()) == 1, err
