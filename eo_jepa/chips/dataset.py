"""``ChipDataset``: a torch Dataset over the ``status == 'ok'`` chips of a chip store."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from eo_jepa.chips.store import INDEX_NAME, STATS_NAME, open_chunk_readers, read_dataset_json
from eo_jepa.errors import BandMismatchError, DataError

try:  # torch is a dependency, but keep the reader importable in light environments
    from torch.utils.data import Dataset as _Base
except ImportError:  # pragma: no cover
    _Base = object  # type: ignore[assignment,misc]


class ChipDataset(_Base):  # type: ignore[misc,valid-type]
    """Chips as raw harmonised arrays plus metadata.

    ``dataset[i]`` -> ``dict(pixels=float32 (C, H, W) raw units, valid=bool (H, W), chip_id,
    location_id, label, row)``. ``split`` keeps one split ('train', 'val', 'test'); ``bands`` picks
    (and orders) a subset by canonical name. The arrays are opened lazily per process, so the
    dataset can be used with multi-worker DataLoaders; chunks are decoded directly from their files
    (see :func:`~eo_jepa.chips.store.open_chunk_readers`).
    """

    def __init__(
        self, root: str | Path, split: str | None = None, *, bands: Sequence[str] | None = None
    ) -> None:
        import geopandas as gpd
        import pandas as pd

        self.root = Path(root)
        self.info = read_dataset_json(self.root)
        self.sensor: str = self.info["sensor"]
        store_bands: list[str] = list(self.info["bands"])
        if bands is None:
            self.bands = tuple(store_bands)
        else:
            missing = [b for b in bands if b not in store_bands]
            if missing:
                raise BandMismatchError(
                    f"Bands {missing} are not in the chip store {str(self.root)!r}, which has {store_bands}."
                )
            self.bands = tuple(bands)
        channels = [store_bands.index(b) for b in self.bands]
        # None when every stored band is kept in stored order: chunks are then used as decoded
        self._channels = None if channels == list(range(len(store_bands))) else channels
        stats = json.loads((self.root / STATS_NAME).read_text())
        self.norm_stats: dict[str, dict[str, Any]] = {b: stats["bands"][b] for b in self.bands}
        index = gpd.read_parquet(self.root / INDEX_NAME)
        index = index[index["status"] == "ok"]
        if split is not None:
            splits = sorted(set(index["split"]))
            if split not in ("train", "val", "test"):
                raise DataError(f"Unknown split {split!r}; use train, val or test (this store has {splits}).")
            index = index[index["split"] == split]
        self.index = index.reset_index(drop=True)
        self._rows = self.index["row"].to_numpy(dtype=np.int64)
        # labels are optional: an unlabelled AOI gives None (pandas stores it as NA, which has no truth value)
        self.labels: list[str | None] = [None if pd.isna(v) else str(v) for v in self.index["label"]]
        self._arrays: tuple[Any, Any] | None = None

    def __len__(self) -> int:
        return len(self.index)

    def _open(self) -> tuple[Any, Any]:
        if self._arrays is None:
            self._arrays = open_chunk_readers(self.root)
        return self._arrays

    def __getstate__(self) -> dict[str, Any]:  # zarr handles are reopened in each worker
        state = dict(self.__dict__)
        state["_arrays"] = None
        return state

    def __getitem__(self, i: int) -> dict[str, Any]:
        if not -len(self) <= i < len(self):
            raise IndexError(f"chip {i} out of range for {len(self)} chips")
        i = i % len(self)
        pixels, valid = self._open()
        row = int(self._rows[i])
        data = pixels.read(row)
        if self._channels is not None:
            data = data[self._channels]
        return {
            "pixels": data.astype(np.float32),
            "valid": valid.read(row),
            "chip_id": str(self.index.at[i, "chip_id"]),
            "location_id": str(self.index.at[i, "location_id"]),
            "label": self.labels[i],
            "row": row,
        }

    def read_pixels(self, indices: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """Raw pixels (n, C, H, W) in the store's dtype and valid masks (n, H, W) of several chips.

        The training loader's batch path: chunks are decoded straight into one array, with no
        per-chip float conversion (the views convert the batch once, a few chips at a time).
        """
        pixels, valid = self._open()
        rows = [int(self._rows[i]) for i in indices]
        first = pixels.read(rows[0])
        px = np.empty((len(rows), len(self.bands), *first.shape[1:]), dtype=first.dtype)
        va = np.empty((len(rows), *first.shape[1:]), dtype=bool)
        for k, row in enumerate(rows):
            if self._channels is None:  # decode straight into the batch
                if k == 0:
                    px[0] = first
                else:
                    pixels.read(row, px[k])
            else:
                px[k] = (first if k == 0 else pixels.read(row))[self._channels]
            valid.read(row, va[k])
        return px, va

    def locations(self) -> dict[str, list[int]]:
        """location_id -> dataset indices (several when the store kept several dates per location)."""
        out: dict[str, list[int]] = {}
        for i, loc in enumerate(self.index["location_id"]):
            out.setdefault(str(loc), []).append(i)
        return out

    def __repr__(self) -> str:
        return f"ChipDataset({str(self.root)!r}, {len(self)} chips, sensor={self.sensor}, bands={list(self.bands)})"
