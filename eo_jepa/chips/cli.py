"""``eo-jepa chips build`` and ``eo-jepa chips info``."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from eo_jepa.utils.cli import EXTRA_ARGS

chips_app = typer.Typer(
    help="Build and inspect chip datasets (AOIs + STAC -> Zarr chips, index, stats, card)."
)


@chips_app.command("build", context_settings=EXTRA_ARGS)
def build(
    ctx: typer.Context,
    aois: Path = typer.Option(..., "--aois", help="GeoJSON/GeoPackage of AOI polygons or points."),
    config: Path = typer.Option(..., "--config", "-c", help="Chip config YAML (configs/chips/*.yaml)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder of the chip store."),
    stac: Optional[str] = typer.Option(
        None,
        "--stac",
        help="STAC API URL, or an ItemCollection/catalog.json file (default: from the config).",
    ),
    workers: int = typer.Option(1, "--workers", "-j", min=1, help="Local parallel workers."),
    scheduler: Optional[str] = typer.Option(
        None, "--scheduler", help="Dask distributed scheduler address (tcp://host:8786) to run the tasks on."
    ),
    resume: bool = typer.Option(False, "--resume", help="Finish an interrupted build in --out."),
    card_dir: Optional[Path] = typer.Option(
        None, "--card-dir", help="Also copy the data card here (default: ./data_cards when it exists)."
    ),
) -> None:
    """Build a chip dataset. Trailing key=value arguments override config keys (e.g. chip_size=128).

    Exit status: 0 built; 2 bad input or no usable chip (one sentence on stderr); 3 built, but some
    chips could not be read right now (network) and were left out: rerun with --resume to retry them.
    """
    from eo_jepa.chips.build import build_chips

    if card_dir is None and Path("data_cards").is_dir():
        card_dir = Path("data_cards")
    report = build_chips(
        aois,
        config,
        out,
        stac=stac,
        workers=workers,
        scheduler=scheduler,
        resume=resume,
        card_dir=card_dir,
        overrides=list(ctx.args),
    )
    typer.echo(report.summary())
    if report.transient:  # a usable but incomplete store: say so in the exit status too
        raise typer.Exit(3)


@chips_app.command("info")
def info(root: Path = typer.Argument(..., help="A chip store folder.")) -> None:
    """Summarise a chip store: sensor, bands, counts, per-band stats."""
    import json

    from eo_jepa.chips.store import STATS_NAME, read_dataset_json

    meta = read_dataset_json(root)
    stats = json.loads((root / STATS_NAME).read_text())
    counts = meta["counts"]
    typer.echo(
        f"{root}: {meta['sensor']} {meta['chip_size']}x{meta['chip_size']} px at {meta['gsd_m']} m, {meta['dtype']}"
    )
    typer.echo(f"bands: {', '.join(meta['bands'])}")
    typer.echo(
        f"chips: {counts['ok']} ok / {counts['planned']} planned at {counts['locations']} locations; "
        + ", ".join(f"{k} {v}" for k, v in counts["ok_by_split"].items())
    )
    for reason, n in counts["rejected_by_reason"].items():
        typer.echo(f"rejected: {n} x {reason}")
    if counts.get("failed_transiently"):
        typer.echo(
            f"failed transiently (network): {counts['failed_transiently']}; `chips build --resume` retries them"
        )
    if meta.get("skipped_items"):
        typer.echo(f"skipped items: {', '.join(sorted(meta['skipped_items']))}")
    typer.echo(f"{'band':<10}{'mean':>10}{'std':>10}{'p2':>8}{'p98':>8}{'count':>12}")
    for band, s in stats["bands"].items():
        typer.echo(
            f"{band:<10}{s['mean']:>10.1f}{s['std']:>10.1f}{s['p2']:>8.0f}{s['p98']:>8.0f}{s['count']:>12d}"
        )


def register(app: typer.Typer) -> None:
    app.add_typer(chips_app, name="chips")
