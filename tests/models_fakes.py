"""Fake checkpoints in foreign layouts and a real Hugging Face cache layout, for the model tests.

Nothing here mocks a library: the fakes are real timm models whose weights are written in Meta's
DINOv3 key layout or the sentinel-change-explorer layout, and the cache is the folder structure
``huggingface_hub`` itself creates (``blobs/``, ``snapshots/<commit>/``, ``refs/main``).
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import torch

from eo_jepa.models.dinov3 import timm_to_meta


def put_in_hf_cache(cache: Path, repo_id: str, filename: str, src: Path, *, repo_type: str = "model") -> Path:
    """Place ``src`` as ``filename`` of ``repo_id`` at revision main in a hub cache; returns the snapshot path."""
    folder = cache / f"{repo_type}s--{repo_id.replace('/', '--')}"
    commit = hashlib.sha1(repo_id.encode()).hexdigest()
    blob = folder / "blobs" / hashlib.sha256(src.read_bytes()).hexdigest()
    blob.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, blob)
    snap = folder / "snapshots" / commit / filename
    snap.parent.mkdir(parents=True, exist_ok=True)
    if snap.exists() or snap.is_symlink():
        snap.unlink()
    os.symlink(os.path.relpath(blob, snap.parent), snap)
    (folder / "refs").mkdir(exist_ok=True)
    (folder / "refs" / "main").write_text(commit)
    return snap


def randomize_(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random non-trivial weights everywhere (LayerScale gammas and biases included), in place."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("gamma_1") or name.endswith("gamma_2"):
                p.copy_(0.1 + 0.4 * torch.rand(p.shape, generator=gen))
            elif p.ndim == 1 and "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(0.05 * torch.randn(p.shape, generator=gen))
    return model.eval()


def fake_meta_dinov3(timm_name: str = "vit_small_patch16_dinov3_qkvb", seed: int = 0, *, sat: bool = True):
    """(reference timm model, Meta-layout state dict) with non-zero stored q/k/v biases and a bias mask.

    Even blocks use Meta's usual mask (1 for q and v, 0 for k); odd blocks a mask of all zeros, so the
    stored non-zero q/v biases must be folded away. The reference model holds the *effective* biases.
    """
    import timm

    ref = randomize_(timm.create_model(timm_name, num_classes=0, global_pool="token"), seed)
    gen = torch.Generator().manual_seed(seed + 1)
    dim = ref.embed_dim
    k_bias, masks = [], []
    with torch.no_grad():
        for i in range(len(ref.blocks)):
            k_bias.append(torch.randn(dim, generator=gen))
            if i % 2:
                masks.append(torch.zeros(3 * dim))
            else:
                masks.append(torch.cat([torch.ones(dim), torch.zeros(dim), torch.ones(dim)]))
        stored = {k: v.clone() for k, v in ref.state_dict().items()}
        # the effective bias is stored * mask: zero the reference's q/v biases in all-zero-mask blocks
        for i, block in enumerate(ref.blocks):
            if i % 2 and block.attn.q_bias is not None:
                block.attn.q_bias.zero_()
                block.attn.v_bias.zero_()
    meta = timm_to_meta(stored, k_bias=k_bias, bias_mask=masks)
    if sat:  # SAT-493M files carry an extra norm for local crops that inference ignores
        meta["local_cls_norm.weight"] = torch.ones(dim)
        meta["local_cls_norm.bias"] = torch.zeros(dim)
    return ref, meta


def fake_legacy(seed: int = 0, img_size: int = 256, kind: str = "vit_small_patch8"):
    """(reference sentinel-change-explorer-style ViT, checkpoint dict) as the PoC repo wrote it."""
    from timm.models.vision_transformer import VisionTransformer

    dims = {"vit_tiny_patch8": (192, 3), "vit_small_patch8": (384, 6)}[kind]
    # the PoC wrapper: timm ViT, 5 channels, patch 8, 4 registers, no class token, no pooling
    ref = VisionTransformer(
        img_size=img_size, patch_size=8, in_chans=5, num_classes=0, global_pool="", class_token=False,
        reg_tokens=4, embed_dim=dims[0], depth=12, num_heads=dims[1],
    )  # fmt: skip
    randomize_(ref, seed)
    ckpt = {
        "config": {"encoder_kind": kind, "img_size": 128, "lr": 1e-3, "epochs": 150},  # card says 128
        "encoder_state": {f"vit.{k}": v.clone() for k, v in ref.state_dict().items()},
        "norm_stats": {
            "mean": [1298.9, 1086.6, 830.2, 2467.3, 2357.6],
            "std": [1192.4, 908.0, 0.5, 1264.9, 1504.0],
        },
    }
    return ref, ckpt
