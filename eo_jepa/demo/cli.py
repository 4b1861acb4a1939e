"""``eo-jepa quickstart``."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    @app.command("quickstart")
    def quickstart(
        out: Path = typer.Option(
            Path("eo-jepa-quickstart"), "--out", "-o", help="Folder for everything the quickstart makes."
        ),
        size: str = typer.Option(
            None,
            "--size",
            help="small (default, a few minutes) or tiny (under a minute or two; used by the tests). "
            "Default: $EO_JEPA_QUICKSTART_SIZE or small.",
            show_default=False,
        ),
        resume: bool = typer.Option(
            True,
            "--resume/--fresh",
            help="--resume (default) skips the steps recorded as done in OUT/quickstart_state.json; "
            "--fresh deletes the quickstart's previous outputs in OUT and starts over.",
        ),
    ) -> None:
        """Run the whole journey offline on generated demo data: STAC catalogue, chips, LeJEPA
        pretraining, publish + load, kNN before vs after, PCA map and loss curve."""
        from eo_jepa.demo.quickstart import run_quickstart

        result = run_quickstart(out, size=size, fresh=not resume, echo=lambda m: typer.echo(m, err=True))
        typer.echo(result.summary, nl=False)
