"""Representation health: RankMe against a float64 NumPy formula, SIGReg ordering and invariances."""

from __future__ import annotations

import numpy as np
import pytest

from eo_jepa.eval.health import representation_health


def rankme_numpy(z: np.ndarray) -> float:
    s = np.linalg.svd(z.astype(np.float64), compute_uv=False)
    p = s / s.sum() + 1e-12
    return float(np.exp(-(p * np.log(p)).sum()))


def test_effective_rank_matches_numpy():
    rng = np.random.default_rng(0)
    z = rng.standard_normal((300, 8)) @ np.diag([5, 4, 3, 2, 1, 0.5, 0.1, 0.01])
    health = representation_health(z.astype(np.float32), num_slices=64)
    assert health["effective_rank"] == pytest.approx(rankme_numpy(z), rel=1e-4)
    assert health["n"] == 300 and health["dim"] == 8


def test_sigreg_small_for_gaussian_large_for_collapse():
    rng = np.random.default_rng(1)
    gauss = rng.standard_normal((512, 16)).astype(np.float32)
    collapsed = np.outer(rng.standard_normal(512), np.ones(16)).astype(np.float32) * 3 + 5
    good = representation_health(gauss, num_slices=128)
    bad = representation_health(collapsed, num_slices=128)
    assert good["sigreg"] < 0.2 * bad["sigreg"]
    assert good["effective_rank"] > 12 and bad["effective_rank"] < 1.5
    # standardisation removes per-dimension scale and shift
    shifted = representation_health(gauss * 7 + 2, num_slices=128)
    assert shifted["sigreg_standardized"] == pytest.approx(good["sigreg_standardized"], rel=1e-4)
    assert shifted["sigreg"] > 10 * good["sigreg"]
