"""Representation health of embeddings: effective rank (RankMe) and the SIGReg statistic.

RankMe (Garrido et al., 2023) is the exponential of the entropy of the normalised singular
values: close to the dimension for well-spread embeddings, near 1 for collapse. It is reported
on the embeddings as they are (the paper's definition) and centred (each dimension's mean
removed first): a large common offset, such as the bias of a final LayerNorm, takes one singular
value of its own and lowers the un-centred rank without saying anything about how many
directions the samples vary in. The SIGReg statistic (LeJEPA's sliced Epps–Pulley test against
N(0, 1)) is small for embeddings whose 1-D projections look standard Gaussian; it is reported on
the embeddings as they are and after per-dimension standardisation (which removes scale and
shift and keeps the shape of the distribution, so low rank still shows). Both reuse
:mod:`eo_jepa.ssl`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from eo_jepa.ssl import SIGReg, effective_rank


@torch.no_grad()
def rankme(z: torch.Tensor | np.ndarray, *, center: bool = False) -> float:
    """RankMe effective rank of (N, D) embeddings, in float64; ``center`` removes each dimension's mean."""
    x = torch.as_tensor(np.asarray(z) if not isinstance(z, torch.Tensor) else z).detach().to(torch.float64)
    if center and x.dim() == 2:
        x = x - x.mean(0, keepdim=True)
    return float(effective_rank(x))


@torch.no_grad()
def sigreg_standardized(z: torch.Tensor | np.ndarray, *, num_slices: int = 1024) -> float:
    """SIGReg statistic of (N, D) embeddings after per-dimension standardisation (fixed directions).

    About 0.6 for i.i.d. Gaussian embeddings of any N with the default grid (a little below
    :func:`eo_jepa.ssl.expected_gaussian_value`, as mean and std are estimated from the sample);
    grows with N when the embeddings are low-rank or non-Gaussian.
    """
    x = torch.as_tensor(np.asarray(z) if not isinstance(z, torch.Tensor) else z).detach().float()
    # eval: fixed directions, the step does not advance; never all-reduced (one process's data)
    sigreg = SIGReg(num_slices=num_slices, distributed=False).eval().to(x.device)
    return float(sigreg((x - x.mean(0)) / x.std(0).clamp(min=1e-6)))


@torch.no_grad()
def representation_health(features: np.ndarray, *, num_slices: int = 1024) -> dict[str, Any]:
    """``{"n", "dim", "effective_rank", "effective_rank_centered", "sigreg", "sigreg_standardized"}``
    of (N, D) features."""
    z = torch.as_tensor(np.asarray(features, dtype=np.float32))
    sigreg = SIGReg(num_slices=num_slices, distributed=False).eval()
    return {
        "n": int(z.shape[0]),
        "dim": int(z.shape[1]),
        "effective_rank": rankme(z),
        "effective_rank_centered": rankme(z, center=True),
        "sigreg": float(sigreg(z)),
        "sigreg_standardized": sigreg_standardized(z, num_slices=num_slices),
    }
