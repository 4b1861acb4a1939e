"""``eo-jepa eval bench``: several encoders on a suite of public datasets, one table.

For every (model, dataset) the frozen probe features (:func:`eo_jepa.eval.features.extract_features`,
the LeJEPA protocol's last-two-block CLS) of every image are extracted once and cached on disk under
``CACHE/<model digest>/<dataset>-<data digest>-<size>/`` in chunks, so an interrupted run resumes
inside a dataset and adding a model, a probe or a seed re-uses what is there. The model digest is a
SHA-256 of the weights, bands and normalisation (a renamed copy hits the cache, a retrained model
does not); the data digest covers file names, sizes and modification times.

Each dataset is evaluated with its published protocol (:mod:`eo_jepa.eval.layouts`): for each
training ratio and seed a stratified split (the seed draws the split), then

- ``knn``: weighted kNN (k=20, T=0.07, cosine) on all training images;
- ``linear``: the linear probe of :mod:`eo_jepa.eval.linear`;
- ``fewshot``: kNN with ``shots`` training images per class drawn from the seed's training split;

reported as mean ± std over seeds in ``results.{md,csv,json}`` and a bar chart ``results.png``.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import timm
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from eo_jepa.errors import BandMismatchError, ConfigError, DataError
from eo_jepa.eval.datasets import stratified_split
from eo_jepa.eval.features import extract_features
from eo_jepa.eval.layouts import get_layout, open_layout, suite_datasets
from eo_jepa.eval.linear import LinearProbeConfig
from eo_jepa.eval.probe import run_probe
from eo_jepa.models import Encoder, build_encoder, load
from eo_jepa.utils.io import atomic_open, atomic_write_json, atomic_write_text
from eo_jepa.utils.logging import progress_disabled

log = logging.getLogger(__name__)

PROBES = ("knn", "linear", "fewshot")
CHUNK = 512  # images per cached feature chunk (the unit of resumption inside a dataset)


@dataclass
class BenchConfig:
    root: Path
    models: list[str]
    out: Path
    suite: str = "scene"
    cache: Path | None = None  # default OUT/cache
    seeds: tuple[int, ...] = (0, 1, 2)
    probes: tuple[str, ...] = PROBES
    shots: int = 5
    size: int | None = None  # resize every image to this (default: native, or the model's img_size)
    batch_size: int = 64
    device: str | None = None
    bf16: bool = False
    workers: int = 0
    linear_epochs: int = 100
    norm: str | None = None  # for the models given as foreign checkpoint files (see resolve_model)

    def __post_init__(self) -> None:
        bad = [p for p in self.probes if p not in PROBES]
        if bad:
            raise ConfigError(f"Unknown probe(s) {bad}; choose among {', '.join(PROBES)}.")
        if not self.models:
            raise ConfigError("eval bench needs at least one --model.")
        if not self.seeds:
            raise ConfigError("eval bench needs at least one seed (--seeds 0,1,2).")
        if self.shots < 1:
            raise ConfigError(f"--shots must be a positive number of images per class, got {self.shots}.")


@dataclass
class Row:
    model: str
    dataset: str
    probe: str
    train_ratio: float
    mean: float
    std: float
    accuracies: list[float]
    seeds: list[int]
    num_train: int
    num_test: int
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


# ------------------------------------------------------------------------------------ models
def resolve_model(spec: str, *, device: str | None = None, norm: str | None = None) -> Any:
    """An encoder for ``spec``: a registry name, a local folder or file, ``hf://...``, ``timm:NAME``
    (timm pretrained weights from the local Hugging Face cache, ImageNet-style RGB input) or
    ``random:ARCH`` (an untrained eo-jepa architecture on RGB, the floor). ``norm`` describes the
    foreign checkpoint *files* among the models (``eo_jepa.load(..., norm=)``); names, folders and
    the other kinds carry their own."""
    if spec.startswith("random:"):
        arch = spec.split(":", 1)[1]
        torch.manual_seed(0)
        return build_encoder(
            arch, ("red", "green", "blue"), img_size=224,
            norm_stats={b: {"mean": 0.45, "std": 0.25} for b in ("red", "green", "blue")}, input_scale=1 / 255,
        ).eval()  # fmt: skip
    if spec.startswith("timm:"):
        return timm_encoder(spec.split(":", 1)[1])
    return load(spec, device=device, norm=norm if Path(spec).is_file() else None)


def timm_encoder(name: str) -> Any:
    """A timm ViT with its pretrained weights (from the local cache when offline) as an Encoder on RGB."""
    try:
        try:  # ViTs take any multiple of their patch size (bench --size, native dataset sizes)
            model = timm.create_model(name, pretrained=True, num_classes=0, dynamic_img_size=True)
        except TypeError:  # architectures without the option (CNNs) take any size already
            model = timm.create_model(name, pretrained=True, num_classes=0)
    except Exception as exc:  # timm raises RuntimeError/OSError/HF errors for unknown or uncached weights
        raise ConfigError(
            f"timm model {name!r} could not be created with pretrained weights ({type(exc).__name__}); check the "
            "name (timm.list_models) and that its weights are in the Hugging Face cache when offline."
        ) from exc
    cfg = model.pretrained_cfg
    stats = {
        b: {"mean": m, "std": s}
        for b, m, s in zip(("red", "green", "blue"), cfg["mean"], cfg["std"], strict=True)
    }
    size = int(cfg.get("input_size", (3, 224, 224))[-1])
    enc = Encoder(model, arch=f"timm:{name}", bands=("red", "green", "blue"), norm_stats=stats, img_size=size,
                  input_scale=1 / 255, sensor="rgb")  # fmt: skip
    return enc.eval().to(torch.device("cpu"))


def model_digest(encoder: Any) -> str:
    """SHA-256 of the encoder's weights (sorted by name) and its input contract (bands, statistics, scale)."""
    h = hashlib.sha256()
    meta = {
        "arch": str(getattr(encoder, "arch", type(encoder).__name__)),
        "bands": list(getattr(encoder, "bands", ())),
        "norm": getattr(encoder, "norm_stats", None),
        "scale": getattr(encoder, "input_scale", 1.0),
        "offset": getattr(encoder, "input_offset", 0.0),
    }
    h.update(json.dumps(meta, sort_keys=True, default=str).encode())
    for key, tensor in sorted(encoder.state_dict().items()):
        h.update(key.encode())
        h.update(tensor.detach().cpu().contiguous().view(-1).view(dtype=torch.uint8).numpy().tobytes())
    return h.hexdigest()


def dataset_digest(dataset: Any) -> str:
    """SHA-256 of the files (relative path, size, mtime) and the band layout of an image folder."""
    h = hashlib.sha256()
    h.update(json.dumps([list(dataset.bands or ()), dataset.channels], default=str).encode())
    for rel, path in zip(dataset.ids, dataset.paths, strict=True):
        st = path.stat()
        h.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


# ------------------------------------------------------------------------------------ features
def cached_features(
    encoder: Any, dataset: Any, cache_dir: Path, *, size: int | None, desc: str, **extract: Any
) -> np.ndarray:
    """Probe features of every image of ``dataset``, from ``cache_dir`` chunks where present."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    final = cache_dir / "features.npy"
    if final.is_file():
        return np.load(final)
    parts = []
    n = len(dataset)
    for start in range(0, n, CHUNK):
        chunk = cache_dir / f"chunk_{start:08d}.npy"
        if chunk.is_file():
            parts.append(np.load(chunk))
            continue
        feats = extract_features(
            encoder, _Resized(dataset, size) if size else dataset, indices=range(start, min(start + CHUNK, n)),
            desc=f"{desc} [{start // CHUNK + 1}/{math.ceil(n / CHUNK)}]", **extract,
        )  # fmt: skip
        with atomic_open(chunk, "wb") as fh:
            np.save(fh, feats)
        parts.append(feats)
    feats = np.concatenate(parts)
    with atomic_open(final, "wb") as fh:
        np.save(fh, feats)
    for chunk in cache_dir.glob("chunk_*.npy"):
        chunk.unlink()
    return feats


class _Resized:
    """``dataset`` with every image resized (bilinear, antialiased) to ``size`` x ``size``."""

    def __init__(self, dataset: Any, size: int) -> None:
        self.dataset, self.size, self.bands = dataset, size, dataset.bands

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> dict[str, Any]:
        item = dict(self.dataset[i])
        px = torch.from_numpy(np.asarray(item["pixels"], np.float32))[None]
        if tuple(px.shape[-2:]) != (self.size, self.size):
            px = F.interpolate(
                px, size=(self.size, self.size), mode="bilinear", antialias=True, align_corners=False
            )
        item["pixels"] = px[0].numpy()
        return item


# ------------------------------------------------------------------------------------ probes
def protocol_rows(
    model: str, dataset: str, feats: np.ndarray, labels: Sequence[str], cfg: BenchConfig
) -> list[Row]:
    """Every probe at every training ratio of ``dataset``'s protocol, one split per seed."""
    layout = get_layout(dataset)
    rows = []
    for ratio in layout.train_ratios:
        for probe in cfg.probes:
            accs, n_train, n_test = [], 0, 0
            for seed in cfg.seeds:
                split = stratified_split(labels, test_fraction=round(1 - ratio, 6), seed=seed)
                tr, te = split["train"], split["test"]
                res = run_probe(
                    feats[tr], [labels[i] for i in tr], feats[te], [labels[i] for i in te],
                    method="linear" if probe == "linear" else "knn",
                    shots=cfg.shots if probe == "fewshot" else None, seeds=[seed],
                    linear=LinearProbeConfig(epochs=cfg.linear_epochs),
                )  # fmt: skip
                accs.append(res.accuracies[0])
                n_train, n_test = res.num_train, res.num_test
            rows.append(Row(model, dataset, probe, ratio, float(np.mean(accs)), float(np.std(accs)),
                            [float(a) for a in accs], list(cfg.seeds), n_train, n_test,
                            extra={"shots": cfg.shots} if probe == "fewshot" else {}))  # fmt: skip
    return rows


# ------------------------------------------------------------------------------------ the run
def run_bench(cfg: BenchConfig) -> list[Row]:
    """Run the suite; write ``results.{json,csv,md,png}`` to ``cfg.out``; return the rows."""
    names = suite_datasets(cfg.suite)
    check_root(cfg.root)
    datasets = {}
    for name in names:  # every layout checked before any model runs: a mis-laid folder fails in seconds
        datasets[name] = open_layout(cfg.root, name)
    cache = cfg.cache or cfg.out / "cache"
    cfg.out.mkdir(parents=True, exist_ok=True)
    rows: list[Row] = []
    done_path = cfg.out / "rows.jsonl"
    done = _read_done(done_path)
    pairs = [(m, d) for m in cfg.models for d in names]
    loaded: dict[str, tuple[Any, str]] = {}
    for model, name in tqdm(pairs, desc="bench (model x dataset)", disable=progress_disabled()):
        if model not in loaded:
            loaded.clear()  # one model in memory at a time
            encoder = resolve_model(model, device=cfg.device, norm=cfg.norm)
            loaded[model] = (encoder, model_digest(encoder))
        encoder, digest = loaded[model]
        ds = datasets[name]
        data_digest = dataset_digest(ds)
        key = f"{digest[:16]}/{name}-{data_digest[:12]}-{cfg.size or 'native'}"
        proto = json.dumps([sorted(cfg.probes), list(cfg.seeds), cfg.shots, cfg.linear_epochs])
        if (key, proto) in done:
            rows += [Row(**{**r, "model": model}) for r in done[(key, proto)]]
            continue
        try:
            feats = cached_features(
                encoder, ds, cache / key, size=cfg.size, desc=f"{name} / {model}", kind="probe",
                batch_size=cfg.batch_size, device=cfg.device, bf16=cfg.bf16, workers=cfg.workers,
            )  # fmt: skip
        except BandMismatchError as exc:
            log.warning("%s on %s skipped: %s", model, name, exc)
            rows.append(Row(model, name, "-", 0.0, float("nan"), float("nan"), [], [], 0, 0, note="bands"))
            continue
        new = protocol_rows(model, name, feats, [str(lab) for lab in ds.labels], cfg)
        with done_path.open("a") as fh:  # append-only record: a resumed run skips finished pairs
            fh.write(json.dumps({"key": key, "protocol": proto, "rows": [asdict(r) for r in new]}) + "\n")
        rows += new
    write_results(cfg, rows)
    return rows


def _read_done(path: Path) -> dict[tuple[str, str], list[dict[str, Any]]]:
    out: dict[tuple[str, str], list[dict[str, Any]]] = {}
    if not path.is_file():
        return out
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
            out[(rec["key"], rec["protocol"])] = rec["rows"]
        except (ValueError, KeyError):  # a line cut by an interruption: that pair runs again
            continue
    return out


# ------------------------------------------------------------------------------------ outputs
def _cell(r: Row) -> str:
    if r.note:
        return f"n/a ({r.note})"
    return f"{100 * r.mean:.1f} ± {100 * r.std:.1f}"


def markdown_table(rows: Sequence[Row]) -> str:
    """(dataset, training ratio, probe) as rows, models as columns: top-1 % mean ± std over seeds."""
    order = list(dict.fromkeys(r.dataset for r in rows))
    keys = sorted(
        {(r.dataset, r.train_ratio, r.probe) for r in rows if not r.note},
        key=lambda c: (order.index(c[0]), c[1], PROBES.index(c[2])),
    )
    models = list(dict.fromkeys(r.model for r in rows))
    lines = ["| dataset | train | probe | " + " | ".join(f"`{m}`" for m in models) + " |"]
    lines.append("|---|---:|---|" + "---:|" * len(models))
    for d, t, p in keys:
        cells = [get_layout(d).title, f"{round(100 * t)}%", p]
        for m in models:
            hit = next(
                (r for r in rows if (r.model, r.dataset, r.train_ratio, r.probe) == (m, d, t, p)), None
            )
            skipped = next((r for r in rows if (r.model, r.dataset) == (m, d) and r.note), None)
            cells.append(_cell(hit) if hit else (_cell(skipped) if skipped else "-"))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_results(cfg: BenchConfig, rows: Sequence[Row]) -> dict[str, Path]:
    out = cfg.out
    seeds = ",".join(str(s) for s in cfg.seeds)
    md = (
        f"# eo-jepa bench: suite `{cfg.suite}`\n\nTop-1 accuracy (%), mean ± std over seeds {seeds} (each seed draws "
        f"the stratified split at the protocol's training ratio); probes on frozen probe features; few-shot = kNN "
        f"with {cfg.shots} training images per class.\n\n" + markdown_table(rows)
    )
    paths = {
        "md": out / "results.md",
        "csv": out / "results.csv",
        "json": out / "results.json",
        "png": out / "results.png",
    }
    atomic_write_text(paths["md"], md)
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["model", "dataset", "probe", "train_ratio", "mean", "std", "seeds", "accuracies", "num_train",
                     "num_test", "note"])  # fmt: skip
    for r in rows:
        writer.writerow([r.model, r.dataset, r.probe, r.train_ratio, r.mean, r.std, " ".join(map(str, r.seeds)),
                         " ".join(f"{a:.6f}" for a in r.accuracies), r.num_train, r.num_test, r.note])  # fmt: skip
    atomic_write_text(paths["csv"], buf.getvalue())
    atomic_write_json(paths["json"], {
        "suite": cfg.suite, "root": str(cfg.root), "seeds": list(cfg.seeds), "probes": list(cfg.probes),
        "shots": cfg.shots, "size": cfg.size,
        "protocols": {d: {"train_ratios": list(get_layout(d).train_ratios), "protocol": get_layout(d).protocol}
                      for d in dict.fromkeys(r.dataset for r in rows)},
        "rows": [asdict(r) for r in rows],
    })  # fmt: skip
    write_chart(paths["png"], rows)
    return paths


def write_chart(path: Path, rows: Sequence[Row]) -> Path:
    """Grouped bars (one group per dataset/ratio, one bar per model), error bars = std over seeds; a panel per probe."""
    from matplotlib.figure import Figure

    good = [r for r in rows if not r.note]
    probes = [p for p in PROBES if any(r.probe == p for r in good)] or ["knn"]
    models = list(dict.fromkeys(r.model for r in rows))
    groups = list(dict.fromkeys((r.dataset, r.train_ratio) for r in good))
    fig = Figure(figsize=(max(6.0, 1.2 * len(groups) * max(1, len(models)) / 2 + 2), 3.2 * len(probes)))
    axes = fig.subplots(len(probes), 1, squeeze=False)[:, 0]
    width = 0.8 / max(len(models), 1)
    for ax, probe in zip(axes, probes, strict=True):
        for k, m in enumerate(models):
            vals, errs = [], []
            for d, t in groups:
                hit = next(
                    (r for r in good if (r.model, r.dataset, r.train_ratio, r.probe) == (m, d, t, probe)),
                    None,
                )
                vals.append(100 * hit.mean if hit else 0.0)
                errs.append(100 * hit.std if hit else 0.0)
            ax.bar(np.arange(len(groups)) + k * width, vals, width, yerr=errs, capsize=2, label=m)
        ax.set_xticks(np.arange(len(groups)) + width * (len(models) - 1) / 2)
        ax.set_xticklabels([f"{get_layout(d).title}\n{round(100 * t)}% train" for d, t in groups], fontsize=7)
        ax.set_ylabel(f"{probe} top-1 %")
        ax.set_ylim(0, 100)
        ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    with atomic_open(path, "wb") as fh:
        fig.savefig(fh, format="png", dpi=100)
    return path


def check_root(root: Path) -> None:
    if not Path(root).is_dir():
        raise DataError(
            f"--root {str(root)!r} is not a folder; pass the folder holding the datasets (AID/, ...)."
        )
