"""Chip builder throughput vs the I/O+decode floor, on generated Sentinel-2-like COGs.

Variants, side by side in one run:

- ``bare``: a plain loop of rasterio windowed reads of exactly the windows the builder's chips came
  from (SCL + 5 bands of the chosen scene per chip, 20 m band upsampled with ``out_shape``), with the
  builder's GDAL settings and one open dataset per asset: the floor for producing those chips. The
  targets are measured against this one.
- ``bare+probes``: the same plus the SCL window of every *candidate* scene of each location (the
  builder must read them to pick the clearest dates; ``--scene-dates`` candidates for ``--dates``
  chips): the floor for what the builder has to read. Shown for information, not used for targets.
- ``builder 1w`` / ``builder 2w``: ``build_chips`` end to end (plan, scene scoring over all 8 candidate
  scenes, reads, masking, harmonisation, Zarr writes with fsync, stats, index, card) with 1 worker
  (inline) and 2 worker processes. The builder reads the same pixels as ``bare`` but fetches a row of
  adjacent chips of a task in one windowed read (identical results, far fewer GDAL calls), so on
  decode-cheap workloads it can read faster than this chip-at-a-time floor.

- ``builder 1w 1core``: the 1-worker build confined to one CPU (its chunk-writer thread included), for
  the per-core view of scaling: ``workers2_speedup`` is 2 workers over the unconfined 1-worker build
  (the target's figure), ``workers2_speedup_per_core`` over this one.

- ``dask 2w``: ``build_chips(scheduler=...)`` on a Dask distributed cluster of 2 single-threaded worker
  processes over loopback TCP (a ``LocalCluster``), or on the cluster at ``--scheduler ADDRESS`` (then
  ``dask``): the same tasks as ``builder 2w`` shipped through a scheduler. Its figure beside the local
  workers is the cost of the scheduler round trips; on a machine with few cores (printed) it shows that
  overhead, not a speed-up: a cluster pays off when its workers bring cores of their own.

Each on local files and over loopback HTTP (``rangehttpserver``, GDAL ``/vsicurl``). Best of
``--repeat`` runs. Figures: chips/s and MB/s of chip pixels produced (uint16, C x H x W).
Targets: builder >= 70% of bare throughput; 2 workers >= 1.6x one.

Default workload: 64 px chips (the demo config's size) from the "medium" demo scenes (2 tiles of
1536 px, 8 dates): 576 locations x 6 of 8 dates = 3456 chips, so that a one-worker build takes
several seconds and fixed costs (plan, finalize, worker start-up, all inside the timed region) do not
hide throughput and scaling. ``--scenes small`` gives the earlier 864-chip workload.

The builder writes two chunk files per chip (flat ``c.<row>.0.0.0`` keys): 2 new inodes per chip,
which the bare loop never pays. Where creating an inode is slow (on some VMs' ext4, 0.1-0.6 ms each:
comparable to a chip's whole read) that bounds the builder's writer thread; ``--store-dir /dev/shm``
(tmpfs) shows the builder without it. The default writes the stores next to the scenes, in the
benchmark's temporary folder. One worker overlaps its chunk writes with its reads on a second thread,
so it keeps more than one core busy (printed): on a 2-core machine that caps what a second worker
can add.

    .venv/bin/python benchmarks/bench_chips.py [--scenes medium] [--chip-size 64] [--repeat 2] [--store-dir DIR]
        [--scheduler tcp://HOST:8786]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

os.environ.setdefault("EO_JEPA_NO_PROGRESS", "1")


def bare_reads(index, items, chip_size: int, probes: dict[str, list[str]] | None = None) -> float:
    """Seconds for a bare loop of windowed reads of the builder's chips.

    ``probes``: location_id -> candidate item ids whose SCL window is also read (once per location).
    """
    import rasterio
    from rasterio.enums import Resampling
    from rasterio.windows import from_bounds

    from eo_jepa.chips.sources import GDAL_ENV

    keys = ("SCL", "B04", "B03", "B02", "B08", "B11")
    ok = index[index["status"] == "ok"]
    t0 = time.perf_counter()
    with rasterio.Env(**GDAL_ENV):
        handles: dict[str, object] = {}
        probed: set[str] = set()
        for _, chip in ok.iterrows():
            a, _, x0, _, e, y0 = chip["transform"]
            bounds = (x0, y0 + e * chip_size, x0 + a * chip_size, y0)
            reads = [(items[chip["item_ids"][0]], key) for key in keys]
            if probes is not None and chip["location_id"] not in probed:
                probed.add(chip["location_id"])
                chosen = set(index.loc[index["location_id"] == chip["location_id"], "item_ids"].map(tuple))
                reads += [(items[i], "SCL") for i in probes[chip["location_id"]] if (i,) not in chosen]
            for item, key in reads:
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


def _settle(seconds: float = 1.0) -> None:
    """Before a timed run: write back what earlier runs left dirty, then let the filesystem's own
    background work (journal commits, online discard of deleted files) finish, so that it is not
    charged to the next variant. On the development VM this alone swung a build by 2x."""
    os.sync()
    time.sleep(seconds)


@contextlib.contextmanager
def _one_core(pin: bool) -> Iterator[None]:
    """Confine this thread, and the threads it starts (the chunk writer), to one CPU while active."""
    if not pin or not hasattr(os, "sched_setaffinity"):
        yield
        return
    cpus = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(cpus)})
    try:
        yield
    finally:
        os.sched_setaffinity(0, cpus)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chip-size", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--dates", type=int, default=6, help="dates_per_location (chips per location)")
    parser.add_argument(
        "--scene-dates", type=int, default=8, help="acquisitions per tile = candidates (2..8)"
    )
    parser.add_argument(
        "--store-dir", type=Path, default=None, help="where the builds write their stores (default: temp)"
    )
    parser.add_argument(
        "--scenes",
        choices=("small", "medium"),
        default="medium",
        help="demo scene size (tiles of 768 / 1536 px)",
    )
    parser.add_argument(
        "--scheduler",
        default=None,
        help="Dask scheduler address for the 'dask' variant (default: a local cluster of 2 worker processes)",
    )
    args = parser.parse_args()

    import geopandas as gpd
    import torch
    from shapely.geometry import box, mapping

    from eo_jepa.chips import build_chips
    from eo_jepa.chips.config import ChipConfig
    from eo_jepa.chips.crs import reproject_geometry
    from eo_jepa.config import load_config
    from eo_jepa.demo.scenes import make_demo_scenes
    from eo_jepa.demo.servers import range_http_server
    from eo_jepa.stac import load_static_items

    torch.set_num_threads(1)
    work = Path(tempfile.mkdtemp(prefix="bench_chips_"))
    stores = (
        work if args.store_dir is None else Path(tempfile.mkdtemp(prefix="bench_chips_", dir=args.store_dir))
    )
    scenes = make_demo_scenes(work / "demo", size=args.scenes, n_dates=args.scene_dates)
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
        f"max_candidates={args.scene_dates}",
    ]
    cfg = load_config(
        ChipConfig, Path(__file__).resolve().parents[1] / "configs/chips/s2_5band_64_demo.yaml", overrides
    )

    # Warm-up (not timed): imports, GDAL/zarr set-up, and the worker fork server (started once per
    # Python process; a CLI run pays it once, about one second, see the README).
    t0 = time.perf_counter()
    build_chips(aoi_path, cfg, stores / "warmup1", stac=str(scenes.items_path))
    build_chips(aoi_path, cfg, stores / "warmup2", stac=str(scenes.items_path), workers=2)
    cluster = None
    scheduler = args.scheduler
    if scheduler is None:  # real worker processes and TCP on loopback, as `dask scheduler` + `dask worker`
        from distributed import LocalCluster

        cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None)
        scheduler = cluster.scheduler_address
    dask_name = "dask 2w" if args.scheduler is None else "dask"
    build_chips(
        aoi_path, cfg, stores / "warmup3", stac=str(scenes.items_path), workers=2, scheduler=scheduler
    )
    warmup_s = time.perf_counter() - t0
    variants = [("builder 1w", 1), ("builder 1w 1core", 1), ("builder 2w", 2), (dask_name, 2)]
    results: dict[str, dict[str, float]] = {}
    cores: dict[str, float] = {}  # CPU cores the fastest 1-worker build kept busy
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
                for name, workers in variants:
                    run += 1
                    _settle()
                    cpu = time.process_time()  # all threads of this process: the 1-worker build runs inline
                    with _one_core(name.endswith("1core")):
                        report = build_chips(
                            aoi_path,
                            cfg,
                            stores / f"out{run}",
                            stac=str(items_path),
                            workers=workers,
                            scheduler=scheduler if name.startswith("dask") else None,
                        )
                    if report.seconds < best.get(name, float("inf")) and name == "builder 1w":
                        cores[mode] = (time.process_time() - cpu) / report.seconds
                    best[name] = min(best.get(name, float("inf")), report.seconds)
                    n_chips = report.ok
                index = gpd.read_parquet(stores / f"out{run}" / "index.parquet")
                plan = json.loads((stores / f"out{run}" / ".build" / "plan.json").read_text())
                probes = {e["location_id"]: e["candidates"] for e in plan["locations"]}
                _settle()
                best["bare"] = min(best.get("bare", float("inf")), bare_reads(index, items, args.chip_size))
                _settle()
                best["bare+probes"] = min(
                    best.get("bare+probes", float("inf")), bare_reads(index, items, args.chip_size, probes)
                )
            mb = n_chips * 5 * args.chip_size**2 * 2 / 1e6
            results[mode] = {"chips": n_chips}
            for name in ("bare", "bare+probes", "builder 1w", "builder 1w 1core", "builder 2w", dask_name):
                cps = n_chips / best[name]
                results[mode][f"{name.replace(' ', '_').replace('+', '_')}_chips_s"] = round(cps, 1)
                rows.append(
                    (mode, name, n_chips, best[name], cps, mb / best[name], cps / (n_chips / best["bare"]))
                )
            results[mode]["builder_vs_bare"] = round(best["bare"] / best["builder 1w"], 3)
            results[mode]["builder_vs_bare_probes"] = round(best["bare+probes"] / best["builder 1w"], 3)
            results[mode]["workers2_speedup"] = round(best["builder 1w"] / best["builder 2w"], 3)
            results[mode]["workers2_speedup_per_core"] = round(
                best["builder 1w 1core"] / best["builder 2w"], 3
            )
            results[mode]["builder_1w_cores_busy"] = round(cores[mode], 2)
            results[mode]["dask_vs_local_2w"] = round(best["builder 2w"] / best[dask_name], 3)

    print(f"{'source':<7}{'variant':<18}{'chips':>6}{'seconds':>9}{'chips/s':>9}{'MB/s':>8}{'vs bare':>9}")
    for mode, name, n, sec, cps, mbs, rel in rows:
        print(f"{mode:<7}{name:<18}{n:>6}{sec:>9.2f}{cps:>9.1f}{mbs:>8.1f}{rel:>9.2f}")
    print(
        f"(chip {args.chip_size} px x 5 bands uint16, {args.dates} dates/location of {args.scene_dates} "
        f"candidates, best of {args.repeat}; cpus={os.cpu_count()}; 'vs bare' = chips/s over bare's; "
        "targets: builder 1w >= 0.70 of bare, 2w >= 1.6x 1w; '1w 1core' = 1 worker confined to one CPU)"
    )
    for mode, busy in cores.items():
        print(
            f"({mode}: one worker keeps {busy:.2f} CPU cores busy (its chunk writer is a second thread), so "
            f"on {os.cpu_count()} cores 2 workers can be at most {min(2.0, (os.cpu_count() or 1) / busy):.2f}x one)"
        )
    print(
        f"('{dask_name}': the 2-worker build through a Dask scheduler ({scheduler}); on {os.cpu_count()} "
        "cores it shows the scheduler's overhead beside local workers, not a speed-up)"
    )
    print(f"(warm-up incl. imports and worker start-up: {warmup_s:.1f} s)")
    if cluster is not None:
        cluster.close()
    shutil.rmtree(work, ignore_errors=True)
    shutil.rmtree(stores, ignore_errors=True)
    print(
        json.dumps(
            {
                "benchmark": "chips",
                "chip_size": args.chip_size,
                "dates_per_location": args.dates,
                "candidates": args.scene_dates,
                "cpus": os.cpu_count(),
                **({} if args.store_dir is None else {"store_dir": str(args.store_dir)}),
                **results,
            }
        )
    )


if __name__ == "__main__":
    main()
