"""``build_chips``: AOIs -> STAC search -> chip plan -> parallel read/mask/harmonise -> chip store.

Work is planned once (``.build/plan.json``: config, AOIs, the items found, every location with its
candidate scenes and pre-assigned Zarr rows), then split into tasks of ``task_size`` locations. A task
writes only its own chunks and fsyncs them, then atomically writes its journal entry
``.build/partials/task-NNNNNN.json`` (index rows, skipped items, sparse partial histograms). ``--resume``
reloads the plan and runs the tasks without a journal entry; a task killed halfway simply rewrites
its chunks. The index, stats, card and ``dataset.json`` are assembled from the partials in plan order
and written atomically at the end, so an interrupted-and-resumed build equals an uninterrupted one.

Tasks run inline (``workers=1``), in a local process or thread pool, or on a Dask distributed
cluster (``scheduler="tcp://..."`` or a ``distributed.Client``); the same plan either way. A worker
runs a batch of tasks with one chip writer thread, which writes, syncs and journals task k while task
k+1 is read. Within a task, the windows of a row of adjacent chips are read in one windowed read
(:func:`eo_jepa.chips.windows.prefetch`; same pixels as chip-by-chip reads, far fewer GDAL calls).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from eo_jepa._version import __version__
from eo_jepa.chips.aois import Aoi, load_aois
from eo_jepa.chips.card import render_card
from eo_jepa.chips.cluster import run_on_cluster
from eo_jepa.chips.config import ChipConfig
from eo_jepa.chips.grid import Anchor, Location, plan_locations, source_anchor
from eo_jepa.chips.read import ChipRead, asset_groups, cached_probe, read_chip
from eo_jepa.chips.records import PLAN_FORMAT, ChipRecord, Plan, PlannedAoi, PlannedLocation, TaskJournal
from eo_jepa.chips.sources import (
    ReadError,
    SourceCache,
    close_cached_datasets,
    enter_gdal_env,
    forget_checks,
    forget_down_hosts,
    host_of,
    http_options,
)
from eo_jepa.chips.stats import BandHistograms
from eo_jepa.chips.store import (
    BUILD_DIR,
    CARD_NAME,
    DATASET_NAME,
    INDEX_NAME,
    STATS_NAME,
    ChipWriter,
    create_arrays,
)
from eo_jepa.chips.windows import prefetch
from eo_jepa.config import apply_overrides, from_dict, load_config, to_dict
from eo_jepa.errors import ConfigError, DataError, StacError
from eo_jepa.stac import ItemInfo, dropped_by_collection, is_api_url, open_client, search_items, sign_href
from eo_jepa.utils.io import atomic_open, atomic_write_json, atomic_write_text
from eo_jepa.utils.logging import progress_disabled
from eo_jepa.utils.proc import pool_worker_init

log = logging.getLogger(__name__)

PLAN_NAME = "plan.json"
PARTIALS = "partials"
TRANSIENT = "transient"  # index status of a chip whose scenes could not be read right now (network)


@dataclass
class BuildReport:
    out_dir: Path
    planned: int
    ok: int
    rejected: int
    tasks: int
    tasks_run: int
    tasks_resumed: int
    seconds: float
    skipped_items: dict[str, str] = field(default_factory=dict)
    reasons: dict[str, int] = field(default_factory=dict)
    transient: int = 0  # chips not built because their scenes could not be read right now (network)
    transient_hosts: dict[str, str] = field(default_factory=dict)  # host -> first error

    @property
    def chips_per_s(self) -> float:
        return self.planned / self.seconds if self.seconds > 0 else float("nan")

    def summary(self) -> str:
        text = (
            f"{self.ok} chips ok, {self.rejected} rejected of {self.planned} planned in {self.seconds:.1f} s "
            f"({self.tasks_run} tasks run, {self.tasks_resumed} already done) -> {self.out_dir}"
        )
        if self.skipped_items:
            text += f"; {len(self.skipped_items)} unreadable item(s) skipped: {', '.join(sorted(self.skipped_items))}"
        if self.transient:
            text += (
                f"; {self.transient} chip(s) failed transiently (could not be read from "
                f"{', '.join(sorted(self.transient_hosts))} right now) and were not built: rerun with --resume "
                "to retry them"
            )
        return text


# --------------------------------------------------------------------------- planning


def _load_config(config: ChipConfig | str | Path, overrides: Sequence[str]) -> ChipConfig:
    if isinstance(config, ChipConfig):
        if overrides:
            return from_dict(ChipConfig, apply_overrides(to_dict(config), overrides))
        return config
    return load_config(ChipConfig, config, overrides)


def _search(aois: Sequence[Aoi], cfg: ChipConfig, source: str) -> dict[str, list[ItemInfo]]:
    from shapely.geometry import mapping

    client = None
    if is_api_url(source):
        client = open_client(
            source,
            timeout_s=cfg.stac.timeout_s,
            retries=cfg.stac.retries,
            backoff_s=cfg.stac.backoff_s,
            max_retry_after_s=cfg.stac.max_retry_after_s,
        )
    out = {}
    for aoi in aois:
        out[aoi.aoi_id] = search_items(
            source,
            collection=cfg.collections,
            intersects=mapping(aoi.geometry),
            start=aoi.start,
            end=aoi.end,
            max_cloud_cover=cfg.stac.max_cloud_cover,
            page_size=cfg.stac.page_size,
            max_items=cfg.stac.max_items_per_aoi,
            client=client,
        )
        log.info("AOI %s: %d item(s) found", aoi.aoi_id, len(out[aoi.aoi_id]))
    return out


def _anchors(found: dict[str, list[ItemInfo]], cfg: ChipConfig) -> dict[str, Anchor] | None:
    """``grid.snap: source``: per AOI, the pixel grid of its first scene's first band asset (from the
    item's ``proj:*`` fields); AOIs whose scene has no usable grid keep the UTM grid, with a warning."""
    if cfg.grid.snap != "source":
        return None
    key = asset_groups(cfg.sensor_info, cfg.bands, cfg.stac.provider)[0][0]
    out: dict[str, Anchor] = {}
    for aoi_id, items in found.items():
        asset = items[0].assets.get(key) if items else None
        anchor = source_anchor(asset.epsg, asset.transform, cfg.gsd_m) if asset is not None else None
        if anchor is not None:
            out[aoi_id] = anchor
        elif items:
            log.warning(
                "AOI %s: the %r asset of item %s has no north-up proj:transform/proj:epsg whose pixel size "
                "divides gsd_m=%g; its chips stay on the UTM grid (resampled)", aoi_id, key, items[0].id, cfg.gsd_m,
            )  # fmt: skip
    return out


def make_plan(aois: Sequence[Aoi], cfg: ChipConfig, source: str) -> Plan:
    """Search every AOI and lay out the grid; StacError when nothing is found (nothing written)."""
    import numpy as np
    import shapely
    from shapely.geometry import mapping, shape

    found = _search(aois, cfg, source)
    dropped = {} if is_api_url(source) else dropped_by_collection(source, cfg.collections)
    if dropped:
        others = ", ".join(f"{n} of {c!r}" for c, n in sorted(dropped.items()))
        log.warning(
            "%d item(s) of %s were left out by the collection filter (%s; searched %s); set stac.collection "
            "to use them", sum(dropped.values()), source, others, ", ".join(cfg.collections),
        )  # fmt: skip
    if not any(found.values()):
        wanted = " or ".join(map(repr, cfg.collections))
        hint = (
            f"; {sum(dropped.values())} item(s) of other collections were left out ({', '.join(sorted(dropped))}): "
            "set stac.collection to use them"
            if dropped
            else ""
        )
        raise StacError(
            f"The STAC search at {source} found no {wanted} items for any of the {len(aois)} AOI(s) "
            f"(cloud cover <= {cfg.stac.max_cloud_cover}){hint}; widen the date range, raise "
            "stac.max_cloud_cover or check the collection. Nothing was written."
        )
    items: dict[str, ItemInfo] = {}
    shapes: dict[str, Any] = {}
    for group in found.values():
        for item in group:
            items.setdefault(item.id, item)
            shapes.setdefault(item.id, shape(item.geometry))
    locations = plan_locations(aois, cfg.chip_size, cfg.gsd_m, _anchors(found, cfg))
    footprints = np.array([loc.footprint for loc in locations], dtype=object)
    covers = {i: shapely.intersects(shape, footprints) for i, shape in shapes.items()}  # one call per item
    entries = []
    for k, loc in enumerate(locations):
        cands = [i.id for i in found[loc.aoi_id] if covers[i.id][k]]
        grid = dataclasses.replace(loc, footprint=None)
        entries.append(PlannedLocation(grid, loc.footprint.wkt, cands[: cfg.max_candidates]))
    used = sorted({c for e in entries for c in e.candidates})
    for item_id in used:  # say when a fallback decided a scene's offset (recorded per chip as well)
        note = cfg.sensor_info.offset_fallback(items[item_id], cfg.harmonize)
        if note is not None:
            log.info("item %s has %s", item_id, note)
    return Plan(
        format=PLAN_FORMAT,
        eo_jepa_version=__version__,
        created=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z"),
        config=to_dict(cfg),
        source=source,
        collection=cfg.collection,
        collections=list(cfg.collections),
        items_dropped_by_collection=dropped,
        aois=[
            PlannedAoi(
                aoi_id=a.aoi_id,
                label=a.label,
                split=a.split,
                start=a.start,
                end=a.end,
                bbox=list(a.geometry.bounds),
                geometry=mapping(a.geometry),
                items_found=len(found[a.aoi_id]),
            )
            for a in aois
        ],
        items={i: items[i] for i in used},
        locations=entries,
    )


def _tasks(plan: Plan) -> list[list[int]]:
    size = plan.config["task_size"]
    n = len(plan.locations)
    return [list(range(s, min(s + size, n))) for s in range(0, n, size)]


def _journal_path(root: Path, task_id: int) -> Path:
    return root / BUILD_DIR / PARTIALS / f"task-{task_id:06d}.json"


def _retry_path(root: Path, task_id: int) -> Path:
    """Journal of a task that finished with chips that failed transiently (not done: rerun on resume)."""
    return root / BUILD_DIR / PARTIALS / f"task-{task_id:06d}.retry.json"


# --------------------------------------------------------------------------- one task (runs anywhere)


def _passes(cfg: ChipConfig, cloud: float, nodata: float) -> str | None:
    """None when the chip passes the filters, else the reason it does not."""
    if cloud > cfg.max_cloud_fraction:
        return f"cloud_fraction {cloud:.3f} > max_cloud_fraction {cfg.max_cloud_fraction}"
    if nodata > cfg.max_nodata_fraction:
        return f"nodata_fraction {nodata:.3f} > max_nodata_fraction {cfg.max_nodata_fraction}"
    return None


def _score_key(cfg: ChipConfig, item: ItemInfo, probe: ChipRead) -> tuple[Any, ...]:
    """Sort key of a candidate scene: passing first, then least masked, least cloudy, oldest, id."""
    fails = _passes(cfg, probe.cloud_fraction, probe.nodata_fraction) is not None
    cc = item.cloud_cover if item.cloud_cover is not None else 101.0
    return (fails, round(probe.masked_fraction, 9), cc, item.datetime, item.id)


def _choose(
    loc: Location,
    candidates: list[str],
    items: dict[str, ItemInfo],
    cfg: ChipConfig,
    cache: SourceCache,
    skipped: dict[str, str],
    probes: dict[tuple[str, str], ChipRead],
    transient: dict[str, str],
) -> list[ChipRead]:
    """The clearest ``dates_per_location`` scenes: score each candidate by its mask, then read bands.

    ``probes``: mask-only reads :func:`_prefetch` already made from prefetched windows, by (location
    id, item id); each equals what ``read_chip`` would return here, so it is used instead unless one of
    its assets failed meanwhile (then ``read_chip`` raises the same error it always did).
    Items that failed to read go to ``skipped`` (bad data) or ``transient`` (unreadable right now).
    """

    def failed(item_id: str, exc: ReadError) -> None:
        (transient if exc.transient else skipped).setdefault(item_id, str(exc))

    scored = []
    for item_id in candidates:
        item = items[item_id]
        probe = probes.pop((loc.location_id, item_id), None)
        try:
            if probe is None or any(h in cache.failed for h in probe.hrefs):
                probe = read_chip(item, loc, cfg, cache, mask_only=True)
        except ReadError as exc:
            failed(item_id, exc)
            continue
        scored.append((_score_key(cfg, item, probe), probe))
    scored.sort(key=lambda s: s[0])
    chosen: list[ChipRead] = []
    for key, probe in scored:
        if len(chosen) == cfg.dates_per_location:
            break
        if probe.pixels is not None:
            chosen.append(probe)
            continue
        try:
            chosen.append(read_chip(items[key[-1]], loc, cfg, cache, probe=probe))
        except ReadError as exc:
            failed(key[-1], exc)
    return chosen


def _prefetch(
    locs: list[tuple[Location, list[str]]], items: dict[str, ItemInfo], cfg: ChipConfig, cache: SourceCache
) -> dict[tuple[str, str], ChipRead]:
    """Read a task's windows a row of chips at a time before :func:`_choose` asks for them one by one.

    First the quality mask of every candidate scene; the mask-only probes are then computed from
    those windows (returned for :func:`_choose`); from them, the scenes each location will most likely
    choose, whose bands are fetched the same way. Pure speculation: what is not prefetched (a failed
    or unaligned read, a guess that a read error later proves wrong) is read chip by chip as before,
    in the same order, so the results and the errors reported are those of chip-by-chip reads.
    """
    sensor, provider = cfg.sensor_info, cfg.stac.provider
    mask_key = sensor.mask_key(provider)
    groups = [(key, idx, cfg.resampling) for key, idx, _ in asset_groups(sensor, cfg.bands, provider)]

    def fetch(item_id: str, where: list[Location], assets: list[tuple[str, list[int], str]]) -> None:
        for key, indexes, resampling in assets:
            asset = items[item_id].assets.get(key)
            if asset is not None:
                prefetch(cache, asset.href, indexes, resampling, where)

    by_item: dict[str, list[Location]] = {}
    for loc, candidates in locs:
        for item_id in candidates:
            by_item.setdefault(item_id, []).append(loc)
    first = [(mask_key, [1], "nearest")] if mask_key is not None else groups
    for item_id, where in by_item.items():
        fetch(item_id, where, first)
    probes: dict[tuple[str, str], ChipRead] = {}
    picks: dict[str, list[Location]] = {}
    for loc, candidates in locs:
        scored = []
        for item_id in candidates:
            probe = cached_probe(items[item_id], loc, cfg, cache)
            if probe is not None:
                probes[(loc.location_id, item_id)] = probe
                scored.append((_score_key(cfg, items[item_id], probe), item_id))
        if mask_key is not None and len(scored) == len(candidates):
            for _, item_id in sorted(scored)[: cfg.dates_per_location]:
                picks.setdefault(item_id, []).append(loc)
    for item_id, where in picks.items():
        fetch(item_id, where, groups)
    return probes


# Per process: parsed task configs by their JSON text (``from_dict`` validates: ~2 ms a call).
_CONFIGS: dict[str, ChipConfig] = {}


def _task_config(data: dict[str, Any]) -> ChipConfig:
    key = json.dumps(data, sort_keys=True)
    cfg = _CONFIGS.get(key)
    if cfg is None:
        if len(_CONFIGS) > 16:
            _CONFIGS.clear()
        cfg = _CONFIGS[key] = from_dict(ChipConfig, data)
    return cfg


@dataclass
class TaskSpec:
    """One task of a plan, as shipped to whoever runs it (picklable: local pools and Dask workers)."""

    root: str  # the store, absolute: workers may run in another folder (or on another host)
    task_id: int
    config: dict[str, Any]  # the plan's ChipConfig as a dict
    locations: list[tuple[int, PlannedLocation]]  # (index in the plan, location)
    items: dict[str, ItemInfo]  # the candidate scenes of these locations
    fsync: bool = True


@dataclass
class TaskResult:
    """What a finished (journalled) task tells the driver."""

    task_id: int
    chips: int
    ok: int
    skipped: dict[str, str]  # item id -> why
    transient: int  # chips left for --resume
    transient_hosts: dict[str, str]  # host -> a failure message


def run_task(spec: TaskSpec) -> TaskResult:
    """Build the chips of one task and journal it. Picklable entry point for pools and Dask."""
    return run_tasks([spec])[0]


def run_tasks(specs: list[TaskSpec], on_done: Callable[[TaskResult], None] | None = None) -> list[TaskResult]:
    """Build the chips of several tasks of one store in turn, journalling each. Picklable entry point.

    One chip writer serves them all: while task k+1 is read, the writer thread encodes and writes the
    chunks of task k, makes them durable and only then writes task k's journal entry. Returns (and
    passes to ``on_done``, on this thread, as they finish) one result per task, in order, once its
    journal entry is written.
    """
    if not specs:
        return []
    writer = ChipWriter(Path(specs[0].root), fsync=specs[0].fsync)
    stac = specs[0].config["stac"]
    # stays entered in this thread/worker: keeps GDAL's block cache warm across tasks
    enter_gdal_env(http_options(stac["timeout_s"], stac["retries"], stac["backoff_s"]))
    forget_checks()  # reused handles: files replaced since an earlier build are noticed
    results: list[TaskResult] = []
    commits: list[Any] = []

    def collect(block: bool) -> None:
        while commits and (block or commits[0].done()):
            results.append(commits.pop(0).result())
            if on_done is not None:
                on_done(results[-1])

    try:
        for spec in specs:
            journal = _build_task(spec, writer)
            commits.append(writer.commit(partial(_write_journal, Path(spec.root), journal)))
            while len(commits) > 2:  # bound the chips held in memory for the writer
                commits[0].result()
                collect(block=False)
            collect(block=False)
        collect(block=True)
    finally:
        writer.close()
    return results


def _write_journal(root: Path, journal: TaskJournal) -> TaskResult:
    """The task's journal entry (its chunks are durable already); the task's result for the driver.

    A task with chips that failed transiently is journalled as ``task-N.retry.json``: finalize uses
    it (those chips count as failed transiently), but it is not "done", so ``--resume`` runs it again.
    """
    done, retry = _journal_path(root, journal.task_id), _retry_path(root, journal.task_id)
    if journal.transient:
        atomic_write_json(retry, journal.to_dict(), indent=None)
    else:
        atomic_write_json(done, journal.to_dict(), indent=None)
        retry.unlink(missing_ok=True)
    records = journal.records
    return TaskResult(
        task_id=journal.task_id,
        chips=len(records),
        ok=sum(r.status == "ok" for r in records),
        skipped=journal.skipped,
        transient=sum(r.status == TRANSIENT for r in records),
        transient_hosts={_host_or_file(m): m for m in journal.transient.values()},
    )


def _host_or_file(message: str) -> str:
    """The host named by a read error ("cannot open/read HREF: why"), or "local files"."""
    href = message.split(" ", 2)[-1].split(": ", 1)[0] if message.startswith("cannot ") else ""
    return host_of(href) or "local files"


def _build_task(spec: TaskSpec, writer: ChipWriter) -> TaskJournal:
    """Read, mask and harmonise the chips of one task, hand them to ``writer``; the journal entry."""
    cfg = _task_config(spec.config)
    items = spec.items
    hist = BandHistograms(cfg.band_names, cfg.sensor_info.dtype)
    records: list[ChipRecord] = []
    skipped: dict[str, str] = {}
    transient: dict[str, str] = {}
    sign = partial(sign_href, timeout_s=cfg.stac.sign_timeout_s) if cfg.stac.sign == "auto" else None
    dpl = cfg.dates_per_location
    cache = SourceCache(sign)
    try:
        probes = _prefetch([(e.location, e.candidates) for _, e in spec.locations], items, cfg, cache)
        for index, entry in spec.locations:
            loc = entry.location
            chosen = _choose(loc, entry.candidates, items, cfg, cache, skipped, probes, transient)
            retry = [transient[c] for c in entry.candidates if c in transient]
            for slot in range(dpl):
                row = index * dpl + slot
                # the footprint stays the plan's WKT text: what ``footprint.wkt`` gave when it was planned
                rec = ChipRecord.unfilled(loc, slot, entry.footprint)
                if retry:  # the choice could differ once the scene reads: nothing kept, retried on --resume
                    rec.status, rec.reason = TRANSIENT, f"transient read failure: {retry[0]}"
                elif slot < len(chosen):
                    chip = chosen[slot]
                    assert chip.pixels is not None
                    rec.read_from(chip)
                    rec.reason = _passes(cfg, chip.cloud_fraction, chip.nodata_fraction)
                    if rec.reason is None:
                        writer.write(row, chip.pixels, chip.valid)
                        hist.update(chip.pixels, chip.valid)
                        rec.row, rec.status = row, "ok"
                elif not entry.candidates:
                    rec.reason = "no scene covers this location in the date range"
                elif not chosen and all(c in skipped for c in entry.candidates):
                    rec.reason = "every candidate scene failed to read"
                else:
                    rec.reason = f"only {len(chosen)} usable scene(s) for {dpl} dates per location"
                records.append(rec)
    finally:
        cache.close()
    return TaskJournal(spec.task_id, records, skipped, transient, hist.to_sparse())


# --------------------------------------------------------------------------- driver


def _task_spec(root: Path, plan: Plan, task_id: int, members: list[int], fsync: bool) -> TaskSpec:
    locs = [(i, plan.locations[i]) for i in members]
    ids = {c for _, e in locs for c in e.candidates}
    return TaskSpec(
        root=str(root.absolute()),
        task_id=task_id,
        config=plan.config,
        locations=locs,
        items={i: plan.items[i] for i in sorted(ids)},
        fsync=fsync,
    )


def _process_context() -> Any:
    """Worker processes from a fork server that has imported the builder once (cheap to start, and
    safe: the server has no threads); spawn where fork servers do not exist."""
    import multiprocessing as mp

    if "forkserver" not in mp.get_all_start_methods():
        return mp.get_context("spawn")
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["eo_jepa.chips.build", "zarr", "rasterio"])
    return ctx


def _batches(specs: list[TaskSpec], workers: int) -> list[list[TaskSpec]]:
    """Batches of tasks for :func:`run_tasks`, in submission order: ``workers`` stripes interleaved.

    Each worker takes a contiguous run of tasks: neighbouring tasks read the same COG blocks, and a
    worker taking the next batch of its own stripe finds those blocks decoded in its GDAL cache, where
    round-robin would make every worker decode each of them. A batch shares one chip writer, so its
    tasks' syncs and journal writes overlap its reads; about four batches per worker keep the load
    balanced and the progress bar moving. (Results do not depend on the order: the index and stats
    are assembled in plan order.)
    """
    n = len(specs)
    bounds = [round(k * n / workers) for k in range(workers + 1)]
    stripes = [specs[bounds[k] : bounds[k + 1]] for k in range(workers)]
    size = max(1, min(8, max(map(len, stripes)) // 4))
    split = [[s[i : i + size] for i in range(0, len(s), size)] for s in stripes]
    return [b[i] for i in range(max(map(len, split))) for b in split if i < len(b)]


def _execute(
    specs: list[TaskSpec],
    *,
    workers: int,
    scheduler: Any,
    executor: str,
    on_done: Callable[[TaskResult], None],
) -> None:
    if not specs:
        return
    if scheduler is not None:
        run_on_cluster(run_tasks, _batches(specs, max(1, workers)), scheduler, specs[0].root, on_done)
        return
    if workers <= 1:
        run_tasks(specs, on_done)
        return
    import concurrent.futures as cf

    pool: cf.Executor
    if executor == "thread":
        pool = cf.ThreadPoolExecutor(workers)
    else:
        # workers exit when this process dies, even by SIGKILL (else they keep reading for minutes)
        pool = cf.ProcessPoolExecutor(
            workers, mp_context=_process_context(), initializer=pool_worker_init, initargs=(os.getpid(),)
        )
    try:
        futures = [pool.submit(run_tasks, batch) for batch in _batches(specs, workers)]
        for fut in cf.as_completed(futures):
            for result in fut.result():
                on_done(result)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def build_chips(
    aois: str | Path | Iterable[Aoi] | Any,
    config: ChipConfig | str | Path,
    out_dir: str | Path,
    *,
    stac: str | None = None,
    workers: int | None = None,
    scheduler: Any = None,
    resume: bool = False,
    card_dir: str | Path | None = None,
    overrides: Sequence[str] = (),
    fsync: bool = True,
) -> BuildReport:
    """Build a chip store in ``out_dir`` (see :mod:`eo_jepa.chips.store` for the layout).

    aois: GeoJSON/GeoPackage path, GeoDataFrame or list of :class:`Aoi`. config: a ChipConfig or a
    YAML path (+ ``overrides``). stac: API URL or ItemCollection/catalog path replacing
    ``config.stac.url``. workers: local parallelism (default 1). scheduler: Dask address or Client.
    resume: finish an interrupted build with the same result. card_dir: also copy the data card there.
    """
    t0 = time.perf_counter()
    cfg = _load_config(config, overrides)
    root = Path(out_dir)
    plan_path = root / BUILD_DIR / PLAN_NAME
    if resume and plan_path.is_file():
        removed = remove_temp_files(root)
        if removed:
            log.info("removed %d temporary file(s) an interrupted build left in %s", removed, root)
        plan = Plan.from_dict(json.loads(plan_path.read_text()))
        if plan.config != to_dict(cfg):
            raise ConfigError(
                f"The config differs from the one the interrupted build in {str(root)!r} started with; "
                "resume with the same config, or build into a new --out."
            )
    else:
        leftovers = {p.name for p in root.iterdir()} if root.is_dir() else set()
        if resume and leftovers and leftovers <= {"chips.zarr", BUILD_DIR}:
            # killed while planning (arrays made, plan not yet written): nothing finished, start over
            shutil.rmtree(root / "chips.zarr", ignore_errors=True)
            shutil.rmtree(root / BUILD_DIR, ignore_errors=True)
        if root.exists() and any(root.iterdir()):
            if (root / DATASET_NAME).is_file():
                raise DataError(f"{str(root)!r} already holds a chip store; choose a new --out or delete it.")
            raise DataError(
                f"{str(root)!r} is not empty; pass --resume to finish an interrupted build there, "
                "or choose an empty --out."
            )
        aoi_list = aois if isinstance(aois, list) and all(isinstance(a, Aoi) for a in aois) else None
        aoi_list = aoi_list or load_aois(aois, cfg.aoi)
        check_writable(root)  # before the search: a bad --out must not cost a STAC search first
        plan = make_plan(aoi_list, cfg, stac or cfg.stac.url)
        n_rows = len(plan.locations) * cfg.dates_per_location
        create_arrays(root, n_rows, len(cfg.bands), cfg.chip_size, cfg.sensor_info.dtype)
        (root / BUILD_DIR / PARTIALS).mkdir(parents=True, exist_ok=True)
        atomic_write_json(plan_path, plan.to_dict(), indent=None)  # written last: plan present => arrays exist

    tasks = _tasks(plan)
    forget_down_hosts()  # inline/thread workers share this process: a host down last time may be back
    dpl = plan.config["dates_per_location"]
    pending = [t for t, _ in enumerate(tasks) if not _journal_path(root, t).is_file()]  # retry ones too
    done_chips = sum(len(m) for t, m in enumerate(tasks) if t not in set(pending)) * dpl
    total = len(plan.locations) * dpl
    specs = [_task_spec(root, plan, t, tasks[t], fsync) for t in pending]
    log.info(
        "%d task(s) to run, %d already done; %d chips planned", len(pending), len(tasks) - len(pending), total
    )

    from tqdm.auto import tqdm

    with tqdm(
        total=total, initial=done_chips, unit="chip", desc="chips", disable=progress_disabled(), smoothing=0.1
    ) as bar:
        said: set[str] = set()

        def on_done(result: TaskResult) -> None:
            bar.update(result.chips)
            for item_id, why in result.skipped.items():
                log.warning("skipped item %s: %s", item_id, why)
            for host, why in result.transient_hosts.items():
                if host not in said:  # once per host, not once per task
                    said.add(host)
                    log.warning(
                        "reads from %s are failing (%s); those chips are left for --resume", host, why
                    )

        try:
            _execute(specs, workers=workers or 1, scheduler=scheduler, executor=cfg.executor, on_done=on_done)
        finally:
            close_cached_datasets()
    report = finalize(root, plan, card_dir=card_dir)
    report.tasks, report.tasks_run, report.tasks_resumed = len(tasks), len(pending), len(tasks) - len(pending)
    report.seconds = time.perf_counter() - t0
    return report


# Temporary files of writes cut short: atomic writes (".NAME.XXXX.tmp") and chunks (".NAME.PID.TID.partial")
_TEMP_SUFFIXES = (".tmp", ".partial")


def remove_temp_files(root: Path) -> int:
    """Delete the temporary files an interrupted build left under ``root``; how many were removed."""
    removed = 0
    stack = [str(root)]
    while stack:
        with os.scandir(stack.pop()) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)
                elif entry.name.startswith(".") and entry.name.endswith(_TEMP_SUFFIXES):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(entry.path)
                        removed += 1
    return removed


def check_writable(root: Path) -> None:
    """DataError (one sentence) unless ``root`` can be created and written; leaves nothing behind."""
    import tempfile

    made: list[Path] = []
    try:
        for folder in reversed([root, *root.parents]):
            if not folder.exists():
                folder.mkdir()
                made.append(folder)
        with tempfile.NamedTemporaryFile(dir=root, prefix=".write-test-"):
            pass
    except OSError as exc:
        raise DataError(
            f"--out {str(root)!r} cannot be written ({exc.strerror or exc}); choose a folder you can write to."
        ) from None
    finally:
        for folder in reversed(made):
            with contextlib.suppress(OSError):
                folder.rmdir()


def finalize(root: Path, plan: Plan, *, card_dir: str | Path | None = None) -> BuildReport:
    """Assemble index, stats, card and dataset.json from the task partials (atomic writes, plan order)."""
    import geopandas as gpd
    import pandas as pd
    from shapely import wkt

    cfg = from_dict(ChipConfig, plan.config)
    sensor = cfg.sensor_info
    bands = cfg.band_names
    hist = BandHistograms(bands, sensor.dtype)
    records: list[ChipRecord] = []
    skipped: dict[str, str] = {}
    transient: dict[str, str] = {}
    for task_id in range(len(_tasks(plan))):
        journal = _journal_path(root, task_id)
        if not journal.is_file():
            journal = _retry_path(root, task_id)
        if not journal.is_file():
            raise DataError(
                f"Task {task_id} of {str(root)!r} has not finished; rerun the build with --resume."
            )
        part = TaskJournal.from_dict(json.loads(journal.read_text()))
        records.extend(part.records)
        for k, v in part.skipped.items():
            skipped.setdefault(k, v)
        for v in part.transient.values():
            transient.setdefault(_host_or_file(v), v)
        hist.merge_sparse(part.stats)
    _check_usable(root, records, skipped, transient)

    frame = pd.DataFrame.from_records([r.to_dict() for r in records])
    frame["datetime"] = pd.to_datetime(frame["datetime"], utc=True, format="ISO8601")
    frame["label"] = frame["label"].astype("string")
    frame["reason"] = frame["reason"].astype("string")
    shapes: dict[str, Any] = {}  # the dates of a location share its footprint: parse each once
    for text in frame["geometry"].unique():
        shapes[text] = wkt.loads(text)
    geometry = [shapes[g] for g in frame.pop("geometry")]
    index = gpd.GeoDataFrame(frame, geometry=geometry, crs="EPSG:4326")
    with atomic_open(root / INDEX_NAME, "wb") as fh:
        index.to_parquet(fh, index=False)

    stats = hist.summary(units=sensor.units)
    atomic_write_json(root / STATS_NAME, stats)

    ok = index[index["status"] == "ok"]
    n_transient = int((index["status"] == TRANSIENT).sum())
    reasons = index.loc[index["status"] == "rejected", "reason"].fillna("unknown")
    reasons = reasons.str.replace(r"\s[\d.]+ > ", " > ", regex=True).value_counts().to_dict()
    counts = {
        "planned": len(index),
        "ok": len(ok),
        "rejected": len(index) - len(ok) - n_transient,
        "failed_transiently": n_transient,
        "locations": len(plan.locations),
        "ok_by_split": {s: int((ok["split"] == s).sum()) for s in ("train", "val", "test")},
        "rejected_by_reason": {str(k): int(v) for k, v in reasons.items()},
        "items": len(plan.items),
        "items_skipped": len(skipped),
    }
    offsets = ok.groupby(["offset", "offset_source"], dropna=False).size() if len(ok) else {}
    harmonisation = [
        {"offset": int(off), "source": str(src), "chips": int(n)} for (off, src), n in dict(offsets).items()
    ]
    dataset = {
        "format": 1,
        "sensor": sensor.name,
        "bands": bands,
        "chip_size": cfg.chip_size,
        "gsd_m": cfg.gsd_m,
        "dtype": sensor.dtype,
        "units": sensor.units,
        "counts": counts,
        "config": plan.config,
        "source": plan.source,
        "collection": plan.collection,
        "skipped_items": skipped,
        # the offsets actually applied to the ok chips, and what decided them (Sensor.offset_for)
        "harmonisation": harmonisation,
        # chips with a band reprojected/resampled onto the chip grid (not exact source pixels)
        "grid": {"snap": cfg.grid.snap, "warped_chips": int(ok["warped"].sum()) if len(ok) else 0},
        "items_dropped_by_collection": plan.items_dropped_by_collection,
        "eo_jepa_version": plan.eo_jepa_version,
        "created": plan.created,
    }
    card = render_card(dataset, stats, plan)
    atomic_write_text(root / CARD_NAME, card)
    if card_dir is not None:
        atomic_write_text(Path(card_dir) / f"{cfg.name}.md", card)
    atomic_write_json(root / DATASET_NAME, dataset)  # last: its presence marks a finished store
    return BuildReport(
        out_dir=root,
        planned=counts["planned"],
        ok=counts["ok"],
        rejected=counts["rejected"],
        tasks=0,
        tasks_run=0,
        tasks_resumed=0,
        seconds=0.0,
        skipped_items=skipped,
        reasons=counts["rejected_by_reason"],
        transient=n_transient,
        transient_hosts=transient,
    )


def _check_usable(
    root: Path, records: list[ChipRecord], skipped: dict[str, str], transient: dict[str, str]
) -> None:
    """DataError (one sentence: the per-reason counts, an example failure) when no chip is usable;
    raised before the index, stats or ``dataset.json`` are written, so nothing looks finished."""
    if any(r.status == "ok" for r in records):
        return
    import re
    from collections import Counter

    reasons = Counter(
        "failed transiently"
        if r.status == TRANSIENT
        else re.sub(r"\s[\d.]+ > ", " > ", r.reason or "unknown")
        for r in records
    )
    causes = ", ".join(f"{n} x {why}" for why, n in reasons.most_common())
    if transient:
        host, why = next(iter(transient.items()))
        hint = f"reads from {host} failed ({why}); rerun with --resume once it answers"
    elif skipped:
        item, why = next(iter(skipped.items()))
        hint = (
            f"e.g. item {item}: {why}; check the hrefs, stac.sign (Planetary Computer hrefs need signing) "
            "and the band assets, then build again"
        )
    else:
        hint = "loosen max_cloud_fraction / max_nodata_fraction or widen the date range, then build again"
    raise DataError(
        f"No usable chip was built in {str(root)!r} ({causes}): {hint}. No index, stats or dataset.json "
        "were written."
    )
