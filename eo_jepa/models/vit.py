"""Backbone architectures: plain timm ViTs (patch 8, registers, no class token) and DINOv3 (timm Eva).

Every architecture eo-jepa knows is one row of :data:`ARCHS`; :func:`create_backbone` builds it
with any number of input channels, image size and (optionally) patch size.

- ``vit_{tiny,small,base}_patch8``: timm ``VisionTransformer`` with 4 register tokens
  (Darcet et al., "Vision Transformers Need Registers", arXiv:2309.16588) and no class token.
  ``global_pool='avg'`` (token pooling needs a class token) and ``fc_norm=False`` so the final
  LayerNorm is applied to every token before pooling. ViT-S/8 at 256 px with 5 bands has
  ~21.8M parameters, as in the seed model card.
- ``dinov3_*``: DINOv3 (Siméoni et al., arXiv:2508.10104) through ``timm.models.eva``
  (RoPE base 100, 1 class + 4 register tokens, LayerScale). See :mod:`eo_jepa.models.dinov3`.

All backbones accept any input whose sides are multiples of the patch size
(``dynamic_img_size=True``): absolute position embeddings are interpolated, RoPE is recomputed.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

from eo_jepa.errors import ConfigError, did_you_mean


@dataclass(frozen=True)
class ArchSpec:
    """One backbone architecture."""

    name: str
    family: str  # "vit" (timm VisionTransformer) or "dinov3" (timm Eva)
    embed_dim: int
    depth: int
    num_heads: int
    patch_size: int
    class_token: bool
    default_img_size: int
    timm_name: str = ""  # timm model name for the "dinov3" family
    qkv_bias: bool = False

    @property
    def pooling(self) -> str:
        """How the global embedding is formed: the class token, or the mean of normed patch tokens."""
        return "cls" if self.class_token else "mean"


def _vit(name: str, dim: int, heads: int) -> ArchSpec:
    return ArchSpec(name, "vit", dim, 12, heads, 8, False, 256, qkv_bias=True)


def _dino(name: str, timm_name: str, dim: int, depth: int, heads: int, qkvb: bool) -> ArchSpec:
    return ArchSpec(name, "dinov3", dim, depth, heads, 16, True, 224, timm_name=timm_name, qkv_bias=qkvb)


ARCHS: dict[str, ArchSpec] = {
    a.name: a
    for a in (
        _vit("vit_tiny_patch8", 192, 3),
        _vit("vit_small_patch8", 384, 6),
        _vit("vit_base_patch8", 768, 12),
        _dino("dinov3_vits16", "vit_small_patch16_dinov3", 384, 12, 6, False),
        _dino("dinov3_vits16_qkvb", "vit_small_patch16_dinov3_qkvb", 384, 12, 6, True),
        _dino("dinov3_vitb16", "vit_base_patch16_dinov3", 768, 12, 12, False),
        _dino("dinov3_vitb16_qkvb", "vit_base_patch16_dinov3_qkvb", 768, 12, 12, True),
        _dino("dinov3_vitl16", "vit_large_patch16_dinov3", 1024, 24, 16, False),
        _dino("dinov3_vitl16_qkvb", "vit_large_patch16_dinov3_qkvb", 1024, 24, 16, True),
    )
}


def get_arch(name: str) -> ArchSpec:
    try:
        return ARCHS[name]
    except KeyError:
        raise ConfigError(
            f"Unknown architecture {name!r}; known architectures are: {', '.join(ARCHS)}."
            f"{did_you_mean(name, ARCHS)}"
        ) from None


def create_backbone(
    arch: str,
    in_chans: int,
    img_size: int,
    *,
    patch_size: int | None = None,
    meta: bool = False,
) -> Any:
    """A randomly initialised timm backbone (no head), or one with parameters on the meta device.

    ``meta=True`` allocates no parameter memory (for loading weights with
    ``load_state_dict(assign=True)``, then :func:`materialize_buffers`).
    """
    import torch

    spec = get_arch(arch)
    patch = patch_size or spec.patch_size
    if img_size % patch:
        raise ConfigError(
            f"img_size {img_size} is not a multiple of the patch size {patch}; change one of them."
        )
    ctx = torch.device("meta") if meta else contextlib.nullcontext()
    with ctx:
        if spec.family == "vit":
            from timm.models.vision_transformer import VisionTransformer

            return VisionTransformer(
                img_size=img_size,
                patch_size=patch,
                in_chans=in_chans,
                embed_dim=spec.embed_dim,
                depth=spec.depth,
                num_heads=spec.num_heads,
                qkv_bias=spec.qkv_bias,
                reg_tokens=4,
                class_token=False,
                global_pool="avg",
                fc_norm=False,
                num_classes=0,
                dynamic_img_size=True,
            )
        import timm

        return timm.create_model(
            spec.timm_name,
            pretrained=False,
            num_classes=0,
            in_chans=in_chans,
            img_size=img_size,
            patch_size=patch,
            global_pool="token",
        )


def materialize_buffers(model: Any, device: Any = "cpu") -> None:
    """Give buffers left on the meta device real storage and recompute them (RoPE periods, k bias)."""
    import torch
    from timm.models._manipulate import reinit_non_persistent_buffers

    for module in model.modules():
        for name, buf in list(module._buffers.items()):
            if buf is not None and buf.is_meta:
                module._buffers[name] = torch.empty_like(buf, device=device)
    reinit_non_persistent_buffers(model)
    leftovers = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if leftovers:  # a timm change we do not know about: fail loudly rather than run on garbage
        raise RuntimeError(f"tensors left on the meta device after loading: {leftovers[:5]}")
