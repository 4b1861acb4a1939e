"""The one encoder interface: a timm backbone plus the bands and normalisation it was trained with.

``enc(enc.normalize(raw))`` turns raw sensor units into one embedding per image. The input policy
is ``model_input = ((raw + input_offset) * input_scale - mean) / std`` per band, with ``mean``/``std``
in the units *after* scaling: DINOv3 RGB weights use ``input_scale = 1/255`` and statistics in
[0, 1]; Sentinel-2 models use ``input_scale = 1`` and statistics in harmonised digital numbers.
Applying the wrong statistics is a silent bug, which is why they travel with every checkpoint.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from eo_jepa.bands import band_info, get_sensor
from eo_jepa.errors import BandMismatchError, ConfigError, DataError, MissingNormStatsError
from eo_jepa.models.vit import create_backbone, get_arch

log = logging.getLogger(__name__)

NormStats = dict[str, dict[str, float]]


def canonical_bands(bands: Sequence[str], sensor: str | None = None) -> tuple[str, ...]:
    """Canonical names for ``bands`` (aliases such as ``B04`` or ``swir1`` resolved), each once."""
    if isinstance(bands, str) or not bands:
        raise BandMismatchError(f"bands must be a non-empty list of band names, got {bands!r}.")
    names = tuple(band_info(b, sensor).name for b in bands)
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise BandMismatchError(f"Band list {list(bands)} repeats {', '.join(dupes)}; give each band once.")
    return names


def clean_norm_stats(stats: Mapping[str, Mapping[str, Any]], bands: Sequence[str]) -> NormStats:
    """``{band: {"mean", "std"}}`` for exactly ``bands`` (extra keys such as p1/p99 dropped)."""
    missing = [b for b in bands if b not in stats]
    if missing:
        raise MissingNormStatsError(
            f"norm_stats has no entry for bands {missing}; give mean/std for every band in {list(bands)} "
            "(e.g. ChipDataset(...).norm_stats)."
        )
    out: NormStats = {}
    for b in bands:
        mean, std = float(stats[b]["mean"]), float(stats[b]["std"])
        if not std > 0:
            raise ConfigError(f"norm_stats std for band {b!r} is {std}; it must be positive.")
        out[b] = {"mean": mean, "std": std}
    return out


class Encoder(nn.Module):
    """A backbone that knows its bands and normalisation.

    Attributes: ``arch``, ``bands`` (ordered canonical names), ``norm_stats`` (band → mean/std),
    ``input_scale``, ``input_offset``, ``sensor``, ``img_size`` (training size; any multiple of
    ``patch_size`` works), ``patch_size``, ``embed_dim``, ``pooling`` ('cls' or 'mean').
    """

    def __init__(
        self,
        backbone: nn.Module,
        *,
        arch: str,
        bands: Sequence[str],
        norm_stats: Mapping[str, Mapping[str, Any]],
        img_size: int,
        input_scale: float = 1.0,
        input_offset: float = 0.0,
        sensor: str | None = None,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.arch = arch
        self.bands = tuple(bands)
        self.norm_stats = clean_norm_stats(norm_stats, self.bands)
        self.img_size = int(img_size)
        self.input_scale = float(input_scale)
        self.input_offset = float(input_offset)
        self.sensor = sensor
        self.patch_size = int(backbone.patch_embed.patch_size[0])
        self.embed_dim = int(backbone.embed_dim)
        self.num_prefix_tokens = int(backbone.num_prefix_tokens)
        self.pooling = "cls" if getattr(backbone, "cls_token", None) is not None else "mean"
        in_chans = int(backbone.patch_embed.proj.weight.shape[1])
        if in_chans != len(self.bands):
            raise BandMismatchError(
                f"Backbone has {in_chans} input channels but {len(self.bands)} bands were given."
            )
        mean = torch.tensor([self.norm_stats[b]["mean"] for b in self.bands], dtype=torch.float32)
        std = torch.tensor([self.norm_stats[b]["std"] for b in self.bands], dtype=torch.float32)
        self.register_buffer("_mean", mean.view(-1, 1, 1), persistent=False)
        self.register_buffer("_std", std.view(-1, 1, 1), persistent=False)

    def extra_repr(self) -> str:
        return f"arch={self.arch}, bands={list(self.bands)}, embed_dim={self.embed_dim}, patch_size={self.patch_size}"

    # -- input ---------------------------------------------------------------------------------
    def normalize(self, raw: Any, *, bands: Sequence[str] | None = None) -> torch.Tensor:
        """Raw sensor units (C,H,W) or (B,C,H,W), tensor or array → float32 model input on the encoder's device.

        ``bands``: the names of ``raw``'s channels when they are not already in ``self.bands`` order;
        the needed bands are then picked by name.
        """
        x = torch.as_tensor(raw)
        if x.ndim not in (3, 4):
            raise DataError(f"normalize expects (C,H,W) or (B,C,H,W) input, got shape {tuple(x.shape)}.")
        if bands is not None:
            have = canonical_bands(bands)
            if len(have) != x.shape[-3]:
                raise BandMismatchError(
                    f"Input has {x.shape[-3]} channels but {len(have)} band names were given."
                )
            missing = [b for b in self.bands if b not in have]
            if missing:
                raise BandMismatchError(
                    f"Input bands {list(have)} lack {missing}; this encoder needs {list(self.bands)}."
                )
            x = x[..., [have.index(b) for b in self.bands], :, :]
        if x.shape[-3] != len(self.bands):
            raise BandMismatchError(
                f"Input has {x.shape[-3]} bands but this encoder expects {len(self.bands)}: "
                f"{list(self.bands)} (in this order)."
            )
        x = x.to(device=self._mean.device, dtype=torch.float32)
        return ((x + self.input_offset) * self.input_scale - self._mean) / self._std

    def _check(self, x: torch.Tensor) -> None:
        if x.ndim != 4 or x.shape[1] != len(self.bands):
            raise BandMismatchError(
                f"Encoder input must be (B, {len(self.bands)}, H, W) for bands {list(self.bands)}; "
                f"got shape {tuple(x.shape)}."
            )
        p = self.patch_size
        if x.shape[-1] % p or x.shape[-2] % p:
            raise DataError(
                f"Input size {tuple(x.shape[-2:])} is not a multiple of the patch size {p}; crop or pad it."
            )

    # -- outputs -------------------------------------------------------------------------------
    def forward_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """All tokens after the final norm, (B, prefix + H/p·W/p, D)."""
        self._check(x)
        return self.backbone.forward_features(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Global embedding (B, D): the class token, or the mean of the normed patch tokens."""
        return self.pool(self.forward_tokens(x))

    def pool(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, prefix + N, D) final tokens -> global embedding (B, D)."""
        if self.pooling == "cls":
            return tokens[:, 0]
        return tokens[:, self.num_prefix_tokens :].mean(1)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Dense features (B, D, H/p, W/p), prefix (class/register) tokens removed."""
        tokens = self.forward_tokens(x)[:, self.num_prefix_tokens :]
        h, w = x.shape[-2] // self.patch_size, x.shape[-1] // self.patch_size
        return tokens.transpose(1, 2).reshape(x.shape[0], self.embed_dim, h, w)

    def forward_intermediate_cls(self, x: torch.Tensor, n: int = 2) -> torch.Tensor:
        """Linear-probe features (B, n·D): per last-n block, after the final norm, the class token
        (DINOv2/v3 protocol) or, without a class token, the mean patch token; concatenated."""
        self._check(x)
        outs = self.backbone.forward_intermediates(
            x, indices=n, return_prefix_tokens=True, norm=True, output_fmt="NLC", intermediates_only=True
        )
        if self.pooling == "cls":
            return torch.cat([prefix[:, 0] for _, prefix in outs], dim=-1)
        return torch.cat([spatial.mean(1) for spatial, _ in outs], dim=-1)

    def forward_probe_features(self, x: torch.Tensor) -> torch.Tensor:
        """Features for the linear-probe protocol: :meth:`forward_intermediate_cls` with ``n=2``."""
        return self.forward_intermediate_cls(x, n=2)

    # -- metadata ------------------------------------------------------------------------------
    def band_records(self) -> list[dict[str, Any]]:
        """Bands with wavelengths/GSD from :mod:`eo_jepa.bands` (None when the catalogue lacks one)."""
        records = []
        for b in self.bands:
            try:
                records.append(band_info(b, self.sensor).to_dict())
            except (BandMismatchError, ConfigError):  # a band outside the catalogue keeps just its name
                records.append({"name": b, "wavelength_nm": None})
        return records


def new_encoder(
    arch: str,
    bands: Sequence[str],
    *,
    img_size: int = 224,
    norm_stats: Mapping[str, Mapping[str, Any]] | None = None,
    patch_size: int | None = None,
    input_scale: float | None = None,
    sensor: str | None = None,
) -> Encoder:
    """A randomly initialised encoder of architecture ``arch`` for ``bands``.

    Without ``norm_stats``, identity statistics (mean 0, std 1) are used and a warning says so (the
    trainer passes the dataset's statistics). Starting from pretrained weights is
    :func:`eo_jepa.models.adapt.adapt_encoder`; :func:`eo_jepa.models.api.build_encoder` picks one.
    """
    if sensor is not None:
        get_sensor(sensor)
    names = canonical_bands(bands, sensor)
    get_arch(arch)
    if norm_stats is None:
        log.warning("No norm_stats given for %s: using mean 0, std 1 (identity).", list(names))
        norm_stats = {b: {"mean": 0.0, "std": 1.0} for b in names}
    stats = clean_norm_stats(norm_stats, names)
    return Encoder(
        create_backbone(arch, len(names), img_size, patch_size=patch_size),
        arch=arch,
        bands=names,
        norm_stats=stats,
        img_size=img_size,
        input_scale=1.0 if input_scale is None else input_scale,
        sensor=sensor,
    )
