"""The eval/embed/viz/change commands end to end with a real (briefly LeJEPA-trained) tiny ViT encoder,
on generated image folders, generated rasters and a chip store built from the demo scenes."""

from __future__ import annotations

import json
from dataclasses import fields

import geopandas as gpd
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import rasterio
import torch
from eval_synthetic import BANDS5, CLASSES, NORM_STATS5, make_chip, write_image_folder, write_scene
from PIL import Image
from typer.testing import CliRunner

from eo_jepa.cli import app, main
from eo_jepa.errors import ConfigError
from eo_jepa.eval.datasets import open_labelled, stratified_split

pytestmark = pytest.mark.usefixtures("one_thread")

runner = CliRunner()


def invoke(*args: str) -> str:
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, f"{result.output}\n{result.exception!r}"
    return result.output


def train_tiny_encoder(out_dir, steps: int = 8, seed: int = 0, batch: int = 16):
    """vit_tiny_patch8 at 32 px trained for a few LeJEPA steps on unlabelled generated chips, then saved."""
    from eo_jepa.models import build_encoder, save_encoder
    from eo_jepa.ssl import LeJEPALoss, Projector

    torch.manual_seed(seed)
    enc = build_encoder("vit_tiny_patch8", BANDS5, img_size=32, norm_stats=NORM_STATS5)
    proj = Projector(enc.embed_dim, 256, 64, num_layers=2)
    loss_fn = LeJEPALoss(num_slices=128)
    opt = torch.optim.AdamW([*enc.parameters(), *proj.parameters()], lr=5e-4, weight_decay=0.05)
    rng = np.random.default_rng(seed)
    enc.train()
    for _ in range(steps):
        labels = rng.choice(CLASSES, batch)
        raw = torch.from_numpy(np.stack([make_chip(str(c), rng, 32) for c in labels]))
        views = []
        for _v in range(2):  # two global views: random flips + multiplicative noise
            v = torch.flip(raw, dims=[3]) if rng.random() < 0.5 else raw
            views.append(v * (1 + 0.05 * torch.randn_like(v)))
        x = enc.normalize(torch.cat(views))
        z = proj(enc(x)).view(2, batch, -1)
        out = loss_fn(z, None)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    enc.eval()
    return save_encoder(enc, out_dir, provenance={"run": "test_eval_cli"})


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return train_tiny_encoder(tmp_path_factory.mktemp("model") / "tiny")


@pytest.fixture(scope="module")
def tif_folder(tmp_path_factory):
    return write_image_folder(tmp_path_factory.mktemp("folder"), per_class=10, size=32, fmt="tif")


@pytest.fixture(scope="module")
def chip_store(tmp_path_factory):
    from eo_jepa.chips import build_chips
    from eo_jepa.demo.scenes import make_demo_scenes

    root = tmp_path_factory.mktemp("store")
    demo = make_demo_scenes(root / "demo", size="tiny")
    config = __import__("pathlib").Path(__file__).parents[1] / "configs" / "chips" / "s2_5band_64_demo.yaml"
    build_chips(demo.aois_path, config, root / "chips", stac=str(demo.items_path), fsync=False)
    return root / "chips"


@pytest.mark.parametrize(("k", "temperature"), [(None, None), (3, 0.5)])
def test_knn_cli_matches_sklearn_on_independent_features(model_dir, tif_folder, tmp_path, k, temperature):
    """The defaults (k=20, T=0.07), and other --k / --temperature values reaching the vote."""
    from sklearn.neighbors import KNeighborsClassifier

    from eo_jepa.models import load_encoder

    out = tmp_path / "knn.json"
    knobs = [] if k is None else ["--k", str(k), "--temperature", str(temperature)]
    text = invoke(
        "eval",
        "knn",
        "--model",
        model_dir,
        "--data",
        tif_folder,
        "--shots",
        "all,1",
        "--seeds",
        "0,1",
        "--out",
        out,
        *knobs,
    )
    assert "knn" in text and "1-shot" in text
    report = json.loads(out.read_text())
    full = next(r for r in report["results"] if r["shots"] is None)
    assert report["classes"] == sorted(CLASSES) and report["split"] == "seeded"
    # independent path: load, read files with rasterio, normalise, last-two-block features, sklearn kNN
    enc = load_encoder(model_dir).eval()
    data = open_labelled(tif_folder)
    split = stratified_split(data.labels, test_fraction=0.2, seed=0)

    def feats(idx):
        with torch.no_grad():
            raws = []
            for i in idx:
                with rasterio.open(data.dataset.paths[i]) as src:
                    raws.append(src.read().astype(np.float32))
            return enc.forward_intermediate_cls(enc.normalize(np.stack(raws)), n=2).numpy()

    k, temperature = k or 20, temperature or 0.07
    ref = KNeighborsClassifier(
        k, metric="cosine", algorithm="brute", weights=lambda d: np.exp((1 - d) / temperature)
    )
    ref.fit(feats(split["train"]), [data.labels[i] for i in split["train"]])
    pred = ref.predict(feats(split["test"]))
    expected = float(np.mean(pred == np.asarray([data.labels[i] for i in split["test"]])))
    assert full["mean"] == pytest.approx(expected)
    assert full["num_test"] == len(split["test"]) and full["num_train"] == len(split["train"])


@pytest.mark.parametrize(
    ("flag", "value", "says"),
    [
        ("--k", "0", "Invalid value 0 for 'knn.k'; allowed: an integer >= 1."),
        ("--k", "-5", "Invalid value -5 for 'knn.k'; allowed: an integer >= 1."),
        ("--temperature", "0", "Invalid value 0.0 for 'knn.temperature'; allowed: a finite number >= 0.02."),
        (
            "--temperature",
            "0.01",
            "Invalid value 0.01 for 'knn.temperature'; allowed: a finite number >= 0.02.",
        ),
        (
            "--temperature",
            "-1",
            "Invalid value -1.0 for 'knn.temperature'; allowed: a finite number >= 0.02.",
        ),
        ("--temperature", "nan", "'knn.temperature'"),
        ("--temperature", "inf", "'knn.temperature'"),
    ],
)
def test_knn_k_and_temperature_out_of_range_are_one_line_exit_2(
    model_dir, tmp_path, capsys, flag, value, says
):
    """k < 1 voted with no neighbour (every query got class 0); T <= 0 or tiny overflowed exp(cos/T) to
    inf in float32 and NaN/inf made every vote NaN: all used to finish with exit 0 and a wrong accuracy.
    Checked before the data is read or the model loaded (the data folder does not even exist)."""
    with pytest.raises(SystemExit) as exc:
        main(["eval", "knn", "--model", str(model_dir), "--data", str(tmp_path / "nowhere"), flag, value])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("eo-jepa: error: ") and says in err, err


def test_knn_and_linear_share_the_probe_options():
    """One ProbeOptions: the same flags with the same defaults on both commands, and one check of them."""
    import typer.main

    from eo_jepa.eval.cli import ProbeOptions, eval_app

    group = typer.main.get_command(eval_app)
    shared = {f.name: f.default for f in fields(ProbeOptions)}
    assert len(shared) == 14
    for name in ("knn", "linear"):
        params = {p.name: p for p in group.commands[name].params}
        assert {n: params[n].default for n in shared} == shared
    assert shared["shots"] == "all,1,10" and shared["batch_size"] == 64 and shared["features"] == "auto"
    with pytest.raises(ConfigError, match="--features must be auto or one of"):
        ProbeOptions(features="cls")
    with pytest.raises(ConfigError, match="--shots takes"):
        ProbeOptions(shots="all,0")


def test_linear_cli_is_deterministic(model_dir, tif_folder, tmp_path):
    args = [
        "eval",
        "linear",
        "--model",
        model_dir,
        "--data",
        tif_folder,
        "--epochs",
        "15",
        "--lr",
        "0.01",
        "--shots",
        "all,10",
        "--seeds",
        "0,1",
    ]
    invoke(*args, "--out", tmp_path / "a.json")
    invoke(*args, "--out", tmp_path / "b.json")
    a, b = (json.loads((tmp_path / f).read_text())["results"] for f in ("a.json", "b.json"))
    assert a == b and len(a) == 2 and all(0.0 <= r["mean"] <= 1.0 for r in a)
    assert a[0]["mean"] > 0.5  # 4 classes with distinct spectra: well above chance (0.25)


def test_health_cli(model_dir, tif_folder, tmp_path):
    invoke("eval", "health", "--model", model_dir, "--data", tif_folder, "--out", tmp_path / "h.json")
    report = json.loads((tmp_path / "h.json").read_text())
    assert report["n"] == 40 and report["dim"] == 192
    assert 1.0 <= report["effective_rank"] <= 40 and report["sigreg"] > 0


def test_band_mismatch_cli_is_one_line(model_dir, tmp_path, capsys):
    pngs = write_image_folder(tmp_path / "png", per_class=2, size=32, fmt="png")
    with pytest.raises(SystemExit) as exc:
        main(["eval", "knn", "--model", str(model_dir), "--data", str(pngs)])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(
        "eo-jepa: error: The model expects bands ['red', 'green', 'blue', 'nir', 'swir16']"
    ) or ("expects bands" in err and "['red', 'green', 'blue']" in err)
    assert "\n" not in err and "Traceback" not in err


def test_viz_pca_and_change_cli_with_real_encoder(model_dir, tmp_path):
    a = write_scene(tmp_path / "a.tif", height=64, width=96)
    b = write_scene(tmp_path / "b.tif", height=64, width=96, change=True)
    invoke(
        "viz",
        "pca",
        "--model",
        model_dir,
        "--input",
        a,
        "--out",
        tmp_path / "pca.png",
        "--features",
        tmp_path / "f.tif",
    )
    with Image.open(tmp_path / "pca.png") as img:
        assert img.size == (96, 64)
    with (
        rasterio.open(a) as src,
        rasterio.open(tmp_path / "pca.tif") as pca,
        rasterio.open(tmp_path / "f.tif") as f,
    ):
        assert pca.crs == src.crs and pca.res == (80.0, 80.0) and pca.shape == (8, 12)
        assert f.count == 192
    invoke("change", "--model", model_dir, "--before", a, "--after", b, "--out", tmp_path / "change.tif")
    with rasterio.open(tmp_path / "change.tif") as dst:
        dist = dst.read(1)
        assert dst.crs.to_epsg() == 32633 and dst.res == (80.0, 80.0)
    assert dist.shape == (8, 12) and np.isfinite(dist).all() and dist.min() >= -1e-5
    with Image.open(tmp_path / "change.png") as img:
        assert img.size == (96, 64)


def test_embed_geoparquet(model_dir, chip_store, tmp_path):
    from eo_jepa.chips import ChipDataset
    from eo_jepa.models import load_encoder

    out = tmp_path / "emb.parquet"
    invoke("embed", "--model", model_dir, "--data", chip_store, "--out", out)
    frame = gpd.read_parquet(out)
    ds = ChipDataset(chip_store)
    assert len(frame) == len(ds) and frame.crs.to_epsg() == 4326
    assert frame["chip_id"].tolist() == ds.index["chip_id"].tolist()
    assert frame["label"].tolist() == ds.index["label"].tolist()
    assert frame.geometry.geom_equals(ds.index.geometry.reset_index(drop=True)).all()
    table = pq.read_table(out)
    emb_type = table.schema.field("embedding").type
    assert pa.types.is_fixed_size_list(emb_type) and emb_type.list_size == 192
    assert emb_type.value_type == pa.float32()
    assert json.loads(table.schema.metadata[b"eo_jepa"])["bands"] == list(BANDS5)
    enc = load_encoder(model_dir).eval()
    with torch.no_grad():
        ref = enc(enc.normalize(np.stack([ds[i]["pixels"] for i in range(3)]), bands=ds.bands)).numpy()
    got = np.stack(table.column("embedding").to_pylist()[:3])
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5)


def test_chip_store_probe_and_pca(model_dir, chip_store, tmp_path):
    invoke(
        "eval",
        "knn",
        "--model",
        model_dir,
        "--data",
        chip_store,
        "--resplit",
        "--shots",
        "all",
        "--out",
        tmp_path / "k.json",
    )
    report = json.loads((tmp_path / "k.json").read_text())
    assert report["split"] == "seeded" and 0.0 <= report["results"][0]["mean"] <= 1.0
    from eo_jepa.chips import ChipDataset

    chip_id = ChipDataset(chip_store).index["chip_id"].iloc[2]
    invoke("viz", "pca", "--model", model_dir, "--input", f"{chip_store}:2", "--out", tmp_path / "c2.png")
    invoke(
        "viz",
        "pca",
        "--model",
        model_dir,
        "--input",
        f"{chip_store}:{chip_id}",
        "--out",
        tmp_path / "cid.png",
    )
    with Image.open(tmp_path / "c2.png") as img:
        assert img.size == (64, 64)
    assert (tmp_path / "c2.png").read_bytes() == (tmp_path / "cid.png").read_bytes()
    invoke(
        "eval",
        "health",
        "--model",
        model_dir,
        "--data",
        chip_store,
        "--features",
        "probe",
        "--out",
        tmp_path / "h.json",
    )
    health = json.loads((tmp_path / "h.json").read_text())
    assert health["n"] == len(ChipDataset(chip_store)) and health["dim"] == 2 * 192


@pytest.mark.parametrize(
    ("bands", "says"),
    [
        ("red,green,purple", "Unknown band 'purple'"),
        ("red,green,swir22", "Bands ['swir22'] are not in the chip store"),
    ],
)
def test_unknown_or_absent_bands_on_a_chip_store_are_errors(model_dir, chip_store, capsys, bands, says):
    """`--bands` used to be ignored for chip stores: a typo'd or absent band now stops the run in one line."""
    with pytest.raises(SystemExit) as exc:
        main(["eval", "knn", "--model", str(model_dir), "--data", str(chip_store), "--bands", bands])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert says in err and "\n" not in err and "Traceback" not in err
