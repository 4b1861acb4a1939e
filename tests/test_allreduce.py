"""The two differentiable sums over ranks (eo_jepa.utils.allreduce), in two real gloo processes,
against autograd on one process that sees every rank's tensor (float64)."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from eo_jepa.utils.allreduce import sum_over_ranks_grad_summed, sum_over_ranks_grad_unchanged

WORLD = 2


def _inputs(rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """This rank's tensor x_r and the weights w_r of its own loss."""
    gen = torch.Generator().manual_seed(10 + rank)
    x, w = torch.randn(2, 5, dtype=torch.float64, generator=gen)
    return x, w


def _worker(rank: int, port: int, out_dir: str) -> None:
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        x, w = _inputs(rank)
        a = x.clone().requires_grad_()
        (sum_over_ranks_grad_unchanged(a).square().sum()).backward()  # the same loss on every rank
        b = x.clone().requires_grad_()
        (w * sum_over_ranks_grad_summed(b).sin()).sum().backward()  # each rank its own loss
        torch.save({"unchanged": a.grad, "summed": b.grad}, Path(out_dir) / f"{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_each_sum_sends_back_the_gradient_its_name_says(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_worker, args=(port, str(tmp_path)), nprocs=WORLD, join=True)
    got = [torch.load(tmp_path / f"{r}.pt", weights_only=True) for r in range(WORLD)]

    xs = [_inputs(r)[0].clone().requires_grad_() for r in range(WORLD)]
    ws = [_inputs(r)[1] for r in range(WORLD)]
    # replicated loss L = ‖Σ_r x_r‖²: rank r's gradient is ∂L/∂x_r, once (not once per rank)
    total = torch.stack(xs).sum(0)
    grads = torch.autograd.grad(total.square().sum(), xs)
    for r in range(WORLD):
        torch.testing.assert_close(got[r]["unchanged"], grads[r], rtol=1e-12, atol=1e-12)
    # per-rank losses L_r = w_r · sin(Σ x): rank r's gradient is ∂(Σ_q L_q)/∂x_r
    total = torch.stack(xs).sum(0)
    grads = torch.autograd.grad(sum((w * total.sin()).sum() for w in ws), xs)
    for r in range(WORLD):
        torch.testing.assert_close(got[r]["summed"], grads[r], rtol=1e-12, atol=1e-12)
