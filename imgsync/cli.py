"""The command line: click commands over :mod:`imgsync.runner`; the one place with click and tqdm."""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

from . import __version__
from .config import Settings, load_settings
from .errors import ConfigError, ImgsyncError, InternalError, Interrupted, StateError
from .models import ImageRef, StopRequest
from .redact import RedactingFilter, redact
from .runner import Progress, Request, run_sync
from .store import Store, lock_held
from .sync import Plan, Summary

log = logging.getLogger("imgsync")


class _TqdmProgress(Progress):
    def __init__(self, enabled: bool) -> None:
        self.bar: Any = None
        self.enabled = enabled

    def total(self, n: int) -> None:
        if self.enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=n, unit="img", file=sys.stderr, dynamic_ncols=True, desc="imgsync")

    def extend(self, n: int) -> None:
        if self.bar is not None:
            self.bar.total += n
            self.bar.refresh()

    def advance(self, action: str) -> None:
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix_str(action, refresh=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class _TqdmHandler(logging.StreamHandler):  # type: ignore[type-arg,unused-ignore]
    """Log lines that do not tear the progress bar."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from tqdm import tqdm

            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # pragma: no cover - logging must never raise
            self.handleError(record)


#: The level of the stderr handler (the root logger's may be lower, for a log file).
_stderr_level = logging.WARNING


def _setup_logging(verbose: int, quiet: bool, progress: bool = False) -> None:
    global _stderr_level
    level = logging.ERROR if quiet else [logging.WARNING, logging.INFO, logging.DEBUG][min(verbose, 2)]
    handler: logging.Handler = _TqdmHandler() if progress else logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("imgsync: %(levelname)s: %(message)s"))
    handler.addFilter(RedactingFilter())
    handler.setLevel(level)
    _stderr_level = level
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    # Third-party chatter (urllib3 URLs carry secrets; redaction covers them, but they are noise).
    for name in ("urllib3", "botocore", "boto3", "s3transfer"):
        logging.getLogger(name).setLevel(max(level, logging.WARNING))


# --- log file (--log-file, [sync] log_file) ---


def _open_log_file(path: Path) -> logging.Handler:
    """Append INFO and above, timestamped and redacted, to ``path`` (the stderr handler keeps its level)."""
    try:
        handler = logging.FileHandler(path, mode="a", encoding="utf-8")
    except OSError as exc:
        raise ConfigError(
            f"cannot write the log file {path} (--log-file, sync.log_file, IMGSYNC_SYNC_LOG_FILE): "
            f"{exc.strerror or exc}"
        ) from None
    handler.setFormatter(
        logging.Formatter(
            "%(asctime)s imgsync[%(process)d]: %(levelname)s: %(message)s", "%Y-%m-%dT%H:%M:%S%z"
        )
    )
    handler.addFilter(RedactingFilter())
    level = min(_stderr_level, logging.INFO)
    handler.setLevel(level)
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(min(root.level, level))
    return handler


def _to_log_file(handler: logging.Handler | None, level: int, message: str) -> None:
    """A line for the log file alone (what the CLI prints itself, such as the fatal error and the summary)."""
    if handler is not None:
        handler.handle(log.makeRecord(log.name, level, __file__, 0, "%s", (message,), None))


def _close_log_file(handler: logging.Handler | None) -> None:
    if handler is not None:
        logging.getLogger().removeHandler(handler)
        handler.close()


# --- metrics file (--metrics-file, [metrics] textfile) ---


def _write_metrics(settings: Settings, outcome: dict[str, Any], started: float, finished: float) -> None:
    from .metrics import write_metrics

    assert settings.metrics_file is not None
    counts: dict[str, int] = {}
    try:
        with Store(settings.db, readonly=True) as store:
            counts = store.counts_by_status()
    except ImgsyncError as exc:
        log.warning("the metrics file has no image counts: %s", exc.message)
    try:
        write_metrics(settings.metrics_file, outcome, counts, started_at=started, finished_at=finished)
    except OSError as exc:
        log.warning("cannot write the metrics file %s: %s", settings.metrics_file, exc.strerror or exc)


def _fail(exc: ImgsyncError) -> None:
    if isinstance(exc, InternalError) and exc.__cause__ is not None:
        if os.environ.get("IMGSYNC_DEBUG"):
            raise exc.__cause__
        click.echo(redact("".join(traceback.format_exception(exc.__cause__))), err=True)
    click.echo(f"imgsync: error: {redact(exc.message)}", err=True)
    sys.exit(exc.exit_code)


@contextmanager
def _handle_errors() -> Iterator[None]:
    """Our errors become a message and their exit code; others are redacted (or re-raised for tests)."""
    try:
        yield
    except ImgsyncError as exc:
        _fail(exc)
    except (click.exceptions.Exit, click.ClickException, SystemExit, KeyboardInterrupt):
        raise
    except Exception as exc:
        if os.environ.get("IMGSYNC_DEBUG"):
            raise
        click.echo(redact("".join(traceback.format_exception(exc))), err=True)
        click.echo(f"imgsync: internal error: {redact(repr(exc))}", err=True)
        sys.exit(InternalError.exit_code)


@contextmanager
def _stop_on_signals() -> Iterator[tuple[StopRequest, list[int]]]:
    """SIGINT and SIGTERM ask the run to stop; a second one stops it at once."""
    stop = StopRequest()
    received: list[int] = []

    def handler(signum: int, frame: Any) -> None:
        if received:
            stop.interrupt()  # at once, or once the commit under way has finished (see StopRequest.critical)
            return
        received.append(signum)
        # The run's row records the code the process exits with (143 for SIGTERM, not 130): see Syncer.run.
        stop.request(128 + signum)

    if threading.current_thread() is not threading.main_thread():
        yield stop, received
        return
    old = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop, received
    finally:
        for sig, previous in old.items():
            signal.signal(sig, previous)


def _settings(ctx: click.Context, **overrides: Any) -> Settings:
    return load_settings(ctx.obj["config"], env=os.environ, overrides=overrides)


def _set_config(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    if value is not None:
        ctx.ensure_object(dict)["config"] = value


#: ``--config`` after the command too (``imgsync sync --config x.toml``), as the contract says.
config_option = click.option(
    "--config",
    type=click.Path(dir_okay=False),
    default=None,
    expose_value=False,
    callback=_set_config,
    help="Config file (same as before the command).",
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="Config file (default: $IMGSYNC_CONFIG, else ./imgsync.toml if present).",
)
@click.option("-v", "--verbose", count=True, help="More log lines on stderr (-vv for debug).")
@click.option("-q", "--quiet", is_flag=True, help="Only errors (and each failed image) on stderr.")
@click.version_option(__version__, prog_name="imgsync")
@click.pass_context
def cli(ctx: click.Context, config_path: str | None, verbose: int, quiet: bool) -> None:
    """Back up the product images of a Bitrix24 catalog, skipping what has not changed."""
    if verbose and quiet:
        raise click.UsageError("-v and -q cannot be used together")
    ctx.obj = {"config": config_path, "verbose": verbose, "quiet": quiet}
    _setup_logging(verbose, quiet)


@cli.command()
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
    show_bar = sys.stderr.isatty() if progress is None else progress
    if more_verbose or more_quiet:
        ctx.obj["verbose"] += more_verbose
        ctx.obj["quiet"] = ctx.obj["quiet"] or more_quiet
        if ctx.obj["verbose"] and ctx.obj["quiet"]:
            raise click.UsageError("-v and -q cannot be used together")
    show_bar = show_bar and not dry_run and not ctx.obj["quiet"]
    _setup_logging(ctx.obj["verbose"], ctx.obj["quiet"], progress=show_bar)
    bar = _TqdmProgress(show_bar)
    summary: Summary | None = None
    started = time.time()
    settings: Settings | None = None
    outcome: dict[str, Any] | None = None  # the run's JSON summary: for --json and the metrics file
    log_file_handler: logging.Handler | None = None
    ticker: Any = None

    def show_match(match: Any) -> None:
        target = match.target_product_id
        click.echo(
            f"{'product':<12} {match.product_id} -> {target if target is not None else 'none'}  {match.reason}"
        )

    with _handle_errors():
        try:
            try:
                settings = _settings(
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
                if settings.log_file is not None:
                    log_file_handler = _open_log_file(settings.log_file)
            except ImgsyncError as exc:
                outcome = _finish(None, as_json, dry_run, True, bar, error=exc.message, code=exc.exit_code)
                raise
            run_progress: Progress = bar
            if log_file_handler is not None or not sys.stderr.isatty():
                from .progress import Fanout, LogProgress

                ticker = LogProgress().start()
                run_progress = Fanout(bar, ticker)
            _to_log_file(log_file_handler, logging.INFO, f"sync started (imgsync {__version__})")
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
            on_plan = _plan_printer() if dry_run and not as_json else None
            with _stop_on_signals() as (stop, received):
                try:
                    try:
                        summary = run_sync(
                            settings, request, progress=run_progress, on_plan=on_plan, stop=stop
                        )
                    except KeyboardInterrupt:
                        # A second signal outside the pipeline (it turns them into Interrupted itself).
                        raise Interrupted("interrupted") from None
                except Interrupted as exc:
                    summary = getattr(exc, "summary", None)
                    code = 128 + received[0] if received else exc.exit_code
                    outcome = _finish(
                        summary, as_json, dry_run, ctx.obj["quiet"], bar, error=exc.message, code=code
                    )
                    click.echo(
                        f"imgsync: stopped: {exc.message}; what finished is recorded, run again to continue",
                        err=True,
                    )
                    sys.exit(code)
                except ImgsyncError as exc:
                    # Only the JSON summary (for cron); the error itself is printed once, by _handle_errors.
                    partial = getattr(exc, "summary", None)
                    outcome = _finish(
                        partial, as_json, dry_run, True, bar, error=exc.message, code=exc.exit_code
                    )
                    raise
            outcome = _finish(summary, as_json, dry_run, ctx.obj["quiet"], bar)
            sys.exit(summary.exit_code)
        except Exception as exc:
            if outcome is None:  # a defect of ours outside the pipeline: still a summary for the metrics
                code = exc.exit_code if isinstance(exc, ImgsyncError) else InternalError.exit_code
                outcome = _summary_json(None, dry_run, error=f"internal error: {exc!r}", code=code)
            raise
        finally:
            if ticker is not None:
                ticker.close()
            if outcome is not None:
                _to_log_file(
                    log_file_handler,
                    logging.ERROR if outcome["error"] else logging.INFO,
                    f"sync finished: exit {outcome['exit_code']}"
                    + (f": {outcome['error']}" if outcome["error"] else "")
                    + f"; {_counts_line(outcome)}",
                )
                if settings is not None and settings.metrics_file is not None and not dry_run:
                    _write_metrics(settings, outcome, started, time.time())
            _close_log_file(log_file_handler)


def _plan_printer() -> Callable[[Plan], None]:
    def show(plan: Plan) -> None:
        name = plan.name
        click.echo(f"{plan.action!s:<9} {str(plan.ref):<15} {plan.reason}" + (f"  [{name}]" if name else ""))

    return show


def _finish(
    summary: Summary | None,
    as_json: bool,
    dry_run: bool,
    quiet: bool,
    bar: _TqdmProgress,
    *,
    error: str | None = None,
    code: int | None = None,
) -> dict[str, Any]:
    """Print the summary (JSON or a line on stderr); return its JSON object, printed or not."""
    bar.close()
    data = _summary_json(summary, dry_run, error=error, code=code)
    if as_json:
        click.echo(json.dumps(data))
    if summary is None:
        return data
    if not dry_run and _stderr_level > logging.WARNING:
        _echo_failures(summary)  # -q hid the per-image warnings: cron must still mail each failed image
    if as_json or quiet:
        return data
    verb = "would download" if dry_run else "downloaded"
    click.echo(
        f"{summary.requested} requested: {verb} {summary.downloaded}, unchanged {summary.unchanged}, "
        f"uploaded {summary.uploaded}, missing {summary.missing}, failed {summary.failed} "
        f"in {summary.duration_s:.1f} s" + (f" (run {summary.run_id})" if summary.run_id else ""),
        err=True,
    )
    for failure in summary.failures[:10]:
        click.echo(f"  failed {_failure_text(failure)}", err=True)
    return data


def _summary_json(
    summary: Summary | None, dry_run: bool, *, error: str | None = None, code: int | None = None
) -> dict[str, Any]:
    """The ``--json`` object: every key in every run. A run stopped before it began has zeros and
    ``"complete": false``."""
    data = (summary or Summary(complete=False)).as_json()
    if dry_run:
        data["dry_run"] = True
    if error:
        data["error"] = redact(error)
        data["complete"] = False
    if code is not None:
        data["exit_code"] = code
    return data


def _counts_line(data: dict[str, Any]) -> str:
    return (
        f"{data['requested']} requested: downloaded {data['downloaded']}, unchanged {data['unchanged']}, "
        f"uploaded {data['uploaded']}, missing {data['missing']}, failed {data['failed']}, "
        f"{data['bytes_downloaded']} bytes downloaded, {data['requests']} requests in {data['duration_s']:.1f} s"
        + (f" (run {data['run_id']})" if data["run_id"] else "")
    )


def _failure_text(failure: dict[str, Any]) -> str:
    """``12:345: reason`` (redacted) for one of the summary's failures."""
    ref = ImageRef(failure["product_id"], failure["image_id"])
    return redact(f"{ref}: {failure['reason']}")


def _echo_failures(summary: Summary) -> None:
    """One stderr line per failed image, as many as the summary kept, then how many more failed."""
    for failure in summary.failures:
        click.echo(f"imgsync: failed {_failure_text(failure)}", err=True)
    if summary.failed > len(summary.failures):
        click.echo(f"imgsync: ... and {summary.failed - len(summary.failures)} more", err=True)


@cli.command()
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
    from .restore import RestoreRequest, RestoreSummary, run_restore
    from .restore.select import Selection
    from .restore.source import SourcePortal

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
    if more_verbose or more_quiet:
        ctx.obj["verbose"] += more_verbose
        ctx.obj["quiet"] = ctx.obj["quiet"] or more_quiet
        if ctx.obj["verbose"] and ctx.obj["quiet"]:
            raise click.UsageError("-v and -q cannot be used together")
    show_bar = (
        (sys.stderr.isatty() if progress is None else progress) and not dry_run and not ctx.obj["quiet"]
    )
    _setup_logging(ctx.obj["verbose"], ctx.obj["quiet"], progress=show_bar)
    bar = _TqdmProgress(show_bar)
    started = time.time()
    settings: Settings | None = None
    handler: logging.Handler | None = None
    outcome: dict[str, Any] | None = None

    def finish(summary: RestoreSummary | None, *, error: str | None = None, code: int | None = None) -> None:
        nonlocal outcome
        bar.close()
        data = (summary or RestoreSummary(complete=False, plan=[] if dry_run else None)).as_json()
        if error:
            data["error"], data["complete"] = redact(error), False
        if code is not None:
            data["exit_code"] = code
        outcome = data
        if as_json:
            click.echo(json.dumps(data))
        if summary is None:
            return
        if _stderr_level > logging.WARNING:
            for failure in summary.failures:
                click.echo(f"imgsync: failed {_failure_text(failure)}", err=True)
        if not as_json and not ctx.obj["quiet"]:
            where = f" (run {summary.run_id})" if summary.run_id else ""
            verb = "would restore" if dry_run else "restored"
            click.echo(
                f"{summary.selected} selected: {verb} {summary.restored}, present {summary.present}, "
                f"slot taken {summary.skipped}, failed {summary.failed}, deferred {summary.deferred} "
                f"in {summary.duration_s:.1f} s{where}",
                err=True,
            )
            for failure in summary.failures[:10]:
                click.echo(f"  failed {_failure_text(failure)}", err=True)

    def show(plan: Any) -> None:
        info = plan.as_json()
        target = info["target_product_id"]
        to = f" -> {target}" if target is not None and target != info["product_id"] else ""
        click.echo(
            f"{info['action']:<12} {info['product_id']}:{info['image_id']}{to}  {info['reason']}"
            + (f"  [{info['name']}]" if info["name"] else "")
        )

    def show_match(match: Any) -> None:
        target = match.target_product_id
        click.echo(
            f"{'product':<12} {match.product_id} -> {target if target is not None else 'none'}  {match.reason}"
        )

    with _handle_errors():
        try:
            try:
                settings = _settings(
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
                if settings.log_file is not None:
                    handler = _open_log_file(settings.log_file)
            except ImgsyncError as exc:
                finish(None, error=exc.message, code=exc.exit_code)
                raise
            _to_log_file(handler, logging.INFO, f"restore started (imgsync {__version__})")
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

            def total(n: int) -> None:
                bar.total(n)

            with _stop_on_signals() as (stop, received):
                try:
                    try:
                        summary = run_restore(
                            settings,
                            request,
                            progress=bar.advance,
                            on_total=total,
                            on_plan=show if dry_run and not as_json else None,
                            on_match=show_match if dry_run and not as_json else None,
                            stop=stop,
                        )
                    except KeyboardInterrupt:
                        raise Interrupted("interrupted") from None
                except Interrupted as exc:
                    code = 128 + received[0] if received else exc.exit_code
                    finish(getattr(exc, "summary", None), error=exc.message, code=code)
                    click.echo(f"imgsync: stopped: {exc.message}; what finished is recorded", err=True)
                    sys.exit(code)
                except ImgsyncError as exc:
                    finish(getattr(exc, "summary", None), error=exc.message, code=exc.exit_code)
                    raise
            finish(summary)
            sys.exit(summary.exit_code)
        finally:
            if outcome is not None:
                _to_log_file(
                    handler,
                    logging.ERROR if outcome["error"] else logging.INFO,
                    f"restore finished: exit {outcome['exit_code']}"
                    + (f": {outcome['error']}" if outcome["error"] else "")
                    + f"; {outcome['selected']} selected: restored {outcome['restored']}, present "
                    f"{outcome['present']}, slot taken {outcome['skipped']}, failed {outcome['failed']}, "
                    f"{outcome['bytes_sent']} bytes sent, {outcome['requests']} requests",
                )
                if settings is not None and settings.metrics_file is not None and not dry_run:
                    from .metrics import write_restore_metrics

                    try:
                        write_restore_metrics(
                            settings.metrics_file, outcome, started_at=started, finished_at=time.time()
                        )
                    except OSError as exc:
                        log.warning(
                            "cannot write the metrics file %s: %s", settings.metrics_file, exc.strerror or exc
                        )
            _close_log_file(handler)


@cli.command()
@config_option
@click.option("--db", type=click.Path(dir_okay=False), default=None, help="State database.")
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
@click.option(
    "--runs", "n_runs", type=click.IntRange(1, 1000), default=5, help="How many recent runs to show."
)
@click.option("--failed", "failed_only", is_flag=True, help="Each failed image, with its reason and when.")
@click.pass_context
def status(ctx: click.Context, db: str | None, as_json: bool, n_runs: int, failed_only: bool) -> None:
    """Summarise the state database: counts by status, the last runs (--failed: each failed image)."""
    with _handle_errors():
        settings = _settings(ctx, db=db)
        if not settings.db.exists():
            raise StateError(f"{settings.db}: no state database yet (run 'imgsync sync' first)")
        if failed_only:
            _status_failed(settings.db, as_json)
            return
        running = lock_held(settings.db)
        with Store(settings.db, readonly=True) as store:
            counts = store.counts_by_status()
            runs = store.last_runs(n_runs)
            _backed_up, bytes_ok = store.totals()
            catalog = store.listed_items() if store.catalog_size() else None
            restores = store.restore_counts()
            restored_by_run = store.restored_by_run(
                [run["id"] for run in runs if run.get("command") == "restore"]
            )
        for run in runs:
            run["command"] = run.get("command") or "sync"
            if run["command"] == "restore":
                run["restored"] = restored_by_run.get(run["id"], 0)
        restored = restores["restored_images"]
        adds = {key[len("adds_") :]: n for key, n in restores.items() if key.startswith("adds_")}
        if as_json:
            click.echo(
                json.dumps(
                    {
                        "db": str(settings.db),
                        "images": counts,
                        "total": sum(counts.values()),
                        "bytes_ok": bytes_ok,
                        "catalog_items": catalog,
                        "restored": restored,
                        "restore_adds": adds,
                        "runs": runs,
                    }
                )
            )
            return
        click.echo(f"database: {settings.db}")
        click.echo(f"images:   {sum(counts.values())} ({bytes_ok} bytes backed up)")
        if catalog is not None:
            click.echo(f"catalog:  {catalog} items listed by the last sync --all")
        for name, n in counts.items():
            click.echo(f"  {name:<8} {n}")
        if restored or adds:
            click.echo(
                f"restored: {restored} image{'' if restored == 1 else 's'} put back by imgsync restore, under new ids"
                + (
                    f" (adds: {', '.join(f'{n} {state}' for state, n in sorted(adds.items()))})"
                    if adds
                    else ""
                )
            )
        if runs:
            click.echo("last runs:")
            for run in runs:
                if run["command"] == "restore":
                    click.echo(
                        f"  #{run['id']:<5} {run['started_at']}  {_run_outcome(run, running)}"
                        f"  restore: selected {run['requested'] or 0}, restored {run['restored']}, "
                        f"failed {run['failed'] or 0}, deferred {run['deferred'] or 0}"
                        + (f"  ({run['error']})" if run.get("error") else "")
                    )
                    continue
                click.echo(
                    f"  #{run['id']:<5} {run['started_at']}  {_run_outcome(run, running)}"
                    f"  requested {run['requested'] or 0}, downloaded {run['downloaded'] or 0}, "
                    f"unchanged {run['unchanged'] or 0}, uploaded {run['uploaded'] or 0}, "
                    f"missing {run['missing'] or 0}, failed {run['failed'] or 0}"
                    + (f"  ({run['error']})" if run.get("error") else "")
                )


def _status_failed(db: Path, as_json: bool) -> None:
    """``status --failed``: one line (or one JSON object in a streamed array) per failed image."""
    n = 0
    with Store(db, readonly=True) as store:
        if as_json:
            click.echo(f'{{"db": {json.dumps(str(db))}, "failed": [', nl=False)
        for n, row in enumerate(store.iter_failed(), start=1):
            if as_json:
                click.echo(
                    ("" if n == 1 else ", ") + json.dumps({**row, "reason": redact(row["reason"])}), nl=False
                )
            else:
                ref = ImageRef(row["product_id"], row["image_id"])
                click.echo(f"{str(ref):<15} {row['at'] or '-':<20}  {redact(row['reason'])}")
    if as_json:
        click.echo(f'], "count": {n}}}')
    else:
        click.echo(f"{n} failed image{'' if n == 1 else 's'}")


def _run_outcome(run: dict[str, Any], running: bool) -> str:
    """``exit 0``, ``running`` (its lock is held), or ``crashed`` (it ended without recording its end)."""
    if run.get("state") == "running":
        return "running" if running else "crashed"
    if run.get("state") == "crashed":
        return "crashed"
    return f"exit {run['exit_code'] if run['exit_code'] is not None else '-'}"


@cli.command()
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
    from .check import exit_code, run_checks

    with _handle_errors():
        settings = _settings(
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


@cli.command()
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
    from .report import DEFAULT_OUT, build_report

    with _handle_errors():
        settings = _settings(ctx, db=db, dest=dest)
        if not settings.db.exists():
            raise StateError(f"{settings.db}: no state database yet (run 'imgsync sync' first)")
        path = build_report(settings.db, settings.dest, Path(out) if out else DEFAULT_OUT, recent=recent)
        click.echo(str(path))


@cli.command()
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
    from .demo import run_demo

    with _handle_errors():
        run_demo(Path(folder), products=products, with_s3=with_s3, echo=click.echo)


@cli.command()
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

    from .runner import make_uploader
    from .store import run_lock
    from .verify import repair as repair_rows
    from .verify import verify as run_verify

    with _handle_errors():
        settings = _settings(
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


# --- rebuild ---------------------------------------------------------------------------------------------------


@cli.command()
@click.option("--from-s3", "from_s3", is_flag=True, help="Rebuild from the S3 objects' metadata (required).")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None, help="Config file.")
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
    config_path: str | None,
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
    from .rebuild import REASONS, printable, rebuild_from_s3
    from .s3 import S3Uploader
    from .store import run_lock

    if not from_s3:
        raise click.UsageError("say where to rebuild from: --from-s3 (the bucket's object metadata)")
    if config_path:
        ctx.obj["config"] = config_path
    with _handle_errors():
        settings = _settings(
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
        with run_lock(settings.db), Store(settings.db) as store, _stop_on_signals() as (stop, received):
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
                code = 128 + received[0] if received else exc.exit_code
                partial = getattr(exc, "summary", None)
                if as_json and partial is not None:
                    click.echo(json.dumps({**partial.as_json(), "exit_code": code}))
                click.echo(
                    f"imgsync: stopped: {exc.message}; what was read is recorded, "
                    "run 'imgsync rebuild --from-s3 --merge' to continue",
                    err=True,
                )
                sys.exit(code)
        code = 0
        if as_json:
            click.echo(json.dumps({**summary.as_json(), "exit_code": code}))
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


def main() -> None:
    cli(prog_name="imgsync")
