"""Projector head of LeJEPA: an MLP with BatchNorm, and the RankMe effective rank."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class Projector(nn.Module):
    """MLP ``Linear → BatchNorm1d → ReLU → … → Linear`` mapping encoder embeddings to SIGReg space.

    Args:
        in_dim: encoder embedding size.
        hidden_dim: width of the hidden layers.
        out_dim: projection size (LeJEPA uses 128 or more; SIGReg is computed here).
        num_layers: number of Linear layers (>= 1); the last one is plain (no norm, no activation).

    Accepts (B, in_dim) or (V, B, in_dim); views are folded into the batch so the BatchNorm
    statistics cover all views, then unfolded again.
    """

    def __init__(self, in_dim: int, hidden_dim: int = 2048, out_dim: int = 128, num_layers: int = 3) -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"Projector num_layers must be at least 1, got {num_layers}.")
        if min(in_dim, hidden_dim, out_dim) < 1:
            raise ValueError(
                f"Projector dimensions must be positive, got in_dim={in_dim}, hidden_dim={hidden_dim}, "
                f"out_dim={out_dim}."
            )
        layers: list[nn.Module] = []
        dim = in_dim
        for _ in range(num_layers - 1):
            layers += [nn.Linear(dim, hidden_dim), nn.BatchNorm1d(hidden_dim), nn.ReLU(inplace=True)]
            dim = hidden_dim
        layers.append(nn.Linear(dim, out_dim))
        self.net = nn.Sequential(*layers)
        self.in_dim, self.hidden_dim, self.out_dim, self.num_layers = in_dim, hidden_dim, out_dim, num_layers

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() not in (2, 3) or x.shape[-1] != self.in_dim:
            raise ValueError(
                f"Projector expects inputs shaped (B, {self.in_dim}) or (V, B, {self.in_dim}), "
                f"got shape {tuple(x.shape)}."
            )
        lead = x.shape[:-1]
        return self.net(x.reshape(-1, self.in_dim)).reshape(*lead, self.out_dim)


@torch.no_grad()
def effective_rank(z: Tensor, eps: float = 1e-12) -> float:
    """RankMe effective rank of embeddings ``z`` (N, D) (Garrido et al., ICML 2023).

    ``exp(H(p))`` with ``p_k = σ_k / Σ σ + eps`` the normalised singular values of ``z`` and H the
    Shannon entropy: D for isotropic embeddings, 1 for embeddings on one line. Computed in float64.
    """
    if z.dim() != 2 or z.shape[0] < 1 or z.shape[1] < 1:
        raise ValueError(f"effective_rank expects embeddings shaped (N, D), got shape {tuple(z.shape)}.")
    s = torch.linalg.svdvals(z.detach().to(torch.float64))
    total = s.sum()
    if not torch.isfinite(total):
        raise ValueError(f"effective_rank got non-finite embeddings of shape {tuple(z.shape)}.")
    if total == 0:
        return 1.0
    p = s / total + eps
    return float(torch.exp(-(p * torch.log(p)).sum()))
