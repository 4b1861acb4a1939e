"""DINOv3 weights in Meta's original key layout ↔ timm's Eva layout.

Meta's checkpoints (``dinov3_vit*_pretrain_*.pth``) use ``storage_tokens``, ``ls1.gamma``,
``attn.qkv.bias`` + ``attn.qkv.bias_mask``, ``rope_embed.periods`` and ``mask_token``; the
SAT-493M file adds ``local_cls_norm.*`` (used only for 7B pretraining with local crops).
timm's :func:`timm.models.eva.checkpoint_filter_fn` renames them but drops ``bias_mask``: Meta's
attention multiplies the qkv bias by that mask, so we fold it in (``bias *= bias_mask``) before
filtering, otherwise outputs silently differ. Core-JEPA's ``lejepa-l.pt`` is the same key set
behind the prefix ``encoder.model.``.
"""

from __future__ import annotations

import re
from typing import Any

from eo_jepa.errors import CheckpointError
from eo_jepa.models.vit import ARCHS

CORE_JEPA_PREFIX = "encoder.model."


def is_meta_dinov3(state: dict[str, Any]) -> bool:
    return "storage_tokens" in state and any(k.endswith("ls1.gamma") for k in state)


def strip_prefix(state: dict[str, Any], prefix: str) -> dict[str, Any]:
    """Keys starting with ``prefix`` without it (others dropped); the state unchanged if none match."""
    if not any(k.startswith(prefix) for k in state):
        return state
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def fold_bias_mask(state: dict[str, Any]) -> dict[str, Any]:
    """``qkv.bias * qkv.bias_mask`` for every block, as Meta's ``LinearKMaskedBias`` computes it."""
    out = dict(state)
    for key, mask in state.items():
        if key.endswith("qkv.bias_mask"):
            bias_key = key[: -len("_mask")]
            if bias_key in out:
                out[bias_key] = out[bias_key] * mask.to(out[bias_key].dtype)
    return out


def infer_arch(state: dict[str, Any]) -> str:
    """The DINOv3 architecture name a Meta-layout state dict fits (embed dim, depth, q/v biases)."""
    try:
        dim = int(state["cls_token"].shape[-1])
    except KeyError:
        raise CheckpointError("DINOv3 checkpoint has no 'cls_token'; it is not a Meta DINOv3 file.") from None
    depth = 1 + max(int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+)\.", k)))
    has_bias = any(k.endswith("qkv.bias") for k in state)
    for spec in ARCHS.values():
        if spec.family == "dinov3" and (spec.embed_dim, spec.depth, spec.qkv_bias) == (dim, depth, has_bias):
            return spec.name
    raise CheckpointError(
        f"No known DINOv3 architecture has embed dim {dim} and depth {depth}; "
        f"known: {', '.join(a for a, s in ARCHS.items() if s.family == 'dinov3')}."
    )


def meta_to_timm(state: dict[str, Any], model: Any) -> dict[str, Any]:
    """Meta-layout (optionally ``encoder.model.``-prefixed) state dict → timm Eva keys for ``model``."""
    from timm.models.eva import checkpoint_filter_fn

    state = strip_prefix(state, CORE_JEPA_PREFIX)
    state = fold_bias_mask(state)
    qkv_bias = getattr(model.blocks[0].attn, "q_bias", None) is not None
    if not qkv_bias:
        folded = [v for k, v in state.items() if k.endswith("qkv.bias")]
        if any(bool(v.abs().max() > 0) for v in folded):
            raise CheckpointError(
                "The checkpoint has non-zero q/v biases but the target architecture has none; "
                "use the '_qkvb' variant of the architecture."
            )
        state = {k: v for k, v in state.items() if not k.endswith("qkv.bias")}
    state = {k: v for k, v in state.items() if not k.startswith("local_cls_norm")}
    return checkpoint_filter_fn(state, model)


def timm_to_meta(state: dict[str, Any], *, k_bias: Any = None, bias_mask: Any = None) -> dict[str, Any]:
    """timm Eva DINOv3 keys → Meta's layout (the inverse of :func:`meta_to_timm`, for tests and benchmarks).

    ``k_bias``/``bias_mask``: optional per-block tensors (dim ``3*D``) for the stored k part of the qkv bias
    and the mask; default: zero k bias and the mask Meta uses (1 for q and v, 0 for k).
    """
    import torch

    out: dict[str, Any] = {}
    for key, value in state.items():
        if key.endswith("attn.q_bias"):
            prefix = key[: -len("q_bias")]
            q, v = value, state[prefix + "v_bias"]
            block = int(key.split(".")[1])
            k = k_bias[block] if k_bias is not None else torch.zeros_like(q)
            out[prefix + "qkv.bias"] = torch.cat([q, k, v])
            if bias_mask is not None:
                out[prefix + "qkv.bias_mask"] = bias_mask[block].clone()
            else:
                out[prefix + "qkv.bias_mask"] = torch.cat(
                    [torch.ones_like(q), torch.zeros_like(q), torch.ones_like(v)]
                )
            continue
        if key.endswith("attn.v_bias"):
            continue
        key = key.replace("gamma_1", "ls1.gamma").replace("gamma_2", "ls2.gamma")
        key = key.replace("reg_token", "storage_tokens")
        out[key] = value
    dim = state["cls_token"].shape[-1]
    out["mask_token"] = torch.zeros(1, dim)
    out["rope_embed.periods"] = torch.ones(16)  # head_dim / 4 for every DINOv3 ViT; recomputed on load
    return out
