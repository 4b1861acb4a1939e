"""Representation health of embeddings: effective rank (RankMe) and the SIGReg statistic.

RankMe (Garrido et al., 2023) is the exponential of the entropy of the normalised singular
values: close to the dimension for well-spread embeddings, near 1 for collapse. The SIGReg
statistic (LeJEPA's sliced Epps–Pulley test against N(0, 1)) is small for embeddings whose 1-D
projections look standard Gaussian; it is reported on the embeddings as they are and after
per-dimension standardisation (which removes scale and keeps the shape of the distribution).
Both reuse :mod:`eo_jepa.ssl`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


@torch.no_grad()
def representation_health(features: np.ndarray, *, num_slices: int = 1024) -> dict[str, Any]:
    """``{"n", "dim", "effective_rank", "sigreg", "sigreg_standardized"}`` of (N, D) features."""
    from eo_jepa.ssl import SIGReg, effective_rank

    z = torch.as_tensor(np.asarray(features, dtype=np.float32))
    sigreg = SIGReg(num_slices=num_slices).eval()  # eval: fixed directions, the step does not advance
    standardized = (z - z.mean(0)) / z.std(0).clamp(min=1e-6)
    return {
        "n": int(z.shape[0]),
        "dim": int(z.shape[1]),
        "effective_rank": float(effective_rank(z)),
        "sigreg": float(sigreg(z)),
        "sigreg_standardized": float(sigreg(standardized)),
    }
