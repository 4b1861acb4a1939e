"""``eo-jepa eval knn|linear|health``, ``eo-jepa embed``, ``eo-jepa viz pca`` and ``eo-jepa change``."""

from __future__ import annotations

import functools
import inspect
import json
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, get_type_hints

import typer

from eo_jepa.errors import ConfigError
from eo_jepa.utils.io import atomic_write_json

eval_app = typer.Typer(
    help="Probe a frozen encoder: kNN, linear, few-shot, representation health.", no_args_is_help=True
)
viz_app = typer.Typer(help="Visualise dense features (PCA to RGB).", no_args_is_help=True)

MODEL = typer.Option(..., "--model", "-m", help="Registry name, hf://org/repo@rev or a local checkpoint.")
DATA = typer.Option(
    ..., "--data", "-d", help="A chip store with labels, or an image folder (class sub-folders)."
)
BATCH = typer.Option(64, "--batch-size", help="Images per inference batch.")
DEVICE = typer.Option(None, "--device", help="torch device (default: cuda when available, else cpu).")
NORM = typer.Option(
    None,
    "--norm",
    help="How a foreign checkpoint file that carries no normalisation (Meta DINOv3 / Core-JEPA .pth, "
    "timm state dict) expects its RGB input: sat493m or imagenet. Not for registered names or eo-jepa folders.",
)
BF16 = typer.Option(False, "--bf16", help="bfloat16 autocast for inference.")
TEST_FRACTION = typer.Option(0.2, "--test-fraction", help="Test share of the stratified split.")
SPLIT_SEED = typer.Option(0, "--split-seed", help="Seed of the stratified train/test split.")
BANDS = typer.Option(
    None,
    "--bands",
    help="Bands to use, by name (red,green,blue; B04,B03,B02): they name the channels of unnamed images "
    "and select channels of chip stores and named TIFFs; an unknown or absent band is an error.",
)
OUT_JSON = typer.Option(None, "--out", help="Also write the results as JSON here.")
WINDOW = typer.Option(None, "--window", help="Sliding-window size in px (default: the model's img_size).")
WINDOW_BATCH = typer.Option(16, "--batch-size", help="Windows per batch.")
WORKERS = typer.Option(0, "--workers", help="Processes reading images in parallel (0: in the main process).")


def _ints(text: str, what: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"{what} must be comma-separated integers, got {text!r}.") from None


def _shots(text: str) -> list[int | None]:
    out: list[int | None] = []
    for v in (v.strip() for v in text.split(",")):
        if v in ("all", "full", ""):
            if v:
                out.append(None)
        elif v.isdigit() and int(v) > 0:
            out.append(int(v))
        else:
            raise ConfigError(f"--shots takes 'all' and positive integers, got {v!r}.")
    return out


def _bands(text: str | None) -> list[str] | None:
    return text.split(",") if text else None


def _echo_outputs(result: Any) -> None:
    """A result dataclass of written files and figures as one JSON line (paths as strings)."""
    typer.echo(json.dumps({k: str(v) if isinstance(v, Path) else v for k, v in vars(result).items()}))


def _load(model: str, device: str | None, norm: str | None = None) -> Any:
    from eo_jepa.models import load

    return load(model, device=device, norm=norm)


def _flag(option: Any) -> Any:
    """A :class:`ProbeOptions` field: the typer option that sets it, whose default is the field's."""
    return field(default=option.default, metadata={"option": option})


@dataclass(frozen=True)
class ProbeOptions:
    """The options ``eval knn`` and ``eval linear`` share: the split, the bands, how features are made.

    Each field is declared once with its flag (:func:`_flag`); :func:`probe_command` gives a command
    all of them and hands it one instance, checked on construction.
    """

    shots: str = _flag(
        typer.Option("all,1,10", "--shots", help="Comma-separated: 'all' and/or samples per class.")
    )
    seeds: str = _flag(
        typer.Option("0,1,2", "--seeds", help="Comma-separated seeds (few-shot draws and linear-probe init).")
    )
    split_file: Path | None = _flag(  # noqa: RUF009 (_flag returns a dataclasses.field)
        typer.Option(None, "--split-file", help="JSON {'train': [ids], 'test': [ids]} (overrides splits).")
    )
    split_seed: int = _flag(SPLIT_SEED)
    test_fraction: float = _flag(TEST_FRACTION)
    resplit: bool = _flag(
        typer.Option(
            False, "--resplit", help="Ignore a chip store's split column; split by class with the seed."
        )
    )
    bands: str | None = _flag(BANDS)
    batch_size: int = _flag(BATCH)
    device: str | None = _flag(DEVICE)
    norm: str | None = _flag(NORM)
    bf16: bool = _flag(BF16)
    resize: bool = _flag(
        typer.Option(
            False,
            "--resize",
            help="Resize images to the model's img_size (default: native size, a multiple of the patch).",
        )
    )
    workers: int = _flag(WORKERS)
    features: str = _flag(
        typer.Option(
            "auto",
            "--features",
            help="auto (lejepa for LeJEPA-trained models, else probe), lejepa (last-two-block tokens "
            "concatenated + LayerNorm), probe (the same without LayerNorm), global or mean_patch.",
        )
    )

    def __post_init__(self) -> None:
        from eo_jepa.eval.features import FEATURE_KINDS

        if self.features not in ("auto", *FEATURE_KINDS):
            raise ConfigError(
                f"--features must be auto or one of {', '.join(FEATURE_KINDS)}, got {self.features!r}."
            )
        self.shot_list()
        self.seed_list()

    def shot_list(self) -> list[int | None]:
        return _shots(self.shots)

    def seed_list(self) -> list[int]:
        return _ints(self.seeds, "--seeds")

    def feature_kind(self) -> str | None:
        """The kind of :data:`~eo_jepa.eval.features.FEATURE_KINDS`, or None for the encoder's default."""
        return None if self.features == "auto" else self.features


def probe_command(command: Callable[..., None]) -> Callable[..., None]:
    """Give ``command(..., opts: ProbeOptions)`` every :class:`ProbeOptions` flag as typer parameters.

    typer reads a command's parameters from its signature, so the wrapper's signature is the
    command's own parameters (less ``opts``) followed by one keyword parameter per field.
    """
    signature = inspect.signature(command)
    hints = get_type_hints(command)
    own = [p for p in signature.parameters.values() if p.name != "opts"]
    names = [f.name for f in fields(ProbeOptions)]
    types = get_type_hints(ProbeOptions)
    shared = [
        inspect.Parameter(
            f.name, inspect.Parameter.KEYWORD_ONLY, default=f.metadata["option"], annotation=types[f.name]
        )
        for f in fields(ProbeOptions)
    ]

    @functools.wraps(command)
    def wrapper(**kwargs: Any) -> None:
        opts = ProbeOptions(**{name: kwargs.pop(name) for name in names})
        command(**kwargs, opts=opts)

    wrapper.__signature__ = signature.replace(parameters=[*own, *shared])  # type: ignore[attr-defined]
    wrapper.__annotations__ = {
        **{p.name: hints[p.name] for p in own},
        **{p.name: p.annotation for p in shared},
        "return": None,
    }
    return wrapper


def _probe(method: str, model: str, data: str, opts: ProbeOptions, out: Path | None, **probe_kw: Any) -> None:
    from eo_jepa.eval.datasets import open_labelled
    from eo_jepa.eval.probe import evaluate

    labelled = open_labelled(
        data,
        bands=_bands(opts.bands),
        split_file=opts.split_file,
        seed=opts.split_seed,
        test_fraction=opts.test_fraction,
        use_store_splits=not opts.resplit,
    )
    encoder = _load(model, opts.device, opts.norm)
    results = evaluate(
        encoder,
        labelled,
        methods=(method,),
        shots=opts.shot_list(),
        seeds=opts.seed_list(),
        batch_size=opts.batch_size,
        device=opts.device,
        bf16=opts.bf16,
        resize=opts.resize,
        workers=opts.workers,
        features=opts.feature_kind(),
        **probe_kw,
    )
    typer.echo(
        f"{model} on {data} ({labelled.source}, {len(labelled.classes)} classes, split: {labelled.split_source}, "
        f"eval on '{labelled.eval_split}')"
    )
    for r in results:
        typer.echo(r.summary())
    if out is not None:
        atomic_write_json(
            out,
            {
                "model": model,
                "data": str(data),
                "classes": labelled.classes,
                "split": labelled.split_source,
                "results": [r.to_dict() for r in results],
            },
        )


@eval_app.command("knn")
@probe_command
def knn_cmd(
    model: str = MODEL,
    data: str = DATA,
    k: int = typer.Option(20, "--k", help="Neighbours that vote (an integer >= 1)."),
    temperature: float = typer.Option(0.07, "--temperature", help="Vote weight exp(cos/T), T >= 0.02."),
    out: Path = OUT_JSON,
    *,
    opts: ProbeOptions,
) -> None:
    """Weighted kNN (cosine, k=20, T=0.07) top-1 on frozen probe features; few-shot mean ± std over seeds."""
    from eo_jepa.eval.knn import KnnProbeConfig

    cfg = KnnProbeConfig(k=k, temperature=temperature)
    _probe("knn", model, data, opts, out, k=cfg.k, temperature=cfg.temperature)


@eval_app.command("linear")
@probe_command
def linear_cmd(
    model: str = MODEL,
    data: str = DATA,
    epochs: int = typer.Option(100, "--epochs", help="Linear-probe epochs."),
    lr: float = typer.Option(1e-3, "--lr", help="Peak AdamW learning rate (warm-up then cosine)."),
    weight_decay: float = typer.Option(1e-6, "--weight-decay", help="AdamW weight decay."),
    out: Path = OUT_JSON,
    *,
    opts: ProbeOptions,
) -> None:
    """Linear probe (LayerNorm + Linear, AdamW wd 1e-6, warm-up + cosine) top-1, mean ± std over seeds."""
    from eo_jepa.eval.linear import LinearProbeConfig

    cfg = LinearProbeConfig(epochs=epochs, lr=lr, weight_decay=weight_decay)
    _probe("linear", model, data, opts, out, linear=cfg)


@eval_app.command("health")
def health_cmd(
    model: str = MODEL,
    data: str = typer.Option(
        ..., "--data", "-d", help="A chip store (labels not needed) or an image folder."
    ),
    kind: str = typer.Option(
        "global",
        "--features",
        help="global (the embedding), probe (last-two-blocks), lejepa (probe + LayerNorm) or mean_patch.",
    ),
    limit: int = typer.Option(4096, "--limit", help="At most this many images (evenly spaced)."),
    bands: str = BANDS,
    batch_size: int = BATCH,
    device: str = DEVICE,
    norm: str = NORM,
    bf16: bool = BF16,
    workers: int = WORKERS,
    out: Path = OUT_JSON,
) -> None:
    """Effective rank (RankMe) and the SIGReg statistic of the encoder's embeddings of a dataset."""
    import numpy as np

    from eo_jepa.eval.datasets import open_unlabelled
    from eo_jepa.eval.features import FEATURE_KINDS, extract_features
    from eo_jepa.eval.health import representation_health

    if kind not in FEATURE_KINDS:
        raise ConfigError(f"--features must be one of {', '.join(FEATURE_KINDS)}, got {kind!r}.")
    dataset = open_unlabelled(data, bands=_bands(bands))
    n = len(dataset)
    indices = np.unique(np.linspace(0, n - 1, min(n, limit)).round().astype(int)) if n else []
    encoder = _load(model, device, norm)
    feats = extract_features(
        encoder,
        dataset,
        indices=indices,
        kind=kind,  # type: ignore[arg-type]
        batch_size=batch_size,
        device=device,
        bf16=bf16,
        workers=workers,
    )
    report = {"model": model, "data": str(data), "features": kind, **representation_health(feats)}
    for key, value in report.items():
        typer.echo(f"{key:>20s}: {value}")
    if out is not None:
        atomic_write_json(out, report)


@eval_app.command("dense")
def dense_cmd(
    model: str = MODEL,
    data: Path = typer.Option(
        ..., "--data", "-d", help="A folder of image + mask pairs (images/ and masks/)."
    ),
    seeds: str = typer.Option("0,1,2", "--seeds", help="Comma-separated seeds (head init and order)."),
    ignore_index: int = typer.Option(0, "--ignore-index", help="Mask code that is not scored (-1: none)."),
    test_fraction: float = TEST_FRACTION,
    split_seed: int = SPLIT_SEED,
    bands: str = BANDS,
    batch_size: int = WINDOW_BATCH,
    device: str = DEVICE,
    norm: str = NORM,
    bf16: bool = BF16,
    out: Path = OUT_JSON,
) -> None:
    """Linear per-patch segmentation probe on frozen dense features: mIoU and per-class IoU on held-out images."""
    from eo_jepa.eval.dense import SegmentationFolder, dense_probe, split_folder

    folder = SegmentationFolder(data, bands=_bands(bands))
    split = split_folder(folder, test_fraction=test_fraction, seed=split_seed)
    encoder = _load(model, device, norm)
    res = dense_probe(
        encoder, [folder[int(i)] for i in split["train"]], [folder[int(i)] for i in split["test"]],
        ignore_index=None if ignore_index < 0 else ignore_index, class_names=folder.class_names,
        seeds=_ints(seeds, "--seeds"), batch_size=batch_size, device=device, bf16=bf16,
    )  # fmt: skip
    typer.echo(f"{model} on {data} ({len(split['train'])} train / {len(split['test'])} test images)")
    typer.echo(res.summary())
    if out is not None:
        atomic_write_json(out, {"model": model, "data": str(data), **res.to_dict()})


@eval_app.command("bench")
def bench_cmd(
    root: Path = typer.Option(
        ..., "--root", help="Folder holding the datasets as their archives unpack (AID/, ...)."
    ),
    model: list[str] = typer.Option(
        ...,
        "--model",
        "-m",
        help="Repeatable: registry name, folder, file, hf://..., timm:NAME or random:ARCH.",
    ),
    suite: str = typer.Option(
        "scene", "--suite", help="scene, scene-rgb, or comma-separated datasets (aid,ucmerced,...)."
    ),
    out: Path = typer.Option(Path("bench"), "--out", "-o", help="Folder for results.{md,csv,json,png}."),
    cache: Path = typer.Option(None, "--cache", help="Feature cache folder (default OUT/cache)."),
    seeds: str = typer.Option("0,1,2", "--seeds", help="Comma-separated seeds: one stratified split each."),
    probes: str = typer.Option(
        "knn,linear,fewshot", "--probes", help="Comma-separated: knn, linear, fewshot."
    ),
    shots: int = typer.Option(5, "--shots", help="Training images per class of the few-shot kNN probe."),
    size: int = typer.Option(None, "--size", help="Resize images to SIZE px (default: native size)."),
    epochs: int = typer.Option(100, "--epochs", help="Linear-probe epochs."),
    batch_size: int = BATCH,
    device: str = DEVICE,
    norm: str = NORM,
    bf16: bool = BF16,
    workers: int = WORKERS,
) -> None:
    """Several models on a suite of public datasets with their published protocols: one table and chart."""
    from eo_jepa.eval.bench import BenchConfig, markdown_table, run_bench

    cfg = BenchConfig(
        root=root, models=list(model), out=out, suite=suite, cache=cache, seeds=tuple(_ints(seeds, "--seeds")),
        probes=tuple(p.strip() for p in probes.split(",") if p.strip()), shots=shots, size=size,
        batch_size=batch_size, device=device, bf16=bf16, workers=workers, linear_epochs=epochs, norm=norm,
    )  # fmt: skip
    rows = run_bench(cfg)
    typer.echo(markdown_table(rows))
    typer.echo(f"wrote {out / 'results.md'}, results.csv, results.json, results.png")


def embed_cmd(
    model: str = MODEL,
    data: str = typer.Option(..., "--data", "-d", help="A chip store folder."),
    out: Path = typer.Option(..., "--out", "-o", help="Output GeoParquet file."),
    kind: str = typer.Option(
        "global", "--features", help="global (the embedding) or probe (last-two-blocks)."
    ),
    batch_size: int = BATCH,
    device: str = DEVICE,
    norm: str = NORM,
    bf16: bool = BF16,
    workers: int = WORKERS,
) -> None:
    """One row per chip: footprint geometry, chip_id, label, split and the embedding (GeoParquet)."""
    from eo_jepa.eval.embed import embed_chips

    if kind not in ("global", "probe"):
        raise ConfigError(f"--features must be 'global' or 'probe', got {kind!r}.")
    encoder = _load(model, device, norm)
    path = embed_chips(
        encoder,
        data,
        out,
        kind=kind,
        batch_size=batch_size,
        device=device,  # type: ignore[arg-type]
        bf16=bf16,
        model_name=model,
        workers=workers,
    )
    typer.echo(f"wrote {path}")


@viz_app.command("pca")
def pca_cmd(
    model: str = MODEL,
    input: str = typer.Option(..., "--input", "-i", help="A GeoTIFF, or a chip store as DIR or DIR:INDEX."),
    out: Path = typer.Option(..., "--out", "-o", help="Output PNG."),
    geotiff: Path = typer.Option(
        None, "--geotiff", help="PCA GeoTIFF path for raster input (default OUT.tif)."
    ),
    features: Path = typer.Option(None, "--features", help="Also write the full feature map as a GeoTIFF."),
    window: int = WINDOW,
    stride: int = typer.Option(
        None, "--stride", help="Window step in px (default: the window; smaller averages)."
    ),
    batch_size: int = WINDOW_BATCH,
    device: str = DEVICE,
    norm: str = NORM,
    bf16: bool = BF16,
) -> None:
    """PCA→RGB of the dense feature map; on rasters also a georeferenced GeoTIFF on the patch grid."""
    from eo_jepa.eval.pca import viz_pca

    encoder = _load(model, device, norm)
    res = viz_pca(
        encoder,
        input,
        out,
        geotiff=geotiff,
        features_tif=features,
        window=window,
        stride=stride,
        batch_size=batch_size,
        device=device,
        bf16=bf16,
    )
    _echo_outputs(res)


def change_cmd(
    model: str = MODEL,
    before: Path = typer.Option(..., "--before", help="GeoTIFF of the first date."),
    after: Path = typer.Option(..., "--after", help="GeoTIFF of the second date (same grid)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output GeoTIFF of per-patch cosine distance."),
    png: Path = typer.Option(None, "--png", help="PNG preview path (default OUT.png)."),
    window: int = WINDOW,
    stride: int = typer.Option(None, "--stride", help="Window step in px."),
    batch_size: int = WINDOW_BATCH,
    device: str = DEVICE,
    norm: str = NORM,
    bf16: bool = BF16,
) -> None:
    """Per-patch cosine distance between the features of two dates: GeoTIFF + PNG preview."""
    from eo_jepa.eval.change import change_map

    encoder = _load(model, device, norm)
    res = change_map(
        encoder,
        before,
        after,
        out,
        png=png,
        window=window,
        stride=stride,
        batch_size=batch_size,
        device=device,
        bf16=bf16,
    )
    _echo_outputs(res)


def register(app: typer.Typer) -> None:
    app.add_typer(eval_app, name="eval")
    app.command("embed")(embed_cmd)
    app.add_typer(viz_app, name="viz")
    app.command("change")(change_cmd)
