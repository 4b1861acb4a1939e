"""Data cards: Markdown with YAML front matter, rendered from ``data_cards/TEMPLATE.md``.

The template holds the prose with ``{{placeholders}}``; the front matter (provenance, query, AOIs,
counts, stats, licence) is generated here as YAML so it is machine-readable. When the package is
installed without the repository's ``data_cards/`` folder, a minimal built-in layout is used.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from eo_jepa.bands import Sensor, get_sensor
from eo_jepa.chips.records import Plan

TEMPLATE_PATH = Path(__file__).resolve().parents[2] / "data_cards" / "TEMPLATE.md"
_FALLBACK = "---\n{{front_matter}}\n---\n\n# Data card: {{name}}\n\n{{aois_table}}\n\n{{stats_table}}\n"


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.1f}" if value == value else "n/a"
    return str(value)


def _processing(cfg: dict[str, Any], sensor: Sensor, applied: list[dict[str, Any]] | None) -> str:
    lines = []
    harmonisation = sensor.harmonization_note(cfg["harmonize"], applied or [])
    if harmonisation is not None:
        lines.append(f"- Harmonisation: {harmonisation}.")
    mask = sensor.mask_note(cfg["mask_classes"])
    if mask is not None:
        lines.append(f"- Mask: {mask}")
    if sensor.multi_resolution:
        lines.append(f"- Bands coarser than the chip grid resampled with `{cfg['resampling']}`.")
    lines += [
        f"- Scene choice: per location the {cfg['dates_per_location']} clearest of up to "
        f"{cfg['max_candidates']} candidate scenes (lowest masked fraction).",
        f"- Filters: chips with cloud fraction > {cfg['max_cloud_fraction']} or no-data fraction > "
        f"{cfg['max_nodata_fraction']} are kept in the index as rejected, with the reason.",
    ]
    return "\n".join(lines)


def _grid_line(grid: dict[str, Any] | None, ok: int, resampling: str) -> str:
    if grid is None:
        return ""
    snap = "the source's pixel grid" if grid["snap"] == "source" else "a UTM grid of whole chip spans"
    warped = grid["warped_chips"]
    if not warped:
        return (
            f"\n- Grid: chips lie on {snap}; no chip was reprojected (pixels are source pixels, bands "
            "coarser than the chip grid aside)."
        )
    return (
        f"\n- Grid: chips lie on {snap}; {warped} of {ok} chips were reprojected/resampled onto it with "
        f"`{resampling}` (source in another CRS or off the chip lattice; `grid.snap: source` keeps "
        "same-CRS sources exact)."
    )


def render_card(dataset: dict[str, Any], stats: dict[str, Any], plan: Plan) -> str:
    cfg = dataset["config"]
    sensor = get_sensor(dataset["sensor"])
    counts = dataset["counts"]
    front = {
        "name": cfg["name"],
        "sensor": sensor.name,
        "license": sensor.license,
        "bands": dataset["bands"],
        "chip_size": dataset["chip_size"],
        "gsd_m": dataset["gsd_m"],
        "dtype": dataset["dtype"],
        "units": dataset["units"],
        "provenance": {
            "tool": f"eo-jepa {dataset['eo_jepa_version']}",
            "created": dataset["created"],
            "source": dataset["source"],
        },
        "query": {
            "collection": dataset["collection"],
            "max_cloud_cover": cfg["stac"]["max_cloud_cover"],
            "provider": cfg["stac"]["provider"],
        },
        "aois": [
            {k: getattr(a, k) for k in ("aoi_id", "label", "split", "start", "end", "bbox", "items_found")}
            for a in plan.aois
        ],
        "counts": counts,
        "harmonisation": dataset.get("harmonisation", []),
        "grid": dataset.get("grid"),
        "stats": {b: {k: v for k, v in s.items()} for b, s in stats["bands"].items()},
    }
    aoi_rows = ["| aoi_id | label | split | dates | bbox (lon/lat) | items |", "|---|---|---|---|---|---|"]
    for a in plan.aois:
        bbox = ", ".join(f"{v:.4f}" for v in a.bbox)
        aoi_rows.append(
            f"| {a.aoi_id} | {a.label or ''} | {a.split} | {a.start} to {a.end} | {bbox} | {a.items_found} |"
        )
    keys = ("count", "mean", "std", "min", "max", "p1", "p2", "p98", "p99")
    stat_rows = ["| band | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    for band, s in stats["bands"].items():
        stat_rows.append(f"| {band} | " + " | ".join(_fmt(s[k]) for k in keys) + " |")
    values = {
        "front_matter": yaml.safe_dump(front, sort_keys=False, allow_unicode=True).strip(),
        "name": cfg["name"],
        "description": f"{counts['ok']} {sensor.name} chips of {len(dataset['bands'])} bands for "
        "self-supervised pretraining.",
        "eo_jepa_version": dataset["eo_jepa_version"],
        "created": dataset["created"],
        "source": dataset["source"],
        "collection": dataset["collection"],
        "max_cloud_cover": cfg["stac"]["max_cloud_cover"],
        "sensor": sensor.name,
        "sensor_description": sensor.description,
        "license": sensor.license,
        "bands": ", ".join(dataset["bands"]),
        "chip_size": dataset["chip_size"],
        "gsd_m": dataset["gsd_m"],
        "dtype": dataset["dtype"],
        "units": dataset["units"],
        "planned": counts["planned"],
        "locations": counts["locations"],
        "ok": counts["ok"],
        "rejected": counts["rejected"],
        "splits": ", ".join(f"{k} {v}" for k, v in counts["ok_by_split"].items()),
        "reasons": ", ".join(f"{k}: {v}" for k, v in counts["rejected_by_reason"].items()) or "none",
        "skipped": ", ".join(sorted(dataset["skipped_items"])) or "none",
        "processing": _processing(cfg, sensor, dataset.get("harmonisation"))
        + _grid_line(dataset.get("grid"), counts["ok"], cfg["resampling"]),
        "aois_table": "\n".join(aoi_rows),
        "stats_table": "\n".join(stat_rows),
    }
    template = TEMPLATE_PATH.read_text() if TEMPLATE_PATH.is_file() else _FALLBACK
    return re.sub(r"\{\{(\w+)\}\}", lambda m: str(values.get(m.group(1), m.group(0))), template)


def read_front_matter(text: str) -> dict[str, Any]:
    """The YAML front matter of a data card."""
    match = re.match(r"^---\n(.*?)\n---\n", text, re.S)
    return yaml.safe_load(match.group(1)) if match else {}
