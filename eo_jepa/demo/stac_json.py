"""STAC JSON of the demo data in Planetary Computer's format: items, collections, a static catalogue.

:func:`s2_item` describes one rendered Sentinel-2 L2A acquisition (:mod:`eo_jepa.demo.synth`) as
Planetary Computer's ``sentinel-2-l2a`` items do: asset keys, per-asset ``proj:*`` fields, ``eo:bands``,
``s2:*`` properties with the cloud and class percentages computed from the SCL. :func:`footprint`
and :func:`extent` serve the NAIP-like items (:mod:`eo_jepa.demo.naip`) as well.
"""

from __future__ import annotations

import copy
import os
import shutil
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
from pyproj import Transformer

from eo_jepa.demo.synth import (
    ASSET_KEYS,
    EPSG,
    GSD,
    S2_BANDS,
    SCL_CIRRUS,
    SCL_CLOUD_HIGH,
    SCL_CLOUD_MED,
    SCL_NOTVEG,
    SCL_SHADOW,
    SCL_UNCLASSIFIED,
    SCL_VEG,
    SCL_WATER,
    Acquisition,
    TileScene,
    day_of_year,
)
from eo_jepa.utils.io import atomic_write_json

COG_MEDIA_TYPE = "image/tiff; application=geotiff; profile=cloud-optimized"
_STAC_EXTENSIONS = [
    "https://stac-extensions.github.io/eo/v1.0.0/schema.json",
    "https://stac-extensions.github.io/sat/v1.0.0/schema.json",
    "https://stac-extensions.github.io/projection/v1.0.0/schema.json",
]


def footprint(bbox: Sequence[float], epsg: int) -> dict[str, Any]:
    """The GeoJSON polygon (EPSG:4326, 7 decimals) of a projected ``bbox`` (minx, miny, maxx, maxy)."""
    minx, miny, maxx, maxy = bbox
    to_ll = Transformer.from_crs(epsg, 4326, always_xy=True)
    corners = [(minx, maxy), (minx, miny), (maxx, miny), (maxx, maxy), (minx, maxy)]
    ring = [[round(v, 7) for v in to_ll.transform(x, y)] for x, y in corners]
    return {"type": "Polygon", "coordinates": [ring]}


def extent(items: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """A collection's ``extent``: the union of the items' bboxes and the span of their datetimes."""
    xs = [v for it in items for v in it["bbox"][0::2]]
    ys = [v for it in items for v in it["bbox"][1::2]]
    times = sorted(it["properties"]["datetime"] for it in items)
    return {
        "spatial": {"bbox": [[min(xs), min(ys), max(xs), max(ys)]]},
        "temporal": {"interval": [[times[0], times[-1]]]},
    }


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


def s2_item(
    scene: TileScene, acq: Acquisition, item_id: str, hrefs: Mapping[str, Path], scl: np.ndarray
) -> dict[str, Any]:
    """The STAC item of ``acq`` rendered from ``scene``, its assets at ``hrefs`` (asset key -> path)."""
    geometry = footprint(scene.bbox_utm, EPSG)
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
        "s2:mgrs_tile": scene.tile,
        "constellation": "Sentinel 2",
        "s2:granule_id": f"{acq.platform}_OPER_MSI_L2A_TL_ESRI_{generated:%Y%m%dT%H%M%S}_A{orbit:06d}_T{scene.tile}_{baseline_code}",
        "eo:cloud_cover": pct(SCL_CLOUD_MED, SCL_CLOUD_HIGH, SCL_CIRRUS),
        "s2:datatake_id": f"G{acq.platform}_{sensing:%Y%m%dT%H%M%S}_{orbit:06d}_{baseline_code}",
        "s2:product_uri": f"{acq.platform}_MSIL2A_{sensing:%Y%m%dT%H%M%S}_{baseline_code}_R065_T{scene.tile}_{generated:%Y%m%dT%H%M%S}.SAFE",
        "s2:datastrip_id": f"{acq.platform}_OPER_MSI_L2A_DS_ESRI_{generated:%Y%m%dT%H%M%S}_S{sensing:%Y%m%dT%H%M%S}_{baseline_code}",
        "s2:product_type": "S2MSI2A",
        "sat:orbit_state": "descending",
        "s2:datatake_type": "INS-NOBS",
        "s2:generation_time": generated.strftime("%Y-%m-%dT%H:%M:%S.%f") + "Z",
        "sat:relative_orbit": 65,
        "s2:water_percentage": pct(SCL_WATER),
        "s2:mean_solar_zenith": round(
            20.0 + 30.0 * abs(np.cos(2 * np.pi * (day_of_year(acq.date) - 172) / 730)), 4
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
            1 + 0.0334 * np.cos(2 * np.pi * (day_of_year(acq.date) - 4) / 365), 6
        ),
    }
    assets: dict[str, Any] = {}
    for b, band in enumerate(S2_BANDS):
        key = ASSET_KEYS[b]
        assets[key] = _asset(
            scene,
            hrefs[key],
            GSD[b],
            f"Band {band.sensor_band[1:].lstrip('0')} - {band.description.title()} - {int(GSD[b])}m",
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
    assets["SCL"] = _asset(scene, hrefs["SCL"], 20.0, "Scene classfication map (SCL)")
    assets["visual"] = _asset(scene, hrefs["visual"], 10.0, "True color image")
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


def _asset(scene: TileScene, href: Path, gsd: float, title: str) -> dict[str, Any]:
    return {
        "href": os.fspath(href),
        "type": COG_MEDIA_TYPE,
        "roles": ["data"],
        "title": title,
        "gsd": float(gsd),
        "proj:shape": list(scene.shape(gsd)),
        "proj:bbox": list(scene.bbox_utm),
        "proj:transform": list(scene.transform(float(gsd))),
    }


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


def _absolute_orbit(acq: Acquisition) -> int:
    """A plausible absolute orbit number (143 orbits per 10-day cycle)."""
    ref = datetime(2021, 1, 1)
    days = (datetime.strptime(acq.date, "%Y-%m-%d") - ref).days
    return (29000 if acq.platform == "S2A" else 20000) + int(days * 14.3)


def s2_item_id(acq: Acquisition, tile: str) -> str:
    """A Planetary Computer item id: platform, sensing time, relative orbit, tile, generation time."""
    sensing = acq.date.replace("-", "") + "T" + acq.time
    gen = datetime.strptime(acq.date + acq.time, "%Y-%m-%d%H%M%S") + timedelta(
        hours=15, minutes=15, seconds=44
    )
    return f"{acq.platform}_MSIL2A_{sensing}_R065_T{tile}_{gen:%Y%m%dT%H%M%S}"


def s2_collection(items: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The ``sentinel-2-l2a`` collection of ``items``, with ``item_assets`` from the first one."""
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
        "extent": extent(items),
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


def write_static_catalog(
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
