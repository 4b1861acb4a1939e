"""eo-jepa: Earth-observation foundation models with LeJEPA.

Public entry points (defined in :mod:`eo_jepa.models.api`):

- :func:`load` — an encoder by registry name, ``hf://org/repo[@rev]`` or local path. The returned
  :class:`~eo_jepa.models.encoder.Encoder` knows its band order and normalisation:
  ``enc(enc.normalize(raw))`` gives embeddings from raw sensor units. A foreign checkpoint file
  that carries no normalisation (Meta DINOv3 / Core-JEPA ``.pth``, timm state dicts) is described
  by the caller: ``eo_jepa.load("dinov3_sat.pth", norm="sat493m")``.
- :func:`build_encoder` — a new encoder for given bands, random or adapted from a pretrained one.
- :func:`list_models` — the built-in and user-registered model names.
- ``__version__``.

Heavy modules (torch, timm) are imported on first use of an attribute (PEP 562), so
``import eo_jepa`` and ``eo-jepa --help`` stay fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from eo_jepa._version import __version__
from eo_jepa.utils.lazy import lazy_exports

if TYPE_CHECKING:  # pragma: no cover
    from eo_jepa.models.api import build_encoder, list_models, load

__all__ = ["__version__", "build_encoder", "list_models", "load"]

_EXPORTS = {
    "build_encoder": "eo_jepa.models.api",
    "list_models": "eo_jepa.models.api",
    "load": "eo_jepa.models.api",
}

__getattr__ = lazy_exports(__name__, _EXPORTS)
