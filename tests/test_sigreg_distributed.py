"""Two real processes on gloo (loopback) give the single-process full-batch SIGReg and LeJEPA step."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from eo_jepa.ssl import LeJEPALoss, SIGReg

WORLD = 2
V, N, D, K = 2, 40, 6, 64
ROWS = [slice(0, 17), slice(17, 40)]  # unequal local batches: N must be the global N
B, DIN, P = 8, 5, 16  # DDP check: equal local batches of B / WORLD
LAM = 0.5
START_STEP = 3


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _embeddings() -> torch.Tensor:
    return torch.randn(V, N, D, generator=torch.Generator().manual_seed(0)) * 1.3 + 0.2


def _views() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return torch.randn(2, B, DIN, generator=gen), torch.randn(3, B, DIN, generator=gen)


def _model() -> torch.nn.Linear:
    torch.manual_seed(2)
    return torch.nn.Linear(DIN, P)


def _lejepa_step(model: torch.nn.Module, loss_fn: LeJEPALoss, xg: torch.Tensor, xl: torch.Tensor):
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    out = model(torch.cat([xg, xl]))  # one forward through (DDP-wrapped) model for all views
    result = loss_fn(out[: len(xg)], out[len(xg) :])
    result.loss.backward()
    grads = [p.grad.detach().clone() for p in model.parameters()]
    opt.step()
    params = [p.detach().clone() for p in model.parameters()]
    return result.loss.detach(), grads, params


def _worker(rank: int, port: int, out_dir: str) -> None:
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        results: dict[str, object] = {}
        z = _embeddings()[:, ROWS[rank]]
        for impl in ("fused", "reference"):
            module = SIGReg(K, impl=impl)
            module.step.fill_(START_STEP)
            results[f"{impl}_dirs"] = module.directions(D).clone()
            zl = z.clone().requires_grad_()
            value = module(zl)
            value.backward()
            results[f"{impl}_value"] = value.detach()
            results[f"{impl}_grad"] = zl.grad
            results[f"{impl}_step"] = module.step.clone()
        xg, xl = _views()
        local = slice(rank * B // WORLD, (rank + 1) * B // WORLD)
        for flag in (True, False):
            ddp = torch.nn.parallel.DistributedDataParallel(_model())
            loss, grads, params = _lejepa_step(
                ddp, LeJEPALoss(K, lam=LAM, ddp_average=flag), xg[:, local], xl[:, local]
            )
            results[f"ddp{flag}_loss"] = loss
            results[f"ddp{flag}_grads"] = grads
            results[f"ddp{flag}_params"] = params
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict]:
    out = tmp_path_factory.mktemp("dist")
    mp.spawn(_worker, args=(_free_port(), str(out)), nprocs=WORLD, join=True)
    return [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


@pytest.mark.parametrize("impl", ["fused", "reference"])
def test_two_ranks_equal_one_process_on_the_concatenated_batch(ranks, impl):
    single = SIGReg(K, impl=impl)
    single.step.fill_(START_STEP)
    z = _embeddings().requires_grad_()
    want = single(z)
    want.backward()
    for rank, res in enumerate(ranks):
        assert abs(res[f"{impl}_value"].item() - want.item()) / want.item() < 1e-5
        assert _rel(res[f"{impl}_grad"], z.grad[:, ROWS[rank]]) < 1e-5
        assert int(res[f"{impl}_step"]) == START_STEP + 1


def test_ranks_draw_identical_directions(ranks):
    reference = SIGReg(K)
    reference.step.fill_(START_STEP)
    want = reference.directions(D)
    for res in ranks:
        for impl in ("fused", "reference"):
            assert torch.equal(res[f"{impl}_dirs"], want)


def test_local_batch_alone_differs_from_global(ranks):
    """Guards against a reduction that silently does nothing: the local statistic is different."""
    module = SIGReg(K)
    module.step.fill_(START_STEP)
    local_value = module(_embeddings()[:, ROWS[0]]).item()
    assert abs(local_value - ranks[0]["fused_value"].item()) / local_value > 1e-2


def test_ddp_average_compensation_matches_single_process_step(ranks):
    xg, xl = _views()
    model = _model()
    loss, grads, params = _lejepa_step(model, LeJEPALoss(K, lam=LAM), xg, xl)
    # each rank's loss holds its local prediction term; their mean is the full-batch loss
    mean_loss = sum(res["ddpTrue_loss"].item() for res in ranks) / WORLD
    assert abs(mean_loss - loss.item()) / loss.item() < 1e-5
    for res in ranks:
        for got, want in zip(res["ddpTrue_grads"], grads, strict=True):
            assert _rel(got, want) < 1e-5
        for got, want in zip(res["ddpTrue_params"], params, strict=True):
            assert _rel(got, want) < 1e-5
        # without the compensation DDP's averaging shrinks the SIGReg gradient: a different step
        assert max(_rel(g, w) for g, w in zip(res["ddpFalse_grads"], grads, strict=True)) > 1e-3
