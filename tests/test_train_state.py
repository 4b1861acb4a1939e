"""Training state that cannot be silently corrupted: digests, prev.pt, config checks on resume,
and full disks during checkpoint writes and publish (on a real small filesystem where possible)."""

from __future__ import annotations

import json
import logging
import os
import pickle
import shutil
from pathlib import Path

import pytest
import torch
from disk_full import small_disk
from train_data import make_chip_store

from eo_jepa.errors import CheckpointError, ConfigError, DiskFullError
from eo_jepa.train.checkpointing import load_state, resume_state, save_state, verify_state
from eo_jepa.train.config import load_train_config
from eo_jepa.train.publish import publish
from eo_jepa.train.trainer import run_training

TINY = str(Path(__file__).resolve().parents[1] / "configs" / "train" / "tiny_cpu.yaml")


def _cfg(out: Path, *extra: str):
    return load_train_config(
        TINY, [f"output_dir={out}", "name=run", "checkpoint.every=1", "log.tensorboard=false", *extra]
    )


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    return make_chip_store(tmp_path_factory.mktemp("state") / "store", n_locations=8)


@pytest.fixture(scope="module")
def run(store, tmp_path_factory) -> Path:
    """A 2-step run checkpointed every step: last.pt (step 2) and prev.pt (step 1)."""
    return run_training(_cfg(tmp_path_factory.mktemp("runs"), "max_steps=2"), data=store)


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EO_JEPA_CACHE", str(tmp_path / "cache"))


def _flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    for i in range(len(data) // 2, len(data) // 2 + 64):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def _digests(folder: Path) -> list[dict]:
    return json.loads((folder / "digests.json").read_text())["checkpoints"]


def test_every_checkpoint_is_recorded_and_the_previous_one_kept(tmp_path):
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    for step in (1, 2, 3):
        save_state(folder / "last.pt", {"step": step, "w": torch.full((4,), float(step))})
    save_state(folder / "step_0000003.pt", {"step": 3, "w": torch.full((4,), 3.0)})
    assert sorted(p.name for p in folder.iterdir()) == [
        "digests.json",
        "last.pt",
        "prev.pt",
        "step_0000003.pt",
    ]
    recorded = {e["file"]: e for e in _digests(folder)}
    assert set(recorded) == {"last.pt", "prev.pt", "step_0000003.pt"}  # the step-1 state is forgotten
    assert recorded["last.pt"]["step"] == 3 and recorded["prev.pt"]["step"] == 2
    for name, entry in recorded.items():  # the recorded digest is the file's sha256
        import hashlib

        assert entry["sha256"] == hashlib.sha256((folder / name).read_bytes()).hexdigest()
        assert verify_state(folder / name) == entry["sha256"]
    assert load_state(folder / "prev.pt")["step"] == 2
    _flip(folder / "last.pt")
    with pytest.raises(CheckpointError, match=r"last\.pt' has sha256 .* which digests\.json does not record"):
        load_state(folder / "last.pt")


@pytest.mark.parametrize("dies_at", [1, 2])
def test_a_kill_between_the_renames_leaves_every_file_verifiable(tmp_path, monkeypatch, dies_at):
    """The manifest lists a digest before its file exists and forgets it only after: no window is unsafe."""
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    for step in (1, 2):
        save_state(folder / "last.pt", {"step": step, "w": torch.full((4,), float(step))})
    real, calls = os.replace, []

    def dying_replace(src, dst):
        real(src, dst)
        if Path(dst).name in ("prev.pt", "last.pt"):
            calls.append(dst)
            if len(calls) == dies_at:
                raise KeyboardInterrupt  # stands for SIGKILL right after this rename

    monkeypatch.setattr(os, "replace", dying_replace)
    with pytest.raises(KeyboardInterrupt):
        save_state(folder / "last.pt", {"step": 3, "w": torch.full((4,), 3.0)})
    monkeypatch.setattr(os, "replace", real)
    present = [p for p in ("last.pt", "prev.pt") if (folder / p).exists()]
    assert present == (["prev.pt"] if dies_at == 1 else ["last.pt", "prev.pt"])
    for name in present:
        verify_state(folder / name)
    state = resume_state(folder, {}, "cpu")  # and resuming picks a verified state
    assert state["step"] == (2 if dies_at == 1 else 3)


def test_resume_falls_back_to_prev_when_last_is_corrupt(run, store, tmp_path, caplog):
    out = tmp_path / "runs"
    shutil.copytree(run, out / "run")
    _flip(out / "run" / "checkpoints" / "last.pt")
    with caplog.at_level(logging.WARNING, logger="eo_jepa"):
        run_training(_cfg(out, "max_steps=3"), data=store, resume=True)
    warning = " ".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert "does not record" in warning and "prev.pt (step 1)" in warning
    rows = [json.loads(ln) for ln in (out / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]  # step 2 recomputed from prev.pt, then step 3
    assert load_state(out / "run" / "checkpoints" / "last.pt")["step"] == 3


def test_resume_with_only_safe_changes_logs_them(run, store, tmp_path, caplog):
    out = tmp_path / "runs"
    shutil.copytree(run, out / "run")
    with caplog.at_level(logging.INFO, logger="eo_jepa"):
        run_training(_cfg(out, "max_steps=3", "log.every=2"), data=store, resume=True)
    text = caplog.text
    assert "Resuming with max_steps changed from 2 to 3" in text
    assert "Resuming with log.every changed from 1 to 2" in text
    assert load_state(out / "run" / "checkpoints" / "last.pt")["step"] == 3


def test_resume_with_a_changed_recipe_lists_every_differing_key(run, store, tmp_path):
    out = tmp_path / "runs"
    shutil.copytree(run, out / "run")
    before = (out / "run" / "config.yaml").read_text()
    with pytest.raises(ConfigError) as exc:
        run_training(_cfg(out, "max_steps=2", "optim.lr=0.5", "loss.lam=0.1"), data=store, resume=True)
    msg = str(exc.value)
    assert "loss.lam (0.05 -> 0.1), optim.lr (0.001 -> 0.5) differ from the run's saved config" in msg
    assert "start a new run with another name=" in msg and "\n" not in msg
    assert (out / "run" / "config.yaml").read_text() == before  # nothing rewritten


def test_publish_refuses_a_corrupt_checkpoint_and_names_prev(run, tmp_path):
    shutil.copytree(run, tmp_path / "run")
    _flip(tmp_path / "run" / "checkpoints" / "last.pt")
    with pytest.raises(
        CheckpointError, match=r"does not record.*--resume` continues from checkpoints/prev\.pt"
    ):
        publish(tmp_path / "run", tmp_path / "model")
    assert not (tmp_path / "model").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".model")]


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_an_unsafe_training_state_is_refused_in_one_sentence(tmp_path):
    """Even when digests.json was rewritten to match it, the pickle is never executed."""
    import hashlib

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    folder = tmp_path / "checkpoints"
    folder.mkdir()
    with open(folder / "last.pt", "wb") as fh:
        pickle.dump({"format": "eo-jepa-train-state", "model": Evil()}, fh)
    digest = hashlib.sha256((folder / "last.pt").read_bytes()).hexdigest()
    (folder / "digests.json").write_text(json.dumps({"checkpoints": [{"file": "last.pt", "sha256": digest}]}))
    with pytest.raises(CheckpointError) as exc:
        load_state(folder / "last.pt")
    assert str(exc.value).endswith("refuses to unpickle).") and "\n" not in str(exc.value)
    assert not (tmp_path / "pwned").exists()


def test_disk_full_during_a_checkpoint_keeps_the_previous_one(tmp_path):
    with small_disk(tmp_path, 3 << 20) as disk:
        folder = disk / "checkpoints"
        folder.mkdir()
        save_state(folder / "last.pt", {"step": 1, "w": torch.zeros(256 * 1024)})  # 1 MiB
        with pytest.raises(
            DiskFullError, match=r"Could not write .*\.last\.pt\.new.*disk is full \(4\.0 MiB needed"
        ):
            save_state(folder / "last.pt", {"step": 2, "w": torch.zeros(1024 * 1024)})  # 4 MiB
        assert load_state(folder / "last.pt")["step"] == 1  # still there and verified
        assert sorted(p.name for p in folder.iterdir()) == ["digests.json", "last.pt"]


def test_disk_full_during_publish_leaves_no_model_folder(run, tmp_path):
    with small_disk(tmp_path, 256 * 1024) as disk:  # the tiny ViT's weights are ~2 MiB
        with pytest.raises(DiskFullError, match=r"Could not write .*model\.safetensors.*disk is full"):
            publish(run, disk / "model")
        assert list(disk.iterdir()) == []  # neither a half-written model nor a staging folder


def test_disk_full_during_a_chip_build_is_one_line_exit_2(demo_scenes_tiny, tmp_path, capsys):
    """The chip store's own writers (chunks, index, stats, card) on a disk that fills up mid-build."""
    from eo_jepa.cli import main

    config = Path(TINY).parents[1] / "chips" / "s2_5band_64_demo.yaml"
    with small_disk(tmp_path, 96 * 1024) as disk:
        with pytest.raises(SystemExit) as exc:
            main(["chips", "build", "--aois", str(demo_scenes_tiny.aois_path), "--config", str(config),
                  "--out", str(disk / "chips"), "--stac", str(demo_scenes_tiny.items_path)])  # fmt: skip
        err = capsys.readouterr().err.strip()
    assert exc.value.code == 2, err[-3000:]
    assert "Traceback" not in err
    line = err.splitlines()[-1]
    assert (
        line.startswith("eo-jepa: error: Could not write") and "disk is full" in line
    ) or "No space" in line, line


def test_per_process_batch_may_change_only_with_the_global_batch_kept(tmp_path, monkeypatch):
    """2 processes x 8 chips resumed on 1 x 16 keeps the recipe; 1 x 8 does not (and 2 x 8 -> 1 x 16
    without a recorded world size cannot be told apart from a changed batch, so it is refused)."""
    from eo_jepa.config import to_dict
    from eo_jepa.train.checkpointing import check_resume_config

    saved = to_dict(_cfg(tmp_path, "data.batch_size=8"))
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    check_resume_config(saved, to_dict(_cfg(tmp_path, "data.batch_size=16")), tmp_path, saved_world_size=2)
    with pytest.raises(ConfigError, match=r"global batch of 16 \(2 process\(es\) x data\.batch_size=8 .* has 4 "):
        check_resume_config(saved, to_dict(_cfg(tmp_path, "data.batch_size=4")), tmp_path, saved_world_size=2)
    with pytest.raises(ConfigError, match=r"data\.batch_size \(8 -> 16\)"):
        check_resume_config(saved, to_dict(_cfg(tmp_path, "data.batch_size=16")), tmp_path)
    monkeypatch.setenv("WORLD_SIZE", "4")  # 2 x 8 -> 4 x 4
    check_resume_config(saved, to_dict(_cfg(tmp_path, "data.batch_size=4")), tmp_path, saved_world_size=2)
