"""Training on several "nodes": torchrun as two agents on loopback (c10d rendezvous, one gloo process
each), an elastic restart after SIGKILL of one rank, and checkpoints resumed on another number of
ranks (DDP and FSDP) with the global batch kept."""

from __future__ import annotations

import json
import math
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from test_train import _assert_same_step, _env, _free_port, _initial_state, _losses, _train_cmd
from train_data import make_chip_store

from eo_jepa.cli import main
from eo_jepa.train.checkpointing import DIGESTS, load_state

pytestmark = [pytest.mark.timeout(300), pytest.mark.e2e]

STEPS, MID = 8, 4  # runs of 8 steps; step_0000004.pt is where rank-changing resumes start
RUN = [f"max_steps={STEPS}", "checkpoint.every=2", f"checkpoint.keep_every={MID}", "log.tensorboard=false"]
GLOBAL_BATCH = 16


def _cluster_env() -> dict[str, str]:
    # a fresh bootstrap store per rendezvous round: with torchrun's shared store, restarted workers
    # read the previous attempt's gloo addresses (README, "Training on several nodes")
    return {**_env(), "GLOO_SOCKET_IFNAME": "lo", "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"}


def _args(store: Path, out: Path, name: str, per_rank: int, *extra: str) -> list[str]:
    """``eo-jepa train`` arguments (after ``-m eo_jepa``) of the shared tiny config."""
    return _train_cmd(store, out, name, *RUN, f"data.batch_size={per_rank}", *extra)[3:]


def _single(store: Path, out: Path, name: str, *extra: str, resume: bool = False) -> None:
    _run_ok([sys.executable, "-m", "eo_jepa", *_args(store, out, name, GLOBAL_BATCH, *extra)], resume)


def _run_ok(cmd: list[str], resume: bool) -> None:
    proc = subprocess.run(
        [*cmd, *(["--resume"] if resume else [])],
        env=_cluster_env(),
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]


def _torchrun(store: Path, out: Path, name: str, *extra: str, resume: bool = False, nproc: int = 2) -> None:
    """One agent, ``nproc`` processes (a single node)."""
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc), "--master-addr", "127.0.0.1",
        "--master-port", str(_free_port()), "-m", "eo_jepa", *_args(store, out, name, GLOBAL_BATCH // nproc, *extra),
    ]  # fmt: skip
    _run_ok(cmd, resume)


def _two_nodes(store: Path, out: Path, name: str, *extra: str, restarts: int = 0) -> list[subprocess.Popen]:
    """Two torchrun agents ("nodes" 0 and 1) meeting at a c10d rendezvous on loopback, one process each."""
    port = _free_port()
    procs = []
    for node in (0, 1):
        cmd = [
            sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node-rank", str(node),
            "--nproc-per-node", "1", "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}",
            "--rdzv-id", name, "--rdzv-conf", f"is_host={int(node == 0)}", "--max-restarts", str(restarts),
            "--monitor-interval", "0.1", "-m", "eo_jepa", *_args(store, out, name, GLOBAL_BATCH // 2, *extra),
        ]  # fmt: skip
        log = open(out / f"{name}.node{node}.log", "w")  # noqa: SIM115 - closed with the process
        procs.append(subprocess.Popen(cmd, env=_cluster_env(), stdout=log, stderr=subprocess.STDOUT))
        log.close()
    return procs


def _wait(procs: list[subprocess.Popen], out: Path, name: str) -> None:
    for proc in procs:
        try:
            proc.wait(timeout=240)
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            raise
    logs = "\n".join((out / f"{name}.node{n}.log").read_text()[-2000:] for n in (0, 1))
    assert [p.returncode for p in procs] == [0, 0], logs


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    return make_chip_store(tmp_path_factory.mktemp("chips") / "store")


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("runs")


@pytest.fixture(scope="module")
def single(store, runs) -> Path:
    """The reference: one process on the whole batch of 16."""
    _single(store, runs, "single")
    return runs / "single"


@pytest.fixture(scope="module")
def two_nodes(store, runs) -> Path:
    """Two torchrun "nodes" on loopback, DDP over gloo, 8 chips each: the same global batch."""
    _wait(_two_nodes(store, runs, "nodes"), runs, "nodes")
    return runs / "nodes"


def test_two_nodes_step_equals_single_process_step_on_the_whole_batch(store, single, two_nodes):
    init = _initial_state(store)
    for ckpt in (f"step_{MID:07d}.pt", "last.pt"):
        a = load_state(single / "checkpoints" / ckpt)
        b = load_state(two_nodes / "checkpoints" / ckpt)
        assert a["step"] == b["step"] and b["world_size"] == 2
        _assert_same_step(a, b, init)
    for ra, rb in zip(_rows(single), _rows(two_nodes), strict=True):
        assert math.isclose(ra["sigreg"], rb["sigreg"], rel_tol=1e-4)  # SIGReg of the global batch


def _rows(run: Path) -> list[dict]:
    return [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]


def test_elastic_restart_after_a_killed_rank_resumes_from_the_last_checkpoint(store, runs, two_nodes):
    """torchrun --max-restarts 1: SIGKILL of one rank mid-run, the group restarts and continues from
    last.pt; the losses are those of the uninterrupted run, bit for bit."""
    import psutil

    name = "elastic"
    procs = _two_nodes(store, runs, name, restarts=1)
    ckpt = runs / name / "checkpoints" / "last.pt"
    try:
        deadline = time.monotonic() + 240
        while not ckpt.exists() and all(p.poll() is None for p in procs) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert ckpt.exists(), "no checkpoint was written"
        killed_at = load_state(ckpt)["step"]
        workers = [c for c in psutil.Process(procs[1].pid).children() if "eo_jepa" in " ".join(c.cmdline())]
        assert len(workers) == 1, workers
        workers[0].send_signal(signal.SIGKILL)
    finally:
        _wait(procs, runs, name)
    assert 0 < killed_at < STEPS
    logs = "".join((runs / f"{name}.node{n}.log").read_text() for n in (0, 1))
    assert "Restarted by torchrun: resuming from" in logs
    assert _losses(runs / name) == _losses(two_nodes)  # exact float equality, every step
    assert load_state(ckpt)["step"] == STEPS


def _resume_from(ckpt: Path, out: Path, name: str) -> Path:
    """A new run folder holding only ``ckpt`` as its last.pt (a run stopped at step MID), with the
    digests record that lets the resume verify it (digests are matched on content, not on name)."""
    run = out / name
    (run / "checkpoints").mkdir(parents=True)
    shutil.copy(ckpt, run / "checkpoints" / "last.pt")
    shutil.copy(ckpt.parent / DIGESTS, run / "checkpoints" / DIGESTS)
    return run


def _assert_close_runs(a: Path, b: Path, rel: float = 1e-4) -> None:
    """Same final weights (up to float reordering) and the same losses after the resume point."""
    sa, sb = load_state(a / "checkpoints" / "last.pt"), load_state(b / "checkpoints" / "last.pt")
    assert sa["step"] == sb["step"] == STEPS
    keys = [k for k, v in sa["model"].items() if v.is_floating_point()]
    pa = torch.cat([sa["model"][k].flatten() for k in keys])
    pb = torch.cat([sb["model"][k].flatten() for k in keys])
    assert float((pa - pb).norm() / pa.norm()) < rel
    la, lb = _rows(a)[MID:], _rows(b)[-(STEPS - MID) :]
    assert [r["step"] for r in lb] == list(range(MID + 1, STEPS + 1))
    for ra, rb in zip(la, lb, strict=True):
        assert math.isclose(ra["sigreg"], rb["sigreg"], rel_tol=1e-3), (ra, rb)


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_checkpoint_of_n_ranks_resumes_on_m_ranks_with_the_global_batch_kept(
    store, runs, single, two_nodes, strategy
):
    # 2 ranks -> 1: the two-node DDP run's step-4 checkpoint, or an FSDP run's (its sharded state gathered)
    if strategy == "ddp":
        written_by_two = two_nodes / "checkpoints" / f"step_{MID:07d}.pt"
    else:
        _torchrun(store, runs, "fsdp2", "dist.strategy=fsdp", f"max_steps={MID}")
        written_by_two = runs / "fsdp2" / "checkpoints" / "last.pt"
    assert load_state(written_by_two)["world_size"] == 2 and load_state(written_by_two)["step"] == MID
    on_one = _resume_from(written_by_two, runs, f"{strategy}_2to1")
    _single(store, runs, on_one.name, resume=True)
    _assert_close_runs(single, on_one)
    # 1 rank -> 2 (FSDP: full state loaded into each rank's shards)
    on_two = _resume_from(single / "checkpoints" / f"step_{MID:07d}.pt", runs, f"{strategy}_1to2")
    _torchrun(store, runs, on_two.name, f"dist.strategy={strategy}", resume=True)
    _assert_close_runs(single, on_two)
    assert load_state(on_two / "checkpoints" / "last.pt")["world_size"] == 2


def test_resume_on_other_ranks_with_another_global_batch_is_refused(store, two_nodes, tmp_path, capsys):
    """The two-node checkpoint (2 x 8 chips) on one process with 8 chips: one sentence, exit 2."""
    ckpt = two_nodes / "checkpoints" / f"step_{MID:07d}.pt"
    run = _resume_from(ckpt, tmp_path, "changed")
    with pytest.raises(SystemExit) as exc:
        main([*_args(store, tmp_path, run.name, 8), "--resume"])
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2 and "\n" not in err, err
    assert "global batch of 16 (2 process(es) x data.batch_size=8 x optim.grad_accum=1)" in err
    assert "this run has 8 (1 x 8 x 1)" in err and "data.batch_size=16" in err
    assert load_state(run / "checkpoints" / "last.pt")["step"] == MID  # nothing was trained or written
