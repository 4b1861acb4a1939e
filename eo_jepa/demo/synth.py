"""Pixel synthesis for the demo scenes: land-cover maps, Sentinel-2 L2A reflectance, clouds, SCL.

Arrays only: :class:`TileScene` holds the static land cover of one MGRS tile's sub-area and renders
an :class:`Acquisition` of it as the digital numbers a Sentinel-2 L2A product stores, band by band at
native GSD (10/20/60 m, uint16, nodata 0; reflectance x 10000, + 1000 from processing baseline 04.00
on), with its 20 m Scene Classification Layer and a true-colour image. Writing the rasters, the STAC
items (:mod:`eo_jepa.demo.stac_json`) and the manifest (:mod:`eo_jepa.demo.scenes`) happens elsewhere.
The random fields and the class-map assignment serve the NAIP-like tiles too (:mod:`eo_jepa.demo.naip`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
from scipy.ndimage import zoom

from eo_jepa.bands import PLANETARY_COMPUTER, SENTINEL2_L2A

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
S2_BANDS = SENTINEL2_L2A.bands
ASSET_KEYS = tuple(b.asset_key(PLANETARY_COMPUTER) for b in S2_BANDS)
GSD = np.array([b.gsd_m for b in S2_BANDS])

# Typical bottom-of-atmosphere reflectance x 10000 per class, in S2_BANDS order
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
class Acquisition:
    date: str  # YYYY-MM-DD
    time: str  # HHMMSS sensing start
    platform: str  # S2A | S2B
    baseline: str  # "04.00"
    cloud: float  # target cloud fraction
    nodata_strip: bool = False
    cirrus: bool = False


# Interleaved so that any first n >= 2 covers both sides of baseline 04.00; sorted by date when used.
ACQUISITIONS = (
    Acquisition("2021-04-18", "101559", "S2B", "02.15", 0.03),
    Acquisition("2022-06-12", "101609", "S2B", "04.00", 0.10, cirrus=True),
    Acquisition("2021-08-06", "101031", "S2A", "03.01", 0.30, nodata_strip=True),
    Acquisition("2023-07-28", "101601", "S2A", "05.09", 0.75),
    Acquisition("2021-10-15", "101021", "S2A", "03.01", 0.20),
    Acquisition("2022-09-03", "101559", "S2B", "04.00", 0.50),
    Acquisition("2023-03-21", "101559", "S2B", "05.09", 0.06, cirrus=True),
    Acquisition("2021-06-02", "101031", "S2A", "02.15", 0.90),
)
MAX_DATES = len(ACQUISITIONS)

# Per size: raster side in 10 m pixels (a multiple of 6 so the 60 m grid aligns), tiles, land-cover
# cell size (px), polygon AOIs per class per tile, AOI side (px).
SIZES: dict[str, dict[str, Any]] = {
    "tiny": {"pixels": 384, "tiles": ("32TQM",), "cell": 64, "aois_per_class": 4, "aoi_px": 24},
    "small": {"pixels": 768, "tiles": ("32TQM", "32TPM"), "cell": 64, "aois_per_class": 10, "aoi_px": 40},
    # benchmarks: builds of a few thousand chips, so that fixed per-build costs do not hide throughput
    "medium": {"pixels": 1536, "tiles": ("32TQM", "32TPM"), "cell": 64, "aois_per_class": 10, "aoi_px": 40},
}
WARP_PX = 6  # max displacement of land-cover boundaries from the cell grid
_SHADOW_SHIFT_PX = (-28, -22)  # clouds' shadows fall north-west (sun in the south-east at 10:30)


@dataclass
class Rendering:
    """One acquisition of a tile as stored: digital numbers per asset key, SCL (20 m), TCI (10 m)."""

    bands: dict[str, np.ndarray]  # asset key (B01..B12, B8A) -> (rows, cols) uint16 at the band's GSD
    scl: np.ndarray  # (rows, cols) uint8 Scene Classification Layer at 20 m
    visual: np.ndarray  # (3, rows, cols) uint8 true-colour image at 10 m


def smooth_field(rng: np.random.Generator, shape: tuple[int, int], scale_px: float) -> np.ndarray:
    """Zero-mean, unit-std random field with features about ``scale_px`` pixels across (float32)."""
    h, w = shape
    step = max(scale_px / 2.0, 1.0)
    low = rng.standard_normal((int(np.ceil(h / step)) + 3, int(np.ceil(w / step)) + 3)).astype(np.float32)
    up = zoom(low, step, order=3, prefilter=False)[:h, :w]
    up -= up.mean()
    up /= up.std() + 1e-6
    return up


def assign_classes(rng: np.random.Generator, ncell: int) -> np.ndarray:
    """Class codes (1..K) of an ncell x ncell grid: coherent blobs, every class used (almost) equally often.

    Each class gets a smooth random score field; (cell, class) pairs are taken best score first while
    the class is under its quota, so regions are contiguous where a class's field is high.
    """
    k = len(CLASSES)
    scores = np.stack([smooth_field(rng, (ncell, ncell), 4.0) for _ in range(k)])
    quota = -(-ncell * ncell // k)
    cells = np.zeros(ncell * ncell, np.int64)
    counts = np.zeros(k, np.int64)
    for flat in np.argsort(-scores.ravel(), kind="stable"):
        cls, cell = divmod(int(flat), ncell * ncell)
        if cells[cell] == 0 and counts[cls] < quota:
            cells[cell] = cls + 1
            counts[cls] += 1
    return cells.reshape(ncell, ncell)


def block_mean(a: np.ndarray, f: int) -> np.ndarray:
    if f == 1:
        return a
    *lead, h, w = a.shape
    return a.reshape(*lead, h // f, f, w // f, f).mean(axis=(-3, -1))


def day_of_year(date: str) -> int:
    return datetime.strptime(date, "%Y-%m-%d").timetuple().tm_yday


class TileScene:
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
        self.cells = assign_classes(rng, ncell)
        self.cell = cell
        # Warp the cell boundaries with a smooth displacement field (|d| <= WARP_PX) so regions look natural.
        dr = np.clip(smooth_field(rng, (n, n), 48) * WARP_PX / 2.5, -WARP_PX, WARP_PX)
        dc = np.clip(smooth_field(rng, (n, n), 48) * WARP_PX / 2.5, -WARP_PX, WARP_PX)
        rows, cols = np.mgrid[0:n, 0:n]
        ri = np.clip(((rows + dr) // cell).astype(int), 0, ncell - 1)
        ci = np.clip(((cols + dc) // cell).astype(int), 0, ncell - 1)
        self.landcover = self.cells[ri, ci].astype(np.uint8)
        # Static texture (multiplicative), field parcels for cropland, buildings/roads for urban.
        self.texture = smooth_field(rng, (n, n), 6) * 0.6 + smooth_field(rng, (n, n), 24) * 0.4
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
    def surface(self, acq: Acquisition, rng: np.random.Generator) -> np.ndarray:
        """True surface reflectance x 10000, (12, n, n) float32, for this date (no clouds)."""
        doy = day_of_year(acq.date)
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

    def clouds(self, acq: Acquisition, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
        """Cloud opacity, cirrus opacity and shadow strength at 10 m, each (n, n) in [0, 1]."""
        n = self.n
        f = smooth_field(rng, (n, n), 80) * 0.75 + smooth_field(rng, (n, n), 20) * 0.25
        thr = np.quantile(f, 1.0 - acq.cloud)
        alpha = np.clip((f - thr) / 0.35, 0.0, 1.0) if acq.cloud > 0 else np.zeros_like(f)
        cirrus = np.zeros_like(f)
        if acq.cirrus:
            c = smooth_field(rng, (n, n), 60)
            cirrus = np.clip((c - np.quantile(c, 0.8)) / 0.8, 0.0, 0.6)
        dy, dx = _SHADOW_SHIFT_PX
        shadow = np.zeros_like(alpha)
        shadow[: n + dy, : n + dx] = alpha[-dy:, -dx:]  # shadow of the cloud at (r, c) lies at (r+dy, c+dx)
        shadow = np.clip(shadow * 1.5, 0.0, 1.0) * (alpha < 0.05)
        return alpha, cirrus, shadow

    def nodata60(self, acq: Acquisition) -> np.ndarray:
        """Nodata (outside the swath) on the 60 m grid, so every resolution agrees exactly."""
        m = self.n // 6
        r, c = np.mgrid[0:m, 0:m]
        if not acq.nodata_strip:
            return np.zeros((m, m), bool)
        return c + 0.35 * r > 0.95 * m  # the swath edge cuts the east side diagonally

    def render(self, acq: Acquisition) -> Rendering:
        """The acquisition's stored digital numbers: every band at its GSD, the SCL and the TCI."""
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
        bands: dict[str, np.ndarray] = {}
        for b, key in enumerate(ASSET_KEYS):
            f = int(GSD[b] // 10)
            band = block_mean(refl[b], f)
            band = band * (1.0 + 0.01 * rng.standard_normal(band.shape, dtype=np.float32))
            dn = np.clip(np.rint(band), 1, 65535 - 1000).astype(np.uint16) + np.uint16(offset)
            nod = np.repeat(np.repeat(nod60, 6 // f, 0), 6 // f, 1)
            dn[nod] = 0
            bands[key] = dn
        scl = self.scl(alpha, cirrus, shadow, nod60)
        # True-colour image as Sen2Cor's TCI: reflectance 0..~2500 -> 1..255, 0 = nodata.
        nod10 = np.repeat(np.repeat(nod60, 6, 0), 6, 1)
        rgb = np.clip(refl[[3, 2, 1]] * (255.0 / 2500.0), 1, 255).astype(np.uint8)
        rgb[:, nod10] = 0
        return Rendering(bands, scl, rgb)

    def scl(self, alpha: np.ndarray, cirrus: np.ndarray, shadow: np.ndarray, nod60: np.ndarray) -> np.ndarray:
        lc20 = self.landcover[::2, ::2]
        a20, c20, s20 = block_mean(alpha, 2), block_mean(cirrus, 2), block_mean(shadow, 2)
        scl = _SCL_FOR_CLASS[lc20].copy()
        scl[self.road[::2, ::2] & (lc20 == CLASS_CODES["urban"])] = SCL_NOTVEG
        scl[s20 > 0.3] = SCL_SHADOW
        scl[c20 > 0.15] = SCL_CIRRUS
        scl[a20 > 0.15] = SCL_CLOUD_MED
        scl[a20 > 0.5] = SCL_CLOUD_HIGH
        scl[np.repeat(np.repeat(nod60, 3, 0), 3, 1)] = SCL_NODATA
        return scl
