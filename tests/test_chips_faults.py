"""The chip builder on faulty networks and data: no silent success, transient failures retried by --resume."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from shapely.geometry import box, mapping, shape

from eo_jepa.chips import ChipConfig, build_chips
from eo_jepa.config import load_config
from eo_jepa.demo.servers import fault_http_server, range_http_server
from eo_jepa.errors import DataError

REPO = Path(__file__).resolve().parents[1]
DEMO_CONFIG = REPO / "configs" / "chips" / "s2_5band_64_demo.yaml"
FAST_NET = ("stac.timeout_s=1", "stac.retries=0", "stac.backoff_s=0.05")


def cfg(*overrides: str) -> ChipConfig:
    return load_config(ChipConfig, DEMO_CONFIG, list(overrides))


def _write(path: Path, items: list[dict]) -> Path:
    path.write_text(json.dumps({"type": "FeatureCollection", "features": items}))
    return path


def _finished_files(root: Path) -> list[str]:
    return sorted(
        p.name for p in root.iterdir() if p.name in ("dataset.json", "norm_stats.json", "index.parquet")
    )


@pytest.mark.timeout(60)
def test_zero_usable_chips_exits_2_and_leaves_nothing_finished(demo_scenes_tiny, tmp_path):
    """Every band asset is missing on the host (404: bad data, like unsigned or moved hrefs)."""
    empty = tmp_path / "empty"
    empty.mkdir()
    with range_http_server(empty) as url:
        items = _write(tmp_path / "items.json", demo_scenes_tiny.items(url))
        out = tmp_path / "out"
        proc = subprocess.run(
            [sys.executable, "-m", "eo_jepa", "chips", "build", "--aois", str(demo_scenes_tiny.aois_path),
             "--config", str(DEMO_CONFIG), "--out", str(out), "--stac", str(items), *FAST_NET],
            capture_output=True, text=True, timeout=50, cwd=tmp_path,
        )  # fmt: skip
    assert proc.returncode == 2, proc.stdout + proc.stderr
    err = proc.stderr.strip().splitlines()
    assert "Traceback" not in proc.stderr
    assert (
        err[-1].startswith("eo-jepa: error: No usable chip was built")
        and "404" in err[-1]
        and "every candidate" in err[-1]
    )
    assert _finished_files(out) == []


@pytest.mark.timeout(120)
def test_host_down_then_back_resume_equals_uninterrupted(demo_scenes_tiny, tmp_path):
    """Half the scenes live on a host that stops answering: their locations are left for --resume
    (exit 3, counted), and the resumed store equals an uninterrupted build byte for byte."""
    scenes = demo_scenes_tiny
    flag = tmp_path / "down"
    with (
        range_http_server(scenes.cog_dir) as good,
        fault_http_server("switch", root=scenes.cog_dir, down_flag=flag) as flaky,
    ):
        items = scenes.items(good)
        # two dates move to the flaky host and only cover the east half of the tile
        for item in items[2:]:
            geom = shape(item["geometry"])
            minx, miny, maxx, maxy = geom.bounds
            item["geometry"] = mapping(geom.intersection(box((minx + maxx) / 2, miny, maxx, maxy)))
        for item in items[2:]:
            for asset in item["assets"].values():
                asset["href"] = asset["href"].replace(good, flaky)
        path = _write(tmp_path / "items.json", items)

        ref = build_chips(scenes.aois_path, cfg(*FAST_NET), tmp_path / "ref", stac=str(path))
        assert ref.transient == 0

        flag.touch()
        t0 = time.perf_counter()
        run = [sys.executable, "-m", "eo_jepa", "chips", "build", "--aois", str(scenes.aois_path),
               "--config", str(DEMO_CONFIG), "--out", str(tmp_path / "out"), "--stac", str(path), *FAST_NET]  # fmt: skip
        first = subprocess.run(run, capture_output=True, text=True, timeout=100, cwd=tmp_path)
        elapsed = time.perf_counter() - t0
        assert first.returncode == 3, first.stdout + first.stderr
        assert "failed transiently" in first.stdout and "--resume" in first.stdout
        assert first.stderr.count("are failing") == 1  # the host is named once, not once per task
        assert flaky in first.stderr
        meta = json.loads((tmp_path / "out" / "dataset.json").read_text())
        assert 0 < meta["counts"]["failed_transiently"] < meta["counts"]["planned"]
        info = subprocess.run([sys.executable, "-m", "eo_jepa", "chips", "info", str(tmp_path / "out")],
                              capture_output=True, text=True, timeout=60, cwd=tmp_path)  # fmt: skip
        assert f"failed transiently (network): {meta['counts']['failed_transiently']}" in info.stdout
        assert meta["counts"]["ok"] < ref.ok
        assert elapsed < 60  # a dead host costs seconds, not ~160 s per item

        flag.unlink()
        second = subprocess.run([*run, "--resume"], capture_output=True, text=True, timeout=100, cwd=tmp_path)
        assert second.returncode == 0, second.stdout + second.stderr

    a, b = _load(tmp_path / "ref"), _load(tmp_path / "out")
    assert np.array_equal(a["pixels"], b["pixels"]) and np.array_equal(a["valid"], b["valid"])
    assert a["index"].equals(b["index"]) and a["stats"] == b["stats"]
    assert a["meta"]["counts"] == b["meta"]["counts"]


def _load(root: Path) -> dict:
    import geopandas as gpd
    import zarr

    group = zarr.open_group(str(root / "chips.zarr"), mode="r")
    return {
        "pixels": group["pixels"][:],
        "valid": group["valid"][:],
        "index": gpd.read_parquet(root / "index.parquet"),
        "stats": json.loads((root / "norm_stats.json").read_text()),
        "meta": json.loads((root / "dataset.json").read_text()),
    }


def test_finalize_refuses_zero_usable_chips_in_the_library_too(demo_scenes_tiny, tmp_path):
    every_class = "mask_classes=[1,2,3,4,5,6,7,8,9,10,11]"  # every pixel masked: every chip rejected
    with pytest.raises(DataError, match=r"No usable chip .*x cloud_fraction > max_cloud_fraction.*loosen"):
        build_chips(demo_scenes_tiny.aois_path, cfg(every_class), tmp_path / "out",
                    stac=str(demo_scenes_tiny.items_path))  # fmt: skip
    assert _finished_files(tmp_path / "out") == []


def test_resume_removes_temporary_files_of_an_interrupted_build(demo_scenes_tiny, reference_chips, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(reference_chips[0], out)  # a finished build of these inputs, ours to change
    before = (out / "index.parquet").read_bytes()
    chunk_dir = out / "chips.zarr" / "pixels"  # chunks c.<row>.0.0.0, written via .c.<row>....partial
    leftovers = [
        out / ".build" / "partials" / ".task-000001.json.k2j3h4.tmp",
        chunk_dir / ".c.3.0.0.0.4242.140000.partial",
        out / ".index.parquet.x8y9z0.tmp",
    ]
    for path in leftovers:
        path.write_bytes(b"half-written")
    build_chips(demo_scenes_tiny.aois_path, cfg(), out, stac=str(demo_scenes_tiny.items_path), resume=True)
    assert [p for p in leftovers if p.exists()] == []
    assert (out / "index.parquet").read_bytes() == before


def _descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.add(child)
            todo.append(child)
    return out


def _running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.timeout(90)
def test_workers_exit_when_the_build_is_killed(demo_scenes_tiny, tmp_path):
    """SIGKILL the builder while its two workers wait on a COG host that stopped answering."""
    import os
    import signal

    flag = tmp_path / "down"
    flag.touch()
    with fault_http_server("switch", root=demo_scenes_tiny.cog_dir, down_flag=flag) as url:
        items = _write(tmp_path / "items.json", demo_scenes_tiny.items(url))
        proc = subprocess.Popen(
            [sys.executable, "-m", "eo_jepa", "chips", "build", "--aois", str(demo_scenes_tiny.aois_path),
             "--config", str(DEMO_CONFIG), "--out", str(tmp_path / "out"), "--stac", str(items), "-j", "2",
             "stac.timeout_s=60", "task_size=1"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp_path,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 45
            workers: set[int] = set()
            while time.monotonic() < deadline and len(workers) < 3:  # fork server + 2 workers
                time.sleep(0.2)
                workers = _descendants(proc.pid)
            assert len(workers) >= 3, workers
            time.sleep(1.0)  # the workers are now blocked on the silent host
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline and any(_running(p) for p in workers):
                time.sleep(0.2)
            alive = [p for p in workers if _running(p)]
            said = {p: Path(f"/proc/{p}/cmdline").read_bytes()[:200] for p in alive}
            for pid in alive:  # do not leak them whatever the outcome
                os.kill(pid, signal.SIGKILL)
            assert alive == [], said
        finally:
            if proc.poll() is None:
                proc.kill()


@pytest.mark.timeout(90)
def test_all_chips_transient_then_resume_in_the_same_process(demo_scenes_tiny, tmp_path):
    """Every scene on a host that stopped answering: no usable chip (exit-2 error naming the host and
    --resume), nothing finished; once the host is back, --resume in the same process builds the store."""
    flag = tmp_path / "down"
    flag.touch()
    with fault_http_server("switch", root=demo_scenes_tiny.cog_dir, down_flag=flag) as url:
        items = _write(tmp_path / "items.json", demo_scenes_tiny.items(url))
        args = (demo_scenes_tiny.aois_path, cfg(*FAST_NET), tmp_path / "out")
        with pytest.raises(
            DataError, match=r"No usable chip .*failed transiently.*rerun with --resume"
        ) as err:
            build_chips(*args, stac=str(items))
        assert url.split("//")[1] in str(err.value)
        assert _finished_files(tmp_path / "out") == []
        flag.unlink()
        report = build_chips(*args, stac=str(items), resume=True)
    assert report.ok > 0 and report.transient == 0
