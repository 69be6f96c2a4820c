"""SIGINT and SIGTERM during a run: the first asks it to stop, a second stops it at once."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from ..models import StopRequest


@contextmanager
def stop_on_signals() -> Iterator[StopRequest]:
    """SIGINT and SIGTERM ask the run to stop (the exit code 128 + the signal travels on the request); a second
    one stops it at once."""
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
        yield stop
        return
    old = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for sig, previous in old.items():
            signal.signal(sig, previous)
