"""``imgsync report``: the HTML report of the backup (:func:`imgsync.report.build_report`)."""

from __future__ import annotations

from pathlib import Path

import click

from ..errors import StateError
from ._options import settings_for
from ._output import handle_errors


@click.command()
@click.option(
    "--out",
    type=click.Path(dir_okay=False),
    default=None,
    help="The HTML file to write (default: ./imgsync-report.html); thumbnails go to <name>_files/ beside it.",
)
@click.option("--db", type=click.Path(dir_okay=False), default=None, help="State database.")
@click.option("--dest", type=click.Path(file_okay=False), default=None, help="Folder the files are in.")
@click.option(
    "--recent",
    type=click.IntRange(0, 10000),
    default=200,
    show_default=True,
    help="How many of the most recently changed images to show as thumbnails.",
)
@click.pass_context
def report(ctx: click.Context, out: str | None, db: str | None, dest: str | None, recent: int) -> None:
    """Write a self-contained HTML report of the backup and print its path.

    Counts, runs over time, failed and missing images, and thumbnails of the recently changed ones.
    The database is only read (no lock is taken, so it may run while a sync does).
    """
    from ..report import DEFAULT_OUT, build_report

    with handle_errors():
        settings = settings_for(ctx, db=db, dest=dest)
        if not settings.db.exists():
            raise StateError(f"{settings.db}: no state database yet (run 'imgsync sync' first)")
        path = build_report(settings.db, settings.dest, Path(out) if out else DEFAULT_OUT, recent=recent)
        click.echo(str(path))
