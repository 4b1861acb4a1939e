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

import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from eo_jepa._version import __version__
from eo_jepa.errors import ConfigError, DataError
from eo_jepa.utils.io import atomic_write_json, atomic_write_text

log = logging.getLogger(__name__)

STATE_FILE = "quickstart_state.json"
SIZE_ENV = "EO_JEPA_QUICKSTART_SIZE"

# Sub-paths of DIR the quickstart owns (and deletes on ``fresh``); nothing else in DIR is touched.
OWNED = ("scenes", "chips", "runs", "model", "eval", STATE_FILE, "summary.md", "summary.json")


@dataclass(frozen=True)
class Preset:
    """How big the quickstart is. ``small`` is the default journey; ``tiny`` is for tests."""

    name: str
    scenes_size: str  # make_demo_scenes(size=...)
    chip_size: int
    arch: str
    steps: int
    batch_size: int
    lr: float
    global_views: int
    local_views: int
    global_crop: int
    local_crop: int
    knn_k: int
    seed: int = 0
    train_overrides: tuple[str, ...] = ()


PRESETS: dict[str, Preset] = {
    "small": Preset(
        name="small",
        scenes_size="small",
        chip_size=32,
        arch="vit_tiny_patch8",
        steps=300,
        batch_size=64,
        lr=1e-3,
        global_views=2,
        local_views=4,
        global_crop=32,
        local_crop=16,
        knn_k=5,
    ),
    "tiny": Preset(
        name="tiny",
        scenes_size="tiny",
        chip_size=32,
        arch="vit_tiny_patch8",
        steps=80,
        batch_size=32,
        lr=1e-3,
        global_views=2,
        local_views=2,
        global_crop=32,
        local_crop=16,
        knn_k=5,
    ),
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
    if fresh and state:
        say(f"--fresh: deleting the previous quickstart outputs in {out}")
    if fresh:
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
    from eo_jepa.demo.scenes import make_demo_scenes

    root = out / "scenes"
    if root.exists():  # an interrupted earlier attempt: regenerate (seeded, so identical)
        shutil.rmtree(root)
    scenes = make_demo_scenes(root, seed=preset.seed, size=preset.scenes_size)
    return {
        "root": str(scenes.root),
        "items": str(scenes.items_path),
        "collection": str(scenes.collection_path),
        "aois": str(scenes.aois_path),
    }


def _step_chips(out: Path, preset: Preset, result: QuickstartResult, say: Say) -> dict[str, Any]:
    raise NotImplementedError("wired once eo_jepa.chips lands")


def _step_pretrain(out: Path, preset: Preset, result: QuickstartResult, say: Say) -> dict[str, Any]:
    raise NotImplementedError("wired once eo_jepa.train lands")


def _step_publish(out: Path, preset: Preset, result: QuickstartResult, say: Say) -> dict[str, Any]:
    raise NotImplementedError("wired once eo_jepa.train.publish lands")


def _step_evaluate(out: Path, preset: Preset, result: QuickstartResult, say: Say) -> dict[str, Any]:
    raise NotImplementedError("wired once eo_jepa.eval lands")


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
        f"kNN accuracy (k={ev['knn_k']}, {ev['n_train']} reference / {ev['n_test']} held-out chips):",
        f"  untrained encoder : {ev['knn_untrained']:.3f}",
        f"  pretrained encoder: {ev['knn_pretrained']:.3f}",
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
