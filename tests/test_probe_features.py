"""`eo-jepa eval` probe features: LeJEPA's (last two blocks concatenated + LayerNorm), chosen by default
for LeJEPA-trained models, and named in every result."""

from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio
import torch
from eval_synthetic import BANDS5, CLASSES, NORM_STATS5, write_image_folder
from typer.testing import CliRunner

from eo_jepa.cli import app
from eo_jepa.config import to_dict
from eo_jepa.eval.datasets import open_labelled, stratified_split
from eo_jepa.eval.features import default_probe_kind
from eo_jepa.train.config import TrainConfig

runner = CliRunner()


def _invoke(*args) -> str:
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, f"{result.output}\n{result.exception!r}"
    return result.output


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from eo_jepa.models import build_encoder, save_encoder

    root = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    enc = build_encoder("vit_tiny_patch8", BANDS5, img_size=32, norm_stats=NORM_STATS5)
    lejepa = save_encoder(enc, root / "lejepa", training_config=to_dict(TrainConfig()))
    other = save_encoder(enc, root / "other")  # same weights, no LeJEPA training record
    return lejepa, other


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_image_folder(tmp_path_factory.mktemp("folder"), per_class=8, size=32, fmt="tif")


def test_default_kind_follows_the_training_record(models):
    from eo_jepa.models import load_encoder

    lejepa, other = models
    assert default_probe_kind(load_encoder(lejepa)) == "lejepa"
    assert default_probe_kind(load_encoder(other)) == "probe"
    assert default_probe_kind(torch.nn.Linear(2, 2)) == "probe"


def test_knn_with_lejepa_features_matches_an_independent_layernorm(models, folder, tmp_path):
    from sklearn.neighbors import KNeighborsClassifier

    from eo_jepa.models import load_encoder

    lejepa, other = models
    out = tmp_path / "knn.json"
    text = _invoke("eval", "knn", "--model", lejepa, "--data", folder, "--shots", "all", "--out", out)
    assert "features lejepa" in text
    report = json.loads(out.read_text())
    assert [r["features"] for r in report["results"]] == ["lejepa"]
    # independent: rasterio read, last-two-block features, float64 NumPy LayerNorm, sklearn cosine kNN
    enc = load_encoder(lejepa).eval()
    data = open_labelled(folder)
    split = stratified_split(data.labels, test_fraction=0.2, seed=0)

    def feats(idx):
        raws = []
        for i in idx:
            with rasterio.open(data.dataset.paths[i]) as src:
                raws.append(src.read().astype(np.float32))
        with torch.no_grad():
            f = enc.forward_intermediate_cls(enc.normalize(np.stack(raws)), n=2).numpy().astype(np.float64)
        return (f - f.mean(1, keepdims=True)) / np.sqrt(f.var(1, keepdims=True) + 1e-5)

    ref = KNeighborsClassifier(
        20, metric="cosine", algorithm="brute", weights=lambda d: np.exp((1 - d) / 0.07)
    )
    ref.fit(feats(split["train"]), [data.labels[i] for i in split["train"]])
    expected = float(np.mean(ref.predict(feats(split["test"])) == [data.labels[i] for i in split["test"]]))
    assert report["results"][0]["mean"] == pytest.approx(expected)
    assert sorted(CLASSES) == report["classes"]
    # the other model defaults to the plain concatenation; the choice can be forced either way
    assert "features probe" in _invoke("eval", "knn", "--model", other, "--data", folder, "--shots", "all")
    forced = _invoke(
        "eval", "knn", "--model", other, "--data", folder, "--shots", "all", "--features", "lejepa"
    )
    assert "features lejepa" in forced


def test_unknown_features_is_a_one_line_error(models, folder, capsys):
    from eo_jepa.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["eval", "knn", "--model", str(models[0]), "--data", str(folder), "--features", "cls3"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "--features must be auto or one of lejepa, probe, global, mean_patch, got 'cls3'" in err
    assert "\n" not in err and "Traceback" not in err
