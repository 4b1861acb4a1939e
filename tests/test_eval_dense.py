"""The dense (per-patch linear segmentation) probe: known answers, scikit-learn cross-checks, pair layouts."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from PIL import Image

from eo_jepa.errors import DataError
from eo_jepa.eval.baseline import RandomProjectionEncoder
from eo_jepa.eval.dense import (
    SegmentationFolder,
    SegmentationItem,
    confusion_matrix,
    dense_probe,
    find_pairs,
    iou_scores,
    patch_targets,
    split_folder,
)

PALETTE = {1: (200, 30, 30), 2: (30, 200, 30), 3: (30, 30, 200), 4: (220, 220, 40)}


def color_patches(rng: np.random.Generator, grid: int = 4, patch: int = 8) -> SegmentationItem:
    """An RGB image whose every ``patch`` x ``patch`` block is one palette colour (plus noise); mask = its code."""
    codes = rng.integers(1, len(PALETTE) + 1, size=(grid, grid))
    mask = np.kron(codes, np.ones((patch, patch), np.int64))
    rgb = np.stack([np.vectorize(lambda c, k=k: PALETTE[c][k])(mask) for k in range(3)]).astype(np.float32)
    rgb += rng.normal(0, 4, rgb.shape).astype(np.float32)
    return SegmentationItem(rgb, mask, f"img{int(rng.integers(1 << 30))}")


def test_per_patch_colour_classes_are_segmented_perfectly():
    rng = np.random.default_rng(0)
    train = [color_patches(rng) for _ in range(6)]
    test = [color_patches(rng) for _ in range(3)]
    enc = RandomProjectionEncoder(
        ("red", "green", "blue"), patch_size=8, embed_dim=64, img_size=32,
        norm_stats={b: {"mean": 120.0, "std": 80.0} for b in ("red", "green", "blue")},
    )  # fmt: skip
    res = dense_probe(enc, train, test, seeds=(0, 1))
    assert res.miou == 1.0 and res.pixel_accuracy == 1.0
    assert set(res.per_class_iou) == {"1", "2", "3", "4"} and all(
        v == 1.0 for v in res.per_class_iou.values()
    )
    assert res.num_test_pixels == 3 * 32 * 32
    # the same probe on shuffled masks (no relation to the colours) must not score perfectly
    shuffled = [SegmentationItem(t.pixels, np.roll(t.mask, 8, axis=1), t.id) for t in test]
    assert dense_probe(enc, train, shuffled).miou < 0.8


def test_confusion_and_iou_match_sklearn():
    from sklearn.metrics import confusion_matrix as sk_conf
    from sklearn.metrics import jaccard_score

    rng = np.random.default_rng(3)
    truth = rng.integers(0, 5, 4000)
    pred = np.where(rng.random(4000) < 0.6, truth, rng.integers(0, 5, 4000))
    conf = confusion_matrix(truth, pred, 5)
    assert np.array_equal(conf, sk_conf(truth, pred, labels=range(5)))
    iou, miou, acc = iou_scores(conf)
    ref = jaccard_score(truth, pred, average=None, labels=range(5))
    assert np.allclose(iou, ref) and np.isclose(miou, ref.mean()) and np.isclose(acc, (truth == pred).mean())


def test_patch_targets_majority_with_ignored_pixels_reference_loop():
    rng = np.random.default_rng(5)
    mask = rng.choice([0, 1, 2, 3], size=(21, 19), p=[0.3, 0.3, 0.2, 0.2])
    mask[:8, :8] = 0  # a fully unlabelled patch
    got = patch_targets(mask, 8, ignore_index=0)
    assert got.shape == (3, 3)
    for i in range(3):
        for j in range(3):
            block = mask[i * 8 : (i + 1) * 8, j * 8 : (j + 1) * 8].ravel().tolist()
            counts = Counter(v for v in block if v != 0)
            if not counts:
                expected = 0
            else:
                top = max(counts.values())
                expected = min(c for c, n in counts.items() if n == top)
            assert got[i, j] == expected, (i, j)


def _write_pairs(root, names, rng, split=None, img_dir="images", mask_dir="masks"):
    base = root if split is None else root / split
    (base / img_dir).mkdir(parents=True, exist_ok=True)
    (base / mask_dir).mkdir(parents=True, exist_ok=True)
    for name in names:
        it = color_patches(rng)
        Image.fromarray(np.clip(it.pixels, 0, 255).astype(np.uint8).transpose(1, 2, 0)).save(
            base / img_dir / f"{name}.png"
        )
        Image.fromarray(it.mask.astype(np.uint8)).save(base / mask_dir / f"{name}.png")


def test_pair_layouts_flat_split_and_loveda(tmp_path):
    rng = np.random.default_rng(1)
    _write_pairs(tmp_path / "flat", ["a", "b", "c", "d"], rng)
    flat = SegmentationFolder(tmp_path / "flat")
    assert flat.bands == ("red", "green", "blue") and len(flat) == 4
    s = split_folder(flat, seed=0)
    assert len(s["test"]) == 1 and sorted([*s["train"], *s["test"]]) == [0, 1, 2, 3]
    assert np.array_equal(split_folder(flat, seed=0)["test"], s["test"])  # deterministic
    item = flat[0]
    assert item.mask.dtype == np.int64 and set(np.unique(item.mask)) <= {1, 2, 3, 4}

    _write_pairs(tmp_path / "split", ["a", "b"], rng, "train")
    _write_pairs(tmp_path / "split", ["c"], rng, "test")
    given = SegmentationFolder(tmp_path / "split")
    assert [given.ids[i] for i in split_folder(given)["test"]] == ["test/images/c.png"]

    for domain in ("Urban", "Rural"):
        _write_pairs(tmp_path / "loveda" / "Train" / domain, ["1", "2"], rng, None, "images_png", "masks_png")
        _write_pairs(tmp_path / "loveda" / "Val" / domain, ["3"], rng, None, "images_png", "masks_png")
    pairs = find_pairs(tmp_path / "loveda")
    assert len(pairs) == 6 and {p[3] for p in pairs} == {"train", "val"}
    love = SegmentationFolder(tmp_path / "loveda")
    assert len(split_folder(love)["test"]) == 2  # LoveDA's Val is the held-out split


def test_pair_layout_errors_are_one_sentence(tmp_path):
    rng = np.random.default_rng(2)
    _write_pairs(tmp_path / "d", ["a", "b"], rng)
    (tmp_path / "d" / "masks" / "b.png").unlink()
    with pytest.raises(DataError, match="has no mask b"):
        find_pairs(tmp_path / "d")
    (tmp_path / "e").mkdir()
    with pytest.raises(DataError, match="No image/mask pairs"):
        find_pairs(tmp_path / "e")


def test_eval_dense_cli_on_a_pair_folder(tmp_path):
    """`eo-jepa eval dense` end to end on a folder of PNG pairs with a real (untrained) ViT: the JSON's
    figures are consistent with its confusion matrix (independent IoU formula)."""
    import json

    import torch
    from typer.testing import CliRunner

    from eo_jepa.cli import app
    from eo_jepa.models import build_encoder, save_encoder

    rng = np.random.default_rng(4)
    _write_pairs(tmp_path / "pairs", [f"p{i}" for i in range(6)], rng)
    (tmp_path / "pairs" / "classes.json").write_text(
        json.dumps({"1": "red", "2": "green", "3": "blue", "4": "yellow"})
    )
    torch.manual_seed(0)
    enc = build_encoder("vit_tiny_patch8", ("red", "green", "blue"), img_size=32,
                        norm_stats={b: {"mean": 120.0, "std": 80.0} for b in ("red", "green", "blue")})  # fmt: skip
    model = save_encoder(enc, tmp_path / "m", provenance={"run": "test_eval_dense"})
    result = CliRunner().invoke(app, ["eval", "dense", "--model", str(model), "--data", str(tmp_path / "pairs"),
                                      "--seeds", "0", "--out", str(tmp_path / "d.json")])  # fmt: skip
    assert result.exit_code == 0, f"{result.output}\n{result.exception!r}"
    rep = json.loads((tmp_path / "d.json").read_text())
    conf = np.asarray(rep["confusion"], dtype=np.float64)
    iou = [conf[i, i] / (conf[i].sum() + conf[:, i].sum() - conf[i, i]) for i in range(len(conf))]
    assert list(rep["per_class_iou"]) == ["red", "green", "blue", "yellow"][: len(conf)]
    assert np.allclose(list(rep["per_class_iou"].values()), iou) and np.isclose(rep["miou"], np.mean(iou))
    # --test-fraction 0.2 of 6 images: 1 held out
    assert conf.sum() == rep["num_test_pixels"] == 32 * 32 and "(5 train / 1 test images)" in result.output
