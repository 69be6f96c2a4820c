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
from .models import BackupTotals, ImageRef, ImageState, ListedItem, RunStats

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


def _m002_run_state(db: sqlite_utils.Database) -> None:
    # "running" while a sync holds the lock, "finished", or "crashed": a run that ended without recording
    # its end (SIGKILL, power loss), found so by the next run.
    db.table("runs").add_column("state", str)
    db.execute("update runs set state = case when finished_at is null then 'crashed' else 'finished' end")


def _m003_products(db: sqlite_utils.Database) -> None:
    # The items `sync --all` lists: what the listing showed, and whether the last complete listing had them.
    db.table("products").create(
        {
            "product_id": int,
            "iblock_id": int,
            "type": int,
            "parent_id": int,
            "picture_ids": str,  # the listing's picture ids, sorted, comma-separated ("" for none)
            "status": str,  # listed | gone
            "first_listed_at": str,
            "last_listed_at": str,
            "gone_at": str,
        },
        pk="product_id",
    )
    db.table("products").create_index(["status", "last_listed_at"])


MIGRATIONS: list[tuple[int, str, Callable[[sqlite_utils.Database], None]]] = [
    (1, "initial", _m001_initial),
    (2, "run_state", _m002_run_state),
    (3, "products", _m003_products),
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
    """The state database. Use as a context manager, or call :meth:`close`.

    ``readonly=True`` (a dry run, ``status``, ``verify``) never writes the file: it is opened read-only,
    and when it lacks migrations (or does not exist) they run on a private in-memory copy. Otherwise the
    file is created readable by its owner only (it holds renewed OAuth tokens) and switched to WAL.
    """

    def __init__(self, path: Path | str, *, readonly: bool = False) -> None:
        self.path = Path(path)
        self.readonly = readonly
        self._lock = threading.RLock()
        exists = self.path.exists()
        if exists:
            _check_header(self.path)
        try:
            if readonly:
                self.db = self._open_readonly(exists)
            else:
                if not exists:
                    _create_private(self.path)
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
            source = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True, timeout=30)
            db = sqlite_utils.Database(source)
            if not self._pending(db):
                source.close()
                return sqlite_utils.Database(
                    sqlite3.connect(
                        f"{self.path.resolve().as_uri()}?mode=ro",
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

    @staticmethod
    def _pending(db: sqlite_utils.Database) -> bool:
        if not db.table("_migrations").exists():
            return True
        done = {row["id"] for row in db.table("_migrations").rows}
        return any(number not in done for number, _name, _func in MIGRATIONS)

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
                # One transaction per migration, DDL included: one that fails halfway leaves nothing behind.
                with self.db.atomic():
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
        """Record a new run (``running``). Runs still ``running`` from before cannot be: the caller
        holds the lock. They crashed; they are marked so, with the counts their events hold."""
        with self._writing() as conn:
            for (run_id,) in conn.execute("select id from runs where state = 'running'").fetchall():
                counts = dict.fromkeys(("downloaded", "uploaded", "missing", "failed"), 0)
                for action, n in conn.execute(
                    "select action, count(*) from events where run_id = ? group by action", [run_id]
                ):
                    if action in counts:
                        counts[action] = n
                conn.execute(
                    "update runs set state = 'crashed', downloaded = ?, uploaded = ?, missing = ?, failed = ?, "
                    "error = ? where id = ?",
                    [
                        counts["downloaded"],
                        counts["uploaded"],
                        counts["missing"],
                        counts["failed"],
                        "crashed: the process ended without recording the end of the run (killed?)",
                        run_id,
                    ],
                )
            table = self.db.table("runs")
            table.insert({"started_at": utcnow(), "state": "running"})
            return int(table.last_pk or 0)

    def finish_run(self, run_id: int, counts: dict[str, Any], exit_code: int, error: str = "") -> None:
        fields = {
            k: counts.get(k)
            for k in ("requested", "downloaded", "unchanged", "uploaded", "missing", "failed", "duration_s")
        }
        with self._writing():
            self.db.table("runs").update(
                run_id,
                {
                    **fields,
                    "finished_at": utcnow(),
                    "exit_code": exit_code,
                    "error": error or None,
                    "state": "finished",
                },
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

    # --- verify repair ---------------------------------------------------------------------------
    # The one write of `imgsync verify --repair`. The caller holds run_lock: no sync runs meanwhile.
    def mark_for_repair(
        self,
        files: Iterable[tuple[ImageRef, str, str]] = (),
        objects: Iterable[tuple[ImageRef, str, str]] = (),
    ) -> int:
        """Mark rows whose backup verify found missing or different, so that the next sync fetches it again.

        ``files``: ``(ref, recorded local_path, error)``; ``objects``: ``(ref, recorded s3_key, error)``.
        Each row becomes ``failed`` with the error(s) and stops claiming the backup it no longer has:
        ``local_path``, or ``s3_key``/``s3_etag``/``s3_sha256``, set to NULL. ``sha256``, ``size`` and the
        fingerprint stay, so the sync's skip rule sees no backup and downloads (or uploads) it again, and
        a download of the same bytes counts as unchanged content. A row that no longer records that path
        or key is left alone. Returns the number of rows marked.
        """
        marks: dict[ImageRef, dict[str, Any]] = {}
        for column, items in (("local_path", files), ("s3_key", objects)):
            for ref, where, error in items:
                mark = marks.setdefault(ref, {"errors": [], "where": {}})
                mark["errors"].append(error)
                mark["where"][column] = where
        marked = 0
        with self._writing() as conn:
            for ref, mark in marks.items():
                cleared = []
                if "local_path" in mark["where"]:
                    cleared.append("local_path = null")
                if "s3_key" in mark["where"]:
                    cleared += ["s3_key = null", "s3_etag = null", "s3_sha256 = null"]
                conditions = "".join(f" and {column} = ?" for column in mark["where"])
                cursor = conn.execute(
                    f"update images set status = 'failed', error = ?, {', '.join(cleared)} "
                    f"where product_id = ? and image_id = ?{conditions}",
                    ["; ".join(mark["errors"]), ref.product_id, ref.image_id, *mark["where"].values()],
                )
                marked += cursor.rowcount
        return marked

    # --- report queries ---
    # Read-only queries for ``imgsync report`` (imgsync/report.py holds no SQL). Each one aggregates in SQL or
    # reads a bounded number of rows, so the report's memory does not grow with the catalog.

    @classmethod
    def open_read_only(cls, path: Path | str) -> Store:
        """Open an existing state database without writing to it (see ``readonly``); a missing file is a
        :class:`StateError` naming the path, never a new database."""
        if not Path(path).is_file():
            raise StateError(f"{path}: no state database there (run 'imgsync sync' first)")
        return cls(path, readonly=True)

    _IMAGE_STATE = (
        "product_id, image_id, name, status, error, size, sha256, local_path, s3_key, "
        "last_checked_at, last_changed_at"
    )
    _RUN_STATS = (
        "id, started_at, finished_at, exit_code, coalesce(requested, 0), coalesce(downloaded, 0), "
        "coalesce(unchanged, 0), coalesce(uploaded, 0), coalesce(missing, 0), coalesce(failed, 0), "
        "duration_s, error"
    )

    def backup_bytes(self) -> BackupTotals:
        """Files recorded on local disk and objects recorded in S3, each with the sum of their sizes."""
        with self._lock:
            row = self.db.execute(
                "select count(local_path), coalesce(sum(case when local_path is not null then size end), 0), "
                "count(s3_key), coalesce(sum(case when s3_key is not null then size end), 0) from images"
            ).fetchone()
        return BackupTotals(*(int(v) for v in row))

    def catalog_size(self) -> int | None:
        """Items in the ``products`` table that ``sync --all`` fills; ``None`` without such a table or rows."""
        with self._lock:
            if "products" not in self.db.table_names():
                return None
            n = int(self.db.execute("select count(*) from products").fetchone()[0])
        return n or None

    def recent_runs(self, limit: int) -> list[RunStats]:
        """The last ``limit`` runs, newest first."""
        with self._lock:
            rows = self.db.execute(f"select {self._RUN_STATS} from runs order by id desc limit ?", [limit])
            return [RunStats(*row) for row in rows.fetchall()]

    def run_count(self) -> int:
        with self._lock:
            return int(self.db.execute("select count(*) from runs").fetchone()[0])

    def last_successful_run(self) -> RunStats | None:
        """The newest finished run that exited 0."""
        with self._lock:
            row = self.db.execute(
                f"select {self._RUN_STATS} from runs where exit_code = 0 and finished_at is not null "
                "order by id desc limit 1"
            ).fetchone()
        return RunStats(*row) if row else None

    def iter_problems(self) -> Iterator[ImageState]:
        """Failed and missing images ordered by product and image id, one row at a time."""
        with self._lock:
            cursor = self.db.execute(
                f"select {self._IMAGE_STATE} from images where status in ('failed', 'missing') "
                "order by product_id, image_id"
            )
            try:
                while batch := cursor.fetchmany(500):
                    yield from (ImageState(*row) for row in batch)
            finally:
                cursor.close()

    def recent_changes(self, limit: int) -> list[ImageState]:
        """The ``limit`` images whose content changed last (``last_changed_at``), newest first."""
        with self._lock:
            rows = self.db.execute(
                f"select {self._IMAGE_STATE} from images where last_changed_at is not null "
                "order by last_changed_at desc, product_id, image_id limit ?",
                [limit],
            )
            return [ImageState(*row) for row in rows.fetchall()]

    # --- catalog ---
    # What `sync --all` records of the listing (imgsync/catalog.py lists, the pipeline calls these).

    def save_listed(self, items: Iterable[ListedItem], now: str) -> int:
        """Record listed items in one transaction: new rows, or rows updated to what the listing showed,
        ``listed`` again (a gone item that is listed again comes back). Returns the number of items.

        Pass the same ``now`` for every page of one listing, and that value to :meth:`mark_gone_items`."""
        rows = [
            (
                item.id,
                item.iblock_id,
                item.type,
                item.parent_id,
                ",".join(str(i) for i in sorted(item.picture_ids)),
                now,
                now,
            )
            for item in items
        ]
        with self._writing() as conn:
            conn.executemany(
                "insert into products (product_id, iblock_id, type, parent_id, picture_ids, status, "
                "first_listed_at, last_listed_at) values (?, ?, ?, ?, ?, 'listed', ?, ?) "
                "on conflict(product_id) do update set iblock_id = excluded.iblock_id, type = excluded.type, "
                "parent_id = excluded.parent_id, picture_ids = excluded.picture_ids, status = 'listed', "
                "last_listed_at = excluded.last_listed_at, gone_at = null",
                rows,
            )
        return len(rows)

    def recorded_pictures(self, item_ids: Sequence[int]) -> dict[int, set[int]]:
        """The image ids recorded with status ``ok`` per item (items without one are left out)."""
        out: dict[int, set[int]] = {}
        ids = list(dict.fromkeys(item_ids))
        with self._lock:
            for at in range(0, len(ids), 500):
                chunk = ids[at : at + 500]
                rows = self.db.execute(
                    f"select product_id, image_id from images where status = 'ok' and product_id in "
                    f"({', '.join('?' * len(chunk))})",
                    chunk,
                )
                for product_id, image_id in rows.fetchall():
                    out.setdefault(product_id, set()).add(image_id)
        return out

    def mark_gone_items(self, seen_since: str, now: str) -> int:
        """After a COMPLETE listing that began at ``seen_since``: mark ``gone`` (``gone_at = now``) every
        listed item it did not show. Never call it after an incomplete listing. Returns how many."""
        with self._writing() as conn:
            cursor = conn.execute(
                "update products set status = 'gone', gone_at = ? where status = 'listed' and last_listed_at < ?",
                [now, seen_since],
            )
        return cursor.rowcount

    def iter_gone_items(self, gone_at: str, size: int = 500) -> Iterator[list[int]]:
        """The ids of items marked gone at ``gone_at``, ``size`` at a time (their images become missing).
        The lock is not held between chunks, so the caller may write meanwhile."""
        last = 0
        while True:
            with self._lock:
                rows = self.db.execute(
                    "select product_id from products where status = 'gone' and gone_at = ? and product_id > ? "
                    "order by product_id limit ?",
                    [gone_at, last, size],
                ).fetchall()
            if not rows:
                return
            last = rows[-1][0]
            yield [row[0] for row in rows]

    def listed_items(self) -> int:
        """Items the last complete listing showed (``status = 'listed'``); ``catalog_size`` counts gone ones too."""
        with self._lock:
            return int(self.db.execute("select count(*) from products where status = 'listed'").fetchone()[0])


def _create_private(path: Path) -> None:
    """Create an empty database file readable by its owner only (SQLite gives its -wal/-shm the same mode)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        pass
    except OSError as exc:
        raise StateError(f"{path}: cannot create the state database ({exc.strerror})") from None


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
