"""``imgsync rebuild --from-s3``: the state database from the bucket's object metadata
(:func:`imgsync.rebuild.rebuild_from_s3`)."""

from __future__ import annotations

import sys

import click

from ..errors import ConfigError, Interrupted
from ..runner import stop_code
from ..store import Store
from ._options import config_option, settings_for
from ._output import handle_errors, print_json
from ._signals import stop_on_signals


@click.command()
@click.option("--from-s3", "from_s3", is_flag=True, help="Rebuild from the S3 objects' metadata (required).")
@config_option
@click.option("--db", type=click.Path(dir_okay=False), default=None, help="State database to fill.")
@click.option("--dest", type=click.Path(file_okay=False), default=None, help="Folder the files are in.")
@click.option("--s3-bucket", default=None)
@click.option("--s3-prefix", default=None)
@click.option("--s3-endpoint-url", default=None, help="For MinIO, Ceph, R2, ...")
@click.option("--merge", is_flag=True, help="Add to a database that already records images.")
@click.option(
    "--workers", type=click.IntRange(1, 64), default=8, show_default=True, help="HEAD requests in parallel."
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON summary on stdout at the end.")
@click.pass_context
def rebuild(
    ctx: click.Context,
    from_s3: bool,
    db: str | None,
    dest: str | None,
    s3_bucket: str | None,
    s3_prefix: str | None,
    s3_endpoint_url: str | None,
    merge: bool,
    workers: int,
    as_json: bool,
) -> None:
    """Rebuild the state database from the S3 bucket's object metadata, after a lost database.

    Exit 0 when the listing was read to its end, also when some objects could not be used (they are
    listed, with reasons, and their images are downloaded again by the next sync).
    """
    from ..rebuild import REASONS, printable, rebuild_from_s3
    from ..s3 import S3Uploader
    from ..store import run_lock

    if not from_s3:
        raise click.UsageError("say where to rebuild from: --from-s3 (the bucket's object metadata)")
    with handle_errors():
        settings = settings_for(
            ctx,
            db=db,
            dest=dest,
            s3_enabled=True,
            s3_bucket=s3_bucket,
            s3_prefix=s3_prefix,
            s3_endpoint_url=s3_endpoint_url,
            workers=workers,
        )
        if not settings.s3_bucket:
            raise ConfigError("rebuild --from-s3 needs a bucket: --s3-bucket, IMGSYNC_S3_BUCKET or s3.bucket")
        uploader = S3Uploader(
            settings.s3_bucket,
            settings.s3_prefix,
            settings.s3_endpoint_url or None,
            workers=workers,
        )
        uploader.check()
        with run_lock(settings.db), Store(settings.db) as store, stop_on_signals() as stop:
            try:
                summary = rebuild_from_s3(
                    store,
                    uploader,
                    settings.dest,
                    merge=merge,
                    workers=workers,
                    stop=stop,
                )
            except Interrupted as exc:
                code = stop_code(stop, exc)
                partial = getattr(exc, "summary", None)
                if as_json and partial is not None:
                    print_json({**partial.as_json(), "exit_code": code})
                click.echo(
                    f"imgsync: stopped: {exc.message}; what was read is recorded, "
                    "run 'imgsync rebuild --from-s3 --merge' to continue",
                    err=True,
                )
                sys.exit(code)
        code = 0
        if as_json:
            print_json({**summary.as_json(), "exit_code": code})
            sys.exit(code)
        where = f"s3://{summary.bucket}/{summary.prefix}"
        click.echo(
            f"rebuilt {summary.recorded} images in {settings.db} from {summary.listed} objects in {where} "
            f"in {summary.duration_s:.1f} s; {summary.with_local_file} with their file in {settings.dest}"
            + (f", {summary.already_recorded} already recorded" if summary.already_recorded else "")
            + (f", {summary.superseded} older versions skipped" if summary.superseded else ""),
            err=True,
        )
        if not summary.listed:
            click.echo(f"imgsync: warning: no objects under {where}: check --s3-prefix", err=True)
        if summary.not_used:
            click.echo(f"not used: {summary.not_used} objects", err=True)
            for reason, n in sorted(summary.unusable.items()):
                click.echo(f"  {n:>8}  {reason}: {REASONS[reason]}", err=True)
                for key in summary.examples.get(reason, []):
                    click.echo(f"            e.g. {printable(key)}", err=True)
        sys.exit(code)
