"""The public model API: get an encoder by name, or build one for your bands.

The top of :mod:`eo_jepa.models`, whose modules depend one way: architectures (``vit``,
``dinov3``) and the name table (``registry``) → ``encoder`` → ``checkpoint``, ``convert``,
``adapt`` → ``resolve`` (names to checkpoints to encoders) → ``api``.

- :func:`load` — an encoder by registry name, ``hf://org/repo[@rev]`` or local path
  (:mod:`eo_jepa.models.resolve`);
- :func:`build_encoder` — a new encoder for given bands, random or initialised from a pretrained
  model named like :func:`load` does;
- :func:`list_models` / :func:`register_model` — the names :func:`load` knows.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from eo_jepa.bands import get_sensor
from eo_jepa.errors import ConfigError
from eo_jepa.models.adapt import adapt_encoder
from eo_jepa.models.encoder import Encoder, canonical_bands, new_encoder
from eo_jepa.models.registry import list_models, register_model
from eo_jepa.models.resolve import load

__all__ = ["build_encoder", "list_models", "load", "register_model"]


def build_encoder(
    arch: str | None,
    bands: Sequence[str],
    *,
    img_size: int = 224,
    norm_stats: Mapping[str, Mapping[str, Any]] | None = None,
    pretrained: str | None = None,
    patch_size: int | None = None,
    input_scale: float | None = None,
    sensor: str | None = None,
) -> Encoder:
    """A new encoder for ``bands``; random weights, or ``pretrained`` (registry name or path) adapted to them.

    Adaptation is by band name (see :mod:`eo_jepa.models.adapt`); a different ``patch_size``
    resamples the patch kernels. ``arch=None`` keeps the pretrained architecture. Without
    ``norm_stats`` the pretrained statistics are kept for bands it has (an error for new bands),
    or identity statistics are used for a model trained from scratch (the trainer passes the
    dataset's statistics).
    """
    if sensor is not None:  # a bad sensor or band name fails before anything is downloaded
        get_sensor(sensor)
    canonical_bands(bands, sensor)
    if pretrained is not None:
        return adapt_encoder(
            load(pretrained), bands, arch=arch, img_size=img_size, norm_stats=norm_stats,
            patch_size=patch_size, input_scale=input_scale, sensor=sensor, label=pretrained,
        )  # fmt: skip
    if arch is None:
        raise ConfigError("build_encoder needs an arch when no pretrained model is given.")
    return new_encoder(
        arch, bands, img_size=img_size, norm_stats=norm_stats, patch_size=patch_size,
        input_scale=input_scale, sensor=sensor,
    )  # fmt: skip
