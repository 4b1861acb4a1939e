"""Typed configs: YAML + overrides, unknown keys and bad choices name the valid ones."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import pytest

from eo_jepa.config import apply_overrides, load_config, to_dict
from eo_jepa.errors import ConfigError


@dataclass
class Optim:
    lr: float = 5e-4
    weight_decay: float = 0.05
    schedule: Literal["cosine", "constant"] = "cosine"


@dataclass
class Cfg:
    name: str = "run"
    steps: int = 10
    bands: list[str] = field(default_factory=lambda: ["red", "green"])
    crop: tuple[float, float] = (0.3, 1.0)
    optim: Optim = field(default_factory=Optim)
    resume: bool = False
    data: str | None = None


def test_yaml_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("name: a\nsteps: 3\noptim:\n  lr: 0.001\n")
    cfg = load_config(Cfg, path, ["optim.schedule=constant", "bands=[nir]", "crop=[0.5, 1]", "resume=true"])
    assert cfg.name == "a" and cfg.steps == 3
    assert cfg.optim.lr == pytest.approx(1e-3)
    assert cfg.optim.schedule == "constant"
    assert cfg.bands == ["nir"]
    assert cfg.crop == (0.5, 1.0)
    assert cfg.resume is True
    assert to_dict(cfg)["crop"] == [0.5, 1.0]


def test_unknown_key_lists_valid_keys_and_closest():
    with pytest.raises(ConfigError) as exc:
        load_config(Cfg, None, ["optim.lrr=1"])
    msg = str(exc.value)
    assert "'optim.lrr'" in msg and "lr, schedule, weight_decay" in msg and "Did you mean 'lr'" in msg


def test_bad_choice_names_choices():
    with pytest.raises(ConfigError, match=r"choose one of: 'cosine', 'constant'"):
        load_config(Cfg, None, ["optim.schedule=linear"])


def test_bad_types():
    with pytest.raises(ConfigError, match="'steps' must be an integer"):
        load_config(Cfg, None, ["steps=1.5"])
    with pytest.raises(ConfigError, match="'resume' must be true or false"):
        load_config(Cfg, None, ["resume=3"])
    with pytest.raises(ConfigError, match="key=value"):
        apply_overrides({}, ["steps"])


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(Cfg, tmp_path / "nope.yaml")
