"""Open COG sources for the chip reader: GDAL settings, a per-thread cache of open files, read errors.

Each thread keeps its open datasets in one LRU of :class:`OpenFile` records (the dataset, its
transform and EPSG code, when it was opened and last checked, the local file's stamp), reused
across tasks: opening a COG costs a header read, over HTTP a round trip. A :class:`SourceCache` is
one task's view of it: it signs hrefs, remembers the hrefs that failed (tried once per task), marks
hosts that stopped answering, and holds the windows :func:`eo_jepa.chips.windows.prefetch` read
ahead for the task.
"""

from __future__ import annotations

import math
import os
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

import numpy as np
import rasterio
from rasterio.errors import RasterioError

from eo_jepa.chips.grid import Location

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


MAX_OPEN = 256
HANDLE_TTL_S = 600.0  # well inside a Planetary Computer SAS token's lifetime (~45 min)
RECHECK_S = 5.0  # an open handle's age and file are checked again after this long (a stat: ~40 us)


def _file_stamp(href: str) -> tuple[int, int] | None:
    """(mtime, size) of a local file, to notice a file replaced since it was opened; None for URLs."""
    if "://" in href:
        return None
    try:
        st = os.stat(href)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size)


@dataclass
class OpenFile:
    """One open dataset of this thread's cache and what is known about it."""

    dataset: Any  # rasterio DatasetReader
    transform: Any  # affine.Affine, looked up once (``ds.transform`` builds a new one per call)
    epsg: int | None  # looked up once (``CRS.to_epsg`` costs ~30 us a call)
    opened: float  # time.monotonic() when opened
    stamp: tuple[int, int] | None  # the local file's (mtime, size) when opened; None for URLs
    checked: float  # time.monotonic() of the last age/file check

    @classmethod
    def open(cls, href: str, signed: str) -> OpenFile:
        ds = rasterio.open(signed)
        now = time.monotonic()
        epsg = ds.crs.to_epsg() if ds.crs is not None else None
        return cls(ds, ds.transform, epsg, now, _file_stamp(href), now)

    def stale(self, href: str, now: float) -> bool:
        """Past its lifetime (signed URLs expire) or the local file changed; checked at most every
        ``RECHECK_S`` (then remembered as checked)."""
        if now - self.checked < RECHECK_S:
            return False
        self.checked = now
        return now - self.opened > HANDLE_TTL_S or _file_stamp(href) != self.stamp


@dataclass
class _ThreadState:
    files: OrderedDict[str, OpenFile] = field(default_factory=OrderedDict)  # least recently used first
    env: Any = None  # the rasterio.Env kept entered by :func:`enter_gdal_env`
    http: dict[str, str] | None = None  # its HTTP settings


_LOCAL = threading.local()


def _state() -> _ThreadState:
    """This thread's open files and GDAL settings."""
    state = getattr(_LOCAL, "state", None)
    if state is None:
        state = _LOCAL.state = _ThreadState()
    return state


def enter_gdal_env(http: dict[str, str] | None = None) -> None:
    """Enter the builder's GDAL settings (``http``: :func:`http_options`) in this thread and keep them
    until :func:`close_cached_datasets`.

    Leaving a ``rasterio.Env`` restores ``GDAL_CACHEMAX``, which empties GDAL's block cache; with one
    Env per task, COG blocks shared by neighbouring tasks (a 256 px block holds four 128 px chips)
    would be decoded again by every task. Kept entered, a decoded block serves every chip in it.
    """
    http = http or {}
    state = _state()
    if state.env is not None and state.http != http:
        close_cached_datasets()  # another build's settings: handles opened under the old ones go too
    if state.env is None:
        env = gdal_env(**http)
        env.__enter__()
        state.env, state.http = env, http


def forget_checks() -> None:
    """Check every reused handle again on its next use (called when a batch of tasks starts)."""
    for record in _state().files.values():
        record.checked = -math.inf


def close_cached_datasets() -> None:
    """Close this thread's reusable open datasets and leave the GDAL settings entered by a build."""
    state = _state()
    while state.files:
        state.files.popitem(last=False)[1].dataset.close()
    env, state.env = state.env, None
    if env is not None:
        env.__exit__(None, None, None)


# (href, band indexes, resampling) of windows read ahead by prefetch
WindowKey = tuple[str, tuple[int, ...], str]


class SourceCache:
    """One task's open sources: datasets by href (from this thread's cache), the hrefs that failed
    (so each is tried once), and the chip windows read ahead for the task.

    Handles are kept in a small per-thread LRU across tasks, re-opened after ``HANDLE_TTL_S`` (signed
    URLs expire) or when a local file changed; checked on first use in a batch of tasks
    (:func:`forget_checks`) and every ``RECHECK_S``. ``sign`` is applied to an href right before it is
    opened.
    """

    def __init__(self, sign: Callable[[str], str] | None = None) -> None:
        self._sign = sign or (lambda href: href)
        self._files = _state().files
        self.failed: dict[str, ReadError] = {}
        # (data (k, size, width), {location_id: first column}) of several chips read at once
        self._windows: dict[WindowKey, tuple[np.ndarray, dict[str, int]]] = {}

    def check(self, href: str) -> None:
        """Raise the error ``href`` failed with earlier in the task, if it did."""
        if href in self.failed:
            raise self.failed[href]

    def open(self, href: str, *, remember_failure: bool = True) -> OpenFile:
        """The open file of ``href``; ReadError if it cannot be opened (remembered for the task
        unless ``remember_failure`` is False: a speculative prefetch must change nothing)."""
        self.check(href)
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
        record = self._files.get(href)
        if record is not None and record.stale(href, time.monotonic()):
            self._drop(href)
            record = None
        if record is None:
            try:
                record = OpenFile.open(href, self._sign(href))
            except (RasterioError, OSError) as exc:
                error = ReadError(f"cannot open {href}: {exc}", transient=is_transient(str(exc)))
                if error.transient and host is not None:
                    _DOWN_HOSTS[host] = (time.monotonic(), str(exc))
                if remember_failure:
                    self.failed[href] = error
                raise error from None
            self._files[href] = record
            while len(self._files) > MAX_OPEN:
                self._files.popitem(last=False)[1].dataset.close()
        self._files.move_to_end(href)
        return record

    def _drop(self, href: str) -> None:
        record = self._files.pop(href, None)
        if record is not None:
            record.dataset.close()

    def fail(self, href: str, error: ReadError | str) -> None:
        """Remember that reading ``href`` failed (its handle is closed; a transient failure marks its
        host as down for ``HOST_DOWN_S``)."""
        error = ReadError(error) if isinstance(error, str) else error
        self.failed[href] = error
        self._drop(href)
        host = host_of(href)
        if error.transient and host is not None:
            _DOWN_HOSTS[host] = (time.monotonic(), str(error))

    def keep_windows(self, key: WindowKey, data: np.ndarray, columns: dict[str, int]) -> None:
        """Keep windows read ahead for this task: ``data`` (k, size, width) holds the chip of location
        id L in the ``size`` columns from ``columns[L]``."""
        self._windows[key] = (data, columns)

    def window(self, href: str, indexes: list[int], resampling: str, loc: Location) -> np.ndarray | None:
        """The chip window of ``loc`` kept by :meth:`keep_windows` (a view), else None.

        ReadError when ``href`` failed earlier in the task, exactly as a fresh read would raise.
        """
        self.check(href)
        hit = self._windows.get((href, tuple(indexes), resampling))
        if hit is None or loc.location_id not in hit[1]:
            return None
        col = hit[1][loc.location_id]
        return hit[0][:, :, col : col + loc.size]

    def close(self) -> None:
        """End of task: the windows read ahead go; open handles stay for the next task."""
        self._windows.clear()
