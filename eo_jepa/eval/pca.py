"""PCA → RGB of dense feature maps, on one chip or on a whole raster with sliding windows.

The three leading principal components of the patch features (fitted on valid patches) become
red, green and blue, each stretched between its 1st and 99th percentile. Signs follow
scikit-learn's deterministic convention, so the same features always give the same colours.
On a raster, the PCA image and optionally the full feature map are also written as GeoTIFFs on
the patch grid: same CRS and origin, pixel size = input pixel size × patch size.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from eo_jepa.chips import ChipDataset
from eo_jepa.errors import DataError
from eo_jepa.eval.features import band_selection, dense_features
from eo_jepa.eval.raster import (
    feature_transform,
    preview_factor,
    read_raster,
    upsample,
    write_geotiff,
    write_png,
)

log = logging.getLogger(__name__)


def pca_components(features: np.ndarray, valid: np.ndarray | None = None, n: int = 3) -> np.ndarray:
    """The first ``n`` principal-component scores of a (D, h, w) feature map: (n, h, w) float32."""
    from sklearn.decomposition import PCA

    d, h, w = features.shape
    flat = features.reshape(d, -1).T.astype(np.float64)
    mask = np.ones(h * w, bool) if valid is None else valid.reshape(-1)
    if mask.sum() < 2:
        raise DataError("The feature map has fewer than 2 valid patches; PCA needs more valid pixels.")
    n = min(n, d, int(mask.sum()))
    pca = PCA(n_components=n, svd_solver="full").fit(flat[mask])
    scores = pca.transform(flat).T.reshape(n, h, w)
    if n < 3:
        scores = np.concatenate([scores, np.zeros((3 - n, h, w))])
    return scores.astype(np.float32)


def to_rgb(scores: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """(3, h, w) scores → (h, w, 3) uint8, each channel stretched between its 1st and 99th percentile."""
    out = np.zeros((*scores.shape[1:], 3), np.uint8)
    mask = np.ones(scores.shape[1:], bool) if valid is None else valid
    for c in range(3):
        lo, hi = np.percentile(scores[c][mask], [1, 99])
        scaled = (scores[c] - lo) / (hi - lo) if hi > lo else np.zeros_like(scores[c])
        out[..., c] = np.round(np.clip(scaled, 0, 1) * 255).astype(np.uint8)
    out[~mask] = 0
    return out


def patch_validity(
    valid: np.ndarray, patch: int, grid: tuple[int, int], min_fraction: float = 0.5
) -> np.ndarray:
    """A patch is valid when at least ``min_fraction`` of its input pixels are valid."""
    gh, gw = grid
    padded = np.zeros((gh * patch, gw * patch), bool)
    padded[: valid.shape[0], : valid.shape[1]] = valid[: gh * patch, : gw * patch]
    frac = padded.reshape(gh, patch, gw, patch).mean(axis=(1, 3))
    return frac >= min_fraction


def pca_map(
    encoder: Any, pixels: np.ndarray, valid: np.ndarray | None = None, **dense_kw: Any
) -> tuple[np.ndarray, np.ndarray]:
    """PCA→RGB (h, w, 3) uint8 and the dense features (D, h, w) of raw ``pixels`` (C, H, W).

    The PCA is fitted on patches that are at least half valid (all patches when fewer than two are).
    ``dense_kw`` goes to :func:`~eo_jepa.eval.features.dense_features` (window, stride, device, ...).
    """
    feats = dense_features(encoder, pixels, **dense_kw)
    grid = feats.shape[1:]
    pvalid = np.ones(grid, bool) if valid is None else patch_validity(valid, int(encoder.patch_size), grid)
    if pvalid.sum() < 2:
        pvalid = np.ones(grid, bool)
    return to_rgb(pca_components(feats, pvalid), pvalid), feats


@dataclass
class PcaOutputs:
    png: Path
    geotiff: Path | None
    features_tif: Path | None
    grid_shape: tuple[int, int]


def parse_input(spec: str) -> tuple[Path, str | None]:
    """``path`` or ``chipstore_dir:index`` (index: a dataset position or a chip id)."""
    path = Path(spec)
    if path.exists():
        return path, None
    head, sep, tail = spec.rpartition(":")
    if sep and Path(head).is_dir():
        return Path(head), tail
    raise DataError(f"Input {spec!r} does not exist; pass a GeoTIFF or a chip store as DIR or DIR:INDEX.")


def load_chip(store: Path, key: str | None, model_bands: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Pixels (the model's bands) and valid mask of one chip of a chip store (position or chip id)."""
    ds = ChipDataset(store)
    if key is None or key.isdigit():
        pos = int(key or 0)
        if not 0 <= pos < len(ds):
            raise DataError(
                f"Chip index {pos} is out of range; the store {str(store)!r} has {len(ds)} chips."
            )
    else:
        ids = ds.index["chip_id"].astype(str).tolist()  # dataset order
        if key not in ids:
            raise DataError(
                f"Chip id {key!r} is not in the store {str(store)!r}; pass a position or a chip id."
            )
        pos = ids.index(key)
    item = ds[pos]
    sel = band_selection(model_bands, tuple(ds.bands), what=f"chip store {str(store)!r}")
    pixels = np.asarray(item["pixels"], np.float32)
    return (pixels if sel is None else pixels[sel]), np.asarray(item["valid"], bool)


def viz_pca(
    encoder: Any,
    input_spec: str,
    out_png: str | Path,
    *,
    geotiff: str | Path | None = None,
    features_tif: str | Path | None = None,
    window: int | None = None,
    stride: int | None = None,
    batch_size: int = 16,
    device: str | None = None,
    bf16: bool = False,
) -> PcaOutputs:
    """PCA→RGB PNG of a raster or a chip (``DIR[:INDEX]``); on rasters also the GeoTIFF(s).

    The PNG has the input's size (patch grid upsampled by the patch size, capped at 4096 px a side).
    For a raster the PCA GeoTIFF defaults to ``<out_png stem>.tif``.
    """
    path, key = parse_input(input_spec)
    p = int(encoder.patch_size)
    is_store = path.is_dir()
    if is_store:
        pixels, valid = load_chip(path, key, tuple(encoder.bands))
        raster = None
    else:
        raster = read_raster(path, tuple(encoder.bands))
        pixels, valid = raster.pixels, raster.valid
    rgb, feats = pca_map(
        encoder, pixels, valid, window=window, stride=stride, batch_size=batch_size, device=device, bf16=bf16
    )
    grid = feats.shape[1:]
    h, w = pixels.shape[-2:]
    factor = preview_factor(grid, p)
    png = write_png(out_png, upsample(rgb, factor, h if factor == p else None, w if factor == p else None))
    tif_path = feats_path = None
    if raster is not None:
        transform = feature_transform(raster.transform, p)
        tif_path = write_geotiff(
            geotiff or Path(out_png).with_suffix(".tif"),
            rgb.transpose(2, 0, 1),
            crs=raster.crs,
            transform=transform,
            descriptions=("pc1", "pc2", "pc3"),
        )
        if features_tif is not None:
            feats_path = write_geotiff(
                features_tif, feats.astype(np.float32), crs=raster.crs, transform=transform
            )
    log.info("PCA map %s (patch grid %dx%d)", png, *grid)
    return PcaOutputs(png, tif_path, feats_path, (int(grid[0]), int(grid[1])))
