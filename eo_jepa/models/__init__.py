"""Encoders (timm ViT / DINOv3), our checkpoint format, foreign converters and the registry.

Modules depend one way: architectures (``vit``, ``dinov3``) and the table of model names
(``registry``) → ``encoder`` → ``checkpoint``, ``convert``, ``adapt`` → ``resolve`` (names →
checkpoints → encoders) → ``api`` (``load``, ``build_encoder``). Heavy imports (torch, timm) happen on first use of an attribute, so
``import eo_jepa.models`` and the CLI's ``--help`` stay fast.
"""

from __future__ import annotations

from eo_jepa.utils.lazy import lazy_exports

_EXPORTS = {
    "Encoder": "eo_jepa.models.encoder",
    "canonical_bands": "eo_jepa.models.encoder",
    "save_encoder": "eo_jepa.models.checkpoint",
    "load_encoder": "eo_jepa.models.checkpoint",
    "save_legacy_pt": "eo_jepa.models.convert",
    "read_state_file": "eo_jepa.models.convert",
    "ARCHS": "eo_jepa.models.vit",
    "ArchSpec": "eo_jepa.models.vit",
    "create_backbone": "eo_jepa.models.vit",
    "ModelSpec": "eo_jepa.models.registry",
    "markdown_table": "eo_jepa.models.registry",
    "NORMALIZATIONS": "eo_jepa.models.registry",
    "build_encoder": "eo_jepa.models.api",
    "list_models": "eo_jepa.models.api",
    "load": "eo_jepa.models.api",
    "register_model": "eo_jepa.models.api",
}

__all__ = sorted(_EXPORTS)


__getattr__ = lazy_exports(__name__, _EXPORTS)
