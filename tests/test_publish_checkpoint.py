"""eo-jepa publish --checkpoint last|STEP|init: the untrained encoder and kept steps are publishable."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from train_data import make_chip_store

from eo_jepa.cli import main
from eo_jepa.train import distributed
from eo_jepa.train.checkpointing import load_state
from eo_jepa.train.config import load_train_config
from eo_jepa.train.trainer import Trainer

TINY = "configs/train/tiny_cpu.yaml"
PREFIX = "encoder.backbone."


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("pubck")
    store = make_chip_store(root / "store", n_locations=16)
    common = [f"output_dir={root}", "log.tensorboard=false", "log.rank_every=0", "seed=3"]
    # what the trainer itself starts from: the encoder's weights as the trainer built its model,
    # taken before the first step
    cfg = load_train_config(TINY, [*common, "name=trained", "max_steps=4", "checkpoint.keep_every=2"])
    trainer = Trainer(cfg, distributed.setup(cfg.device), data=store)
    start = {k: v.detach().clone() for k, v in trainer.model.encoder.backbone.state_dict().items()}
    return trainer.fit(), start


def _cli(*args: str) -> None:
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in args])
    assert exc.value.code == 0


def _published(folder) -> dict[str, torch.Tensor]:
    return load_file(str(next(folder.glob("*.safetensors"))))


def _encoder(ckpt) -> dict[str, torch.Tensor]:
    return {k[len(PREFIX) :]: v for k, v in load_state(ckpt)["model"].items() if k.startswith(PREFIX)}


def test_publish_init_is_the_encoder_training_started_from(runs, tmp_path):
    trained, start = runs
    rng = torch.get_rng_state()
    _cli("publish", trained, "--out", tmp_path / "init", "--checkpoint", "init")
    assert torch.equal(torch.get_rng_state(), rng)  # publishing does not touch the caller's RNG
    got, want = _published(tmp_path / "init"), start
    assert got.keys() == want.keys()
    assert all(torch.equal(got[k], want[k]) for k in want)
    last = _encoder(trained / "checkpoints" / "last.pt")
    assert any(not torch.equal(got[k], last[k]) for k in want)  # and not the trained weights
    config = json.loads((tmp_path / "init" / "config.json").read_text())
    assert config["provenance"]["checkpoint"] == "init" and config["provenance"]["steps"] == 0


def test_publish_a_kept_step(runs, tmp_path):
    trained, _ = runs
    _cli("publish", trained, "--out", tmp_path / "s2", "--checkpoint", "2")
    got, want = _published(tmp_path / "s2"), _encoder(trained / "checkpoints" / "step_0000002.pt")
    assert all(torch.equal(got[k], want[k]) for k in want)
    config = json.loads((tmp_path / "s2" / "config.json").read_text())
    assert config["provenance"]["checkpoint"] == "step_0000002.pt" and config["provenance"]["steps"] == 2


def test_publish_a_step_not_kept_names_the_kept_ones(runs, tmp_path, capsys):
    trained, _ = runs
    with pytest.raises(SystemExit) as exc:
        main(["publish", str(trained), "--out", str(tmp_path / "x"), "--checkpoint", "3"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "has no checkpoints/step_0000003.pt" in err and "a kept step (2, 4)" in err
    assert "Traceback" not in err
