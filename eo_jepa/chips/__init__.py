"""STAC-driven chip datasets: plan a UTM grid, read+mask+harmonise, store, stats, data card.

Public API (imported lazily so ``eo-jepa --help`` stays fast)::

    from eo_jepa.chips import ChipConfig, ChipDataset, build_chips
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from eo_jepa.utils.lazy import lazy_exports

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


__getattr__ = lazy_exports(__name__, _EXPORTS)
