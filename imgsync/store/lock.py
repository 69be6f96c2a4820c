"""The locks beside the database file: ``<db>.lock``, held by a sync or restore for the length of its run, and
``<db>.tokens.lock``, held by any process while it renews the OAuth pair. They are ``flock`` locks on files,
not database concepts: they die with their process, so one left by a killed run never blocks the next."""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..errors import AlreadyRunning, StateError


def lock_held(db_path: Path) -> bool:
    """Is a sync running on this database right now (its lock held by a live process)?"""
    lock_path = db_path.with_name(db_path.name + ".lock")
    try:
        fd = os.open(lock_path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)  # closing drops the probe's own lock
    return False


@contextmanager
def run_lock(db_path: Path) -> Iterator[Path]:
    """Hold ``<db>.lock`` for the length of a run; raise :class:`AlreadyRunning` when another run does.

    ``flock`` locks die with their process, so a lock left by a killed run never blocks the next one.
    """
    lock_path = db_path.with_name(db_path.name + ".lock")
    try:
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise StateError(f"{lock_path}: cannot create the lock file ({exc.strerror})") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise AlreadyRunning(f"another imgsync sync is running on {db_path} (lock: {lock_path})") from None
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield lock_path
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


#: How long a renewal waits for another process's renewal (a token request retries for well under this).
TOKEN_LOCK_TIMEOUT_S = 300.0


@contextmanager
def token_lock(db_path: Path, timeout: float = TOKEN_LOCK_TIMEOUT_S) -> Iterator[Path]:
    """Hold ``<db>.tokens.lock`` while an OAuth pair is renewed (blocking, up to ``timeout`` seconds).

    Every imgsync process on the database renews under it (a sync, ``check``, a dry run): apart from the run
    lock, which only a sync holds, so that none of them spends a refresh token another has just replaced.
    """
    lock_path = db_path.with_name(db_path.name + ".tokens.lock")
    try:
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise StateError(f"{lock_path}: cannot create the token lock file ({exc.strerror})") from None
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise StateError(
                        f"{lock_path}: another imgsync process has been renewing the OAuth tokens for "
                        f"{timeout:.0f} s"
                    ) from None
                time.sleep(0.05)
        yield lock_path
    finally:
        os.close(fd)  # closing drops the lock
