"""AdamW parameter groups and the learning-rate schedule (linear warm-up, cosine decay)."""

from __future__ import annotations

import math
from typing import Any

from torch import nn


def lr_factor(step: int, total: int, warmup: int, final_ratio: float) -> float:
    """Multiplier of the base lr at optimiser step ``step``: linear warm-up, then cosine to ``final_ratio``."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    span = max(1, total - warmup)
    progress = min(1.0, (step - warmup) / span)
    return final_ratio + (1 - final_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: no weight decay on biases, norms, tokens and position embeddings (1-D or named so)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim <= 1 or name.endswith(("token", "tokens", "pos_embed", "reg_token")):
            no_decay.append(p)
        else:
            decay.append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
