"""Folders of per-sample rasters (GeoTIFF / NetCDF / Zarr) as training data, with band mappings."""

from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio
import xarray as xr
from rasterio.transform import from_origin

from eo_jepa.errors import BandMismatchError, DataError
from eo_jepa.train.checkpointing import load_state
from eo_jepa.train.config import load_train_config
from eo_jepa.train.data import RasterFolderDataset


def _arrays(seed: int, n_bands: int = 4, size: int = 16) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(100, 5000, (n_bands, size, size)).astype(np.uint16)


def _write_tifs(folder, n=3, size=16):
    folder.mkdir()
    out = []
    for i in range(n):
        data = _arrays(i, size=size)
        data[:, 0, :3] = 0  # nodata corner
        profile = dict(
            driver="GTiff", width=size, height=size, count=4, dtype="uint16", nodata=0,
            crs="EPSG:32633", transform=from_origin(500000, 5000000, 10, 10),
        )  # fmt: skip
        with rasterio.open(folder / f"s{i}.tif", "w", **profile) as dst:
            dst.write(data)
            for k, name in enumerate(("B04", "B03", "B02", "B08"), start=1):
                dst.set_band_description(k, name)
        out.append(data)
    return out


def test_geotiff_folder_by_index_and_by_description(tmp_path):
    written = _write_tifs(tmp_path / "tifs")
    by_index = RasterFolderDataset(tmp_path / "tifs", ["nir", "red"], band_map={"nir": 4, "red": 1})
    item = by_index[1]
    np.testing.assert_array_equal(item["pixels"], written[1][[3, 0]].astype(np.float32))
    assert item["pixels"].dtype == np.float32 and item["location_id"] == "s1"
    assert not item["valid"][0, :3].any() and item["valid"][1:].all()
    by_name = RasterFolderDataset(
        tmp_path / "tifs", ["red", "green"], band_map={"red": "B04", "green": "B03"}
    )
    np.testing.assert_array_equal(by_name[2]["pixels"], written[2][[0, 1]].astype(np.float32))
    # statistics over valid pixels only, in float64
    vals = np.concatenate([w[[3, 0]][:, w[0] != 0] for w in written], axis=1).astype(np.float64)
    assert by_index.norm_stats["nir"]["mean"] == pytest.approx(vals[0].mean(), rel=1e-9)
    assert by_index.norm_stats["red"]["std"] == pytest.approx(vals[1].std(), rel=1e-9)


def test_netcdf_and_zarr_folders(tmp_path):
    nc = tmp_path / "nc"
    nc.mkdir()
    zr = tmp_path / "zarr"
    zr.mkdir()
    for i in range(2):
        data = _arrays(10 + i).astype(np.float32)
        data[:, 5, 5] = np.nan
        ds = xr.Dataset({n: (("y", "x"), data[k]) for k, n in enumerate(("red", "green", "blue", "B08"))})
        ds.to_netcdf(nc / f"t{i}.nc", engine="scipy")
        xr.Dataset({"refl": (("band", "y", "x"), data)}).to_zarr(zr / f"t{i}.zarr", mode="w")
    a = RasterFolderDataset(nc, ["red", "nir"], band_map={"nir": "B08"})
    b = RasterFolderDataset(zr, ["red", "nir"], band_map={"red": 1, "nir": 4})
    ref = _arrays(11).astype(np.float32)[[0, 3]]
    for ds in (a, b):
        item = ds[1]
        assert not item["valid"][5, 5] and item["valid"].sum() == 16 * 16 - 1
        mask = item["valid"]
        np.testing.assert_array_equal(item["pixels"][:, mask], ref[:, mask])
    with pytest.raises(BandMismatchError, match=r"no variable 'swir16'.*data\.band_map\.swir16"):
        RasterFolderDataset(nc, ["red", "swir16"])


def test_raster_folder_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        RasterFolderDataset(tmp_path / "nope", ["red"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"No \.tif/\.tiff/\.nc/\.zarr/\.png/\.jpg files"):
        RasterFolderDataset(tmp_path / "empty", ["red"])
    _write_tifs(tmp_path / "t")
    with pytest.raises(DataError, match="out of range"):
        RasterFolderDataset(tmp_path / "t", ["red"], band_map={"red": 9})
    with rasterio.open(
        tmp_path / "t" / "z_big.tif", "w", driver="GTiff", width=8, height=8, count=4, dtype="uint16"
    ) as dst:
        dst.write(_arrays(5, size=8))
    ds = RasterFolderDataset(tmp_path / "t", ["red"], band_map={"red": 1})
    with pytest.raises(DataError, match="needs one chip size"):
        ds[3]


def test_training_on_a_raster_folder(tmp_path):
    """Training from a GeoTIFF folder (statistics from a JSON file) with gradient accumulation."""
    from eo_jepa.train.trainer import run_training

    _write_tifs(tmp_path / "tifs", n=12, size=32)
    stats = {"bands": {b: {"mean": 2500.0, "std": 1400.0} for b in ("red", "green", "blue", "nir")}}
    (tmp_path / "stats.json").write_text(json.dumps(stats))
    cfg = load_train_config(
        "configs/train/tiny_cpu.yaml",
        [
            f"output_dir={tmp_path}", "data.kind=raster_folder", f"data.path={tmp_path / 'tifs'}",
            "data.bands=[red, green, blue, nir]", "data.band_map={red: 1, green: 2, blue: 3, nir: 4}",
            f"data.norm_stats={tmp_path / 'stats.json'}", "data.batch_size=4", "max_steps=3", "optim.grad_accum=2",
            "log.tensorboard=false",
        ],
    )  # fmt: skip
    run = run_training(cfg)
    rows = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and all(np.isfinite(r["loss"]) for r in rows)
    # 12 files / batch 4 = 3 micro-batches per epoch = 1 optimiser step per epoch with grad_accum=2
    # (the third micro-batch is skipped: gradients never leak across an epoch boundary)
    assert [r["epoch"] for r in rows] == [0, 1, 2]
    state = load_state(run / "checkpoints" / "last.pt")
    assert (state["step"], state["epoch"], state["batch_in_epoch"]) == (3, 2, 2)
    assert json.loads((run / "data.json").read_text())["model_norm_stats"]["red"] == {
        "mean": 2500.0,
        "std": 1400.0,
    }


@pytest.mark.parametrize("bands", [None, ["nir", "red"]])
def test_chip_store_batch_reads_equal_chip_reads(tmp_path, bands):
    """The loader's batched read (native dtype, chunks decoded into one array) gives the chips, bands
    and masks that zarr reads, and that chip-by-chip reads give, for all bands and a reordered subset."""
    from train_data import BANDS, make_chip_store

    from eo_jepa.chips import ChipDataset
    from eo_jepa.chips.store import open_arrays

    root = make_chip_store(tmp_path / "s", n_locations=6, size=16)
    ds = ChipDataset(root, bands=bands)
    zpixels, zvalid = open_arrays(root)
    channels = [BANDS.index(b) for b in ds.bands]
    idx = [5, 0, 7, 7, 2]
    px, va = ds.read_pixels(idx)
    assert px.dtype == np.uint16 and px.shape == (5, len(ds.bands), 16, 16)
    for k, i in enumerate(idx):
        row = int(ds.index.at[i, "row"])
        assert np.array_equal(px[k], np.asarray(zpixels[row])[channels])
        assert np.array_equal(va[k], np.asarray(zvalid[row]))
        assert np.array_equal(px[k].astype(np.float32), ds[i]["pixels"])
    assert not va.all()  # the store has masked pixels: masks really are compared
