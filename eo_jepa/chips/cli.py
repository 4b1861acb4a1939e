"""``eo-jepa chips ...`` commands."""

from __future__ import annotations

import typer

from eo_jepa.utils.cli import add_placeholder


def register(app: typer.Typer) -> None:
    add_placeholder(app, "chips", "Build chip datasets from an AOI list and a STAC catalogue.", 5, group=True)
