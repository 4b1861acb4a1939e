"""``eo-jepa quickstart``."""

from __future__ import annotations

import typer

from eo_jepa.utils.cli import add_placeholder


def register(app: typer.Typer) -> None:
    add_placeholder(app, "quickstart", "Run the whole journey offline on generated demo data.", 8)
