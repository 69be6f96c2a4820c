"""``imgsync sync``: the options, wired to :func:`imgsync.runner.sync_to_end`."""

from __future__ import annotations

import sys

import click

from .. import __version__
from ..errors import ImgsyncError
from ..runner import Request, sync_failed, sync_to_end
from ._logging import RunLog, setup_logging
from ._options import bar_wanted, config_option, more_verbosity, settings_for
from ._output import TqdmProgress, counts_line, exit_as, handle_errors, plan_printer, show_sync
from ._signals import stop_on_signals


@click.command()
@config_option
@click.argument("pairs", nargs=-1, metavar="[PRODUCT_ID:IMAGE_ID]...")
@click.option(
    "--csv",
    "csv_paths",
    multiple=True,
    metavar="PATH",
    help="CSV of product/image ids (repeatable; - reads stdin).",
)
@click.option(
    "--product",
    "products",
    multiple=True,
    type=click.IntRange(min=1),
    metavar="ID",
    help="Every image of this product (repeatable).",
)
@click.option(
    "--products-file",
    "products_files",
    multiple=True,
    metavar="PATH",
    help="Product ids, one a line, or a CSV with a productId column (repeatable; - reads stdin).",
)
@click.option("--all", "all_items", is_flag=True, help="Every image of every item of the portal's catalogs.")
@click.option(
    "--deep", is_flag=True, help="With --all: ask every item's images, even those listed as recorded."
)
@click.option("--recorded", is_flag=True, help="Every image the state database records.")
@click.option(
    "--webhook", default=None, metavar="URL", help="Incoming webhook URL (https://portal/rest/1/code/)."
)
@click.option("--dest", type=click.Path(file_okay=False), default=None, help="Folder the files go to.")
@click.option("--db", type=click.Path(dir_okay=False), default=None, help="State database.")
@click.option("--s3/--no-s3", "s3", default=None, help="Upload to S3 (overrides s3.enabled).")
@click.option("--s3-bucket", default=None)
@click.option("--s3-prefix", default=None)
@click.option("--s3-endpoint-url", default=None, help="For MinIO, Ceph, R2, ...")
@click.option("--force", is_flag=True, help="Download and upload even if unchanged.")
@click.option(
    "--dry-run", is_flag=True, help="Fetch metadata, print what would be done and why, change nothing."
)
@click.option(
    "--workers",
    default=None,
    metavar="N|auto",
    help='Requests in flight: a number from 1 to 64, or "auto" (the default: sized from the round trip).',
)
@click.option(
    "--rate-limit", default=None, metavar="N", help="Requests per second (bitrix24.rate_limit; default 2)."
)
@click.option("--burst", default=None, metavar="N", help="Leaky-bucket size (bitrix24.burst; default 50).")
@click.option(
    "--timeout", default=None, metavar="SECONDS", help="Per HTTP request (bitrix24.timeout; default 30)."
)
@click.option(
    "--max-duration",
    default=None,
    metavar="TIME",
    help="Stop taking new work after this long: 90m, 6h, 1h30m.",
)
@click.option("--max-downloads", default=None, metavar="N", help="Start at most N downloads.")
@click.option(
    "--max-bytes",
    default=None,
    metavar="SIZE",
    help="Stop starting downloads after this much: 20G, 512M (K/M/G/T are powers of 1024) or bytes.",
)
@click.option(
    "--log-file",
    default=None,
    metavar="PATH",
    help="Append log lines (INFO, timestamped) and a progress line a minute to this file.",
)
@click.option(
    "--metrics-file",
    default=None,
    metavar="PATH",
    help="Write Prometheus metrics there at the end of the run (node_exporter textfile collector).",
)
@click.option(
    "--progress/--no-progress", default=None, help="Progress bar on stderr (default: on a terminal)."
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON summary on stdout at the end.")
@click.option(
    "-v", "--verbose", "more_verbose", count=True, help="More log lines (same as before the command)."
)
@click.option(
    "-q", "--quiet", "more_quiet", is_flag=True, help="Only errors (and each failed image) on stderr."
)
@click.pass_context
def sync(
    ctx: click.Context,
    pairs: tuple[str, ...],
    csv_paths: tuple[str, ...],
    products: tuple[int, ...],
    products_files: tuple[str, ...],
    all_items: bool,
    deep: bool,
    recorded: bool,
    webhook: str | None,
    dest: str | None,
    db: str | None,
    s3: bool | None,
    s3_bucket: str | None,
    s3_prefix: str | None,
    s3_endpoint_url: str | None,
    force: bool,
    dry_run: bool,
    workers: str | None,
    rate_limit: str | None,
    burst: str | None,
    timeout: str | None,
    max_duration: str | None,
    max_downloads: str | None,
    max_bytes: str | None,
    log_file: str | None,
    metrics_file: str | None,
    progress: bool | None,
    as_json: bool,
    more_verbose: int,
    more_quiet: bool,
) -> None:
    """Fetch metadata, download new or changed images, record them, optionally upload to S3."""
    if not (pairs or csv_paths or products or products_files or all_items or recorded):
        raise click.UsageError(
            "nothing to sync: give PRODUCT_ID:IMAGE_ID pairs, --csv PATH, --product ID, --products-file PATH, "
            "--all or --recorded"
        )
    if deep and not all_items:
        raise click.UsageError("--deep goes with --all")
    quiet = more_verbosity(ctx, more_verbose, more_quiet)
    show_bar = bar_wanted(progress, dry_run=dry_run, quiet=quiet)
    setup_logging(ctx.obj["verbose"], quiet, progress=show_bar)
    bar = TqdmProgress(show_bar)
    run = RunLog(
        "sync",
        dry_run=dry_run,
        describe=counts_line,
        failed=lambda exc: sync_failed(exc, dry_run),
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
                    max_downloads=max_downloads,
                    max_bytes=max_bytes,
                    log_file=log_file,
                    metrics_file=metrics_file,
                )
            )
        except ImgsyncError as exc:
            run.ending = sync_failed(exc, dry_run)
            show_sync(run.ending, as_json=as_json, dry_run=dry_run, quiet=True, bar=bar)
            raise
        run_progress = run.progress(bar)
        run.line(f"sync started (imgsync {__version__})")
        request = Request(
            pairs=pairs,
            csv_paths=csv_paths,
            products=products,
            products_files=products_files,
            all=all_items,
            deep=deep,
            recorded=recorded,
            force=force,
            dry_run=dry_run,
            stdin=sys.stdin.buffer,
        )
        on_plan = plan_printer() if dry_run and not as_json else None
        with stop_on_signals() as stop:
            run.ending = sync_to_end(settings, request, progress=run_progress, on_plan=on_plan, stop=stop)
        show_sync(run.ending, as_json=as_json, dry_run=dry_run, quiet=quiet, bar=bar)
        exit_as(run.ending, "what finished is recorded, run again to continue")
