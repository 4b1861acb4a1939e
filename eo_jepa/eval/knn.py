"""Weighted k-nearest-neighbour classifier on frozen features (the DINO/LeJEPA kNN protocol).

Features are L2-normalised; each test sample takes its ``k`` most cosine-similar training
samples and each neighbour votes for its class with weight ``exp(similarity / T)``
(Wu et al. 2018; Caron et al. 2021, DINO: k=20, T=0.07). The class with the largest summed
vote wins.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from eo_jepa.config import Config, bounded

DEFAULT_K = 20
DEFAULT_TEMPERATURE = 0.07


@dataclass
class KnnProbeConfig(Config):
    """The kNN vote's two knobs, range-checked like every config (``eval knn --k / --temperature``)."""

    section: ClassVar[str] = "knn"

    k: int = bounded(DEFAULT_K, ge=1)
    # Votes are exp(cos / T) in float32, which overflows for 1 / T > 88.7 (T < 0.0113): from 0.02 up.
    temperature: float = bounded(DEFAULT_TEMPERATURE, ge=0.02)


@torch.inference_mode()
def knn_predict(
    train_x: np.ndarray,
    train_y: np.ndarray,
    test_x: np.ndarray,
    *,
    k: int = DEFAULT_K,
    temperature: float = DEFAULT_TEMPERATURE,
    num_classes: int | None = None,
    chunk: int = 1024,
) -> np.ndarray:
    """Predicted class indices (int64) for ``test_x`` given integer labels ``train_y`` (0..C-1).

    ``k`` and ``temperature`` outside :class:`KnnProbeConfig`'s ranges are a :class:`ConfigError`.
    """
    KnnProbeConfig(k=k, temperature=temperature)  # range checks
    if len(train_x) == 0:
        raise ValueError("kNN needs at least one training sample")
    train = F.normalize(torch.as_tensor(np.asarray(train_x, dtype=np.float32)), dim=1)
    test = F.normalize(torch.as_tensor(np.asarray(test_x, dtype=np.float32)), dim=1)
    labels = torch.as_tensor(np.asarray(train_y, dtype=np.int64))
    n_cls = int(num_classes if num_classes is not None else labels.max().item() + 1)
    k = min(k, len(train))
    preds = []
    for start in range(0, len(test), chunk):
        sims, idx = (test[start : start + chunk] @ train.T).topk(k, dim=1)
        weights = (sims / temperature).exp()
        votes = torch.zeros(len(sims), n_cls).scatter_add_(1, labels[idx], weights)
        preds.append(votes.argmax(dim=1))
    return torch.cat(preds).numpy() if preds else np.zeros(0, dtype=np.int64)
