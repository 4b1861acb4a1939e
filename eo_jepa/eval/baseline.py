"""A fixed random-projection encoder: the floor every pretrained encoder should beat.

Each ``p × p`` patch of the normalised image is projected by a fixed Gaussian matrix (seeded)
followed by a ReLU, as in random-feature baselines for remote sensing (e.g. Rolf et al. 2021,
MOSAIKS). It has the attributes and methods of :class:`eo_jepa.models.Encoder` that the
evaluation code uses (``bands``, ``norm_stats``, ``embed_dim``, ``patch_size``, ``img_size``,
``arch``, ``normalize``, ``forward``, ``forward_features``), so probes, PCA and change maps can
report it side by side with a trained model.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from eo_jepa.errors import BandMismatchError


class RandomProjectionEncoder(nn.Module):
    def __init__(
        self,
        bands: Sequence[str],
        *,
        patch_size: int = 8,
        embed_dim: int = 64,
        img_size: int = 64,
        norm_stats: Mapping[str, Mapping[str, float]] | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.bands = tuple(bands)
        self.patch_size = patch_size
        self.embed_dim = embed_dim
        self.img_size = img_size
        self.arch = f"random_projection_p{patch_size}_d{embed_dim}"
        self.norm_stats = {
            b: {
                "mean": float((norm_stats or {}).get(b, {}).get("mean", 0.0)),
                "std": float((norm_stats or {}).get(b, {}).get("std", 1.0)),
            }
            for b in self.bands
        }
        gen = torch.Generator().manual_seed(seed)
        c = len(self.bands)
        weight = torch.randn(embed_dim, c, patch_size, patch_size, generator=gen) / (c * patch_size**2) ** 0.5
        self.register_buffer("weight", weight)
        self.register_buffer("bias", torch.randn(embed_dim, generator=gen) * 0.1)
        self.register_buffer(
            "mean", torch.tensor([self.norm_stats[b]["mean"] for b in self.bands]).view(1, c, 1, 1)
        )
        self.register_buffer(
            "std", torch.tensor([self.norm_stats[b]["std"] for b in self.bands]).view(1, c, 1, 1)
        )

    def normalize(self, raw: torch.Tensor) -> torch.Tensor:
        if raw.ndim != 4 or raw.shape[1] != len(self.bands):
            raise BandMismatchError(
                f"Input has {raw.shape[1] if raw.ndim == 4 else 'no'} channels but the encoder expects "
                f"{len(self.bands)} bands {list(self.bands)}."
            )
        return (raw.float() - self.mean) / self.std

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(
            nn.functional.conv2d(x, self.weight.to(x.dtype), self.bias.to(x.dtype), stride=self.patch_size)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x).mean(dim=(2, 3))
