"""Differentiable sums over ``torch.distributed`` ranks, named by what their backward pass does.

Both sum a tensor over ranks in the forward pass; they differ in the gradient they send back, and
which one is right depends on who uses the sum:

- :func:`sum_over_ranks_grad_unchanged` when every rank computes the *same* (replicated) loss from
  the summed tensor, as SIGReg does with the global batch's characteristic function: the gradient
  of that loss with respect to this rank's contribution is the incoming gradient itself.
- :func:`sum_over_ranks_grad_summed` when each rank computes its *own* loss from the sum, as a
  batch norm over the global batch does: every rank's loss depends on this rank's contribution, so
  the incoming gradients are summed over ranks too.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor


def _all_reduce_sum(x: Tensor) -> Tensor:
    out = x.clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out


class _SumGradUnchanged(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # type: ignore[override]
        return _all_reduce_sum(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # type: ignore[override]
        return grad


class _SumGradSummed(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # type: ignore[override]
        return _all_reduce_sum(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # type: ignore[override]
        return _all_reduce_sum(grad)


def sum_over_ranks_grad_unchanged(x: Tensor) -> Tensor:
    """Sum of ``x`` over ranks; the gradient passes through unchanged (a replicated loss).

    Summing the incoming gradients over ranks instead, as ``torch.distributed.nn.all_reduce`` does,
    would multiply a replicated loss's gradient by the world size.
    """
    return _SumGradUnchanged.apply(x)


def sum_over_ranks_grad_summed(x: Tensor) -> Tensor:
    """Sum of ``x`` over ranks; the incoming gradients are summed over ranks too (per-rank losses
    that all read the sum)."""
    return _SumGradSummed.apply(x)
