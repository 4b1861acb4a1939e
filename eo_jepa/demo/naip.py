"""Synthetic NAIP-like aerial tiles (4-band RGBN uint8 COGs at 0.6 m) with Planetary Computer ``naip`` items.

A high-resolution companion to :mod:`eo_jepa.demo.scenes` for the NAIP chip config: one raster per
year over the same ground (NAIP flies a state every two to three years), in NAD83 / UTM zone 10N
(EPSG:26910) as California's NAIP is, with the same five land-cover classes at aerial scale (roofs and
roads, crop rows, tree crowns) and labelled AOIs inside single-class regions. No clouds: NAIP is
acquired on clear days.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from affine import Affine
from pyproj import Transformer

from eo_jepa.demo.stac_json import COG_MEDIA_TYPE, extent, footprint
from eo_jepa.demo.synth import CLASS_CODES, CLASSES, assign_classes, smooth_field
from eo_jepa.errors import ConfigError
from eo_jepa.utils.geotiff import write_geotiff
from eo_jepa.utils.io import atomic_write_json

NAIP_EPSG = 26910  # NAD83 / UTM zone 10N
NAIP_GSD = 0.6
CELL_PX = 224  # one land-cover cell per 224 px chip of the shipped NAIP config
# Upper-left corner: a multiple of 224 * 0.6 = 134.4 m, on the chip builder's zone-global grid.
_ORIGIN = (4400 * 134.4, 30548 * 134.4)
# Mean RGBN digital numbers per class (8-bit, as NAIP's radiometrically balanced tiles).
_RGBN = {
    "water": (38, 58, 72, 16),
    "vegetation": (48, 78, 46, 172),
    "crop_green": (74, 112, 58, 185),
    "crop_bare": (150, 128, 104, 118),
    "bare": (176, 156, 126, 150),
    "urban": (150, 146, 142, 118),
    "road": (96, 96, 100, 78),
}
_TEXTURE = {"water": 0.04, "vegetation": 0.25, "cropland": 0.08, "bare": 0.10, "urban": 0.25}


@dataclass
class NaipScenes:
    root: Path
    cog_dir: Path
    items_path: Path
    collection_path: Path
    aois_path: Path
    landcover_path: Path
    years: tuple[int, ...]

    def items(self) -> list[dict[str, Any]]:
        return json.loads(self.items_path.read_text())["features"]


def make_naip_scenes(
    out_dir: str | os.PathLike[str],
    *,
    seed: int = 0,
    cells: int = 4,
    years: tuple[int, ...] = (2020, 2022),
) -> NaipScenes:
    """Write NAIP-like RGBN COGs (``cells`` x ``cells`` land-cover cells of 224 px each), items and AOIs.

    Deterministic per seed; files are written atomically (regenerating overwrites them).
    """
    if not 2 <= cells <= 16:
        raise ConfigError(f"cells={cells} is out of range; choose 2..16 (224 px land-cover cells per side).")
    if not years:
        raise ConfigError("years is empty; give at least one NAIP year, e.g. years=(2022,).")
    root = Path(out_dir).resolve()
    n = cells * CELL_PX
    rng = np.random.default_rng([seed, 26910])
    grid = assign_classes(rng, cells)
    rows, cols = np.mgrid[0:n, 0:n]
    warp = 12  # px; AOIs keep a larger margin
    dr = np.clip(smooth_field(rng, (n, n), 160) * warp / 2.5, -warp, warp)
    dc = np.clip(smooth_field(rng, (n, n), 160) * warp / 2.5, -warp, warp)
    ri = np.clip(((rows + dr) // CELL_PX).astype(int), 0, cells - 1)
    ci = np.clip(((cols + dc) // CELL_PX).astype(int), 0, cells - 1)
    lc = grid[ri, ci].astype(np.uint8)
    texture = smooth_field(rng, (n, n), 4) * 0.6 + smooth_field(rng, (n, n), 40) * 0.4
    crowns = smooth_field(rng, (n, n), 8)  # tree crowns: bright tops, dark gaps
    crop_rows = (np.sin((rows * 0.8 + cols * 0.3) * 2 * np.pi / 6) > 0) & (lc == CLASS_CODES["cropland"])
    urban = lc == CLASS_CODES["urban"]
    road = urban & ((rows % 60 < 8) | (cols % 70 < 8))
    roof = rng.uniform(0.6, 1.5, size=(n // 12 + 1, n // 12 + 1))[rows // 12, cols // 12]
    x0, y0 = _ORIGIN
    transform = (NAIP_GSD, 0.0, x0, 0.0, -NAIP_GSD, y0)
    crs, affine = f"EPSG:{NAIP_EPSG}", Affine(*transform)
    landcover_path = write_geotiff(
        root / "landcover.tif",
        lc[None],
        crs=crs,
        transform=affine,
        nodata=0,
        cog=True,
        overview_resampling="mode",
    )
    items = []
    for k, year in enumerate(sorted(years)):
        yr = np.random.default_rng([seed, year])
        green = 0.6 + 0.4 * yr.uniform()  # crop phenology differs between flights
        table = np.array(
            [
                (0, 0, 0, 0),
                _RGBN["water"],
                _RGBN["vegetation"],
                tuple(
                    green * g + (1 - green) * b
                    for g, b in zip(_RGBN["crop_green"], _RGBN["crop_bare"], strict=True)
                ),
                _RGBN["bare"],
                _RGBN["urban"],
            ],
            np.float32,
        )
        img = table[lc].transpose(2, 0, 1).copy()
        amp = np.array([0.0, *(_TEXTURE[c] for c in CLASSES)], np.float32)[lc]
        img *= 1.0 + amp * texture
        veg = lc == CLASS_CODES["vegetation"]
        img[:, veg] *= 1.0 + 0.25 * crowns[veg]
        img[:, crop_rows] *= 0.85
        img[:, urban] *= roof[urban]
        img[:, road] = np.array(_RGBN["road"], np.float32)[:, None]
        img *= yr.uniform(0.92, 1.08)  # flight-to-flight radiometric difference
        img += yr.normal(0, 2.0, size=img.shape).astype(np.float32)
        data = np.clip(np.rint(img), 0, 255).astype(np.uint8)
        date = f"{year}-0{5 + k % 3}-{12 + k:02d}"
        item_id = f"ca_m_3712213_ne_10_060_{date.replace('-', '')}"
        href = write_geotiff(root / "cogs" / f"{item_id}.tif", data, crs=crs, transform=affine, cog=True)
        items.append(_item(item_id, date, year, href, transform, (n, n)))
    collection = _collection(items)
    items_path = root / "items.json"
    atomic_write_json(root / "collection.json", collection)
    atomic_write_json(items_path, {"type": "FeatureCollection", "features": items})
    aois_path = root / "aois.geojson"
    atomic_write_json(aois_path, {"type": "FeatureCollection", "features": _aois(grid, x0, y0, warp)})
    return NaipScenes(
        root=root,
        cog_dir=root / "cogs",
        items_path=items_path,
        collection_path=root / "collection.json",
        aois_path=aois_path,
        landcover_path=landcover_path,
        years=tuple(sorted(years)),
    )


def _item(
    item_id: str, date: str, year: int, href: Path, transform: tuple[float, ...], shape: tuple[int, int]
) -> dict[str, Any]:
    x0, y0 = transform[2], transform[5]
    side = shape[0] * NAIP_GSD
    geometry = footprint((x0, y0 - side, x0 + side, y0), NAIP_EPSG)
    xs = [p[0] for p in geometry["coordinates"][0]]
    ys = [p[1] for p in geometry["coordinates"][0]]
    proj = {"proj:epsg": NAIP_EPSG, "proj:shape": list(shape), "proj:transform": list(transform)}
    proj_bbox = [x0, y0 - side, x0 + side, y0]
    return {
        "type": "Feature",
        "stac_version": "1.0.0",
        "stac_extensions": [
            "https://stac-extensions.github.io/eo/v1.0.0/schema.json",
            "https://stac-extensions.github.io/projection/v1.0.0/schema.json",
        ],
        "id": item_id,
        "collection": "naip",
        "geometry": geometry,
        "bbox": [min(xs), min(ys), max(xs), max(ys)],
        "properties": {
            "gsd": NAIP_GSD,
            "datetime": f"{date}T00:00:00Z",
            "naip:year": str(year),
            "naip:state": "ca",
            **proj,
            "proj:bbox": proj_bbox,
        },
        "links": [],
        "assets": {
            "image": {
                "href": os.fspath(href),
                "type": COG_MEDIA_TYPE,
                "roles": ["data"],
                "title": "RGBIR COG tile",
                "eo:bands": [
                    {"name": "Red", "common_name": "red"},
                    {"name": "Green", "common_name": "green"},
                    {"name": "Blue", "common_name": "blue"},
                    {"name": "NIR", "common_name": "nir", "description": "near-infrared"},
                ],
                **proj,
                "proj:bbox": proj_bbox,
            }
        },
    }


def _collection(items: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "type": "Collection",
        "id": "naip",
        "stac_version": "1.0.0",
        "title": "NAIP: National Agriculture Imagery Program (eo-jepa demo)",
        "description": "Synthetic NAIP-like 4-band RGBN 0.6 m tiles generated by eo-jepa, in Planetary Computer's naip format.",
        "license": "proprietary",
        "extent": extent(items),
        "links": [],
    }


def _aois(grid: np.ndarray, x0: float, y0: float, warp: int) -> list[dict[str, Any]]:
    """One square AOI per land-cover cell, inside the cell's interior; splits rotate per class."""
    to_ll = Transformer.from_crs(NAIP_EPSG, 4326, always_xy=True)
    margin = (warp + 8) * NAIP_GSD
    splits = ("train", "val", "test", "train")
    seen: dict[str, int] = {}
    out = []
    for (i, j), code in np.ndenumerate(grid):
        label = CLASSES[int(code) - 1]
        k = seen[label] = seen.get(label, -1) + 1
        cx0 = x0 + j * CELL_PX * NAIP_GSD + margin
        cy0 = y0 - i * CELL_PX * NAIP_GSD - margin
        side = CELL_PX * NAIP_GSD - 2 * margin
        ring = [(cx0, cy0), (cx0, cy0 - side), (cx0 + side, cy0 - side), (cx0 + side, cy0), (cx0, cy0)]
        aoi_id = f"naip-{label}-{k:02d}"
        out.append(
            {
                "type": "Feature",
                "id": aoi_id,
                "properties": {
                    "aoi_id": aoi_id,
                    "label": label,
                    "split": splits[k % len(splits)],
                    "start": "2020-01-01",
                    "end": "2023-12-31",
                },
                "geometry": {
                    "type": "Polygon",
                    "coordinates": [[[round(v, 8) for v in to_ll.transform(x, y)] for x, y in ring]],
                },
            }
        )
    return out
