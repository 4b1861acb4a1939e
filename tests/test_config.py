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


# ---- One validation layer: Config.__post_init__ checks ranges and shapes, however a config is built ----


def _config_classes():
    """Every config dataclass reachable from the toolkit's top-level configs."""
    import dataclasses
    import typing

    from eo_jepa.chips.config import ChipConfig
    from eo_jepa.eval.linear import LinearProbeConfig
    from eo_jepa.train.config import TrainConfig

    seen, todo = [], [TrainConfig, ChipConfig, LinearProbeConfig]
    while todo:
        cls = todo.pop()
        if cls in seen:
            continue
        seen.append(cls)
        for tp in typing.get_type_hints(cls).values():
            if dataclasses.is_dataclass(tp):
                todo.append(tp)
    return seen


def test_every_numeric_key_declares_its_range():
    """A new int/float key must say what is allowed: ``bounded(default, ge=..., le=...)``."""
    import dataclasses
    import typing

    from eo_jepa.config import RANGE, Config

    missing = []
    for cls in _config_classes():
        assert issubclass(cls, Config), f"{cls.__name__} must derive from eo_jepa.config.Config"
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            tp = hints[f.name]
            leaves = {tp} | set(typing.get_args(tp))  # int, int | None, tuple[float, float], list[int]
            leaves |= {a for t in list(leaves) for a in typing.get_args(t)}
            numeric = typing.get_origin(tp) is not dict and bool(leaves & {int, float})
            if numeric and RANGE not in f.metadata:
                missing.append(f"{cls.__name__}.{f.name}")
    assert not missing, f"declare a range with eo_jepa.config.bounded(...) for: {', '.join(missing)}"


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("checkpoint.every=0", "Invalid value 0 for 'checkpoint.every'; allowed: an integer >= 1."),
        ("log.every=0", "Invalid value 0 for 'log.every'; allowed: an integer >= 1."),
        ("data.batch_size=0", "Invalid value 0 for 'data.batch_size'; allowed: an integer >= 1."),
        ("loss.num_slices=0", "Invalid value 0 for 'loss.num_slices'; allowed: an integer >= 1."),
        ("loss.lam=2", "Invalid value 2.0 for 'loss.lam'; allowed: a finite number in [0, 1]."),
        ("model.proj_layers=0", "Invalid value 0 for 'model.proj_layers'; allowed: an integer >= 1."),
        ("max_steps=-5", "Invalid value -5 for 'max_steps'; allowed: an integer >= 1."),
        ("optim.lr=.nan", "Invalid value nan for 'optim.lr'; allowed: a finite number > 0."),
        ("optim.betas=[0.9, 1.0]", "Invalid value [0.9, 1.0] for 'optim.betas'; allowed: a finite number in [0, 1) for each item."),
        ("name=..", "Invalid value '..' for 'name'; allowed: a single folder name"),
        ("name=a/b", "Invalid value 'a/b' for 'name'; allowed: a single folder name"),
        ("output_dir=''", "Invalid value '' for 'output_dir'; allowed: a non-empty path."),
    ],
)  # fmt: skip
def test_train_values_outside_their_range_are_one_sentence(override, message):
    from eo_jepa.train.config import load_train_config

    with pytest.raises(ConfigError) as exc:
        load_train_config("configs/train/tiny_cpu.yaml", [override])
    assert str(exc.value).startswith(message) and "\n" not in str(exc.value)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("chip_size=.nan", "Invalid value nan for 'chip_size'; allowed: an integer >= 1."),
        ("chip_size=.inf", "Invalid value inf for 'chip_size'; allowed: an integer >= 1."),
        ("gsd_m=.nan", "Invalid value nan for 'gsd_m'; allowed: a finite number > 0."),
        ("gsd_m=-.inf", "Invalid value -inf for 'gsd_m'; allowed: a finite number > 0."),
        ("stac.timeout_s=0", "Invalid value 0.0 for 'stac.timeout_s'; allowed: a finite number > 0."),
        ("mask_classes=[3, 300]", "Invalid value [3, 300] for 'mask_classes'; allowed: an integer in [0, 255] for each item."),
        ("aoi.point_buffer_m=.nan", "Invalid value nan for 'aoi.point_buffer_m'; allowed: a finite number > 0."),
        ("name=../up", "Invalid value '../up' for 'name'; allowed: a single folder name"),
    ],
)  # fmt: skip
def test_chip_values_outside_their_range_are_one_sentence(override, message):
    from eo_jepa.chips.config import ChipConfig

    with pytest.raises(ConfigError) as exc:
        load_config(ChipConfig, None, [override])
    assert str(exc.value).startswith(message)


def test_configs_built_in_python_are_checked_like_yaml():
    from eo_jepa.chips.config import ChipConfig, StacConfig
    from eo_jepa.eval.linear import LinearProbeConfig
    from eo_jepa.train.config import CheckpointConfig, DataConfig, TrainConfig

    with pytest.raises(ConfigError, match=r"Invalid value 0 for 'data\.batch_size'"):
        TrainConfig(data=DataConfig(batch_size=0))
    with pytest.raises(ConfigError, match=r"Invalid value 0 for 'checkpoint\.every'"):
        CheckpointConfig(every=0)
    with pytest.raises(ConfigError, match=r"Invalid value '\.\.' for 'name'"):
        TrainConfig(name="..")
    with pytest.raises(ConfigError, match=r"Invalid value nan for 'stac\.backoff_s'"):
        ChipConfig(stac=StacConfig(backoff_s=float("nan")))
    with pytest.raises(ConfigError, match=r"Invalid value -1 for 'linear\.epochs'"):
        LinearProbeConfig(epochs=-1)
    from pathlib import Path

    assert TrainConfig(output_dir=Path("runs") / "x").output_dir == str(Path("runs") / "x")  # coerced
