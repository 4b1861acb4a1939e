"""Read one chip of one STAC item: its windows, masked and harmonised, on the chip grid.

The three jobs of reading live in three modules: :mod:`eo_jepa.chips.sources` opens the COGs (GDAL
settings, per-thread open files, read errors), :mod:`eo_jepa.chips.windows` reads a chip's window
of an open dataset (or a prefetched row of them), and this module turns those windows into a chip:
the sensor's quality mask (:meth:`eo_jepa.bands.Sensor.mask_from`) and DN offset
(:meth:`eo_jepa.bands.Sensor.offset_for`) applied. Nothing here knows a sensor by name.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from rasterio.errors import RasterioError

from eo_jepa.bands import Sensor
from eo_jepa.chips.config import ChipConfig
from eo_jepa.chips.grid import Location
from eo_jepa.chips.sources import ReadError, SourceCache, gdal_env, is_transient
from eo_jepa.chips.windows import aligned_window, all_covered, read_to_grid
from eo_jepa.stac import ItemInfo

# Re-exported: the names callers of the chip reader use with it (quickstart: SourceCache, gdal_env).
__all__ = ["ChipRead", "ReadError", "SourceCache", "asset_groups", "cached_probe", "gdal_env", "read_chip"]


@dataclass
class ChipRead:
    """One chip read from one item."""

    item_id: str
    datetime: str
    pixels: np.ndarray | None  # (C, H, W) harmonised, sensor dtype; None for a mask-only read
    valid: np.ndarray  # (H, W) bool
    cloud_fraction: float
    nodata_fraction: float
    hrefs: list[str]
    offset: int
    offset_source: str = "none"  # what decided the offset (see Sensor.offset_for)
    warped: bool = False  # a band was reprojected/resampled through a WarpedVRT (not read on its own grid)
    mask: tuple[np.ndarray, np.ndarray] | None = None  # (no data, cloud) from the quality mask, for reuse

    @property
    def masked_fraction(self) -> float:
        return 1.0 - np.count_nonzero(self.valid) / self.valid.size  # == 1 - valid.mean(), exactly


_GROUPS: dict[tuple[str, tuple[str, ...], str], list[tuple[str, list[int], list[int]]]] = {}


def asset_groups(sensor: Sensor, bands: list[str], provider: str) -> list[tuple[str, list[int], list[int]]]:
    """(asset key, 1-based band indexes inside the asset, positions in the chip) grouped by asset."""
    key = (sensor.name, tuple(bands), provider)
    if key not in _GROUPS:
        _GROUPS[key] = _group_assets(sensor, bands, provider)
    return _GROUPS[key]


def _group_assets(sensor: Sensor, bands: list[str], provider: str) -> list[tuple[str, list[int], list[int]]]:
    groups: dict[str, tuple[list[int], list[int]]] = {}
    for pos, band in enumerate(sensor.resolve(bands)):
        idx, where = groups.setdefault(band.asset_key(provider), ([], []))
        idx.append(band.index)
        where.append(pos)
    return [(k, v[0], v[1]) for k, v in groups.items()]


class _NotCached(Exception):
    """A window :func:`cached_probe` needs is not in the cache."""


def cached_probe(item: ItemInfo, loc: Location, cfg: ChipConfig, cache: SourceCache) -> ChipRead | None:
    """``read_chip(..., mask_only=True)`` when every window it needs was prefetched into ``cache``
    (no I/O, no side effect); None otherwise (also for a missing asset or an href that failed)."""
    try:
        return _read_chip(item, loc, cfg, cache, mask_only=True, probe=None, cached_only=True)
    except (_NotCached, ReadError):
        return None


def read_chip(
    item: ItemInfo,
    loc: Location,
    cfg: ChipConfig,
    cache: SourceCache,
    *,
    mask_only: bool = False,
    probe: ChipRead | None = None,
) -> ChipRead:
    """Read (and mask, harmonise) one chip of ``loc`` from ``item``; ReadError if an asset fails.

    ``mask_only``: read just the quality mask (:meth:`Sensor.mask_key`) to score the scene; sensors
    without a mask are read in full. ``probe``: an earlier mask-only read of the same chip whose mask is reused.
    """
    return _read_chip(item, loc, cfg, cache, mask_only=mask_only, probe=probe, cached_only=False)


def _read_chip(
    item: ItemInfo,
    loc: Location,
    cfg: ChipConfig,
    cache: SourceCache,
    *,
    mask_only: bool,
    probe: ChipRead | None,
    cached_only: bool,
) -> ChipRead:
    sensor = cfg.sensor_info
    provider = cfg.stac.provider
    size = loc.size
    hrefs: list[str] = list(probe.hrefs) if probe is not None and probe.mask is not None else []
    warped: list[str] = []

    def asset_href(key: str) -> str:
        asset = item.assets.get(key)
        if asset is None:
            raise ReadError(f"item {item.id} has no asset {key!r}")
        hrefs.append(asset.href)
        return asset.href

    def read(key: str, indexes: list[int], resampling: str) -> tuple[np.ndarray, np.ndarray]:
        href = asset_href(key)
        window = cache.window(href, indexes, resampling, loc)
        if window is not None:
            return window, all_covered(size)
        if cached_only:
            raise _NotCached
        source = cache.open(href)
        try:
            if aligned_window(source.transform, source.epsg, loc) is None:
                warped.append(key)  # another CRS or off the chip grid's lattice: reprojected/resampled
            return read_to_grid(
                source.dataset, indexes, loc, resampling, epsg=source.epsg, transform=source.transform
            )
        except (RasterioError, OSError) as exc:
            error = ReadError(f"cannot read {href}: {exc}", transient=is_transient(str(exc)))
            cache.fail(href, error)
            raise error from None

    full = all_covered(size)
    mask_key = sensor.mask_key(provider)
    mask = None
    if probe is not None and probe.mask is not None:
        mask = probe.mask
    elif mask_key is not None:
        (values,), covered = read(mask_key, [1], "nearest")
        no_data, cloud = sensor.mask_from(values, cfg.mask_classes)
        if covered is not full:
            no_data = no_data | ~covered
        mask = (no_data, cloud)
    nodata = mask[0] if mask is not None else np.zeros((size, size), dtype=bool)  # not written to
    pixels = None
    offset, offset_source = 0, "none"
    if not (mask_only and mask_key is not None):
        raw = np.empty((len(cfg.bands), size, size), dtype=sensor.dtype)  # every band is assigned
        for key, indexes, positions in asset_groups(sensor, cfg.bands, provider):
            data, covered = read(key, indexes, cfg.resampling)
            if len(positions) == 1:
                raw[positions[0]] = data[0]
            else:
                raw[positions] = data
            if covered is not full:
                nodata = nodata | ~covered
        if sensor.nodata is not None:
            nodata = nodata | (raw == sensor.nodata).any(axis=0)
        offset, offset_source = sensor.offset_for(item, cfg.harmonize)
        pixels = _add_offset(raw, offset)
    cloud = mask[1] & ~nodata if mask is not None else np.zeros((size, size), dtype=bool)
    valid = ~(nodata | cloud)
    n = float(size * size)
    return ChipRead(
        item_id=item.id,
        datetime=item.datetime,
        pixels=pixels,
        valid=valid,
        cloud_fraction=np.count_nonzero(cloud) / n,
        nodata_fraction=np.count_nonzero(nodata) / n,
        hrefs=hrefs,
        offset=offset,
        offset_source=offset_source,
        warped=bool(warped) and pixels is not None,
        mask=mask,
    )


def _add_offset(raw: np.ndarray, offset: int) -> np.ndarray:
    """``raw + offset`` clipped to the unsigned dtype's range, in that dtype (a negative offset in place)."""
    if offset < 0:  # DN - |offset|, clipped at 0, without leaving the unsigned dtype
        pixels = np.maximum(raw, -offset, out=raw)
        pixels -= raw.dtype.type(-offset)
        return pixels
    if offset > 0:
        return np.clip(raw.astype(np.int64) + offset, 0, np.iinfo(raw.dtype).max).astype(raw.dtype)
    return raw
