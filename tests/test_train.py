"""The LeJEPA trainer end to end on generated chips: learning, exact resume after SIGKILL,
two gloo processes == one process, continued pretraining from a Meta-format DINOv3 checkpoint."""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from train_data import make_chip_store

from eo_jepa.cli import main
from eo_jepa.errors import CheckpointError, ConfigError
from eo_jepa.train.checkpointing import load_state
from eo_jepa.train.config import load_train_config
from eo_jepa.train.optim import lr_factor

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "train" / "tiny_cpu.yaml"
STEPS = 16
COMMON = [f"max_steps={STEPS}", "checkpoint.every=4"]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", EO_JEPA_NO_PROGRESS="1", PYTHONPATH=str(ROOT))
    return env


def _train_cmd(store: Path, out: Path, name: str, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "eo_jepa", "train", "--config", str(TINY), "--data", str(store),
        f"output_dir={out}", f"name={name}", *COMMON, *extra,
    ]  # fmt: skip


def _losses(run: Path) -> list[float]:
    return [json.loads(ln)["loss"] for ln in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    return make_chip_store(tmp_path_factory.mktemp("chips") / "store")


@pytest.fixture(scope="module")
def reference_run(store, tmp_path_factory) -> Path:
    """The tiny config run uninterrupted for STEPS steps (a subprocess, like the killed run)."""
    out = tmp_path_factory.mktemp("runs")
    proc = subprocess.run(
        _train_cmd(store, out, "ref"), env=_env(), capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out / "ref"


def test_tiny_run_learns_and_keeps_its_records(reference_run):
    rows = [json.loads(ln) for ln in (reference_run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
    losses = np.array([r["loss"] for r in rows])
    assert np.isfinite(losses).all()
    assert losses[-6:].mean() < 0.85 * losses[:3].mean(), losses
    for r in rows:  # the logged total is (1 - λ)·pred + λ·sigreg (λ = 0.05 in the tiny config)
        assert math.isclose(r["loss"], 0.95 * r["pred"] + 0.05 * r["sigreg"], rel_tol=1e-5)
    ranks = [r["effective_rank"] for r in rows if "effective_rank" in r]
    assert len(ranks) == STEPS // 5 + 1
    # RankMe of 16 embeddings: the same run with λ = 0 (no SIGReg) ends near 2.3, collapse is 1.0
    assert ranks[-1] > 3.0, ranks
    cfg = load_train_config(TINY, COMMON)
    for r in rows:  # per-step schedule: lr of step s is lr * factor(s - 1)
        assert math.isclose(r["lr"], cfg.optim.lr * lr_factor(r["step"] - 1, STEPS, 5, 1e-3), rel_tol=1e-9)
    data = json.loads((reference_run / "data.json").read_text())
    assert data["bands"] == ["red", "green", "blue", "nir", "swir16"]
    assert data["data_card_id"].startswith("synthetic-test@sha256:")
    stats = json.loads((reference_run / "norm_stats.json").read_text())
    assert set(stats["bands"]) == set(data["bands"])
    assert (reference_run / "config.yaml").is_file() and (
        reference_run / "loss_curve.png"
    ).stat().st_size > 1000
    assert list((reference_run / "tb").glob("events.out.tfevents.*"))
    state = load_state(reference_run / "checkpoints" / "last.pt")
    assert state["step"] == STEPS and int(state["loss"]["sigreg.step"]) == STEPS
    assert {"python", "numpy", "torch"} <= set(state["rng"])
    assert any(k.startswith("projector.") for k in state["model"])


def test_sigkill_then_resume_reproduces_the_losses_bitwise(store, reference_run, tmp_path):
    cmd = _train_cmd(store, tmp_path, "killed")
    ckpt = tmp_path / "killed" / "checkpoints" / "last.pt"
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 300
        while not ckpt.exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    killed_at = load_state(ckpt)["step"]
    assert 0 < killed_at < STEPS
    resumed = subprocess.run([*cmd, "--resume"], env=_env(), capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert _losses(tmp_path / "killed") == _losses(reference_run)  # exact float equality, every step


def test_resume_refuses_to_overwrite_or_invent(store, reference_run, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(_train_cmd(store, reference_run.parent, "ref")[3:])
    assert exc.value.code == 2
    assert "already has a checkpoint; pass --resume" in capsys.readouterr().err
    with pytest.raises(CheckpointError, match="No training checkpoint"):
        from eo_jepa.train.trainer import run_training

        run_training(load_train_config(TINY, [f"output_dir={tmp_path}", "name=new"]), data=store, resume=True)


def test_bad_config_key_and_value_are_named(store, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["train", "--config", str(TINY), "--data", str(store), "optim.lrr=1e-3"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("eo-jepa: error: Unknown config key 'optim.lrr'") and "Did you mean 'lr'?" in err
    assert "\n" not in err
    with pytest.raises(ConfigError, match=r"dist.strategy.*choose one of: 'ddp', 'fsdp'"):
        load_train_config(TINY, ["dist.strategy=zero"])
    with pytest.raises(ConfigError, match=r"views\.local_scale"):
        load_train_config(TINY, ["views.local_scale=[0.5, 0.1]"])
    with pytest.raises(SystemExit):
        main(["train", "--config", str(TINY), "--data", str(store), "views.local_size=20"])
    err = capsys.readouterr().err
    assert (
        "views.local_size=20 is not a multiple of the patch size 8 of vit_tiny_patch8; use a multiple such as 16"
        in err
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# Gram anchoring on all views with a 2x-upsampled `init` teacher: non-zero from the first step, so its
# gradient is part of the compared update; under FSDP the teacher is sharded too.
GRAM = ["loss.gram.weight=5.0", "loss.gram.views=all", "loss.gram.teacher_upsample=2"]


@pytest.mark.e2e
@pytest.mark.parametrize("extra", [[], GRAM], ids=["lejepa", "gram"])
def test_two_gloo_processes_match_one_process_on_the_whole_batch(store, tmp_path, extra):
    """DDP and FSDP + global-batch SIGReg (+ synced BatchNorm) (+ Gram anchoring): one step on 2x8
    chips == one step on 16."""
    one_step = ["max_steps=1", "log.tensorboard=false", "optim.weight_decay=0.0", *extra]
    single = subprocess.run(
        _train_cmd(store, tmp_path, "single", "data.batch_size=16", *one_step),
        env=_env(), capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert single.returncode == 0, single.stderr[-3000:]
    a = load_state(tmp_path / "single" / "checkpoints" / "last.pt")
    init = _initial_state(store)
    for strategy in ("ddp", "fsdp"):
        cmd = [
            sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
            "--master-port", str(_free_port()), "-m", "eo_jepa",
            *_train_cmd(store, tmp_path, strategy, "data.batch_size=8", f"dist.strategy={strategy}", *one_step)[3:],
        ]  # fmt: skip
        proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        _assert_same_step(a, load_state(tmp_path / strategy / "checkpoints" / "last.pt"), init)
        ra = json.loads((tmp_path / "single" / "metrics.jsonl").read_text())
        rb = json.loads((tmp_path / strategy / "metrics.jsonl").read_text())
        assert math.isclose(ra["sigreg"], rb["sigreg"], rel_tol=1e-4)  # SIGReg of the global batch on rank 0


def _assert_same_step(a: dict, b: dict, init: dict) -> None:
    assert a["model"].keys() == b["model"].keys()
    keys = [k for k, v in a["model"].items() if v.is_floating_point()]
    for k, va in a["model"].items():
        if not va.is_floating_point():
            assert torch.equal(va, b["model"][k]), k
    pa = torch.cat([a["model"][k].flatten() for k in keys])
    pb = torch.cat([b["model"][k].flatten() for k in keys])
    p0 = torch.cat([init[k].flatten() for k in keys])
    rel = float((pa - pb).norm() / pa.norm())
    assert rel < 1e-4, rel
    # the updates themselves agree (AdamW's first step is ~lr·sign(g): a flipped sign shows up here)
    upd = float(((pa - p0) - (pb - p0)).norm() / (pa - p0).norm())
    assert float((pa - p0).abs().max()) > 1e-4  # the step really moved the weights
    assert upd < 0.02, upd


def _initial_state(store: Path) -> dict[str, torch.Tensor]:
    from eo_jepa.train.data import open_source
    from eo_jepa.train.model import build_encoder_for, build_model

    cfg = load_train_config(TINY, [])
    torch.manual_seed(cfg.seed)
    src = open_source(cfg.data, store)
    return build_model(cfg, build_encoder_for(cfg, src)).state_dict()


def test_continued_pretraining_starts_from_meta_dinov3(tmp_path, monkeypatch):
    """model.init = a registered Meta-layout DINOv3 file: the trainer's first forward is the source model's."""
    import dataclasses

    from models_fakes import fake_meta_dinov3, put_in_hf_cache

    from eo_jepa.models import registry
    from eo_jepa.train.data import open_source
    from eo_jepa.train.model import build_encoder_for, raw_unit_stats
    from eo_jepa.train.trainer import run_training

    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    ref, meta = fake_meta_dinov3()
    torch.save(meta, tmp_path / "w.pth")
    put_in_hf_cache(Path(os.environ["HF_HUB_CACHE"]), "test-org/fake-dinov3", "w.pth", tmp_path / "w.pth")
    spec = registry.get_spec("dinov3-vitl16-sat493m")
    registry.register_model(
        dataclasses.replace(
            spec, name="test-dinov3-s", arch=None, converter="meta-dinov3", repo_id="test-org/fake-dinov3",
            repo_type="model", filename="w.pth",
        )
    )  # fmt: skip
    store = make_chip_store(tmp_path / "rgb", n_locations=8, size=32, rgb=True)
    cfg = load_train_config(
        TINY,
        [f"output_dir={tmp_path}", "model.arch=dinov3_vits16_qkvb", "model.init=test-dinov3-s",
         "views.mode=rgb", "max_steps=1", "data.batch_size=8", "log.tensorboard=false"],
    )  # fmt: skip
    src = open_source(cfg.data, store)
    torch.manual_seed(0)
    enc = build_encoder_for(cfg, src)
    # the checkpoint's SAT-493M normalisation is kept (in raw 8-bit units for the views)
    raw_stats = raw_unit_stats(enc)
    assert math.isclose(raw_stats["red"]["mean"], 0.430 * 255, rel_tol=1e-6)
    assert math.isclose(raw_stats["blue"]["std"], 0.143 * 255, rel_tol=1e-6)
    raw = torch.from_numpy(np.stack([src[i]["pixels"] for i in range(2)]))
    x = enc.normalize(raw)
    with torch.no_grad():
        torch.testing.assert_close(enc(x), ref(x), rtol=1e-5, atol=1e-5)
    run = run_training(cfg, data=store)  # and it trains from there
    row = json.loads((run / "metrics.jsonl").read_text())
    assert math.isfinite(row["loss"])


def test_model_init_without_statistics_for_new_bands_normalises_with_the_datasets(store, tmp_path):
    """model.init = an RGB checkpoint, 5-band data: the checkpoint has no statistics for nir/swir16, so
    the trainer's encoder and an init-checkpoint Gram teacher use the dataset's for every band (any
    other error of the checkpoint still stops the run)."""
    from eo_jepa.models import build_encoder, save_encoder
    from eo_jepa.ssl.gram import load_teacher
    from eo_jepa.train.data import open_source
    from eo_jepa.train.model import build_encoder_for

    rgb = ["red", "green", "blue"]
    saved = build_encoder(
        "vit_tiny_patch8", rgb, img_size=32, norm_stats={b: {"mean": 5.0, "std": 7.0} for b in rgb}
    )
    save_encoder(saved, tmp_path / "rgb")
    cfg = load_train_config(TINY, [f"output_dir={tmp_path}", f"model.init={tmp_path / 'rgb'}"])
    src = open_source(cfg.data, store)
    assert set(rgb) < set(src.bands)
    want = {b: {"mean": float(v["mean"]), "std": float(v["std"])} for b, v in src.norm_stats.items()}
    enc = build_encoder_for(cfg, src)
    assert list(enc.bands) == list(src.bands) and enc.norm_stats == want
    teacher = load_teacher(str(tmp_path / "rgb"), enc)
    assert teacher.norm_stats == want
    with pytest.raises(ConfigError, match="initialise"):  # not a statistics problem: no fallback
        build_encoder_for(
            load_train_config(TINY, [f"model.init={tmp_path / 'rgb'}", "model.arch=vit_small_patch8"]), src
        )


def test_a_callback_of_the_user_sees_every_optimiser_step(store, tmp_path):
    """Trainer(callbacks=[...]): start, then each step with the loss and lr metrics.jsonl records, then end."""
    from eo_jepa.train import distributed
    from eo_jepa.train.callbacks import Callback
    from eo_jepa.train.trainer import Trainer

    class Record(Callback):
        def __init__(self) -> None:
            self.calls: list[tuple] = []

        def on_start(self, trainer: Trainer) -> None:
            self.calls.append(("start", trainer.step))

        def after_step(self, trainer: Trainer, out, lr: float) -> None:
            self.calls.append(("step", trainer.step, float(out.loss.detach()), lr))

        def on_end(self, trainer: Trainer) -> None:
            self.calls.append(("end", trainer.step))

    cfg = load_train_config(
        TINY, [f"output_dir={tmp_path}", "max_steps=3", "log.tensorboard=false", "log.rank_every=0"]
    )
    record = Record()
    run = Trainer(cfg, distributed.setup(cfg.device), data=store, callbacks=[record]).fit()
    rows = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    assert record.calls[0] == ("start", 0) and record.calls[-1] == ("end", 3)
    assert [c[1:] for c in record.calls[1:-1]] == [(r["step"], r["loss"], r["lr"]) for r in rows]
    assert len(rows) == 3


def test_multi_date_training_on_a_store_from_the_real_chip_builder(demo_scenes_tiny, tmp_path):
    """Demo COGs -> build_chips (2 dates per location) -> LeJEPA with global views from two dates."""
    from eo_jepa.chips import ChipConfig, ChipDataset, build_chips
    from eo_jepa.config import load_config
    from eo_jepa.train.data import ViewBatchDataset, build_views
    from eo_jepa.train.trainer import run_training

    chip_cfg = load_config(
        ChipConfig, ROOT / "configs" / "chips" / "s2_5band_64_demo.yaml", ["dates_per_location=2"]
    )
    store = tmp_path / "s2"
    build_chips(demo_scenes_tiny.aois_path, chip_cfg, store, stac=str(demo_scenes_tiny.items_path))
    ds = ChipDataset(store, "train")
    multi = [m for m in ds.locations().values() if len(m) > 1]
    assert multi, "the demo build should hold locations with two dates"
    views = ViewBatchDataset(
        ds, build_views(load_train_config(TINY).views, ds, ds.norm_stats), multi_date=True
    )
    i, j = multi[0][:2]
    for index in (i, j):  # the partner date really is another chip of the same location
        assert views._locations[index] == multi[0]
    cfg = load_train_config(
        TINY,
        [f"output_dir={tmp_path}", "data.multi_date=true", "data.batch_size=4", "max_steps=2",
         "log.tensorboard=false"],
    )  # fmt: skip
    run = run_training(cfg, data=store)
    rows = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(math.isfinite(r["loss"]) for r in rows)
    assert json.loads((run / "data.json").read_text())["data_card_id"].startswith("s2-5band-64-demo@sha256:")
