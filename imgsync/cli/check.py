"""``imgsync check``: a quick look at the setup (:func:`imgsync.check.run_checks`), a line per check."""

from __future__ import annotations

import sys

import click

from ._options import config_option, settings_for
from ._output import handle_errors


@click.command()
@config_option
@click.option("--webhook", default=None, metavar="URL", help="Incoming webhook URL.")
@click.option("--dest", type=click.Path(file_okay=False), default=None, help="Folder the files go to.")
@click.option("--db", type=click.Path(dir_okay=False), default=None, help="State database.")
@click.option("--s3/--no-s3", "s3", default=None, help="Check S3 too (default: s3.enabled).")
@click.option("--s3-bucket", default=None)
@click.option("--s3-prefix", default=None)
@click.option("--s3-endpoint-url", default=None, help="For MinIO, Ceph, R2, ...")
@click.pass_context
def check(
    ctx: click.Context,
    webhook: str | None,
    dest: str | None,
    db: str | None,
    s3: bool | None,
    s3_bucket: str | None,
    s3_prefix: str | None,
    s3_endpoint_url: str | None,
) -> None:
    """A quick look at the setup, in seconds: the portal answers these credentials with the catalog scope,
    dest and the database are writable, the S3 bucket is reachable and writable. Exit codes as for sync."""
    from ..check import exit_code, run_checks

    with handle_errors():
        settings = settings_for(
            ctx,
            webhook_url=webhook,
            dest=dest,
            db=db,
            s3_enabled=s3,
            s3_bucket=s3_bucket,
            s3_prefix=s3_prefix,
            s3_endpoint_url=s3_endpoint_url,
        )
        checks = run_checks(settings, on_check=lambda c: click.echo(c.line()))
        sys.exit(exit_code(checks))
