"""eo-jepa publish: run -> checkpoint folder (+ legacy .pt) -> eo_jepa.load gives the trained encoder back."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from train_data import make_chip_store

import eo_jepa
from eo_jepa.cli import main
from eo_jepa.errors import CheckpointError
from eo_jepa.train.checkpointing import load_state
from eo_jepa.train.config import load_train_config
from eo_jepa.train.data import open_source
from eo_jepa.train.model import build_encoder_for, build_model
from eo_jepa.train.publish import publish
from eo_jepa.train.trainer import run_training

TINY = "configs/train/tiny_cpu.yaml"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("pub")
    store = make_chip_store(root / "store", n_locations=16)
    cfg = load_train_config(TINY, [f"output_dir={root}", "name=pub", "max_steps=3", "log.tensorboard=false"])
    return run_training(cfg, data=store), store, cfg


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EO_JEPA_CACHE", str(tmp_path / "eo-jepa-cache"))


def _trained_encoder(run_dir, store, cfg):
    """The encoder as the trainer held it: rebuilt and loaded from the full training state."""
    src = open_source(cfg.data, store)
    model = build_model(cfg, build_encoder_for(cfg, src))
    model.load_state_dict(load_state(run_dir / "checkpoints" / "last.pt")["model"])
    return model.encoder.eval(), src


def test_publish_then_load_gives_the_same_embeddings(run, tmp_path):
    run_dir, store, cfg = run
    out = publish(run_dir, tmp_path / "model", fmt="legacy-pt")
    trained, src = _trained_encoder(run_dir, store, cfg)
    raw = torch.from_numpy(np.stack([src[i]["pixels"] for i in range(4)]))
    loaded = eo_jepa.load(str(out))
    assert loaded.bands == src.bands and loaded.arch == "vit_tiny_patch8"
    for b in src.bands:  # the training data's statistics travel with the encoder
        assert loaded.norm_stats[b]["mean"] == pytest.approx(src.norm_stats[b]["mean"], rel=1e-9)
        assert loaded.norm_stats[b]["std"] == pytest.approx(src.norm_stats[b]["std"], rel=1e-9)
    mean = torch.tensor([src.norm_stats[b]["mean"] for b in src.bands]).view(1, -1, 1, 1)
    std = torch.tensor([src.norm_stats[b]["std"] for b in src.bands]).view(1, -1, 1, 1)
    torch.testing.assert_close(loaded.normalize(raw), (raw - mean) / std)
    with torch.no_grad():
        expected = trained(trained.normalize(raw))
        torch.testing.assert_close(loaded(loaded.normalize(raw)), expected, rtol=1e-5, atol=1e-5)
        legacy = eo_jepa.load(str(out / "model.pt"))
        assert legacy.bands == src.bands
        torch.testing.assert_close(legacy(legacy.normalize(raw)), expected, rtol=1e-5, atol=1e-5)
    with safe_open(str(out / "model.safetensors"), "pt") as fh:  # the projector is not exported
        assert not any("projector" in k for k in fh.keys())  # noqa: SIM118 - safe_open is not a dict
    config = json.loads((out / "config.json").read_text())
    prov = config["provenance"]
    assert prov["data_card_id"].startswith("synthetic-test@sha256:") and prov["steps"] == 3
    assert config["training_config"]["loss"]["lam"] == 0.05
    card = (out / "README.md").read_text()
    assert "loss_curve.png" in card and (out / "loss_curve.png").stat().st_size > 1000
    assert "no teacher, no EMA, no stop-gradient" in card


def test_publish_uploads_with_the_private_flag(run, tmp_path, monkeypatch, capsys):
    """Only the Hub boundary is replaced: create_repo + upload_folder are recorded, not sent."""
    from huggingface_hub import HfApi

    calls = []

    def create_repo(self, repo_id, **kw):
        calls.append(("create_repo", repo_id, kw, self.token))

    def upload_folder(self, **kw):
        calls.append(
            ("upload_folder", kw["repo_id"], kw, sorted(p.name for p in Path(kw["folder_path"]).iterdir()))
        )
        return "https://huggingface.co/me/tiny/commit/abc"

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    monkeypatch.setenv("HF_TOKEN", "hf_from_env")
    run_dir = run[0]
    with pytest.raises(SystemExit) as exc:
        main(["publish", str(run_dir), "--out", str(tmp_path / "up"), "--repo-id", "me/tiny", "--private"])
    assert exc.value.code == 0
    assert calls[0][:2] == ("create_repo", "me/tiny") and calls[0][2]["private"] is True
    assert calls[0][3] == "hf_from_env"
    assert calls[1][0] == "upload_folder" and calls[1][2]["folder_path"] == str(tmp_path / "up")
    assert {"config.json", "model.safetensors", "README.md"} <= set(calls[1][3])
    assert "model.pt" not in calls[1][3]  # --format ours by default


def test_publish_errors_name_the_problem(run, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["publish", str(run[0]), "--out", str(tmp_path / "x"), "--format", "onnx"])
    assert exc.value.code == 2
    assert "Unknown --format 'onnx'; choose one of: ours, legacy-pt." in capsys.readouterr().err
    with pytest.raises(CheckpointError, match=r"has no checkpoints/last\.pt"):
        publish(tmp_path, tmp_path / "y")
