"""``eo-jepa train`` and ``eo-jepa publish``."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from eo_jepa.utils.cli import EXTRA_ARGS


def register(app: typer.Typer) -> None:
    @app.command("train", context_settings=EXTRA_ARGS)
    def train_cmd(
        ctx: typer.Context,
        config: Path = typer.Option(
            ..., "--config", "-c", help="Training config YAML (configs/train/*.yaml)."
        ),
        data: Optional[Path] = typer.Option(
            None, "--data", help="Chip store or raster folder (overrides data.path)."
        ),
        resume: bool = typer.Option(False, "--resume", help="Continue from runs/<name>/checkpoints/last.pt."),
        time_budget: Optional[str] = typer.Option(
            None,
            "--time-budget",
            help="Wall-clock budget such as 30m or 2h: the step count and cosine schedule are sized to it.",
        ),
    ) -> None:
        """Pretrain an encoder with LeJEPA; trailing key=value pairs override the config.

        Multi-GPU / multi-node: torchrun --nproc-per-node 8 -m eo_jepa train --config ...
        """
        from eo_jepa.train.config import load_train_config
        from eo_jepa.train.trainer import run_training

        extra = [f"time_budget={time_budget}"] if time_budget else []
        cfg = load_train_config(config, [*ctx.args, *extra])
        run_dir = run_training(cfg, data=data, resume=resume)
        typer.echo(str(run_dir))

    @app.command("publish")
    def publish_cmd(
        run_dir: Path = typer.Argument(..., help="A training run folder (runs/<name>)."),
        out: Path = typer.Option(..., "--out", help="Output checkpoint folder."),
        repo_id: Optional[str] = typer.Option(
            None, "--repo-id", help="Also upload to this Hub repo (org/name)."
        ),
        private: bool = typer.Option(False, "--private", help="Create the Hub repo as private."),
        fmt: str = typer.Option(
            "ours", "--format", help="ours | legacy-pt (also writes the seed card's .pt)."
        ),
        checkpoint: str = typer.Option(
            "last",
            "--checkpoint",
            help="last, a step kept by checkpoint.keep_every (e.g. 500), or init (the untrained encoder).",
        ),
    ) -> None:
        """Export a run's encoder (projector dropped) with bands, norm stats, config, provenance and card."""
        from eo_jepa.train.publish import publish

        result = publish(run_dir, out, repo_id=repo_id, private=private, fmt=fmt, checkpoint=checkpoint)
        typer.echo(str(result))
