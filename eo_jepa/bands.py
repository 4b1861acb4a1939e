"""The one catalogue of sensors and bands.

Used by the chip builder (asset keys, resolutions, offsets, cloud masks), the trainer
(band order, augmentations that know which band is red/green/blue) and the loader
(bands with wavelengths in checkpoints). Band order is always explicit and by canonical
name; provider asset keys (Planetary Computer ``B04``, Earth Search ``red``) are looked up
here and nowhere else.

Sensor-specific rules are methods of the sensor's class: the base :class:`Sensor` has no DN offset and
no quality mask; :class:`Sentinel2L2A` adds the baseline 04.00 offset (``offset_for``) and SCL masking
(``mask_from``). Adding a sensor (Landsat, HLS) is a ``Sensor`` of its bands, plus a subclass when it
has rules of its own (e.g. QA bit flags in ``mask_from``).

Facts: Sentinel-2 MSI band centres/widths from ESA's Sentinel-2 User Handbook (S2A values);
L2A has 12 reflectance bands (B10 is dropped by Sen2Cor). Since processing baseline 04.00
(scenes from 25 January 2022) L2A digital numbers carry ``BOA_ADD_OFFSET = -1000``:
reflectance = (DN - 1000) / 10000. NAIP: 4-band RGBN 8-bit aerial imagery (USDA FSA).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from eo_jepa.errors import BandMismatchError, ConfigError, did_you_mean

PLANETARY_COMPUTER = "planetary-computer"
EARTH_SEARCH = "earth-search"
PROVIDERS = (PLANETARY_COMPUTER, EARTH_SEARCH)

RGB = ("red", "green", "blue")


@dataclass(frozen=True)
class Band:
    """One spectral band, by canonical name."""

    name: str  # canonical, lower case: "red", "nir", "swir16"
    sensor_band: str  # the sensor's own label: "B04", "R"
    wavelength_nm: float  # centre wavelength
    bandwidth_nm: float
    gsd_m: float  # native ground sampling distance
    assets: dict[str, str] = field(default_factory=dict)  # provider -> asset key
    index: int = 1  # 1-based band index inside the asset (multi-band assets such as NAIP "image")
    description: str = ""

    def asset_key(self, provider: str) -> str:
        try:
            return self.assets[provider]
        except KeyError:
            raise ConfigError(
                f"Band {self.name!r} has no asset key for provider {provider!r}; known providers: "
                f"{', '.join(sorted(self.assets))}."
            ) from None

    def to_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "sensor_band": self.sensor_band,
            "wavelength_nm": self.wavelength_nm,
            "bandwidth_nm": self.bandwidth_nm,
            "gsd_m": self.gsd_m,
        }


@dataclass(frozen=True)
class Sensor:
    """A sensor/product: its bands, collections per provider, pixel scale and quality mask.

    Digital numbers are used as they are (no offset) and no quality mask is read; subclasses with
    rules of their own override :meth:`offset_for` / :meth:`mask_from` and the notes that describe them.
    """

    name: str
    description: str
    bands: tuple[Band, ...]
    collections: dict[str, str]  # provider -> STAC collection id
    dtype: str  # dtype of the raw digital numbers
    nodata: float | None
    scale: float  # physical value = (DN + offset) * scale  (offset per scene, see offset_for)
    units: str
    license: str
    # provider -> quality-mask asset (S2 SCL); a sensor with one implements mask_from
    mask_asset: dict[str, str] = field(default_factory=dict)
    mask_gsd_m: float | None = None
    # provider -> further collections of the same product (Earth Search: legacy and collection 1)
    more_collections: dict[str, tuple[str, ...]] = field(default_factory=dict)

    @property
    def band_names(self) -> tuple[str, ...]:
        return tuple(b.name for b in self.bands)

    def band(self, name: str) -> Band:
        key = _ALIASES.get(name.lower(), name.lower())
        for b in self.bands:
            if b.name == key or b.sensor_band.lower() == name.lower():
                return b
            if any(v.lower() == name.lower() for v in b.assets.values()):
                return b
        raise BandMismatchError(
            f"Unknown band {name!r} for sensor {self.name!r}; valid bands are: "
            f"{', '.join(self.band_names)}.{did_you_mean(name, self.band_names)}"
        )

    def resolve(self, names: Iterable[str]) -> tuple[Band, ...]:
        """Bands for ``names`` in the given order (names, sensor labels or asset keys)."""
        bands = tuple(self.band(n) for n in names)
        seen = [b.name for b in bands]
        dupes = sorted({n for n in seen if seen.count(n) > 1})
        if dupes:
            raise BandMismatchError(f"Band list repeats {', '.join(dupes)}; give each band once.")
        if not bands:
            raise BandMismatchError(f"Empty band list; choose from {', '.join(self.band_names)}.")
        return bands

    def collection(self, provider: str) -> str:
        try:
            return self.collections[provider]
        except KeyError:
            raise ConfigError(
                f"Sensor {self.name!r} has no collection for provider {provider!r}; known providers: "
                f"{', '.join(sorted(self.collections))}."
            ) from None

    def collections_for(self, provider: str) -> tuple[str, ...]:
        """Every collection of this product at ``provider`` (the default one first)."""
        return (self.collection(provider), *self.more_collections.get(provider, ()))

    @property
    def multi_resolution(self) -> bool:
        """Bands of several native GSDs (coarser ones are resampled onto the chip grid)."""
        return len({b.gsd_m for b in self.bands}) > 1

    def mask_key(self, provider: str) -> str | None:
        """The asset holding the quality mask at ``provider``; None: no mask (every pixel is read)."""
        return self.mask_asset.get(provider)

    def mask_from(self, values: np.ndarray, classes: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """(no data, cloud) boolean masks from the quality-mask values of a chip; ``classes``: the
        config's ``mask_classes``. Only called for sensors with a :meth:`mask_key`."""
        raise NotImplementedError(f"Sensor {self.name!r} has no quality mask to read.")

    def mask_note(self, classes: Sequence[int]) -> str | None:
        """The data card's sentence on how chips were masked; None without a quality mask."""
        return None

    def offset_for(self, item: Any, harmonize: bool = True) -> tuple[int, str]:
        """(DN offset to add, what decided it) for a scene; ``item`` is a :class:`eo_jepa.stac.ItemInfo`.
        Sensors without an offset rule: ``(0, "none")``."""
        return 0, "none"

    def offset_fallback(self, item: Any, harmonize: bool = True) -> str | None:
        """When a fallback (not the scene's own metadata) decided the offset, a note saying so (logged
        by the planner); else None."""
        return None

    def harmonization_note(self, harmonize: bool, applied: Sequence[dict[str, Any]]) -> str | None:
        """The data card's sentence on what was done to the digital numbers; ``applied``: the
        ``dataset.json`` ``harmonisation`` entries (offset, source, chips). None without an offset rule."""
        return None


@dataclass(frozen=True)
class Sentinel2L2A(Sensor):
    """Sentinel-2 L2A: the processing-baseline 04.00 offset and the Scene Classification Layer mask."""

    def mask_from(self, values: np.ndarray, classes: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """SCL class 0 is "no data" whatever ``classes`` says; the other listed classes are "cloud"."""
        return values == 0, _cloud_lut(tuple(classes))[values]

    def mask_note(self, classes: Sequence[int]) -> str | None:
        return (
            f"SCL classes {list(classes)} are invalid (SCL 0 is always no data); SCL is resampled from "
            f"{self.mask_gsd_m:g} m with nearest neighbour."
        )

    def offset_for(self, item: Any, harmonize: bool = True) -> tuple[int, str]:
        """(DN offset to add, what decided it) for a scene; ``item`` is a :class:`eo_jepa.stac.ItemInfo`.

        ``-1000`` for processing baseline >= 04.00 (so every scene shares the pre-04.00 scale), ``0``
        before. The baseline comes from ``s2:processing_baseline``, else from the product id
        (``s2:product_uri`` or the item id, ``_N0509_`` = 05.09), else from the acquisition date
        (baseline 04.00 began on 2022-01-25); a provider that already removed the offset
        (``earthsearch:boa_offset_applied: true``) gets ``0``.
        """
        if not harmonize:
            return 0, "harmonize=false"
        if getattr(item, "offset_applied", False):
            return 0, "provider applied it (earthsearch:boa_offset_applied)"
        for source, value in (
            ("s2:processing_baseline", parse_baseline(getattr(item, "baseline", None))),
            ("s2:product_uri", baseline_from_product_id(getattr(item, "product_uri", None))),
            ("item id", baseline_from_product_id(getattr(item, "id", None))),
        ):
            if value is not None:
                return (S2_BOA_ADD_OFFSET if value >= S2_OFFSET_BASELINE else 0), source
        when = str(getattr(item, "datetime", ""))[:10]
        return (S2_BOA_ADD_OFFSET if when >= S2_OFFSET_START else 0), "acquisition date"

    def offset_fallback(self, item: Any, harmonize: bool = True) -> str | None:
        offset, decided_by = self.offset_for(item, harmonize)
        if decided_by in ("s2:product_uri", "item id", "acquisition date"):
            return f"no s2:processing_baseline: offset {offset} decided by its {decided_by}"
        return None

    def harmonization_note(self, harmonize: bool, applied: Sequence[dict[str, Any]]) -> str | None:
        if not harmonize:
            return "none (harmonize=false: scales of scenes before/after processing baseline 04.00 differ)"
        shifted = [a for a in applied if a["offset"]]
        kept = sum(a["chips"] for a in applied if not a["offset"])
        if not shifted:
            return f"no offset was applied to any chip ({kept} chips from scenes that needed none)"
        by = "; ".join(f"{a['chips']} by {a['source']}" for a in shifted)
        return (
            f"{-shifted[0]['offset']} subtracted (then clipped at 0) from {sum(a['chips'] for a in shifted)} "
            "chips of processing baseline >= 04.00 scenes, so all chips share the pre-04.00 scale (baseline "
            f"decided {by}); {kept} chips needed no offset"
        )


@functools.lru_cache(maxsize=8)
def _cloud_lut(classes: tuple[int, ...]) -> np.ndarray:
    """Quality-mask value -> "cloud" (the listed classes but 0, which always means no data)."""
    lut = np.zeros(256, dtype=bool)
    lut[[c for c in classes if 0 < c < 256]] = True
    return lut


def _s2(name: str, label: str, wl: float, bw: float, gsd: float, es: str, desc: str) -> Band:
    return Band(name, label, wl, bw, gsd, {PLANETARY_COMPUTER: label, EARTH_SEARCH: es}, 1, desc)


SENTINEL2_L2A = Sentinel2L2A(
    name="sentinel-2-l2a",
    description="Sentinel-2 MSI Level-2A bottom-of-atmosphere reflectance (12 bands, 10/20/60 m).",
    bands=(
        _s2("coastal", "B01", 442.7, 21, 60, "coastal", "coastal aerosol"),
        _s2("blue", "B02", 492.4, 66, 10, "blue", "blue"),
        _s2("green", "B03", 559.8, 36, 10, "green", "green"),
        _s2("red", "B04", 664.6, 31, 10, "red", "red"),
        _s2("rededge1", "B05", 704.1, 15, 20, "rededge1", "vegetation red edge 1"),
        _s2("rededge2", "B06", 740.5, 15, 20, "rededge2", "vegetation red edge 2"),
        _s2("rededge3", "B07", 782.8, 20, 20, "rededge3", "vegetation red edge 3"),
        _s2("nir", "B08", 832.8, 106, 10, "nir", "near infrared (broad)"),
        _s2("nir08", "B8A", 864.7, 21, 20, "nir08", "narrow near infrared"),
        _s2("nir09", "B09", 945.1, 20, 60, "nir09", "water vapour"),
        _s2("swir16", "B11", 1613.7, 91, 20, "swir16", "short-wave infrared 1.6 um"),
        _s2("swir22", "B12", 2202.4, 175, 20, "swir22", "short-wave infrared 2.2 um"),
    ),
    collections={PLANETARY_COMPUTER: "sentinel-2-l2a", EARTH_SEARCH: "sentinel-2-l2a"},
    # Earth Search's collection 1 (offset not applied; the legacy collection flags what it did)
    more_collections={EARTH_SEARCH: ("sentinel-2-c1-l2a",)},
    dtype="uint16",
    nodata=0,
    scale=1e-4,
    units="reflectance x 10000 (harmonised to processing baseline < 04.00)",
    license="Copernicus Sentinel data terms (free, full and open; attribution required)",
    mask_asset={PLANETARY_COMPUTER: "SCL", EARTH_SEARCH: "scl"},
    mask_gsd_m=20,
)


def _naip(name: str, label: str, wl: float, bw: float, idx: int) -> Band:
    return Band(name, label, wl, bw, 0.6, {PLANETARY_COMPUTER: "image", EARTH_SEARCH: "image"}, idx, name)


NAIP = Sensor(
    name="naip",
    description="USDA NAIP aerial imagery, 4-band RGBN, 8-bit, 0.6 m (0.3 m from 2020 in some states).",
    bands=(
        _naip("red", "R", 620.0, 60, 1),
        _naip("green", "G", 555.0, 50, 2),
        _naip("blue", "B", 470.0, 60, 3),
        _naip("nir", "N", 840.0, 80, 4),
    ),
    collections={PLANETARY_COMPUTER: "naip"},
    dtype="uint8",
    nodata=None,
    scale=1 / 255,
    units="8-bit digital numbers",
    license="Public domain (USDA Farm Service Agency)",
)

# Generic 8-bit RGB imagery (web photos, high-resolution RGB chips such as Core-Five RGB):
# what DINOv3 RGB checkpoints expect after scaling to [0, 1].
RGB8 = Sensor(
    name="rgb",
    description="Generic 8-bit RGB imagery (scaled to [0, 1] before normalisation).",
    bands=(
        Band("red", "R", 620.0, 60, 1.0, {}, 1, "red"),
        Band("green", "G", 555.0, 50, 1.0, {}, 2, "green"),
        Band("blue", "B", 470.0, 60, 1.0, {}, 3, "blue"),
    ),
    collections={},
    dtype="uint8",
    nodata=None,
    scale=1 / 255,
    units="8-bit digital numbers",
    license="depends on the source",
)

SENSORS: dict[str, Sensor] = {s.name: s for s in (SENTINEL2_L2A, NAIP, RGB8)}

# Common alternative spellings -> canonical names (case-insensitive keys).
_ALIASES = {
    "b": "blue",
    "g": "green",
    "r": "red",
    "n": "nir",
    "swir1": "swir16",
    "swir2": "swir22",
    "narrow_nir": "nir08",
    "re1": "rededge1",
    "re2": "rededge2",
    "re3": "rededge3",
}

# Sentinel-2 Scene Classification Layer classes (Sen2Cor).
SCL_CLASSES = {
    0: "no data",
    1: "saturated or defective",
    2: "cast shadows (topographic)",
    3: "cloud shadows",
    4: "vegetation",
    5: "not vegetated",
    6: "water",
    7: "unclassified",
    8: "cloud medium probability",
    9: "cloud high probability",
    10: "thin cirrus",
    11: "snow or ice",
}
DEFAULT_SCL_MASK = (0, 1, 3, 8, 9, 10)

S2_OFFSET_BASELINE = 4.0  # processing baseline from which BOA_ADD_OFFSET applies
S2_OFFSET_START = "2022-01-25"  # first acquisitions processed with baseline 04.00
S2_BOA_ADD_OFFSET = -1000


def get_sensor(name: str) -> Sensor:
    try:
        return SENSORS[name]
    except KeyError:
        raise ConfigError(
            f"Unknown sensor {name!r}; known sensors are: {', '.join(SENSORS)}.{did_you_mean(name, SENSORS)}"
        ) from None


def parse_baseline(value: object) -> float | None:
    """Processing baseline as a number, or None when absent/unparseable.

    '05.09' -> 5.09; the product-id form 'N0509' (or '0509') -> 5.09, 'N0212' -> 2.12, 'N0400' -> 4.0.
    """
    if value is None:
        return None
    text = str(value).strip().upper()
    digits = text[1:] if text.startswith("N") else text
    if len(digits) == 4 and digits.isdigit():
        return int(digits) / 100
    try:
        return float(digits)
    except ValueError:
        return None


_PRODUCT_BASELINE = re.compile(r"_N(\d{4})(?=[_.]|$)")


def baseline_from_product_id(text: object) -> float | None:
    """The processing baseline a Sentinel-2 product id encodes ('S2A_MSIL2A_..._N0509_R065_...' ->
    5.09), or None."""
    match = _PRODUCT_BASELINE.search(str(text)) if text else None
    return parse_baseline(match.group(1)) if match else None


def s2_offset_for_baseline(baseline: object) -> int:
    """The DN offset to add to a Sentinel-2 L2A scene so all scenes share the pre-04.00 scale.

    Baseline >= 04.00: ``-1000`` (then clip at 0); older or unknown: ``0``.
    """
    value = parse_baseline(baseline)
    return S2_BOA_ADD_OFFSET if value is not None and value >= S2_OFFSET_BASELINE else 0


def match_band(text: str | None) -> str | None:
    """The canonical band name that ``text`` denotes, or None: THE band-name matcher.

    Used wherever a band is named by a user or a file (``--bands``, config ``data.bands``, GeoTIFF
    band descriptions in evaluation and training folders, checkpoints). Case and surrounding space
    are ignored; accepted are canonical names (``red``), aliases (``R``, ``swir1``), sensor labels
    (``B04``, also unpadded ``B4``) and single-band provider asset keys (``B8A``, ``nir08``). A
    multi-band asset key (NAIP ``image``) names no band.
    """
    if not text or not str(text).strip():
        return None
    key = str(text).strip().lower()
    if len(key) == 2 and key[0] == "b" and key[1].isdigit():
        key = f"b0{key[1]}"  # B4 -> B04, the label Sentinel-2 products use
    key = _ALIASES.get(key, key)
    for sensor in SENSORS.values():
        asset_keys = [v.lower() for b in sensor.bands for v in set(b.assets.values())]
        for b in sensor.bands:
            if key in (b.name, b.sensor_band.lower()):
                return b.name
            if asset_keys.count(key) == 1 and key in (v.lower() for v in b.assets.values()):
                return b.name
    return None


def match_bands(texts: Sequence[str | None]) -> tuple[str, ...] | None:
    """Canonical names of every entry of ``texts`` (e.g. a raster's band descriptions), or None unless all match."""
    names = [match_band(t) for t in texts]
    if not names or any(n is None for n in names):
        return None
    return tuple(n for n in names if n is not None)


def band_info(name: str, sensor: str | None = None) -> Band:
    """A band by any name :func:`match_band` accepts, from ``sensor`` or the first sensor that has it."""
    if sensor is not None:
        return get_sensor(sensor).band(name)
    canonical = match_band(name)
    for s in SENSORS.values():
        for b in s.bands:
            if b.name == canonical:
                return b
    known = sorted({b.name for s in SENSORS.values() for b in s.bands})
    raise BandMismatchError(
        f"Unknown band {name!r}; known bands are: {', '.join(known)}.{did_you_mean(name, known)}"
    )


def check_bands(got: Sequence[str], expected: Sequence[str], what: str = "input") -> None:
    """Raise a clear error when two band lists differ (names and order)."""
    if tuple(got) != tuple(expected):
        raise BandMismatchError(
            f"{what} has bands {list(got)} but {list(expected)} are expected (same names, same order)."
        )
