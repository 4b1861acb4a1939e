"""Typed training configuration (dataclasses loaded by :func:`eo_jepa.config.load_config`).

``eo-jepa train --config configs/train/vits8_s2_5band.yaml optim.lr=1e-3 views.num_local=4``
builds a :class:`TrainConfig`; an unknown key, an invalid choice or a value outside a key's
declared range raises :class:`~eo_jepa.errors.ConfigError` naming the key, the value and what is
allowed. Every class derives from :class:`eo_jepa.config.Config`, so ``TrainConfig(...)`` built in
Python is checked the same way; declare a new number with ``bounded(default, ge=..., le=...)``.

Defaults follow the LeJEPA paper's recipe (Balestriero & LeCun 2025, arXiv:2511.08544):
2 global + 6 local views, AdamW lr 5e-4 / weight decay 0.05, linear warm-up then cosine
decay to lr/1000, λ = 0.05, 1024 slices, bf16 where the hardware supports it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Literal

from eo_jepa.config import Config, bounded, load_config, name_field, path_field, text_field
from eo_jepa.errors import ConfigError
from eo_jepa.train.budget import parse_duration


@dataclass
class DataConfig(Config):
    """Where the training chips come from."""

    section: ClassVar[str] = "data"

    kind: Literal["chips", "raster_folder"] = "chips"
    path: str | None = path_field(None)  # chip store folder, or folder of per-sample rasters
    split: str | None = "train"  # chip stores: 'train' | 'val' | 'test' | null for all ok rows
    bands: list[str] | None = None  # canonical band names in model order; null = all of the dataset's
    # raster_folder only: canonical band -> variable name (NetCDF/Zarr) or 1-based band index (GeoTIFF)
    band_map: dict[str, int | str] = field(default_factory=dict)
    pattern: str = text_field("*")  # raster_folder: glob for the sample files (.tif/.tiff/.nc/.zarr)
    sensor: str | None = None  # raster_folder: eo_jepa.bands sensor name (drives RGB handling)
    nodata: float | None = bounded(None)  # raster_folder: value marking invalid pixels (NaN always is)
    norm_stats: str | None = path_field(
        None
    )  # raster_folder: JSON with {"bands": {b: {mean, std}}}; else computed
    stats_samples: int = bounded(64, ge=1)  # raster_folder: files sampled to compute norm stats
    multi_date: bool = False  # global views from different dates of the same location_id
    batch_size: int = bounded(64, ge=1)  # per process (per GPU)
    num_workers: int = bounded(2, ge=0)
    drop_last: bool = True


@dataclass
class ViewsConfig(Config):
    """Multi-crop views and augmentations (applied batch-wise on tensors)."""

    section: ClassVar[str] = "views"

    num_global: int = bounded(2, ge=1)  # the prediction target needs a global view
    num_local: int = bounded(6, ge=0)
    global_size: int = bounded(224, ge=1)
    local_size: int = bounded(96, ge=1)
    global_scale: tuple[float, float] = bounded((0.3, 1.0), gt=0, le=1)  # crop area fraction (low, high)
    local_scale: tuple[float, float] = bounded((0.05, 0.3), gt=0, le=1)
    ratio: tuple[float, float] = bounded((0.75, 1.3333333), gt=0)
    flip_p: float = bounded(0.5, ge=0, le=1)  # horizontal and vertical flips, each with this probability
    rot90: bool = True  # random multiples of 90° (overhead imagery has no "up")
    # auto: 'rgb' when bands are exactly red, green, blue, otherwise 'multispectral'
    mode: Literal["auto", "multispectral", "rgb"] = "auto"
    jitter_p: float = bounded(0.8, ge=0, le=1)
    brightness: float = bounded(0.4, ge=0, le=1)
    contrast: float = bounded(0.4, ge=0, le=1)
    saturation: float = bounded(0.2, ge=0, le=1)  # rgb only
    hue: float = bounded(0.1, ge=0, le=0.5)  # rgb only (no hue on reflectance)
    grayscale_p: float = bounded(0.2, ge=0, le=1)
    grayscale_weights: Literal["bandwidth", "equal"] = "bandwidth"  # multispectral grayscale weights
    blur_p: float = bounded(0.5, ge=0, le=1)
    blur_sigma: tuple[float, float] = bounded((0.1, 2.0), gt=0)
    solarize_p: float = bounded(0.2, ge=0, le=1)  # rgb only
    value_scale: float | None = bounded(
        None, gt=0
    )  # raw units -> [0, 1] for rgb; null = from the sensor catalogue

    def validate(self) -> None:
        for name in ("global_scale", "local_scale", "ratio", "blur_sigma"):
            lo, hi = getattr(self, name)
            if not lo <= hi:
                raise ConfigError(f"views.{name} must be (low, high) with 0 < low <= high, got {[lo, hi]}.")


@dataclass
class ModelConfig(Config):
    section: ClassVar[str] = "model"

    arch: str = text_field("vit_small_patch8")
    img_size: int = bounded(
        224, ge=1
    )  # the encoder's nominal input size (views of other sizes use dynamic sizes)
    # null: from scratch; a registry name ('dinov3-vitl16-sat493m'), hf://org/repo or a local checkpoint
    init: str | None = text_field(None)
    proj_hidden: int = bounded(2048, ge=1)
    proj_out: int = bounded(128, ge=1)
    proj_layers: int = bounded(3, ge=1)


@dataclass
class GramConfig(Config):
    """Gram anchoring (DINOv3) to a frozen teacher: see :mod:`eo_jepa.ssl.gram`."""

    section: ClassVar[str] = "loss.gram"

    # w in loss = (1-lam)*pred + lam*sigreg + w*gram; 0 = off (from scratch)
    weight: float = bounded(0.0, ge=0)
    views: Literal["global", "all"] = "global"  # which views' patch tokens are anchored
    # 'init' (the frozen starting weights) or a registry name / checkpoint path
    teacher: str = path_field("init")
    # the teacher sees the views at this many times the resolution (DINOv3: 2)
    teacher_upsample: int = bounded(1, ge=1)
    # block whose patch tokens (after the final norm) are compared; -1 = last, Python-style
    layer: int = bounded(-1)

    def validate(self) -> None:
        if not self.teacher:
            raise ConfigError("loss.gram.teacher must be 'init' or a model name / checkpoint path.")


@dataclass
class LossConfig(Config):
    section: ClassVar[str] = "loss"

    lam: float = bounded(0.05, ge=0, le=1)  # weight of SIGReg; the prediction term gets 1 - lam
    num_slices: int = bounded(1024, ge=1)
    num_knots: int = bounded(17, ge=2)
    t_max: float = bounded(3.0, gt=0)
    # null: lam as given. N: lam is meant at N samples per view (global batch) and is rescaled to this
    # run's batch, since SIGReg grows with the batch and the prediction term does not (README)
    lam_batch: int | None = bounded(None, ge=1)
    impl: Literal["fused", "reference"] = "fused"
    # not in the paper: weight of SIGReg also on the backbone embedding of all views (0 = off)
    embed_lam: float = bounded(0.0, ge=0)
    gram: GramConfig = field(default_factory=GramConfig)


@dataclass
class OptimConfig(Config):
    section: ClassVar[str] = "optim"

    lr: float = bounded(5e-4, gt=0)
    weight_decay: float = bounded(0.05, ge=0)
    betas: tuple[float, float] = bounded((0.9, 0.999), ge=0, lt=1)
    eps: float = bounded(1e-8, gt=0)
    warmup_steps: int | None = bounded(None, ge=0)  # null: warmup_fraction of the total steps
    warmup_fraction: float = bounded(0.05, ge=0, le=1)
    final_lr_ratio: float = bounded(1e-3, ge=0, le=1)  # cosine ends at lr * final_lr_ratio (paper: lr / 1000)
    grad_accum: int = bounded(1, ge=1)  # micro-batches per optimiser step
    clip_grad: float | None = bounded(None, gt=0)  # max global grad norm; null = off
    # auto: bf16 autocast on GPUs that support it, fp32 elsewhere
    precision: Literal["auto", "bf16", "fp16", "fp32"] = "auto"


@dataclass
class DistConfig(Config):
    section: ClassVar[str] = "dist"

    strategy: Literal["ddp", "fsdp"] = "ddp"  # fsdp shards parameters/optimiser state (ViT-L)
    backend: Literal["auto", "gloo", "nccl"] = "auto"  # auto: nccl on GPU, gloo on CPU


@dataclass
class LogConfig(Config):
    section: ClassVar[str] = "log"

    every: int = bounded(10, ge=1)  # metrics.jsonl / TensorBoard every N optimiser steps
    # probe-set health (RankMe, SIGReg, kNN: train/health.py) every N steps; 0 = off
    rank_every: int = bounded(50, ge=0)
    # held-out probe images (centre crops, cached) for the health figures
    health_samples: int = bounded(1024, ge=1)
    # warn once when the backbone rank falls below this share of step 0
    health_warn_fraction: float = bounded(0.5, ge=0, le=1)
    tensorboard: bool = True


@dataclass
class CheckpointConfig(Config):
    section: ClassVar[str] = "checkpoint"

    every: int = bounded(
        500, ge=1
    )  # write runs/<name>/checkpoints/last.pt every N optimiser steps (and at the end)
    keep_every: int | None = bounded(None, ge=1)  # also keep step_<N>.pt every N steps


@dataclass
class TrainConfig(Config):
    name: str = name_field("run")  # the run folder <output_dir>/<name>: one folder name
    output_dir: str = path_field("runs")
    seed: int = bounded(0, ge=0)
    epochs: int = bounded(100, ge=0)  # 0: max_steps alone decides
    max_steps: int | None = bounded(
        None, ge=1
    )  # stop after this many optimiser steps (overrides epochs when smaller)
    # e.g. "30m", "2h": size the schedule to this wall-clock time (train/budget.py)
    time_budget: str | None = text_field(None)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    num_threads: int | None = bounded(None, ge=1)  # torch intra-op threads in the main process
    data: DataConfig = field(default_factory=DataConfig)
    views: ViewsConfig = field(default_factory=ViewsConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    dist: DistConfig = field(default_factory=DistConfig)
    log: LogConfig = field(default_factory=LogConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.name

    def validate(self) -> None:
        if self.epochs < 1 and self.max_steps is None:
            raise ConfigError("epochs=0 needs max_steps: set epochs >= 1 or max_steps.")
        if self.time_budget is not None:
            parse_duration(self.time_budget)  # a clear error now rather than after the data is opened


def load_train_config(
    path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()
) -> TrainConfig:
    """A :class:`TrainConfig` from a YAML file and ``key=value`` overrides."""
    return load_config(TrainConfig, path, list(overrides))
