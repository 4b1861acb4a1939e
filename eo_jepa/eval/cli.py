"""``eo-jepa eval``, ``embed``, ``viz`` and ``change``."""

from __future__ import annotations

import typer

from eo_jepa.utils.cli import add_placeholder


def register(app: typer.Typer) -> None:
    add_placeholder(app, "eval", "Probe an encoder (kNN, linear, representation health).", 7, group=True)
    add_placeholder(app, "embed", "Export one embedding per chip as GeoParquet.", 7)
    add_placeholder(app, "viz", "Visualise dense features (PCA to RGB).", 7, group=True)
    add_placeholder(app, "change", "Per-patch change map between two dates.", 7)
