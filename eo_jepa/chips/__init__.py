"""STAC-driven chip datasets: plan a UTM grid, read+mask+harmonise, store, stats, data card.

Public API (imported lazily so ``eo-jepa --help`` stays fast)::

    from eo_jepa.chips import ChipConfig, ChipDataset, build_chips
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from eo_jepa.chips.aois import Aoi, load_aois
    from eo_jepa.chips.build import BuildReport, build_chips
    from eo_jepa.chips.config import AoiConfig, ChipConfig, StacConfig
    from eo_jepa.chips.dataset import ChipDataset

_EXPORTS = {
    "Aoi": "eo_jepa.chips.aois",
    "load_aois": "eo_jepa.chips.aois",
    "BuildReport": "eo_jepa.chips.build",
    "build_chips": "eo_jepa.chips.build",
    "AoiConfig": "eo_jepa.chips.config",
    "ChipConfig": "eo_jepa.chips.config",
    "StacConfig": "eo_jepa.chips.config",
    "ChipDataset": "eo_jepa.chips.dataset",
}

__all__ = [
    "Aoi",
    "AoiConfig",
    "BuildReport",
    "ChipConfig",
    "ChipDataset",
    "StacConfig",
    "build_chips",
    "load_aois",
]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'eo_jepa.chips' has no attribute {name!r}")
