"""The SQLite state, through sqlite-utils: numbered migrations, reads and writes.

Tables (the contract's, plus a few columns and ``oauth_tokens``):

- ``images``: one row per (product_id, image_id), what was last seen and where its backup is;
- ``runs``: one row per sync, with the counts of the JSON summary;
- ``events``: one row per image per run that did something;
- ``oauth_tokens``: renewed OAuth tokens, so the next run uses them;
- ``_migrations``: which numbered migrations have run.

One :class:`Store` is shared by the threads of a run; a lock serialises its use of the connection.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlite_utils

from .errors import AlreadyRunning, LocalStorageError, StateError
from .models import ImageRef, S3Backup

SQLITE_MAGIC = b"SQLite format 3\x00"


def utcnow() -> str:
    """ISO 8601 in UTC, to the second: what every timestamp column holds."""
    return datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def _m001_initial(db: sqlite_utils.Database) -> None:
    db.table("images").create(
        {
            "product_id": int,
            "image_id": int,
            "name": str,
            "type": str,
            "create_time": str,
            "detail_url": str,
            "sha256": str,
            "size": int,
            "content_type": str,
            "local_path": str,
            "s3_key": str,
            "s3_etag": str,
            "s3_sha256": str,
            "status": str,
            "error": str,
            "first_synced_at": str,
            "last_checked_at": str,
            "last_changed_at": str,
        },
        pk=("product_id", "image_id"),
    )
    db.table("images").create_index(["status"])
    db.table("runs").create(
        {
            "id": int,
            "started_at": str,
            "finished_at": str,
            "exit_code": int,
            "requested": int,
            "downloaded": int,
            "unchanged": int,
            "uploaded": int,
            "missing": int,
            "failed": int,
            "duration_s": float,
            "error": str,
        },
        pk="id",
    )
    db.table("events").create(
        {
            "id": int,
            "run_id": int,
            "product_id": int,
            "image_id": int,
            "action": str,
            "detail": str,
            "at": str,
        },
        pk="id",
        foreign_keys=[("run_id", "runs", "id")],
    )
    db.table("events").create_index(["run_id"])
    db.table("events").create_index(["product_id", "image_id"])
    db.table("oauth_tokens").create(
        {"key": str, "access_token": str, "refresh_token": str, "seed": str, "updated_at": str}, pk="key"
    )


MIGRATIONS: list[tuple[int, str, Callable[[sqlite_utils.Database], None]]] = [
    (1, "initial", _m001_initial),
]


@dataclass
class Record:
    """What the sync decided for one image, ready to be written."""

    ref: ImageRef
    action: str  # downloaded, unchanged, uploaded, missing, failed
    detail: str = ""
    fields: dict[str, Any] | None = None  # columns of ``images`` to set
    extra_actions: tuple[str, ...] = ()  # e.g. ("uploaded",) after "downloaded"
    # Files (relative to dest) this record's row supersedes. The sync removes them only once the row is
    # committed: removed before, a kill in between would leave the old row naming a file that is gone.
    remove_after: tuple[str, ...] = ()


class Store:
    """The state database. Use as a context manager, or call :meth:`close`."""

    def __init__(self, path: Path | str, *, create: bool = True) -> None:
        self.path = Path(path)
        self._lock = threading.RLock()
        if self.path.exists():
            _check_header(self.path)
        elif not create:
            self.db = sqlite_utils.Database(memory=True)
            self.migrate()
            return
        try:
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

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        with self._lock:
            self.db.close()

    # -- schema -----------------------------------------------------------------------------------
    def migrate(self) -> list[int]:
        """Apply the migrations not yet recorded; return their numbers."""
        with self._lock:
            migrations = self.db.table("_migrations")
            if not migrations.exists():
                self.db.table("_migrations").create({"id": int, "name": str, "applied_at": str}, pk="id")
            done = {row["id"] for row in self.db.table("_migrations").rows}
            applied = []
            for number, name, func in MIGRATIONS:
                if number in done:
                    continue
                with self.db.conn:
                    func(self.db)
                    self.db.table("_migrations").insert({"id": number, "name": name, "applied_at": utcnow()})
                applied.append(number)
            return applied

    # -- images -----------------------------------------------------------------------------------
    def rows_for(self, refs: Sequence[ImageRef]) -> dict[ImageRef, dict[str, Any]]:
        """The recorded rows of these images (absent ones are left out)."""
        if not refs:
            return {}
        clause = " or ".join(["(product_id = ? and image_id = ?)"] * len(refs))
        params: list[int] = []
        for ref in refs:
            params += [ref.product_id, ref.image_id]
        with self._lock:
            rows = self.db.query(f"select * from images where {clause}", params)
            return {ImageRef(r["product_id"], r["image_id"]): r for r in rows}

    def rows_of_product(self, product_id: int) -> list[dict[str, Any]]:
        with self._lock:
            return list(
                self.db.query("select * from images where product_id = ? order by image_id", [product_id])
            )

    def save(self, run_id: int | None, records: Iterable[Record]) -> None:
        """Write image rows and their events in one transaction (one commit for many images)."""
        now = utcnow()
        events: list[tuple[Any, ...]] = []
        with self._writing() as conn:
            for rec in records:
                if rec.fields is not None:
                    row = {
                        "product_id": rec.ref.product_id,
                        "image_id": rec.ref.image_id,
                        **rec.fields,
                        "last_checked_at": now,
                    }
                    if row.get("status") == "ok":
                        row["first_synced_at"] = now
                    cols = list(row)
                    updates = ", ".join(
                        f"{c} = coalesce(images.{c}, excluded.{c})"
                        if c == "first_synced_at"
                        else f"{c} = excluded.{c}"
                        for c in cols
                        if c not in ("product_id", "image_id")
                    )
                    conn.execute(
                        f"insert into images ({', '.join(cols)}) values ({', '.join('?' * len(cols))}) "
                        f"on conflict(product_id, image_id) do update set {updates}",
                        list(row.values()),
                    )
                if run_id is not None:
                    for action in (rec.action, *rec.extra_actions):
                        events.append((run_id, rec.ref.product_id, rec.ref.image_id, action, rec.detail, now))
            conn.executemany(
                "insert into events (run_id, product_id, image_id, action, detail, at) values (?, ?, ?, ?, ?, ?)",
                events,
            )

    # -- runs -------------------------------------------------------------------------------------
    def start_run(self) -> int:
        with self._writing():
            table = self.db.table("runs")
            table.insert({"started_at": utcnow()})
            return int(table.last_pk or 0)

    def finish_run(self, run_id: int, counts: dict[str, Any], exit_code: int, error: str = "") -> None:
        fields = {
            k: counts.get(k)
            for k in ("requested", "downloaded", "unchanged", "uploaded", "missing", "failed", "duration_s")
        }
        with self._writing():
            self.db.table("runs").update(
                run_id, {**fields, "finished_at": utcnow(), "exit_code": exit_code, "error": error or None}
            )

    def last_runs(self, limit: int = 5) -> list[dict[str, Any]]:
        with self._lock:
            return list(self.db.query("select * from runs order by id desc limit ?", [limit]))

    def counts_by_status(self) -> dict[str, int]:
        with self._lock:
            return {
                r["status"]: r["n"]
                for r in self.db.query(
                    "select status, count(*) as n from images group by status order by status"
                )
            }

    # -- OAuth tokens -----------------------------------------------------------------------------
    def load_tokens(self, key: str) -> dict[str, Any] | None:
        with self._lock:
            rows = list(self.db.query("select * from oauth_tokens where key = ?", [key]))
            return rows[0] if rows else None

    def save_tokens(self, key: str, access_token: str, refresh_token: str, seed: str) -> None:
        with self._writing():
            self.db.table("oauth_tokens").upsert(
                {
                    "key": key,
                    "access_token": access_token,
                    "refresh_token": refresh_token,
                    "seed": seed,
                    "updated_at": utcnow(),
                },
                pk="key",
            )

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

    # --- rebuild ---------------------------------------------------------------------------------------
    # Rows restored from the S3 objects' metadata by imgsync.rebuild, after a lost database.

    def image_count(self) -> int:
        """How many images the database records (any status)."""
        with self._lock:
            return int(self.db.execute("select count(*) from images").fetchone()[0])

    def recorded_objects(self, refs: Sequence[ImageRef]) -> dict[ImageRef, tuple[str, str]]:
        """``(s3_key, s3_etag)`` of the ``ok`` rows of these images that record an S3 object."""
        found: dict[ImageRef, tuple[str, str]] = {}
        unique = list(dict.fromkeys(refs))
        with self._lock:
            for start in range(0, len(unique), 200):
                part = unique[start : start + 200]
                clause = " or ".join(["(product_id = ? and image_id = ?)"] * len(part))
                params = [n for ref in part for n in (ref.product_id, ref.image_id)]
                for row in self.db.execute(
                    "select product_id, image_id, s3_key, s3_etag from images "
                    f"where ({clause}) and +status = 'ok' and s3_key is not null",
                    params,
                ):
                    found[ImageRef(row[0], row[1])] = (row[2], row[3] or "")
        return found

    def upsert_rebuilt(self, backups: Sequence[S3Backup]) -> int:
        """Write rows for images found in S3, in one transaction; return how many rows were written.

        A row the database already has is replaced only when it records no backup, a failure, or an older
        version than the object (its ``last_changed_at`` before the object's LastModified): of two objects of
        one image (renamed on the portal) the newer wins, and a merge keeps what the database knew last.
        """
        if not backups:
            return 0
        now = utcnow()
        rows = [
            (
                b.ref.product_id,
                b.ref.image_id,
                b.name,
                b.type,
                b.create_time,
                b.detail_url,
                b.sha256,
                b.size,
                b.content_type,
                b.local_path,
                b.s3_key,
                b.s3_etag,
                b.sha256,
                "ok",
                None,
                b.last_modified,
                now,
                b.last_modified,
            )
            for b in backups
        ]
        cols = (
            "product_id, image_id, name, type, create_time, detail_url, sha256, size, content_type, local_path, "
            "s3_key, s3_etag, s3_sha256, status, error, first_synced_at, last_checked_at, last_changed_at"
        )
        updates = ", ".join(
            f"{c} = excluded.{c}"
            for c in cols.replace(" ", "").split(",")
            if c not in ("product_id", "image_id", "first_synced_at")
        )
        with self._writing() as conn:
            cursor = conn.executemany(
                f"insert into images ({cols}) values ({', '.join('?' * 18)}) "
                f"on conflict(product_id, image_id) do update set {updates}, "
                "first_synced_at = coalesce(images.first_synced_at, excluded.first_synced_at) "
                "where images.sha256 is null or images.status = 'failed' "
                "or coalesce(images.last_changed_at, '') < excluded.last_changed_at",
                rows,
            )
            return int(cursor.rowcount)


def _check_header(path: Path) -> None:
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
