"""Adapting pretrained weights to other bands, patch sizes and image sizes.

Band convention (by *name*, never by position): for every target band, the patch-embedding
kernel is the source kernel of the band with the same canonical name; a band the source does not
have gets the mean of the source's red/green/blue kernels (of all source kernels if it has no
RGB). Then every kernel is multiplied by ``C_src / C_dst`` (3/C for an RGB source) so that the
sum over channels — the scale of the patch embedding — stays the same for inputs of similar
magnitude. Consequence (tested): the C-band model fed ``[R, G, B, 0, …, 0] · C/3`` gives exactly
the RGB model's output for ``[R, G, B]``.

Patch-size changes use timm's pseudo-inverse kernel resampling (FlexiViT, Beyer et al. 2023,
:func:`timm.layers.resample_patch_embed`); absolute position embeddings are interpolated with
:func:`timm.layers.resample_abs_pos_embed` (RoPE models have none).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from eo_jepa.bands import RGB
from eo_jepa.errors import CheckpointError

log = logging.getLogger(__name__)

PATCH_KEY = "patch_embed.proj.weight"


def adapt_patch_kernels(weight: Any, src_bands: Sequence[str], dst_bands: Sequence[str]) -> Any:
    """(D, C_src, p, p) kernels → (D, C_dst, p, p) by band name, rescaled by C_src/C_dst (see module doc)."""
    import torch

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
