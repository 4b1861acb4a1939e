"""``eo-jepa models ...`` commands: what :func:`eo_jepa.load` knows.

The registry is a table without torch; the loader (:mod:`eo_jepa.models.resolve`, which imports
torch) is imported inside ``info`` when needed, so ``eo-jepa --help`` and ``models list`` stay fast.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

from eo_jepa.models.registry import is_registered, list_models, markdown_table, spec_dict

models_app = typer.Typer(help="List and inspect the encoders eo_jepa.load() knows.", no_args_is_help=True)


@models_app.command("list")
def list_cmd(
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """The registered model names with architecture, bands, normalisation, source and licence."""
    if as_json:
        typer.echo(json.dumps(list_models(), indent=2))
    else:
        typer.echo(markdown_table([m["name"] for m in list_models()]))


@models_app.command("info")
def info_cmd(
    name: str = typer.Argument(
        ..., help="A registered model name (see `eo-jepa models list`) or a local checkpoint file or folder."
    ),
    load: bool = typer.Option(
        False, "--load", help="Also load it (download if needed) and print its config."
    ),
) -> None:
    """Everything the registry records about NAME (or what a checkpoint file is and the call that loads it);
    with --load, the loaded encoder's bands and stats."""
    if not is_registered(name) and Path(name).expanduser().exists():
        from eo_jepa.models.resolve import file_info

        typer.echo(json.dumps(file_info(name), indent=2, default=str))
        return
    info = spec_dict(name)
    if load:
        from eo_jepa.models.checkpoint import encoder_config
        from eo_jepa.models.resolve import load as load_model

        info["loaded"] = encoder_config(load_model(name))
    typer.echo(json.dumps(info, indent=2, default=str))


def register(app: typer.Typer) -> None:
    app.add_typer(models_app, name="models")
