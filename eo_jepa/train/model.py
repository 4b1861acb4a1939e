"""What is trained: the encoder (from scratch or from ``model.init``), the projector and the loss.

:class:`LeJEPAModel` runs encoder + projector on all views in one forward; :func:`build_encoder_for`,
:func:`build_model` and :func:`make_loss` build them from a :class:`~eo_jepa.train.config.TrainConfig`.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from eo_jepa.errors import ConfigError, MissingNormStatsError
from eo_jepa.models import build_encoder
from eo_jepa.ssl import LeJEPALoss, Projector, batch_scaled_lam, world_size
from eo_jepa.ssl.gram import encode
from eo_jepa.train.config import TrainConfig, ViewsConfig

log = logging.getLogger(__name__)


class LeJEPAModel(nn.Module):
    """Encoder + projector; one forward for all views so DDP/FSDP see a single call per step."""

    def __init__(self, encoder: nn.Module, projector: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder
        self.projector = projector
        # loss.gram: keep the patch tokens (V·B, N, D) of block gram_layer of each anchored view group
        self.gram_layer: int | None = None
        self.gram_locals = False
        self.patches: list[torch.Tensor] | None = None
        self.keep_embeddings = False
        self.embeddings: torch.Tensor | None = None

    def forward(
        self, globals_: torch.Tensor, locals_: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Views (V, B, C, S, S) -> (global-view projections (Vg, B, P), local-view projections or None).

        The projector runs once on the embeddings of all views, so its BatchNorm statistics
        cover every view (as in the paper's reference code).
        """
        vg, b = globals_.shape[:2]
        emb, patches_g = encode(self.encoder, globals_.flatten(0, 1), self.gram_layer)
        patches = None if patches_g is None else [patches_g]
        if locals_ is not None:
            emb_l, patches_l = encode(
                self.encoder, locals_.flatten(0, 1), self.gram_layer if self.gram_locals else None
            )
            emb_all = torch.cat([emb, emb_l])
            patches = patches if patches_l is None else [patches_g, patches_l]
        else:
            emb_all = emb
        # loss.embed_lam > 0: the objective also needs the embeddings of all views (with gradient)
        self.embeddings = emb_all.reshape(-1, b, emb_all.shape[-1]) if self.keep_embeddings else None
        proj = self.projector(emb_all)
        # clones: FSDP warns about returning views (in-place ops on them would skip its hooks)
        proj_g = proj[: vg * b].reshape(vg, b, -1).clone()
        proj_l = proj[vg * b :].reshape(-1, b, proj.shape[-1]).clone() if locals_ is not None else None
        self.patches = patches
        return proj_g, proj_l


def build_encoder_for(cfg: TrainConfig, source: Any) -> Any:
    """The encoder: from scratch with the dataset's statistics, or initialised from ``model.init``.

    With ``model.init`` the checkpoint's normalisation is kept when it covers every band (so the
    first forward equals the source model's); otherwise the dataset's statistics are used.
    """
    kwargs = {"img_size": cfg.model.img_size, "sensor": getattr(source, "sensor", None)}
    if cfg.model.init is None:
        return build_encoder(cfg.model.arch, source.bands, norm_stats=source.norm_stats, **kwargs)
    try:
        return build_encoder(cfg.model.arch, source.bands, pretrained=cfg.model.init, **kwargs)
    except MissingNormStatsError:
        log.info("%s lacks statistics for some bands; using the dataset's norm_stats.", cfg.model.init)
        return build_encoder(
            cfg.model.arch, source.bands, pretrained=cfg.model.init, norm_stats=source.norm_stats, **kwargs
        )


def check_view_sizes(views: ViewsConfig, encoder: Any) -> None:
    """The global and local view sizes must be multiples of the encoder's patch size."""
    for what in ("global_size", "local_size"):
        size = getattr(views, what)
        if size % encoder.patch_size:
            raise ConfigError(
                f"views.{what}={size} is not a multiple of the patch size {encoder.patch_size} of "
                f"{encoder.arch}; use a multiple such as {max(1, size // encoder.patch_size) * encoder.patch_size}."
            )


def raw_unit_stats(encoder: Any) -> dict[str, dict[str, float]]:
    """The encoder's normalisation expressed in raw units: ((raw+o)*s - m)/d == (raw - (m/s - o)) / (d/s)."""
    s, o = encoder.input_scale, encoder.input_offset
    return {b: {"mean": v["mean"] / s - o, "std": v["std"] / s} for b, v in encoder.norm_stats.items()}


def make_loss(cfg: TrainConfig) -> LeJEPALoss:
    """The LeJEPA objective of ``cfg.loss``, its SIGReg gradient compensated for DDP/FSDP averaging."""
    # loss.lam_batch: λ is the recipe's at that batch; SIGReg sees the global batch of every view
    lam = batch_scaled_lam(cfg.loss.lam, cfg.loss.lam_batch, cfg.data.batch_size * world_size())
    if lam != cfg.loss.lam:
        log.info(
            "loss.lam %g at batch %d is λ = %.4g at this run's batch.", cfg.loss.lam, cfg.loss.lam_batch, lam
        )
    return LeJEPALoss(
        num_slices=cfg.loss.num_slices,
        lam=lam,
        impl=cfg.loss.impl,
        num_knots=cfg.loss.num_knots,
        t_max=cfg.loss.t_max,
        embed_lam=cfg.loss.embed_lam,
        ddp_average=True,
    )


def build_model(cfg: TrainConfig, encoder: Any) -> LeJEPAModel:
    """Encoder + the projector of ``cfg.model``, keeping what ``loss.gram`` / ``loss.embed_lam`` need."""
    projector = Projector(
        encoder.embed_dim,
        hidden_dim=cfg.model.proj_hidden,
        out_dim=cfg.model.proj_out,
        num_layers=cfg.model.proj_layers,
    )
    model = LeJEPAModel(encoder, projector)
    if cfg.loss.gram.weight > 0:
        model.gram_layer, model.gram_locals = cfg.loss.gram.layer, cfg.loss.gram.views == "all"
    model.keep_embeddings = cfg.loss.embed_lam > 0
    return model
