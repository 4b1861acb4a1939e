"""Linear probe on frozen features: LayerNorm + Linear, AdamW (wd 1e-6), warm-up + cosine.

The LeJEPA evaluation protocol (Balestriero & LeCun, 2025): features are the concatenated CLS
tokens of the last two blocks (or mean patch tokens), passed through a LayerNorm and a linear
layer trained with AdamW, weight decay 1e-6, a linear warm-up then cosine decay of the learning
rate. Mini-batch training is deterministic for a seed (its own generator for init and order).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from torch import nn

from eo_jepa.config import Config, bounded


@dataclass
class LinearProbeConfig(Config):
    section: ClassVar[str] = "linear"  # `eval linear` options: --epochs, --lr, --weight-decay

    epochs: int = bounded(100, ge=1)
    lr: float = bounded(1e-3, gt=0)
    weight_decay: float = bounded(1e-6, ge=0)
    batch_size: int = bounded(256, ge=1)
    warmup_epochs: int = bounded(10, ge=0)
    seed: int = bounded(0, ge=0)


def lr_at(step: int, total: int, warmup: int, base_lr: float) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay to ``base_lr / 1000``."""
    if warmup and step < warmup:
        return base_lr * (step + 1) / warmup
    progress = (step - warmup) / max(total - warmup, 1)
    final = base_lr / 1000
    return final + 0.5 * (base_lr - final) * (1 + math.cos(math.pi * min(progress, 1.0)))


def train_linear_probe(
    train_x: np.ndarray,
    train_y: np.ndarray,
    num_classes: int,
    config: LinearProbeConfig | None = None,
    *,
    device: str | torch.device = "cpu",
) -> nn.Sequential:
    """A trained ``LayerNorm → Linear`` head (eval mode, on CPU)."""
    cfg = config or LinearProbeConfig()
    gen = torch.Generator().manual_seed(cfg.seed)
    x = torch.as_tensor(np.asarray(train_x, dtype=np.float32))
    y = torch.as_tensor(np.asarray(train_y, dtype=np.int64))
    dim = x.shape[1]
    head = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, num_classes))
    with torch.no_grad():  # seeded init, independent of the global RNG
        bound = 1 / math.sqrt(dim)
        head[1].weight.copy_(torch.empty(num_classes, dim).uniform_(-bound, bound, generator=gen))
        head[1].bias.zero_()
    head = head.to(device)
    x, y = x.to(device), y.to(device)
    opt = torch.optim.AdamW(head.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = max(math.ceil(len(x) / cfg.batch_size), 1)
    total = cfg.epochs * steps_per_epoch
    warmup = min(cfg.warmup_epochs * steps_per_epoch, total // 2)
    loss_fn = nn.CrossEntropyLoss()
    step = 0
    head.train()
    for _ in range(cfg.epochs):
        order = torch.randperm(len(x), generator=gen).to(device)
        for start in range(0, len(x), cfg.batch_size):
            batch = order[start : start + cfg.batch_size]
            for group in opt.param_groups:
                group["lr"] = lr_at(step, total, warmup, cfg.lr)
            loss = loss_fn(head(x[batch]), y[batch])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
    return head.eval().cpu()


@torch.inference_mode()
def linear_predict(head: nn.Module, x: np.ndarray) -> np.ndarray:
    """Predicted class indices of a trained head."""
    return head(torch.as_tensor(np.asarray(x, dtype=np.float32))).argmax(dim=1).numpy()
