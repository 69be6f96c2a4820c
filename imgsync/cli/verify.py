"""``imgsync verify``: local files (and S3 objects) against the database (:func:`imgsync.verify.verify`),
and ``--repair``."""

from __future__ import annotations

import json
import sys

import click

from ..errors import ConfigError, StateError
from ..store import Store
from ._options import config_option, settings_for
from ._output import handle_errors


@click.command()
@config_option
@click.option("--db", type=click.Path(dir_okay=False), default=None, help="State database.")
@click.option("--dest", type=click.Path(file_okay=False), default=None, help="Folder the files are in.")
@click.option("--s3/--no-s3", "s3", default=None, help="Check the S3 objects too (default: s3.enabled).")
@click.option("--s3-bucket", default=None)
@click.option("--s3-prefix", default=None)
@click.option("--s3-endpoint-url", default=None, help="For MinIO, Ceph, R2, ...")
@click.option(
    "--sample",
    type=click.FloatRange(0, 100, min_open=True),
    default=None,
    metavar="PERCENT",
    help="Check this percentage of the images, picked at random (for large stores).",
)
@click.option(
    "--seed", default=None, help="With --sample: pick the same images as another run with this seed."
)
@click.option(
    "--repair",
    is_flag=True,
    help="Mark what is missing or changed so that the next sync fetches it again (takes the sync lock).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.pass_context
def verify(
    ctx: click.Context,
    db: str | None,
    dest: str | None,
    s3: bool | None,
    s3_bucket: str | None,
    s3_prefix: str | None,
    s3_endpoint_url: str | None,
    sample: float | None,
    seed: str | None,
    repair: bool,
    as_json: bool,
) -> None:
    """Re-hash local files (and, with --s3, check S3 objects) against the database.

    Reports files that are missing, changed or not recorded; exit 1 on any difference. With --repair, the
    rows of what is missing or changed are marked failed so that the next sync fetches them again.
    """
    from contextlib import nullcontext

    from ..runner import make_uploader
    from ..store import run_lock
    from ..verify import repair as repair_rows
    from ..verify import verify as run_verify

    with handle_errors():
        settings = settings_for(
            ctx,
            db=db,
            dest=dest,
            s3_enabled=s3,
            s3_bucket=s3_bucket,
            s3_prefix=s3_prefix,
            s3_endpoint_url=s3_endpoint_url,
        )
        if not settings.db.exists():
            raise StateError(f"{settings.db}: no state database yet (run 'imgsync sync' first)")
        if settings.s3_enabled and not settings.s3_bucket:
            raise ConfigError("--s3 needs a bucket: --s3-bucket, IMGSYNC_S3_BUCKET or s3.bucket")
        uploader = make_uploader(settings)
        if uploader is not None:
            uploader.check()
        # --repair writes: it holds the sync's lock from the check to the write (exit 75 while a sync runs).
        with (
            run_lock(settings.db) if repair else nullcontext(),
            Store(settings.db, readonly=not repair) as store,
        ):
            report = run_verify(store, settings.dest, objects=uploader, sample=sample, seed=seed)
            if repair:
                repair_rows(store, report)
        if as_json:
            click.echo(json.dumps(report.as_json()))
        else:
            for title, items in (("missing", report.missing), ("changed", report.changed)):
                for item in items:
                    click.echo(
                        f"{title:<10} {item.where}  ({item.product_id}:{item.image_id}: {item.detail})"
                    )
            for item in report.errors:
                click.echo(
                    f"{'unchecked':<10} {item.where}  ({item.product_id}:{item.image_id}: {item.detail})"
                )
            for path in report.unrecorded:
                click.echo(f"{'unrecorded':<10} {path}")
            for path in report.temp_files:
                click.echo(f"{'temporary':<10} {path}  (left by an interrupted run; safe to delete)")
            for title, items in (("s3 missing", report.s3_missing), ("s3 changed", report.s3_changed)):
                for item in items:
                    click.echo(
                        f"{title:<10} {item.where}  ({item.product_id}:{item.image_id}: {item.detail})"
                    )
            of = f" (a {report.sample_percent:g}% sample)" if report.sample_percent is not None else ""
            click.echo(
                f"verified {report.checked} of {report.recorded} files{of} in {settings.dest}: {report.ok} ok, "
                f"{len(report.missing)} missing, {len(report.changed)} changed, "
                f"{len(report.unrecorded)} unrecorded, {len(report.temp_files)} temporary"
                + (f", {len(report.errors)} could not be checked" if report.errors else "")
            )
            if report.s3_recorded is not None:
                click.echo(
                    f"verified {report.s3_checked} of {report.s3_recorded} S3 objects in bucket "
                    f"'{settings.s3_bucket}': {report.s3_ok} ok, {len(report.s3_missing)} missing, "
                    f"{len(report.s3_changed)} changed"
                )
            if repair and report.repaired:
                one = report.repaired == 1
                click.echo(
                    f"marked {report.repaired} image{'' if one else 's'} for repair: "
                    f"run 'imgsync sync' to fetch {'it' if one else 'them'} again"
                )
            elif report.repairable and not repair:
                click.echo(
                    "run 'imgsync verify --repair' so that the next 'imgsync sync' fetches "
                    "what is missing or changed again"
                )
        sys.exit(0 if report.clean else 1)
