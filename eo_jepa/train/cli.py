"""``eo-jepa train`` and ``eo-jepa publish``."""

from __future__ import annotations

import typer

from eo_jepa.utils.cli import add_placeholder


def register(app: typer.Typer) -> None:
    add_placeholder(app, "train", "Pretrain an encoder with LeJEPA (single process or torchrun).", 6)
    add_placeholder(
        app, "publish", "Export a training run as a checkpoint folder (optionally to the Hub).", 6
    )
