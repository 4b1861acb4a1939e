"""Areas of interest: GeoJSON/GeoPackage polygons, or points with a square buffer.

Each feature may carry its own ``aoi_id``, ``label``, ``split`` and ``start``/``end`` date range
(property names configurable in :class:`~eo_jepa.chips.config.AoiConfig`).
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eo_jepa.chips.config import AoiConfig
from eo_jepa.chips.crs import reproject_geometry, utm_epsg
from eo_jepa.errors import DataError

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Aoi:
    aoi_id: str
    geometry: Any  # shapely geometry, EPSG:4326
    start: str  # ISO date
    end: str
    split: str
    label: str | None


def _date(value: Any, where: str) -> str:
    """ISO date ('2023-06-30') or UTC datetime ('2023-06-30T10:00:00Z'); vector readers may parse dates."""
    if isinstance(value, dt.datetime):  # includes pandas.Timestamp
        if value.tzinfo is None and value.time() == dt.time(0):
            return value.date().isoformat()
        value = value if value.tzinfo else value.replace(tzinfo=dt.timezone.utc)
        return value.astimezone(dt.timezone.utc).isoformat().replace("+00:00", "Z")
    if isinstance(value, dt.date):
        return value.isoformat()
    text = str(value).strip()
    try:
        dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise DataError(f"{where} date {text!r} is not an ISO date; write it like 2023-06-30.") from None
    return text


def _is_missing(value: Any) -> bool:
    if value is None:
        return True
    try:
        return bool(value != value)  # NaN
    except (TypeError, ValueError):
        return False


def load_aois(source: str | Path | Any, cfg: AoiConfig | None = None) -> list[Aoi]:
    """AOIs from a vector file path or a GeoDataFrame (any CRS; points are buffered in UTM)."""
    import geopandas as gpd

    cfg = cfg or AoiConfig()
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.is_file():
            raise DataError(f"AOI file {str(path)!r} does not exist; pass a GeoJSON or GeoPackage file.")
        try:
            gdf = gpd.read_file(path)
        except Exception as exc:  # pyogrio raises its own DataSourceError types
            raise DataError(f"AOI file {str(path)!r} could not be read as vector data ({exc}).") from None
        name = str(path)
    else:
        gdf, name = source, "AOI table"
    if len(gdf) == 0:
        raise DataError(f"{name} holds no features; add at least one polygon or point.")
    if gdf.crs is None or gdf.crs.is_geographic:
        minx, miny, maxx, maxy = gdf.total_bounds
        if not (-180.0 <= minx <= maxx <= 360.0 and -90.0 <= miny <= maxy <= 90.0):
            crs = "no CRS" if gdf.crs is None else f"CRS {gdf.crs.to_string()}"
            raise DataError(
                f"{name} has {crs} but coordinates up to ({maxx:.0f}, {maxy:.0f}), which are not longitude/"
                "latitude degrees (metres?); declare its CRS (e.g. `ogr2ogr -a_srs EPSG:32632 out.geojson in.geojson`) "
                "or write it in EPSG:4326."
            )
    if gdf.crs is None:
        gdf = gdf.set_crs(4326)
    gdf = gdf.to_crs(4326)
    out: list[Aoi] = []
    seen: set[str] = set()
    for i, row in enumerate(gdf.itertuples(index=False)):
        props = row._asdict()
        geom = props.pop("geometry")
        aoi_id = props.get(cfg.id_property)
        aoi_id = f"aoi-{i:04d}" if _is_missing(aoi_id) else str(aoi_id)
        where = f"AOI {aoi_id!r} in {name}"
        if geom is None or geom.is_empty:
            raise DataError(f"{where} has an empty geometry; give it a polygon or a point.")
        if aoi_id in seen:
            raise DataError(f"{where}: {cfg.id_property} {aoi_id!r} is repeated; give each AOI a unique id.")
        seen.add(aoi_id)
        if geom.geom_type in ("Point", "MultiPoint"):
            half_width = _point_buffer(props.get(cfg.buffer_property), cfg.point_buffer_m, where)
            geom = _buffer_point(geom, half_width, utm_epsg(geom.centroid.x, geom.centroid.y))
        elif geom.geom_type not in ("Polygon", "MultiPolygon"):
            raise DataError(f"{where} is a {geom.geom_type}; AOIs must be polygons or points.")
        elif not geom.is_valid:
            geom = _repair(geom, where)
        split = props.get(cfg.split_property)
        split = cfg.default_split if _is_missing(split) else str(split)
        if split not in SPLITS:
            raise DataError(f"{where} has split {split!r}; use one of {', '.join(SPLITS)}.")
        label = props.get(cfg.label_property)
        start = _date(cfg.start if _is_missing(props.get("start")) else props["start"], where + " start")
        end = _date(cfg.end if _is_missing(props.get("end")) else props["end"], where + " end")
        if end < start:
            raise DataError(f"{where} ends ({end}) before it starts ({start}); swap the dates.")
        out.append(Aoi(aoi_id, geom, start, end, split, None if _is_missing(label) else str(label)))
    return out


def _repair(geom: Any, where: str) -> Any:
    """A self-intersecting (bow-tie) polygon made valid with ``shapely.make_valid`` (same area, its
    polygonal parts kept), with a warning; DataError when nothing polygonal is left."""
    import shapely
    from shapely.geometry import MultiPolygon
    from shapely.validation import explain_validity

    why = explain_validity(geom)
    fixed = shapely.make_valid(geom)
    if fixed.geom_type == "GeometryCollection":
        parts = [g for g in fixed.geoms if g.geom_type in ("Polygon", "MultiPolygon")]
        fixed = shapely.unary_union(parts) if parts else MultiPolygon()
    if fixed.is_empty or fixed.geom_type not in ("Polygon", "MultiPolygon"):
        raise DataError(
            f"{where} is not a valid polygon ({why}) and cannot be repaired; redraw it without "
            "self-intersections."
        )
    log.warning("%s is not a valid polygon (%s); repaired with shapely.make_valid", where, why)
    return fixed


def _point_buffer(value: Any, default: float, where: str) -> float:
    """Half-width in metres of a point AOI's square: the feature's own value, else the config's."""
    if _is_missing(value):
        return default
    try:
        half_width = float(value)
    except (TypeError, ValueError):
        half_width = float("nan")
    if not half_width > 0:
        raise DataError(f"{where} has buffer {value!r}; give a positive number of metres.")
    return half_width


def _buffer_point(point: Any, half_width_m: float, epsg: int) -> Any:
    from shapely.geometry import box

    c = reproject_geometry(point.centroid, 4326, epsg)
    square = box(c.x - half_width_m, c.y - half_width_m, c.x + half_width_m, c.y + half_width_m)
    return reproject_geometry(square.segmentize(half_width_m / 4), epsg, 4326)
