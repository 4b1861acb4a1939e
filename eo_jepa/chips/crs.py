"""Coordinate reference systems: the UTM zone of a place and reprojection of shapely geometries.

A leaf module (no eo_jepa imports): AOI loading (:mod:`eo_jepa.chips.aois`, which buffers points
in metres) and the chip grid (:mod:`eo_jepa.chips.grid`) both use it.
"""

from __future__ import annotations

import functools
import math
from typing import Any


@functools.lru_cache(maxsize=32)
def _transformer(src_epsg: int, dst_epsg: int) -> Any:
    from pyproj import Transformer

    return Transformer.from_crs(src_epsg, dst_epsg, always_xy=True)  # ~0.2 ms to make


def reproject_geometry(geom: Any, src_epsg: int, dst_epsg: int) -> Any:
    """A shapely geometry (or array of them) transformed between two CRSs (x = easting/longitude first)."""
    import shapely

    fn = _transformer(src_epsg, dst_epsg).transform
    return shapely.transform(geom, lambda x, y: fn(x, y), interleaved=False)


def utm_epsg(lon: float, lat: float) -> int:
    """EPSG code of the WGS84 UTM zone holding (lon, lat): 326zz north, 327zz south."""
    zone = min(max(math.floor((lon + 180.0) / 6.0) + 1, 1), 60)
    return (32600 if lat >= 0 else 32700) + zone
