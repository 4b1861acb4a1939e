"""Chip builds on a real Dask cluster: the ``dask scheduler`` and ``dask worker`` CLIs as separate
processes on loopback TCP, driven by ``eo-jepa chips build --scheduler tcp://...``; a worker killed
with SIGKILL mid-build, and a scheduler lost mid-build then ``--resume`` on a new cluster."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from test_chips_build import DEMO_CONFIG, assert_same_store

from eo_jepa.utils.proc import stop_process

pytestmark = pytest.mark.timeout(180)

BIN = Path(sys.executable).parent
UMASK = 0o002  # a group-shared store: workers on other accounts of the group can read and write it
TASKS = ["task_size=1"]  # 20 tasks: a kill lands mid-build


@dataclass
class Cluster:
    address: str
    scheduler: subprocess.Popen
    workers: list[subprocess.Popen]


def _env() -> dict[str, str]:
    return {**os.environ, "EO_JEPA_NO_PROGRESS": "1", "OMP_NUM_THREADS": "1"}


def _with_umask() -> None:
    os.umask(UMASK)


@contextlib.contextmanager
def dask_cluster(folder: Path, n_workers: int = 2) -> Iterator[Cluster]:
    """``dask scheduler`` + ``n_workers`` x ``dask worker --nthreads 1`` (no nanny: a killed worker
    stays dead), each its own process, working in a folder of their own (not the driver's)."""
    from distributed import Client

    folder.mkdir(parents=True)
    info = folder / "scheduler.json"
    logs = [open(folder / f"{n}.log", "wb") for n in ["scheduler"] + [f"w{k}" for k in range(n_workers)]]  # noqa: SIM115
    common = dict(cwd=folder, env=_env(), stdout=subprocess.DEVNULL, preexec_fn=_with_umask)
    sched = subprocess.Popen(
        [
            BIN / "dask",
            "scheduler",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--no-dashboard",
            "--scheduler-file",
            info,
        ],
        stderr=logs[0],
        **common,
    )
    workers: list[subprocess.Popen] = []
    try:
        deadline = time.monotonic() + 60
        while not info.is_file() and sched.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert info.is_file(), (folder / "scheduler.log").read_text()[-2000:]
        address = json.loads(info.read_text())["address"]
        assert address.startswith("tcp://127.0.0.1:")
        for k in range(n_workers):
            workers.append(
                subprocess.Popen(
                    [
                        BIN / "dask",
                        "worker",
                        address,
                        "--nthreads",
                        "1",
                        "--no-nanny",
                        "--no-dashboard",
                        "--host",
                        "127.0.0.1",
                        "--name",
                        f"w{k}",
                        "--death-timeout",
                        "60",
                    ],
                    stderr=logs[k + 1],
                    **common,
                )
            )
        with Client(address, timeout=30) as client:
            client.wait_for_workers(n_workers, timeout=60)
        yield Cluster(address, sched, workers)
    finally:
        for proc in [*workers, sched]:
            stop_process(proc, timeout=20)
        for log in logs:
            log.close()


def _build_cmd(scenes, out: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "eo_jepa", "-q", "chips", "build", "--aois", str(scenes.aois_path),
            "--config", str(DEMO_CONFIG), "--out", out, "--stac", str(scenes.items_path), *TASKS, *extra]  # fmt: skip


def _start_build(scenes, cwd: Path, *extra: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    """The driver in its own folder with a relative --out: workers must be sent an absolute path."""
    cwd.mkdir(exist_ok=True)
    return subprocess.Popen(
        _build_cmd(scenes, "store", *extra),
        cwd=cwd,
        env={**_env(), **(env or {})},
        preexec_fn=_with_umask,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _when_tasks_done(out: Path, proc: subprocess.Popen, n: int = 1) -> int:
    """Wait until ``n`` task journal entries exist (bounded); how many there are then."""
    partials = out / ".build" / "partials"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if partials.is_dir() and (done := len(list(partials.glob("task-*.json")))) >= n:
            return done
        time.sleep(0.002)
    raise AssertionError(f"no task finished in time: {proc.communicate(timeout=30)}")


@pytest.fixture(scope="module")
def local_build(reference_chips) -> Path:
    """The reference: the same inputs built locally by one worker (the session's build, conftest.py)."""
    return reference_chips[0]


def _modes(root: Path) -> set[int]:
    return {stat.S_IMODE(p.stat().st_mode) for p in root.rglob("*") if p.is_file()}


def test_cli_build_on_scheduler_and_two_worker_processes_equals_local(
    demo_scenes_tiny, local_build, tmp_path
):
    with dask_cluster(tmp_path / "cluster") as cluster:
        proc = _start_build(demo_scenes_tiny, tmp_path / "driver", "--scheduler", cluster.address)
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err[-3000:]
        assert all(w.poll() is None for w in cluster.workers)
    store = tmp_path / "driver" / "store"
    assert "20 tasks run" in out
    assert not (
        tmp_path / "cluster" / "store"
    ).exists()  # written where the driver said, not in the workers' folder
    assert_same_store(local_build, store)
    # written by three processes, every file is readable (and writable) per the shared umask
    assert _modes(store) == {0o666 & ~UMASK}


def test_worker_killed_mid_build_completes_identically(demo_scenes_tiny, local_build, tmp_path):
    with dask_cluster(tmp_path / "cluster") as cluster:
        proc = _start_build(demo_scenes_tiny, tmp_path / "driver", "--scheduler", cluster.address)
        store = tmp_path / "driver" / "store"
        done = _when_tasks_done(store, proc)
        victim = cluster.workers[0]
        victim.send_signal(signal.SIGKILL)
        assert victim.wait(timeout=30) == -signal.SIGKILL
        assert done < 20 and not (store / "dataset.json").exists()  # killed mid-build
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err[-3000:]
        assert cluster.workers[1].poll() is None  # the survivor finished the build
    assert_same_store(local_build, store)


def test_scheduler_lost_mid_build_stops_in_one_sentence_and_resume_finishes(
    demo_scenes_tiny, local_build, tmp_path
):
    with dask_cluster(tmp_path / "first") as cluster:
        proc = _start_build(demo_scenes_tiny, tmp_path / "driver", "--scheduler", cluster.address)
        store = tmp_path / "driver" / "store"
        _when_tasks_done(store, proc)
        cluster.scheduler.send_signal(signal.SIGKILL)
        out, err = proc.communicate(timeout=120)
    assert proc.returncode == 2, err[-3000:]
    assert err.startswith(f"eo-jepa: error: The Dask scheduler at {cluster.address} was lost mid-build")
    assert "--resume" in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (store / "dataset.json").exists()
    done = len(list((store / ".build" / "partials").glob("task-*.json")))
    assert 1 <= done < 20
    with dask_cluster(tmp_path / "second") as cluster:
        proc = _start_build(demo_scenes_tiny, tmp_path / "driver", "--scheduler", cluster.address, "--resume")
        out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-3000:]
    assert f"{done} already done" in out
    assert_same_store(local_build, store)


def test_unreachable_scheduler_is_one_sentence(demo_scenes_tiny, tmp_path):
    from eo_jepa.demo.servers import free_port

    address = f"tcp://127.0.0.1:{free_port()}"  # nothing listens there
    proc = _start_build(
        demo_scenes_tiny,
        tmp_path,
        "--scheduler",
        address,
        env={"DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT": "2s"},
    )
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2, err[-3000:]
    assert err.startswith(f"eo-jepa: error: Could not connect to the Dask scheduler at {address!r}")
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "store" / "dataset.json").exists()
