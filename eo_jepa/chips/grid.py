"""The chip plan: a fixed UTM grid of square chips covering each AOI.

The grid is global per UTM zone: chip origins are multiples of ``chip_size * gsd_m`` metres, so the
same place always gets the same ``location_id`` (whichever AOI asks for it). Sentinel-2 tile
origins (MGRS, e.g. 399960 m / 5000040 m) are multiples of 60 m, so 10 m and 20 m pixels line up with
chip edges whenever ``chip_size * gsd_m`` is a multiple of 20 m (60 m bands: of 60 m) and those reads
need no warping; other cases go through a WarpedVRT.
The UTM zone of a chip is that of its AOI's centroid (CRS helpers: :mod:`eo_jepa.chips.crs`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from eo_jepa.chips.aois import Aoi
from eo_jepa.chips.crs import reproject_geometry, utm_epsg

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Location:
    """One chip footprint on the grid (shared by all dates chosen for it)."""

    location_id: str
    aoi_id: str
    split: str
    label: str | None
    start: str
    end: str
    epsg: int
    x0: float  # upper-left corner, metres in the UTM zone
    y0: float
    gsd: float
    size: int
    footprint: Any  # shapely polygon, EPSG:4326

    @property
    def transform(self) -> tuple[float, float, float, float, float, float]:
        """Affine coefficients (a, b, c, d, e, f) as rasterio writes them."""
        return (self.gsd, 0.0, self.x0, 0.0, -self.gsd, self.y0)

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        span = self.gsd * self.size
        return (self.x0, self.y0 - span, self.x0 + span, self.y0)

    def to_dict(self) -> dict[str, Any]:
        out = dict(self.__dict__)
        out["footprint"] = self.footprint.wkt
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Location:
        from shapely import wkt

        return cls(**{**data, "footprint": wkt.loads(data["footprint"])})


@dataclass(frozen=True)
class Anchor:
    """Where an AOI's chip grid lies when it is snapped to a source's pixel grid (``grid.snap: source``):
    the source's CRS, and the offset of its pixel lattice from whole multiples of the chip span."""

    epsg: int
    x_offset: float
    y_offset: float


def source_anchor(epsg: int | None, transform: Sequence[float] | None, gsd_m: float) -> Anchor | None:
    """The :class:`Anchor` putting chip edges on the pixel edges of a north-up raster with ``transform``
    in ``epsg``; None when that cannot make pixels exact (rotated, unknown, or ``gsd_m`` not a whole
    multiple of the source pixel size)."""
    if (
        epsg is None
        or not transform
        or transform[1] != 0
        or transform[3] != 0
        or transform[4] != -transform[0]
    ):
        return None
    res = float(transform[0])
    ratio = gsd_m / res
    if res <= 0 or abs(ratio - round(ratio)) > 1e-6 or round(ratio) < 1:
        return None
    return Anchor(int(epsg), float(transform[2]) % res, float(transform[5]) % res)


def _coord(value: float) -> str:
    return str(round(value)) if abs(value - round(value)) < 1e-6 else f"{value:.3f}"


def plan_locations(
    aois: Sequence[Aoi], chip_size: int, gsd_m: float, anchors: dict[str, Anchor] | None = None
) -> list[Location]:
    """Grid cells intersecting each AOI, in AOI order then north-to-south, west-to-east.

    ``anchors``: per AOI id, a source grid to snap to (its CRS and pixel lattice) instead of the UTM
    zone of the AOI's centroid with origins on whole chip spans.

    A cell claimed by an earlier AOI is not repeated for a later one: its chips are built once, for
    the first AOI's date range. A later AOI over the same cells with another date range is warned
    about (its chips there would be the first AOI's dates); use separate builds for separate periods.
    """
    import numpy as np
    import shapely

    span = chip_size * gsd_m
    seen: dict[str, Aoi] = {}
    out: list[Location] = []
    for aoi in aois:
        anchor = (anchors or {}).get(aoi.aoi_id)
        centroid = aoi.geometry.centroid
        epsg = anchor.epsg if anchor else utm_epsg(centroid.x, centroid.y)
        ox, oy = (anchor.x_offset, anchor.y_offset) if anchor else (0.0, 0.0)
        geom = reproject_geometry(aoi.geometry, 4326, epsg)
        minx, miny, maxx, maxy = geom.bounds
        ix0, ix1 = math.floor((minx - ox) / span), math.ceil((maxx - ox) / span)
        iy0, iy1 = math.floor((miny - oy) / span), math.ceil((maxy - oy) / span)
        # every cell of the AOI's bounding box at once, north to south then west to east
        iy, ix = np.meshgrid(np.arange(iy1 - 1, iy0 - 1, -1), np.arange(ix0, ix1), indexing="ij")
        x0s, y0s = (ix.ravel() * span + ox).astype(float), ((iy.ravel() + 1) * span + oy).astype(float)
        cells = shapely.box(x0s, y0s - span, x0s + span, y0s)
        keep = shapely.area(shapely.intersection(cells, geom)) > 0
        footprints = reproject_geometry(shapely.segmentize(cells[keep], span / 8), epsg, 4326)
        shared: dict[str, tuple[Aoi, int]] = {}  # earlier AOI (other dates) -> cells it claimed
        for x0, y0, footprint in zip(x0s[keep].tolist(), y0s[keep].tolist(), footprints, strict=True):
            loc_id = f"{epsg}_{gsd_m:g}m_{chip_size}_{_coord(x0)}_{_coord(y0)}"
            first = seen.get(loc_id)
            if first is not None:
                if (first.start, first.end) != (aoi.start, aoi.end):
                    shared[first.aoi_id] = (first, shared.get(first.aoi_id, (first, 0))[1] + 1)
                continue
            seen[loc_id] = aoi
            out.append(
                Location(
                    location_id=loc_id,
                    aoi_id=aoi.aoi_id,
                    split=aoi.split,
                    label=aoi.label,
                    start=aoi.start,
                    end=aoi.end,
                    epsg=epsg,
                    x0=float(x0),
                    y0=float(y0),
                    gsd=float(gsd_m),
                    size=int(chip_size),
                    footprint=footprint,
                )
            )
        for other, n in shared.values():
            log.warning(
                "AOI %s (%s to %s) shares %d chip location(s) with AOI %s (%s to %s), which claimed them first: "
                "they are built once, with AOI %s's dates; build the other period separately to get both",
                aoi.aoi_id, aoi.start, aoi.end, n, other.aoi_id, other.start, other.end, other.aoi_id,
            )  # fmt: skip
    return out
