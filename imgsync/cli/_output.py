"""What the commands print: the progress bar, the dry run's plan, the summaries and each failed image, the
JSON objects, our errors as a message and their exit code. Nothing here decides an exit code: the runner does
(:class:`~imgsync.runner.Ending`); this prints it and exits with it."""

from __future__ import annotations

import json
import os
import sys
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, NoReturn

import click

from ..errors import ImgsyncError, InternalError
from ..models import ImageRef
from ..redact import redact
from ..runner import Ending, Progress
from ..sync import Plan, Summary
from ._logging import quiet_on_stderr


class TqdmProgress(Progress):
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


def fail(exc: ImgsyncError) -> None:
    if isinstance(exc, InternalError) and exc.__cause__ is not None:
        if os.environ.get("IMGSYNC_DEBUG"):
            raise exc.__cause__
        click.echo(redact("".join(traceback.format_exception(exc.__cause__))), err=True)
    click.echo(f"imgsync: error: {redact(exc.message)}", err=True)
    sys.exit(exc.exit_code)


@contextmanager
def handle_errors() -> Iterator[None]:
    """Our errors become a message and their exit code; others are redacted (or re-raised for tests)."""
    try:
        yield
    except ImgsyncError as exc:
        fail(exc)
    except (click.exceptions.Exit, click.ClickException, SystemExit, KeyboardInterrupt):
        raise
    except Exception as exc:
        if os.environ.get("IMGSYNC_DEBUG"):
            raise
        click.echo(redact("".join(traceback.format_exception(exc))), err=True)
        click.echo(f"imgsync: internal error: {redact(repr(exc))}", err=True)
        sys.exit(InternalError.exit_code)


def exit_as(ending: Ending[Any], stopped: str) -> NoReturn:
    """End the process as the run ended: a stop says so (``stopped``: what the user may do next) and exits
    128 + the signal; an error is raised for :func:`handle_errors` to print once; else the run's exit code."""
    if ending.interrupted:
        assert ending.error is not None
        click.echo(f"imgsync: stopped: {ending.error.message}; {stopped}", err=True)
        sys.exit(ending.exit_code)
    if ending.error is not None:
        raise ending.error
    sys.exit(ending.exit_code)


def print_json(data: dict[str, Any]) -> None:
    click.echo(json.dumps(data))


def plan_printer() -> Callable[[Plan], None]:
    def show(plan: Plan) -> None:
        name = plan.name
        click.echo(f"{plan.action!s:<9} {str(plan.ref):<15} {plan.reason}" + (f"  [{name}]" if name else ""))

    return show


def show_sync(
    ending: Ending[Summary], *, as_json: bool, dry_run: bool, quiet: bool, bar: TqdmProgress
) -> None:
    """Print a sync's ending: the JSON object, each failed image under ``-q``, the summary line on stderr. A run
    ended by an error prints no summary line: the error says it (printed once, by :func:`handle_errors`)."""
    bar.close()
    if as_json:
        print_json(ending.data)
    summary = ending.summary
    if summary is None:
        return
    if not dry_run and quiet_on_stderr():
        echo_failures(summary)  # -q hid the per-image warnings: cron must still mail each failed image
    if as_json or quiet or (ending.error is not None and not ending.interrupted):
        return
    verb = "would download" if dry_run else "downloaded"
    click.echo(
        f"{summary.requested} requested: {verb} {summary.downloaded}, unchanged {summary.unchanged}, "
        f"uploaded {summary.uploaded}, missing {summary.missing}, failed {summary.failed} "
        f"in {summary.duration_s:.1f} s" + (f" (run {summary.run_id})" if summary.run_id else ""),
        err=True,
    )
    for failure in summary.failures[:10]:
        click.echo(f"  failed {failure_text(failure)}", err=True)


def counts_line(data: dict[str, Any]) -> str:
    return (
        f"{data['requested']} requested: downloaded {data['downloaded']}, unchanged {data['unchanged']}, "
        f"uploaded {data['uploaded']}, missing {data['missing']}, failed {data['failed']}, "
        f"{data['bytes_downloaded']} bytes downloaded, {data['requests']} requests in {data['duration_s']:.1f} s"
        + (f" (run {data['run_id']})" if data["run_id"] else "")
    )


def failure_text(failure: dict[str, Any]) -> str:
    """``12:345: reason`` (redacted) for one of the summary's failures."""
    ref = ImageRef(failure["product_id"], failure["image_id"])
    return redact(f"{ref}: {failure['reason']}")


def echo_failures(summary: Summary) -> None:
    """One stderr line per failed image, as many as the summary kept, then how many more failed."""
    for failure in summary.failures:
        click.echo(f"imgsync: failed {failure_text(failure)}", err=True)
    if summary.failed > len(summary.failures):
        click.echo(f"imgsync: ... and {summary.failed - len(summary.failures)} more", err=True)


def show_restore(
    ending: Ending[Any], *, as_json: bool, dry_run: bool, quiet: bool, bar: TqdmProgress
) -> None:
    """Print a restore's ending: the JSON object, each failed image under ``-q``, the summary line on stderr."""
    bar.close()
    if as_json:
        print_json(ending.data)
    summary = ending.summary
    if summary is None:
        return
    if quiet_on_stderr():
        for failure in summary.failures:
            click.echo(f"imgsync: failed {failure_text(failure)}", err=True)
    if not as_json and not quiet:
        where = f" (run {summary.run_id})" if summary.run_id else ""
        verb = "would restore" if dry_run else "restored"
        click.echo(
            f"{summary.selected} selected: {verb} {summary.restored}, present {summary.present}, "
            f"slot taken {summary.skipped}, failed {summary.failed}, deferred {summary.deferred} "
            f"in {summary.duration_s:.1f} s{where}",
            err=True,
        )
        for failure in summary.failures[:10]:
            click.echo(f"  failed {failure_text(failure)}", err=True)


def restore_line(data: dict[str, Any]) -> str:
    return (
        f"{data['selected']} selected: restored {data['restored']}, present {data['present']}, "
        f"slot taken {data['skipped']}, failed {data['failed']}, {data['bytes_sent']} bytes sent, "
        f"{data['requests']} requests"
    )


def show_restore_plan(plan: Any) -> None:
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
