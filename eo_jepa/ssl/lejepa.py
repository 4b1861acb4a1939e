"""The LeJEPA objective over multi-crop views (Balestriero & LeCun 2025, arXiv:2511.08544).

``loss = (1 − λ) · prediction + λ · SIGReg``, nothing else: no teacher, no EMA, no
stop-gradient. The prediction term is the mean squared error of every view's projection (global
and local) to the mean of the global views' projections; SIGReg is averaged over all views.

Option (not in the paper, off by default): ``embed_lam`` > 0 adds ``embed_lam · SIGReg`` of the
backbone embeddings of all views, so the isotropy SIGReg asks of the projector output is also
asked of the embedding users keep (the projector is dropped after training).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from eo_jepa.ssl.sigreg import EmbeddingError, Impl, SIGReg, scale_grad, world_size


@dataclass
class LeJEPAOutput:
    """The loss to back-propagate and its parts (detached, for logging); ``gram`` when Gram anchoring is on."""

    loss: Tensor
    pred: Tensor
    sigreg: Tensor
    gram: Tensor | None = None
    sigreg_embed: Tensor | None = None  # SIGReg of the backbone embeddings (embed_lam > 0)


def batch_scaled_lam(lam: float, lam_batch: int | None, batch: int) -> float:
    """λ for ``batch`` samples per view that weighs SIGReg against prediction as ``lam`` does at ``lam_batch``.

    The SIGReg statistic is N times an empirical distance, so for embeddings that are not Gaussian
    (a collapsing batch) its value and gradient grow linearly with the batch N, while the prediction
    term is a mean and does not. The trade-off λ/(1 − λ) of a recipe tuned at ``lam_batch`` therefore
    keeps its strength at another batch when scaled by ``lam_batch / batch``:
    ``λ'/(1 − λ') = λ/(1 − λ) · lam_batch / batch``. ``lam_batch=None`` returns ``lam`` unchanged.
    """
    if lam_batch is None or lam in (0.0, 1.0):
        return float(lam)
    if lam_batch < 1 or batch < 1:
        raise ValueError(f"lam_batch and batch must be positive, got {lam_batch} and {batch}.")
    ratio = lam / (1.0 - lam) * lam_batch / batch
    return float(ratio / (1.0 + ratio))


def _check_views(x: Tensor, name: str) -> None:
    if not isinstance(x, Tensor) or x.dim() != 3:
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise EmbeddingError(
            f"LeJEPALoss expects {name} shaped (views, batch, dim), got {shape}; "
            "stack the views' projections along a new first dimension."
        )
    if x.shape[0] < 1 or x.shape[1] < 1 or x.shape[2] < 1:
        raise EmbeddingError(f"LeJEPALoss got empty {name} of shape {tuple(x.shape)}.")


class LeJEPALoss(nn.Module):
    """LeJEPA loss on projector outputs of global and local views.

    Args:
        num_slices, num_knots, t_max, impl: passed to :class:`SIGReg` (held as ``self.sigreg``).
        lam: λ, the SIGReg weight (0.05 in the paper).
        ddp_average: compensate the gradient averaging of DDP/FSDP (default True). Under
            ``torch.distributed`` every rank's SIGReg is the statistic of the *global* batch and its
            gradient is the exact global gradient for the local rows; DDP then averages parameter
            gradients over ranks, which would divide the SIGReg part by the world size. With
            ``ddp_average=True`` the SIGReg gradient is multiplied by the world size (its value is
            unchanged), so that after DDP's averaging the parameter gradients equal those of one
            process on the concatenated batch. The prediction term, a mean over the local batch,
            needs no compensation when ranks have equal batch sizes. Set False if you reduce
            gradients with a SUM yourself. Without torch.distributed it does nothing.
        embed_lam: weight of an extra SIGReg term on the backbone embeddings (default 0: the
            paper's objective). Then ``forward`` needs ``embeddings`` (V, B, D) of all views; the
            term has its own :class:`SIGReg` (``self.sigreg_embed``, same slices and grid).

    ``forward(global_proj (Vg, B, P), local_proj (Vl, B, P) or None, embeddings=None)`` returns
    :class:`LeJEPAOutput` ``(loss, pred, sigreg, sigreg_embed)``.
    """

    def __init__(
        self,
        num_slices: int = 1024,
        lam: float = 0.05,
        impl: Impl = "fused",
        num_knots: int = 17,
        t_max: float = 3.0,
        *,
        ddp_average: bool = True,
        embed_lam: float = 0.0,
    ) -> None:
        super().__init__()
        if not 0.0 <= lam <= 1.0:
            raise ValueError(f"LeJEPA lam must lie in [0, 1], got {lam}; the paper's default is 0.05.")
        if not embed_lam >= 0.0:
            raise ValueError(f"LeJEPA embed_lam must be 0 or more, got {embed_lam}.")
        self.lam = float(lam)
        self.embed_lam = float(embed_lam)
        self.ddp_average = ddp_average
        self.sigreg = SIGReg(num_slices=num_slices, num_knots=num_knots, t_max=t_max, impl=impl)
        self.sigreg_embed = (
            SIGReg(num_slices=num_slices, num_knots=num_knots, t_max=t_max, impl=impl)
            if embed_lam > 0
            else None
        )

    def extra_repr(self) -> str:
        return f"lam={self.lam}, embed_lam={self.embed_lam}, ddp_average={self.ddp_average}"

    def forward(
        self, global_proj: Tensor, local_proj: Tensor | None = None, embeddings: Tensor | None = None
    ) -> LeJEPAOutput:
        _check_views(global_proj, "global_proj")
        views = global_proj
        if local_proj is not None:
            _check_views(local_proj, "local_proj")
            if local_proj.shape[1:] != global_proj.shape[1:]:
                raise EmbeddingError(
                    f"LeJEPALoss needs local_proj with the same (batch, dim) as global_proj "
                    f"{tuple(global_proj.shape[1:])}, got local_proj of shape {tuple(local_proj.shape)}."
                )
            views = torch.cat([global_proj, local_proj.to(global_proj.dtype)], dim=0)
        # fp32 accumulation also under bf16 autocast; no stop-gradient on the target (LeJEPA needs none)
        views32 = views.float()
        target = views32[: global_proj.shape[0]].mean(dim=0)  # (B, P)
        pred = (views32 - target).square().mean()
        sigreg = self.sigreg(views)
        factor = world_size() if self.ddp_average else 1
        if factor > 1 and self.sigreg.distributed is not False:
            sigreg = scale_grad(sigreg, factor)
        loss = (1.0 - self.lam) * pred + self.lam * sigreg
        sigreg_embed = None
        if self.sigreg_embed is not None:
            if embeddings is None:
                raise EmbeddingError(
                    "LeJEPALoss with embed_lam > 0 needs embeddings=(views, batch, dim) of the backbone."
                )
            _check_views(embeddings, "embeddings")
            if embeddings.shape[:2] != views.shape[:2]:
                raise EmbeddingError(
                    f"LeJEPALoss needs embeddings for the same (views, batch) {tuple(views.shape[:2])} as the "
                    f"projections, got shape {tuple(embeddings.shape)}."
                )
            sigreg_embed = self.sigreg_embed(embeddings)
            if factor > 1 and self.sigreg_embed.distributed is not False:
                sigreg_embed = scale_grad(sigreg_embed, factor)
            loss = loss + self.embed_lam * sigreg_embed
            sigreg_embed = sigreg_embed.detach()
        return LeJEPAOutput(loss=loss, pred=pred.detach(), sigreg=sigreg.detach(), sigreg_embed=sigreg_embed)
