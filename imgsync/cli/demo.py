"""``imgsync demo``: a sync against the built-in demo portal, twice (:func:`imgsync.demo.run_demo`)."""

from __future__ import annotations

from pathlib import Path

import click

from ._output import handle_errors


@click.command()
@click.option(
    "--dir",
    "folder",
    type=click.Path(file_okay=False),
    default="imgsync-demo",
    show_default=True,
    help="Where the demo's files and database go.",
)
@click.option("--products", type=click.IntRange(1, 1000), default=8, show_default=True)
@click.option("--s3", "with_s3", is_flag=True, help="Also upload to a local S3 server (needs moto[server]).")
@click.pass_context
def demo(ctx: click.Context, folder: str, products: int, with_s3: bool) -> None:
    """A complete sync against the built-in demo portal, twice: the second run downloads nothing."""
    from ..demo import run_demo

    with handle_errors():
        run_demo(Path(folder), products=products, with_s3=with_s3, echo=click.echo)
