"""The shipped from-scratch RGB tile configs resolve to a valid recipe (both sizes) and train a step."""

from __future__ import annotations

from pathlib import Path

import pytest
from train_data import make_chip_store

from eo_jepa.models.vit import get_arch
from eo_jepa.train.config import load_train_config

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ["vits16_rgb_tiles.yaml", "vits16_rgb_tiles_cpu.yaml"]


@pytest.mark.parametrize("name", CONFIGS)
def test_rgb_tile_config_is_a_valid_from_scratch_rgb_recipe(name):
    cfg = load_train_config(ROOT / "configs" / "train" / name)
    spec = get_arch(cfg.model.arch)
    assert cfg.model.init is None and cfg.data.bands == ["red", "green", "blue"]
    assert cfg.views.mode == "rgb" and cfg.data.sensor == "rgb"
    for size in (cfg.views.global_size, cfg.views.local_size, cfg.model.img_size):
        assert size % spec.patch_size == 0, (name, size)
    assert cfg.log.rank_every > 0  # probe-set health is on


def test_cpu_rgb_config_trains_on_an_rgb_chip_store(tmp_path):
    from eo_jepa.train.health import health_rows
    from eo_jepa.train.trainer import run_training

    store = make_chip_store(tmp_path / "store", n_locations=16, size=64, rgb=True)
    cfg = load_train_config(
        ROOT / "configs" / "train" / CONFIGS[1],
        [
            f"output_dir={tmp_path}", "max_steps=2", "data.kind=chips", "data.band_map={}",
            "data.batch_size=8", "data.num_workers=0", "log.tensorboard=false", "log.health_samples=16",
        ],
    )  # fmt: skip
    run = run_training(cfg, data=store)
    assert [r["step"] for r in health_rows(run)] == [0, 2]
