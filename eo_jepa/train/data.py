"""Training data: chip stores, folders of per-sample rasters, and the view-producing loader.

Two sources give the same item shape (``pixels`` float32 (C, H, W) in raw sensor units,
``valid`` bool (H, W), ``location_id``) plus ``bands``, ``norm_stats``, ``sensor`` and
``locations()``:

- a chip store (:class:`eo_jepa.chips.ChipDataset`), built by ``eo-jepa chips build``;
- :class:`RasterFolderDataset`: a folder of per-sample GeoTIFF, NetCDF or Zarr files read with
  rioxarray/xarray and a configurable band mapping, so external datasets (Core-Five, ...) are
  used without conversion.

Order and randomness are deterministic and independent of how the run is cut up:
:class:`EpochBatchSampler` shards a seeded permutation per epoch across ranks
(:class:`~torch.utils.data.DistributedSampler`, ``set_epoch``) and can start mid-epoch;
:class:`ViewBatchDataset` turns a whole batch of indices into views inside a worker, drawing
each chip's random choices from ``(seed, epoch, index)``.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from eo_jepa.bands import check_bands, match_band
from eo_jepa.chips.dataset import ChipDataset
from eo_jepa.errors import BandMismatchError, ConfigError, DataError
from eo_jepa.eval.datasets import quiet_rasterio, read_image
from eo_jepa.models.encoder import canonical_bands
from eo_jepa.train.config import DataConfig, ViewsConfig
from eo_jepa.train.views import MultiCropViews, new_float_tensor, stack_params

log = logging.getLogger(__name__)

RASTER_SUFFIXES = (".tif", ".tiff", ".nc", ".zarr")
IMAGE_SUFFIXES = (
    ".png",
    ".jpg",
    ".jpeg",
)  # plain images, read as eval does (eo_jepa.eval.datasets.read_image)
PREFETCH = 2  # batches each loader worker prepares ahead


# ---------------------------------------------------------------------------------------- sources
class RasterFolderDataset(Dataset):
    """Per-sample raster files (GeoTIFF / NetCDF / Zarr) as training chips.

    Args:
        root: the folder.
        bands: canonical band names, in model order.
        band_map: canonical band -> variable name (NetCDF/Zarr data variable) or 1-based band
            index (GeoTIFF band, or position along the band axis of a single-variable NetCDF/Zarr).
            Bands left out are looked up by name: GeoTIFF band descriptions, then data variables.
        pattern: glob for the files below ``root``.
        nodata: value marking invalid pixels (besides NaN and the file's own nodata).
        norm_stats: band -> {"mean", "std"}; computed from ``stats_samples`` files when None.
        sensor: :mod:`eo_jepa.bands` sensor name, if known.
    """

    def __init__(
        self,
        root: str | Path,
        bands: Sequence[str],
        *,
        band_map: Mapping[str, str | int] | None = None,
        pattern: str = "*",
        nodata: float | None = None,
        norm_stats: Mapping[str, Mapping[str, float]] | None = None,
        stats_samples: int = 64,
        sensor: str | None = None,
    ) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise DataError(
                f"Raster folder {str(root)!r} does not exist; set data.path to a folder of rasters."
            )
        suffixes = RASTER_SUFFIXES + IMAGE_SUFFIXES
        self.files = sorted(p for p in self.root.glob(pattern) if p.suffix.lower() in suffixes)
        if not self.files and pattern == "*":  # tiles in class (or any) sub-folders: AID, UC Merced, ...
            self.files = sorted(
                p for p in self.root.rglob("*") if p.is_file() and p.suffix.lower() in suffixes
            )
        if not self.files:
            raise DataError(
                f"No .tif/.tiff/.nc/.zarr/.png/.jpg files match {pattern!r} in {str(root)!r}; check data.path and "
                "data.pattern."
            )
        if not bands:
            readable = (*IMAGE_SUFFIXES, ".tif", ".tiff")  # files that may name their bands
            bands = read_image(self.files[0])[1] if self.files[0].suffix.lower() in readable else None
            if not bands:
                raise ConfigError(
                    "data.bands must list the canonical band names for a raster_folder dataset."
                )
        # One band matcher everywhere: "B04", "red" and "R" name the same band here as in eval.
        self.bands = canonical_bands(bands)
        # "3" from a YAML string or an override means band index 3
        self.band_map = {
            canonical_bands([b])[0]: int(v) if isinstance(v, str) and v.isdigit() else v
            for b, v in (band_map or {}).items()
        }
        self._resized = False
        unknown = sorted(set(self.band_map) - set(self.bands))
        if unknown:
            raise ConfigError(
                f"data.band_map has bands {unknown} that are not in data.bands {list(self.bands)}."
            )
        self.nodata = nodata
        self.sensor = sensor
        self.labels: list[str | None] = [None] * len(self.files)
        first = self._read(0)[0]
        self.shape = first.shape[1:]
        self.norm_stats = (
            dict(norm_stats) if norm_stats is not None else self.compute_norm_stats(stats_samples)
        )

    def __len__(self) -> int:
        return len(self.files)

    def locations(self) -> dict[str, list[int]]:
        """Each file is its own location (one date per place)."""
        return {p.stem: [i] for i, p in enumerate(self.files)}

    def __getitem__(self, i: int) -> dict[str, Any]:
        pixels, valid = self._read(i)
        if pixels.shape[1:] != self.shape and self.files[i].suffix.lower() in IMAGE_SUFFIXES:
            pixels, valid = self._resize(i, pixels, valid)
        if pixels.shape[1:] != self.shape:
            raise DataError(
                f"{self.files[i].name} is {pixels.shape[1]}x{pixels.shape[2]} pixels but the first file is "
                f"{self.shape[0]}x{self.shape[1]}; a raster folder needs one chip size (crop or tile the files)."
            )
        return {
            "pixels": pixels,
            "valid": valid,
            "chip_id": self.files[i].stem,
            "location_id": self.files[i].stem,
            "label": None,
            "row": i,
        }

    def compute_norm_stats(self, samples: int) -> dict[str, dict[str, float]]:
        """Per-band mean/std over the valid pixels of up to ``samples`` evenly spaced files (float64)."""
        picks = np.unique(np.linspace(0, len(self.files) - 1, num=min(samples, len(self.files))).astype(int))
        total = np.zeros(len(self.bands))
        sq = np.zeros(len(self.bands))
        count = 0
        for i in picks:
            px, valid = self._read(int(i))
            v = px[:, valid].astype(np.float64)
            total += v.sum(axis=1)
            sq += (v * v).sum(axis=1)
            count += v.shape[1]
        if count == 0:
            raise DataError(f"No valid pixels in the sampled files of {str(self.root)!r}; check data.nodata.")
        mean = total / count
        std = np.sqrt(np.maximum(sq / count - mean * mean, 0.0))
        return {
            b: {"count": int(count), "mean": float(m), "std": float(max(s, 1e-6))}
            for b, m, s in zip(self.bands, mean, std, strict=True)
        }

    def _resize(self, i: int, pixels: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """A plain image of another size (UC Merced has a few 247 x 256 tiles) resized to the first file's."""
        import torch.nn.functional as F

        if not self._resized:
            log.warning(
                "%s is %dx%d pixels, the first image %dx%d: images of other sizes are resized to the first's.",
                self.files[i].name, *pixels.shape[1:], *self.shape,
            )  # fmt: skip
            self._resized = True
        x = F.interpolate(
            torch.from_numpy(pixels)[None], size=tuple(self.shape), mode="bilinear", antialias=True
        )
        v = F.interpolate(torch.from_numpy(valid.astype(np.float32))[None, None], size=tuple(self.shape))
        return x[0].numpy(), v[0, 0].numpy() > 0.5

    # -- reading
    def _read(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        path = self.files[i]
        if path.suffix.lower() in IMAGE_SUFFIXES:
            arrays, nodata = self._read_image(path)
        elif path.suffix.lower() in (".tif", ".tiff"):
            arrays, nodata = self._read_geotiff(path)
        else:
            arrays, nodata = self._read_xarray(path)
        pixels = np.stack(arrays).astype(np.float32)
        bad = np.isnan(pixels).any(axis=0)
        for nd in (nodata, self.nodata):
            if nd is not None and not (isinstance(nd, float) and np.isnan(nd)):
                bad |= (pixels == nd).all(axis=0)
        return np.nan_to_num(pixels, nan=0.0), ~bad

    def _read_image(self, path: Path) -> tuple[list[np.ndarray], float | None]:
        """A JPEG/PNG: red, green, blue (3-4 channels) or one unnamed channel, picked by band_map or name."""
        data, names = read_image(path)
        return self._pick(path, data, list(names or [""] * data.shape[0])), None

    def _read_geotiff(self, path: Path) -> tuple[list[np.ndarray], float | None]:
        import rioxarray

        with quiet_rasterio(), rioxarray.open_rasterio(path, masked=False, cache=False) as da:
            data = da.values
            described = da.attrs.get("long_name") or ()
            if isinstance(described, str):
                described = [described]
            nodata = da.rio.nodata
        return self._pick(path, data, [str(d) if d else "" for d in described]), (
            None if nodata is None else float(nodata)
        )

    def _pick(self, path: Path, data: np.ndarray, descriptions: list[str]) -> list[np.ndarray]:
        """The bands of ``self.bands`` from (C, H, W) ``data``, by band_map index or by name: descriptions
        are matched by :func:`eo_jepa.bands.match_band` (``B04`` and ``red`` are one band)."""
        names = [match_band(d) or d.lower() for d in descriptions]
        out = []
        for band in self.bands:
            key = self.band_map.get(band, band)
            if isinstance(key, int):
                if not 1 <= key <= data.shape[0]:
                    raise DataError(
                        f"{path.name} has {data.shape[0]} bands; band_map {band}={key} is out of range."
                    )
                out.append(data[key - 1])
            elif (match_band(key) or key.lower()) in names:
                out.append(data[names.index(match_band(key) or key.lower())])
            else:
                raise BandMismatchError(
                    f"{path.name} has no band described as {key!r} (descriptions: "
                    f"{[d for d in descriptions if d] or 'none'}); map it with data.band_map.{band}=<1-based band index>."
                )
        return out

    def _read_xarray(self, path: Path) -> tuple[list[np.ndarray], float | None]:
        import xarray as xr

        engine = "zarr" if path.suffix.lower() == ".zarr" else None
        with xr.open_dataset(path, engine=engine, mask_and_scale=False) as ds:
            names = list(ds.data_vars)
            out = []
            nodata = None
            for band in self.bands:
                key = self.band_map.get(band, band)
                if isinstance(key, int):
                    if len(names) != 1 or ds[names[0]].ndim != 3:
                        raise BandMismatchError(
                            f"{path.name}: an integer band_map ({band}={key}) needs one 3-D data variable, "
                            f"found {names}; map bands to variable names instead."
                        )
                    var = ds[names[0]]
                    if not 1 <= key <= var.shape[0]:
                        raise DataError(
                            f"{path.name} has {var.shape[0]} bands; band_map {band}={key} is out of range."
                        )
                    arr = var[key - 1]
                elif key in ds.data_vars:
                    arr = ds[key]
                else:
                    raise BandMismatchError(
                        f"{path.name} has no variable {key!r} (variables: {names}); map it with "
                        f"data.band_map.{band}=<variable name>."
                    )
                fill = arr.attrs.get("_FillValue", arr.encoding.get("_FillValue"))
                nodata = float(fill) if fill is not None else nodata
                out.append(np.asarray(arr.values))
        return out, nodata


def open_source(cfg: DataConfig, path: str | Path | None = None) -> Any:
    """The dataset named by the config (chip store or raster folder), with bands checked."""
    root = path or cfg.path
    if root is None:
        raise ConfigError("No training data: pass --data DIR or set data.path in the config.")
    if cfg.kind == "chips":
        ds = ChipDataset(root, split=cfg.split, bands=cfg.bands)
        if cfg.bands is not None:
            check_bands(ds.bands, cfg.bands, f"chip store {str(root)!r}")
    else:
        stats = None
        if cfg.norm_stats:
            blob = json.loads(Path(cfg.norm_stats).read_text())
            stats = blob.get("bands", blob)
        ds = RasterFolderDataset(
            root,
            cfg.bands or list(cfg.band_map),
            band_map=cfg.band_map,
            pattern=cfg.pattern,
            nodata=cfg.nodata,
            norm_stats=stats,
            stats_samples=cfg.stats_samples,
            sensor=cfg.sensor,
        )
    if len(ds) == 0:
        raise DataError(f"Dataset {str(root)!r} has no usable samples for split {cfg.split!r}.")
    return ds


# ---------------------------------------------------------------------------------------- batching
class EpochBatchSampler(Sampler):
    """Yields ``(epoch, indices)`` batches of this rank's shard of a seeded per-epoch permutation.

    Uses :class:`~torch.utils.data.DistributedSampler` (seed, ``set_epoch``, ``drop_last`` so
    every rank takes the same number of steps). ``start`` skips the first batches of the epoch
    (resume), so the data order never depends on where a run was interrupted.
    """

    def __init__(
        self,
        n: int,
        batch_size: int,
        *,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        shuffle: bool = True,
    ) -> None:
        from torch.utils.data import DistributedSampler

        self.inner = DistributedSampler(
            range(n), num_replicas=world_size, rank=rank, shuffle=shuffle, seed=seed, drop_last=True
        )
        self.batch_size = batch_size
        self.epoch = 0
        self.start = 0
        self.limit: int | None = None  # batches per epoch actually used (whole accumulation groups)
        if len(self) == 0:
            raise DataError(
                f"{n} samples over {world_size} process(es) do not fill one batch of {batch_size}; "
                "lower data.batch_size or add data."
            )

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch = epoch
        self.start = start
        self.inner.set_epoch(epoch)

    def __len__(self) -> int:
        n = len(self.inner) // self.batch_size
        return n if self.limit is None else min(n, self.limit)

    def __iter__(self) -> Iterator[tuple[int, tuple[int, ...]]]:
        idx = list(self.inner)
        for b in range(self.start, len(self)):
            yield self.epoch, tuple(idx[b * self.batch_size : (b + 1) * self.batch_size])


class ViewBufferPool:
    """Output buffers for view batches, reused once the consumer has released a batch.

    A batch of views is large (about 50 MB for 16 chips with the default 2 x 224 px + 6 x 96 px
    views), and touching fresh memory for every batch costs page faults that, on virtual machines,
    rival the views' own compute; a loader worker must moreover put the batch in shared memory to
    hand it over. So each producing process keeps a few buffer slots and writes a batch into a slot
    whose previous batch was released with :meth:`release` (the trainer releases a batch right
    after its backward pass). A batch that is never released keeps its slot, so nothing is ever
    overwritten while in use; when no slot is free the batch gets fresh memory, as without a pool.

    The slot states live in a small shared tensor: 0 = free, else a random token naming the batch
    that holds the slot (the batch carries it in its ``buffer`` key). Only producers set a slot busy
    and only :meth:`release` of that very batch frees it, so a stale read can only make a producer
    allocate afresh, and releasing an old batch (of a worker that has since been replaced) never
    frees a slot that a newer batch holds. The consumer keeps the
    tensors of released batches referenced: the next batch in the same shared buffer then reuses
    the existing mapping instead of mapping (and faulting) it again.
    """

    def __init__(self, num_workers: int, slots: int) -> None:
        self.state = torch.zeros(max(1, num_workers), slots, dtype=torch.int64).share_memory_()
        self._buffers: dict[int, list[torch.Tensor]] = {}  # this process's slots
        self._owner = os.getpid()
        self._kept: dict[tuple[int, int], Any] = {}  # consumer side: released batches' tensors

    def __getstate__(self) -> dict[str, Any]:  # a worker starts with no buffers of its own
        return {**self.__dict__, "_buffers": {}, "_kept": {}}

    def acquire(
        self, shapes: Sequence[tuple[int, ...]], shared: bool
    ) -> tuple[tuple[int, int, int, int] | None, list[torch.Tensor] | None]:
        """A free slot's ``(key, tensors of shapes)``, or ``(None, None)`` when every slot is busy."""
        pid = os.getpid()
        if pid != self._owner:  # forked worker: the parent's buffers are not ours
            self._buffers, self._kept, self._owner = {}, {}, pid
        info = torch.utils.data.get_worker_info()
        row = info.id if info is not None else 0
        for slot in range(self.state.shape[1]):
            if int(self.state[row, slot]) != 0:
                continue
            bufs = self._buffers.get(slot)
            if bufs is None or [tuple(t.shape) for t in bufs] != [tuple(s) for s in shapes]:
                bufs = self._buffers[slot] = [new_float_tensor(tuple(s), shared) for s in shapes]
            token = int.from_bytes(os.urandom(7), "little") | 1  # nonzero, fits int64
            self.state[row, slot] = token
            return (pid, token, row, slot), bufs
        return None, None

    def release(self, batch: Mapping[str, Any]) -> None:
        """Let the producer reuse ``batch``'s buffer: the batch's tensors must not be used afterwards."""
        key = batch.get("buffer")
        if key is None:
            return
        pid, token, row, slot = (int(k) for k in key)
        if int(self.state[row, slot]) == token:
            self.state[row, slot] = 0
        if pid != os.getpid():
            self._kept[(row, slot)] = [
                t for t in batch.values() if isinstance(t, torch.Tensor) and t.is_shared()
            ]


class ViewBatchDataset(Dataset):
    """Maps ``(epoch, indices)`` to a batch of views, built batch-wise inside a loader worker.

    With a :class:`ViewBufferPool` the views are written into reusable buffers; the batch then
    carries a ``buffer`` key, and the consumer gives the buffer back with :meth:`release`.
    """

    def __init__(
        self,
        source: Any,
        views: MultiCropViews,
        *,
        seed: int = 0,
        multi_date: bool = False,
        pool: ViewBufferPool | None = None,
    ) -> None:
        self.source = source
        self.views = views
        self.seed = seed
        self.multi_date = multi_date
        self.pool = pool
        self._locations: dict[int, list[int]] | None = None
        if multi_date:
            by_loc = source.locations()
            self._locations = {i: members for members in by_loc.values() for i in members}
            if all(len(m) == 1 for m in by_loc.values()):
                log.warning("data.multi_date is on but every location has a single date; views use one date.")

    def rng(self, epoch: int, index: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, epoch, index])

    def __len__(self) -> int:  # not used by the sampler-driven loader
        return len(self.source)

    def __getitem__(self, key: tuple[int, Sequence[int]]) -> dict[str, Any]:
        epoch, indices = key
        rows, rngs = [], []
        for i in indices:
            rng = self.rng(epoch, i)
            chip_rows = [i]
            if self._locations is not None:
                others = [j for j in self._locations.get(i, [i]) if j != i]
                chip_rows.append(int(others[rng.integers(len(others))]) if others else i)
            rows.append(chip_rows)
            rngs.append(rng)
        px, va = self._read(rows)  # (B, T, C, H, W) in the source's dtype, (B, T, H, W)
        h, w = px.shape[-2:]
        params = [
            self.views.sample_params(rng, h, w, num_dates=len(r) if len(set(r)) > 1 else 1)
            for rng, r in zip(rngs, rows, strict=True)
        ]
        if max(int(p.date.max()) for p in params) == 0:  # no view uses a second date
            px, va = px[:, :1], va[:, :1]
        # In a loader worker the views are written to shared memory: no copy on the way to the trainer.
        shared = torch.utils.data.get_worker_info() is not None
        key, buffers = None, None
        if self.pool is not None:
            key, buffers = self.pool.acquire(self.views.output_shapes(px.shape[0], px.shape[2]), shared)
        glob, loc = self.views.apply(
            torch.from_numpy(px), torch.from_numpy(va), stack_params(params), shared=shared, out=buffers
        )
        out: dict[str, Any] = {"globals": glob, "indices": torch.tensor(list(indices))}
        if loc is not None:
            out["locals"] = loc
        if key is not None:
            out["buffer"] = key
        return out

    def release(self, batch: Mapping[str, Any]) -> None:
        """Done with ``batch``: its buffer may be reused (no-op without a pool)."""
        if self.pool is not None:
            self.pool.release(batch)

    def _read(self, rows: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
        """Pixels (B, T, C, H, W) and valid masks (B, T, H, W) of the chips' rows (T dates each)."""
        flat = [j for chip_rows in rows for j in chip_rows]
        b, t = len(rows), len(rows[0])
        if hasattr(self.source, "read_pixels"):  # a chip store: one batched read, native dtype
            px, va = self.source.read_pixels(flat)
        else:
            items = [self.source[j] for j in flat]
            px = np.stack([it["pixels"] for it in items])
            va = np.stack([it["valid"] for it in items])
        return px.reshape(b, t, *px.shape[1:]), va.reshape(b, t, *va.shape[1:])


def build_views(
    cfg: ViewsConfig, source: Any, norm_stats: Mapping[str, Mapping[str, float]]
) -> MultiCropViews:
    return MultiCropViews(cfg, source.bands, norm_stats, sensor=getattr(source, "sensor", None))


def make_loader(
    source: Any,
    views: MultiCropViews,
    cfg: DataConfig,
    *,
    seed: int,
    rank: int = 0,
    world_size: int = 1,
    pin_memory: bool = False,
) -> tuple[torch.utils.data.DataLoader, EpochBatchSampler]:
    """A loader of view batches plus its sampler (call ``sampler.set_epoch(epoch, start)`` per epoch).

    Call ``loader.dataset.release(batch)`` once a batch's tensors are no longer needed, so that its
    buffer is reused (see :class:`ViewBufferPool`); batches never released simply are not reused.
    """
    sampler = EpochBatchSampler(len(source), cfg.batch_size, rank=rank, world_size=world_size, seed=seed)
    # Slots per producer: a worker has at most PREFETCH batches outstanding (queued or being built),
    # plus the one in the trainer's step until it is released.
    pool = ViewBufferPool(cfg.num_workers, slots=PREFETCH + 1)
    dataset = ViewBatchDataset(source, views, seed=seed, multi_date=cfg.multi_date, pool=pool)
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=None,
        sampler=sampler,
        num_workers=cfg.num_workers,
        pin_memory=pin_memory,
        prefetch_factor=PREFETCH if cfg.num_workers > 0 else None,
        persistent_workers=False,
        worker_init_fn=_one_thread_per_worker if cfg.num_workers > 0 else None,
    )
    return loader, sampler


def _one_thread_per_worker(worker_id: int) -> None:
    """Each loader worker is one core's worth of work: intra-op threads (torch's, and Blosc's chunk
    decoding) would only oversubscribe the CPU that the other workers and the training step share."""
    from numcodecs import blosc

    torch.set_num_threads(1)
    blosc.set_nthreads(1)
