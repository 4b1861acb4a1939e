"""Typed config of a chip build (``configs/chips/*.yaml``).

Loaded with :func:`eo_jepa.config.load_config`; unknown keys, bad choices and values outside a
key's declared range (:func:`eo_jepa.config.bounded`) raise :class:`~eo_jepa.errors.ConfigError`
naming the key, the value and what is allowed, also for a ``ChipConfig(...)`` built in Python.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from typing import ClassVar, Literal

from eo_jepa.bands import DEFAULT_SCL_MASK, PLANETARY_COMPUTER, Sensor, get_sensor
from eo_jepa.config import Config, bounded, name_field, path_field, text_field
from eo_jepa.errors import ConfigError

PC_STAC_URL = "https://planetarycomputer.microsoft.com/api/stac/v1"
EARTH_SEARCH_STAC_URL = "https://earth-search.aws.element84.com/v1"

Split = Literal["train", "val", "test"]


@dataclass
class StacConfig(Config):
    """Where scenes come from and how to ask for them."""

    section: ClassVar[str] = "stac"

    # A STAC API URL, or a local ItemCollection JSON / static catalog.json path.
    url: str = path_field(PC_STAC_URL)
    # Whose asset keys the items use (see eo_jepa.bands); also picks the default collection.
    provider: Literal["planetary-computer", "earth-search"] = PLANETARY_COMPUTER
    collection: str | None = text_field(None)  # None: the sensor's collection for the provider
    # scene-level eo:cloud_cover limit (percent), sent as `query`
    max_cloud_cover: float | None = bounded(60.0, ge=0, le=100)
    page_size: int = bounded(100, ge=1)  # items per page (the API pages with `next` links)
    max_items_per_aoi: int | None = bounded(500, ge=1)
    # Bound on each HTTP attempt, all of it (connect, headers, body): STAC requests and COG reads.
    timeout_s: float = bounded(30.0, gt=0)
    # on connection errors, timeouts and 5xx/429 answers, with exponential back-off
    retries: int = bounded(4, ge=0)
    backoff_s: float = bounded(0.5, ge=0)
    max_retry_after_s: float = bounded(60.0, ge=0)  # cap on a server's Retry-After wait (STAC requests)
    # "auto": sign *.blob.core.windows.net hrefs (Planetary Computer) just before reading them.
    sign: Literal["auto", "never"] = "auto"
    sign_timeout_s: float = bounded(10.0, gt=0)  # bound on the SAS-token request


@dataclass
class AoiConfig(Config):
    """How AOI features are read (GeoJSON/GeoPackage polygons or points)."""

    section: ClassVar[str] = "aoi"

    id_property: str = text_field("aoi_id")
    label_property: str = text_field("label")
    split_property: str = text_field("split")
    # Date range used when a feature has no start/end properties (YAML may hand over datetime.date).
    start: str | datetime.date = "2023-01-01"
    end: str | datetime.date = "2023-12-31"
    default_split: Split = "train"
    # A point AOI becomes a square of this half-width, unless the feature carries its own value
    # in ``buffer_property`` (metres, same meaning).
    point_buffer_m: float = bounded(1280.0, gt=0)
    buffer_property: str = text_field("buffer_m")

    def __post_init__(self) -> None:
        super().__post_init__()
        for key in ("start", "end"):
            value = getattr(self, key)
            if isinstance(value, datetime.date):
                setattr(self, key, value.isoformat())
            elif not isinstance(value, str):
                raise ConfigError(f"aoi.{key} must be a date like 2023-06-30, got {value!r}.")


@dataclass
class GridConfig(Config):
    """Where chip edges lie."""

    section: ClassVar[str] = "grid"

    # "utm": a global grid per UTM zone (the AOI centroid's), origins on whole chip spans: the same
    # place always gets the same location_id. "source": the CRS and pixel lattice of the AOI's first
    # scene, so chips of same-CRS sources (NAIP tiles in their own UTM zone) are exact source pixels
    # instead of resampled ones; needs gsd_m to be a whole multiple of the source pixel size.
    snap: Literal["utm", "source"] = "utm"


@dataclass
class ChipConfig(Config):
    """One chip build: sensor, bands, chip grid, scene choice, filters and parallelism."""

    name: str = name_field("s2-chips")
    sensor: str = text_field("sentinel-2-l2a")
    bands: list[str] = field(default_factory=lambda: ["red", "green", "blue", "nir", "swir16"])
    chip_size: int = bounded(256, ge=1)  # pixels per side
    gsd_m: float = bounded(10.0, gt=0)  # chip pixel size in metres (UTM grid)
    stac: StacConfig = field(default_factory=StacConfig)
    aoi: AoiConfig = field(default_factory=AoiConfig)
    grid: GridConfig = field(default_factory=GridConfig)
    # Quality-mask classes that mark a pixel invalid (Sentinel-2 SCL; ignored for sensors without one).
    mask_classes: list[int] = bounded(default_factory=lambda: list(DEFAULT_SCL_MASK), ge=0, le=255)  # noqa: RUF009
    harmonize: bool = True  # Sentinel-2: subtract 1000 from baseline >= 04.00 scenes, clip at 0
    # Resampling of bands coarser than the chip grid (S2 20 m bands onto 10 m). The mask is always nearest.
    resampling: Literal["bilinear", "nearest"] = "bilinear"
    dates_per_location: int = bounded(1, ge=1)  # >1 keeps several dates per location (same location_id)
    max_candidates: int = bounded(6, ge=1)  # scenes scored per location, lowest eo:cloud_cover first
    max_cloud_fraction: float = bounded(0.3, ge=0, le=1)  # chips above are recorded as rejected
    max_nodata_fraction: float = bounded(0.05, ge=0, le=1)
    task_size: int = bounded(8, ge=1)  # locations per task (a task writes only its own chips + one partial)
    executor: Literal["process", "thread"] = "process"  # local workers when workers > 1

    def validate(self) -> None:
        sensor = get_sensor(self.sensor)
        sensor.resolve(self.bands)  # unknown or repeated bands -> BandMismatchError
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
