"""LeJEPA: the SIGReg statistic, the multi-view objective and the projector head.

>>> import torch
>>> from eo_jepa.ssl import LeJEPALoss
>>> loss_fn = LeJEPALoss(num_slices=256)
>>> out = loss_fn(torch.randn(2, 32, 128), torch.randn(6, 32, 128))
>>> sorted(vars(out))
['loss', 'pred', 'sigreg']
"""

from eo_jepa.ssl.lejepa import LeJEPALoss, LeJEPAOutput, batch_scaled_lam
from eo_jepa.ssl.projector import Projector, effective_rank
from eo_jepa.ssl.sigreg import (
    IMPLS,
    EmbeddingError,
    SIGReg,
    expected_gaussian_value,
    quadrature,
    random_directions,
    scale_grad,
    world_size,
)

__all__ = [
    "IMPLS",
    "EmbeddingError",
    "LeJEPALoss",
    "LeJEPAOutput",
    "Projector",
    "SIGReg",
    "batch_scaled_lam",
    "effective_rank",
    "expected_gaussian_value",
    "quadrature",
    "random_directions",
    "scale_grad",
    "world_size",
]
