"""The connection every part of :class:`~imgsync.store.Store` shares: how the file is opened (read-write,
read-only, immutable), checked before and after (an SQLite header, ``quick_check``), migrated, and the one
write transaction that turns SQLite's failures into :class:`~imgsync.errors.LocalStorageError`."""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Self

import sqlite_utils

from ..errors import LocalStorageError, StateError
from . import migrations

SQLITE_MAGIC = b"SQLite format 3\x00"


class StoreBase:
    """The connection and the lock that serialises its use; :class:`~imgsync.store.Store` adds the tables.

    ``readonly=True`` (a dry run, ``status``, ``verify``) never writes the file: it is opened read-only,
    and when it lacks migrations (or does not exist) they run on a private in-memory copy. Otherwise the
    file is created readable by its owner only (it holds renewed OAuth tokens) and switched to WAL.
    """

    def __init__(self, path: Path | str, *, readonly: bool = False, immutable: bool = False) -> None:
        self.path = Path(path)
        self.readonly = readonly or immutable
        # immutable: SQLite's "immutable=1": no lock, no -wal or -shm beside the file, not a byte written
        # (another portal's database, read by a migration). Only for a file no process is writing.
        self._uri = "?mode=ro&immutable=1" if immutable else "?mode=ro"
        readonly = self.readonly
        self._lock = threading.RLock()
        exists = self.path.exists()
        if exists:
            check_header(self.path)
        try:
            if readonly:
                self.db = self._open_readonly(exists)
            else:
                if not exists:
                    create_private(self.path)
                conn = sqlite3.connect(str(self.path), check_same_thread=False, timeout=30)
                self.db = sqlite_utils.Database(conn)
                self.db.execute("PRAGMA journal_mode=WAL")
                self.db.execute("PRAGMA synchronous=NORMAL")
                self.db.execute("PRAGMA foreign_keys=ON")
                self.migrate()
            result = self.db.execute("PRAGMA quick_check").fetchone()
        except sqlite3.DatabaseError as exc:
            raise StateError(
                f"{self.path}: the state database cannot be used ({exc}); "
                "restore it from a backup or move it aside to start afresh"
            ) from None
        if not result or result[0] != "ok":
            raise StateError(
                f"{self.path}: the state database is corrupt ({result[0] if result else '?'}); "
                "restore it from a backup or move it aside to start afresh"
            )

    def _open_readonly(self, exists: bool) -> sqlite_utils.Database:
        memory = sqlite3.connect(":memory:", check_same_thread=False)
        if exists:
            source = sqlite3.connect(f"{self.path.resolve().as_uri()}{self._uri}", uri=True, timeout=30)
            db = sqlite_utils.Database(source)
            if not migrations.pending(db):
                source.close()
                return sqlite_utils.Database(
                    sqlite3.connect(
                        f"{self.path.resolve().as_uri()}{self._uri}",
                        uri=True,
                        check_same_thread=False,
                        timeout=30,
                    )
                )
            source.backup(memory)  # an older schema: migrate a private copy, never the file
            source.close()
        self.db = sqlite_utils.Database(memory)
        self.migrate()
        return self.db

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        with self._lock:
            self.db.close()

    def migrate(self) -> list[int]:
        """Apply the migrations not yet recorded; return their numbers."""
        with self._lock:
            return migrations.migrate(self.db)

    @contextmanager
    def _writing(self) -> Iterator[sqlite3.Connection]:
        """A write transaction. SQLite's own failures (a full disk, an I/O error, a lock held too long)
        become an error that stops the run with a message naming the database; before, a full disk
        escaped as an internal error with a traceback."""
        with self._lock:
            try:
                with self.db.conn as conn:
                    yield conn
            except sqlite3.Error as exc:
                raise LocalStorageError(f"cannot write the state database {self.path}: {exc}") from None

    @classmethod
    def open_read_only(cls, path: Path | str) -> Self:
        """Open an existing state database without writing to it (see ``readonly``); a missing file is a
        :class:`StateError` naming the path, never a new database."""
        if not Path(path).is_file():
            raise StateError(f"{path}: no state database there (run 'imgsync sync' first)")
        return cls(path, readonly=True)


def create_private(path: Path) -> None:
    """Create an empty database file readable by its owner only (SQLite gives its -wal/-shm the same mode)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        pass
    except OSError as exc:
        raise StateError(f"{path}: cannot create the state database ({exc.strerror})") from None


def check_header(path: Path) -> None:
    """Refuse a file that is not SQLite before SQLite gets a chance to misread it."""
    try:
        with path.open("rb") as handle:
            head = handle.read(16)
    except OSError as exc:
        raise StateError(f"{path}: cannot read the state database ({exc.strerror})") from None
    if head and head != SQLITE_MAGIC:
        raise StateError(
            f"{path}: not an SQLite database; refusing to start afresh over it "
            "(restore it from a backup or move it aside)"
        )
