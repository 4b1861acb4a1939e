"""Adapting pretrained weights to other bands, patch sizes and image sizes.

Band convention (by *name*, never by position): for every target band, the patch-embedding
kernel is the source kernel of the band with the same canonical name; a band the source does not
have gets the mean of the source's red/green/blue kernels (of all source kernels if it has no
RGB). Then every kernel is multiplied by ``C_src / C_dst`` (3/C for an RGB source) so that the
sum over channels — the scale of the patch embedding — stays the same for inputs of similar
magnitude. Consequence (tested): the C-band model fed ``[R, G, B, 0, …, 0] · C/3`` gives exactly
the RGB model's output for ``[R, G, B]``.

:func:`adapt_encoder` builds a new :class:`~eo_jepa.models.encoder.Encoder` from a loaded one this
way (the model is named by :func:`eo_jepa.models.api.build_encoder`, which resolves the name).

Patch-size changes use timm's pseudo-inverse kernel resampling (FlexiViT, Beyer et al. 2023,
:func:`timm.layers.resample_patch_embed`); absolute position embeddings are interpolated with
:func:`timm.layers.resample_abs_pos_embed` (RoPE models have none).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from eo_jepa.bands import RGB, get_sensor
from eo_jepa.errors import CheckpointError, ConfigError
from eo_jepa.models.encoder import Encoder, canonical_bands, clean_norm_stats
from eo_jepa.models.vit import create_backbone, get_arch, materialize_buffers

log = logging.getLogger(__name__)

PATCH_KEY = "patch_embed.proj.weight"


def adapt_patch_kernels(weight: Any, src_bands: Sequence[str], dst_bands: Sequence[str]) -> Any:
    """(D, C_src, p, p) kernels → (D, C_dst, p, p) by band name, rescaled by C_src/C_dst (see module doc)."""
    src, dst = list(src_bands), list(dst_bands)
    if weight.shape[1] != len(src):
        raise CheckpointError(
            f"Patch embedding has {weight.shape[1]} input channels but the checkpoint lists {len(src)} bands {src}."
        )
    if src == dst:
        return weight
    rgb_idx = [src.index(b) for b in RGB if b in src]
    fill = weight[:, rgb_idx].mean(1) if rgb_idx else weight.mean(1)
    new = [weight[:, src.index(b)] if b in src else fill for b in dst]
    missing = [b for b in dst if b not in src]
    if missing:
        log.info(
            "Bands %s are new to the pretrained weights; their kernels start from the RGB mean.", missing
        )
    return torch.stack(new, 1) * (len(src) / len(dst))


def adapt_state_dict(
    state: dict[str, Any],
    model: Any,
    *,
    src_bands: Sequence[str],
    dst_bands: Sequence[str],
) -> dict[str, Any]:
    """Adapt a timm state dict (same architecture family) to ``model``'s bands, patch size and image size."""
    from timm.layers import resample_abs_pos_embed, resample_patch_embed

    out = dict(state)
    weight = adapt_patch_kernels(state[PATCH_KEY], src_bands, dst_bands)
    target = tuple(model.patch_embed.proj.weight.shape[-2:])
    if tuple(weight.shape[-2:]) != target:
        weight = resample_patch_embed(weight, list(target), interpolation="bicubic", antialias=True)
    out[PATCH_KEY] = weight
    pos = state.get("pos_embed")
    if (
        pos is not None
        and getattr(model, "pos_embed", None) is not None
        and pos.shape != model.pos_embed.shape
    ):
        npt = 0 if getattr(model, "no_embed_class", False) else model.num_prefix_tokens
        old = round((pos.shape[1] - npt) ** 0.5)
        out["pos_embed"] = resample_abs_pos_embed(
            pos, new_size=list(model.patch_embed.grid_size), old_size=[old, old], num_prefix_tokens=npt
        )
    return out


def adapt_encoder(
    source: Encoder,
    bands: Sequence[str],
    *,
    arch: str | None = None,
    img_size: int = 224,
    norm_stats: Mapping[str, Mapping[str, Any]] | None = None,
    patch_size: int | None = None,
    input_scale: float | None = None,
    sensor: str | None = None,
    label: str | None = None,
) -> Encoder:
    """A new encoder for ``bands`` initialised from ``source``'s weights (see the module doc).

    ``arch=None`` keeps the source's architecture; another one must be the same network (family,
    width, depth, qkv bias) with, e.g., another patch size. Without ``norm_stats`` the source's
    statistics (and input scale) are kept, which fails clearly for bands the source lacks.
    ``label`` names the source in errors (the registry name or path it was loaded from).
    """
    if sensor is not None:
        get_sensor(sensor)
    names = canonical_bands(bands, sensor)
    arch = arch or source.arch
    network = [(s.family, s.embed_dim, s.depth, s.qkv_bias) for s in (get_arch(source.arch), get_arch(arch))]
    if network[0] != network[1]:
        raise ConfigError(
            f"Pretrained model {label or source.arch!r} is a {source.arch}; it cannot initialise a {arch} "
            f"(use arch={source.arch!r} or None)."
        )
    if norm_stats is None:
        norm_stats = source.norm_stats  # missing bands raise a clear ConfigError below
        if input_scale is None:
            input_scale = source.input_scale
    stats = clean_norm_stats(norm_stats, names)
    backbone = create_backbone(arch, len(names), img_size, patch_size=patch_size, meta=True)
    state = adapt_state_dict(source.backbone.state_dict(), backbone, src_bands=source.bands, dst_bands=names)
    backbone.load_state_dict(state, strict=True, assign=True)
    materialize_buffers(backbone)
    return Encoder(
        backbone,
        arch=arch,
        bands=names,
        norm_stats=stats,
        img_size=img_size,
        input_scale=1.0 if input_scale is None else input_scale,
        sensor=sensor or source.sensor,
    )
