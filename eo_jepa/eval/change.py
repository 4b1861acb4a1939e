"""Per-patch change maps: cosine distance between the dense features of two dates.

``distance = 1 - cos(f_before, f_after)`` per patch (0: same content, up to 2: opposite), the
change-detection use described in the LeJEPA ViT-S/8 Sentinel-2 model card. The two rasters must
share CRS, transform and size (co-registered acquisitions of one tile). Patches with fewer than
half of their pixels valid on either date are NaN (nodata).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from eo_jepa.errors import DataError
from eo_jepa.eval.features import dense_features
from eo_jepa.eval.pca import patch_validity
from eo_jepa.eval.raster import (
    feature_transform,
    preview_factor,
    read_raster,
    upsample,
    write_geotiff,
    write_png,
)

log = logging.getLogger(__name__)


def cosine_distance_map(before: np.ndarray, after: np.ndarray) -> np.ndarray:
    """1 - cosine similarity along the channel axis of two (D, h, w) maps: (h, w) float32."""
    a = before.astype(np.float64)
    b = after.astype(np.float64)
    num = (a * b).sum(0)
    den = np.linalg.norm(a, axis=0) * np.linalg.norm(b, axis=0)
    return (1.0 - num / np.maximum(den, 1e-12)).astype(np.float32)


def colorize(distance: np.ndarray, vmax: float | None = None, cmap: str = "magma") -> np.ndarray:
    """(h, w) distances → (h, w, 4) uint8 RGBA; NaN is transparent."""
    from matplotlib import colormaps

    finite = np.isfinite(distance)
    top = vmax if vmax is not None else (float(np.percentile(distance[finite], 99)) if finite.any() else 1.0)
    scaled = np.clip(np.nan_to_num(distance) / max(top, 1e-6), 0, 1)
    rgba = (colormaps[cmap](scaled) * 255).round().astype(np.uint8)
    rgba[~finite] = 0
    return rgba


@dataclass
class ChangeOutputs:
    geotiff: Path
    png: Path
    mean_distance: float
    grid_shape: tuple[int, int]


def change_map(
    encoder: Any,
    before: str | Path,
    after: str | Path,
    out_tif: str | Path,
    *,
    png: str | Path | None = None,
    window: int | None = None,
    stride: int | None = None,
    batch_size: int = 16,
    device: str | None = None,
    bf16: bool = False,
) -> ChangeOutputs:
    """Write the per-patch cosine-distance GeoTIFF (float32, NaN nodata) and a PNG preview."""
    bands = tuple(encoder.bands)
    a = read_raster(before, bands)
    b = read_raster(after, bands)
    if a.crs != b.crs or a.pixels.shape != b.pixels.shape or not a.transform.almost_equals(b.transform):
        raise DataError(
            f"Rasters {str(before)!r} and {str(after)!r} are not co-registered (CRS {a.crs} vs {b.crs}, size "
            f"{a.pixels.shape[1:]} vs {b.pixels.shape[1:]}); warp one onto the other's grid first."
        )
    kw = dict(window=window, stride=stride, batch_size=batch_size, device=device, bf16=bf16)
    fa = dense_features(encoder, a.pixels, **kw)
    fb = dense_features(encoder, b.pixels, **kw)
    p = int(encoder.patch_size)
    grid = fa.shape[1:]
    distance = cosine_distance_map(fa, fb)
    valid = patch_validity(a.valid, p, grid) & patch_validity(b.valid, p, grid)
    distance[~valid] = np.nan
    tif = write_geotiff(
        out_tif,
        distance,
        crs=a.crs,
        transform=feature_transform(a.transform, p),
        nodata=float("nan"),
        descriptions=("cosine_distance",),
    )
    h, w = a.pixels.shape[-2:]
    factor = preview_factor(grid, p)
    preview = upsample(colorize(distance), factor, h if factor == p else None, w if factor == p else None)
    png_path = write_png(png or Path(out_tif).with_suffix(".png"), preview)
    mean = float(np.nanmean(distance)) if np.isfinite(distance).any() else float("nan")
    log.info("change map %s: mean cosine distance %.4f over %dx%d patches", tif, mean, *grid)
    return ChangeOutputs(tif, png_path, mean, (int(grid[0]), int(grid[1])))
