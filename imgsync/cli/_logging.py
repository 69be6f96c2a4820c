"""Log set-up: the stderr handler (through tqdm when a bar is shown), ``-v``/``-q``, the log file, and a run's
last words (:class:`RunLog`: the finish line, the metrics file)."""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from ..config import Settings
from ..errors import ConfigError
from ..redact import RedactingFilter
from ..runner import Ending, Progress, record_metrics

log = logging.getLogger("imgsync")


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


def setup_logging(verbose: int, quiet: bool, progress: bool = False) -> None:
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


def open_log_file(path: Path) -> logging.Handler:
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


def to_log_file(handler: logging.Handler | None, level: int, message: str) -> None:
    """A line for the log file alone (what the CLI prints itself, such as the fatal error and the summary)."""
    if handler is not None:
        handler.handle(log.makeRecord(log.name, level, __file__, 0, "%s", (message,), None))


def close_log_file(handler: logging.Handler | None) -> None:
    if handler is not None:
        logging.getLogger().removeHandler(handler)
        handler.close()


def quiet_on_stderr() -> bool:
    """``-q`` hid the per-image warnings: each failed image gets its own line from the CLI (what cron mails)."""
    return _stderr_level > logging.WARNING


class RunLog:
    """A sync's or restore's log file and last words. :meth:`open` once the settings are known; however the
    command ends, the log ticker stops, the log file gets the finish line, the runner writes the metrics file
    (:func:`imgsync.runner.record_metrics`) and the log file is closed.

    ``failed``: the ending of a run a defect of ours ended before it had one (its metrics still say so, and with
    ``as_json`` its ``--json`` object is printed: every run prints one)."""

    def __init__(
        self,
        command: str,
        *,
        dry_run: bool,
        describe: Callable[[dict[str, Any]], str],
        failed: Callable[[BaseException], Ending[Any]] | None = None,
        as_json: bool = False,
    ) -> None:
        self.command = command
        self.as_json = as_json
        self.dry_run = dry_run
        self.describe = describe
        self.failed = failed
        self.started = time.time()
        self.settings: Settings | None = None
        self.handler: logging.Handler | None = None
        self.ticker: Any = None
        self.ending: Ending[Any] | None = None

    def open(self, settings: Settings) -> Settings:
        self.settings = settings
        if settings.log_file is not None:
            self.handler = open_log_file(settings.log_file)
        return settings

    def progress(self, bar: Progress) -> Progress:
        """``bar``, and a progress line a minute in the log (a log file, or stderr that is no terminal)."""
        if self.handler is None and sys.stderr.isatty():
            return bar
        from ..progress import Fanout, LogProgress

        self.ticker = LogProgress().start()
        return Fanout(bar, self.ticker)

    def line(self, message: str, level: int = logging.INFO) -> None:
        to_log_file(self.handler, level, message)

    def __enter__(self) -> RunLog:
        return self

    def __exit__(self, kind: Any, exc: BaseException | None, tb: Any) -> None:
        if isinstance(exc, Exception) and self.ending is None and self.failed is not None:
            self.ending = self.failed(exc)
            if self.as_json:
                click.echo(json.dumps(self.ending.data))
        try:
            if self.ticker is not None:
                self.ticker.close()
            if self.ending is not None:
                data = self.ending.data
                self.line(
                    f"{self.command} finished: exit {data['exit_code']}"
                    + (f": {data['error']}" if data["error"] else "")
                    + f"; {self.describe(data)}",
                    logging.ERROR if data["error"] else logging.INFO,
                )
                record_metrics(
                    self.settings,
                    data,
                    started=self.started,
                    finished=time.time(),
                    dry_run=self.dry_run,
                    command=self.command,
                )
        finally:
            close_log_file(self.handler)
