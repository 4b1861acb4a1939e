"""Exact streaming stats: histograms vs float64 NumPy, and merge order does not matter."""

from __future__ import annotations

import json

import numpy as np
import pytest

from eo_jepa.chips.stats import BandHistograms, band_summary, merge_all


def _chips(rng: np.random.Generator, n: int, dtype: str) -> list[tuple[np.ndarray, np.ndarray]]:
    hi = 12000 if dtype == "uint16" else 256
    out = []
    for _ in range(n):
        pixels = rng.gamma(2.0, hi / 8, size=(3, 32, 32)).clip(0, hi - 1).astype(dtype)
        valid = rng.random((32, 32)) > 0.3
        out.append((pixels, valid))
    return out


@pytest.mark.parametrize("dtype", ["uint16", "uint8"])
def test_stats_equal_float64_numpy(dtype):
    rng = np.random.default_rng(0)
    chips = _chips(rng, 20, dtype)
    hist = BandHistograms(["red", "green", "blue"], dtype)
    for pixels, valid in chips:
        hist.update(pixels, valid)
    summary = hist.summary()
    for c, band in enumerate(["red", "green", "blue"]):
        values = np.concatenate([p[c][v] for p, v in chips]).astype(np.float64)
        got = summary["bands"][band]
        assert got["count"] == values.size
        assert got["mean"] == pytest.approx(values.mean(), rel=1e-12)
        assert got["std"] == pytest.approx(values.std(), rel=1e-9)
        assert got["min"] == values.min() and got["max"] == values.max()
        for key, q in (("p1", 1), ("p2", 2), ("p98", 98), ("p99", 99)):
            assert got[key] == pytest.approx(np.percentile(values, q), rel=1e-12, abs=1e-9), key


def test_merge_is_exact_and_order_free(tmp_path):
    rng = np.random.default_rng(1)
    chips = _chips(rng, 12, "uint16")
    whole = BandHistograms(["a", "b", "c"], "uint16")
    for p, v in chips:
        whole.update(p, v)
    parts = []
    for i, group in enumerate((chips[:5], chips[5:6], chips[6:])):
        part = BandHistograms(["a", "b", "c"], "uint16")
        for p, v in group:
            part.update(p, v)
        (tmp_path / f"p{i}.json").write_text(json.dumps(part.to_sparse()))  # partials travel as JSON
        parts.append(BandHistograms.from_sparse(json.loads((tmp_path / f"p{i}.json").read_text())))
    forward = merge_all(parts, ["a", "b", "c"], "uint16")
    backward = merge_all(parts[::-1], ["a", "b", "c"], "uint16")
    assert np.array_equal(forward.counts, whole.counts)
    assert forward.summary() == backward.summary() == whole.summary()


def test_percentiles_of_tiny_samples_match_numpy():
    for values in ([7], [3, 9], [0, 0, 1, 65535], list(range(11))):
        hist = np.bincount(np.array(values), minlength=65536)
        got = band_summary(hist)
        for key, q in (("p1", 1), ("p2", 2), ("p98", 98), ("p99", 99)):
            assert got[key] == pytest.approx(np.percentile(values, q), rel=1e-12)


def test_empty_band_is_nan_not_error():
    got = band_summary(np.zeros(256, dtype=np.int64))
    assert got["count"] == 0 and got["mean"] != got["mean"]
