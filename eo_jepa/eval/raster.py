"""Reading rasters for an encoder and writing georeferenced outputs (GeoTIFF, PNG).

A raster's bands are matched to the encoder by name when the band descriptions carry names
(canonical ``red`` or the sensor label ``B04``); otherwise the file is taken to hold the
encoder's bands in the encoder's order and only the count is checked. Pixel values are used as
they are: pass the same harmonised units the encoder was trained on (e.g. Sentinel-2 L2A with
the processing-baseline 04.00 offset removed, as in our chip stores).
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from eo_jepa.errors import DataError
from eo_jepa.eval.datasets import raster_band_names
from eo_jepa.eval.features import band_selection, check_channels
from eo_jepa.utils.geotiff import write_geotiff as write_geotiff  # the one GeoTIFF writer, re-exported
from eo_jepa.utils.io import atomic_write_bytes


@dataclass
class RasterInput:
    pixels: np.ndarray  # (C, H, W) float32, the encoder's bands in its order
    valid: np.ndarray  # (H, W) bool
    crs: Any  # rasterio CRS or None
    transform: Any  # affine.Affine
    path: str


def read_raster(path: str | Path, model_bands: Sequence[str]) -> RasterInput:
    """The encoder's bands of a raster (by name when the bands are named), its mask and georeference."""
    import rasterio

    path = str(path)
    if not Path(path).is_file():
        raise DataError(f"Raster {path!r} does not exist; pass a GeoTIFF path.")
    try:
        with rasterio.open(path) as src:
            names = raster_band_names(src.descriptions)
            if names is None:
                check_channels(model_bands, src.count, what=f"raster {path!r}")
                index = list(range(src.count))
            else:
                sel = band_selection(model_bands, names, what=f"raster {path!r}")
                index = list(range(len(names))) if sel is None else sel
            pixels = src.read([i + 1 for i in index]).astype(np.float32)
            valid = src.read_masks([i + 1 for i in index]).min(axis=0) > 0
            return RasterInput(pixels, valid, src.crs, src.transform, path)
    except rasterio.errors.RasterioIOError as exc:
        raise DataError(f"Cannot read raster {path!r} ({exc}); pass a readable GeoTIFF.") from exc


def feature_transform(transform: Any, patch_size: int) -> Any:
    """Georeference of a patch grid: same origin, pixel size = input pixel size × patch size."""
    from affine import Affine

    return transform @ Affine.scale(patch_size)


def upsample(
    grid: np.ndarray, factor: int, height: int | None = None, width: int | None = None
) -> np.ndarray:
    """Nearest-neighbour upsampling of (h, w[, c]) by ``factor``, cropped to ``height`` × ``width``."""
    out = np.repeat(np.repeat(grid, factor, axis=0), factor, axis=1)
    return out[: height or out.shape[0], : width or out.shape[1]]


def preview_factor(grid_shape: tuple[int, int], patch_size: int, max_side: int = 4096) -> int:
    """Upsampling factor for a PNG preview: the patch size, capped so no side exceeds ``max_side``."""
    return max(1, min(patch_size, max_side // max(grid_shape)))


def write_png(path: str | Path, rgb: np.ndarray) -> Path:
    """Write an (H, W, 3|4) uint8 or (H, W) array as PNG, atomically."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb)).save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)
