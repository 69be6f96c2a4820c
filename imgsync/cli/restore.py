"""``imgsync restore``: the options, checked for what goes together, wired to
:func:`imgsync.restore.run_restore`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from .. import __version__
from ..errors import ImgsyncError, InternalError
from ..runner import Ending, run_to_end
from ._logging import RunLog, setup_logging
from ._options import bar_wanted, config_option, more_verbosity, settings_for
from ._output import (
    TqdmProgress,
    exit_as,
    handle_errors,
    restore_line,
    show_match,
    show_restore,
    show_restore_plan,
)
from ._signals import stop_on_signals


@click.command()
@config_option
@click.argument("pairs", nargs=-1, metavar="[PRODUCT_ID:IMAGE_ID]...")
@click.option(
    "--csv", "csv_paths", multiple=True, metavar="PATH", help="CSV of recorded pairs (- reads stdin)."
)
@click.option(
    "--product",
    "products",
    multiple=True,
    type=click.IntRange(min=1),
    metavar="ID",
    help="Every recorded image of this product (repeatable).",
)
@click.option(
    "--products-file",
    "products_files",
    multiple=True,
    metavar="PATH",
    help="Product ids, one a line, or a CSV with a productId column (repeatable; - reads stdin).",
)
@click.option("--missing", is_flag=True, help="Every image recorded missing.")
@click.option(
    "--since",
    default=None,
    metavar="WHEN",
    help="With --missing: those that went missing since then (2026-12-01, 36h, 2d).",
)
@click.option(
    "--to",
    "to_dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Write the backups into this folder instead of the portal (no portal call).",
)
@click.option(
    "--replace",
    is_flag=True,
    help="Restore into a taken DETAIL/PREVIEW slot (the picture there is backed up first).",
)
@click.option("--force", is_flag=True, help="Send again what the portal stored with other bytes before.")
@click.option(
    "--from-db",
    "from_db",
    type=click.Path(dir_okay=False),
    default=None,
    help="Another portal's state database (read only): restore its images to this config's portal.",
)
@click.option(
    "--from-dest",
    "from_dest",
    type=click.Path(file_okay=False),
    default=None,
    help="With --from-db: the folder of the source's backups.",
)
@click.option("--from-s3", "from_s3", is_flag=True, help="With --from-db: read the source's S3 objects.")
@click.option(
    "--from-s3-bucket", "from_s3_bucket", default=None, help="The source's bucket (default s3.bucket)."
)
@click.option(
    "--from-s3-prefix", "from_s3_prefix", default=None, help="The source's key prefix (default: as recorded)."
)
@click.option(
    "--map",
    "map_csv",
    default=None,
    metavar="CSV",
    help="With --from-db: source_product_id,target_product_id lines (- reads stdin).",
)
@click.option(
    "--match",
    "match_key",
    type=click.Choice(["xml_id", "code"]),
    default=None,
    help="With --from-db: find each target product by the source item's xml_id or code.",
)
@click.option("--dry-run", is_flag=True, help="Print the plan (read calls only), change nothing.")
@click.option("--webhook", default=None, metavar="URL", help="Incoming webhook URL of the target portal.")
@click.option("--dest", type=click.Path(file_okay=False), default=None, help="Folder the backups are in.")
@click.option("--db", type=click.Path(dir_okay=False), default=None, help="State database.")
@click.option("--s3/--no-s3", "s3", default=None, help="Read backups from S3 too (overrides s3.enabled).")
@click.option("--s3-bucket", default=None)
@click.option("--s3-prefix", default=None)
@click.option("--s3-endpoint-url", default=None, help="For MinIO, Ceph, R2, ...")
@click.option(
    "--workers", default=None, metavar="N|auto", help="Accepted as for sync (adds go one request at a time)."
)
@click.option("--rate-limit", default=None, metavar="N", help="Requests per second (bitrix24.rate_limit).")
@click.option("--burst", default=None, metavar="N", help="Leaky-bucket size (bitrix24.burst).")
@click.option("--timeout", default=None, metavar="SECONDS", help="Per HTTP request (bitrix24.timeout).")
@click.option("--max-duration", default=None, metavar="TIME", help="Stop sending after this long: 90m, 6h.")
@click.option(
    "--max-bytes", default=None, metavar="SIZE", help="Stop sending after this many bytes: 20G, 512M."
)
@click.option("--log-file", default=None, metavar="PATH", help="Append log lines to this file.")
@click.option(
    "--metrics-file", default=None, metavar="PATH", help="Write Prometheus metrics there at the end."
)
@click.option(
    "--progress/--no-progress", default=None, help="Progress bar on stderr (default: on a terminal)."
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON summary on stdout at the end.")
@click.option("-v", "--verbose", "more_verbose", count=True, help="More log lines.")
@click.option("-q", "--quiet", "more_quiet", is_flag=True, help="Only errors (and each failed image).")
@click.pass_context
def restore(
    ctx: click.Context,
    pairs: tuple[str, ...],
    csv_paths: tuple[str, ...],
    products: tuple[int, ...],
    products_files: tuple[str, ...],
    missing: bool,
    since: str | None,
    to_dir: str | None,
    replace: bool,
    force: bool,
    from_db: str | None,
    from_dest: str | None,
    from_s3: bool,
    from_s3_bucket: str | None,
    from_s3_prefix: str | None,
    map_csv: str | None,
    match_key: str | None,
    dry_run: bool,
    webhook: str | None,
    dest: str | None,
    db: str | None,
    s3: bool | None,
    s3_bucket: str | None,
    s3_prefix: str | None,
    s3_endpoint_url: str | None,
    workers: str | None,
    rate_limit: str | None,
    burst: str | None,
    timeout: str | None,
    max_duration: str | None,
    max_bytes: str | None,
    log_file: str | None,
    metrics_file: str | None,
    progress: bool | None,
    as_json: bool,
    more_verbose: int,
    more_quiet: bool,
) -> None:
    """Put backed-up images back on the portal (or into a folder with --to), checked byte for byte."""
    from ..restore import RestoreRequest, run_restore
    from ..restore.select import Selection
    from ..restore.source import SourcePortal
    from ..restore.summary import restore_json

    if not (pairs or csv_paths or products or products_files or missing):
        raise click.UsageError(
            "nothing to restore: give PRODUCT_ID:IMAGE_ID pairs, --csv PATH, --product ID, --products-file PATH "
            "or --missing"
        )
    if since is not None and not missing:
        raise click.UsageError("--since goes with --missing")
    if from_db is None:
        given = [
            name
            for name, value in (
                ("--from-dest", from_dest),
                ("--from-s3", from_s3 or None),
                ("--from-s3-bucket", from_s3_bucket),
                ("--from-s3-prefix", from_s3_prefix),
                ("--map", map_csv),
                ("--match", match_key),
            )
            if value is not None
        ]
        if given:
            raise click.UsageError(f"{given[0]} goes with --from-db (a restore from another portal)")
    else:
        if (map_csv is None) == (match_key is None):
            raise click.UsageError("--from-db needs one of --map CSV or --match xml_id|code")
        if from_dest is None and not from_s3:
            raise click.UsageError("--from-db needs the source's backups: --from-dest DIR and/or --from-s3")
        if (from_s3_bucket is not None or from_s3_prefix is not None) and not from_s3:
            raise click.UsageError("--from-s3-bucket and --from-s3-prefix go with --from-s3")
        if to_dir is not None:
            raise click.UsageError("--to does not go with --from-db")
    quiet = more_verbosity(ctx, more_verbose, more_quiet)
    show_bar = bar_wanted(progress, dry_run=dry_run, quiet=quiet)
    setup_logging(ctx.obj["verbose"], quiet, progress=show_bar)
    bar = TqdmProgress(show_bar)
    run = RunLog(
        "restore",
        dry_run=dry_run,
        describe=restore_line,
        failed=lambda exc: _failed(exc, dry_run),
        as_json=as_json,
    )
    with handle_errors(), run:
        try:
            settings = run.open(
                settings_for(
                    ctx,
                    webhook_url=webhook,
                    dest=dest,
                    db=db,
                    s3_enabled=s3,
                    s3_bucket=s3_bucket,
                    s3_prefix=s3_prefix,
                    s3_endpoint_url=s3_endpoint_url,
                    workers=workers,
                    rate_limit=rate_limit,
                    burst=burst,
                    timeout=timeout,
                    max_duration_s=max_duration,
                    max_bytes=max_bytes,
                    log_file=log_file,
                    metrics_file=metrics_file,
                )
            )
        except ImgsyncError as exc:
            run.ending = Ending(
                restore_json(None, dry_run, error=exc.message, code=exc.exit_code), None, exc.exit_code, exc
            )
            show_restore(run.ending, as_json=as_json, dry_run=dry_run, quiet=quiet, bar=bar)
            raise
        run.line(f"restore started (imgsync {__version__})")
        request = RestoreRequest(
            selection=Selection(
                pairs=pairs,
                csv_paths=csv_paths,
                products=products,
                products_files=products_files,
                missing=missing,
                since=since,
                stdin=sys.stdin.buffer,
            ),
            to_dir=Path(to_dir) if to_dir else None,
            replace=replace,
            force=force,
            dry_run=dry_run,
            source=None
            if from_db is None
            else SourcePortal(
                db=Path(from_db),
                dest=Path(from_dest) if from_dest else None,
                s3=from_s3,
                s3_bucket=from_s3_bucket,
                s3_prefix=from_s3_prefix,
                map_csv=map_csv,
                match=match_key,
            ),
        )

        with stop_on_signals() as stop:
            run.ending = run_to_end(
                lambda: run_restore(
                    settings,
                    request,
                    progress=bar.advance,
                    on_total=bar.total,
                    on_plan=show_restore_plan if dry_run and not as_json else None,
                    on_match=show_match if dry_run and not as_json else None,
                    stop=stop,
                ),
                stop=stop,
                as_json=lambda summary, error, code: restore_json(summary, dry_run, error=error, code=code),
            )
        show_restore(run.ending, as_json=as_json, dry_run=dry_run, quiet=quiet, bar=bar)
        exit_as(run.ending, "what finished is recorded")


def _failed(exc: BaseException, dry_run: bool) -> Ending[Any]:
    """The ending of a restore that failed outside the pipeline (a defect of ours, say)."""
    from ..restore.summary import restore_json  # as the command: the restore package only when restoring

    if isinstance(exc, ImgsyncError):
        return Ending(
            restore_json(None, dry_run, error=exc.message, code=exc.exit_code), None, exc.exit_code, exc
        )
    code = InternalError.exit_code
    return Ending(restore_json(None, dry_run, error=f"internal error: {exc!r}", code=code), None, code)
