"""eo-jepa: Earth-observation foundation models with LeJEPA.

Public entry points:

- :func:`load` — an encoder by registry name, ``hf://org/repo[@rev]`` or local path.
- :func:`list_models` — the built-in and user-registered model names.
- ``__version__``.

Heavy modules (torch, timm) are imported lazily so ``eo-jepa --help`` stays fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from eo_jepa._version import __version__

if TYPE_CHECKING:  # pragma: no cover
    from eo_jepa.models.encoder import Encoder

__all__ = ["__version__", "list_models", "load"]


def load(
    name_or_path: str,
    *,
    device: Any = None,
    revision: str | None = None,
    cache_dir: str | None = None,
    norm: str | dict[str, dict[str, float]] | None = None,
    bands: list[str] | tuple[str, ...] | None = None,
    arch: str | None = None,
    input_scale: float | None = None,
    img_size: int | None = None,
) -> Encoder:
    """Load an encoder by registry name, ``hf://org/repo[@revision]``, or a local folder/file.

    The returned :class:`~eo_jepa.models.encoder.Encoder` knows its band order and
    normalisation: ``enc(enc.normalize(raw))`` gives embeddings from raw sensor units. A foreign
    checkpoint file that carries no normalisation (Meta DINOv3 / Core-JEPA ``.pth``, timm state
    dicts) is described by the caller: ``eo_jepa.load("dinov3_sat.pth", norm="sat493m")``, or
    ``norm={band: {"mean": m, "std": s}}`` with ``bands=[...]``, ``arch=...``. A registered model
    whose file is in the Hugging Face cache loads without any network call.
    """
    from eo_jepa.models.registry import load as _load

    return _load(
        name_or_path, device=device, revision=revision, cache_dir=cache_dir, norm=norm, bands=bands,
        arch=arch, input_scale=input_scale, img_size=img_size,
    )  # fmt: skip


def list_models() -> list[dict[str, Any]]:
    """Registered model names with description, bands, architecture, source and licence."""
    from eo_jepa.models.registry import list_models as _list_models

    return _list_models()
