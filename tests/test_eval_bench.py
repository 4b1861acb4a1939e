"""`eo-jepa eval bench` on generated datasets in each public layout: protocols, cache, resume, outputs."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from eo_jepa.cli import app, main
from eo_jepa.errors import DataError
from eo_jepa.eval.bench import BenchConfig, run_bench
from eo_jepa.eval.layouts import LAYOUTS, open_layout, write_synthetic_layouts


@pytest.fixture(scope="module")
def layouts(tmp_path_factory):
    return write_synthetic_layouts(tmp_path_factory.mktemp("layouts"), classes=3, per_class=6, size=32)


@pytest.fixture(scope="module")
def rgb_model(tmp_path_factory):
    from eo_jepa.models import build_encoder, save_encoder

    torch.manual_seed(0)
    enc = build_encoder("vit_tiny_patch8", ("red", "green", "blue"), img_size=32,
                        norm_stats={b: {"mean": 120.0, "std": 60.0} for b in ("red", "green", "blue")})  # fmt: skip
    return save_encoder(enc, tmp_path_factory.mktemp("m") / "tiny_rgb", provenance={"run": "test_eval_bench"})


@pytest.fixture(scope="module")
def ms_model(tmp_path_factory):
    from eo_jepa.models import build_encoder, save_encoder

    bands = ("blue", "green", "red", "nir", "swir16")
    torch.manual_seed(1)
    enc = build_encoder(
        "vit_tiny_patch8", bands, img_size=32, norm_stats={b: {"mean": 2000.0, "std": 900.0} for b in bands}
    )
    return save_encoder(enc, tmp_path_factory.mktemp("m") / "tiny_s2", provenance={"run": "test_eval_bench"})


def test_every_layout_opens_by_name(layouts):
    for name, layout in LAYOUTS.items():
        ds = open_layout(layouts, name)
        assert len(ds.classes) == 3 and len(ds) == 18
        item = ds[0]
        assert item["pixels"].shape == (len(layout.bands), 32, 32) and ds.bands == layout.bands
    ms = open_layout(layouts, "eurosat-ms")
    assert "swir22" in ms.bands and len(ms.bands) == 12  # B10 (cirrus) dropped from the 13 file bands


def test_mislaid_folder_is_one_sentence(tmp_path, capsys):
    (tmp_path / "AID_flat").mkdir()
    with pytest.raises(
        DataError, match=r"No AID dataset under .*expected .*AID/<class>/<image> \(e\.g\. Airport/\)"
    ):
        open_layout(tmp_path, "aid")
    with pytest.raises(SystemExit) as exc:
        main(
            ["eval", "bench", "--root", str(tmp_path), "--suite", "aid", "--model", "random:vit_tiny_patch8"]
        )
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "No AID dataset" in err and "\n" not in err and "Traceback" not in err


def test_bench_table_matches_sklearn_and_resumes_from_cache(layouts, rgb_model, ms_model, tmp_path):
    from sklearn.neighbors import KNeighborsClassifier

    from eo_jepa.eval.datasets import stratified_split

    out = tmp_path / "bench"
    result = CliRunner().invoke(app, [
        "eval", "bench", "--root", str(layouts), "--suite", "ucmerced,eurosat-rgb,eurosat-ms", "--model", str(rgb_model),
        "--model", "random:vit_tiny_patch8", "--model", str(ms_model), "--seeds", "0,1", "--probes", "knn,linear,fewshot", "--shots", "2",
        "--epochs", "5", "--out", str(out),
    ])  # fmt: skip
    assert result.exit_code == 0, f"{result.output}\n{result.exception!r}"
    for ext in ("md", "csv", "json", "png"):
        assert (out / f"results.{ext}").stat().st_size > 0
    report = json.loads((out / "results.json").read_text())
    rows = report["rows"]
    # UC Merced's protocol has two training ratios; the RGB models cannot read EuroSAT-MS: n/a, not a crash
    ucm = [
        r for r in rows if r["dataset"] == "ucmerced" and r["probe"] == "knn" and r["model"] == str(rgb_model)
    ]
    assert sorted(r["train_ratio"] for r in ucm) == [0.5, 0.8]
    # an RGB model reads EuroSAT-MS's red/green/blue bands by name; a 5-band model cannot read RGB sets: n/a
    ms_rows = {r["model"] for r in rows if r["dataset"] == "eurosat-ms" and not r["note"]}
    assert ms_rows == {str(rgb_model), "random:vit_tiny_patch8", str(ms_model)}
    assert {r["dataset"] for r in rows if r["note"] == "bands"} == {"ucmerced", "eurosat-rgb"}
    assert all(r["model"] == str(ms_model) for r in rows if r["note"])
    assert report["protocols"]["ucmerced"]["train_ratios"] == [0.8, 0.5]
    with (out / "results.csv").open() as fh:
        assert len(list(csv.DictReader(fh))) == len(rows)
    md = (out / "results.md").read_text()
    assert (
        "| UC Merced | 80% | knn |" in md
        and "n/a (bands)" in md
        and "| EuroSAT (13-band) | 80% | linear |" in md
    )

    # kNN cross-checked against scikit-learn on the cached features, split by the same seeds
    cached = sorted((out / "cache").glob("*/ucmerced-*-native/features.npy"))
    assert len(cached) == 2
    ds = open_layout(layouts, "ucmerced")
    labels = [str(lab) for lab in ds.labels]
    from eo_jepa.eval.bench import model_digest, resolve_model

    feats = np.load(
        next(p for p in cached if p.parts[-3] == model_digest(resolve_model(str(rgb_model)))[:16])
    )
    accs = []
    for seed in (0, 1):
        split = stratified_split(labels, test_fraction=0.2, seed=seed)
        y = np.array(labels)
        ref = KNeighborsClassifier(n_neighbors=min(20, len(split["train"])), metric="cosine", algorithm="brute",
                                   weights=lambda d: np.exp((1 - d) / 0.07)).fit(feats[split["train"]], y[split["train"]])  # fmt: skip
        accs.append(float((ref.predict(feats[split["test"]]) == y[split["test"]]).mean()))
    row = next(r for r in ucm if r["train_ratio"] == 0.8)
    assert row["accuracies"] == pytest.approx(accs) and row["std"] == pytest.approx(np.std(accs))

    # A second run re-uses everything (no feature extraction), and adding a seed re-uses the features
    import eo_jepa.eval.features as features

    calls = []
    orig = features.extract_features
    features.extract_features = lambda *a, **k: calls.append(1) or orig(*a, **k)
    try:
        cfg = BenchConfig(root=layouts, models=[str(rgb_model)], out=out, suite="ucmerced", seeds=(0, 1, 2),
                          probes=("knn",), shots=2, linear_epochs=5)  # fmt: skip
        again = run_bench(cfg)
    finally:
        features.extract_features = orig
    assert calls == [] and len(again) == 2 and len(again[0].accuracies) == 3
