"""What several commands share on the command line: ``--config`` (one option, before or after the command),
``-v``/``-q`` after the command, the progress bar's switch, and the settings they all load."""

from __future__ import annotations

import os
import sys
from typing import Any

import click

from ..config import Settings, load_settings


def _set_config(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    if value is not None:
        ctx.ensure_object(dict)["config"] = value


#: ``--config``, before the command (``imgsync --config x.toml sync``) and after it (``imgsync sync --config
#: x.toml``), as the contract says: the one form, for the group and every command that reads the config.
config_option = click.option(
    "--config",
    type=click.Path(dir_okay=False),
    default=None,
    expose_value=False,
    callback=_set_config,
    help="Config file (default: $IMGSYNC_CONFIG, else ./imgsync.toml if present).",
)


def settings_for(ctx: click.Context, **overrides: Any) -> Settings:
    """The settings: defaults < the config file < the environment < these flags."""
    return load_settings(ctx.obj.get("config"), env=os.environ, overrides=overrides)


def more_verbosity(ctx: click.Context, more_verbose: int, more_quiet: bool) -> bool:
    """Add ``-v``/``-q`` given after the command to those before it; return whether the run is quiet."""
    if more_verbose or more_quiet:
        ctx.obj["verbose"] += more_verbose
        ctx.obj["quiet"] = ctx.obj["quiet"] or more_quiet
        if ctx.obj["verbose"] and ctx.obj["quiet"]:
            raise click.UsageError("-v and -q cannot be used together")
    return bool(ctx.obj["quiet"])


def bar_wanted(progress: bool | None, *, dry_run: bool, quiet: bool) -> bool:
    """``--progress/--no-progress``, by default on a terminal; never in a dry run or with ``-q``."""
    shown = sys.stderr.isatty() if progress is None else progress
    return shown and not dry_run and not quiet
