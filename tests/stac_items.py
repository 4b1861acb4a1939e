"""Small hand-written STAC items in the shape real Planetary Computer and Earth Search items have.

Trimmed to what the builder reads (a few assets, the projection and Sentinel-2 properties), with the
quirks real catalogues have: no ``s2:processing_baseline`` on some items (the product id still
encodes it), Earth Search flags as strings, ``proj:code`` instead of ``proj:epsg`` (STAC projection
v2 / pystac >= 1.15), Earth Search's collection-1 items, ``geometry: null``.
"""

from __future__ import annotations

import copy
from typing import Any

_FOOTPRINT = {
    "type": "Polygon",
    "coordinates": [[[11.77, 42.01], [11.77, 41.97], [11.82, 41.97], [11.82, 42.01], [11.77, 42.01]]],
}
_BBOX = [11.77, 41.97, 11.82, 42.01]


def _asset(href: str, gsd: int) -> dict[str, Any]:
    n = 109800 // gsd
    return {
        "href": href,
        "type": "image/tiff; application=geotiff; profile=cloud-optimized",
        "roles": ["data"],
        "gsd": gsd,
        "proj:shape": [n, n],
        "proj:transform": [gsd, 0.0, 699960.0, 0.0, -gsd, 4700040.0],
    }


def planetary_computer_item(
    *, date: str = "20230728", baseline: str | None = "05.09", product_uri: bool = True
) -> dict[str, Any]:
    """A Planetary Computer ``sentinel-2-l2a`` item: B-numbered asset keys, blob hrefs, ``proj:epsg``."""
    n = (baseline or "05.09").replace(".", "")
    product = f"S2A_MSIL2A_{date}T101601_N{n}_R065_T32TQM_{date}T130000.SAFE"
    base = f"https://sentinel2l2a01.blob.core.windows.net/sentinel2-l2/32/T/QM/{date[:4]}/{date[4:6]}/{date[6:]}/{product}"
    props: dict[str, Any] = {
        "datetime": f"{date[:4]}-{date[4:6]}-{date[6:]}T10:16:01.024000Z",
        "platform": "Sentinel-2A",
        "proj:epsg": 32632,
        "eo:cloud_cover": 12.5,
        "s2:mgrs_tile": "32TQM",
        "s2:datatake_id": f"GS2A_{date}T101601_042400_N{n}",
    }
    if baseline is not None:
        props["s2:processing_baseline"] = baseline
    if product_uri:
        props["s2:product_uri"] = product
    return {
        "type": "Feature",
        "stac_version": "1.0.0",
        "id": f"S2A_MSIL2A_{date}T101601_R065_T32TQM_{date}T130000",
        "collection": "sentinel-2-l2a",
        "geometry": copy.deepcopy(_FOOTPRINT),
        "bbox": list(_BBOX),
        "properties": props,
        "assets": {
            "B02": _asset(f"{base}/GRANULE/IMG_DATA/R10m/T32TQM_B02_10m.tif", 10),
            "B04": _asset(f"{base}/GRANULE/IMG_DATA/R10m/T32TQM_B04_10m.tif", 10),
            "SCL": _asset(f"{base}/GRANULE/IMG_DATA/R20m/T32TQM_SCL_20m.tif", 20),
        },
        "links": [],
    }


def earth_search_item(
    *, collection: str = "sentinel-2-l2a", date: str = "2023-07-28", baseline: str | None = "05.09",
    boa_offset_applied: Any = True,
) -> dict[str, Any]:  # fmt: skip
    """An Earth Search item: named asset keys (``red``, ``scl``), S3 hrefs, ``proj:code``; the legacy
    collection flags ``earthsearch:boa_offset_applied`` (sometimes as a string), collection 1 does not."""
    compact = date.replace("-", "")
    base = f"https://sentinel-cogs.s3.us-west-2.amazonaws.com/sentinel-s2-l2a-cogs/32/T/QM/{date[:4]}/{int(date[5:7])}/S2A_32TQM_{compact}_0_L2A"
    props: dict[str, Any] = {
        "datetime": f"{date}T10:16:01.024000Z",
        "proj:code": "EPSG:32632",
        "eo:cloud_cover": 3.2,
        "mgrs:utm_zone": 32,
        "s2:product_uri": f"S2A_MSIL2A_{compact}T101601_N{(baseline or '05.09').replace('.', '')}_R065_T32TQM_{compact}T130000.SAFE",
    }
    if baseline is not None:
        props["s2:processing_baseline"] = baseline
    if boa_offset_applied is not None:
        props["earthsearch:boa_offset_applied"] = boa_offset_applied
    prefix = "S2A_T32TQM" if collection == "sentinel-2-c1-l2a" else "S2A_32TQM"
    return {
        "type": "Feature",
        "stac_version": "1.0.0",
        "id": f"{prefix}_{compact}_0_L2A",
        "collection": collection,
        "geometry": copy.deepcopy(_FOOTPRINT),
        "bbox": list(_BBOX),
        "properties": props,
        "assets": {
            "blue": _asset(f"{base}/B02.tif", 10),
            "red": _asset(f"{base}/B04.tif", 10),
            "scl": _asset(f"{base}/SCL.tif", 20),
        },
        "links": [],
    }
