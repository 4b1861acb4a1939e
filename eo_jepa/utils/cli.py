"""Helpers for the CLI modules of each sub-package (kept free of heavy imports)."""

from __future__ import annotations

import typer

from eo_jepa.errors import NotBuiltYetError

# Commands that take free-form trailing ``key=value`` overrides use these settings.
EXTRA_ARGS = {"allow_extra_args": True, "ignore_unknown_options": True}


def add_placeholder(app: typer.Typer, name: str, help: str, issue: int, *, group: bool = False) -> None:
    """Register a command (or group) that says in one line that it is not built yet and exits 2."""
    message = f"`eo-jepa {name}` is not built yet (tracked in issue #{issue})."

    def _not_built(ctx: typer.Context) -> None:
        raise NotBuiltYetError(message)

    # A group placeholder is a plain command that swallows any sub-command and arguments.
    del group
    app.command(name, help=f"{help} [not built yet]", context_settings=EXTRA_ARGS)(_not_built)
