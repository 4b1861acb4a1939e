"""torch.distributed set-up: torchrun environment, process group, DDP or FSDP wrapping.

Launch with ``torchrun --nproc-per-node N -m eo_jepa train ...`` (or
``python -m torch.distributed.run``): torchrun sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR`` and ``MASTER_PORT``, and :func:`setup` joins the process group (NCCL on
GPUs, gloo on CPU). Without those variables training runs in one process.

Gradient averaging and SIGReg: DDP (and FSDP) average gradients over ranks. The prediction
term is a per-rank mean, so averaging gives the global mean; SIGReg is computed on the
*global* batch on every rank, whose gradient is already exact, so the loss scales its SIGReg
gradient by the world size (``LeJEPALoss(ddp_average=True)``) to cancel the average.

Restarts and rank changes: a worker that torchrun restarted (``--max-restarts``) continues from
the ``last.pt`` this torchrun job wrote (:func:`elastic_resume`), as ``--resume`` would. The
checkpoint holds full (unsharded) state, so it resumes on any number of ranks, DDP or FSDP, as
long as the global batch (``data.batch_size`` x ranks x ``optim.grad_accum``) is kept: then every
step sees the same chips (:class:`~eo_jepa.train.data.EpochBatchSampler` deals the same global
batches to any number of ranks) and :func:`~eo_jepa.train.checkpointing.check_global_batch` refuses anything else.
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from eo_jepa.errors import ConfigError
from eo_jepa.utils.allreduce import sum_over_ranks_grad_summed

log = logging.getLogger(__name__)


@dataclass
class DistEnv:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str | None  # None when not distributed

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def setup(device: str = "auto", backend: str = "auto") -> DistEnv:
    """Join the torchrun process group when ``WORLD_SIZE`` > 1 and pick this process's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if use_cuda and not torch.cuda.is_available():
        raise ConfigError("device='cuda' was requested but no CUDA GPU is visible; use device=cpu or auto.")
    dev = torch.device(f"cuda:{local_rank}") if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(dev)
    chosen: str | None = None
    if int(os.environ.get("TORCHELASTIC_MAX_RESTARTS", "0")) > 0 and os.environ.get(
        "TORCHELASTIC_USE_AGENT_STORE"
    ) == str(True):
        log.warning(
            "torchrun --max-restarts with the rendezvous store shared with the workers: restarted "
            "workers would read the previous attempt's addresses and fail to connect; export "
            "TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 before torchrun."
        )
    if world > 1:
        chosen = ("nccl" if use_cuda else "gloo") if backend == "auto" else backend
        if chosen == "nccl" and not use_cuda:
            raise ConfigError("dist.backend='nccl' needs GPUs; use dist.backend=gloo (or auto) on CPU.")
        if not dist.is_initialized():
            dist.init_process_group(
                backend=chosen, rank=rank, world_size=world, timeout=_dt.timedelta(minutes=30)
            )
        log.info("Joined process group: rank %d of %d (%s, %s).", rank, world, chosen, dev)
    return DistEnv(rank, world, local_rank, dev, chosen)


def wrap(model: nn.Module, env: DistEnv, strategy: str = "ddp") -> nn.Module:
    """DDP or FSDP (per transformer block, then the whole model) around ``model``; identity on one process."""
    if not env.distributed:
        return model
    if strategy == "fsdp":
        from torch.distributed.fsdp import fully_shard

        blocks = getattr(getattr(getattr(model, "encoder", None), "backbone", None), "blocks", None)
        for block in blocks or ():
            fully_shard(block)
        fully_shard(model)
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP

    ids = [env.device.index] if env.device.type == "cuda" else None
    return DDP(model, device_ids=ids, broadcast_buffers=True)


class CpuSyncBatchNorm(nn.BatchNorm1d):
    """BatchNorm1d whose batch statistics cover all ranks, for CPU/gloo (``nn.SyncBatchNorm`` is GPU-only).

    Two differentiable all-reduces (sum and count, then the centred sum of squares) give the
    global mean and biased variance; the backward sums the gradients over ranks, so with DDP's averaging the gradients equal those of one process
    on the concatenated batch. Outside training or a process group it is a plain BatchNorm1d.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (
            self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        ):
            return super().forward(x)
        all_reduce = sum_over_ranks_grad_summed
        n_local = torch.tensor([float(x.shape[0])], dtype=x.dtype, device=x.device)
        summed = all_reduce(torch.cat([x.sum(0), n_local]))
        n = summed[-1]
        mean = summed[:-1] / n
        var = all_reduce(((x - mean) ** 2).sum(0)) / n
        if self.track_running_stats and self.running_mean is not None and self.running_var is not None:
            with torch.no_grad():
                m = self.momentum if self.momentum is not None else 0.1
                self.running_mean.mul_(1 - m).add_(m * mean.detach())
                self.running_var.mul_(1 - m).add_(m * var.detach() * n / (n - 1).clamp_min(1))
                self.num_batches_tracked.add_(1)
        y = (x - mean) / torch.sqrt(var + self.eps)
        return y * self.weight + self.bias if self.affine else y


def sync_batchnorm(model: nn.Module, env: DistEnv) -> nn.Module:
    """Make BatchNorm statistics global across ranks (nn.SyncBatchNorm on GPU, CpuSyncBatchNorm on CPU)."""
    if not env.distributed:
        return model
    if env.device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if type(child) is nn.BatchNorm1d:
                new = CpuSyncBatchNorm(
                    child.num_features, child.eps, child.momentum, child.affine, child.track_running_stats
                )
                new.load_state_dict(child.state_dict())
                setattr(module, name, new)
    return model


def barrier(env: DistEnv) -> None:
    if env.distributed and dist.is_initialized():
        dist.barrier()


def teardown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def elastic_resume(ckpt_path: Path) -> bool:
    """True in a worker that torchrun (re)started after this torchrun job wrote ``ckpt_path``: the group
    continues from it. (Not ``TORCHELASTIC_RESTART_COUNT``: an agent that restarts its workers because
    another node's failed does not count a restart.) A checkpoint older than the torchrun agent
    belongs to an earlier job and is left to the usual "pass --resume" refusal."""
    if "TORCHELASTIC_RUN_ID" not in os.environ or not ckpt_path.is_file():
        return False
    import psutil

    try:
        agent_started = psutil.Process(os.getppid()).create_time()
    except psutil.Error:
        return False
    if ckpt_path.stat().st_mtime < agent_started:
        return False
    log.warning("Restarted by torchrun: resuming from %s.", ckpt_path)
    return True
