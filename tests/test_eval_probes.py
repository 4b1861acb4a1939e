"""kNN, linear probe, few-shot and splits: checked against scikit-learn and NumPy references."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch
from eval_synthetic import BANDS5, CLASSES, NORM_STATS5, write_image_folder

from eo_jepa.errors import BandMismatchError, ConfigError, DataError
from eo_jepa.eval.baseline import RandomProjectionEncoder
from eo_jepa.eval.datasets import fewshot_indices, open_labelled, stratified_split
from eo_jepa.eval.features import extract_features
from eo_jepa.eval.knn import knn_predict
from eo_jepa.eval.linear import LinearProbeConfig, linear_predict, lr_at, train_linear_probe
from eo_jepa.eval.probe import accuracy, evaluate, run_probe


def clustered(n_per: int, n_cls: int, dim: int, seed: int, spread: float = 1.5):
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((n_cls, dim)) * 2
    y = np.repeat(np.arange(n_cls), n_per)
    x = centers[y] + spread * rng.standard_normal((len(y), dim))
    return x.astype(np.float32), y


def test_knn_matches_sklearn_weighted_cosine():
    from sklearn.neighbors import KNeighborsClassifier

    xtr, ytr = clustered(40, 5, 16, seed=1, spread=2.5)
    xte, yte = clustered(30, 5, 16, seed=1, spread=2.5)
    xte = xte + np.random.default_rng(9).standard_normal(xte.shape).astype(np.float32)
    t = 0.07
    ours = knn_predict(xtr, ytr, xte, k=20, temperature=t)
    ref = KNeighborsClassifier(
        n_neighbors=20, metric="cosine", algorithm="brute", weights=lambda d: np.exp((1 - d) / t)
    ).fit(xtr, ytr)
    assert np.array_equal(ours, ref.predict(xte))
    assert 0.3 < accuracy(ours, yte) < 1.0  # a non-trivial problem, so agreement means something


def test_knn_votes_formula_numpy_float64():
    xtr, ytr = clustered(10, 3, 8, seed=2, spread=3.0)
    xte, _ = clustered(5, 3, 8, seed=3, spread=3.0)
    a = xtr / np.linalg.norm(xtr, axis=1, keepdims=True).astype(np.float64)
    b = xte / np.linalg.norm(xte, axis=1, keepdims=True).astype(np.float64)
    sims = b @ a.T
    expected = []
    for row in sims:
        top = np.argsort(-row)[:7]
        votes = np.zeros(3)
        np.add.at(votes, ytr[top], np.exp(row[top] / 0.5))
        expected.append(votes.argmax())
    assert np.array_equal(knn_predict(xtr, ytr, xte, k=7, temperature=0.5), expected)


@pytest.mark.parametrize(("k", "temperature", "names"), [(0, 0.07, "'knn.k'"), (5, 0.0, "'knn.temperature'"),
                                                       (5, 0.01, "'knn.temperature'"), (5, float("nan"), "'knn.temperature'")])  # fmt: skip
def test_knn_refuses_k_and_temperature_out_of_range(k, temperature, names):
    """k=0 voted with no neighbour (class 0 for every query); T=0, tiny T and NaN made the votes inf/NaN."""
    xtr, ytr = clustered(10, 3, 8, seed=2, spread=3.0)
    with pytest.raises(ConfigError, match=names):
        knn_predict(xtr, ytr, xtr, k=k, temperature=temperature)


def test_lr_schedule_warmup_then_cosine():
    lrs = [lr_at(s, 100, 10, 1.0) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert lrs[10] == pytest.approx(1.0) and lrs[-1] < 0.01
    assert all(x >= y for x, y in itertools.pairwise(lrs[10:]))


def test_linear_probe_agrees_with_logistic_regression():
    from sklearn.linear_model import LogisticRegression

    xtr, ytr = clustered(60, 4, 24, seed=4, spread=2.5)
    xte, yte = clustered(40, 4, 24, seed=4, spread=2.5)
    xte += np.random.default_rng(5).standard_normal(xte.shape).astype(np.float32)
    head = train_linear_probe(xtr, ytr, 4, LinearProbeConfig(epochs=60, lr=1e-2, batch_size=64, seed=0))
    ours = linear_predict(head, xte)

    def layer_norm(x):
        return (x - x.mean(1, keepdims=True)) / np.sqrt(x.var(1, keepdims=True) + 1e-5)

    ref = LogisticRegression(C=10.0, max_iter=2000).fit(layer_norm(xtr), ytr).predict(layer_norm(xte))
    assert np.mean(ours == ref) >= 0.9
    assert abs(accuracy(ours, yte) - accuracy(ref, yte)) <= 0.05
    # accuracy is the plain fraction of correct predictions
    assert accuracy(ours, yte) == np.count_nonzero(ours == yte) / len(yte)


def test_linear_probe_deterministic_for_seed():
    xtr, ytr = clustered(20, 3, 8, seed=6)
    cfg = LinearProbeConfig(epochs=5, batch_size=16, seed=3)
    torch.manual_seed(123)
    a = train_linear_probe(xtr, ytr, 3, cfg)
    torch.manual_seed(456)  # the global RNG must not matter
    b = train_linear_probe(xtr, ytr, 3, cfg)
    c = train_linear_probe(xtr, ytr, 3, LinearProbeConfig(epochs=5, batch_size=16, seed=4))
    assert torch.equal(a[1].weight, b[1].weight)
    assert not torch.equal(a[1].weight, c[1].weight)


def test_stratified_split_is_seeded_and_stratified():
    labels = ["a"] * 50 + ["b"] * 30 + ["c"] * 5 + ["d"] * 1
    s1 = stratified_split(labels, test_fraction=0.2, seed=0)
    s2 = stratified_split(labels, test_fraction=0.2, seed=0)
    s3 = stratified_split(labels, test_fraction=0.2, seed=1)
    assert all(np.array_equal(s1[k], s2[k]) for k in s1)
    assert not np.array_equal(s1["test"], s3["test"])
    union = np.concatenate([s1["train"], s1["test"], s1["val"]])
    assert sorted(union.tolist()) == list(range(len(labels)))
    test_labels = [labels[i] for i in s1["test"]]
    assert test_labels.count("a") == 10 and test_labels.count("b") == 6 and test_labels.count("c") == 1
    assert "d" not in test_labels  # a single sample stays in train
    with pytest.raises(DataError, match="Split fractions"):
        stratified_split(labels, test_fraction=1.5)


def test_fewshot_indices_per_class():
    labels = ["a"] * 20 + ["b"] * 3 + ["c"] * 15
    picked = fewshot_indices(labels, 10, seed=0)
    counts = {c: sum(labels[i] == c for i in picked) for c in "abc"}
    assert counts == {"a": 10, "b": 3, "c": 10}
    assert np.array_equal(picked, fewshot_indices(labels, 10, seed=0))
    assert not np.array_equal(picked, fewshot_indices(labels, 10, seed=1))


def test_run_probe_mean_std_over_seeds():
    xtr, ytr = clustered(30, 3, 8, seed=7, spread=3.0)
    xte, yte = clustered(20, 3, 8, seed=8, spread=3.0)
    names = np.asarray(["x", "y", "z"])
    res = run_probe(
        xtr, names[ytr].tolist(), xte, names[yte].tolist(), method="knn", shots=1, seeds=[0, 1, 2, 3]
    )
    assert res.num_train == 3 and len(res.accuracies) == 4
    assert res.mean == pytest.approx(np.mean(res.accuracies)) and res.std == pytest.approx(
        np.std(res.accuracies)
    )
    manual = knn_predict(
        xtr[fewshot_indices(names[ytr].tolist(), 1, 2)], ytr[fewshot_indices(names[ytr].tolist(), 1, 2)], xte
    )
    assert res.accuracies[2] == accuracy(manual, yte)
    full = run_probe(xtr, names[ytr].tolist(), xte, names[yte].tolist(), method="knn", seeds=[0, 1, 2])
    assert len(full.accuracies) == 1 and full.std == 0.0


def test_run_probe_per_class_accuracy_is_recall_averaged_over_seeds():
    """Per-class accuracy (what the quickstart reports) against scikit-learn's per-class recall."""
    from sklearn.metrics import recall_score

    xtr, ytr = clustered(30, 3, 8, seed=7, spread=4.0)
    xte, yte = clustered(20, 3, 8, seed=8, spread=4.0)
    keep = yte != 2  # a class absent from the test set gets no entry
    names = np.asarray(["x", "y", "z"])
    train_labels = names[ytr].tolist()
    res = run_probe(
        xtr, train_labels, xte[keep], names[yte[keep]].tolist(), method="knn", shots=2, seeds=[0, 1, 2]
    )
    recalls = []
    for seed in (0, 1, 2):
        sel = fewshot_indices(train_labels, 2, seed)
        pred = knn_predict(xtr[sel], ytr[sel], xte[keep], num_classes=3)
        recalls.append(recall_score(yte[keep], pred, labels=[0, 1], average=None))
    expected = np.mean(recalls, axis=0)
    assert res.per_class == pytest.approx({"x": expected[0], "y": expected[1]})
    assert min(expected) > 0 and max(np.std(recalls, axis=0)) > 0  # seeds differ, so the mean means something


@pytest.fixture(scope="module")
def tif_folder(tmp_path_factory):
    return write_image_folder(tmp_path_factory.mktemp("tifs"), per_class=10, size=32, fmt="tif")


def test_end_to_end_random_projection_on_image_folder(tif_folder):
    """Open the folder, extract features in batches, probe; cross-check with an independent path + sklearn."""
    from sklearn.neighbors import KNeighborsClassifier

    data = open_labelled(tif_folder, seed=0, test_fraction=0.3)
    assert data.bands == BANDS5 and data.classes == sorted(CLASSES) and data.split_source == "seeded"
    enc = RandomProjectionEncoder(BANDS5, patch_size=8, embed_dim=64, img_size=32, norm_stats=NORM_STATS5)
    results = evaluate(
        enc,
        data,
        methods=("knn", "linear"),
        shots=(None, 1),
        seeds=(0, 1),
        linear=LinearProbeConfig(epochs=30, lr=1e-2),
        batch_size=7,
    )
    by = {(r.method, r.shots): r for r in results}
    assert by[("knn", None)].mean >= 0.8 and by[("linear", None)].mean >= 0.75  # chance: 0.25
    assert by[("knn", 1)].num_train == len(CLASSES)
    # independent feature path: read each file, normalise by hand, mean patch feature
    import rasterio

    def feats(idx):
        out = []
        for i in idx:
            with rasterio.open(data.dataset.paths[i]) as src:
                raw = torch.from_numpy(src.read().astype(np.float32))[None]
            x = (raw - 1200.0) / 900.0
            out.append(enc.forward_features(x).mean(dim=(2, 3))[0].numpy())
        return np.stack(out)

    tr, te = data.splits["train"], data.splits["test"]
    ours = extract_features(enc, data.dataset, indices=tr, batch_size=4)
    np.testing.assert_allclose(ours, feats(tr), rtol=1e-5, atol=1e-5)
    ytr = [data.labels[i] for i in tr]
    yte = [data.labels[i] for i in te]
    ref = KNeighborsClassifier(
        20, metric="cosine", algorithm="brute", weights=lambda d: np.exp((1 - d) / 0.07)
    )
    ref_acc = float(np.mean(ref.fit(feats(tr), ytr).predict(feats(te)) == np.asarray(yte)))
    assert by[("knn", None)].accuracies[0] == pytest.approx(ref_acc)
    # determinism: the same call gives the same numbers
    again = evaluate(
        enc, data, methods=("linear",), shots=(1,), seeds=(0, 1), linear=LinearProbeConfig(epochs=30, lr=1e-2)
    )
    assert again[0].accuracies == by[("linear", 1)].accuracies


def test_rgb_encoder_on_multispectral_selects_bands_by_name(tif_folder):
    data = open_labelled(tif_folder)
    rgb = RandomProjectionEncoder(("red", "green", "blue"), img_size=32)
    feats = extract_features(rgb, data.dataset, indices=[0, 1], data_bands=data.bands)
    import rasterio

    with rasterio.open(data.dataset.paths[1]) as src:
        raw = torch.from_numpy(src.read([3, 2, 1]).astype(np.float32))[None]
    np.testing.assert_allclose(feats[1], rgb(raw)[0].numpy(), rtol=1e-5)


def test_band_mismatch_is_clear(tmp_path):
    folder = write_image_folder(tmp_path / "png", per_class=2, size=32, fmt="png")
    data = open_labelled(folder)
    assert data.bands == ("red", "green", "blue")
    enc = RandomProjectionEncoder(BANDS5, img_size=32)
    with pytest.raises(BandMismatchError) as err:
        evaluate(enc, data, methods=("knn",), shots=(None,))
    msg = str(err.value)
    assert "['blue', 'green', 'red', 'nir', 'swir16']" in msg and "['red', 'green', 'blue']" in msg
    assert "missing ['nir', 'swir16']" in msg


def test_split_file(tif_folder, tmp_path):
    data = open_labelled(tif_folder)
    spec = {"train": data.ids[::2], "test": data.ids[1::2]}
    (tmp_path / "split.json").write_text(json.dumps(spec))
    custom = open_labelled(tif_folder, split_file=tmp_path / "split.json")
    assert custom.split_source == "file"
    assert [custom.ids[i] for i in custom.splits["test"]] == spec["test"]
    (tmp_path / "bad.json").write_text(json.dumps({"train": ["nope.tif"]}))
    with pytest.raises(DataError, match="unknown ids"):
        open_labelled(tif_folder, split_file=tmp_path / "bad.json")


def test_missing_or_empty_folder(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        open_labelled(tmp_path / "nope")
    (tmp_path / "empty" / "a").mkdir(parents=True)
    with pytest.raises(DataError, match="No images found"):
        open_labelled(tmp_path / "empty")


def test_band_names_of_unnamed_tifs_and_aliases(tmp_path):
    """--bands names unnamed GeoTIFF bands; sensor labels (B04) resolve to canonical names."""
    from eval_synthetic import write_scene

    for cls in ("a", "b"):
        (tmp_path / cls).mkdir()
        write_scene(tmp_path / cls / "x.tif", height=32, width=32, named=False)
    assert open_labelled(tmp_path).bands is None
    data = open_labelled(tmp_path, bands=["B02", "B03", "B04", "B08", "B11"])
    assert data.bands == BANDS5
    with pytest.raises(BandMismatchError, match="B99"):
        open_labelled(tmp_path, bands=["B02", "B99"])
    # unnamed bands with the wrong count for the model: a clear error
    rgb = RandomProjectionEncoder(("red", "green", "blue"), img_size=32)
    with pytest.raises(BandMismatchError, match="5 unnamed bands"):
        extract_features(rgb, open_labelled(tmp_path).dataset)


def test_grouped_split_keeps_places_together():
    rng = np.random.default_rng(0)
    groups = [f"loc{g}" for g in rng.integers(0, 40, 200)]
    labels = [f"c{int(g[3:]) % 4}" for g in groups]  # a place has one class
    split = stratified_split(labels, test_fraction=0.25, seed=3, groups=groups)
    train_groups = {groups[i] for i in split["train"]}
    test_groups = {groups[i] for i in split["test"]}
    assert not train_groups & test_groups
    assert sorted(np.concatenate(list(split.values())).tolist()) == list(range(200))
    assert {labels[i] for i in split["test"]} == {"c0", "c1", "c2", "c3"}
    assert np.array_equal(
        split["test"], stratified_split(labels, test_fraction=0.25, seed=3, groups=groups)["test"]
    )


def test_workers_give_the_same_features(tif_folder):
    data = open_labelled(tif_folder)
    enc = RandomProjectionEncoder(BANDS5, img_size=32, norm_stats=NORM_STATS5)
    idx = data.splits["test"]
    inline = extract_features(enc, data.dataset, indices=idx, batch_size=3)
    parallel = extract_features(enc, data.dataset, indices=idx, batch_size=3, workers=2)
    np.testing.assert_array_equal(inline, parallel)
