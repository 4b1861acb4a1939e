"""The bad-input catalogue: what users may get wrong, and the one line each mistake gets back.

Every row runs the real CLI in-process (``eo_jepa.cli.main``, the console entry point) and asserts
exit status 2, one line on stderr that starts with ``eo-jepa: error:`` and names the offending input,
and no traceback. The table is the documentation of the user-error contract (README, "User errors"):
extend it whenever an error path is added.

The ``before`` column records what the same input did before issue #14 (checked by running this
table against the earlier code): ``traceback`` (exit 1), ``accepted`` (exit 0, or a silent wrong
run; for ``resume-both-corrupt`` and ``publish-no-digests`` there were no digests and no prev.pt to
check), ``late`` (an error only after work was done: a ZeroDivisionError after a training step, a
model written before --repo-id was refused), ``vague`` (exit 2, but the line did not name the bad
key) or ``pinned`` (already one line naming the input, exit 2: kept as a guarantee).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from train_data import make_chip_store

from eo_jepa.cli import main

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "configs" / "train" / "tiny_cpu.yaml")
CHIP_CFG = str(ROOT / "configs" / "chips" / "s2_5band_64_demo.yaml")


# ------------------------------------------------------------------ fixtures: real inputs to spoil
@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Path]:
    """A chip store, a published model folder, a 2-step training run, AOIs and two GeoTIFFs."""
    import rasterio
    from rasterio.transform import from_origin

    from eo_jepa.models import build_encoder, save_encoder
    from eo_jepa.train.config import load_train_config
    from eo_jepa.train.trainer import run_training

    root = tmp_path_factory.mktemp("bad_inputs")
    store = make_chip_store(root / "store", n_locations=8)
    stats = json.loads((store / "norm_stats.json").read_text())["bands"]
    bands = list(stats)
    enc = build_encoder("vit_tiny_patch8", bands, img_size=32, norm_stats=stats)
    model = save_encoder(enc, root / "model")
    cfg = load_train_config(
        TINY,
        [
            f"output_dir={root / 'runs'}",
            "name=run",
            "max_steps=2",
            "checkpoint.every=1",
            "log.tensorboard=false",
        ],
    )
    run = run_training(cfg, data=store)
    aois = root / "aois.geojson"
    aois.write_text(
        json.dumps(
            {
                "type": "FeatureCollection",
                "features": [
                    {
                        "type": "Feature",
                        "properties": {"aoi_id": "a"},
                        "geometry": {"type": "Point", "coordinates": [10.0, 45.0]},
                    }
                ],
            }
        )
    )
    tifs = []
    for k in range(2):
        path = root / f"date{k}.tif"
        px = np.random.default_rng(k).integers(100, 3000, (len(bands), 64, 64)).astype("uint16")
        with rasterio.open(
            path,
            "w",
            driver="GTiff",
            width=64,
            height=64,
            count=len(bands),
            dtype="uint16",
            crs="EPSG:32632",
            transform=from_origin(500000, 5000000, 10, 10),
        ) as dst:
            dst.write(px)
            dst.descriptions = tuple(bands)
        tifs.append(path)
    return {
        "root": root,
        "store": store,
        "model": model,
        "run": run,
        "aois": aois,
        "tif0": tifs[0],
        "tif1": tifs[1],
    }


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _spoil_model(world: dict[str, Path], tmp: Path, **changes: Any) -> Path:
    """A copy of the model folder whose config.json has ``changes`` (dotted keys) applied."""
    folder = _copy(world["model"], tmp / "spoilt_model")
    cfg = json.loads((folder / "config.json").read_text())
    for key, value in changes.items():
        node = cfg
        *parents, last = key.split("__")
        for p in parents:
            node = node[p]
        node[last] = value
    (folder / "config.json").write_text(json.dumps(cfg))
    return folder


def _flip(path: Path, n: int = 64) -> None:
    data = bytearray(path.read_bytes())
    mid = len(data) // 2
    for i in range(mid, mid + n):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def _corrupt_run(world: dict[str, Path], tmp: Path, *names: str) -> Path:
    run = _copy(world["run"], tmp / "runs" / "run")
    for name in names:
        _flip(run / "checkpoints" / name)
    return run


def _train(world: dict[str, Path], *extra: str) -> list[str]:
    return ["train", "--config", TINY, "--data", str(world["store"]), *extra]


def _resume(world: dict[str, Path], tmp: Path, *extra: str) -> list[str]:
    run = _copy(world["run"], tmp / "runs" / "run")
    return _train(
        world,
        f"output_dir={run.parent}",
        "name=run",
        "max_steps=2",
        "checkpoint.every=1",
        "log.tensorboard=false",
        "--resume",
        *extra,
    )


def _chips(world: dict[str, Path], tmp: Path, *extra: str) -> list[str]:
    return [
        "chips",
        "build",
        "--aois",
        str(world["aois"]),
        "--config",
        CHIP_CFG,
        "--out",
        str(tmp / "c"),
        *extra,
    ]


def _knn(model: Path | str, world: dict[str, Path]) -> list[str]:
    return ["eval", "knn", "--model", str(model), "--data", str(world["store"])]


Case = tuple[str, str, Callable[[dict[str, Path], Path], list[str]], str]

# (id, before, argv builder (world, tmp_path) -> argv, text the one line must contain)
CASES: list[Case] = [
    # ---- chips build: every config value has a declared range, checked before anything is fetched
    ("chips-chip_size-nan", "traceback", lambda w, t: _chips(w, t, "chip_size=.nan"), "'chip_size'"),
    ("chips-chip_size-inf", "traceback", lambda w, t: _chips(w, t, "chip_size=.inf"), "'chip_size'"),
    ("chips-gsd-nan", "accepted", lambda w, t: _chips(w, t, "gsd_m=.nan"), "Invalid value nan for 'gsd_m'"),
    ("chips-chip_size-0", "pinned", lambda w, t: _chips(w, t, "chip_size=0"), "chip_size"),
    ("chips-name-dotdot", "accepted", lambda w, t: _chips(w, t, "name=.."), "Invalid value '..' for 'name'"),
    (
        "chips-cloud-fraction",
        "pinned",
        lambda w, t: _chips(w, t, "max_cloud_fraction=1.5"),
        "max_cloud_fraction",
    ),
    ("chips-timeout-0", "accepted", lambda w, t: _chips(w, t, "stac.timeout_s=0"), "'stac.timeout_s'"),
    ("chips-retries-negative", "accepted", lambda w, t: _chips(w, t, "stac.retries=-1"), "'stac.retries'"),
    ("chips-page-size-0", "accepted", lambda w, t: _chips(w, t, "stac.page_size=0"), "'stac.page_size'"),
    (
        "chips-mask-class-300",
        "accepted",
        lambda w, t: _chips(w, t, "mask_classes=[3, 300]"),
        "'mask_classes'",
    ),
    (
        "chips-buffer-negative",
        "traceback",
        lambda w, t: _chips(w, t, "aoi.point_buffer_m=-5"),
        "'aoi.point_buffer_m'",
    ),
    (
        "chips-cloud-cover-200",
        "accepted",
        lambda w, t: _chips(w, t, "stac.max_cloud_cover=200"),
        "'stac.max_cloud_cover'",
    ),
    ("chips-unknown-band", "pinned", lambda w, t: _chips(w, t, "bands=[red, purple]"), "purple"),
    ("chips-unknown-key", "pinned", lambda w, t: _chips(w, t, "chipsize=64"), "'chipsize'"),
    (
        "chips-missing-config",
        "pinned",
        lambda w, t: [
            "chips",
            "build",
            "--aois",
            str(w["aois"]),
            "--config",
            str(t / "no.yaml"),
            "--out",
            str(t / "c"),
        ],
        "no.yaml",
    ),
    (
        "chips-dates-gt-candidates",
        "pinned",
        lambda w, t: _chips(w, t, "dates_per_location=9"),
        "dates_per_location",
    ),
    # ---- train: config values (a ZeroDivisionError after a step, or "Finished 0 steps" and exit 0, before)
    ("train-checkpoint-every-0", "late", lambda w, t: _train(w, "checkpoint.every=0"), "'checkpoint.every'"),
    ("train-log-every-0", "late", lambda w, t: _train(w, "log.every=0"), "'log.every'"),
    ("train-batch-size-0", "traceback", lambda w, t: _train(w, "data.batch_size=0"), "'data.batch_size'"),
    ("train-num-slices-0", "traceback", lambda w, t: _train(w, "loss.num_slices=0"), "'loss.num_slices'"),
    ("train-lam-2", "traceback", lambda w, t: _train(w, "loss.lam=2"), "Invalid value 2.0 for 'loss.lam'"),
    (
        "train-proj-layers-0",
        "traceback",
        lambda w, t: _train(w, "model.proj_layers=0"),
        "'model.proj_layers'",
    ),
    (
        "train-max-steps-negative",
        "accepted",
        lambda w, t: _train(w, "max_steps=-5"),
        "Invalid value -5 for 'max_steps'",
    ),
    (
        "train-name-dotdot",
        "accepted",
        lambda w, t: _train(w, "name=..", f"output_dir={t}"),
        "Invalid value '..' for 'name'",
    ),
    ("train-lr-nan", "traceback", lambda w, t: _train(w, "optim.lr=.nan"), "'optim.lr'"),
    ("train-betas-1.5", "traceback", lambda w, t: _train(w, "optim.betas=[0.9, 1.5]"), "'optim.betas'"),
    (
        "train-workers-negative",
        "traceback",
        lambda w, t: _train(w, "data.num_workers=-1"),
        "'data.num_workers'",
    ),
    (
        "train-weight-decay-negative",
        "accepted",
        lambda w, t: _train(w, "optim.weight_decay=-0.1"),
        "'optim.weight_decay'",
    ),
    ("train-img-size-0", "traceback", lambda w, t: _train(w, "model.img_size=0"), "'model.img_size'"),
    ("train-hue-1", "accepted", lambda w, t: _train(w, "views.hue=1.0"), "'views.hue'"),
    ("train-flip-nan", "pinned", lambda w, t: _train(w, "views.flip_p=.nan"), "flip_p"),
    ("train-num-local-negative", "pinned", lambda w, t: _train(w, "views.num_local=-1"), "views.num_local"),
    ("train-output-dir-empty", "accepted", lambda w, t: _train(w, "output_dir=''"), "'output_dir'"),
    ("train-unknown-key", "pinned", lambda w, t: _train(w, "optim.lrr=1e-3"), "'optim.lrr'"),
    ("train-bad-choice", "pinned", lambda w, t: _train(w, "dist.strategy=zero"), "'dist.strategy'"),
    ("train-missing-config", "pinned", lambda w, t: ["train", "--config", str(t / "no.yaml")], "no.yaml"),
    (
        "train-epochs-0-no-max-steps",
        "pinned",
        lambda w, t: _train(w, "epochs=0", "max_steps=null"),
        "max_steps",
    ),
    # ---- train --resume: the saved config, the checkpoint's integrity
    ("resume-changed-lr", "accepted", lambda w, t: _resume(w, t, "optim.lr=0.5"), "optim.lr (0.001 -> 0.5)"),
    (
        "resume-changed-batch",
        "accepted",
        lambda w, t: _resume(w, t, "data.batch_size=8"),
        "data.batch_size=16 x optim.grad_accum=1) but this run has 8",
    ),
    (
        "resume-no-run",
        "pinned",
        lambda w, t: _train(w, f"output_dir={t}", "name=none", "--resume"),
        "No training checkpoint",
    ),
    (
        "resume-both-corrupt",
        "accepted",
        lambda w, t: (
            _corrupt_run(w, t, "last.pt", "prev.pt"),
            _train(
                w, f"output_dir={t / 'runs'}", "name=run", "max_steps=2", "checkpoint.every=1", "--resume"
            ),
        )[1],
        "Neither last.pt nor prev.pt",
    ),
    (
        "train-over-existing-run",
        "pinned",
        lambda w, t: _train(w, f"output_dir={w['run'].parent}", "name=run"),
        "already has a checkpoint",
    ),
    # ---- publish
    (
        "publish-corrupt-last",
        "accepted",
        lambda w, t: ["publish", str(_corrupt_run(w, t, "last.pt")), "--out", str(t / "m")],
        "last.pt",
    ),
    (
        "publish-no-digests",
        "accepted",
        lambda w, t: (
            lambda r: (
                (r / "checkpoints" / "digests.json").unlink(),
                ["publish", str(r), "--out", str(t / "m")],
            )[1]
        )(_copy(w["run"], t / "r")),
        "no recorded digest",
    ),
    (
        "publish-format",
        "pinned",
        lambda w, t: ["publish", str(w["run"]), "--out", str(t / "m"), "--format", "onnx"],
        "--format 'onnx'",
    ),
    (
        "publish-not-a-run",
        "pinned",
        lambda w, t: ["publish", str(t), "--out", str(t / "m")],
        "checkpoints/last.pt",
    ),
    (
        "publish-out-is-a-file",
        "traceback",
        lambda w, t: ((t / "f").write_text("x"), ["publish", str(w["run"]), "--out", str(t / "f")])[1],
        "is a file",
    ),
    (
        "publish-out-other-folder",
        "accepted",
        lambda w, t: (
            (t / "docs").mkdir(),
            (t / "docs" / "notes.txt").write_text("mine"),
            ["publish", str(w["run"]), "--out", str(t / "docs")],
        )[2],
        "not an eo-jepa checkpoint",
    ),
    (
        "publish-repo-id",
        "late",
        lambda w, t: ["publish", str(w["run"]), "--out", str(t / "m"), "--repo-id", "noslash"],
        "noslash",
    ),
    # ---- models
    ("models-unknown", "pinned", lambda w, t: ["models", "info", "no-such-model"], "no-such-model"),
    # ---- eval / embed / viz / change: checkpoint folders that do not hold what they claim
    (
        "eval-config-not-json",
        "traceback",
        lambda w, t: _knn(
            (lambda f: ((f / "config.json").write_text("{not json"), f)[1])(_copy(w["model"], t / "m")), w
        ),
        "is not valid JSON",
    ),
    (
        "eval-img-size-abc",
        "traceback",
        lambda w, t: _knn(_spoil_model(w, t, img_size="abc"), w),
        "img_size='abc'",
    ),
    ("eval-input-null", "traceback", lambda w, t: _knn(_spoil_model(w, t, input=None), w), "input=None"),
    ("eval-bands-null", "vague", lambda w, t: _knn(_spoil_model(w, t, bands=None), w), "bands=None"),
    (
        "eval-std-zero",
        "pinned",
        lambda w, t: _knn(_spoil_model(w, t, norm_stats__red__std=0), w),
        "red",
    ),
    (
        "eval-format-version-text",
        "traceback",
        lambda w, t: _knn(_spoil_model(w, t, format_version="x"), w),
        "format_version='x'",
    ),
    (
        "eval-weights-outside-folder",
        "accepted",
        lambda w, t: (
            (t / "elsewhere").mkdir(),
            shutil.copy(w["model"] / "model.safetensors", t / "elsewhere" / "w.st"),
            _knn(_spoil_model(w, t, provenance__weights_file="../elsewhere/w.st"), w),
        )[2],
        "provenance.weights_file='../elsewhere/w.st'",
    ),
    (
        "eval-tampered-weights",
        "pinned",
        lambda w, t: _knn(
            (lambda f: (_flip(f / "model.safetensors", 8), f)[1])(_copy(w["model"], t / "m")), w
        ),
        "sha256",
    ),
    ("eval-unknown-model", "pinned", lambda w, t: _knn("no-such-model", w), "no-such-model"),
    ("eval-shots", "pinned", lambda w, t: [*_knn(w["model"], w), "--shots", "abc"], "'abc'"),
    ("eval-seeds", "pinned", lambda w, t: [*_knn(w["model"], w), "--seeds", "x,y"], "--seeds"),
    ("eval-knn-k-0", "accepted", lambda w, t: [*_knn(w["model"], w), "--k", "0"], "'knn.k'"),
    (
        "eval-knn-temperature-0",
        "accepted",
        lambda w, t: [*_knn(w["model"], w), "--temperature", "0"],
        "'knn.temperature'",
    ),
    (
        "eval-knn-temperature-nan",
        "accepted",
        lambda w, t: [*_knn(w["model"], w), "--temperature", "nan"],
        "'knn.temperature'",
    ),
    (
        "eval-linear-epochs-0",
        "traceback",
        lambda w, t: [
            "eval",
            "linear",
            "--model",
            str(w["model"]),
            "--data",
            str(w["store"]),
            "--epochs",
            "0",
        ],
        "'linear.epochs'",
    ),
    (
        "eval-linear-lr-nan",
        "traceback",
        lambda w, t: ["eval", "linear", "--model", str(w["model"]), "--data", str(w["store"]), "--lr", "nan"],
        "'linear.lr'",
    ),
    (
        "eval-health-features",
        "pinned",
        lambda w, t: [
            "eval",
            "health",
            "--model",
            str(w["model"]),
            "--data",
            str(w["store"]),
            "--features",
            "x",
        ],
        "--features",
    ),
    (
        "embed-features",
        "pinned",
        lambda w, t: [
            "embed",
            "--model",
            str(w["model"]),
            "--data",
            str(w["store"]),
            "--out",
            str(t / "e.parquet"),
            "--features",
            "x",
        ],
        "--features",
    ),
    (
        "embed-input-null",
        "traceback",
        lambda w, t: [
            "embed",
            "--model",
            str(_spoil_model(w, t, input=None)),
            "--data",
            str(w["store"]),
            "--out",
            str(t / "e.parquet"),
        ],
        "input=None",
    ),
    (
        "viz-img-size-abc",
        "traceback",
        lambda w, t: [
            "viz",
            "pca",
            "--model",
            str(_spoil_model(w, t, img_size="abc")),
            "--input",
            str(w["tif0"]),
            "--out",
            str(t / "p.png"),
        ],
        "img_size='abc'",
    ),
    (
        "change-input-null",
        "traceback",
        lambda w, t: [
            "change",
            "--model",
            str(_spoil_model(w, t, input=None)),
            "--before",
            str(w["tif0"]),
            "--after",
            str(w["tif1"]),
            "--out",
            str(t / "c.tif"),
        ],
        "input=None",
    ),
    (
        "change-patch-size-0",
        "traceback",
        lambda w, t: [
            "change",
            "--model",
            str(_spoil_model(w, t, patch_size=0)),
            "--before",
            str(w["tif0"]),
            "--after",
            str(w["tif1"]),
            "--out",
            str(t / "c.tif"),
        ],
        "patch_size=0",
    ),
    # ---- quickstart
    (
        "quickstart-size",
        "pinned",
        lambda w, t: ["quickstart", "--out", str(t / "q"), "--size", "huge"],
        "huge",
    ),
    (
        "quickstart-out-is-a-file",
        "pinned",
        lambda w, t: ((t / "q").write_text("x"), ["quickstart", "--out", str(t / "q"), "--size", "tiny"])[1],
        "is a file",
    ),
]


def test_the_catalogue_is_large_and_covers_every_command():
    assert len(CASES) >= 50
    commands = {argv_id.split("-")[0] for argv_id, *_ in CASES}
    assert {
        "chips",
        "train",
        "resume",
        "publish",
        "models",
        "eval",
        "embed",
        "viz",
        "change",
        "quickstart",
    } <= commands
    assert len({c[0] for c in CASES}) == len(CASES)


@pytest.mark.parametrize(("case_id", "before", "argv", "names"), CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_and_exit_2(case_id, before, argv, names, world, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("EO_JEPA_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)  # nothing a case writes by accident lands in the repository
    args = argv(world, tmp_path)
    with pytest.raises(SystemExit) as exc:
        main(args)
    out, err = capsys.readouterr()
    assert exc.value.code == 2, f"{case_id}: exit {exc.value.code}\n{err[-2000:]}"
    assert "Traceback" not in out + err
    line = err.strip()
    assert "\n" not in line, f"{case_id}: more than one line:\n{err}"
    assert line.startswith("eo-jepa: error: "), line
    assert names in line, f"{case_id}: {line!r} does not name {names!r}"
