"""The LeJEPA trainer: one process, or many under torchrun (DDP / FSDP).

:class:`Trainer` builds the encoder (from scratch, a registry name or a local checkpoint, with band
adaptation) and the projector (:mod:`eo_jepa.train.model`), and minimises the LeJEPA loss only —
prediction of the mean global-view projection from every view plus λ·SIGReg, plus the Gram term of
``loss.gram`` when on — with AdamW, a linear warm-up and a cosine decay to lr/1000 (per optimiser
step, :mod:`eo_jepa.train.optim`; sized to ``--time-budget`` by :mod:`eo_jepa.train.budget`),
optional bf16/fp16 autocast, gradient accumulation and clipping. No EMA teacher, no stop-gradient,
no predictor schedule. Logging, health, checkpoints and the loss curve are callbacks
(:mod:`eo_jepa.train.callbacks`). :func:`run_training` joins the process group, trains and leaves it.

>>> from eo_jepa.train import load_train_config, run_training    # doctest: +SKIP
>>> run_dir = run_training(load_train_config("configs/train/tiny_cpu.yaml"), data="data/demo_chips")

The run folder ``<output_dir>/<name>/`` keeps:

- ``config.yaml`` (the resolved config), ``norm_stats.json`` (the dataset's statistics),
  ``data.json`` (bands, sensor, data path, data card reference, normalisation used);
- ``checkpoints/last.pt`` (full state, see :mod:`eo_jepa.train.checkpointing`);
- ``metrics.jsonl`` (step, epoch, loss, pred, sigreg, gram when on, lr, images/s, effective rank),
  ``health.jsonl``, ``tb/`` (TensorBoard) and ``loss_curve.png``.

Exact resumption: the data order and every view's randomness are functions of
``(seed, epoch, sample index)``, the optimiser/scheduler/scaler/SIGReg step/RNG states are
restored, and checkpoints are taken at optimiser-step boundaries, so a resumed single-process
CPU run reproduces the uninterrupted run's losses bit for bit.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import torch
import yaml

from eo_jepa.config import to_dict
from eo_jepa.errors import ConfigError, DataError
from eo_jepa.ssl.gram import make_gram
from eo_jepa.ssl.lejepa import LeJEPAOutput
from eo_jepa.train import distributed as D
from eo_jepa.train.budget import TimeBudget
from eo_jepa.train.callbacks import (
    LOSS_CURVE,
    METRICS,
    Callback,
    Checkpointer,
    LossCurve,
    MetricsLog,
    ProgressBar,
    plot_loss_curve,
)
from eo_jepa.train.checkpointing import (
    CHECKPOINT_DIR,
    LAST,
    full_model_state,
    full_optim_state,
    is_fsdp,
    load_model_state,
    load_optim_state,
    resume_state,
    rng_state,
    save_state,
    set_rng_state,
)
from eo_jepa.train.config import TrainConfig
from eo_jepa.train.data import build_views, make_loader, open_source
from eo_jepa.train.health import TrainHealth
from eo_jepa.train.model import build_encoder_for, build_model, check_view_sizes, make_loss, raw_unit_stats
from eo_jepa.train.optim import lr_factor, param_groups
from eo_jepa.utils.io import atomic_write_json, atomic_write_text
from eo_jepa.utils.precision import autocast, resolve_precision

# The run folder's file names, importable from here with the trainer.
__all__ = ["CHECKPOINT_DIR", "LAST", "LOSS_CURVE", "METRICS", "Trainer", "plot_loss_curve", "run_training"]

log = logging.getLogger(__name__)


def run_training(cfg: TrainConfig, *, data: str | Path | None = None, resume: bool = False) -> Path:
    """Run (or resume) training in this process (one rank under torchrun); returns the run folder."""
    env = D.setup(cfg.device, cfg.dist.backend)
    try:
        return Trainer(cfg, env, data=data, resume=resume).fit()
    finally:
        D.teardown()


class Trainer:
    """Everything one training run holds; :meth:`fit` runs it (see the module doc).

    ``data`` overrides ``cfg.data.path``; ``resume`` continues from ``<run>/checkpoints/last.pt``
    (a run folder with a checkpoint is refused without it). ``callbacks`` are added after the
    default ones (metrics + health, progress bar, checkpoints, loss curve).
    """

    def __init__(
        self,
        cfg: TrainConfig,
        env: D.DistEnv,
        *,
        data: str | Path | None = None,
        resume: bool = False,
        callbacks: list[Callback] | None = None,
    ) -> None:
        self.cfg, self.env = cfg, env
        if cfg.num_threads:
            torch.set_num_threads(cfg.num_threads)
        self.run_dir = cfg.run_dir
        # A resume is verified (digests, config) before any set-up: a refusal is then all it prints.
        state = self._state_to_resume(resume)
        # Built in this order from the seed (each draws from torch's RNG), as every run was.
        torch.manual_seed(cfg.seed)
        self.source = open_source(cfg.data, data)
        encoder = build_encoder_for(cfg, self.source)
        check_view_sizes(cfg.views, encoder)
        views = build_views(cfg.views, self.source, raw_unit_stats(encoder))
        self.model = build_model(cfg, encoder).to(env.device)
        fsdp = env.distributed and cfg.dist.strategy == "fsdp"  # FSDP: no single-process forward
        health = TrainHealth(cfg, self.source, data, encoder, enabled=env.is_main and not fsdp)
        self.loss_fn = make_loss(cfg).to(env.device)
        self.gram = make_gram(cfg, encoder, env)  # frozen teacher (before a resume loads the student)
        self.loader, self.sampler = make_loader(
            self.source, views, cfg.data, seed=cfg.seed, rank=env.rank, world_size=env.world_size,
            pin_memory=env.device.type == "cuda",
        )  # fmt: skip
        self.total, self.warmup = self._schedule_length()
        self.wrapped = D.wrap(D.sync_batchnorm(self.model, env), env, cfg.dist.strategy)
        o = cfg.optim
        self.optimizer = torch.optim.AdamW(
            param_groups(self.model, o.weight_decay), lr=o.lr, betas=o.betas, eps=o.eps
        )
        # total and warmup are read at every step: a time budget may size them during the run
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: lr_factor(s, self.total, self.warmup, o.final_lr_ratio)
        )
        self.precision = resolve_precision(o.precision, env.device)
        self.scaler = torch.amp.GradScaler(env.device.type, enabled=self.precision == "fp16")
        self.images_per_step = cfg.data.batch_size * env.world_size * o.grad_accum
        self.step, self.epoch, self.batch_pos = 0, 0, 0
        if state is not None:
            self.load_state_dict(state)
        if env.is_main:
            self._write_run_info(Path(data or cfg.data.path), encoder)
        metrics = MetricsLog(health)
        self.callbacks = [metrics, ProgressBar(metrics), Checkpointer(), LossCurve(), *(callbacks or [])]
        self.budget: TimeBudget | None = None

    # ------------------------------------------------------------------------------ the loop
    def fit(self) -> Path:
        """Train until ``self.total`` optimiser steps; returns the run folder."""
        for cb in self.callbacks:
            cb.on_start(self)
        # --time-budget: its clock starts here, after the step-0 health measurement
        self.budget = TimeBudget.for_run(self.cfg, self.run_dir, self.step, self.env.device, self.env.is_main)
        log.info(
            "Training %s on %d samples (%d steps/epoch, %d steps, %d process(es), %s, %s).",
            self.cfg.model.arch, len(self.source), len(self.sampler) // self.cfg.optim.grad_accum,
            self.total, self.env.world_size, self.env.device, self.precision,
        )  # fmt: skip
        self.wrapped.train()
        self.loss_fn.train()
        accum = self.cfg.optim.grad_accum
        while self.step < self.total:
            self.sampler.set_epoch(self.epoch, self.batch_pos)
            for micro, batch in enumerate(self.loader, start=1):
                out = self.forward_backward(batch, last_micro=micro % accum == 0)
                if micro % accum == 0:
                    self.optimiser_step(out)
                    if self.step >= self.total:
                        break
            else:  # the epoch ran out: the next one
                self.epoch, self.batch_pos = self.epoch + 1, 0
                continue
            break
        for cb in self.callbacks:
            cb.on_end(self)
        if self.env.is_main:
            log.info("Finished %d steps; run folder %s.", self.step, self.run_dir)
        return self.run_dir

    def forward_backward(self, batch: dict[str, Any], *, last_micro: bool) -> LeJEPAOutput:
        """Loss of one micro-batch and its backward (gradients synchronised on the last micro-batch)."""
        global_views = batch["globals"].to(self.env.device, non_blocking=True)
        local_views = batch["locals"].to(self.env.device, non_blocking=True) if "locals" in batch else None
        no_sync = not last_micro and hasattr(self.wrapped, "no_sync")  # DDP: all-reduce once per step
        with self.wrapped.no_sync() if no_sync else contextlib.nullcontext():
            with autocast(self.env.device, self.precision):
                out = self.objective(global_views, local_views)
            self.scaler.scale(out.loss / self.cfg.optim.grad_accum).backward()
        # The step no longer needs the input views (backward has run): their buffer may be reused.
        del global_views, local_views
        self.loader.dataset.release(batch)
        self.batch_pos += 1
        return out

    def objective(self, global_views: torch.Tensor, local_views: torch.Tensor | None) -> LeJEPAOutput:
        """LeJEPA (prediction + λ·SIGReg on the projections), plus the Gram term when ``loss.gram`` is on."""
        proj_g, proj_l = self.wrapped(global_views, local_views)
        out = self.loss_fn(proj_g.float(), None if proj_l is None else proj_l.float(), self.model.embeddings)
        if self.gram is not None:
            out = self.gram.add_to(out, (global_views, local_views), self.model.patches)
        return out

    def optimiser_step(self, out: LeJEPAOutput) -> None:
        """Clip, step, schedule; then the time budget and the callbacks see step ``self.step``."""
        if self.cfg.optim.clip_grad is not None:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.optim.clip_grad)
        lr = self.optimizer.param_groups[0]["lr"]
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        self.step += 1
        if self.budget is not None:  # train --time-budget: the schedule is sized to the time
            self.total, self.warmup = self.budget.after_step(self.step, self.total, self.warmup)
        for cb in self.callbacks:
            cb.after_step(self, out, lr)

    # ------------------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """The full training state, as ``checkpoints/*.pt`` hold it (collective under FSDP)."""
        return {
            "model": full_model_state(self.model),
            "optimizer": full_optim_state(self.model, self.optimizer),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "loss": self.loss_fn.state_dict(),
            "rng": rng_state(),
            "step": self.step,
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_pos,
            "world_size": self.env.world_size,
            "config": to_dict(self.cfg),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        load_model_state(self.model, state["model"])
        load_optim_state(self.model, self.optimizer, state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.loss_fn.load_state_dict(state["loss"])
        set_rng_state(state["rng"])
        self.step, self.epoch = int(state["step"]), int(state["epoch"])
        self.batch_pos = int(state["batch_in_epoch"])
        log.info(
            "Resumed %s at step %d (epoch %d, batch %d).", self.run_dir, self.step, self.epoch, self.batch_pos
        )

    def save_checkpoint(self, name: str = LAST) -> None:
        """``<run>/checkpoints/<name>`` (main process; under FSDP every rank helps gather the state)."""
        if self.env.is_main or is_fsdp(self.model):
            state = self.state_dict()
        if self.env.is_main:
            save_state(self.run_dir / CHECKPOINT_DIR / name, state)
        D.barrier(self.env)

    # ------------------------------------------------------------------------------ set-up
    def _state_to_resume(self, resume: bool) -> dict[str, Any] | None:
        ckpt = self.run_dir / CHECKPOINT_DIR / LAST
        resume = resume or D.elastic_resume(ckpt)
        if not resume and ckpt.exists():
            raise ConfigError(
                f"Run folder {str(self.run_dir)!r} already has a checkpoint; pass --resume to continue it "
                "or choose another name=..."
            )
        return resume_state(ckpt.parent, to_dict(self.cfg), map_location=self.env.device) if resume else None

    def _schedule_length(self) -> tuple[int, int]:
        """(total optimiser steps, warm-up steps); whole accumulation groups per epoch only."""
        cfg, accum = self.cfg, self.cfg.optim.grad_accum
        batches_per_epoch = len(self.sampler)
        steps_per_epoch = batches_per_epoch // accum
        if steps_per_epoch == 0:
            raise DataError(
                f"One epoch has {batches_per_epoch} batches, fewer than optim.grad_accum={accum}."
            )
        self.sampler.limit = steps_per_epoch * accum  # no partial accumulation at epoch ends
        total = cfg.epochs * steps_per_epoch
        if cfg.max_steps is not None:
            total = min(total, cfg.max_steps) if cfg.epochs else cfg.max_steps
        o = cfg.optim
        warmup = o.warmup_steps if o.warmup_steps is not None else int(o.warmup_fraction * total)
        return total, warmup

    def _write_run_info(self, data: Path, encoder: Any) -> None:
        """config.yaml, norm_stats.json and data.json of the run folder."""
        cfg, source = self.cfg, self.source
        self.run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.run_dir / "config.yaml", yaml.safe_dump(to_dict(cfg), sort_keys=False))
        atomic_write_json(
            self.run_dir / "norm_stats.json", {"bands": source.norm_stats, "band_order": list(source.bands)}
        )
        atomic_write_json(
            self.run_dir / "data.json",
            {
                "kind": cfg.data.kind,
                "path": str(data.resolve()),
                "split": cfg.data.split,
                "bands": list(source.bands),
                "sensor": getattr(source, "sensor", None),
                "num_samples": len(source),
                **data_card_reference(data),
                "model_norm_stats": encoder.norm_stats,
                "model_input_scale": encoder.input_scale,
                "precision": self.precision,
                "world_size": self.env.world_size,
            },
        )


def data_card_reference(root: Path) -> dict[str, Any]:
    """Path and id (``<name>@sha256:<12 hex>`` of its data card) of a chip store, when it has one."""
    card = root / "data_card.md"
    ref: dict[str, Any] = {"data_card": None, "data_card_id": None}
    if card.is_file():
        digest = hashlib.sha256(card.read_bytes()).hexdigest()[:12]
        name = root.name
        info = root / "dataset.json"
        if info.is_file():
            name = json.loads(info.read_text()).get("config", {}).get("name", name)
        ref = {"data_card": str(card.resolve()), "data_card_id": f"{name}@sha256:{digest}"}
    return ref
