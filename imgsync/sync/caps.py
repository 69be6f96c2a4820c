"""The run's caps (``--max-downloads``, ``--max-bytes``, ``--max-duration``), and the one check of them.

Every place that would start new work asks :meth:`Caps.check` (the pipeline before a chunk's batch and before
each download or upload, the worker gate when a queued job's turn comes, the catalog listing before each page,
the re-download of a damaged file). A cap that turns work away stops the run (:meth:`Caps.stop`): it takes no
new work, finishes what is in flight, records it and exits 5 (see :meth:`Syncer._finish`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from .plan import SyncOptions
from .summary import Summary


class Caps:
    """The caps of one run: which one forbids new work now, and which one stopped the run (``capped``)."""

    def __init__(
        self, opts: SyncOptions, summary: Summary, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.opts = opts
        self.summary = summary
        self.clock = clock
        self.started = clock()
        self.downloads_started = 0
        #: The cap that stopped the run, e.g. "--max-downloads 100" (None: none did).
        self.capped: str | None = None
        self._lock = threading.Lock()

    def start(self) -> float:
        """The run starts now (``--max-duration`` counts from here); return the moment."""
        self.started = self.clock()
        return self.started

    def check(self, *, queued: bool = False) -> str | None:
        """The cap that forbids new work now (``--max-downloads 100``), or None.

        ``queued``: work already let in (``--max-downloads`` counted its downloads when they were queued). A
        dry run has no caps. A run is ``capped`` only once a cap actually turns work away (:meth:`stop`), so a
        cap met by the last piece of work is no stop."""
        opts = self.opts
        if opts.dry_run:
            return None
        if not queued and opts.max_downloads is not None and self.downloads_started >= opts.max_downloads:
            return f"--max-downloads {opts.max_downloads}"
        if opts.max_bytes is not None and self.summary.bytes_downloaded >= opts.max_bytes:
            return f"--max-bytes {opts.max_bytes}"
        if opts.max_duration_s is not None and self.clock() - self.started >= opts.max_duration_s:
            return self.duration()
        return None

    def stop(self, cap: str) -> None:
        """``cap`` turned work away: the run is capped (exit 5, work left for the next run)."""
        self.capped = cap

    def turn_away(self) -> str | None:
        """:meth:`check`, and the run is capped when a cap is named."""
        cap = self.check()
        if cap is not None:
            self.stop(cap)
        return cap

    def deadline_passed(self) -> str:
        """A request was not sent because the deadline passed while it waited: the run is capped."""
        cap = self.check() or self.duration()
        self.stop(cap)
        return cap

    def duration(self) -> str:
        return f"--max-duration {self.opts.max_duration_s:g}s"

    def download_started(self) -> None:
        """One more download counts against ``--max-downloads`` (workers start some too: a lock)."""
        with self._lock:
            self.downloads_started += 1
