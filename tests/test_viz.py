"""PCA→RGB maps and dense sliding-window features: georeference, sizes, determinism, band handling."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
import torch
from eval_synthetic import BANDS5, NORM_STATS5, write_scene
from PIL import Image

from eo_jepa.errors import BandMismatchError, DataError
from eo_jepa.eval.baseline import RandomProjectionEncoder
from eo_jepa.eval.features import dense_features
from eo_jepa.eval.pca import pca_components, to_rgb, viz_pca
from eo_jepa.eval.raster import read_raster


@pytest.fixture()
def enc():
    return RandomProjectionEncoder(BANDS5, patch_size=8, embed_dim=32, img_size=32, norm_stats=NORM_STATS5)


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    return write_scene(tmp_path_factory.mktemp("scene") / "scene.tif", height=96, width=136)


def test_sliding_windows_match_whole_image(enc, scene):
    """The baseline is patch-local, so stitched (and overlap-averaged) windows equal one pass on the whole image."""
    raw = read_raster(scene, BANDS5).pixels
    whole = enc.forward_features(enc.normalize(torch.from_numpy(raw)[None]))[0].numpy()
    tiled = dense_features(enc, raw, window=32)
    overlapped = dense_features(enc, raw, window=32, stride=16, batch_size=3)
    assert tiled.shape == (32, 12, 17) == whole.shape
    np.testing.assert_allclose(tiled, whole, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(overlapped, whole, rtol=1e-5, atol=1e-5)


def test_ragged_raster_grid_is_ceil(enc):
    raw = np.random.default_rng(0).uniform(0, 3000, (5, 45, 70)).astype(np.float32)
    feats = dense_features(enc, raw, window=32)
    assert feats.shape == (32, 6, 9)  # ceil(45/8), ceil(70/8)
    whole = enc.forward_features(enc.normalize(torch.from_numpy(raw[:, :40, :64])[None]))[0].numpy()
    np.testing.assert_allclose(feats[:, :5, :8], whole, rtol=1e-5, atol=1e-5)  # full patches are exact


def test_pca_matches_numpy_svd():
    rng = np.random.default_rng(1)
    basis = rng.standard_normal((16, 3)) * [5.0, 2.0, 1.0]  # three directions of decreasing variance
    feats = (basis @ rng.standard_normal((3, 10 * 12))).reshape(16, 10, 12)
    feats = feats + 0.1 * rng.standard_normal(feats.shape)
    scores = pca_components(feats)
    flat = feats.reshape(16, -1).T.astype(np.float64)
    centred = flat - flat.mean(0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    for c in range(3):
        ref = centred @ vt[c]
        corr = np.corrcoef(ref, scores[c].reshape(-1))[0, 1]
        assert abs(corr) > 0.9999
    rgb = to_rgb(scores)
    assert rgb.dtype == np.uint8 and rgb.shape == (10, 12, 3) and rgb.min() == 0 and rgb.max() == 255


def test_viz_pca_raster_outputs(enc, scene, tmp_path):
    out = viz_pca(enc, str(scene), tmp_path / "pca.png", features_tif=tmp_path / "feats.tif", window=32)
    with Image.open(out.png) as img:
        assert img.size == (136, 96) and img.mode == "RGB"
    with rasterio.open(scene) as src, rasterio.open(out.geotiff) as pca, rasterio.open(out.features_tif) as f:
        assert pca.crs == src.crs == f.crs
        assert pca.count == 3 and pca.dtypes[0] == "uint8" and (pca.height, pca.width) == (12, 17)
        assert pca.res == (src.res[0] * 8, src.res[1] * 8) == (80.0, 80.0)
        assert (pca.transform.c, pca.transform.f) == (src.transform.c, src.transform.f)
        assert f.count == 32 and f.dtypes[0] == "float32" and f.transform == pca.transform
        np.testing.assert_allclose(
            f.read(), dense_features(enc, read_raster(scene, BANDS5).pixels), rtol=1e-6
        )
    # determinism: the same input gives byte-identical outputs
    again = viz_pca(enc, str(scene), tmp_path / "pca2.png", geotiff=tmp_path / "pca2.tif", window=32)
    assert out.png.read_bytes() == again.png.read_bytes()
    with rasterio.open(out.geotiff) as a, rasterio.open(again.geotiff) as b:
        assert np.array_equal(a.read(), b.read())


def test_raster_bands_read_by_name_or_count(enc, tmp_path):
    named = write_scene(tmp_path / "named.tif", height=32, width=32)
    unnamed = write_scene(tmp_path / "unnamed.tif", height=32, width=32, named=False)
    np.testing.assert_array_equal(read_raster(named, BANDS5).pixels, read_raster(unnamed, BANDS5).pixels)
    # by name: an RGB encoder picks red, green, blue from a named 5-band file
    rgb = read_raster(named, ("red", "green", "blue")).pixels
    np.testing.assert_array_equal(rgb, read_raster(named, BANDS5).pixels[[2, 1, 0]])
    # unnamed: only the count is known, so it must match
    with pytest.raises(BandMismatchError, match=r"expects 3 bands .* has 5 unnamed bands"):
        read_raster(unnamed, ("red", "green", "blue"))
    short = write_scene(tmp_path / "short.tif", height=32, width=32, count=3)
    with pytest.raises(BandMismatchError, match=r"missing \['nir', 'swir16'\]"):
        viz_pca(enc, str(short), tmp_path / "x.png")
    with pytest.raises(DataError, match="does not exist"):
        viz_pca(enc, str(tmp_path / "nope.tif"), tmp_path / "x.png")
