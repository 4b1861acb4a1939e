"""Reading foreign checkpoint files safely and turning them into :class:`Encoder` objects.

Formats (sniffed from the keys, never from the file name alone):

- ``meta-dinov3``: Meta's original DINOv3 ``.pth`` (``storage_tokens``, ``ls1.gamma``,
  ``qkv.bias_mask``…); the Core-JEPA file is the same behind ``encoder.model.`` (``core-jepa``).
- ``legacy``: sentinel-change-explorer ``.pt`` — ``{"config": {"encoder_kind", "img_size"},
  "encoder_state": {"vit.<timm keys>"}, "norm_stats": {"mean": [...], "std": [...]}}``; its
  inference code clamps std at 1, which we keep.
- ``timm``: a timm / Hugging Face state dict (``.safetensors``, ``.bin``, ``.pth``) of one of
  our architectures (optionally behind ``backbone.``/``module.``).

Pickles are opened with ``torch.load(weights_only=True)``: a file that needs arbitrary Python
objects is refused with :class:`CheckpointError`, since unpickling it could run code.
"""

from __future__ import annotations

import logging
import os
import pickle
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from eo_jepa.errors import CheckpointError
from eo_jepa.models import dinov3
from eo_jepa.models.encoder import Encoder, canonical_bands
from eo_jepa.models.vit import ARCHS, create_backbone, get_arch, materialize_buffers
from eo_jepa.utils.io import atomic_open

log = logging.getLogger(__name__)

LEGACY_BANDS = ("red", "green", "blue", "nir", "swir16")
LEGACY_STD_FLOOR = 1.0  # sentinel-change-explorer clamps std at 1 before dividing
_WRAPPER_PREFIXES = ("backbone.", "module.", "vit.")


def read_state_file(path: str | os.PathLike[str]) -> Any:
    """Tensors from ``.safetensors`` or a pickle opened with ``weights_only=True`` (CPU, memory-mapped)."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"Checkpoint file {path} does not exist.")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError) as exc:
            raise CheckpointError(f"{path} is not a readable safetensors file ({exc}).") from None
    try:
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as exc:
            if "mmap" not in str(exc) and "zip" not in str(exc):
                raise
            return torch.load(path, map_location="cpu", weights_only=True)  # legacy (non-zip) torch.save
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"{path} contains pickled Python objects other than tensors and plain containers; eo-jepa refuses "
            "to unpickle them because that can run arbitrary code. Re-save it as a state dict of tensors "
            f"or as safetensors. (torch: {str(exc).splitlines()[0]})"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint ({exc}).") from None


def sniff(obj: Any) -> str:
    """The format of a loaded checkpoint object: 'legacy', 'core-jepa', 'meta-dinov3' or 'timm'."""
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"Checkpoint holds a {type(obj).__name__}, not a dict of tensors.")
    if "encoder_state" in obj:
        return "legacy"
    if any(k.startswith(dinov3.CORE_JEPA_PREFIX) for k in obj):
        return "core-jepa"
    if dinov3.is_meta_dinov3(obj):
        return "meta-dinov3"
    for key in ("state_dict", "model"):  # common wrappers around a state dict
        if isinstance(obj.get(key), Mapping):
            raise CheckpointError(
                f"Checkpoint wraps its weights under {key!r}; save that inner state dict on its own and load it."
            )
    if "patch_embed.proj.weight" in unwrap_state(obj):
        return "timm"
    raise CheckpointError(
        "Unrecognised checkpoint layout (keys like "
        f"{sorted(obj)[:4]}); supported: eo-jepa folders, Meta DINOv3, Core-JEPA, sentinel-change-explorer "
        "and timm state dicts."
    )


def unwrap_state(state: Mapping[str, Any]) -> dict[str, Any]:
    """A timm state dict with wrapper prefixes (``backbone.``, ``module.``, ``vit.``) removed."""
    state = dict(state)
    for prefix in _WRAPPER_PREFIXES:
        if "patch_embed.proj.weight" not in state:
            state = dinov3.strip_prefix(state, prefix)
    return state


def infer_timm_arch(state: Mapping[str, Any]) -> str:
    """Our architecture name for a timm state dict (ViT/8 family or DINOv3 Eva)."""
    dim = int(state["patch_embed.proj.weight"].shape[0])
    patch = int(state["patch_embed.proj.weight"].shape[-1])
    depth = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("blocks."))
    family = "dinov3" if "blocks.0.gamma_1" in state else "vit"
    qkvb = "blocks.0.attn.q_bias" in state if family == "dinov3" else "blocks.0.attn.qkv.bias" in state
    for spec in ARCHS.values():
        if (spec.family, spec.embed_dim, spec.depth, spec.qkv_bias) == (family, dim, depth, qkvb):
            if spec.patch_size != patch:
                log.info(
                    "Checkpoint patch size %d differs from %s's default %d.",
                    patch,
                    spec.name,
                    spec.patch_size,
                )
            return spec.name
    raise CheckpointError(
        f"No known architecture matches this state dict ({family}, dim {dim}, depth {depth}); "
        f"known: {', '.join(ARCHS)}."
    )


def _to_backbone(state: dict[str, Any], arch: str, in_chans: int, img_size: int, fmt: str) -> Any:
    patch = int(state["patch_embed.proj.weight"].shape[-1]) if "patch_embed.proj.weight" in state else None
    backbone = create_backbone(arch, in_chans, img_size, patch_size=patch, meta=True)
    if fmt in ("meta-dinov3", "core-jepa"):
        state = dinov3.meta_to_timm(state, backbone)
    try:
        backbone.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as exc:
        raise CheckpointError(
            f"Weights do not fit architecture {arch!r}: {str(exc).splitlines()[0]} …"
        ) from None
    materialize_buffers(backbone)
    return backbone


def encoder_from_state(
    obj: Any,
    *,
    converter: str = "auto",
    arch: str | None = None,
    bands: Sequence[str] | None = None,
    norm_stats: Mapping[str, Mapping[str, Any]] | None = None,
    input_scale: float | None = None,
    sensor: str | None = None,
    img_size: int | None = None,
    source: str = "",
) -> Encoder:
    """An :class:`Encoder` from a loaded foreign checkpoint; metadata missing from the file comes from the caller."""
    fmt = sniff(obj)
    if converter not in ("auto", fmt) and not (converter == "core-jepa" and fmt == "meta-dinov3"):
        raise CheckpointError(
            f"{source or 'Checkpoint'} looks like {fmt!r}, not the expected {converter!r} format."
        )
    if fmt == "legacy":
        cfg = dict(obj.get("config") or {})
        kind = str(cfg.get("encoder_kind", ""))
        if kind not in ARCHS or get_arch(kind).family != "vit":
            raise CheckpointError(
                f"Legacy checkpoint encoder_kind {kind!r} is not supported; supported: "
                f"{', '.join(a for a, s in ARCHS.items() if s.family == 'vit')}."
            )
        state = dinov3.strip_prefix(dict(obj["encoder_state"]), "vit.")
        npatch = state["pos_embed"].shape[1] - 4  # 4 register tokens, no class token
        patch = int(state["patch_embed.proj.weight"].shape[-1])
        size = round(npatch**0.5) * patch  # the position embedding is the truth, whatever config says
        names = canonical_bands(cfg.get("bands") or bands or LEGACY_BANDS, "sentinel-2-l2a")
        ns = obj.get("norm_stats") or {}
        if norm_stats is None:
            if len(ns.get("mean", [])) != len(names) or len(ns.get("std", [])) != len(names):
                raise CheckpointError(
                    f"Legacy checkpoint norm_stats do not list one mean/std per band {names}."
                )
            norm_stats = {
                b: {"mean": float(m), "std": max(float(s), LEGACY_STD_FLOOR)}
                for b, m, s in zip(names, ns["mean"], ns["std"], strict=True)
            }
        backbone = _to_backbone(state, kind, len(names), size, fmt)
        return Encoder(
            backbone, arch=kind, bands=names, norm_stats=norm_stats, img_size=size,
            input_scale=input_scale or 1.0, sensor=sensor or "sentinel-2-l2a",
        )  # fmt: skip
    if fmt in ("meta-dinov3", "core-jepa"):
        state = dinov3.strip_prefix(dict(obj), dinov3.CORE_JEPA_PREFIX)
        arch = arch or dinov3.infer_arch(state)
    else:
        state = unwrap_state(obj)
        arch = arch or infer_timm_arch(state)
    spec = get_arch(arch)
    if bands is None:
        if spec.family != "dinov3":
            raise CheckpointError(
                f"{source or 'This checkpoint'} does not say which bands it takes; give bands=[...]."
            )
        bands = ("red", "green", "blue")
    names = canonical_bands(bands, sensor)
    if norm_stats is None:
        raise CheckpointError(
            f"{source or 'This checkpoint'} carries no normalisation statistics; register it with "
            "eo_jepa.models.register_model(..., norm='sat493m'|'imagenet'|{band: {mean, std}}) and load it by name."
        )
    backbone = _to_backbone(state, arch, len(names), img_size or spec.default_img_size, fmt)
    return Encoder(
        backbone, arch=arch, bands=names, norm_stats=norm_stats, img_size=img_size or spec.default_img_size,
        input_scale=1.0 if input_scale is None else input_scale, sensor=sensor,
    )  # fmt: skip


def save_legacy_pt(encoder: Encoder, path: str | os.PathLike[str]) -> Path:
    """Write ``encoder`` in the sentinel-change-explorer ``.pt`` layout (ViT/8 family only)."""
    import torch

    if get_arch(encoder.arch).family != "vit":
        raise CheckpointError(
            f"The sentinel-change-explorer format only holds ViT/8 encoders, not {encoder.arch!r}; "
            "use save_encoder instead."
        )
    obj = {
        "config": {
            "encoder_kind": encoder.arch,
            "img_size": encoder.img_size,
            "bands": list(encoder.bands),
        },
        "encoder_state": {f"vit.{k}": v.detach().cpu() for k, v in encoder.backbone.state_dict().items()},
        "norm_stats": {
            "mean": [encoder.norm_stats[b]["mean"] for b in encoder.bands],
            "std": [encoder.norm_stats[b]["std"] for b in encoder.bands],
        },
    }
    path = Path(path)
    with atomic_open(path, "wb") as fh:
        torch.save(obj, fh)
    return path
