"""The ``imgsync`` group: the options before the command, and every command, each from its own module."""

from __future__ import annotations

import click

from .. import __version__
from ._logging import setup_logging
from ._options import config_option
from .check import check
from .demo import demo
from .rebuild import rebuild
from .report import report
from .restore import restore
from .status import status
from .sync import sync
from .verify import verify


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@config_option
@click.option("-v", "--verbose", count=True, help="More log lines on stderr (-vv for debug).")
@click.option("-q", "--quiet", is_flag=True, help="Only errors (and each failed image) on stderr.")
@click.version_option(__version__, prog_name="imgsync")
@click.pass_context
def cli(ctx: click.Context, verbose: int, quiet: bool) -> None:
    """Back up the product images of a Bitrix24 catalog, skipping what has not changed."""
    if verbose and quiet:
        raise click.UsageError("-v and -q cannot be used together")
    ctx.ensure_object(dict).setdefault("config", None)
    ctx.obj.update(verbose=verbose, quiet=quiet)
    setup_logging(verbose, quiet)


for command in (sync, restore, status, check, report, demo, verify, rebuild):
    cli.add_command(command)


def main() -> None:
    cli(prog_name="imgsync")
