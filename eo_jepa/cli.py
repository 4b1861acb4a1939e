"""The ``eo-jepa`` command line.

Each sub-package owns its commands in its own ``cli.py`` with a ``register(app)`` function;
this module wires them together, sets up logging and turns user errors
(:class:`~eo_jepa.errors.EOJepaError`) into one line on stderr and exit status 2.
Command modules import torch and friends inside the command bodies so ``--help`` is fast.
"""

from __future__ import annotations

import logging
import sys

import typer

from eo_jepa._version import __version__
from eo_jepa.chips import cli as chips_cli
from eo_jepa.demo import cli as demo_cli
from eo_jepa.errors import EOJepaError
from eo_jepa.eval import cli as eval_cli
from eo_jepa.models import cli as models_cli
from eo_jepa.train import cli as train_cli
from eo_jepa.utils.io import is_disk_full
from eo_jepa.utils.logging import configure_logging

log = logging.getLogger("eo_jepa")

app = typer.Typer(
    name="eo-jepa",
    help="Earth-observation foundation models with LeJEPA: build chip datasets from STAC, "
    "pretrain with SIGReg, publish and load encoders that carry their bands and normalisation.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"eo-jepa {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version_callback, is_eager=True, help="Print the version and exit."
    ),
    verbose: int = typer.Option(0, "--verbose", "-v", count=True, help="More log output (-vv for debug)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Only warnings and errors; no progress bars."),
) -> None:
    configure_logging(-1 if quiet else verbose)


for _commands in (chips_cli, train_cli, models_cli, eval_cli, demo_cli):
    _commands.register(app)


def main(argv: list[str] | None = None) -> None:
    """Console entry point: run the app; a user error becomes one line on stderr and exit code 2."""
    configure_logging(0)
    try:
        app(args=argv, prog_name="eo-jepa")
    except EOJepaError as exc:
        typer.echo(f"eo-jepa: error: {exc}", err=True)
        sys.exit(2)
    except OSError as exc:  # a write outside the atomic helpers (appended logs, chunk stores) hit a full disk
        if not is_disk_full(exc):
            raise
        where = f" {exc.filename!r}" if getattr(exc, "filename", None) else ""
        typer.echo(
            f"eo-jepa: error: Could not write{where}: {exc.strerror or exc}; free some space and run the "
            "command again (with --resume where it has one).",
            err=True,
        )
        sys.exit(2)
