"""Every STAC wait is bounded: servers on loopback that never answer, drip, or ask to wait an hour."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from shapely.geometry import box, mapping

from eo_jepa.demo.servers import fault_http_server
from eo_jepa.errors import StacError
from eo_jepa.stac import search_items


def _search(url: str, **kwargs):
    return search_items(
        url,
        collection="sentinel-2-l2a",
        intersects=mapping(box(0, 0, 1, 1)),
        start="2023-01-01",
        end="2023-01-02",
        **kwargs,
    )


@pytest.mark.timeout(40)
def test_server_that_never_answers_fails_within_the_timeout():
    with fault_http_server("blackhole") as url:
        t0 = time.perf_counter()
        with pytest.raises(StacError, match=r"unreachable or failed \(.*within 0\.5 s"):
            _search(url, timeout_s=0.5, retries=1, backoff_s=0.05)
        elapsed = time.perf_counter() - t0
    assert elapsed < 0.5 * 2 + 8  # timeout x (retries + 1), with margin for a loaded machine


@pytest.mark.timeout(40)
def test_server_dripping_bytes_cannot_stretch_a_request():
    """A byte every 0.2 s never trips a 1.5 s read timeout: only the per-request deadline ends it."""
    with fault_http_server("drip", drip_s=0.2) as url:
        t0 = time.perf_counter()
        with pytest.raises(StacError, match=r"within 1\.5 s"):
            _search(url, timeout_s=1.5, retries=1, backoff_s=0.05)
        elapsed = time.perf_counter() - t0
    assert 1.5 * 2 <= elapsed < 1.5 * 2 + 8


@pytest.mark.timeout(40)
def test_retry_after_is_capped_and_said(caplog):
    with fault_http_server("retry-after", retry_after=3600) as url:
        t0 = time.perf_counter()
        with caplog.at_level(logging.WARNING, logger="eo_jepa.stac"), pytest.raises(StacError, match="503"):
            _search(url, timeout_s=5, retries=2, backoff_s=0.05, max_retry_after_s=0.5)
        elapsed = time.perf_counter() - t0
    assert 2 * 0.5 <= elapsed < 2 * 0.5 + 8
    waits = [r.getMessage() for r in caplog.records if "Retry-After 3600" in r.getMessage()]
    assert len(waits) == 2, waits  # one line per wait, saying what is waited for
    assert all("stac.max_retry_after_s" in w for w in waits)


@pytest.mark.timeout(60)
def test_chips_build_against_a_dead_api_exits_2_within_bound(tmp_path, demo_scenes_tiny):
    with fault_http_server("blackhole") as url:
        t0 = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-m", "eo_jepa", "chips", "build", "--aois", str(demo_scenes_tiny.aois_path),
             "--config", str(Path(__file__).resolve().parents[1] / "configs/chips/s2_5band_64_demo.yaml"), "--out", str(tmp_path / "out"), "--stac", url,
             "stac.timeout_s=0.5", "stac.retries=1", "stac.backoff_s=0.05"],
            capture_output=True, text=True, timeout=50, cwd=tmp_path, env={**os.environ, "EO_JEPA_NO_PROGRESS": "1"},
        )  # fmt: skip
        elapsed = time.perf_counter() - t0
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert url in proc.stderr and "0.5 s" in proc.stderr
    assert elapsed < 30  # interpreter start-up + 2 x 0.5 s
    assert not (tmp_path / "out" / "dataset.json").exists()
