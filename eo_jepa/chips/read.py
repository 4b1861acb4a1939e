"""Windowed reads of one chip from one STAC item: mask, harmonise, resample onto the chip grid.

Hot path: when an asset is in the chip's UTM zone and its pixel grid lines up with the chip edges
(Sentinel-2 10/20 m bands on our grid), we read exactly the chip's window with rasterio (GDAL fetches
only the COG tiles it touches) and let GDAL resample coarser bands to the chip grid with ``out_shape``
(bilinear or nearest, ``ChipConfig.resampling``; the SCL mask always nearest). Anything else (another
UTM zone, unaligned grids, 60 m bands) goes through a :class:`rasterio.vrt.WarpedVRT` whose output grid
is the chip itself, so it too reads only the source blocks under the chip. Whole scenes are never read.
The builder first :func:`prefetch`-es a task's aligned windows a row of adjacent chips at a time (one
GDAL call instead of one per chip; identical pixels), and ``read_chip`` slices them from there.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

import numpy as np

from eo_jepa.bands import Sensor
from eo_jepa.chips.config import ChipConfig
from eo_jepa.chips.grid import Location
from eo_jepa.stac import ItemInfo

log = logging.getLogger(__name__)

# GDAL settings for COGs over HTTP (/vsicurl): no directory listings (one GET per file, not per
# sidecar guess), only raster extensions probed, merged range requests, retries on 429/5xx.
GDAL_ENV = {
    "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
    "CPL_VSIL_CURL_ALLOWED_EXTENSIONS": ".tif,.TIF,.tiff,.TIFF,.jp2,.vrt",
    "GDAL_HTTP_MAX_RETRY": "4",
    "GDAL_HTTP_RETRY_DELAY": "0.5",
    "GDAL_HTTP_TIMEOUT": "30",
    "GDAL_HTTP_MERGE_CONSECUTIVE_RANGES": "YES",
    "GDAL_HTTP_MULTIPLEX": "YES",
    "GDAL_HTTP_VERSION": "2",
    "VSI_CACHE": "TRUE",
    "VSI_CACHE_SIZE": str(64 << 20),
    # Bytes: rasterio hands an int straight to GDALSetCacheMax64, so 256 would mean 256 bytes (no block
    # cache at all: every 128 px chip would decode its whole 256 px COG block again).
    "GDAL_CACHEMAX": 256 << 20,
    "GDAL_NUM_THREADS": "1",
}


class ReadError(Exception):
    """An asset could not be opened or decoded (corrupt, truncated or unreachable COG).

    ``transient``: the failure says "unreadable right now" (a timeout, a refused or reset connection,
    HTTP 429/5xx), not "bad data" (corrupt file, 404, missing asset): the build retries such chips
    on ``--resume`` instead of recording them as rejected.
    """

    def __init__(self, message: str, *, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


# GDAL/curl messages of failures that may succeed later (network, overload), not of bad data.
_TRANSIENT = re.compile(
    r"CURL error|HTTP response code: (?:408|429|5\d\d)|timed? ?out|Could not resolve|Couldn't connect|"
    r"Connection (?:refused|reset)|Failed to connect|Empty reply",
    re.IGNORECASE,
)


def is_transient(message: str) -> bool:
    return _TRANSIENT.search(message) is not None


def http_options(timeout_s: float, retries: int, backoff_s: float) -> dict[str, str]:
    """GDAL's HTTP settings for COG reads from the build's ``stac`` config: every transfer bounded
    (curl's total timeout: a dripping host cannot stretch it), a bounded number of retries."""
    seconds = str(max(1, math.ceil(timeout_s)))  # GDAL reads whole seconds
    return {
        "GDAL_HTTP_TIMEOUT": seconds,
        "GDAL_HTTP_CONNECTTIMEOUT": seconds,
        "GDAL_HTTP_MAX_RETRY": str(int(retries)),
        "GDAL_HTTP_RETRY_DELAY": f"{backoff_s:g}",
    }


def gdal_env(**extra: Any) -> Any:
    import rasterio

    return rasterio.Env(**{**GDAL_ENV, **extra})


# Hosts whose reads failed transiently in this process: (monotonic time, message) by scheme://host.
# Their other hrefs fail fast (as transient) for HOST_DOWN_S instead of each waiting for a timeout.
_DOWN_HOSTS: dict[str, tuple[float, str]] = {}
HOST_DOWN_S = 30.0


def forget_down_hosts() -> None:
    """Try every host again (a new build in this process: a host down during the last one may be back)."""
    _DOWN_HOSTS.clear()


def host_of(href: str) -> str | None:
    """scheme://host[:port] of a URL (the unit a network failure is reported in); None for files."""
    if "://" not in href:
        return None
    parsed = urlparse(href)
    return f"{parsed.scheme}://{parsed.netloc}"


_HANDLES = threading.local()  # per-thread LRU of open datasets, reused across tasks
MAX_OPEN = 256
HANDLE_TTL_S = 600.0  # well inside a Planetary Computer SAS token's lifetime (~45 min)
RECHECK_S = 5.0  # an open handle's age and file are checked again after this long (a stat: ~40 us)


def _per_thread(name: str, factory: Callable[[], Any]) -> Any:
    """This thread's ``name`` attribute of :data:`_HANDLES`, created by ``factory`` on first use."""
    value = getattr(_HANDLES, name, None)
    if value is None:
        value = factory()
        setattr(_HANDLES, name, value)
    return value


def _handles() -> OrderedDict[str, tuple[Any, float, tuple[int, int] | None]]:
    """This thread's open datasets (dataset, time opened, file stamp), least recently used first."""
    return _per_thread("cache", OrderedDict)


def _file_stamp(href: str) -> tuple[int, int] | None:
    """(mtime, size) of a local file, to notice a file replaced since it was opened; None for URLs."""
    if "://" in href:
        return None
    try:
        st = os.stat(href)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size)


_ENV = threading.local()  # per-thread GDAL settings kept entered between tasks


def enter_gdal_env(http: dict[str, str] | None = None) -> None:
    """Enter the builder's GDAL settings (``http``: :func:`http_options`) in this thread and keep them
    until :func:`close_cached_datasets`.

    Leaving a ``rasterio.Env`` restores ``GDAL_CACHEMAX``, which empties GDAL's block cache; with one
    Env per task, COG blocks shared by neighbouring tasks (a 256 px block holds four 128 px chips)
    would be decoded again by every task. Kept entered, a decoded block serves every chip in it.
    """
    http = http or {}
    if getattr(_ENV, "env", None) is not None and getattr(_ENV, "http", None) != http:
        close_cached_datasets()  # another build's settings: handles opened under the old ones go too
    if getattr(_ENV, "env", None) is None:
        env = gdal_env(**http)
        env.__enter__()
        _ENV.env, _ENV.http = env, http


def _checks() -> dict[str, float]:
    """This thread's time (monotonic) each handle in :func:`_handles` was last checked, by href."""
    return _per_thread("checked", dict)


def forget_checks() -> None:
    """Check every reused handle again on its next use (called when a batch of tasks starts)."""
    _checks().clear()


def _epsg_codes() -> dict[str, tuple[Any, int | None]]:
    """This thread's (transform, EPSG code) of each open dataset in :func:`_handles`, by href."""
    return _per_thread("epsg", dict)


def close_cached_datasets() -> None:
    """Close this thread's reusable open datasets and leave the GDAL settings entered by a build."""
    _epsg_codes().clear()
    _checks().clear()
    cache = _handles()
    while cache:
        cache.popitem(last=False)[1][0].close()
    env = getattr(_ENV, "env", None)
    if env is not None:
        _ENV.env = None
        env.__exit__(None, None, None)


class SourceCache:
    """Open datasets by href for one task; remembers hrefs that failed so they are tried once.

    Handles are kept in a small per-thread LRU across tasks (opening a COG costs a header read, over
    HTTP a round trip), re-opened after ``HANDLE_TTL_S`` (signed URLs expire) or when a local file
    changed; checked on first use in a batch of tasks (:func:`forget_checks`) and every ``RECHECK_S``.
    ``sign`` is applied to an href right before it is opened.
    """

    def __init__(self, sign: Callable[[str], str] | None = None) -> None:
        self._sign = sign or (lambda href: href)
        self._open = _handles()
        self._epsg = _epsg_codes()
        self._checked = _checks()
        self.failed: dict[str, ReadError] = {}
        # (href, band indexes, resampling) -> (data (k, size, width), {location_id: first column}):
        # windows of several chips read at once by :func:`prefetch`, for this task only
        self._windows: dict[tuple[str, tuple[int, ...], str], tuple[np.ndarray, dict[str, int]]] = {}

    def geo(self, href: str, ds: Any) -> tuple[Any, int | None]:
        """(transform, EPSG code) of the open dataset ``ds`` of ``href``, looked up once per open
        dataset (``CRS.to_epsg`` costs ~30 us a call, ``ds.transform`` builds a new Affine)."""
        geo = self._epsg.get(href)
        if geo is None:
            geo = self._epsg[href] = (ds.transform, ds.crs.to_epsg() if ds.crs is not None else None)
        return geo

    def open(self, href: str, *, remember_failure: bool = True) -> Any:
        """The open dataset of ``href``; ReadError if it cannot be opened (remembered for the task
        unless ``remember_failure`` is False: a speculative :func:`prefetch` must change nothing)."""
        import rasterio
        from rasterio.errors import RasterioError

        if href in self.failed:
            raise self.failed[href]
        host = host_of(href)
        down = _DOWN_HOSTS.get(host) if host is not None else None
        if down is not None:
            if time.monotonic() - down[0] < HOST_DOWN_S:
                error = ReadError(
                    f"cannot open {href}: host {host} is not answering ({down[1]})", transient=True
                )
                if remember_failure:
                    self.failed[href] = error
                raise error
            _DOWN_HOSTS.pop(host, None)
        entry = self._open.get(href)
        now = time.monotonic()
        if entry is not None and now - self._checked.get(href, -RECHECK_S) >= RECHECK_S:
            self._checked[href] = now
            if now - entry[1] > HANDLE_TTL_S or _file_stamp(href) != entry[2]:
                self._drop(href)
                entry = None
        if entry is None:
            try:
                ds = rasterio.open(self._sign(href))
            except (RasterioError, OSError) as exc:
                error = ReadError(f"cannot open {href}: {exc}", transient=is_transient(str(exc)))
                if error.transient and host is not None:
                    _DOWN_HOSTS[host] = (time.monotonic(), str(exc))
                if remember_failure:
                    self.failed[href] = error
                raise error from None
            entry = self._open[href] = (ds, time.monotonic(), _file_stamp(href))
            self._checked[href] = entry[1]
            while len(self._open) > MAX_OPEN:
                old_href, old = self._open.popitem(last=False)
                self._epsg.pop(old_href, None)
                self._checked.pop(old_href, None)
                old[0].close()
        self._open.move_to_end(href)
        return entry[0]

    def _drop(self, href: str) -> None:
        self._epsg.pop(href, None)
        self._checked.pop(href, None)
        entry = self._open.pop(href, None)
        if entry is not None:
            entry[0].close()

    def fail(self, href: str, error: ReadError | str) -> None:
        error = ReadError(error) if isinstance(error, str) else error
        self.failed[href] = error
        self._drop(href)
        host = host_of(href)
        if error.transient and host is not None:
            _DOWN_HOSTS[host] = (time.monotonic(), str(error))

    def window(self, href: str, indexes: list[int], resampling: str, loc: Location) -> np.ndarray | None:
        """The chip window of ``loc`` from a :func:`prefetch` of ``href`` (a view), else None.

        ReadError when ``href`` failed earlier in the task, exactly as a fresh read would raise.
        """
        if href in self.failed:
            raise self.failed[href]
        hit = self._windows.get((href, tuple(indexes), resampling))
        if hit is None or loc.location_id not in hit[1]:
            return None
        col = hit[1][loc.location_id]
        return hit[0][:, :, col : col + loc.size]

    def close(self) -> None:
        """End of task: failed handles are gone already; good ones stay for the next task."""
        self._windows.clear()


def _as_int(value: float) -> int | None:
    r = round(value)
    return int(r) if abs(value - r) < 1e-6 else None


@functools.lru_cache(maxsize=8)
def _all_covered(size: int) -> np.ndarray:
    """A shared read-only all-True (size, size) mask."""
    out = np.ones((size, size), dtype=bool)
    out.flags.writeable = False
    return out


def _aligned_window(t: Any, epsg: int | None, loc: Location) -> tuple[int, int, int] | None:
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
    from rasterio.enums import Resampling
    from rasterio.windows import Window

    alg = Resampling[resampling]
    size = loc.size
    if epsg is None and ds.crs is not None:
        epsg = ds.crs.to_epsg()
    aligned = _aligned_window(ds.transform if transform is None else transform, epsg, loc)
    if aligned is not None:
        col, row, n = aligned
        c0, r0 = max(col, 0), max(row, 0)
        c1, r1 = min(col + n, ds.width), min(row + n, ds.height)
        if (c0, r0, c1, r1) == (col, row, col + n, row + n):  # wholly inside: the common case
            data = ds.read(
                indexes, window=Window(col, row, n, n), out_shape=(len(indexes), size, size), resampling=alg
            )
            return data, _all_covered(size)
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
    from affine import Affine
    from rasterio.crs import CRS
    from rasterio.vrt import WarpedVRT

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
    and keep them in ``cache`` for :func:`read_chip` (until the task ends).

    A windowed read costs about the same for one chip as for a row of them (GDAL's per-call and
    rasterio's per-call overhead dominate once the COG blocks are decoded), so this is most of the
    builder's read cost saved. The result is identical to chip-by-chip reads: only chips whose window
    lies wholly inside the raster on an aligned grid are batched, and a wider window at the same
    scale gives the same pixels for nearest and bilinear resampling (GDAL takes the resampling kernel's
    source pixels from beyond the window edge either way; tests/test_chips_build.py checks it).
    Speculative: any failure (open, decode) just leaves the chips to be read one by one as before.
    """
    from rasterio.enums import Resampling
    from rasterio.errors import RasterioError
    from rasterio.windows import Window

    if len(locs) < 2 or href in cache.failed:
        return
    try:
        ds = cache.open(href, remember_failure=False)
    except ReadError:
        return
    t, epsg = cache.geo(href, ds)
    rows: dict[tuple[int, int, int], list[tuple[int, Location]]] = {}
    for loc in locs:
        aligned = _aligned_window(t, epsg, loc)
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
        cache._windows[(href, tuple(indexes), resampling)] = (data, found)


@functools.lru_cache(maxsize=8)
def _cloud_lut(classes: tuple[int, ...]) -> np.ndarray:
    """Quality-mask value -> "cloud" (the listed classes but 0, which always means no data)."""
    lut = np.zeros(256, dtype=bool)
    lut[[c for c in classes if 0 < c < 256]] = True
    return lut


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

    ``mask_only``: read just the quality mask (S2 SCL) to score the scene; sensors without a mask are
    read in full. ``probe``: an earlier mask-only read of the same chip whose mask is reused.
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
    from rasterio.errors import RasterioError

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
            return window, _all_covered(size)
        if cached_only:
            raise _NotCached
        ds = cache.open(href)
        try:
            t, epsg = cache.geo(href, ds)
            if _aligned_window(t, epsg, loc) is None:
                warped.append(key)  # another CRS or off the chip grid's lattice: reprojected/resampled
            return read_to_grid(ds, indexes, loc, resampling, epsg=epsg, transform=t)
        except (RasterioError, OSError) as exc:
            error = ReadError(f"cannot read {href}: {exc}", transient=is_transient(str(exc)))
            cache.fail(href, error)
            raise error from None

    full = _all_covered(size)
    mask_key = sensor.mask_asset.get(provider)
    mask = None
    if probe is not None and probe.mask is not None:
        mask = probe.mask
    elif mask_key is not None:
        (scl,), covered = read(mask_key, [1], "nearest")
        # SCL class 0 is "no data" whatever mask_classes says; the other listed classes are "cloud".
        no_scl = scl == 0
        if covered is not full:
            no_scl |= ~covered
        mask = (no_scl, _cloud_lut(tuple(cfg.mask_classes))[scl])
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
        if offset < 0:  # DN - |offset|, clipped at 0, without leaving the unsigned dtype (in place)
            pixels = np.maximum(raw, -offset, out=raw)
            pixels -= raw.dtype.type(-offset)
        elif offset > 0:
            pixels = np.clip(raw.astype(np.int64) + offset, 0, np.iinfo(raw.dtype).max).astype(raw.dtype)
        else:
            pixels = raw
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
