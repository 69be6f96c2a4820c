"""Progress as log lines, for runs whose stderr is not a terminal (cron, a log file), as rclone's ``--stats``.

:class:`LogProgress` implements the runner's :class:`~imgsync.runner.Progress` and, every ``interval`` seconds,
logs at INFO::

    progress: 120/5000 images (2.4%), 35.1 MiB, 1.9 img/s, ETA 42m

The line is due on the next :meth:`~LogProgress.advance` or :meth:`~LogProgress.add_bytes` after ``interval``
seconds, or from a ticker thread (:meth:`~LogProgress.start`) when nothing advances for a while: a stalled run
still says where it stands. The clock is injectable, so tests need no waiting.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from .runner import Progress

__all__ = ["Fanout", "LogProgress", "format_bytes", "format_eta"]

log = logging.getLogger("imgsync.progress")


def format_bytes(n: float) -> str:
    """``512 B``, ``1.5 KiB``, ``35.1 MiB``, ``2.0 GiB`` (powers of 1024, as ``--max-bytes``)."""
    if n < 1024:
        return f"{int(n)} B"
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        n /= 1024
        if n < 1024 or unit == "TiB":
            break
    return f"{n:.1f} {unit}"


def format_eta(seconds: float) -> str:
    """``45s``, ``42m``, ``3h05m``: what is left at the current rate, to the minute past one minute."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes = round(seconds / 60)
    if minutes < 60:
        return f"{minutes}m"
    return f"{minutes // 60}h{minutes % 60:02d}m"


class LogProgress(Progress):
    """Counts images (and bytes) and logs a progress line at INFO every ``interval`` seconds."""

    def __init__(
        self,
        interval: float = 60.0,
        *,
        clock: Callable[[], float] = time.monotonic,
        logger: logging.Logger = log,
    ) -> None:
        self.interval = interval
        self._clock = clock
        self._log = logger
        self._lock = threading.Lock()
        self._total = 0
        self._done = 0
        self._bytes = 0
        self._started = clock()
        self._last = self._started
        self._ticker: threading.Thread | None = None
        self._stopped = threading.Event()

    # -- the runner's Progress ------------------------------------------------------------------------
    def total(self, n: int) -> None:
        with self._lock:
            self._total = n
            self._started = self._last = self._clock()

    def extend(self, n: int) -> None:
        with self._lock:
            self._total += n

    def advance(self, action: str) -> None:
        with self._lock:
            self._done += 1
        self.tick()

    def add_bytes(self, n: int) -> None:
        """``n`` more bytes were downloaded."""
        with self._lock:
            self._bytes += n
        self.tick()

    # -- the line -------------------------------------------------------------------------------------
    def line(self) -> str:
        """The progress line as it stands now."""
        with self._lock:
            done, total, size = self._done, max(self._total, self._done), self._bytes
            elapsed = self._clock() - self._started
        percent = 100.0 * done / total if total else 100.0
        rate = done / elapsed if elapsed > 0 else 0.0
        eta = format_eta((total - done) / rate) if rate > 0 else "?"
        return (
            f"progress: {done}/{total} images ({percent:.1f}%), {format_bytes(size)}, "
            f"{rate:.1f} img/s, ETA {eta}"
        )

    def tick(self) -> bool:
        """Log the line if ``interval`` seconds have passed since the last one; return whether it did."""
        with self._lock:
            now = self._clock()
            if now - self._last < self.interval:
                return False
            self._last = now
        self._log.info("%s", self.line())
        return True

    # -- the ticker -----------------------------------------------------------------------------------
    def start(self, poll: float | None = None) -> LogProgress:
        """Tick from a daemon thread too (every ``poll`` seconds, by default a tenth of the interval)."""
        if self._ticker is None:
            wait = poll if poll is not None else max(0.05, min(5.0, self.interval / 10))

            def run() -> None:
                while not self._stopped.wait(wait):
                    self.tick()

            self._ticker = threading.Thread(target=run, name="imgsync-progress", daemon=True)
            self._ticker.start()
        return self

    def close(self) -> None:
        self._stopped.set()
        if self._ticker is not None:
            self._ticker.join(timeout=5)
            self._ticker = None


class Fanout(Progress):
    """One :class:`Progress` for the runner that tells several (the tqdm bar and the log lines)."""

    def __init__(self, *targets: Progress) -> None:
        self.targets = targets

    def total(self, n: int) -> None:
        for target in self.targets:
            target.total(n)

    def extend(self, n: int) -> None:
        for target in self.targets:
            target.extend(n)

    def advance(self, action: str) -> None:
        for target in self.targets:
            target.advance(action)

    def add_bytes(self, n: int) -> None:
        for target in self.targets:
            target.add_bytes(n)
