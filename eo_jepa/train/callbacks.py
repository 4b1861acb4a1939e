"""The trainer's side jobs, each a :class:`Callback` called at the start, after every optimiser
step and at the end of :meth:`~eo_jepa.train.trainer.Trainer.fit`:

- :class:`MetricsLog`: ``metrics.jsonl`` and TensorBoard (``tb/``) every ``log.every`` steps, with the
  representation health of :mod:`eo_jepa.train.health` (RankMe, ``health.jsonl``) when it is due;
- :class:`ProgressBar`: the tqdm bar;
- :class:`Checkpointer`: ``checkpoints/last.pt`` every ``checkpoint.every`` steps and at the end,
  ``step_NNNNNNN.pt`` every ``checkpoint.keep_every`` steps;
- :class:`LossCurve`: ``loss_curve.png`` at the end.

A callback reads the trainer's state and never changes what is trained, so the losses are the same
whichever callbacks run.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tqdm.auto import tqdm

from eo_jepa.errors import DataError
from eo_jepa.ssl.lejepa import LeJEPAOutput
from eo_jepa.train.checkpointing import LAST
from eo_jepa.train.health import TrainHealth, health_rows, plot_health
from eo_jepa.utils.io import atomic_write_text
from eo_jepa.utils.logging import progress_disabled

if TYPE_CHECKING:  # the trainer holds its callbacks: typing only
    from eo_jepa.train.trainer import Trainer

log = logging.getLogger(__name__)

METRICS = "metrics.jsonl"
LOSS_CURVE = "loss_curve.png"


class Callback:
    """A side job of the trainer; every hook is a no-op unless overridden."""

    def on_start(self, trainer: Trainer) -> None:
        """Before the first step (after a resume has loaded the state)."""

    def after_step(self, trainer: Trainer, out: LeJEPAOutput, lr: float) -> None:
        """After optimiser step ``trainer.step`` whose last micro-batch gave ``out``, taken at ``lr``."""

    def on_end(self, trainer: Trainer) -> None:
        """After the last step."""


class MetricsLog(Callback):
    """``metrics.jsonl`` (appended, main process) + TensorBoard, and the health measurements.

    A row (step, epoch, loss, pred, sigreg, gram when on, lr, images/s, and the health figures when
    due) is written every ``log.every`` steps and at the last step. Rows after the step a run resumes
    from are dropped first. images/s counts the time since the previous row, health measurement
    excluded.
    """

    def __init__(self, health: TrainHealth) -> None:
        self.health = health
        self.writer: Any = None
        self.fh: Any = None
        self.last_row: dict[str, Any] | None = None

    def on_start(self, trainer: Trainer) -> None:
        run_dir, step = trainer.run_dir, trainer.step
        if trainer.env.is_main:
            path = run_dir / METRICS
            if path.exists():  # drop rows written after the checkpoint we resume from
                keep = [ln for ln in path.read_text().splitlines() if ln and json.loads(ln)["step"] <= step]
                atomic_write_text(path, "".join(ln + "\n" for ln in keep))
            if trainer.cfg.log.tensorboard:
                from torch.utils.tensorboard import SummaryWriter  # optional, slow to import

                self.writer = SummaryWriter(str(run_dir / "tb"), purge_step=step + 1 if step else None)
            self.fh = open(path, "a")  # noqa: SIM115 - closed in on_end()
        self.health.start(trainer.model, run_dir, self.writer, step)
        self.t_last, self.step_last = time.perf_counter(), step

    def after_step(self, trainer: Trainer, out: LeJEPAOutput, lr: float) -> None:
        step, total = trainer.step, trainer.total
        if not (step % trainer.cfg.log.every == 0 or step == total):
            return
        row = {
            "step": step,
            "epoch": trainer.epoch,
            "loss": float(out.loss.detach()),
            "pred": float(out.pred),
            "sigreg": float(out.sigreg),
            **({} if out.gram is None else {"gram": float(out.gram)}),
            "lr": lr,
            "images_per_s": trainer.images_per_step
            * (step - self.step_last)
            / max(time.perf_counter() - self.t_last, 1e-9),
        }
        if not math.isfinite(row["loss"]):
            raise DataError(
                f"Loss became {row['loss']} at step {step}; lower optim.lr or enable optim.clip_grad."
            )
        row.update(self.health.after_step(trainer.model, step, total))
        self.write(row)
        self.last_row = row
        self.t_last, self.step_last = time.perf_counter(), step  # health time not counted

    def write(self, row: dict[str, Any]) -> None:
        if self.fh is None:
            return
        self.fh.write(json.dumps(row) + "\n")
        self.fh.flush()
        if self.writer is not None:
            for k, v in row.items():
                if k not in ("step", "epoch") and isinstance(v, (int, float)):
                    self.writer.add_scalar(f"train/{k}", v, row["step"])

    def on_end(self, trainer: Trainer) -> None:
        if self.fh is not None:
            self.fh.close()
        if self.writer is not None:
            self.writer.close()


class ProgressBar(Callback):
    """A tqdm bar of optimiser steps (main process, unless progress bars are disabled)."""

    def __init__(self, metrics: MetricsLog) -> None:
        self.metrics = metrics

    def on_start(self, trainer: Trainer) -> None:
        hidden = progress_disabled() or not trainer.env.is_main
        self.bar = tqdm(total=trainer.total, initial=trainer.step, disable=hidden, desc="train")

    def after_step(self, trainer: Trainer, out: LeJEPAOutput, lr: float) -> None:
        self.bar.update(1)
        row = self.metrics.last_row
        if row is not None and row["step"] == trainer.step:
            self.bar.set_postfix(loss=f"{row['loss']:.4f}")

    def on_end(self, trainer: Trainer) -> None:
        self.bar.close()


class Checkpointer(Callback):
    """``last.pt`` every ``checkpoint.every`` steps and at the end; ``step_NNNNNNN.pt`` every
    ``checkpoint.keep_every`` steps (kept for ``publish --checkpoint``)."""

    def __init__(self) -> None:
        self.last_saved = -1

    def after_step(self, trainer: Trainer, out: LeJEPAOutput, lr: float) -> None:
        cfg, step = trainer.cfg.checkpoint, trainer.step
        if step % cfg.every == 0 or step == trainer.total:
            trainer.save_checkpoint(LAST)
            self.last_saved = step
        if cfg.keep_every and step % cfg.keep_every == 0:
            trainer.save_checkpoint(f"step_{step:07d}.pt")

    def on_end(self, trainer: Trainer) -> None:
        if self.last_saved != trainer.step:
            trainer.save_checkpoint(LAST)


class LossCurve(Callback):
    """``loss_curve.png`` from ``metrics.jsonl`` at the end (main process)."""

    def on_end(self, trainer: Trainer) -> None:
        if trainer.env.is_main:
            plot_loss_curve(trainer.run_dir)


def plot_loss_curve(run_dir: Path) -> Path | None:
    """loss_curve.png from metrics.jsonl (loss, prediction and SIGReg terms, and health when measured)."""
    path = Path(run_dir) / METRICS
    if not path.is_file():
        return None
    rows = [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()]
    if not rows:
        return None
    # The object-oriented API renders without pyplot, so the caller's backend (a notebook's
    # inline backend, a GUI) is left alone. (matplotlib is imported here: slow, needed only here.)
    from matplotlib.figure import Figure

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
