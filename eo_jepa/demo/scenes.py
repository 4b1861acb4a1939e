"""Synthetic but realistic Sentinel-2 L2A demo scenes, STAC items and AOIs, generated offline.

What :func:`make_demo_scenes` writes under ``out_dir``::

    cogs/<item id>/B01.tif ... B12.tif, B8A.tif, SCL.tif, visual.tif   Cloud-optimised GeoTIFFs
    landcover/<tile>.tif         the land-cover truth map (uint8 class codes, 10 m)
    collection.json              a STAC Collection ``sentinel-2-l2a``
    items.json                   an ItemCollection in Planetary Computer's format (absolute file hrefs)
    catalog/                     the same items as a static STAC catalogue (catalog.json + item files)
    aois.geojson                 labelled AOIs (EPSG:4326), each inside one land-cover region
    manifest.json                parameters + file list, written last (its presence means "complete")

This module writes the files and the manifest; the pixels come from :mod:`eo_jepa.demo.synth`, the
STAC JSON from :mod:`eo_jepa.demo.stac_json`. Facts the scenes respect (the README's "Demo data and
local servers" section lists them for users): tiles sit on the real Sentinel-2 MGRS grid of UTM zone
32N (109 800 m tiles whose upper-left corners are on the S2 tiling grid); the rasters cover a
sub-area of each tile and the items' ``proj:*`` fields describe exactly that sub-area; bands at their
native GSD (10/20/60 m), SCL at 20 m, uint16, nodata 0; dates on both sides of processing baseline
04.00, the newer ones stored with ``BOA_ADD_OFFSET = -1000`` (DN = reflectance x 10000 + 1000) in every
reflectance band (not SCL; nodata stays 0), the rule ESA introduced on 25 January 2022 and
:meth:`eo_jepa.bands.Sensor.offset_for` undoes.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from affine import Affine
from pyproj import Transformer

from eo_jepa._version import __version__
from eo_jepa.demo.stac_json import (
    COG_MEDIA_TYPE,
    rewrite_hrefs,
    s2_collection,
    s2_item,
    s2_item_id,
    write_static_catalog,
)
from eo_jepa.demo.synth import (
    ACQUISITIONS,
    ASSET_KEYS,
    CLASS_CODES,
    CLASSES,
    EPSG,
    GSD,
    MAX_DATES,
    SIZES,
    WARP_PX,
    Acquisition,
    TileScene,
)
from eo_jepa.errors import ConfigError
from eo_jepa.utils.geotiff import write_geotiff
from eo_jepa.utils.io import atomic_write_json

# Re-exported: where users and tests have always found them.
__all__ = [
    "CLASSES",
    "CLASS_CODES",
    "COG_MEDIA_TYPE",
    "MAX_DATES",
    "DemoScenes",
    "make_demo_scenes",
    "rewrite_hrefs",
]

log = logging.getLogger(__name__)


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
    if size not in SIZES:
        raise ConfigError(f"Unknown demo size {size!r}; choose one of: {', '.join(SIZES)}.")
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
    spec = SIZES[size]
    acquisitions = sorted(ACQUISITIONS[:n_dates], key=lambda a: a.date)
    root.mkdir(parents=True, exist_ok=True)
    manifest_path.unlink(missing_ok=True)
    cog_dir = root / "cogs"
    items: list[dict[str, Any]] = []
    aois: list[dict[str, Any]] = []
    landcover_paths: dict[str, Path] = {}
    for t, tile in enumerate(spec["tiles"]):
        scene = TileScene(tile, spec, seed, t)
        landcover_paths[tile] = _write_cog(
            root / "landcover" / f"{tile}.tif",
            scene.landcover[None],
            scene.transform(10.0),
            nodata=0,
            resampling="mode",
        )
        aois.extend(_aois(scene, spec, t))
        for acq in acquisitions:
            items.append(_write_acquisition(scene, acq, cog_dir))
    collection = s2_collection(items)
    items_path = root / "items.json"
    atomic_write_json(root / "collection.json", collection)
    atomic_write_json(items_path, {"type": "FeatureCollection", "features": items})
    aois_path = root / "aois.geojson"
    atomic_write_json(aois_path, {"type": "FeatureCollection", "features": aois})
    write_static_catalog(root / "catalog", collection, items)
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


def _write_acquisition(scene: TileScene, acq: Acquisition, cog_dir: Path) -> dict[str, Any]:
    """Render ``acq`` of ``scene``, write its COGs under ``cog_dir/<item id>/`` and return its STAC item."""
    item_id = s2_item_id(acq, scene.tile)
    folder = cog_dir / item_id
    rendering = scene.render(acq)
    hrefs: dict[str, Path] = {}
    for key, gsd in zip(ASSET_KEYS, GSD, strict=True):
        hrefs[key] = _write_cog(
            folder / f"{key}.tif", rendering.bands[key][None], scene.transform(gsd), nodata=0
        )
    hrefs["SCL"] = _write_cog(
        folder / "SCL.tif", rendering.scl[None], scene.transform(20.0), nodata=0, resampling="nearest"
    )
    hrefs["visual"] = _write_cog(folder / "visual.tif", rendering.visual, scene.transform(10.0), nodata=0)
    return s2_item(scene, acq, item_id, hrefs, rendering.scl)


def _write_cog(
    path: Path,
    data: np.ndarray,
    transform: Sequence[float],
    *,
    nodata: float | None,
    resampling: str = "average",
) -> Path:
    """Write ``data`` (bands, rows, cols) in the scenes' CRS as a COG with overviews, atomically."""
    return write_geotiff(
        path,
        data,
        crs=f"EPSG:{EPSG}",
        transform=Affine(*transform),
        nodata=nodata,
        cog=True,
        overview_resampling=resampling,
    )


def _aois(scene: TileScene, spec: Mapping[str, Any], tile_index: int) -> list[dict[str, Any]]:
    """Labelled AOIs, each inside the interior of one land-cover cell (so inside one class region)."""
    rng = np.random.default_rng([scene.seed, tile_index, 11])
    to_ll = Transformer.from_crs(EPSG, 4326, always_xy=True)
    per_class = int(spec["aois_per_class"])
    side = int(spec["aoi_px"])
    margin = WARP_PX + 2
    out = []
    for k, name in enumerate(CLASSES):
        code = k + 1
        cells = np.argwhere(scene.cells == code)
        cells = cells[rng.permutation(len(cells))][:per_class]
        n_val = max(1, round(per_class * 0.2))
        splits = ["val"] * n_val + ["test"] * n_val + ["train"] * (len(cells) - 2 * n_val)
        for j, ((ci, cj), split) in enumerate(zip(cells, splits, strict=True)):
            free = scene.cell - 2 * margin - side
            r0 = ci * scene.cell + margin + int(rng.integers(0, free + 1))
            c0 = cj * scene.cell + margin + int(rng.integers(0, free + 1))
            aoi_id = f"{scene.tile}-{name}-{j:02d}"
            props = {
                "aoi_id": aoi_id,
                "label": name,
                "split": split,
                "start": "2021-01-01",
                "end": "2023-12-31",
            }
            x0, y0 = scene.x0 + c0 * 10.0, scene.y0 - r0 * 10.0
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
