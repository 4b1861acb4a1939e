"""Synthetic but realistic Sentinel-2 L2A demo scenes, STAC items and AOIs, generated offline.

What :func:`make_demo_scenes` writes under ``out_dir``::

    cogs/<item id>/B01.tif ... B12.tif, B8A.tif, SCL.tif, visual.tif   Cloud-optimised GeoTIFFs
    landcover/<tile>.tif         the land-cover truth map (uint8 class codes, 10 m)
    collection.json              a STAC Collection ``sentinel-2-l2a``
    items.json                   an ItemCollection in Planetary Computer's format (absolute file hrefs)
    catalog/                     the same items as a static STAC catalogue (catalog.json + item files)
    aois.geojson                 labelled AOIs (EPSG:4326), each inside one land-cover region
    manifest.json                parameters + file list, written last (its presence means "complete")

Facts the scenes respect (see DESIGN.md section 5): tiles sit on the real Sentinel-2 MGRS grid of UTM
zone 32N (109 800 m tiles whose upper-left corners are on the S2 tiling grid); the rasters cover a
sub-area of each tile and the items' ``proj:*`` fields describe exactly that sub-area; bands at their
native GSD (10/20/60 m), SCL at 20 m, uint16, nodata 0; dates on both sides of processing baseline
04.00, the newer ones stored with ``BOA_ADD_OFFSET = -1000`` (DN = reflectance x 10000 + 1000) in every
reflectance band (not SCL; nodata stays 0).
"""

from __future__ import annotations

import copy
import json
import logging
import os
import shutil
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Literal

import numpy as np
from affine import Affine

from eo_jepa._version import __version__
from eo_jepa.bands import PLANETARY_COMPUTER, SENTINEL2_L2A
from eo_jepa.errors import ConfigError
from eo_jepa.utils.geotiff import write_geotiff
from eo_jepa.utils.io import atomic_write_json

log = logging.getLogger(__name__)

EPSG = 32632  # WGS 84 / UTM zone 32N
TILE_SIZE_M = 109_800
# Real MGRS tiles of zone 32N with their Sentinel-2 tile-grid upper-left corners.
TILES: dict[str, tuple[float, float]] = {"32TQM": (699_960.0, 4_700_040.0), "32TPM": (600_000.0, 4_700_040.0)}
# Upper-left corner of each demo raster (a sub-area of the tile): multiples of 7680 m, so the 10/20/60 m
# grids align and so do the chip builder's zone-global chip grids (origins at multiples of chip_size *
# gsd: 640, 1280, 2560 m); raster sides are multiples of 3840 m, hence no chip straddles a raster edge.
SUBAREA_ORIGINS: dict[str, tuple[float, float]] = {
    "32TQM": (729_600.0, 4_654_080.0),
    "32TPM": (629_760.0, 4_654_080.0),
}

CLASSES: tuple[str, ...] = ("water", "vegetation", "cropland", "bare", "urban")
CLASS_CODES = {name: i + 1 for i, name in enumerate(CLASSES)}  # 0 = unknown in the truth map

# Sentinel-2 L2A band order used in this module (that of eo_jepa.bands): B01..B08, B8A, B09, B11, B12.
_BANDS = SENTINEL2_L2A.bands
_ASSET_KEYS = tuple(b.asset_key(PLANETARY_COMPUTER) for b in _BANDS)
_GSD = np.array([b.gsd_m for b in _BANDS])

# Typical bottom-of-atmosphere reflectance x 10000 per class, in _BANDS order
# (B01 B02 B03 B04 B05 B06 B07 B08 B8A B09 B11 B12), after published spectral libraries' shapes:
# water absorbs beyond red, vegetation has the red edge and a high NIR plateau, soils rise smoothly
# to SWIR, urban materials are flat and bright-ish.
_SPECTRA = {
    "water": [620, 520, 480, 330, 270, 220, 200, 170, 150, 90, 60, 40],
    "vegetation": [280, 330, 560, 290, 880, 2350, 2950, 3250, 3400, 3300, 1650, 780],
    "crop_green": [330, 390, 720, 380, 1150, 2800, 3450, 3800, 3950, 3700, 2050, 1020],
    "bare": [950, 1150, 1480, 1800, 2000, 2120, 2230, 2330, 2420, 2300, 3050, 2560],
    "urban": [1050, 1150, 1260, 1350, 1450, 1530, 1620, 1700, 1760, 1650, 2050, 1880],
    "road": [850, 880, 920, 960, 990, 1010, 1030, 1050, 1070, 1000, 1150, 1080],
}
# Optically thick cloud and thin cirrus contributions (reflectance x 10000).
_CLOUD = np.array([6800, 6900, 6900, 7000, 7000, 7000, 7000, 6900, 6900, 5500, 4200, 3000], np.float32)
_CIRRUS = np.array([900, 850, 800, 760, 740, 720, 700, 680, 670, 600, 900, 650], np.float32)
_TEXTURE = {"water": 0.03, "vegetation": 0.12, "cropland": 0.08, "bare": 0.10, "urban": 0.20}

# Scene Classification Layer codes (Sen2Cor) used here.
SCL_NODATA, SCL_SHADOW, SCL_VEG, SCL_NOTVEG, SCL_WATER, SCL_UNCLASSIFIED = 0, 3, 4, 5, 6, 7
SCL_CLOUD_MED, SCL_CLOUD_HIGH, SCL_CIRRUS = 8, 9, 10
_SCL_FOR_CLASS = np.array([SCL_UNCLASSIFIED, SCL_WATER, SCL_VEG, SCL_VEG, SCL_NOTVEG, SCL_NOTVEG], np.uint8)


@dataclass(frozen=True)
class _Acquisition:
    date: str  # YYYY-MM-DD
    time: str  # HHMMSS sensing start
    platform: str  # S2A | S2B
    baseline: str  # "04.00"
    cloud: float  # target cloud fraction
    nodata_strip: bool = False
    cirrus: bool = False


# Interleaved so that any first n >= 2 covers both sides of baseline 04.00; sorted by date when used.
_ACQUISITIONS = (
    _Acquisition("2021-04-18", "101559", "S2B", "02.15", 0.03),
    _Acquisition("2022-06-12", "101609", "S2B", "04.00", 0.10, cirrus=True),
    _Acquisition("2021-08-06", "101031", "S2A", "03.01", 0.30, nodata_strip=True),
    _Acquisition("2023-07-28", "101601", "S2A", "05.09", 0.75),
    _Acquisition("2021-10-15", "101021", "S2A", "03.01", 0.20),
    _Acquisition("2022-09-03", "101559", "S2B", "04.00", 0.50),
    _Acquisition("2023-03-21", "101559", "S2B", "05.09", 0.06, cirrus=True),
    _Acquisition("2021-06-02", "101031", "S2A", "02.15", 0.90),
)
MAX_DATES = len(_ACQUISITIONS)

# Per size: raster side in 10 m pixels (a multiple of 6 so the 60 m grid aligns), tiles, land-cover
# cell size (px), polygon AOIs per class per tile, AOI side (px).
_SIZES: dict[str, dict[str, Any]] = {
    "tiny": {"pixels": 384, "tiles": ("32TQM",), "cell": 64, "aois_per_class": 4, "aoi_px": 24},
    "small": {"pixels": 768, "tiles": ("32TQM", "32TPM"), "cell": 64, "aois_per_class": 10, "aoi_px": 40},
    # benchmarks: builds of a few thousand chips, so that fixed per-build costs do not hide throughput
    "medium": {"pixels": 1536, "tiles": ("32TQM", "32TPM"), "cell": 64, "aois_per_class": 10, "aoi_px": 40},
}
_WARP_PX = 6  # max displacement of land-cover boundaries from the cell grid
_SHADOW_SHIFT_PX = (-28, -22)  # clouds' shadows fall north-west (sun in the south-east at 10:30)

COG_MEDIA_TYPE = "image/tiff; application=geotiff; profile=cloud-optimized"
_STAC_EXTENSIONS = [
    "https://stac-extensions.github.io/eo/v1.0.0/schema.json",
    "https://stac-extensions.github.io/sat/v1.0.0/schema.json",
    "https://stac-extensions.github.io/projection/v1.0.0/schema.json",
]


@dataclass
class DemoScenes:
    """Where the generated demo data lies, and what it contains."""

    root: Path
    cog_dir: Path
    items_path: Path  # ItemCollection JSON (Planetary Computer format, absolute file hrefs)
    collection_path: Path
    aois_path: Path
    catalog_path: Path  # static STAC catalogue (catalog.json) holding the same items
    landcover_paths: dict[str, Path]  # MGRS tile -> uint8 truth map (codes in CLASS_CODES)
    tiles: tuple[str, ...]
    dates: tuple[str, ...]
    classes: tuple[str, ...] = CLASSES
    seed: int = 0
    size: str = "tiny"

    def items(self, base_url: str | None = None) -> list[dict[str, Any]]:
        """The STAC items as dicts; with ``base_url``, hrefs point at an HTTP server serving ``cog_dir``."""
        items = json.loads(self.items_path.read_text())["features"]
        return rewrite_hrefs(items, self.cog_dir, base_url) if base_url else items

    def collection(self) -> dict[str, Any]:
        return json.loads(self.collection_path.read_text())

    def aois(self) -> dict[str, Any]:
        return json.loads(self.aois_path.read_text())

    def write_items(self, path: str | os.PathLike[str], base_url: str | None = None) -> Path:
        """Write an ItemCollection JSON (hrefs rewritten to ``base_url`` when given) and return its path."""
        path = Path(path)
        atomic_write_json(path, {"type": "FeatureCollection", "features": self.items(base_url)})
        return path


def rewrite_hrefs(
    items: Iterable[Mapping[str, Any]], root: str | os.PathLike[str], base_url: str
) -> list[dict[str, Any]]:
    """Copies of ``items`` whose asset hrefs under local folder ``root`` point at ``base_url`` instead.

    ``base_url`` is what serves ``root`` over HTTP (for example :func:`eo_jepa.demo.servers.range_http_server`).
    """
    prefix = os.fspath(Path(root).resolve()).rstrip("/") + "/"
    base = base_url.rstrip("/") + "/"
    out = []
    for item in items:
        new = copy.deepcopy(dict(item))
        for asset in new.get("assets", {}).values():
            href = asset.get("href", "")
            if href.startswith(prefix):
                asset["href"] = base + href[len(prefix) :]
        out.append(new)
    return out


# --------------------------------------------------------------------------------------------------
# Public entry point
# --------------------------------------------------------------------------------------------------


def make_demo_scenes(
    out_dir: str | os.PathLike[str],
    *,
    seed: int = 0,
    size: Literal["tiny", "small", "medium"] = "small",
    n_dates: int = 4,
    overwrite: bool = False,
) -> DemoScenes:
    """Generate (or reuse) realistic Sentinel-2 L2A-like demo scenes under ``out_dir``.

    Deterministic for ``(seed, size, n_dates)``. Idempotent: when ``out_dir`` already holds a complete
    output with the same parameters, nothing is regenerated. Every file is written atomically and the
    manifest last, so an interrupted run is simply redone.
    """
    if size not in _SIZES:
        raise ConfigError(f"Unknown demo size {size!r}; choose one of: {', '.join(_SIZES)}.")
    if not 2 <= n_dates <= MAX_DATES:
        raise ConfigError(
            f"n_dates={n_dates} is out of range; choose 2..{MAX_DATES} (both sides of baseline 04.00)."
        )
    root = Path(out_dir).resolve()
    params = {"seed": int(seed), "size": size, "n_dates": int(n_dates), "generator": _GENERATOR_VERSION}
    manifest_path = root / "manifest.json"
    if not overwrite and manifest_path.exists():
        scenes = _reuse(root, params)
        if scenes is not None:
            log.info("demo scenes already complete in %s", root)
            return scenes
    spec = _SIZES[size]
    acquisitions = sorted(_ACQUISITIONS[:n_dates], key=lambda a: a.date)
    root.mkdir(parents=True, exist_ok=True)
    manifest_path.unlink(missing_ok=True)
    cog_dir = root / "cogs"
    items: list[dict[str, Any]] = []
    aois: list[dict[str, Any]] = []
    landcover_paths: dict[str, Path] = {}
    for t, tile in enumerate(spec["tiles"]):
        scene = _TileScene(tile, spec, seed, t)
        landcover_paths[tile] = scene.write_landcover(root / "landcover" / f"{tile}.tif")
        aois.extend(scene.aois(spec, t))
        for acq in acquisitions:
            items.append(scene.write_acquisition(acq, cog_dir))
    collection = _collection(items)
    items_path = root / "items.json"
    atomic_write_json(root / "collection.json", collection)
    atomic_write_json(items_path, {"type": "FeatureCollection", "features": items})
    aois_path = root / "aois.geojson"
    atomic_write_json(aois_path, {"type": "FeatureCollection", "features": aois})
    _write_static_catalog(root / "catalog", collection, items)
    files = sorted(os.path.relpath(p, root) for p in root.rglob("*") if p.is_file() and p != manifest_path)
    manifest = {
        **params,
        "eo_jepa_version": __version__,
        "tiles": list(spec["tiles"]),
        "dates": [a.date for a in acquisitions],
        "files": {f: (root / f).stat().st_size for f in files},
    }
    atomic_write_json(manifest_path, manifest)
    return _reuse(root, params) or _fail(root)


_GENERATOR_VERSION = 3


def _fail(root: Path) -> DemoScenes:
    raise RuntimeError(f"demo scene generation in {root} did not produce a complete output")


def _reuse(root: Path, params: Mapping[str, Any]) -> DemoScenes | None:
    """The DemoScenes of a complete output with these parameters, or None."""
    try:
        manifest = json.loads((root / "manifest.json").read_text())
    except (OSError, ValueError):
        return None
    if any(manifest.get(k) != v for k, v in params.items()):
        return None
    for rel, nbytes in manifest.get("files", {}).items():
        path = root / rel
        if not path.is_file() or path.stat().st_size != nbytes:
            return None
    items_path = root / "items.json"
    # Hrefs are absolute: a moved folder needs regenerating (cheap) rather than silently broken items.
    first = json.loads(items_path.read_text())["features"][0]
    if not Path(next(iter(first["assets"].values()))["href"]).is_file():
        return None
    tiles = tuple(manifest["tiles"])
    return DemoScenes(
        root=root,
        cog_dir=root / "cogs",
        items_path=items_path,
        collection_path=root / "collection.json",
        aois_path=root / "aois.geojson",
        catalog_path=root / "catalog" / "catalog.json",
        landcover_paths={t: root / "landcover" / f"{t}.tif" for t in tiles},
        tiles=tiles,
        dates=tuple(manifest["dates"]),
        seed=int(manifest["seed"]),
        size=str(manifest["size"]),
    )


# --------------------------------------------------------------------------------------------------
# Scene synthesis
# --------------------------------------------------------------------------------------------------


def _smooth_field(rng: np.random.Generator, shape: tuple[int, int], scale_px: float) -> np.ndarray:
    """Zero-mean, unit-std random field with features about ``scale_px`` pixels across (float32)."""
    from scipy.ndimage import zoom

    h, w = shape
    step = max(scale_px / 2.0, 1.0)
    low = rng.standard_normal((int(np.ceil(h / step)) + 3, int(np.ceil(w / step)) + 3)).astype(np.float32)
    up = zoom(low, step, order=3, prefilter=False)[:h, :w]
    up -= up.mean()
    up /= up.std() + 1e-6
    return up


def _assign_classes(rng: np.random.Generator, ncell: int) -> np.ndarray:
    """Class codes (1..K) of an ncell x ncell grid: coherent blobs, every class used (almost) equally often.

    Each class gets a smooth random score field; (cell, class) pairs are taken best score first while
    the class is under its quota, so regions are contiguous where a class's field is high.
    """
    k = len(CLASSES)
    scores = np.stack([_smooth_field(rng, (ncell, ncell), 4.0) for _ in range(k)])
    quota = -(-ncell * ncell // k)
    cells = np.zeros(ncell * ncell, np.int64)
    counts = np.zeros(k, np.int64)
    for flat in np.argsort(-scores.ravel(), kind="stable"):
        cls, cell = divmod(int(flat), ncell * ncell)
        if cells[cell] == 0 and counts[cls] < quota:
            cells[cell] = cls + 1
            counts[cls] += 1
    return cells.reshape(ncell, ncell)


def _block_mean(a: np.ndarray, f: int) -> np.ndarray:
    if f == 1:
        return a
    *lead, h, w = a.shape
    return a.reshape(*lead, h // f, f, w // f, f).mean(axis=(-3, -1))


def _doy(date: str) -> int:
    return datetime.strptime(date, "%Y-%m-%d").timetuple().tm_yday


class _TileScene:
    """Static land cover of one tile's sub-area, and the acquisitions rendered from it."""

    def __init__(self, tile: str, spec: Mapping[str, Any], seed: int, tile_index: int) -> None:
        self.tile = tile
        self.n = n = int(spec["pixels"])
        self.x0, self.y0 = SUBAREA_ORIGINS[tile]
        self.seed = seed
        self.tile_index = tile_index
        rng = np.random.default_rng([seed, tile_index, 7])
        cell = int(spec["cell"])
        ncell = n // cell
        self.cells = _assign_classes(rng, ncell)
        self.cell = cell
        # Warp the cell boundaries with a smooth displacement field (|d| <= _WARP_PX) so regions look natural.
        dr = np.clip(_smooth_field(rng, (n, n), 48) * _WARP_PX / 2.5, -_WARP_PX, _WARP_PX)
        dc = np.clip(_smooth_field(rng, (n, n), 48) * _WARP_PX / 2.5, -_WARP_PX, _WARP_PX)
        rows, cols = np.mgrid[0:n, 0:n]
        ri = np.clip(((rows + dr) // cell).astype(int), 0, ncell - 1)
        ci = np.clip(((cols + dc) // cell).astype(int), 0, ncell - 1)
        self.landcover = self.cells[ri, ci].astype(np.uint8)
        # Static texture (multiplicative), field parcels for cropland, buildings/roads for urban.
        self.texture = _smooth_field(rng, (n, n), 6) * 0.6 + _smooth_field(rng, (n, n), 24) * 0.4
        parcel_w = 12
        angle = rng.uniform(0, np.pi, size=(ncell, ncell))[ri, ci]
        along = (rows * np.cos(angle) + cols * np.sin(angle)) // parcel_w
        self.parcel_phase = (
            np.sin(along * 12.9898 + ri * 78.233 + ci * 37.719 + seed) * 0.5
        )  # hash in [-.5,.5]
        block = (rows % 10 < 2) | (cols % 12 < 2)
        self.road = block & (self.landcover == CLASS_CODES["urban"])
        roof = rng.uniform(0.7, 1.6, size=(n // 4 + 1, n // 4 + 1)).astype(np.float32)
        self.roof = roof[rows // 4, cols // 4]

    # ----- geometry
    def transform(self, gsd: float) -> tuple[float, ...]:
        return (gsd, 0.0, self.x0, 0.0, -gsd, self.y0)

    def shape(self, gsd: float) -> tuple[int, int]:
        m = round(self.n * 10 / gsd)
        return (m, m)

    @property
    def bbox_utm(self) -> tuple[float, float, float, float]:
        side = self.n * 10.0
        return (self.x0, self.y0 - side, self.x0 + side, self.y0)

    # ----- rendering
    def surface(self, acq: _Acquisition, rng: np.random.Generator) -> np.ndarray:
        """True surface reflectance x 10000, (12, n, n) float32, for this date (no clouds)."""
        doy = _doy(acq.date)
        green = 0.5 + 0.5 * np.cos(2 * np.pi * (doy - 190) / 365)  # 1 in July, 0 in January
        spec = {k: np.asarray(v, np.float32) for k, v in _SPECTRA.items()}
        veg_season = spec["vegetation"] * (0.8 + 0.2 * green)
        water = spec["water"] * (1.0 + 0.25 * rng.uniform(-1, 1))  # turbidity varies by date
        table = np.stack(
            [np.zeros(12, np.float32), water, veg_season, spec["bare"], spec["bare"], spec["urban"]]
        )
        refl = table[self.landcover].transpose(2, 0, 1).copy()  # (12, n, n)
        crop = self.landcover == CLASS_CODES["cropland"]
        g = np.clip(green + self.parcel_phase[crop] * 1.2, 0.0, 1.0)
        refl[:, crop] = spec["bare"][:, None] * (1 - g) + spec["crop_green"][:, None] * g
        amp = np.array([0.0, *(_TEXTURE[c] for c in CLASSES)], np.float32)[self.landcover]
        refl *= 1.0 + amp * self.texture
        urban = self.landcover == CLASS_CODES["urban"]
        refl[:, urban] *= self.roof[urban]
        refl[:, self.road] = spec["road"][:, None]
        illum = rng.uniform(0.93, 1.07)
        haze = np.linspace(120, 0, 12, dtype=np.float32) * rng.uniform(0, 1)
        refl = refl * illum + haze[:, None, None]
        return refl

    def clouds(self, acq: _Acquisition, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
        """Cloud opacity, cirrus opacity and shadow strength at 10 m, each (n, n) in [0, 1]."""
        n = self.n
        f = _smooth_field(rng, (n, n), 80) * 0.75 + _smooth_field(rng, (n, n), 20) * 0.25
        thr = np.quantile(f, 1.0 - acq.cloud)
        alpha = np.clip((f - thr) / 0.35, 0.0, 1.0) if acq.cloud > 0 else np.zeros_like(f)
        cirrus = np.zeros_like(f)
        if acq.cirrus:
            c = _smooth_field(rng, (n, n), 60)
            cirrus = np.clip((c - np.quantile(c, 0.8)) / 0.8, 0.0, 0.6)
        dy, dx = _SHADOW_SHIFT_PX
        shadow = np.zeros_like(alpha)
        shadow[: n + dy, : n + dx] = alpha[-dy:, -dx:]  # shadow of the cloud at (r, c) lies at (r+dy, c+dx)
        shadow = np.clip(shadow * 1.5, 0.0, 1.0) * (alpha < 0.05)
        return alpha, cirrus, shadow

    def nodata60(self, acq: _Acquisition) -> np.ndarray:
        """Nodata (outside the swath) on the 60 m grid, so every resolution agrees exactly."""
        m = self.n // 6
        r, c = np.mgrid[0:m, 0:m]
        if not acq.nodata_strip:
            return np.zeros((m, m), bool)
        return c + 0.35 * r > 0.95 * m  # the swath edge cuts the east side diagonally

    def write_acquisition(self, acq: _Acquisition, cog_dir: Path) -> dict[str, Any]:
        rng = np.random.default_rng([self.seed, self.tile_index, int(acq.date.replace("-", ""))])
        refl = self.surface(acq, rng)
        alpha, cirrus, shadow = self.clouds(acq, rng)
        # Shadows darken, cirrus adds a thin bright veil, thick clouds replace the surface.
        refl *= 1.0 - 0.65 * shadow
        refl += cirrus * _CIRRUS[:, None, None]
        cloud_tex = 1.0 + 0.08 * self.texture
        refl = refl * (1.0 - alpha) + (alpha * cloud_tex) * _CLOUD[:, None, None]
        nod60 = self.nodata60(acq)
        offset = 1000 if float(acq.baseline) >= 4.0 else 0
        item_id = _item_id(acq, self.tile)
        folder = cog_dir / item_id
        hrefs: dict[str, Path] = {}
        for b, key in enumerate(_ASSET_KEYS):
            f = int(_GSD[b] // 10)
            band = _block_mean(refl[b], f)
            band = band * (1.0 + 0.01 * rng.standard_normal(band.shape, dtype=np.float32))
            dn = np.clip(np.rint(band), 1, 65535 - 1000).astype(np.uint16) + np.uint16(offset)
            nod = np.repeat(np.repeat(nod60, 6 // f, 0), 6 // f, 1)
            dn[nod] = 0
            hrefs[key] = _write_cog(folder / f"{key}.tif", dn[None], self.transform(_GSD[b]), nodata=0)
        scl = self.scl(alpha, cirrus, shadow, nod60)
        hrefs["SCL"] = _write_cog(
            folder / "SCL.tif", scl[None], self.transform(20.0), nodata=0, resampling="nearest"
        )
        # True-colour image as Sen2Cor's TCI: reflectance 0..~2500 -> 1..255, 0 = nodata.
        nod10 = np.repeat(np.repeat(nod60, 6, 0), 6, 1)
        rgb = np.clip(refl[[3, 2, 1]] * (255.0 / 2500.0), 1, 255).astype(np.uint8)
        rgb[:, nod10] = 0
        hrefs["visual"] = _write_cog(folder / "visual.tif", rgb, self.transform(10.0), nodata=0)
        return self.item(acq, item_id, hrefs, scl)

    def scl(self, alpha: np.ndarray, cirrus: np.ndarray, shadow: np.ndarray, nod60: np.ndarray) -> np.ndarray:
        lc20 = self.landcover[::2, ::2]
        a20, c20, s20 = _block_mean(alpha, 2), _block_mean(cirrus, 2), _block_mean(shadow, 2)
        scl = _SCL_FOR_CLASS[lc20].copy()
        scl[self.road[::2, ::2] & (lc20 == CLASS_CODES["urban"])] = SCL_NOTVEG
        scl[s20 > 0.3] = SCL_SHADOW
        scl[c20 > 0.15] = SCL_CIRRUS
        scl[a20 > 0.15] = SCL_CLOUD_MED
        scl[a20 > 0.5] = SCL_CLOUD_HIGH
        scl[np.repeat(np.repeat(nod60, 3, 0), 3, 1)] = SCL_NODATA
        return scl

    def write_landcover(self, path: Path) -> Path:
        return _write_cog(path, self.landcover[None], self.transform(10.0), nodata=0, resampling="mode")

    # ----- STAC
    def footprint(self) -> dict[str, Any]:
        from pyproj import Transformer

        minx, miny, maxx, maxy = self.bbox_utm
        to_ll = Transformer.from_crs(EPSG, 4326, always_xy=True)
        corners = [(minx, maxy), (minx, miny), (maxx, miny), (maxx, maxy), (minx, maxy)]
        ring = [list(map(lambda v: round(v, 7), to_ll.transform(x, y))) for x, y in corners]
        return {"type": "Polygon", "coordinates": [ring]}

    def item(
        self, acq: _Acquisition, item_id: str, hrefs: Mapping[str, Path], scl: np.ndarray
    ) -> dict[str, Any]:
        geometry = self.footprint()
        xs = [p[0] for p in geometry["coordinates"][0]]
        ys = [p[1] for p in geometry["coordinates"][0]]
        counts = np.bincount(scl.ravel(), minlength=12).astype(float)
        valid = counts[1:].sum()

        def pct(*codes: int) -> float:
            return round(100.0 * sum(counts[c] for c in codes) / valid, 6) if valid else 0.0

        sensing = datetime.strptime(acq.date + acq.time, "%Y-%m-%d%H%M%S").replace(tzinfo=timezone.utc)
        generated = sensing + timedelta(hours=15, minutes=15, seconds=44)
        orbit = _absolute_orbit(acq)
        baseline_code = "N" + acq.baseline.replace(".", "")
        props: dict[str, Any] = {
            "datetime": sensing.strftime("%Y-%m-%dT%H:%M:%S.%f") + "Z",
            "platform": {"S2A": "Sentinel-2A", "S2B": "Sentinel-2B"}[acq.platform],
            "proj:epsg": EPSG,
            "instruments": ["msi"],
            "s2:mgrs_tile": self.tile,
            "constellation": "Sentinel 2",
            "s2:granule_id": f"{acq.platform}_OPER_MSI_L2A_TL_ESRI_{generated:%Y%m%dT%H%M%S}_A{orbit:06d}_T{self.tile}_{baseline_code}",
            "eo:cloud_cover": pct(SCL_CLOUD_MED, SCL_CLOUD_HIGH, SCL_CIRRUS),
            "s2:datatake_id": f"G{acq.platform}_{sensing:%Y%m%dT%H%M%S}_{orbit:06d}_{baseline_code}",
            "s2:product_uri": f"{acq.platform}_MSIL2A_{sensing:%Y%m%dT%H%M%S}_{baseline_code}_R065_T{self.tile}_{generated:%Y%m%dT%H%M%S}.SAFE",
            "s2:datastrip_id": f"{acq.platform}_OPER_MSI_L2A_DS_ESRI_{generated:%Y%m%dT%H%M%S}_S{sensing:%Y%m%dT%H%M%S}_{baseline_code}",
            "s2:product_type": "S2MSI2A",
            "sat:orbit_state": "descending",
            "s2:datatake_type": "INS-NOBS",
            "s2:generation_time": generated.strftime("%Y-%m-%dT%H:%M:%S.%f") + "Z",
            "sat:relative_orbit": 65,
            "s2:water_percentage": pct(SCL_WATER),
            "s2:mean_solar_zenith": round(
                20.0 + 30.0 * abs(np.cos(2 * np.pi * (_doy(acq.date) - 172) / 730)), 4
            ),
            "s2:mean_solar_azimuth": 150.0,
            "s2:processing_baseline": acq.baseline,
            "s2:snow_ice_percentage": 0.0,
            "s2:vegetation_percentage": pct(SCL_VEG),
            "s2:thin_cirrus_percentage": pct(SCL_CIRRUS),
            "s2:cloud_shadow_percentage": pct(SCL_SHADOW),
            "s2:nodata_pixel_percentage": round(100.0 * counts[0] / counts.sum(), 6),
            "s2:unclassified_percentage": pct(SCL_UNCLASSIFIED),
            "s2:dark_features_percentage": 0.0,
            "s2:not_vegetated_percentage": pct(SCL_NOTVEG),
            "s2:degraded_msi_data_percentage": 0.0,
            "s2:high_proba_clouds_percentage": pct(SCL_CLOUD_HIGH),
            "s2:medium_proba_clouds_percentage": pct(SCL_CLOUD_MED),
            "s2:saturated_defective_pixel_percentage": 0.0,
            "s2:reflectance_conversion_factor": round(
                1 + 0.0334 * np.cos(2 * np.pi * (_doy(acq.date) - 4) / 365), 6
            ),
        }
        assets: dict[str, Any] = {}
        for b, band in enumerate(_BANDS):
            key = _ASSET_KEYS[b]
            assets[key] = self._asset(
                hrefs[key],
                _GSD[b],
                f"Band {band.sensor_band[1:].lstrip('0')} - {band.description.title()} - {int(_GSD[b])}m",
            )
            info: dict[str, Any] = {
                "name": key,
                "description": f"Band {band.sensor_band[1:].lstrip('0')} - {band.description.title()}",
                "center_wavelength": round(band.wavelength_nm / 1000, 3),
                "full_width_half_max": round(band.bandwidth_nm / 1000, 3),
            }
            common = _COMMON_NAMES.get(band.name)
            if common:
                info["common_name"] = common
            assets[key]["eo:bands"] = [info]
        assets["SCL"] = self._asset(hrefs["SCL"], 20.0, "Scene classfication map (SCL)")
        assets["visual"] = self._asset(hrefs["visual"], 10.0, "True color image")
        assets["visual"]["eo:bands"] = [
            {"name": k, "common_name": c, "description": d, "center_wavelength": w, "full_width_half_max": fw}
            for k, c, d, w, fw in (
                ("B04", "red", "Band 4 - Red", 0.665, 0.038),
                ("B03", "green", "Band 3 - Green", 0.56, 0.045),
                ("B02", "blue", "Band 2 - Blue", 0.49, 0.098),
            )
        ]
        ordered = {k: assets[k] for k in sorted(assets, key=_asset_sort_key)}
        return {
            "type": "Feature",
            "stac_version": "1.0.0",
            "stac_extensions": list(_STAC_EXTENSIONS),
            "id": item_id,
            "collection": "sentinel-2-l2a",
            "geometry": geometry,
            "bbox": [min(xs), min(ys), max(xs), max(ys)],
            "properties": props,
            "links": [],
            "assets": ordered,
        }

    def _asset(self, href: Path, gsd: float, title: str) -> dict[str, Any]:
        return {
            "href": os.fspath(href),
            "type": COG_MEDIA_TYPE,
            "roles": ["data"],
            "title": title,
            "gsd": float(gsd),
            "proj:shape": list(self.shape(gsd)),
            "proj:bbox": list(self.bbox_utm),
            "proj:transform": list(self.transform(float(gsd))),
        }

    # ----- AOIs
    def aois(self, spec: Mapping[str, Any], tile_index: int) -> list[dict[str, Any]]:
        """Labelled AOIs, each inside the interior of one land-cover cell (so inside one class region)."""
        from pyproj import Transformer

        rng = np.random.default_rng([self.seed, tile_index, 11])
        to_ll = Transformer.from_crs(EPSG, 4326, always_xy=True)
        per_class = int(spec["aois_per_class"])
        side = int(spec["aoi_px"])
        margin = _WARP_PX + 2
        out = []
        for k, name in enumerate(CLASSES):
            code = k + 1
            cells = np.argwhere(self.cells == code)
            cells = cells[rng.permutation(len(cells))][:per_class]
            n_val = max(1, round(per_class * 0.2))
            splits = ["val"] * n_val + ["test"] * n_val + ["train"] * (len(cells) - 2 * n_val)
            for j, ((ci, cj), split) in enumerate(zip(cells, splits, strict=True)):
                free = self.cell - 2 * margin - side
                r0 = ci * self.cell + margin + int(rng.integers(0, free + 1))
                c0 = cj * self.cell + margin + int(rng.integers(0, free + 1))
                aoi_id = f"{self.tile}-{name}-{j:02d}"
                props = {
                    "aoi_id": aoi_id,
                    "label": name,
                    "split": split,
                    "start": "2021-01-01",
                    "end": "2023-12-31",
                }
                x0, y0 = self.x0 + c0 * 10.0, self.y0 - r0 * 10.0
                if j == len(cells) - 1 and k < 2:
                    # A point AOI with a buffer: the chip builder buffers it in metres.
                    cx, cy = x0 + side * 5.0, y0 - side * 5.0
                    props["buffer_m"] = float(side * 5 - 20)
                    geom = {"type": "Point", "coordinates": [round(v, 7) for v in to_ll.transform(cx, cy)]}
                else:
                    x1, y1 = x0 + side * 10.0, y0 - side * 10.0
                    ring = [(x0, y0), (x0, y1), (x1, y1), (x1, y0), (x0, y0)]
                    coords = [[round(v, 7) for v in to_ll.transform(x, y)] for x, y in ring]
                    geom = {"type": "Polygon", "coordinates": [coords]}
                out.append({"type": "Feature", "id": aoi_id, "properties": props, "geometry": geom})
        return out


_COMMON_NAMES = {
    "coastal": "coastal",
    "blue": "blue",
    "green": "green",
    "red": "red",
    "rededge1": "rededge",
    "rededge2": "rededge",
    "rededge3": "rededge",
    "nir": "nir",
    "nir08": "rededge",
    "swir16": "swir16",
    "swir22": "swir22",
}


def _asset_sort_key(key: str) -> tuple[int, str]:
    return (0 if key.startswith("B") else 1, key)


def _absolute_orbit(acq: _Acquisition) -> int:
    """A plausible absolute orbit number (143 orbits per 10-day cycle)."""
    ref = datetime(2021, 1, 1)
    days = (datetime.strptime(acq.date, "%Y-%m-%d") - ref).days
    return (29000 if acq.platform == "S2A" else 20000) + int(days * 14.3)


def _item_id(acq: _Acquisition, tile: str) -> str:
    sensing = acq.date.replace("-", "") + "T" + acq.time
    gen = datetime.strptime(acq.date + acq.time, "%Y-%m-%d%H%M%S") + timedelta(
        hours=15, minutes=15, seconds=44
    )
    return f"{acq.platform}_MSIL2A_{sensing}_R065_T{tile}_{gen:%Y%m%dT%H%M%S}"


def _write_cog(
    path: Path,
    data: np.ndarray,
    transform: Sequence[float],
    *,
    nodata: float | None,
    resampling: str = "average",
    epsg: int = EPSG,
) -> Path:
    """Write ``data`` (bands, rows, cols) as a deflate-compressed, tiled COG with overviews, atomically."""
    return write_geotiff(
        path,
        data,
        crs=f"EPSG:{epsg}",
        transform=Affine(*transform),
        nodata=nodata,
        cog=True,
        overview_resampling=resampling,
    )


def _collection(items: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    xs = [v for it in items for v in it["bbox"][0::2]]
    ys = [v for it in items for v in it["bbox"][1::2]]
    times = sorted(it["properties"]["datetime"] for it in items)
    item_assets: dict[str, Any] = {}
    for key, asset in items[0]["assets"].items():
        item_assets[key] = {
            k: v for k, v in asset.items() if k not in ("href", "proj:shape", "proj:bbox", "proj:transform")
        }
    return {
        "type": "Collection",
        "id": "sentinel-2-l2a",
        "stac_version": "1.0.0",
        "description": (
            "Synthetic Sentinel-2 Level-2A scenes generated by eo-jepa for offline demos and tests, laid out "
            "exactly as Planetary Computer's sentinel-2-l2a collection (asset keys, proj and s2 fields)."
        ),
        "title": "Sentinel-2 Level-2A (eo-jepa demo)",
        "license": "proprietary",
        "keywords": [
            "Sentinel",
            "Copernicus",
            "ESA",
            "Satellite",
            "Global",
            "Imagery",
            "Reflectance",
            "demo",
        ],
        "providers": [
            {
                "name": "eo-jepa",
                "roles": ["producer", "processor", "host"],
                "url": "https://github.com/eo-jepa/eo-jepa",
            }
        ],
        "stac_extensions": [
            "https://stac-extensions.github.io/item-assets/v1.0.0/schema.json",
            "https://stac-extensions.github.io/eo/v1.0.0/schema.json",
        ],
        "extent": {
            "spatial": {"bbox": [[min(xs), min(ys), max(xs), max(ys)]]},
            "temporal": {"interval": [[times[0], times[-1]]]},
        },
        "summaries": {
            "platform": sorted({it["properties"]["platform"] for it in items}),
            "constellation": ["Sentinel 2"],
            "instruments": ["msi"],
            "gsd": [10, 20, 60],
            "proj:epsg": sorted({it["properties"]["proj:epsg"] for it in items}),
        },
        "item_assets": item_assets,
        "links": [],
    }


def _write_static_catalog(
    folder: Path, collection: Mapping[str, Any], items: Sequence[Mapping[str, Any]]
) -> Path:
    """A self-contained static STAC catalogue: catalog.json -> collection.json -> one JSON per item."""
    if folder.exists():
        shutil.rmtree(folder)
    catalog = {
        "type": "Catalog",
        "id": "eo-jepa-demo",
        "stac_version": "1.0.0",
        "description": "eo-jepa demo scenes (static catalogue)",
        "links": [
            {"rel": "root", "href": "./catalog.json", "type": "application/json"},
            {"rel": "child", "href": "./sentinel-2-l2a/collection.json", "type": "application/json"},
        ],
    }
    coll = dict(collection)
    coll["links"] = [
        {"rel": "root", "href": "../catalog.json", "type": "application/json"},
        {"rel": "parent", "href": "../catalog.json", "type": "application/json"},
    ]
    for it in items:
        coll["links"].append(
            {"rel": "item", "href": f"./{it['id']}/{it['id']}.json", "type": "application/json"}
        )
        item = dict(it)
        item["links"] = [
            {"rel": "root", "href": "../../catalog.json", "type": "application/json"},
            {"rel": "parent", "href": "../collection.json", "type": "application/json"},
            {"rel": "collection", "href": "../collection.json", "type": "application/json"},
        ]
        atomic_write_json(folder / "sentinel-2-l2a" / it["id"] / f"{it['id']}.json", item)
    atomic_write_json(folder / "sentinel-2-l2a" / "collection.json", coll)
    atomic_write_json(folder / "catalog.json", catalog)
    return folder / "catalog.json"
