"""Chip builder throughput vs the I/O+decode floor, on generated Sentinel-2-like COGs.

Variants, side by side in one run:

- ``bare``: a plain loop of rasterio windowed reads of exactly the windows the builder's chips came
  from (SCL + 5 bands of the chosen scene per chip, 20 m band upsampled with ``out_shape``), with the
  builder's GDAL settings and one open dataset per asset: the floor for producing those chips.
- ``builder 1w`` / ``builder 2w``: ``build_chips`` end to end (plan, scene scoring over all 8 candidate
  scenes, reads, masking, harmonisation, Zarr writes with fsync, stats, index, card) with 1 worker
  (inline) and 2 worker processes.

Each on local files and over loopback HTTP (``rangehttpserver``, GDAL ``/vsicurl``). Best of
``--repeat`` runs. Figures: chips/s and MB/s of chip pixels produced (uint16, C x H x W).
Targets: builder >= 70% of bare throughput; 2 workers >= 1.6x one.

    .venv/bin/python benchmarks/bench_chips.py [--chip-size 128] [--repeat 2]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import tempfile
import time
from pathlib import Path

os.environ.setdefault("EO_JEPA_NO_PROGRESS", "1")


def bare_reads(index, items, chip_size: int) -> float:
    """Seconds for a bare loop of windowed reads of the builder's chips."""
    import rasterio
    from rasterio.enums import Resampling
    from rasterio.windows import from_bounds

    from eo_jepa.chips.read import GDAL_ENV

    keys = ("SCL", "B04", "B03", "B02", "B08", "B11")
    ok = index[index["status"] == "ok"]
    t0 = time.perf_counter()
    with rasterio.Env(**GDAL_ENV):
        handles: dict[str, object] = {}
        for _, chip in ok.iterrows():
            item = items[chip["item_ids"][0]]
            a, _, x0, _, e, y0 = chip["transform"]
            bounds = (x0, y0 + e * chip_size, x0 + a * chip_size, y0)
            for key in keys:
                href = item.assets[key].href
                ds = handles.get(href) or handles.setdefault(href, rasterio.open(href))
                ds.read(  # type: ignore[attr-defined]
                    1,
                    window=from_bounds(*bounds, transform=ds.transform),  # type: ignore[attr-defined]
                    out_shape=(chip_size, chip_size),
                    resampling=Resampling.nearest if key == "SCL" else Resampling.bilinear,
                )
        for ds in handles.values():
            ds.close()  # type: ignore[attr-defined]
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chip-size", type=int, default=128)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--dates", type=int, default=6, help="dates_per_location (of 8 scene dates)")
    args = parser.parse_args()

    import geopandas as gpd
    import torch
    from shapely.geometry import box, mapping

    from eo_jepa.chips import build_chips
    from eo_jepa.chips.config import ChipConfig
    from eo_jepa.chips.grid import reproject_geometry
    from eo_jepa.config import load_config
    from eo_jepa.demo.scenes import make_demo_scenes
    from eo_jepa.demo.servers import range_http_server
    from eo_jepa.stac import load_static_items

    torch.set_num_threads(1)
    work = Path(tempfile.mkdtemp(prefix="bench_chips_"))
    scenes = make_demo_scenes(work / "demo", size="small", n_dates=8)
    # One AOI per tile: the grid cells lying wholly inside the rasters (shrunk by 1 m so no neighbour touches).
    aois = []
    for item in load_static_items(scenes.items_path):
        tile = item.id.split("_")[5][1:]
        if any(a["properties"]["aoi_id"] == tile for a in aois):
            continue
        t = item.assets["B04"].transform
        shape = item.assets["B04"].shape
        assert t is not None and shape is not None
        span = args.chip_size * 10.0
        left, top = math.ceil(t[2] / span) * span, math.floor(t[5] / span) * span
        right = math.floor((t[2] + shape[1] * 10) / span) * span
        bottom = math.ceil((t[5] - shape[0] * 10) / span) * span
        utm = box(left + 1, bottom + 1, right - 1, top - 1)
        aois.append(
            {
                "type": "Feature",
                "properties": {"aoi_id": tile, "label": "mixed"},
                "geometry": mapping(reproject_geometry(utm, item.epsg or 32632, 4326)),
            }
        )
    aoi_path = work / "aois.geojson"
    aoi_path.write_text(json.dumps({"type": "FeatureCollection", "features": aois}))
    overrides = [
        f"chip_size={args.chip_size}",
        f"dates_per_location={args.dates}",
        "max_cloud_fraction=1.0",
        "max_nodata_fraction=1.0",
        "task_size=6",
        "max_candidates=8",
    ]
    cfg = load_config(
        ChipConfig, Path(__file__).resolve().parents[1] / "configs/chips/s2_5band_64_demo.yaml", overrides
    )

    # Warm-up (not timed): imports, GDAL/zarr set-up, and the worker fork server (started once per
    # Python process; a CLI run pays it once, about one second, see the README).
    t0 = time.perf_counter()
    build_chips(aoi_path, cfg, work / "warmup1", stac=str(scenes.items_path))
    build_chips(aoi_path, cfg, work / "warmup2", stac=str(scenes.items_path), workers=2)
    warmup_s = time.perf_counter() - t0
    results: dict[str, dict[str, float]] = {}
    rows = []
    run = 0
    with range_http_server(scenes.cog_dir) as url:
        sources = {
            "local": scenes.items_path,
            "http": scenes.write_items(work / "items_http.json", base_url=url),
        }
        for mode, items_path in sources.items():
            items = {i.id: i for i in load_static_items(items_path)}
            best: dict[str, float] = {}
            n_chips = 0
            for _ in range(args.repeat):
                for name, workers in (("builder 1w", 1), ("builder 2w", 2)):
                    run += 1
                    report = build_chips(
                        aoi_path, cfg, work / f"out{run}", stac=str(items_path), workers=workers
                    )
                    best[name] = min(best.get(name, float("inf")), report.seconds)
                    n_chips = report.ok
                index = gpd.read_parquet(work / f"out{run}" / "index.parquet")
                best["bare"] = min(best.get("bare", float("inf")), bare_reads(index, items, args.chip_size))
            mb = n_chips * 5 * args.chip_size**2 * 2 / 1e6
            results[mode] = {"chips": n_chips}
            for name in ("bare", "builder 1w", "builder 2w"):
                cps = n_chips / best[name]
                results[mode][f"{name.replace(' ', '_')}_chips_s"] = round(cps, 1)
                rows.append(
                    (mode, name, n_chips, best[name], cps, mb / best[name], cps / (n_chips / best["bare"]))
                )
            results[mode]["builder_vs_bare"] = round(best["bare"] / best["builder 1w"], 3)
            results[mode]["workers2_speedup"] = round(best["builder 1w"] / best["builder 2w"], 3)

    print(f"{'source':<7}{'variant':<12}{'chips':>6}{'seconds':>9}{'chips/s':>9}{'MB/s':>8}{'vs bare':>9}")
    for mode, name, n, sec, cps, mbs, rel in rows:
        print(f"{mode:<7}{name:<12}{n:>6}{sec:>9.2f}{cps:>9.1f}{mbs:>8.1f}{rel:>9.2f}")
    print(
        f"(chip {args.chip_size} px x 5 bands uint16, {args.dates} dates/location, best of {args.repeat}; cpus={os.cpu_count()})"
    )
    print(f"(warm-up incl. imports and worker start-up: {warmup_s:.1f} s)")
    shutil.rmtree(work, ignore_errors=True)
    print(
        json.dumps(
            {"benchmark": "chips", "chip_size": args.chip_size, "dates_per_location": args.dates, **results}
        )
    )


if __name__ == "__main__":
    main()
