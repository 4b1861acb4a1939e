"""Per-patch cosine-distance change maps between two dates."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
import torch
from eval_synthetic import BANDS5, NORM_STATS5, write_scene
from PIL import Image

from eo_jepa.errors import DataError
from eo_jepa.eval.baseline import RandomProjectionEncoder
from eo_jepa.eval.change import change_map, cosine_distance_map


@pytest.fixture()
def enc():
    return RandomProjectionEncoder(BANDS5, patch_size=8, embed_dim=32, img_size=32, norm_stats=NORM_STATS5)


def test_cosine_distance_matches_torch():
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((2, 24, 5, 7)).astype(np.float32)
    ref = 1 - torch.nn.functional.cosine_similarity(torch.from_numpy(a), torch.from_numpy(b), dim=0).numpy()
    np.testing.assert_allclose(cosine_distance_map(a, b), ref, atol=1e-6)
    np.testing.assert_allclose(cosine_distance_map(a, a), 0, atol=1e-6)


def test_change_map_localises_change(enc, tmp_path):
    before = write_scene(tmp_path / "a.tif", height=64, width=96)
    after = write_scene(tmp_path / "b.tif", height=64, width=96, change=True)
    out = change_map(enc, before, after, tmp_path / "change.tif", window=32)
    with rasterio.open(before) as src, rasterio.open(out.geotiff) as dst:
        assert dst.crs == src.crs and dst.count == 1 and dst.dtypes[0] == "float32"
        assert dst.res == (80.0, 80.0) and (dst.transform.c, dst.transform.f) == (
            src.transform.c,
            src.transform.f,
        )
        assert (dst.height, dst.width) == (8, 12)
        dist = dst.read(1)
    changed = np.zeros((8, 12), bool)
    changed[:4, :4] = True  # the 32x32 px block at the origin changed class
    assert dist[changed].min() > 5 * dist[~changed].max()
    with Image.open(out.png) as img:
        assert img.size == (96, 64) and img.mode == "RGBA"
    same = change_map(enc, before, before, tmp_path / "same.tif", window=32)
    with rasterio.open(same.geotiff) as dst:
        np.testing.assert_allclose(dst.read(1), 0, atol=1e-5)


def test_nodata_patches_are_nan(enc, tmp_path):
    before = write_scene(tmp_path / "a.tif", height=32, width=32)
    after = write_scene(tmp_path / "b.tif", height=32, width=32)
    with rasterio.open(after, "r+") as dst:
        data = dst.read()
        data[:, :16, :] = 0  # nodata=0 on the top half
        dst.write(data)
    out = change_map(enc, before, after, tmp_path / "c.tif", png=tmp_path / "c_preview.png")
    with rasterio.open(out.geotiff) as dst:
        dist = dst.read(1)
        assert np.isnan(dst.nodata)
    assert np.isnan(dist[:2]).all() and np.isfinite(dist[2:]).all()
    assert (tmp_path / "c_preview.png").is_file()


def test_not_coregistered_is_clear(enc, tmp_path):
    a = write_scene(tmp_path / "a.tif", height=32, width=32)
    b = write_scene(tmp_path / "b.tif", height=32, width=40)
    with pytest.raises(DataError, match="not co-registered"):
        change_map(enc, a, b, tmp_path / "c.tif")
