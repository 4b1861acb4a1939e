"""Window reads: the pixels of one chip (or a row of chips) of an open dataset, on the chip grid.

Hot path: when an asset is in the chip's UTM zone and its pixel grid lines up with the chip edges
(Sentinel-2 10/20 m bands on our grid), we read exactly the chip's window with rasterio (GDAL fetches
only the COG tiles it touches) and let GDAL resample coarser bands to the chip grid with ``out_shape``
(bilinear or nearest, ``ChipConfig.resampling``; quality masks always nearest). Anything else (another
UTM zone, unaligned grids, 60 m bands) goes through a :class:`rasterio.vrt.WarpedVRT` whose output grid
is the chip itself, so it too reads only the source blocks under the chip. Whole scenes are never read.
The builder first :func:`prefetch`-es a task's aligned windows a row of adjacent chips at a time (one
GDAL call instead of one per chip; identical pixels), and the chip reader takes them from there.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
from affine import Affine
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.errors import RasterioError
from rasterio.vrt import WarpedVRT
from rasterio.windows import Window

from eo_jepa.chips.grid import Location
from eo_jepa.chips.sources import ReadError, SourceCache


def _as_int(value: float) -> int | None:
    r = round(value)
    return int(r) if abs(value - r) < 1e-6 else None


@functools.lru_cache(maxsize=8)
def all_covered(size: int) -> np.ndarray:
    """A shared read-only all-True (size, size) mask."""
    out = np.ones((size, size), dtype=bool)
    out.flags.writeable = False
    return out


def aligned_window(t: Any, epsg: int | None, loc: Location) -> tuple[int, int, int] | None:
    """(col, row, n): the chip of ``loc`` is the n x n pixel window at (col, row) of a raster with
    transform ``t`` in ``epsg`` (possibly reaching outside it); None when the grids do not line up."""
    if epsg is None or epsg != loc.epsg or t.b != 0 or t.d != 0 or t.e != -t.a:
        return None
    res = t.a
    col, row, n = (
        _as_int((loc.x0 - t.c) / res),
        _as_int((t.f - loc.y0) / res),
        _as_int(loc.size * loc.gsd / res),
    )
    if col is None or row is None or n is None or n <= 0:
        return None
    return col, row, n


def read_to_grid(
    ds: Any,
    indexes: list[int],
    loc: Location,
    resampling: str,
    *,
    epsg: int | None = None,
    transform: Any = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Bands ``indexes`` of ``ds`` on the chip grid of ``loc``: (data (k, H, W), covered (H, W) bool).

    ``epsg``, ``transform``: the dataset's EPSG code and transform when the caller knows them already
    (else looked up).
    """
    alg = Resampling[resampling]
    size = loc.size
    if epsg is None and ds.crs is not None:
        epsg = ds.crs.to_epsg()
    aligned = aligned_window(ds.transform if transform is None else transform, epsg, loc)
    if aligned is not None:
        col, row, n = aligned
        c0, r0 = max(col, 0), max(row, 0)
        c1, r1 = min(col + n, ds.width), min(row + n, ds.height)
        if (c0, r0, c1, r1) == (col, row, col + n, row + n):  # wholly inside: the common case
            data = ds.read(
                indexes, window=Window(col, row, n, n), out_shape=(len(indexes), size, size), resampling=alg
            )
            return data, all_covered(size)
        out = np.zeros((len(indexes), size, size), dtype=ds.dtypes[0])
        covered = np.zeros((size, size), dtype=bool)
        if c1 <= c0 or r1 <= r0:
            return out, covered
        # Chip-pixel offsets of the clipped window; must be whole pixels to place without warping.
        oc0, or0 = _as_int((c0 - col) * size / n), _as_int((r0 - row) * size / n)
        oc1, or1 = _as_int((c1 - col) * size / n), _as_int((r1 - row) * size / n)
        if None not in (oc0, or0, oc1, or1):
            assert oc0 is not None and or0 is not None and oc1 is not None and or1 is not None
            out[:, or0:or1, oc0:oc1] = ds.read(
                indexes,
                window=Window(c0, r0, c1 - c0, r1 - r0),
                out_shape=(len(indexes), or1 - or0, oc1 - oc0),
                resampling=alg,
            )
            covered[or0:or1, oc0:oc1] = True
            return out, covered
    return _warp(ds, indexes, loc, alg)


def _warp(ds: Any, indexes: list[int], loc: Location, alg: Any) -> tuple[np.ndarray, np.ndarray]:
    with WarpedVRT(
        ds,
        crs=CRS.from_epsg(loc.epsg),
        transform=Affine(*loc.transform),
        width=loc.size,
        height=loc.size,
        resampling=alg,
        add_alpha=True,
    ) as vrt:
        data = vrt.read(indexes)
        covered = vrt.read(vrt.count) > 0
    return data, covered


def prefetch(
    cache: SourceCache, href: str, indexes: list[int], resampling: str, locs: list[Location]
) -> None:
    """Read the chip windows of ``locs`` from ``href`` with one windowed read per row of adjacent chips
    and keep them in ``cache`` for the chip reader (until the task ends).

    A windowed read costs about the same for one chip as for a row of them (GDAL's per-call and
    rasterio's per-call overhead dominate once the COG blocks are decoded), so this is most of the
    builder's read cost saved. The result is identical to chip-by-chip reads: only chips whose window
    lies wholly inside the raster on an aligned grid are batched, and a wider window at the same
    scale gives the same pixels for nearest and bilinear resampling (GDAL takes the resampling kernel's
    source pixels from beyond the window edge either way; tests/test_chips_build.py checks it).
    Speculative: any failure (open, decode) just leaves the chips to be read one by one as before.
    """
    if len(locs) < 2 or href in cache.failed:
        return
    try:
        source = cache.open(href, remember_failure=False)
    except ReadError:
        return
    ds = source.dataset
    rows: dict[tuple[int, int, int], list[tuple[int, Location]]] = {}
    for loc in locs:
        aligned = aligned_window(source.transform, source.epsg, loc)
        if aligned is None:
            continue
        col, row, n = aligned
        if col >= 0 and row >= 0 and col + n <= ds.width and row + n <= ds.height:
            rows.setdefault((row, n, loc.size), []).append((col, loc))
    found: dict[str, int] = {}
    parts: list[np.ndarray] = []
    width = 0
    for (row, n, size), members in rows.items():
        members.sort(key=lambda m: m[0])
        start = 0
        for i in range(1, len(members) + 1):  # runs of horizontally adjacent chips
            if i < len(members) and members[i][0] == members[i - 1][0] + n:
                continue
            run, start = members[start:i], i
            if len(run) < 2:
                continue
            try:
                data = ds.read(
                    indexes,
                    window=Window(run[0][0], row, n * len(run), n),
                    out_shape=(len(indexes), size, size * len(run)),
                    resampling=Resampling[resampling],
                )
            except (RasterioError, OSError):
                return
            for j, (_, loc) in enumerate(run):
                found[loc.location_id] = width + j * size
            parts.append(data)
            width += data.shape[2]
    if parts and len({p.shape[1] for p in parts}) == 1:
        data = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=2)
        cache.keep_windows((href, tuple(indexes), resampling), data, found)
