"""The offline quickstart end to end at its reduced size, and its resume / fresh / error behaviour.

The tests hold the quickstart to what the README's quickstart section says of it (steps, sizes,
the kNN protocol and its figures' relations, what summary.md / summary.json hold, re-run, resume,
--fresh). The command's folder is this module's own and is only read; a test that has to change a
finished quickstart works on a copy (:func:`copy_quickstart`).
"""

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
import yaml

from eo_jepa.demo.quickstart import SIZE_ENV, STATE_FILE, STEPS, default_size, run_quickstart
from eo_jepa.errors import ConfigError, DataError

# The command runs several minutes on a busy 2-core machine (README: 7 min; more under heavier load):
# its module fixture gets a longer bound than the suite's 600 s.
QUICKSTART_TIMEOUT = 1500
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(QUICKSTART_TIMEOUT)]


def _cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "eo_jepa", *args], capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory):
    """A tiny quickstart through the real command line (the README's main-job command), in a folder
    of this module's own: tests read it; none changes it."""
    out = tmp_path_factory.mktemp("tiny-quickstart")
    t0 = time.perf_counter()
    proc = _cli("quickstart", "--out", str(out), "--size", "tiny", timeout=QUICKSTART_TIMEOUT - 60)
    seconds = time.perf_counter() - t0
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {"out": out, "stdout": proc.stdout, "stderr": proc.stderr, "seconds": seconds}


def copy_quickstart(src: Path, dst: Path) -> Path:
    """A copy of a finished quickstart folder whose state points at the copy (the state records
    absolute paths of each step's outputs)."""
    shutil.copytree(src, dst)
    state = (dst / STATE_FILE).read_text()
    (dst / STATE_FILE).write_text(state.replace(json.dumps(str(src))[1:-1], json.dumps(str(dst))[1:-1]))
    return dst


def _state(quickstart) -> dict:
    return json.loads((quickstart["out"] / STATE_FILE).read_text())


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
    for label in (
        "STAC items",
        "AOIs",
        "chip dataset",
        "data card",
        "training run",
        "checkpoint",
        "loss curve",
        "PCA feature map",
    ):
        line = next(ln for ln in out.splitlines() if ln.strip().startswith(label))
        assert Path(line.split(None, len(label.split()))[-1]).exists(), line
    assert (quickstart["out"] / "summary.md").read_text().count("kNN accuracy") == 1


def test_pretrained_beats_untrained_on_knn(quickstart):
    state = json.loads((quickstart["out"] / STATE_FILE).read_text())
    ev = state["steps"]["evaluate"]["outputs"]
    counts = state["steps"]["chips"]["outputs"]["counts"]
    knn = json.loads(Path(ev["knn_json"]).read_text())
    assert len(ev["classes"]) == 5
    # README: "The pretrained encoder must beat the untrained one in the 5-per-class setting".
    assert ev["knn_pretrained"] > ev["knn_untrained"], knn
    # "5 chips per class (mean of 10 seeded draws ...)", k = 10.
    assert knn["k"] == ev["knn_k"] == 10
    for tag in ("untrained", "pretrained"):
        res = knn[tag]
        assert res["shots"] == ev["shots"] == 5
        assert len(res["fewshot_draws"]) == 10
        assert res["accuracy"] == pytest.approx(float(np.mean(res["fewshot_draws"])))
        assert ev[f"knn_{tag}"] == res["accuracy"] and ev[f"knn_full_{tag}"] == res["full_accuracy"]
        # Accuracies are fractions of the held-out chips, and the per-class ones (over the held-out
        # chips of each class, counted by the chip build) add up to the overall one.
        for acc in [res["full_accuracy"], *res["fewshot_draws"]]:
            assert acc * ev["n_test"] == pytest.approx(round(acc * ev["n_test"]))
        held = {c: counts["val"].get(c, 0) + counts["test"].get(c, 0) for c in ev["classes"]}
        assert sum(held.values()) == ev["n_test"]
        per_class = sum(res["per_class_full"][c] * n for c, n in held.items()) / ev["n_test"]
        assert per_class == pytest.approx(res["full_accuracy"])
    # "an untrained ViT already separates the classes when it may compare each query with" all the
    # labelled train chips: well above the 0.2 of chance, near the top.
    assert ev["knn_full_untrained"] >= 0.9
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


def test_steps_lost_in_a_kill_are_redone_reusing_finished_work(quickstart, tmp_path):
    """As after a kill during 'publish': the state lacks the last three steps, the run folder holds
    the final training checkpoint. The re-run trains no further and reproduces the same numbers."""
    out = copy_quickstart(quickstart["out"], tmp_path / "qs")
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
    assert after["knn_json"] == str(out / "eval" / "knn.json")  # the copy's own outputs
    # The quickstart's own folder is untouched.
    assert json.loads((quickstart["out"] / STATE_FILE).read_text())["steps"].keys() == {s for s, _ in STEPS}
    assert (quickstart["out"] / "model" / "config.json").is_file()


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


def test_the_tiny_size_is_the_readme_tables_row(quickstart):
    """README, sizes table: `tiny`: 1 tile x 3.84 km, 4 dates, 20 AOIs; 138 / 155 ok chips (train /
    held-out); 40 steps x 32 chips. (Change the table when the demo or the preset changes.)"""
    import rasterio

    state = _state(quickstart)
    scenes = state["steps"]["scenes"]["outputs"]
    assert len(scenes["tiles"]) == 1 and len(scenes["dates"]) == 4
    items = json.loads(Path(scenes["items"]).read_text())["features"]
    assert len(items) == 4
    with rasterio.open(items[0]["assets"]["B04"]["href"]) as src:
        assert src.width * src.res[0] == src.height * src.res[1] == 3840
    assert len(json.loads(Path(scenes["aois"]).read_text())["features"]) == 20
    ev = state["steps"]["evaluate"]["outputs"]
    assert (ev["n_train"], ev["n_test"]) == (138, 155)
    pretrain = state["steps"]["pretrain"]["outputs"]
    config = yaml.safe_load((Path(pretrain["run_dir"]) / "config.yaml").read_text())
    assert pretrain["steps"] == config["max_steps"] == 40 and config["data"]["batch_size"] == 32


def test_chips_and_the_kNN_split_are_as_the_readme_says(quickstart):
    """5 bands, 16 x 16 px at 10 m, up to 3 dates per location; train-split chips are the kNN
    reference set, the val + test chips (other AOIs) the queries."""
    from eo_jepa.chips.dataset import ChipDataset

    ds = ChipDataset(quickstart["out"] / "chips")
    assert ds.bands == ("red", "green", "blue", "nir", "swir16")
    assert ds[0]["pixels"].shape == (5, 16, 16)
    assert {(t[0], -t[4]) for t in ds.index["transform"]} == {(10.0, 10.0)}
    dates = [len(v) for v in ds.locations().values()]
    assert max(dates) == 3 and min(dates) >= 1
    aois = {
        split: set(ds.index.loc[ds.index["split"] == split, "aoi_id"]) for split in ("train", "val", "test")
    }
    assert not aois["train"] & (aois["val"] | aois["test"])
    ev = _state(quickstart)["steps"]["evaluate"]["outputs"]
    labelled = ds.index[ds.index["label"].notna()]
    assert ev["n_train"] == int((labelled["split"] == "train").sum())
    assert ev["n_test"] == int(labelled["split"].isin(["val", "test"]).sum())


def test_pretraining_and_publishing_are_as_the_readme_says(quickstart):
    """A 5-band ViT-Tiny/8 (192 dims) from scratch, 2 global + 2 local views, lambda 0.05 meant at 256
    chips per view; runs/quickstart holds metrics, TensorBoard and the loss curve."""
    state = _state(quickstart)
    run_dir = Path(state["steps"]["pretrain"]["outputs"]["run_dir"])
    assert run_dir == quickstart["out"] / "runs" / "quickstart"
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["model"]["arch"] == "vit_tiny_patch8" and config["model"].get("pretrained") in (None, "")
    assert (config["views"]["num_global"], config["views"]["num_local"]) == (2, 2)
    assert (config["loss"]["lam"], config["loss"]["lam_batch"]) == (0.05, 256)
    assert (run_dir / "metrics.jsonl").is_file() and (run_dir / "loss_curve.png").is_file()
    assert list((run_dir / "tb").glob("events.out.tfevents.*"))
    published = state["steps"]["publish"]["outputs"]
    assert published["model_dir"] == str(quickstart["out"] / "model")
    assert (published["arch"], published["embed_dim"]) == ("vit_tiny_patch8", 192)
    assert published["bands"] == ["red", "green", "blue", "nir", "swir16"]


def test_summary_md_and_json_hold_what_was_printed(quickstart):
    """README: what it prints at the end is also in OUT/summary.md and summary.json."""
    out = quickstart["out"]
    md = (out / "summary.md").read_text()
    assert md.startswith("```\n") and md.endswith("```\n")
    table = md[4:-4]
    assert table.startswith(f"eo-jepa quickstart (tiny) in {out}\n")
    assert table in quickstart["stdout"]
    assert f'load it:  eo_jepa.load("{out / "model"}")' in table
    summary = json.loads((out / "summary.json").read_text())
    assert summary["size"] == summary["preset"]["name"] == "tiny"
    assert summary["steps"] == _state(quickstart)["steps"]
    ev = summary["steps"]["evaluate"]["outputs"]
    assert f"kNN accuracy on {ev['n_test']} held-out chips (k=10, cosine)" in table
    assert f"5 per class*   all {ev['n_train']}" in table


def test_the_default_size_comes_from_the_environment(tmp_path, monkeypatch):
    """README: `EO_JEPA_QUICKSTART_SIZE=tiny` changes the default size (else `small`)."""
    monkeypatch.delenv(SIZE_ENV, raising=False)
    assert default_size() == "small"
    monkeypatch.setenv(SIZE_ENV, "tiny")
    assert default_size() == "tiny"
    run_quickstart(tmp_path, upto="scenes")
    assert json.loads((tmp_path / STATE_FILE).read_text())["size"] == "tiny"
