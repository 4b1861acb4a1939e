"""The offline quickstart end to end at its reduced size, and its resume / fresh / error behaviour."""

from __future__ import annotations

import json
import math
import re
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from eo_jepa.demo.quickstart import STATE_FILE, STEPS, run_quickstart
from eo_jepa.errors import ConfigError, DataError


def _cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "eo_jepa", *args], capture_output=True, text=True, timeout=timeout
    )


def shared_tiny_quickstart_dir(tmp_path_factory) -> Path:
    """One folder per test session, shared with test_notebooks.py (the quickstart resumes, so
    whichever module comes second reuses what the first one built)."""
    return tmp_path_factory.getbasetemp() / "tiny-quickstart"


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory):
    """A tiny quickstart through the real command line (the README's main-job command)."""
    out = shared_tiny_quickstart_dir(tmp_path_factory)
    t0 = time.perf_counter()
    proc = _cli("quickstart", "--out", str(out), "--size", "tiny")
    seconds = time.perf_counter() - t0
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {"out": out, "stdout": proc.stdout, "stderr": proc.stderr, "seconds": seconds}


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])


def test_progress_and_summary_printed(quickstart):
    err, out = quickstart["stderr"], quickstart["stdout"]
    for i, (_, title) in enumerate(STEPS, start=1):
        assert f"[{i}/{len(STEPS)}] {title}" in err  # progress, one line per step
    untrained = re.search(r"untrained encoder :\s+([0-9.]+)\s+([0-9.]+)", out)
    pretrained = re.search(r"pretrained encoder:\s+([0-9.]+)\s+([0-9.]+)", out)
    assert untrained and pretrained, out
    # The summary names every output and they exist.
    for label in ("chip dataset", "data card", "checkpoint", "loss curve", "PCA feature map"):
        line = next(ln for ln in out.splitlines() if ln.strip().startswith(label))
        assert Path(line.split(None, len(label.split()))[-1]).exists(), line
    assert (quickstart["out"] / "summary.md").read_text().count("kNN accuracy") == 1


def test_pretrained_beats_untrained_on_knn(quickstart):
    state = json.loads((quickstart["out"] / STATE_FILE).read_text())
    ev = state["steps"]["evaluate"]["outputs"]
    knn = json.loads(Path(ev["knn_json"]).read_text())
    assert ev["n_test"] >= 20 and ev["n_train"] >= 20
    assert len(ev["classes"]) == 5
    assert 0.0 <= ev["knn_untrained"] <= 1.0
    # The pretrained encoder must beat the very same network before training (few labelled
    # reference chips per class, mean of the same seeded draws for both).
    assert ev["knn_pretrained"] > ev["knn_untrained"], knn
    assert ev["knn_pretrained"] == knn["pretrained"]["accuracy"]
    assert knn["pretrained"]["shots"] == ev["shots"] == 5
    assert len(knn["pretrained"]["fewshot_draws"]) == 10
    assert 0.0 <= ev["knn_full_untrained"] <= 1.0 and 0.0 <= ev["knn_full_pretrained"] <= 1.0
    # The printed numbers are the recorded ones.
    printed = re.search(r"pretrained encoder:\s+([0-9.]+)\s+([0-9.]+)", quickstart["stdout"])
    assert printed.groups() == (f"{ev['knn_pretrained']:.3f}", f"{ev['knn_full_pretrained']:.3f}")


def test_chip_dataset_card_and_stats_are_sane(quickstart):
    from eo_jepa.chips.card import read_front_matter
    from eo_jepa.chips.dataset import ChipDataset

    chips = quickstart["out"] / "chips"
    card = (chips / "data_card.md").read_text()
    meta = read_front_matter(card)
    assert meta, "the data card has no front matter"
    stats = json.loads((chips / "norm_stats.json").read_text())
    assert stats["band_order"] == ["red", "green", "blue", "nir", "swir16"]
    ds = ChipDataset(chips)
    assert len(ds) > 0
    items = [ds[i] for i in range(min(len(ds), 40))]
    pixels = np.stack([it["pixels"] for it in items])
    valid = np.stack([it["valid"] for it in items])
    for c, band in enumerate(stats["band_order"]):
        s = stats["bands"][band]
        assert all(math.isfinite(s[k]) for k in ("mean", "std", "p1", "p99"))
        assert s["std"] > 0
        assert s["p1"] <= s["mean"] <= s["p99"]
        # Harmonised reflectance x 10000: no +1000 offset left, nothing absurd.
        assert 0 <= s["min"] <= s["p1"] and s["p99"] <= s["max"] <= 20000
        # The statistics cover valid pixels (clouds excluded): every valid pixel lies within min..max.
        values = pixels[:, c][valid]
        assert values.min() >= s["min"] and values.max() <= s["max"]


def test_checkpoint_loads_and_embeds(quickstart):
    import torch

    import eo_jepa
    from eo_jepa.chips.dataset import ChipDataset

    state = json.loads((quickstart["out"] / STATE_FILE).read_text())
    model_dir = state["steps"]["publish"]["outputs"]["model_dir"]
    enc = eo_jepa.load(model_dir)
    ds = ChipDataset(quickstart["out"] / "chips", "test")
    assert tuple(enc.bands) == ds.bands
    stats = json.loads((quickstart["out"] / "chips" / "norm_stats.json").read_text())["bands"]
    for band in enc.bands:
        assert enc.norm_stats[band]["mean"] == pytest.approx(stats[band]["mean"])
        assert enc.norm_stats[band]["std"] == pytest.approx(stats[band]["std"])
    x = torch.from_numpy(np.stack([ds[i]["pixels"] for i in range(4)]))
    with torch.no_grad():
        emb = enc(enc.normalize(x))
        fmap = enc.forward_features(enc.normalize(x))
    assert emb.shape == (4, enc.embed_dim) and torch.isfinite(emb).all()
    assert fmap.shape[:2] == (4, enc.embed_dim)
    # Different chips give different embeddings (not collapsed).
    assert torch.pdist(emb).min() > 0


def test_pngs_written(quickstart):
    state = json.loads((quickstart["out"] / STATE_FILE).read_text())
    ev = state["steps"]["evaluate"]["outputs"]
    for key in ("pca_png", "loss_curve_png"):
        w, h = _png_size(Path(ev[key]))
        assert w >= 300 and h >= 200, (key, w, h)
    import matplotlib.image as mpimg

    img = mpimg.imread(ev["pca_png"])
    assert img.std() > 0.05  # a picture, not a blank canvas


def test_rerun_skips_every_step(quickstart):
    before = (quickstart["out"] / STATE_FILE).read_text()
    messages: list[str] = []
    t0 = time.perf_counter()
    result = run_quickstart(quickstart["out"], size="tiny", echo=messages.append)
    assert time.perf_counter() - t0 < 30
    assert sum("done earlier" in m for m in messages) == len(STEPS), messages
    assert (quickstart["out"] / STATE_FILE).read_text() == before
    assert "pretrained encoder" in result.summary


def test_steps_lost_in_a_kill_are_redone_reusing_finished_work(quickstart):
    """As after a kill during 'publish': the state lacks the last three steps, the run folder holds
    the final training checkpoint. The re-run trains no further and reproduces the same numbers."""
    out = quickstart["out"]
    state = json.loads((out / STATE_FILE).read_text())
    before = state["steps"]["evaluate"]["outputs"]
    metrics = (out / "runs" / "quickstart" / "metrics.jsonl").read_text()
    for step in ("pretrain", "publish", "evaluate"):
        del state["steps"][step]
    (out / STATE_FILE).write_text(json.dumps(state))
    shutil.rmtree(out / "model")
    messages: list[str] = []
    run_quickstart(out, size="tiny", echo=messages.append)
    assert any("resuming the interrupted training run" in m for m in messages), messages
    assert sum("done earlier" in m for m in messages) == 2  # scenes and chips
    after = json.loads((out / STATE_FILE).read_text())["steps"]["evaluate"]["outputs"]
    assert (out / "runs" / "quickstart" / "metrics.jsonl").read_text() == metrics  # no extra steps
    assert after["knn_pretrained"] == before["knn_pretrained"]
    assert after["knn_untrained"] == before["knn_untrained"]


def test_size_mismatch_is_a_clear_error(quickstart):
    with pytest.raises(ConfigError, match="pass --fresh"):
        run_quickstart(quickstart["out"], size="small")


def test_fresh_redoes_steps_and_keeps_foreign_files(tmp_path):
    out = tmp_path / "qs"
    out.mkdir()
    (out / "my_notes.txt").write_text("not the quickstart's")
    run_quickstart(out, size="tiny", upto="scenes")
    first = json.loads((out / STATE_FILE).read_text())["steps"]["scenes"]["completed"]
    messages: list[str] = []
    run_quickstart(out, size="tiny", upto="scenes", echo=messages.append)
    assert any("done earlier" in m for m in messages)
    time.sleep(1.1)
    messages.clear()
    run_quickstart(out, size="tiny", upto="scenes", fresh=True, echo=messages.append)
    second = json.loads((out / STATE_FILE).read_text())["steps"]["scenes"]["completed"]
    assert second > first
    assert any("--fresh" in m for m in messages)
    assert (out / "my_notes.txt").read_text() == "not the quickstart's"


def test_fresh_never_deletes_in_a_folder_the_quickstart_did_not_make(tmp_path):
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "my_experiment.txt").write_text("keep me")
    run_quickstart(tmp_path, size="tiny", upto="scenes", fresh=True)
    assert (tmp_path / "runs" / "my_experiment.txt").read_text() == "keep me"


def test_bad_size_on_the_command_line_is_one_line_exit_2(tmp_path):
    proc = _cli("quickstart", "--out", str(tmp_path / "x"), "--size", "huge", timeout=120)
    assert proc.returncode == 2
    assert (
        proc.stderr.strip() == "eo-jepa: error: Unknown quickstart size 'huge'; choose one of: small, tiny."
    )


def test_out_is_a_file(tmp_path):
    target = tmp_path / "file.txt"
    target.write_text("x")
    with pytest.raises(DataError, match="is a file"):
        run_quickstart(target, size="tiny")


def test_dense_probe_next_to_knn(quickstart):
    """The summary shows the local-task side too: the linear per-patch land-cover probe, untrained vs pretrained."""
    from eo_jepa.demo.scenes import CLASSES

    state = json.loads((quickstart["out"] / STATE_FILE).read_text())
    ev = state["steps"]["evaluate"]["outputs"]
    dense = json.loads(Path(ev["dense_json"]).read_text())
    for tag in ("untrained", "pretrained"):
        res = dense[tag]
        assert ev[f"dense_miou_{tag}"] == res["miou"]
        iou = [v for v in res["per_class_iou"].values() if v == v]
        assert set(res["per_class_iou"]) <= set(CLASSES) and len(res["per_class_iou"]) >= 2
        assert math.isclose(res["miou"], sum(iou) / len(iou))
        conf = np.asarray(res["confusion"])
        assert conf.sum() == res["num_test_pixels"] > 0
        assert 0.0 < res["miou"] <= 1.0
    printed = re.findall(r"encoder:?\s*:?\s+mIoU ([0-9.]+)", quickstart["stdout"])
    assert printed == [f"{ev['dense_miou_untrained']:.3f}", f"{ev['dense_miou_pretrained']:.3f}"]


def test_summary_shows_backbone_rank_before_and_after(quickstart):
    """The backbone's rank (held-out probe chips, from the trainer's health.jsonl) next to kNN."""
    summary = json.loads((quickstart["out"] / "summary.json").read_text())
    ev = summary["steps"]["evaluate"]["outputs"]
    health = [
        json.loads(ln)
        for ln in (quickstart["out"] / "runs" / "quickstart" / "health.jsonl").read_text().splitlines()
    ]
    assert health[0]["step"] == 0 and health[-1]["step"] == summary["steps"]["pretrain"]["outputs"]["steps"]
    assert ev["rank_untrained"] == health[0]["rank_embed_c"]
    assert ev["rank_pretrained"] == health[-1]["rank_embed_c"]
    assert 1.0 <= ev["rank_pretrained"] <= 192 and 1.0 <= ev["rank_untrained"] <= 192
    before = re.search(r"before training:\s+([0-9.]+)", quickstart["stdout"])
    after = re.search(r"after training :\s+([0-9.]+)", quickstart["stdout"])
    assert before and after, quickstart["stdout"]
    assert (before.group(1), after.group(1)) == (
        f"{ev['rank_untrained']:.1f}",
        f"{ev['rank_pretrained']:.1f}",
    )
