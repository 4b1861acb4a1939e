"""Per-band statistics over valid pixels, in one streaming pass with exact parallel merging.

Chip pixels are integers (uint16 Sentinel-2 reflectance x 10000, uint8 NAIP), so each task keeps an
exact integer histogram per band (65 536 or 256 bins). Histograms merge by integer addition, so the
result does not depend on how the work was split or in which order partials arrive. From the merged
histogram: count, min, max, the mean (exact integer sum / count), the population standard deviation
(two-pass over the bins in float64) and percentiles with NumPy's default ``linear`` method (exact
order statistics from the cumulative counts).
"""

from __future__ import annotations

import base64
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

PERCENTILES = {"p1": 1.0, "p2": 2.0, "p98": 98.0, "p99": 99.0}


class BandHistograms:
    """Exact per-band histograms of integer pixel values over valid pixels."""

    def __init__(self, bands: Sequence[str], dtype: str) -> None:
        kind = np.dtype(dtype)
        if kind.kind != "u" or kind.itemsize > 2:
            raise ValueError(f"exact histograms need uint8/uint16 pixels, got {dtype}")
        self.bands = list(bands)
        self.dtype = kind.name
        self._bins = 1 << (8 * kind.itemsize)
        # (bands, bins) int64, made on first need: a task's partial goes to_sparse straight from the
        # buffered values, and 2.6 MB of fresh zeros per task is not free.
        self._counts: np.ndarray | None = None
        self._pending: list[np.ndarray] = []
        self._pending_size = 0

    def update(self, pixels: np.ndarray, valid: np.ndarray) -> None:
        """Add one chip: pixels (C, H, W) of the histogram dtype, valid (H, W) bool.

        Valid pixels are buffered and counted in batches (one bincount per band per ~16 M values).
        """
        # all-valid chips (the common case) skip the boolean gather: same values, same order
        self._pending.append(pixels.reshape(len(pixels), -1) if valid.all() else pixels[:, valid])
        self._pending_size += self._pending[-1].size
        if self._pending_size >= 1 << 24:
            self._flush()

    def _pending_counts(self) -> list[np.ndarray]:
        """Per band, the counts of the buffered values for bins 0..max (no longer: cheap when sparse)."""
        values = self._pending[0] if len(self._pending) == 1 else np.concatenate(self._pending, axis=1)
        self._pending, self._pending_size = [], 0
        return [np.bincount(values[c]) for c in range(len(self.bands))]

    def _flush(self) -> None:
        if self._counts is None:
            self._counts = np.zeros((len(self.bands), self._bins), dtype=np.int64)
        if self._pending:
            for c, counts in enumerate(self._pending_counts()):
                self._counts[c, : counts.size] += counts

    @property
    def counts(self) -> np.ndarray:
        """(bands, bins) int64 counts."""
        self._flush()
        assert self._counts is not None
        return self._counts

    def merge(self, other: BandHistograms) -> BandHistograms:
        if other.bands != self.bands or other.dtype != self.dtype:
            raise ValueError("cannot merge histograms of different bands or dtypes")
        self.counts[...] += other.counts
        return self

    # Partials travel inside a task's JSON journal entry as sparse (value, count) pairs per band, as
    # base64 of little-endian uint16 values and int64 counts (a few kB; JSON lists of the same
    # numbers cost ~10x more to write and read).
    def to_sparse(self) -> dict[str, Any]:
        out: dict[str, Any] = {"bands": self.bands, "dtype": self.dtype, "hist": {}}
        if self._counts is None and self._pending:
            per_band = self._pending_counts()
        else:
            per_band = list(self.counts)
        for band, counts in zip(self.bands, per_band, strict=True):
            nz = np.flatnonzero(counts)
            out["hist"][band] = {
                "values": base64.b64encode(nz.astype("<u2").tobytes()).decode("ascii"),
                "counts": base64.b64encode(counts[nz].astype("<i8").tobytes()).decode("ascii"),
            }
        return out

    @classmethod
    def from_sparse(cls, data: dict[str, Any]) -> BandHistograms:
        return cls(data["bands"], data["dtype"]).merge_sparse(data)

    def merge_sparse(self, data: dict[str, Any]) -> BandHistograms:
        """Add a :meth:`to_sparse` partial (without making a dense histogram of it first)."""
        if data["bands"] != self.bands or data["dtype"] != self.dtype:
            raise ValueError("cannot merge histograms of different bands or dtypes")
        counts = self.counts
        for i, band in enumerate(self.bands):
            sparse = data["hist"][band]
            if isinstance(sparse, dict):
                values = np.frombuffer(base64.b64decode(sparse["values"]), dtype="<u2")
                n = np.frombuffer(base64.b64decode(sparse["counts"]), dtype="<i8")
            else:  # [values, counts] lists: partials of builds started before the base64 form
                values, n = (np.asarray(x, dtype=np.int64) for x in sparse)
            counts[i, values] += n  # values are distinct within a partial
        return self

    def summary(self, units: str = "") -> dict[str, Any]:
        """The ``norm_stats.json`` document."""
        return {
            "bands": {b: band_summary(self.counts[i]) for i, b in enumerate(self.bands)},
            "band_order": self.bands,
            "units": units,
            "dtype": self.dtype,
            "method": "exact integer histograms over valid pixels; std is the population std (ddof=0); "
            "percentiles use NumPy's linear method",
        }


def merge_all(parts: Iterable[BandHistograms], bands: Sequence[str], dtype: str) -> BandHistograms:
    total = BandHistograms(bands, dtype)
    for part in parts:
        total.merge(part)
    return total


def _order_statistic(cum: np.ndarray, k: int) -> int:
    """The k-th smallest value (0-based) given cumulative counts per value."""
    return int(np.searchsorted(cum, k, side="right"))


def band_summary(hist: np.ndarray) -> dict[str, Any]:
    n = int(hist.sum())
    if n == 0:
        nan = float("nan")
        return {
            "count": 0,
            "mean": nan,
            "std": nan,
            "min": nan,
            "max": nan,
            **dict.fromkeys(PERCENTILES, nan),
        }
    values = np.arange(hist.size, dtype=np.float64)
    nz = np.nonzero(hist)[0]
    total = int((nz.astype(np.int64) * hist[nz]).sum(dtype=np.int64))  # exact: < 2**63 for < 1.4e14 pixels
    mean = total / n
    var = float((hist * (values - mean) ** 2).sum() / n)
    cum = np.cumsum(hist)
    out: dict[str, Any] = {
        "count": n,
        "mean": mean,
        "std": var**0.5,
        "min": int(nz[0]),
        "max": int(nz[-1]),
    }
    for key, q in PERCENTILES.items():
        pos = (n - 1) * q / 100.0
        lo = int(np.floor(pos))
        hi = min(lo + 1, n - 1)
        a, b = _order_statistic(cum, lo), _order_statistic(cum, hi)
        out[key] = float(a + (pos - lo) * (b - a))
    return out
