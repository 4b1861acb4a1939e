"""Typed config of a chip build (``configs/chips/*.yaml``).

Loaded with :func:`eo_jepa.config.load_config`; unknown keys and bad choices raise
:class:`~eo_jepa.errors.ConfigError` listing the valid ones.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from typing import Literal

from eo_jepa.bands import DEFAULT_SCL_MASK, PLANETARY_COMPUTER, Sensor, get_sensor
from eo_jepa.errors import ConfigError

PC_STAC_URL = "https://planetarycomputer.microsoft.com/api/stac/v1"
EARTH_SEARCH_STAC_URL = "https://earth-search.aws.element84.com/v1"

Split = Literal["train", "val", "test"]


@dataclass
class StacConfig:
    """Where scenes come from and how to ask for them."""

    # A STAC API URL, or a local ItemCollection JSON / static catalog.json path.
    url: str = PC_STAC_URL
    # Whose asset keys the items use (see eo_jepa.bands); also picks the default collection.
    provider: Literal["planetary-computer", "earth-search"] = PLANETARY_COMPUTER
    collection: str | None = None  # None: the sensor's collection for the provider
    max_cloud_cover: float | None = 60.0  # scene-level eo:cloud_cover limit (percent), sent as `query`
    page_size: int = 100  # items per page (the API pages with `next` links)
    max_items_per_aoi: int | None = 500
    # Bound on each HTTP attempt, all of it (connect, headers, body): STAC requests and COG reads.
    timeout_s: float = 30.0
    retries: int = 4  # on connection errors, timeouts and 5xx/429 answers, with exponential back-off
    backoff_s: float = 0.5
    max_retry_after_s: float = 60.0  # cap on a server's Retry-After wait (STAC requests)
    # "auto": sign *.blob.core.windows.net hrefs (Planetary Computer) just before reading them.
    sign: Literal["auto", "never"] = "auto"
    sign_timeout_s: float = 10.0  # bound on the SAS-token request


@dataclass
class AoiConfig:
    """How AOI features are read (GeoJSON/GeoPackage polygons or points)."""

    id_property: str = "aoi_id"
    label_property: str = "label"
    split_property: str = "split"
    # Date range used when a feature has no start/end properties (YAML may hand over datetime.date).
    start: str | datetime.date = "2023-01-01"
    end: str | datetime.date = "2023-12-31"
    default_split: Split = "train"
    # A point AOI becomes a square of this half-width, unless the feature carries its own value
    # in ``buffer_property`` (metres, same meaning).
    point_buffer_m: float = 1280.0
    buffer_property: str = "buffer_m"

    def __post_init__(self) -> None:
        for key in ("start", "end"):
            value = getattr(self, key)
            if isinstance(value, datetime.date):
                setattr(self, key, value.isoformat())
            elif not isinstance(value, str):
                raise ConfigError(f"aoi.{key} must be a date like 2023-06-30, got {value!r}.")


@dataclass
class GridConfig:
    """Where chip edges lie."""

    # "utm": a global grid per UTM zone (the AOI centroid's), origins on whole chip spans: the same
    # place always gets the same location_id. "source": the CRS and pixel lattice of the AOI's first
    # scene, so chips of same-CRS sources (NAIP tiles in their own UTM zone) are exact source pixels
    # instead of resampled ones; needs gsd_m to be a whole multiple of the source pixel size.
    snap: Literal["utm", "source"] = "utm"


@dataclass
class ChipConfig:
    """One chip build: sensor, bands, chip grid, scene choice, filters and parallelism."""

    name: str = "s2-chips"
    sensor: str = "sentinel-2-l2a"
    bands: list[str] = field(default_factory=lambda: ["red", "green", "blue", "nir", "swir16"])
    chip_size: int = 256  # pixels per side
    gsd_m: float = 10.0  # chip pixel size in metres (UTM grid)
    stac: StacConfig = field(default_factory=StacConfig)
    aoi: AoiConfig = field(default_factory=AoiConfig)
    grid: GridConfig = field(default_factory=GridConfig)
    # Quality-mask classes that mark a pixel invalid (Sentinel-2 SCL; ignored for sensors without one).
    mask_classes: list[int] = field(default_factory=lambda: list(DEFAULT_SCL_MASK))
    harmonize: bool = True  # Sentinel-2: subtract 1000 from baseline >= 04.00 scenes, clip at 0
    # Resampling of bands coarser than the chip grid (S2 20 m bands onto 10 m). The mask is always nearest.
    resampling: Literal["bilinear", "nearest"] = "bilinear"
    dates_per_location: int = 1  # >1 keeps several dates per location (same location_id)
    max_candidates: int = 6  # scenes scored per location, lowest eo:cloud_cover first
    max_cloud_fraction: float = 0.3  # chips above are recorded as rejected
    max_nodata_fraction: float = 0.05
    task_size: int = 8  # locations per task (a task writes only its own chips + one partial)
    executor: Literal["process", "thread"] = "process"  # local workers when workers > 1

    def validate(self) -> None:
        sensor = get_sensor(self.sensor)
        sensor.resolve(self.bands)  # unknown or repeated bands -> BandMismatchError
        for key in ("chip_size", "dates_per_location", "max_candidates", "task_size"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{key} must be >= 1, got {getattr(self, key)}.")
        if self.gsd_m <= 0:
            raise ConfigError(f"gsd_m must be positive, got {self.gsd_m}.")
        for key in ("max_cloud_fraction", "max_nodata_fraction"):
            if not 0.0 <= getattr(self, key) <= 1.0:
                raise ConfigError(f"{key} must be within [0, 1], got {getattr(self, key)}.")
        if self.dates_per_location > self.max_candidates:
            raise ConfigError(
                f"dates_per_location ({self.dates_per_location}) exceeds max_candidates "
                f"({self.max_candidates}); raise max_candidates."
            )

    @property
    def sensor_info(self) -> Sensor:
        return get_sensor(self.sensor)

    @property
    def band_names(self) -> list[str]:
        """Canonical band names in config order."""
        return [b.name for b in self.sensor_info.resolve(self.bands)]

    @property
    def collection(self) -> str:
        return self.stac.collection or self.sensor_info.collection(self.stac.provider)

    @property
    def collections(self) -> tuple[str, ...]:
        """The collections searched: ``stac.collection`` when set, else every collection of the
        sensor at the provider (Earth Search: ``sentinel-2-l2a`` and ``sentinel-2-c1-l2a``)."""
        if self.stac.collection:
            return (self.stac.collection,)
        return self.sensor_info.collections_for(self.stac.provider)
