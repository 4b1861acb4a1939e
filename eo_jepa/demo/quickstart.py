"""The offline quickstart: the whole eo-jepa journey on generated demo data, in one call.

Steps (each records completion in ``DIR/quickstart_state.json`` and is skipped on a re-run;
``fresh=True`` / ``--fresh`` deletes the quickstart's own outputs and starts over):

1. ``scenes``   — a small STAC catalogue of Sentinel-2-like COGs + a bundled AOI list;
2. ``chips``    — a chip dataset built by the real chip builder from that catalogue
                  (stats and data card included);
3. ``pretrain`` — a tiny multispectral ViT pretrained with LeJEPA on CPU;
4. ``publish``  — the run exported as a checkpoint folder and loaded back with ``eo_jepa.load``;
5. ``evaluate`` — kNN accuracy of the untrained vs the pretrained encoder on held-out labelled
                  chips, a PCA feature-map PNG and the loss curve.

A summary table (also written to ``DIR/summary.md`` / ``summary.json``) says where everything is.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import torch
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from rasterio.windows import from_bounds
from shapely.geometry import box

import eo_jepa
from eo_jepa._version import __version__
from eo_jepa.chips import store
from eo_jepa.chips.build import PLAN_NAME, build_chips
from eo_jepa.chips.config import ChipConfig
from eo_jepa.chips.dataset import ChipDataset
from eo_jepa.chips.grid import Location
from eo_jepa.chips.read import SourceCache, gdal_env, read_chip
from eo_jepa.config import from_dict
from eo_jepa.demo.scenes import CLASSES, make_demo_scenes
from eo_jepa.errors import ConfigError, DataError
from eo_jepa.eval.datasets import LabelledData, open_labelled
from eo_jepa.eval.dense import dense_probe, tiles
from eo_jepa.eval.pca import pca_map
from eo_jepa.eval.probe import evaluate
from eo_jepa.stac import load_static_items
from eo_jepa.train.config import TrainConfig
from eo_jepa.train.data import open_source
from eo_jepa.train.health import health_rows
from eo_jepa.train.model import build_encoder_for
from eo_jepa.train.publish import publish
from eo_jepa.train.trainer import CHECKPOINT_DIR, LAST, METRICS, run_training
from eo_jepa.utils.io import atomic_open, atomic_write_json, atomic_write_text

log = logging.getLogger(__name__)

STATE_FILE = "quickstart_state.json"
SIZE_ENV = "EO_JEPA_QUICKSTART_SIZE"
DEMO_BANDS = ("red", "green", "blue", "nir", "swir16")
FEWSHOT_DRAWS = 10  # random draws of the few-shot reference set, averaged

# Sub-paths of DIR the quickstart owns (and deletes on ``fresh``); nothing else in DIR is touched.
OWNED = ("scenes", "chips", "runs", "model", "eval", STATE_FILE, "summary.md", "summary.json")


@dataclass(frozen=True)
class Preset:
    """How big the quickstart is. ``small`` is the default journey; ``tiny`` is for tests."""

    name: str
    scenes_size: str  # make_demo_scenes(size=...)
    n_dates: int  # acquisitions per tile
    chip_size: int  # pixels per side at 10 m; also the global view size and the encoder's img_size
    dates_per_location: int
    arch: str
    steps: int
    batch_size: int
    lr: float
    global_views: int
    local_views: int
    local_crop: int
    knn_k: int
    multi_date: bool = True  # global views from different dates of the same location
    seed: int = 0


_SMALL = Preset(
    name="small",
    scenes_size="small",
    n_dates=4,
    chip_size=16,
    dates_per_location=3,
    arch="vit_tiny_patch8",
    steps=120,
    batch_size=32,
    lr=2e-4,
    global_views=2,
    local_views=2,
    local_crop=8,
    knn_k=10,
)
# The test-suite size: the same recipe on the smaller demo scenes, fewer steps.
PRESETS: dict[str, Preset] = {
    "small": _SMALL,
    "tiny": replace(_SMALL, name="tiny", scenes_size="tiny", steps=40),
}

STEPS: tuple[tuple[str, str], ...] = (
    ("scenes", "Demo STAC catalogue and AOIs"),
    ("chips", "Chip dataset (real chip builder), stats and data card"),
    ("pretrain", "LeJEPA pretraining on CPU"),
    ("publish", "Publish the checkpoint and load it back"),
    ("evaluate", "kNN before vs after, PCA map, loss curve"),
)


def default_size() -> str:
    """The preset used when none is given: ``$EO_JEPA_QUICKSTART_SIZE`` or ``small``."""
    return os.environ.get(SIZE_ENV, "small")


def get_preset(size: str) -> Preset:
    try:
        return PRESETS[size]
    except KeyError:
        raise ConfigError(f"Unknown quickstart size {size!r}; choose one of: {', '.join(PRESETS)}.") from None


@dataclass
class QuickstartResult:
    """What a quickstart run produced: per-step outputs and timings, plus the summary text."""

    out_dir: Path
    size: str
    steps: dict[str, dict[str, Any]] = field(default_factory=dict)
    summary: str = ""

    def output(self, step: str, key: str) -> Any:
        return self.steps[step]["outputs"][key]


# --------------------------------------------------------------------------- state


def _read_state(out_dir: Path) -> dict[str, Any]:
    path = out_dir / STATE_FILE
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        log.warning("%s is unreadable; starting the quickstart over.", path)
        return {}


def _new_state(size: str) -> dict[str, Any]:
    return {"eo_jepa_version": __version__, "size": size, "steps": {}}


def clean(out_dir: Path) -> None:
    """Delete the quickstart's own outputs under ``out_dir`` (nothing else there)."""
    for name in OWNED:
        path = out_dir / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


# --------------------------------------------------------------------------- driver


def run_quickstart(
    out_dir: str | os.PathLike[str] = "eo-jepa-quickstart",
    *,
    size: str | None = None,
    fresh: bool = False,
    echo: Callable[[str], None] | None = None,
    upto: str | None = None,
) -> QuickstartResult:
    """Run (or resume) the quickstart in ``out_dir``; return its per-step outputs and summary.

    ``upto`` stops after the named step (the notebooks use it to fetch just the data).
    A directory made with another ``size`` is an error unless ``fresh`` is set.
    """
    out = Path(out_dir).expanduser().resolve()
    size = size or default_size()
    preset = get_preset(size)
    step_names = [s for s, _ in STEPS]
    if upto is not None and upto not in step_names:
        raise ConfigError(f"Unknown quickstart step {upto!r}; choose one of: {', '.join(step_names)}.")
    say = echo or (lambda msg: log.info("%s", msg))
    if out.exists() and not out.is_dir():
        raise DataError(f"--out {str(out)!r} is a file; pass a directory.")
    out.mkdir(parents=True, exist_ok=True)

    state = _read_state(out)
    # --fresh only ever deletes in a folder the quickstart has made (it holds our state file), so
    # pointing --out at a project folder with its own runs/ or model/ cannot cost anything.
    if fresh and (out / STATE_FILE).exists():
        say(f"--fresh: deleting the previous quickstart outputs in {out}")
        clean(out)
        state = {}
    if state and state.get("size") != size:
        raise ConfigError(
            f"{out} holds a quickstart of size {state.get('size')!r}, not {size!r}; "
            "pass --fresh to start over or choose another --out."
        )
    if not state:
        state = _new_state(size)
        atomic_write_json(out / STATE_FILE, state)

    result = QuickstartResult(out_dir=out, size=size)
    total = len(STEPS)
    for i, (name, title) in enumerate(STEPS, start=1):
        done = state["steps"].get(name)
        if done and done.get("completed"):
            say(f"[{i}/{total}] {title}: done earlier ({done['seconds']:.0f} s), skipped")
        else:
            say(f"[{i}/{total}] {title} ...")
            t0 = time.perf_counter()
            outputs = _STEP_FUNCS[name](out, preset, result, say)
            seconds = time.perf_counter() - t0
            done = {
                "completed": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "seconds": round(seconds, 2),
                "outputs": outputs,
            }
            state["steps"][name] = done
            atomic_write_json(out / STATE_FILE, state)
            say(f"[{i}/{total}] {title}: done in {seconds:.0f} s")
        result.steps[name] = done
        if name == upto:
            return result

    result.summary = _write_summary(out, preset, result)
    return result


# --------------------------------------------------------------------------- steps

Say = Callable[[str], None]


def _step_scenes(out: Path, preset: Preset, result: QuickstartResult, say: Say) -> dict[str, Any]:
    # Idempotent: a complete earlier output with the same parameters is reused, a partial one redone.
    scenes = make_demo_scenes(
        out / "scenes", seed=preset.seed, size=preset.scenes_size, n_dates=preset.n_dates
    )
    say(f"      {len(scenes.tiles)} tile(s) x {len(scenes.dates)} dates, AOIs in {scenes.aois_path.name}")
    return {
        "root": str(scenes.root),
        "items": str(scenes.items_path),
        "collection": str(scenes.collection_path),
        "aois": str(scenes.aois_path),
        "tiles": list(scenes.tiles),
        "dates": list(scenes.dates),
    }


def demo_chip_config(preset: Preset) -> Any:
    """The chip-build config of the quickstart (also used by the notebooks).

    Demo point AOIs carry their own ``buffer_m``, which the chip builder honours.
    """
    cfg = {
        "name": f"eo-jepa-demo-{preset.name}",
        "sensor": "sentinel-2-l2a",
        "bands": list(DEMO_BANDS),
        "chip_size": preset.chip_size,
        "gsd_m": 10.0,
        "stac": {"provider": "planetary-computer", "max_cloud_cover": 95.0},
        "aoi": {"start": "2021-01-01", "end": "2023-12-31"},
        "dates_per_location": preset.dates_per_location,
        "max_candidates": max(preset.n_dates, preset.dates_per_location),
        "max_cloud_fraction": 0.3,
        "max_nodata_fraction": 0.05,
        "task_size": 8,
        "executor": "thread",
    }
    return from_dict(ChipConfig, cfg)


def _step_chips(out: Path, preset: Preset, result: QuickstartResult, say: Say) -> dict[str, Any]:
    root = out / "chips"
    items = result.output("scenes", "items")
    aois = result.output("scenes", "aois")
    if not (root / store.DATASET_NAME).is_file():
        # The same builder as for Planetary Computer; only the STAC source (a static ItemCollection
        # of the demo COGs) differs. An interrupted build is finished with resume=True.
        resume = (root / store.BUILD_DIR / PLAN_NAME).is_file()
        if not resume and root.exists():  # killed before the builder wrote its plan: start clean
            shutil.rmtree(root)
        with _quiet("eo_jepa.chips", "eo_jepa.stac"):  # per-AOI search lines; the progress bar stays
            report = build_chips(aois, demo_chip_config(preset), root, stac=items, workers=1, resume=resume)
        say(f"      {report.summary()}")
    stats = json.loads((root / store.STATS_NAME).read_text())
    _check_stats(stats, root)
    counts: dict[str, dict[str, int]] = {}
    for split in ("train", "val", "test"):
        ds = ChipDataset(root, split)
        counts[split] = dict(sorted(Counter(lab or "-" for lab in ds.labels).items()))
    say(f"      ok chips by split: {', '.join(f'{k} {sum(v.values())}' for k, v in counts.items())}")
    return {
        "root": str(root),
        "data_card": str(root / store.CARD_NAME),
        "norm_stats": str(root / store.STATS_NAME),
        "counts": counts,
    }


@contextlib.contextmanager
def _quiet(*names: str) -> Iterator[None]:
    """Raise the given loggers to WARNING for the duration (keeps the quickstart's output short)."""
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(max(lg.getEffectiveLevel(), logging.WARNING))
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def _check_stats(stats: dict[str, Any], root: Path) -> None:
    """Refuse to train on statistics that cannot be right (a broken build must not pass silently)."""
    for band, s in stats["bands"].items():
        values = [s[k] for k in ("mean", "std", "p1", "p99")]
        if not all(math.isfinite(v) for v in values) or s["std"] <= 0 or not s["p1"] <= s["mean"] <= s["p99"]:
            raise DataError(f"Band {band!r} of {root} has implausible statistics {s}; rebuild with --fresh.")


def train_config(preset: Preset, out: Path) -> Any:
    """The quickstart's LeJEPA training config (a :class:`~eo_jepa.train.config.TrainConfig`)."""
    cfg = {
        "name": "quickstart",
        "output_dir": str(out / "runs"),
        "seed": preset.seed,
        "epochs": 10_000,
        "max_steps": preset.steps,
        "device": "cpu",
        "num_threads": min(2, os.cpu_count() or 1),
        "data": {
            "kind": "chips",
            "split": "train",
            "batch_size": preset.batch_size,
            "num_workers": 0,
            "multi_date": preset.multi_date,
        },
        "views": {
            "num_global": preset.global_views,
            "num_local": preset.local_views,
            "global_size": preset.chip_size,
            "local_size": preset.local_crop,
            # Reflectance is the signal: gentle brightness/contrast jitter, no grayscale (it would
            # teach invariance to the spectrum that tells land covers apart), light blur. Crops,
            # flips, 90° rotations and other dates of the same place carry the invariances.
            "jitter_p": 0.3,
            "brightness": 0.2,
            "contrast": 0.2,
            "grayscale_p": 0.0,
            "blur_p": 0.2,
        },
        "model": {
            "arch": preset.arch,
            "img_size": preset.chip_size,
            "proj_hidden": 512,
            "proj_out": 64,
            "proj_layers": 2,
        },
        "loss": {"lam": 0.05, "lam_batch": 256, "num_slices": 256},
        "optim": {"lr": preset.lr, "warmup_steps": max(1, preset.steps // 10), "precision": "fp32"},
        "log": {"every": 1, "rank_every": 10, "tensorboard": True},
        "checkpoint": {"every": 25},
    }
    return from_dict(TrainConfig, cfg)


def _step_pretrain(out: Path, preset: Preset, result: QuickstartResult, say: Say) -> dict[str, Any]:
    cfg = train_config(preset, out)
    resume = (cfg.run_dir / CHECKPOINT_DIR / LAST).is_file()  # an interrupted run continues exactly
    if resume:
        say("      resuming the interrupted training run")
    run_dir = run_training(cfg, data=result.output("chips", "root"), resume=resume)
    rows = [json.loads(line) for line in (run_dir / METRICS).read_text().splitlines() if line.strip()]
    first, last = rows[0], rows[-1]
    say(f"      {last['step']} steps: loss {first['loss']:.4f} -> {last['loss']:.4f}")
    return {
        "run_dir": str(run_dir),
        "steps": int(last["step"]),
        "loss_first": float(first["loss"]),
        "loss_last": float(last["loss"]),
        "loss_curve_png": str(run_dir / "loss_curve.png"),
    }


def _step_publish(out: Path, preset: Preset, result: QuickstartResult, say: Say) -> dict[str, Any]:
    model_dir = out / "model"
    if model_dir.exists():  # an interrupted earlier export: redo it
        shutil.rmtree(model_dir)
    publish(result.output("pretrain", "run_dir"), model_dir)
    encoder = eo_jepa.load(str(model_dir))  # the user's way back in
    stats = json.loads(Path(result.output("chips", "norm_stats")).read_text())["bands"]
    for band in encoder.bands:
        if not math.isclose(encoder.norm_stats[band]["mean"], stats[band]["mean"], rel_tol=1e-6):
            raise DataError(f"The published checkpoint's {band!r} statistics differ from the chip store's.")
    say(f"      eo_jepa.load({str(model_dir)!r}) -> {encoder.arch}, bands {list(encoder.bands)}")
    return {
        "model_dir": str(model_dir),
        "arch": encoder.arch,
        "bands": list(encoder.bands),
        "embed_dim": int(encoder.embed_dim),
    }


def _step_evaluate(out: Path, preset: Preset, result: QuickstartResult, say: Say) -> dict[str, Any]:
    chips = Path(result.output("chips", "root"))
    pretrained = eo_jepa.load(result.output("publish", "model_dir"))
    untrained = untrained_encoder(preset, out, chips)
    eval_dir = out / "eval"
    eval_dir.mkdir(parents=True, exist_ok=True)
    scores = knn_compare({"untrained": untrained, "pretrained": pretrained}, chips, k=preset.knn_k)
    for tag, score in scores.items():
        say(
            f"      kNN accuracy, {tag:<10}: {score['accuracy']:.3f} ({score['shots']} chips per class), "
            f"{score['full_accuracy']:.3f} (all train chips)"
        )
    scene = read_demo_scene(result.output("scenes", "items"), result.output("scenes", "root"), preset)
    pca_png = write_pca_figure(
        eval_dir / "pca_feature_map.png", scene, {"untrained": untrained, "pretrained": pretrained}
    )
    dense = dense_compare({"untrained": untrained, "pretrained": pretrained}, scene)
    for tag, res in dense.items():
        say(f"      dense probe mIoU, {tag:<10}: {res['miou']:.3f} (linear per-patch, held-out tiles)")
    atomic_write_json(eval_dir / "dense.json", dense)
    knn = scores["pretrained"]
    atomic_write_json(eval_dir / "knn.json", {"k": preset.knn_k, **scores})
    rank = backbone_rank(Path(result.output("pretrain", "run_dir")))
    if rank:
        say(
            f"      backbone rank (RankMe, centred): {rank['rank_untrained']:.1f} -> {rank['rank_pretrained']:.1f}"
        )
    return {
        **rank,
        "knn_k": preset.knn_k,
        "shots": knn["shots"],
        "n_train": knn["n_train"],
        "n_test": knn["n_test"],
        "classes": knn["classes"],
        "knn_untrained": scores["untrained"]["accuracy"],
        "knn_pretrained": scores["pretrained"]["accuracy"],
        "knn_full_untrained": scores["untrained"]["full_accuracy"],
        "knn_full_pretrained": scores["pretrained"]["full_accuracy"],
        "knn_json": str(eval_dir / "knn.json"),
        "dense_miou_untrained": dense["untrained"]["miou"],
        "dense_miou_pretrained": dense["pretrained"]["miou"],
        "dense_tiles": dense["pretrained"]["tiles"],
        "dense_json": str(eval_dir / "dense.json"),
        "pca_png": str(pca_png),
        "loss_curve_png": result.output("pretrain", "loss_curve_png"),
    }


def dense_compare(encoders: dict[str, Any], scene: DemoScene, tile: int = 64) -> dict[str, dict[str, Any]]:
    """The dense probe (:func:`eo_jepa.eval.dense.dense_probe`) of each encoder on the demo scene's land cover.

    The scene is cut into ``tile`` px tiles, split like a checkerboard (half to train the linear
    per-patch head, half held out, so neighbouring pixels never cross the split); pixels of unknown
    land cover or masked (cloud) are not scored.
    """
    truth = np.where(np.asarray(scene.valid, bool), np.asarray(scene.truth, np.int64), 0)
    items = tiles(np.asarray(scene.pixels, np.float32), truth, tile)
    per_row = scene.truth.shape[1] // tile
    train = [it for k, it in enumerate(items) if (k // per_row + k % per_row) % 2 == 0]
    test = [it for k, it in enumerate(items) if (k // per_row + k % per_row) % 2 == 1]
    names = {i + 1: name for i, name in enumerate(scene.classes)}
    out = {}
    for tag, encoder in encoders.items():
        res = dense_probe(encoder, train, test, class_names=names, seeds=(0,))
        out[tag] = {**res.to_dict(), "tiles": {"train": len(train), "test": len(test), "size": tile}}
    return out


def backbone_rank(run_dir: Path) -> dict[str, Any]:
    """Backbone embedding RankMe (centred) on the held-out probe chips at step 0 and at the end, from
    the trainer's ``health.jsonl`` (the untrained encoder is the run's step 0); ``{}`` without it."""
    rows = health_rows(run_dir)
    if len(rows) < 2:
        return {}
    return {"rank_untrained": rows[0]["rank_embed_c"], "rank_pretrained": rows[-1]["rank_embed_c"]}


def untrained_encoder(preset: Preset, out: Path, chips: str | Path) -> Any:
    """The encoder exactly as pretraining started: same seed, same construction as the trainer's."""
    cfg = train_config(preset, out)
    source = open_source(cfg.data, chips)
    torch.manual_seed(cfg.seed)
    return build_encoder_for(cfg, source).eval()


def held_out_data(chips: str | Path) -> LabelledData:
    """The quickstart's kNN split of a chip store, read into memory: the train chips are the reference
    set, the val and test chips (in that order) the held-out set, both limited to the classes of the
    train split. The store's splits keep AOIs whole, so no held-out chip shares an AOI with a reference."""
    data = open_labelled(chips)
    train = data.splits["train"]
    classes = {data.labels[i] for i in train}
    if len(classes) < 2:
        raise DataError(f"The chip store {chips} has fewer than 2 labelled classes in its train split.")
    held = [i for split in ("val", "test") for i in data.splits.get(split, ()) if data.labels[i] in classes]
    if not held:
        raise DataError(f"The chip store {chips} has no labelled val/test chips to evaluate on.")
    items = [data.dataset[i] for i in range(len(data.dataset))]  # read once, shared by every encoder
    return replace(data, dataset=items, splits={"train": train, "test": np.asarray(held, np.int64)})


def knn_compare(
    encoders: dict[str, Any], chips: str | Path, *, k: int, shots: int = 5
) -> dict[str, dict[str, Any]]:
    """Weighted kNN accuracy of each encoder on the held-out (val + test) chips, by :func:`eo_jepa.eval.probe.evaluate`.

    Two reference sets from the train split (:func:`held_out_data`): ``shots`` chips per class (the
    headline ``accuracy``, mean over :data:`FEWSHOT_DRAWS` seeded draws, the same draws for every
    encoder) and all train chips (``full_accuracy``). On the demo's clean spectra the full reference
    set saturates (an untrained network already scores ~0.97), so the few-shot setting, where
    pretraining is meant to pay off (the LeJEPA paper reports 1- and 10-shot results the same way),
    is the one compared. The probe is eval's kNN (cosine, votes weighted by exp(similarity / 0.07))
    on the ``probe`` features: ``eo-jepa eval knn --k K --shots 5,all --features probe``, with the val
    chips held out too (the CLI holds out the test split only).
    """
    data = held_out_data(chips)
    out = {}
    for tag, encoder in encoders.items():
        with _quiet("eo_jepa.eval.probe"):  # the per-probe log lines; the quickstart prints its own
            few, full = evaluate(
                encoder,
                data,
                methods=("knn",),
                shots=(shots, None),
                seeds=tuple(range(FEWSHOT_DRAWS)),
                k=k,
                features="probe",
            )
        out[tag] = {
            "accuracy": few.mean,  # the headline: few labelled reference chips
            "fewshot_std": few.std,
            "fewshot_draws": few.accuracies,
            "full_accuracy": full.mean,
            "per_class_full": full.per_class,
            "shots": shots,
            "classes": full.classes,
            "n_train": full.num_train,
            "n_test": full.num_test,
        }
    return out


@dataclass
class DemoScene:
    """A window of one demo acquisition read with the chip builder's reader (harmonised, masked)."""

    pixels: Any  # (C, H, W) float32, DEMO_BANDS order
    valid: Any  # (H, W) bool
    truth: Any  # (H, W) uint8 land-cover codes (0 unknown), from the demo's truth map
    classes: tuple[str, ...]
    item_id: str
    bands: tuple[str, ...] = DEMO_BANDS


def read_demo_scene(
    items_path: str | Path, scenes_root: str | Path, preset: Preset, size: int = 256, tile: str | None = None
) -> DemoScene:
    """The centre ``size`` x ``size`` pixels of the least cloudy demo acquisition (of one MGRS ``tile``,
    e.g. ``"31UFT"``, when given), for pictures and dense probes.

    Read by :func:`eo_jepa.chips.read.read_chip` (the chip builder's reader), so the values are
    exactly what chips hold: harmonised reflectance x 10000, SCL-masked.
    """
    items = sorted(load_static_items(items_path), key=lambda it: (it.cloud_cover or 0.0, it.id))
    item = next(it for it in items if tile is None or f"_T{tile}_" in it.id)
    asset = item.assets["B04"]
    a, _, c, _, e, f = asset.transform[:6]
    rows, cols = asset.shape
    size = min(size, rows, cols)
    x0 = c + a * ((cols - size) // 2)
    y0 = f + e * ((rows - size) // 2)
    span = 10.0 * size
    loc = Location(
        location_id="demo-scene",
        aoi_id="demo-scene",
        split="test",
        label=None,
        start="2000-01-01",
        end="2100-01-01",
        epsg=int(item.epsg or asset.epsg),
        x0=float(x0),
        y0=float(y0),
        gsd=10.0,
        size=int(size),
        footprint=box(x0, y0 - span, x0 + span, y0),
    )
    cfg = demo_chip_config(preset)
    cache = SourceCache()
    try:
        with gdal_env():
            chip = read_chip(item, loc, cfg, cache)
    finally:
        cache.close()
    tile = item.id.split("_T")[-1][:5]
    with rasterio.open(Path(scenes_root) / "landcover" / f"{tile}.tif") as src:
        window = from_bounds(x0, y0 - span, x0 + span, y0, src.transform)
        truth = src.read(1, window=window, out_shape=(size, size))
    assert chip.pixels is not None
    return DemoScene(chip.pixels.astype(np.float32), chip.valid, truth, CLASSES, item.id)


def true_color(
    pixels: Any, bands: tuple[str, ...] = DEMO_BANDS, stats: dict[str, dict[str, float]] | None = None
) -> Any:
    """(H, W, 3) float in [0, 1] from red/green/blue (C, H, W) raw values.

    Stretched between the 2nd and 98th percentile of these pixels, or of a dataset when its
    ``norm_stats`` (with ``p2``/``p98``) are given, so that chips share one colour scale.
    """
    rgb = np.stack([pixels[list(bands).index(b)] for b in ("red", "green", "blue")], axis=-1).astype(
        np.float64
    )
    if stats is not None:
        lo = min(stats[b]["p2"] for b in ("red", "green", "blue"))
        hi = max(stats[b]["p98"] for b in ("red", "green", "blue"))
    else:
        lo, hi = np.percentile(rgb, [2, 98])
    return np.clip((rgb - lo) / max(hi - lo, 1e-6), 0, 1)


def write_pca_figure(path: Path, scene: DemoScene, encoders: dict[str, Any]) -> Path:
    """True colour | land-cover truth | PCA of the dense features of each encoder, side by side.

    Drawn with matplotlib's object-oriented API (no pyplot): no global backend switch, safe inside
    notebooks. The PCA maps are :func:`eo_jepa.eval.pca.pca_map`'s, as ``eo-jepa viz pca`` draws them.
    """
    colors = ["#000000", "#2b6cb0", "#2f855a", "#d69e2e", "#c05621", "#718096"]
    panels = 2 + len(encoders)
    fig = Figure(figsize=(3.2 * panels, 3.5))
    axes = fig.subplots(1, panels)
    axes[0].imshow(true_color(scene.pixels))
    axes[0].set_title("true colour (masked: cloud)", fontsize=9)
    axes[0].contour(~scene.valid, levels=[0.5], colors="red", linewidths=0.5)
    axes[1].imshow(
        scene.truth, cmap=ListedColormap(colors), vmin=0, vmax=len(colors) - 1, interpolation="nearest"
    )
    axes[1].set_title("land-cover truth", fontsize=9)
    handles = [Patch(color=colors[i + 1], label=name) for i, name in enumerate(scene.classes)]
    axes[1].legend(handles=handles, fontsize=6, loc="lower left", framealpha=0.8)
    for ax, (tag, enc) in zip(axes[2:], encoders.items(), strict=True):
        ax.imshow(pca_map(enc, scene.pixels, scene.valid)[0], interpolation="nearest")
        ax.set_title(f"PCA of features, {tag}", fontsize=9)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(scene.item_id, fontsize=8)
    fig.tight_layout()
    with atomic_open(path, "wb") as fh:
        fig.savefig(fh, format="png", dpi=100)
    return path


_STEP_FUNCS: dict[str, Callable[[Path, Preset, QuickstartResult, Say], dict[str, Any]]] = {
    "scenes": _step_scenes,
    "chips": _step_chips,
    "pretrain": _step_pretrain,
    "publish": _step_publish,
    "evaluate": _step_evaluate,
}


# --------------------------------------------------------------------------- summary


def _write_summary(out: Path, preset: Preset, result: QuickstartResult) -> str:
    """A plain-text table of the steps and the key figures, and where everything is."""
    rows = []
    for name, title in STEPS:
        step = result.steps[name]
        rows.append((name, title, f"{step['seconds']:.0f} s"))
    width = max(len(r[1]) for r in rows)
    lines = [f"eo-jepa quickstart ({preset.name}) in {out}", ""]
    lines.append(f"{'step':<9} {'what':<{width}}  time")
    for name, title, secs in rows:
        lines.append(f"{name:<9} {title:<{width}}  {secs:>5}")
    ev = result.steps["evaluate"]["outputs"]
    lines += [
        "",
        f"kNN accuracy on {ev['n_test']} held-out chips (k={ev['knn_k']}, cosine), reference chips:",
        f"                      {ev['shots']} per class*   all {ev['n_train']}",
        f"  untrained encoder :   {ev['knn_untrained']:.3f}        {ev['knn_full_untrained']:.3f}",
        f"  pretrained encoder:   {ev['knn_pretrained']:.3f}        {ev['knn_full_pretrained']:.3f}",
        f"  * mean of {FEWSHOT_DRAWS} random draws of the reference chips",
    ]
    if "rank_pretrained" in ev:  # next to kNN: a collapsed embedding can still classify a few classes
        dim = result.output("publish", "embed_dim")
        lines += [
            f"backbone embedding rank (RankMe, centred, of {dim} dims) on the held-out probe chips:",
            f"  before training:  {ev['rank_untrained']:5.1f}",
            f"  after training :  {ev['rank_pretrained']:5.1f}",
        ]
    lines += [
        "",
        f"Dense probe (linear per-patch land cover) mIoU on {ev['dense_tiles']['test']} held-out "
        f"{ev['dense_tiles']['size']} px tiles:",
        f"  untrained encoder :   mIoU {ev['dense_miou_untrained']:.3f}",
        f"  pretrained encoder:   mIoU {ev['dense_miou_pretrained']:.3f}",
        "",
        "where everything is:",
    ]
    places = [
        ("STAC items", result.output("scenes", "items")),
        ("AOIs", result.output("scenes", "aois")),
        ("chip dataset", result.output("chips", "root")),
        ("data card", result.output("chips", "data_card")),
        ("training run", result.output("pretrain", "run_dir")),
        ("checkpoint", result.output("publish", "model_dir")),
        ("loss curve", ev["loss_curve_png"]),
        ("PCA feature map", ev["pca_png"]),
    ]
    pw = max(len(p[0]) for p in places)
    lines += [f"  {label:<{pw}}  {path}" for label, path in places]
    lines += ["", f'load it:  eo_jepa.load("{result.output("publish", "model_dir")}")']
    text = "\n".join(lines) + "\n"
    atomic_write_text(out / "summary.md", "```\n" + text + "```\n")
    summary = {"size": preset.name, "preset": asdict(preset), "steps": result.steps}
    atomic_write_json(out / "summary.json", summary)
    return text
