"""Typed training configuration (dataclasses loaded by :func:`eo_jepa.config.load_config`).

``eo-jepa train --config configs/train/vits8_s2_5band.yaml optim.lr=1e-3 views.num_local=4``
builds a :class:`TrainConfig`; an unknown key or an invalid choice raises
:class:`~eo_jepa.errors.ConfigError` naming the key and the valid choices.

Defaults follow the LeJEPA paper's recipe (Balestriero & LeCun 2025, arXiv:2511.08544):
2 global + 6 local views, AdamW lr 5e-4 / weight decay 0.05, linear warm-up then cosine
decay to lr/1000, λ = 0.05, 1024 slices, bf16 where the hardware supports it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from eo_jepa.config import load_config
from eo_jepa.errors import ConfigError


@dataclass
class DataConfig:
    """Where the training chips come from."""

    kind: Literal["chips", "raster_folder"] = "chips"
    path: str | None = None  # chip store folder, or folder of per-sample rasters
    split: str | None = "train"  # chip stores: 'train' | 'val' | 'test' | null for all ok rows
    bands: list[str] | None = None  # canonical band names in model order; null = all of the dataset's
    # raster_folder only: canonical band -> variable name (NetCDF/Zarr) or 1-based band index (GeoTIFF)
    band_map: dict[str, int | str] = field(default_factory=dict)
    pattern: str = "*"  # raster_folder: glob for the sample files (.tif/.tiff/.nc/.zarr)
    sensor: str | None = None  # raster_folder: eo_jepa.bands sensor name (drives RGB handling)
    nodata: float | None = None  # raster_folder: value marking invalid pixels (NaN always is)
    norm_stats: str | None = None  # raster_folder: JSON with {"bands": {b: {mean, std}}}; else computed
    stats_samples: int = 64  # raster_folder: files sampled to compute norm stats
    multi_date: bool = False  # global views from different dates of the same location_id
    batch_size: int = 64  # per process (per GPU)
    num_workers: int = 2
    drop_last: bool = True


@dataclass
class ViewsConfig:
    """Multi-crop views and augmentations (applied batch-wise on tensors)."""

    num_global: int = 2
    num_local: int = 6
    global_size: int = 224
    local_size: int = 96
    global_scale: tuple[float, float] = (0.3, 1.0)
    local_scale: tuple[float, float] = (0.05, 0.3)
    ratio: tuple[float, float] = (0.75, 1.3333333)
    flip_p: float = 0.5  # horizontal and vertical flips, each with this probability
    rot90: bool = True  # random multiples of 90° (overhead imagery has no "up")
    # auto: 'rgb' when bands are exactly red, green, blue, otherwise 'multispectral'
    mode: Literal["auto", "multispectral", "rgb"] = "auto"
    jitter_p: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.2  # rgb only
    hue: float = 0.1  # rgb only (no hue on reflectance)
    grayscale_p: float = 0.2
    grayscale_weights: Literal["bandwidth", "equal"] = "bandwidth"  # multispectral grayscale weights
    blur_p: float = 0.5
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    solarize_p: float = 0.2  # rgb only
    value_scale: float | None = None  # raw units -> [0, 1] for rgb; null = from the sensor catalogue

    def validate(self) -> None:
        if self.num_global < 1:
            raise ConfigError(
                "views.num_global must be at least 1 (the prediction target needs a global view)."
            )
        if self.num_local < 0:
            raise ConfigError("views.num_local must be 0 or more.")
        for name in ("global_scale", "local_scale", "ratio", "blur_sigma"):
            lo, hi = getattr(self, name)
            if not 0 < lo <= hi:
                raise ConfigError(f"views.{name} must be (low, high) with 0 < low <= high, got {[lo, hi]}.")
        for name in ("flip_p", "jitter_p", "grayscale_p", "blur_p", "solarize_p"):
            p = getattr(self, name)
            if not 0.0 <= p <= 1.0:
                raise ConfigError(f"views.{name} is a probability in [0, 1], got {p}.")


@dataclass
class ModelConfig:
    arch: str = "vit_small_patch8"
    img_size: int = 224  # the encoder's nominal input size (views of other sizes use dynamic sizes)
    # null: from scratch; a registry name ('dinov3-vitl16-sat493m'), hf://org/repo or a local checkpoint
    init: str | None = None
    proj_hidden: int = 2048
    proj_out: int = 128
    proj_layers: int = 3


@dataclass
class LossConfig:
    lam: float = 0.05  # weight of SIGReg; the prediction term gets 1 - lam
    # null: lam as given. N: lam is meant at N samples per view (global batch) and is rescaled to this
    # run's batch, since SIGReg grows with the batch and the prediction term does not (README)
    lam_batch: int | None = None
    num_slices: int = 1024
    num_knots: int = 17
    t_max: float = 3.0
    impl: Literal["fused", "reference"] = "fused"
    # not in the paper: weight of SIGReg also on the backbone embedding of all views (0 = off)
    embed_lam: float = 0.0


@dataclass
class OptimConfig:
    lr: float = 5e-4
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    warmup_steps: int | None = None  # null: warmup_fraction of the total steps
    warmup_fraction: float = 0.05
    final_lr_ratio: float = 1e-3  # cosine ends at lr * final_lr_ratio (paper: lr / 1000)
    grad_accum: int = 1  # micro-batches per optimiser step
    clip_grad: float | None = None  # max global grad norm; null = off
    # auto: bf16 autocast on GPUs that support it, fp32 elsewhere
    precision: Literal["auto", "bf16", "fp16", "fp32"] = "auto"

    def validate(self) -> None:
        if self.grad_accum < 1:
            raise ConfigError("optim.grad_accum must be 1 or more.")
        if self.lr <= 0:
            raise ConfigError(f"optim.lr must be positive, got {self.lr}.")


@dataclass
class DistConfig:
    strategy: Literal["ddp", "fsdp"] = "ddp"  # fsdp shards parameters/optimiser state (ViT-L)
    backend: Literal["auto", "gloo", "nccl"] = "auto"  # auto: nccl on GPU, gloo on CPU


@dataclass
class LogConfig:
    every: int = 10  # metrics.jsonl / TensorBoard every N optimiser steps
    rank_every: int = 50  # probe-set health (RankMe, SIGReg, kNN: train/health.py) every N steps; 0 = off
    health_samples: int = 1024  # held-out probe images (centre crops, cached) for the health figures
    health_warn_fraction: float = 0.5  # warn once when the backbone rank falls below this share of step 0
    tensorboard: bool = True


@dataclass
class CheckpointConfig:
    every: int = 500  # write runs/<name>/checkpoints/last.pt every N optimiser steps (and at the end)
    keep_every: int | None = None  # also keep step_<N>.pt every N steps


@dataclass
class TrainConfig:
    name: str = "run"
    output_dir: str = "runs"
    seed: int = 0
    epochs: int = 100
    max_steps: int | None = None  # stop after this many optimiser steps (overrides epochs when smaller)
    time_budget: str | None = None  # e.g. "30m", "2h": size the schedule to this wall-clock time (train/budget.py)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    num_threads: int | None = None  # torch intra-op threads in the main process
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
            raise ConfigError("Set epochs >= 1 or max_steps.")
        if not self.name or "/" in self.name:
            raise ConfigError(f"name {self.name!r} must be a non-empty folder name without '/'.")
        if self.time_budget is not None:
            from eo_jepa.train.budget import parse_duration

            parse_duration(self.time_budget)  # a clear error now rather than after the data is opened


def load_train_config(
    path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()
) -> TrainConfig:
    """A :class:`TrainConfig` from a YAML file and ``key=value`` overrides."""
    return load_config(TrainConfig, path, list(overrides))
