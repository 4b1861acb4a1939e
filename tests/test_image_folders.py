"""Folders of ordinary images (JPEG/PNG/TIFF, 8/16-bit, RGB and multispectral, georeferenced or not) read the
same way by evaluation and training, with band names matched by the one matcher."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import rasterio
from PIL import Image
from rasterio.errors import NotGeoreferencedWarning

from eo_jepa.errors import BandMismatchError
from eo_jepa.eval.datasets import ImageFolderDataset, read_image
from eo_jepa.train.data import RasterFolderDataset


@pytest.mark.parametrize(
    ("text", "name"),
    [("red", "red"), ("B04", "red"), ("b4", "red"), (" Red ", "red"), ("R", "red"), ("swir1", "swir16"),
     ("B8A", "nir08"), ("nir08", "nir08"), ("B11", "swir16"), ("image", None), ("purple", None), ("", None)],
)  # fmt: skip
def test_the_band_matcher(text, name):
    from eo_jepa.bands import match_band

    assert match_band(text) == name


def _plain_tif(path, data, descriptions=None):
    """A TIFF without georeferencing (no CRS, no transform), as scene datasets ship them."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with rasterio.open(
            path, "w", driver="GTiff", width=data.shape[2], height=data.shape[1], count=data.shape[0],
            dtype=str(data.dtype),
        ) as dst:  # fmt: skip
            dst.write(data)
            for k, d in enumerate(descriptions or [], start=1):
                dst.set_band_description(k, d)


def test_b04_described_tiffs_read_alike_in_eval_and_train_without_warnings(tmp_path):
    """Band descriptions B04/B03/B02 used to work in eval and fail in train ("no band described as 'red'")."""
    rng = np.random.default_rng(0)
    arrays = []
    for cls in ("a", "b"):
        (tmp_path / cls).mkdir()
        for i in range(2):
            data = rng.integers(0, 4000, (3, 16, 16)).astype(np.uint16)
            arrays.append(data)
            _plain_tif(tmp_path / cls / f"{i}.tif", data, ["B04", "B03", "B02"])
    with warnings.catch_warnings():
        warnings.simplefilter("error", NotGeoreferencedWarning)  # a warning per read fails the test
        ev = ImageFolderDataset(tmp_path, bands=["blue", "red"])
        tr = RasterFolderDataset(
            tmp_path, ["blue", "red"], norm_stats={b: {"mean": 0, "std": 1} for b in ("blue", "red")}
        )
        assert ev.bands == tr.bands == ("blue", "red")
        for i in range(4):
            assert np.array_equal(ev[i]["pixels"], arrays[i][[2, 0]].astype(np.float32))
            assert np.array_equal(tr[i]["pixels"], ev[i]["pixels"])
    with pytest.raises(BandMismatchError, match="Unknown band 'purple'"):
        ImageFolderDataset(tmp_path, bands=["red", "purple"])
    with pytest.raises(BandMismatchError, match=r"Bands \['nir'\] are not in image folder"):
        ImageFolderDataset(tmp_path, bands=["red", "nir"])
    with pytest.raises(BandMismatchError, match="Unknown band 'purple'"):
        RasterFolderDataset(tmp_path, ["red", "purple"])


def test_16_bit_png_grey_jpeg_and_13_band_tiff(tmp_path):
    grey16 = (np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) * 13).astype(np.uint16)
    Image.fromarray(grey16).save(tmp_path / "g16.png")
    px, names = read_image(tmp_path / "g16.png")
    assert names is None and px.shape == (1, 64, 64) and px.max() == grey16.max() > 255
    rgb = np.random.default_rng(1).integers(0, 256, (32, 32, 3)).astype(np.uint8)
    Image.fromarray(rgb).save(tmp_path / "c.png")
    Image.fromarray(np.dstack([rgb, np.full((32, 32), 255, np.uint8)])).save(tmp_path / "rgba.png")
    for name in ("c.png", "rgba.png"):
        px, names = read_image(tmp_path / name)
        assert names == ("red", "green", "blue") and np.array_equal(px, rgb.transpose(2, 0, 1))
    ms = np.random.default_rng(2).integers(0, 5000, (13, 8, 8)).astype(np.uint16)
    _plain_tif(tmp_path / "ms.tif", ms)  # EuroSAT-MS: 13 unnamed bands
    px, names = read_image(tmp_path / "ms.tif")
    assert names is None and np.array_equal(px, ms)


def test_train_on_a_folder_of_png_tiles_in_class_subfolders(tmp_path):
    """`eo-jepa train` on JPEG/PNG tiles: bands from the files (RGB), tiles found in class sub-folders,
    an odd-sized tile resized (UC Merced has some), no conversion step."""
    from typer.testing import CliRunner

    from eo_jepa.cli import app

    rng = np.random.default_rng(0)
    for cls in ("forest", "river"):
        (tmp_path / "tiles" / cls).mkdir(parents=True)
        for i in range(6):
            size = (32, 30) if (cls, i) == ("river", 5) else (32, 32)
            img = rng.integers(0, 256, (*size, 3)).astype(np.uint8)
            Image.fromarray(img).save(tmp_path / "tiles" / cls / f"{i}.{'jpg' if i % 2 else 'png'}")
    result = CliRunner().invoke(
        app,
        [
            "train", "--config", "configs/train/tiny_cpu.yaml", "--data", str(tmp_path / "tiles"),
            f"output_dir={tmp_path / 'runs'}", "data.kind=raster_folder", "data.batch_size=4", "max_steps=2",
            "log.tensorboard=false",
        ],
    )  # fmt: skip
    assert result.exit_code == 0, f"{result.output}\n{result.exception!r}"
    run = next((tmp_path / "runs").iterdir())
    data = json.loads((run / "data.json").read_text())
    assert data["bands"] == ["red", "green", "blue"]
    rows = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(np.isfinite(r["loss"]) for r in rows)
