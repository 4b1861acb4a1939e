"""LeJEPA pretraining: configs, data and views, the trainer, publishing.

>>> from eo_jepa.train import load_train_config, run_training, publish    # doctest: +SKIP
>>> run = run_training(load_train_config("configs/train/tiny_cpu.yaml"), data="data/demo_chips")
>>> publish(run, "models/tiny")

Heavy modules (torch, timm) load on first use of an attribute.
"""

from __future__ import annotations

from eo_jepa.utils.lazy import lazy_exports

_EXPORTS = {
    "TrainConfig": "eo_jepa.train.config",
    "load_train_config": "eo_jepa.train.config",
    "run_training": "eo_jepa.train.trainer",
    "Trainer": "eo_jepa.train.trainer",
    "LeJEPAModel": "eo_jepa.train.model",
    "publish": "eo_jepa.train.publish",
    "MultiCropViews": "eo_jepa.train.views",
    "RasterFolderDataset": "eo_jepa.train.data",
}

__all__ = sorted(_EXPORTS)


__getattr__ = lazy_exports(__name__, _EXPORTS)
