"""The LeJEPA training loop: one process, or many under torchrun (DDP / FSDP).

``train(cfg)`` builds the encoder (from scratch, a registry name or a local checkpoint, with
band adaptation) and the projector, and minimises the LeJEPA loss only — prediction of the
mean global-view projection from every view plus λ·SIGReg — with AdamW, a linear warm-up and a
cosine decay to lr/1000 (per optimiser step), optional bf16/fp16 autocast, gradient
accumulation and clipping. No EMA teacher, no stop-gradient, no predictor schedule.

The run folder ``<output_dir>/<name>/`` keeps:

- ``config.yaml`` (the resolved config), ``norm_stats.json`` (the dataset's statistics),
  ``data.json`` (bands, sensor, data path, data card reference, normalisation used);
- ``checkpoints/last.pt`` (full state, see :mod:`eo_jepa.train.checkpointing`);
- ``metrics.jsonl`` (step, epoch, loss, pred, sigreg, gram when on, lr, images/s, effective rank),
  ``tb/`` (TensorBoard) and ``loss_curve.png``.

Exact resumption: the data order and every view's randomness are functions of
``(seed, epoch, sample index)``, the optimiser/scheduler/scaler/SIGReg step/RNG states are
restored, and checkpoints are taken at optimiser-step boundaries, so a resumed single-process
CPU run reproduces the uninterrupted run's losses bit for bit.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from eo_jepa.config import to_dict
from eo_jepa.errors import ConfigError, DataError, MissingNormStatsError
from eo_jepa.train import distributed as D
from eo_jepa.train.checkpointing import resume_state, rng_state, save_state, set_rng_state
from eo_jepa.train.config import TrainConfig
from eo_jepa.utils.io import atomic_write_json, atomic_write_text
from eo_jepa.utils.logging import progress_disabled
from eo_jepa.utils.precision import autocast, resolve_precision

log = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"
LAST = "last.pt"
METRICS = "metrics.jsonl"
LOSS_CURVE = "loss_curve.png"


class LeJEPAModel(nn.Module):
    """Encoder + projector; one forward for all views so DDP/FSDP see a single call per step."""

    def __init__(self, encoder: nn.Module, projector: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder
        self.projector = projector
        # loss.gram: keep the patch tokens (V·B, N, D) of block gram_layer of each anchored view group
        self.gram_layer: int | None = None
        self.gram_locals = False
        self.patches: list[torch.Tensor] | None = None
        self.keep_embeddings = False
        self.embeddings: torch.Tensor | None = None

    def forward(
        self, globals_: torch.Tensor, locals_: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Views (V, B, C, S, S) -> (global embeddings (Vg, B, D) detached, global proj (Vg, B, P), local proj).

        The projector runs once on the embeddings of all views, so its BatchNorm statistics
        cover every view (as in the paper's reference code).
        """
        from eo_jepa.ssl.gram import encode

        vg, b = globals_.shape[:2]
        emb, patches_g = encode(self.encoder, globals_.flatten(0, 1), self.gram_layer)
        patches = None if patches_g is None else [patches_g]
        if locals_ is not None:
            emb_l, patches_l = encode(
                self.encoder, locals_.flatten(0, 1), self.gram_layer if self.gram_locals else None
            )
            emb_all = torch.cat([emb, emb_l])
            patches = patches if patches_l is None else [patches_g, patches_l]
        else:
            emb_all = emb
        # loss.embed_lam > 0: the objective also needs the embeddings of all views (with gradient)
        self.embeddings = emb_all.reshape(-1, b, emb_all.shape[-1]) if self.keep_embeddings else None
        proj = self.projector(emb_all)
        # clones: FSDP warns about returning views (in-place ops on them would skip its hooks)
        proj_g = proj[: vg * b].reshape(vg, b, -1).clone()
        proj_l = proj[vg * b :].reshape(-1, b, proj.shape[-1]).clone() if locals_ is not None else None
        self.patches = patches
        return emb.detach().reshape(vg, b, -1).clone(), proj_g, proj_l


def lr_factor(step: int, total: int, warmup: int, final_ratio: float) -> float:
    """Multiplier of the base lr at optimiser step ``step``: linear warm-up, then cosine to ``final_ratio``."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    span = max(1, total - warmup)
    progress = min(1.0, (step - warmup) / span)
    return final_ratio + (1 - final_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: no weight decay on biases, norms, tokens and position embeddings (1-D or named so)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim <= 1 or name.endswith(("token", "tokens", "pos_embed", "reg_token")):
            no_decay.append(p)
        else:
            decay.append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


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


def build_encoder_for(cfg: TrainConfig, source: Any) -> Any:
    """The encoder: from scratch with the dataset's statistics, or initialised from ``model.init``.

    With ``model.init`` the checkpoint's normalisation is kept when it covers every band (so the
    first forward equals the source model's); otherwise the dataset's statistics are used.
    """
    from eo_jepa.models import build_encoder

    kwargs = {"img_size": cfg.model.img_size, "sensor": getattr(source, "sensor", None)}
    if cfg.model.init is None:
        return build_encoder(cfg.model.arch, source.bands, norm_stats=source.norm_stats, **kwargs)
    try:
        return build_encoder(cfg.model.arch, source.bands, pretrained=cfg.model.init, **kwargs)
    except MissingNormStatsError:
        log.info("%s lacks statistics for some bands; using the dataset's norm_stats.", cfg.model.init)
        return build_encoder(
            cfg.model.arch, source.bands, pretrained=cfg.model.init, norm_stats=source.norm_stats, **kwargs
        )


def raw_unit_stats(encoder: Any) -> dict[str, dict[str, float]]:
    """The encoder's normalisation expressed in raw units: ((raw+o)*s - m)/d == (raw - (m/s - o)) / (d/s)."""
    s, o = encoder.input_scale, encoder.input_offset
    return {b: {"mean": v["mean"] / s - o, "std": v["std"] / s} for b, v in encoder.norm_stats.items()}


def make_loss(cfg: TrainConfig) -> nn.Module:
    from eo_jepa.ssl import LeJEPALoss, batch_scaled_lam, world_size

    # loss.lam_batch: λ is the recipe's at that batch; SIGReg sees the global batch of every view
    lam = batch_scaled_lam(cfg.loss.lam, cfg.loss.lam_batch, cfg.data.batch_size * world_size())
    if lam != cfg.loss.lam:
        log.info(
            "loss.lam %g at batch %d is λ = %.4g at this run's batch.", cfg.loss.lam, cfg.loss.lam_batch, lam
        )
    kwargs: dict[str, Any] = {
        "num_slices": cfg.loss.num_slices,
        "lam": lam,
        "impl": cfg.loss.impl,
        "num_knots": cfg.loss.num_knots,
        "t_max": cfg.loss.t_max,
        "embed_lam": cfg.loss.embed_lam,
    }
    if "ddp_average" in inspect.signature(LeJEPALoss).parameters:
        kwargs["ddp_average"] = True
    return LeJEPALoss(**kwargs)


def build_model(cfg: TrainConfig, encoder: Any) -> LeJEPAModel:
    from eo_jepa.ssl import Projector

    projector = Projector(
        encoder.embed_dim,
        hidden_dim=cfg.model.proj_hidden,
        out_dim=cfg.model.proj_out,
        num_layers=cfg.model.proj_layers,
    )
    model = LeJEPAModel(encoder, projector)
    if cfg.loss.gram.weight > 0:
        model.gram_layer, model.gram_locals = cfg.loss.gram.layer, cfg.loss.gram.views == "all"
    model.keep_embeddings = cfg.loss.embed_lam > 0
    return model


class _Metrics:
    """metrics.jsonl (append, rank 0) + TensorBoard."""

    def __init__(self, run_dir: Path, enabled: bool, tensorboard: bool, resume_step: int) -> None:
        self.path = run_dir / METRICS
        self.enabled = enabled
        self.writer = None
        if not enabled:
            return
        if self.path.exists():  # drop rows written after the checkpoint we resume from
            keep = [
                ln
                for ln in self.path.read_text().splitlines()
                if ln and json.loads(ln)["step"] <= resume_step
            ]
            atomic_write_text(self.path, "".join(ln + "\n" for ln in keep))
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(
                str(run_dir / "tb"), purge_step=resume_step + 1 if resume_step else None
            )
        self.fh = open(self.path, "a")  # noqa: SIM115 - closed in close()

    def log(self, row: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self.fh.write(json.dumps(row) + "\n")
        self.fh.flush()
        if self.writer is not None:
            for k, v in row.items():
                if k not in ("step", "epoch") and isinstance(v, (int, float)):
                    self.writer.add_scalar(f"train/{k}", v, row["step"])

    def close(self) -> None:
        if not self.enabled:
            return
        self.fh.close()
        if self.writer is not None:
            self.writer.close()


def plot_loss_curve(run_dir: Path) -> Path | None:
    """loss_curve.png from metrics.jsonl (loss, prediction and SIGReg terms)."""
    path = Path(run_dir) / METRICS
    if not path.is_file():
        return None
    rows = [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()]
    if not rows:
        return None
    # The object-oriented API renders without pyplot, so the caller's backend (a notebook's
    # inline backend, a GUI) is left alone.
    from matplotlib.figure import Figure

    from eo_jepa.train.health import health_rows, plot_health

    steps = [r["step"] for r in rows]
    health = health_rows(run_dir)
    fig = Figure(figsize=(16 if health else 12, 3.2))
    axes = fig.subplots(1, 4 if health else 3)
    if health:
        plot_health(axes[3], health)
    for ax, key, title in zip(
        axes[:3], ("loss", "pred", "sigreg"), ("LeJEPA loss", "prediction", "SIGReg"), strict=True
    ):
        ax.plot(steps, [r[key] for r in rows], lw=1.2)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    out = Path(run_dir) / LOSS_CURVE
    fig.savefig(out, dpi=110)
    return out


def train(cfg: TrainConfig, *, data: str | Path | None = None, resume: bool = False) -> Path:
    """Run (or resume) training; returns the run folder."""
    import yaml
    from tqdm.auto import tqdm

    from eo_jepa.ssl.gram import make_gram
    from eo_jepa.train.budget import TimeBudget
    from eo_jepa.train.data import build_views, make_loader, open_source
    from eo_jepa.train.health import TrainHealth

    env = D.setup(cfg.device, cfg.dist.backend)
    try:
        if cfg.num_threads:
            torch.set_num_threads(cfg.num_threads)
        run_dir = cfg.run_dir
        ckpt_path = run_dir / CHECKPOINT_DIR / LAST
        resume = resume or D.elastic_resume(ckpt_path)
        if not resume and ckpt_path.exists():
            raise ConfigError(
                f"Run folder {str(run_dir)!r} already has a checkpoint; pass --resume to continue it "
                "or choose another name=..."
            )
        # A resume is verified (digests, config) before any set-up: a refusal is then all it prints.
        state = resume_state(ckpt_path.parent, to_dict(cfg), map_location=env.device) if resume else None
        torch.manual_seed(cfg.seed)
        source = open_source(cfg.data, data)
        encoder = build_encoder_for(cfg, source)
        for what in ("global_size", "local_size"):
            size = getattr(cfg.views, what)
            if size % encoder.patch_size:
                raise ConfigError(
                    f"views.{what}={size} is not a multiple of the patch size {encoder.patch_size} of "
                    f"{encoder.arch}; use a multiple such as {max(1, size // encoder.patch_size) * encoder.patch_size}."
                )
        views = build_views(cfg.views, source, raw_unit_stats(encoder))
        model = build_model(cfg, encoder).to(env.device)
        fsdp = env.distributed and cfg.dist.strategy == "fsdp"  # FSDP: no single-process forward
        health = TrainHealth(cfg, source, data, encoder, enabled=env.is_main and not fsdp)
        loss_fn = make_loss(cfg).to(env.device)
        gram = make_gram(cfg, encoder, env)  # frozen teacher (before a resume loads the student)
        loader, sampler = make_loader(
            source,
            views,
            cfg.data,
            seed=cfg.seed,
            rank=env.rank,
            world_size=env.world_size,
            pin_memory=env.device.type == "cuda",
        )
        batches_per_epoch = len(sampler)
        steps_per_epoch = batches_per_epoch // cfg.optim.grad_accum
        if steps_per_epoch == 0:
            raise DataError(
                f"One epoch has {batches_per_epoch} batches, fewer than optim.grad_accum={cfg.optim.grad_accum}."
            )
        sampler.limit = steps_per_epoch * cfg.optim.grad_accum  # no partial accumulation at epoch ends
        total = cfg.epochs * steps_per_epoch
        if cfg.max_steps is not None:
            total = min(total, cfg.max_steps) if cfg.epochs else cfg.max_steps
        warmup = (
            cfg.optim.warmup_steps
            if cfg.optim.warmup_steps is not None
            else int(cfg.optim.warmup_fraction * total)
        )

        wrapped = D.wrap(D.sync_batchnorm(model, env), env, cfg.dist.strategy)
        optimizer = torch.optim.AdamW(
            param_groups(model, cfg.optim.weight_decay),
            lr=cfg.optim.lr,
            betas=cfg.optim.betas,
            eps=cfg.optim.eps,
        )
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: lr_factor(s, total, warmup, cfg.optim.final_lr_ratio)
        )
        precision = resolve_precision(cfg.optim.precision, env.device)
        scaler = torch.amp.GradScaler(env.device.type, enabled=precision == "fp16")

        step, epoch, batch_pos = 0, 0, 0
        if state is not None:
            _load_model_state(wrapped, model, state["model"], cfg.dist.strategy)
            _load_optim_state(wrapped, model, optimizer, state["optimizer"], cfg.dist.strategy)
            scheduler.load_state_dict(state["scheduler"])
            scaler.load_state_dict(state["scaler"])
            loss_fn.load_state_dict(state["loss"])
            set_rng_state(state["rng"])
            step, epoch, batch_pos = int(state["step"]), int(state["epoch"]), int(state["batch_in_epoch"])
            log.info("Resumed %s at step %d (epoch %d, batch %d).", run_dir, step, epoch, batch_pos)

        if env.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(run_dir / "config.yaml", yaml.safe_dump(to_dict(cfg), sort_keys=False))
            atomic_write_json(
                run_dir / "norm_stats.json", {"bands": source.norm_stats, "band_order": list(source.bands)}
            )
            atomic_write_json(
                run_dir / "data.json",
                {
                    "kind": cfg.data.kind,
                    "path": str(Path(data or cfg.data.path).resolve()),
                    "split": cfg.data.split,
                    "bands": list(source.bands),
                    "sensor": getattr(source, "sensor", None),
                    "num_samples": len(source),
                    **data_card_reference(Path(data or cfg.data.path)),
                    "model_norm_stats": encoder.norm_stats,
                    "model_input_scale": encoder.input_scale,
                    "precision": precision,
                    "world_size": env.world_size,
                },
            )
        metrics = _Metrics(run_dir, env.is_main, cfg.log.tensorboard, step)
        health.start(model, run_dir, metrics.writer, step)
        budget = TimeBudget.for_run(cfg, run_dir, step, env.device, env.is_main)
        log.info(
            "Training %s on %d samples (%d steps/epoch, %d steps, %d process(es), %s, %s).",
            cfg.model.arch,
            len(source),
            steps_per_epoch,
            total,
            env.world_size,
            env.device,
            precision,
        )
        bar = tqdm(total=total, initial=step, disable=progress_disabled() or not env.is_main, desc="train")
        wrapped.train()
        loss_fn.train()
        accum = cfg.optim.grad_accum
        images_per_step = cfg.data.batch_size * env.world_size * accum
        t_last, step_last = time.perf_counter(), step
        last_saved = -1

        def checkpoint(kind: str = LAST) -> None:
            sharded = _is_fsdp(model)  # gathering full FSDP state is collective: every rank takes part
            if env.is_main or sharded:
                model_state = _model_state(wrapped, model, cfg.dist.strategy)
                optim_state = _optim_state(wrapped, model, optimizer, cfg.dist.strategy)
            if env.is_main:
                save_state(
                    run_dir / CHECKPOINT_DIR / kind,
                    {
                        "model": model_state,
                        "optimizer": optim_state,
                        "scheduler": scheduler.state_dict(),
                        "scaler": scaler.state_dict(),
                        "loss": loss_fn.state_dict(),
                        "rng": rng_state(),
                        "step": step,
                        "epoch": epoch,
                        "batch_in_epoch": batch_pos,
                        "world_size": env.world_size,
                        "config": to_dict(cfg),
                    },
                )
            D.barrier(env)

        while step < total:
            sampler.set_epoch(epoch, batch_pos)
            micro = 0
            for batch in loader:
                glob = batch["globals"].to(env.device, non_blocking=True)
                loc = batch["locals"].to(env.device, non_blocking=True) if "locals" in batch else None
                micro += 1
                last_micro = micro % accum == 0
                sync = (
                    contextlib.nullcontext()
                    if last_micro or not hasattr(wrapped, "no_sync")
                    else wrapped.no_sync()
                )
                with sync:
                    with autocast(env.device, precision):
                        _, proj_g, proj_l = wrapped(glob, loc)
                        out = loss_fn(
                            proj_g.float(), None if proj_l is None else proj_l.float(), model.embeddings
                        )
                        out = out if gram is None else gram.add_to(out, (glob, loc), model.patches)
                    scaler.scale(out.loss / accum).backward()
                # The step no longer needs the input views (backward has run): their buffer may be reused.
                del glob, loc
                loader.dataset.release(batch)
                batch_pos += 1
                if not last_micro:
                    continue
                if cfg.optim.clip_grad is not None:
                    scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.clip_grad)
                lr = optimizer.param_groups[0]["lr"]
                scaler.step(optimizer)
                scaler.update()
                optimizer.zero_grad(set_to_none=True)
                scheduler.step()
                step += 1
                if budget is not None:  # train --time-budget: the schedule is sized to the time
                    total, warmup = budget.after_step(step, total, warmup)
                bar.update(1)
                if step % cfg.log.every == 0 or step == total:
                    now = time.perf_counter()
                    row = {
                        "step": step,
                        "epoch": epoch,
                        "loss": float(out.loss.detach()),
                        "pred": float(out.pred),
                        "sigreg": float(out.sigreg),
                        **({} if out.gram is None else {"gram": float(out.gram)}),
                        "lr": lr,
                        "images_per_s": images_per_step * (step - step_last) / max(now - t_last, 1e-9),
                    }
                    if not math.isfinite(row["loss"]):
                        raise DataError(
                            f"Loss became {row['loss']} at step {step}; lower optim.lr or enable optim.clip_grad."
                        )
                    row.update(health.after_step(model, step, total))
                    metrics.log(row)
                    bar.set_postfix(loss=f"{row['loss']:.4f}")
                    t_last, step_last = time.perf_counter(), step  # health time not counted
                if step % cfg.checkpoint.every == 0 or step == total:
                    checkpoint()
                    last_saved = step
                if cfg.checkpoint.keep_every and step % cfg.checkpoint.keep_every == 0:
                    checkpoint(f"step_{step:07d}.pt")
                if step >= total:
                    break
            else:
                epoch += 1
                batch_pos = 0
                continue
            break
        if last_saved != step:
            checkpoint()
        bar.close()
        metrics.close()
        if env.is_main:
            plot_loss_curve(run_dir)
            log.info("Finished %d steps; run folder %s.", step, run_dir)
        return run_dir
    finally:
        D.teardown()


# --------------------------------------------------------------------------- state dict helpers
def _model_state(wrapped: nn.Module, model: nn.Module, strategy: str) -> dict[str, torch.Tensor]:
    if strategy == "fsdp" and wrapped is model and _is_fsdp(model):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}


def _optim_state(wrapped: nn.Module, model: nn.Module, optimizer: Any, strategy: str) -> dict[str, Any]:
    if strategy == "fsdp" and _is_fsdp(model):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        return get_optimizer_state_dict(
            model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
        )
    return optimizer.state_dict()


def _load_model_state(wrapped: nn.Module, model: nn.Module, state: dict[str, Any], strategy: str) -> None:
    if strategy == "fsdp" and _is_fsdp(model):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        set_model_state_dict(model, state, options=StateDictOptions(full_state_dict=True))
        return
    model.load_state_dict(state)


def _load_optim_state(
    wrapped: nn.Module, model: nn.Module, optimizer: Any, state: dict[str, Any], strategy: str
) -> None:
    if strategy == "fsdp" and _is_fsdp(model):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        state = D.optim_state_by_name(model, optimizer, state)  # a DDP or 1-process run's state too
        set_optimizer_state_dict(model, optimizer, state, options=StateDictOptions(full_state_dict=True))
        return
    optimizer.load_state_dict(state)


def _is_fsdp(model: nn.Module) -> bool:
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # pragma: no cover
        return False
    return isinstance(model, FSDPModule)
