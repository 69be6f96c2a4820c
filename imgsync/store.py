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
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlite_utils

from .errors import AlreadyRunning, LocalStorageError, StateError
from .models import (
    BackupTotals,
    Event,
    ImageRef,
    ImageState,
    ListedItem,
    Outcome,
    ProductKeys,
    RestoreEntry,
    RunStats,
    S3Backup,
    S3Object,
    StoredImage,
)

log = logging.getLogger(__name__)

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


#: The counts of the ``--json`` summary a ``runs`` row holds beyond the first ones (migration 4).
RUN_TOTALS = ("complete", "deferred", "bytes_downloaded", "bytes_uploaded", "requests", "retries")


def _m004_run_totals(db: sqlite_utils.Database) -> None:
    # The rest of the JSON summary's counts, and an index for the report's "most recently changed" (it
    # scanned the whole table at 10^6 rows without it).
    for column in RUN_TOTALS:
        db.table("runs").add_column(column, int)
    db.table("images").create_index(["last_changed_at"])


def _m005_restores(db: sqlite_utils.Database) -> None:
    # imgsync restore: one row per add sent (the journal that makes each add happen once), where a restored
    # image went, when an image went missing (restore --missing --since), which command a run was, and the
    # listing's keys of each item (restore --match xml_id|code on another portal).
    db.table("restores").create(
        {
            "id": int,
            "run_id": int,
            "source_db": str,  # the source database of a restore from another portal; null: this one
            "product_id": int,  # the source image, by the ids it had when it was backed up
            "image_id": int,
            "target_product_id": int,
            "sha256": str,
            "type": str,
            "name": str,
            "state": str,  # sent | done | failed
            "new_image_id": int,
            "error": str,
            "sent_at": str,
            "finished_at": str,
        },
        pk="id",
    )
    db.table("restores").create_index(["state"])
    db.table("restores").create_index(["product_id", "image_id"])
    for column in ("missing_since", "restored_at"):
        db.table("images").add_column(column, str)
    db.table("images").add_column("restored_as", int)
    # Rows already missing: since their last `missing` event, else since now (the best that is known).
    db.execute(
        "update images set missing_since = coalesce((select max(at) from events e where e.product_id = "
        "images.product_id and e.image_id = images.image_id and e.action = 'missing'), ?) "
        "where status = 'missing'",
        [utcnow()],
    )
    db.table("images").create_index(["status", "missing_since"])
    db.table("runs").add_column("command", str)
    db.execute("update runs set command = 'sync'")
    for column in ("xml_id", "code", "name"):
        db.table("products").add_column(column, str)


MIGRATIONS: list[tuple[int, str, Callable[[sqlite_utils.Database], None]]] = [
    (1, "initial", _m001_initial),
    (2, "run_state", _m002_run_state),
    (3, "products", _m003_products),
    (4, "run_totals", _m004_run_totals),
    (5, "restores", _m005_restores),
]


class Store:
    """The state database. Use as a context manager, or call :meth:`close`.

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
            source = sqlite3.connect(f"{self.path.resolve().as_uri()}{self._uri}", uri=True, timeout=30)
            db = sqlite_utils.Database(source)
            if not self._pending(db):
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
    def rows_for(self, refs: Sequence[ImageRef]) -> dict[ImageRef, StoredImage]:
        """The recorded rows of these images (absent ones are left out)."""
        if not refs:
            return {}
        clause = " or ".join(["(product_id = ? and image_id = ?)"] * len(refs))
        params: list[int] = []
        for ref in refs:
            params += [ref.product_id, ref.image_id]
        with self._lock:
            rows = self.db.query(f"select * from images where {clause}", params)
            return {ImageRef(r["product_id"], r["image_id"]): _stored(r) for r in rows}

    def rows_of_product(self, product_id: int) -> list[StoredImage]:
        with self._lock:
            rows = self.db.query("select * from images where product_id = ? order by image_id", [product_id])
            return [_stored(r) for r in rows]

    def rows_of_products(self, product_ids: Sequence[int]) -> dict[int, list[StoredImage]]:
        """The recorded rows of these products, by product (products with none are left out)."""
        out: dict[int, list[StoredImage]] = {}
        ids = list(dict.fromkeys(product_ids))
        with self._lock:
            for at in range(0, len(ids), 500):
                part = ids[at : at + 500]
                rows = self.db.query(
                    f"select * from images where product_id in ({', '.join('?' * len(part))}) "
                    "order by product_id, image_id",
                    part,
                )
                for r in rows:
                    out.setdefault(r["product_id"], []).append(_stored(r))
        return out

    #: The work order's rank: never backed up, then failed, then the rest by when they were checked last.
    _RANK = "case when sha256 is null then 0 when status = 'failed' then 1 else 2 end"

    def work_keys(self, refs: Sequence[ImageRef]) -> dict[ImageRef, tuple[int, str]]:
        """``(rank, last checked)`` of the recorded ones among these images, for the work order: rank 0
        never backed up (an image with no row is that too), 1 failed, 2 the others, oldest check first."""
        out: dict[ImageRef, tuple[int, str]] = {}
        with self._lock:
            for at in range(0, len(refs), 400):
                part = refs[at : at + 400]
                clause = " or ".join(["(product_id = ? and image_id = ?)"] * len(part))
                params = [n for ref in part for n in (ref.product_id, ref.image_id)]
                for p, i, rank, since in self.db.execute(
                    f"select product_id, image_id, {self._RANK}, coalesce(last_checked_at, '') from images "
                    f"where {clause}",
                    params,
                ):
                    out[ImageRef(p, i)] = (int(rank), str(since))
        return out

    def product_work_keys(self, product_ids: Sequence[int]) -> dict[int, tuple[int, str]]:
        """The work order of whole products: a product is as urgent as its most urgent recorded image
        (one never seen has no row and ranks 0, first)."""
        out: dict[int, tuple[int, str]] = {}
        with self._lock:
            for at in range(0, len(product_ids), 500):
                part = list(product_ids[at : at + 500])
                for pid, rank, since in self.db.execute(
                    f"select product_id, min({self._RANK}), min(coalesce(last_checked_at, '')) from images "
                    f"where product_id in ({', '.join('?' * len(part))}) group by product_id",
                    part,
                ):
                    out[int(pid)] = (int(rank), str(since))
        return out

    def iter_refs_in_work_order(self) -> Iterator[ImageRef]:
        """Every recorded image, in the order a capped run should take them: never backed up first, then
        failed ones, then those checked longest ago (so nightly capped runs rotate through the catalog).
        The caller copies them out (a private table), so no cursor stays open while the run writes."""
        cursor = self.db.execute(
            "select product_id, image_id from images order by "
            "case when sha256 is null then 0 when status = 'failed' then 1 else 2 end, "
            "coalesce(last_checked_at, ''), product_id, image_id"
        )
        try:
            while batch := cursor.fetchmany(1000):
                for product_id, image_id in batch:
                    yield ImageRef(product_id, image_id)
        finally:
            cursor.close()

    def iter_backups(self) -> Iterator[StoredImage]:
        """Rows that record a backup (a local file or an S3 object), in id order, streamed."""
        cursor = self.db.execute(
            "select * from images where sha256 is not null and (local_path is not null or s3_key is not null) "
            "order by product_id, image_id"
        )
        columns = [d[0] for d in cursor.description]
        while batch := cursor.fetchmany(1000):
            for values in batch:
                yield _stored(dict(zip(columns, values, strict=True)))

    def totals(self) -> tuple[int, int]:
        """(images backed up, their bytes): the rows with status ``ok``."""
        with self._lock:
            row = self.db.execute(
                "select count(*), coalesce(sum(size), 0) from images where status = 'ok'"
            ).fetchone()
            return int(row[0]), int(row[1])

    def mark_replacing(self, refs: Iterable[ImageRef]) -> None:
        """These ``ok`` rows stop claiming their backup before a download overwrites it, in one commit.

        A kill between the rename of the new file and the commit of its row would otherwise leave an
        ``ok`` row describing bytes that are no longer there. The next run sees the row ``failed`` (its
        file intact) until it completes the download.
        """
        with self._writing() as conn:
            conn.executemany(
                "update images set status = 'failed', error = ? where product_id = ? and image_id = ?",
                [(_REPLACING, ref.product_id, ref.image_id) for ref in refs],
            )

    def save(self, run_id: int | None, outcomes: Iterable[Outcome], *, durable: bool = False) -> None:
        """Record what a run did, image rows and their events, in one transaction (one commit for many).

        ``durable=True`` when the caller deletes files once it returns (files the rows no longer name): in WAL
        mode with ``synchronous=NORMAL`` a commit may be lost on power loss, and rows naming deleted files
        would survive it. That commit is made with ``synchronous=FULL`` (the WAL is synced before it returns).
        """
        with self._lock:
            if not durable:
                self._save(run_id, outcomes)
                return
            self.db.execute("PRAGMA synchronous=FULL")
            try:
                self._save(run_id, outcomes)
            finally:
                self.db.execute("PRAGMA synchronous=NORMAL")

    def _save(self, run_id: int | None, outcomes: Iterable[Outcome]) -> None:
        now = utcnow()
        events: list[tuple[Any, ...]] = []
        # Consecutive rows that set the same columns share one executemany (in order, so a later outcome of
        # the same image still wins): a warm run's unchanged images cost one statement per flush, not per row.
        runs: list[tuple[str, list[tuple[Any, ...]]]] = []
        for outcome in outcomes:
            row = _columns(outcome, now)
            if row is not None:
                sql = _upsert(tuple(row))
                if runs and runs[-1][0] is sql:
                    runs[-1][1].append(tuple(row.values()))
                else:
                    runs.append((sql, [tuple(row.values())]))
            if run_id is not None:
                ref = outcome.ref
                for action, detail in _events(outcome):
                    events.append((run_id, ref.product_id, ref.image_id, str(action), detail, now))
        with self._writing() as conn:
            for sql, values in runs:
                conn.executemany(sql, values)
            conn.executemany(
                "insert into events (run_id, product_id, image_id, action, detail, at) values (?, ?, ?, ?, ?, ?)",
                events,
            )

    # -- runs -------------------------------------------------------------------------------------
    def start_run(self, command: str = "sync") -> int:
        """Record a new run (``running``) of ``command`` (``sync`` or ``restore``). Runs still ``running`` from before cannot be: the caller
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
            table.insert({"started_at": utcnow(), "state": "running", "command": command})
            return int(table.last_pk or 0)

    def finish_run(self, run_id: int, counts: dict[str, Any], exit_code: int, error: str = "") -> None:
        fields = {
            k: counts.get(k)
            for k in (
                "requested",
                "downloaded",
                "unchanged",
                "uploaded",
                "missing",
                "failed",
                "duration_s",
                *RUN_TOTALS,
            )
        }
        fields["complete"] = int(bool(counts.get("complete", True)))
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
        "last_checked_at, last_changed_at, restored_as, restored_at"
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
        one image (renamed on the portal) the newer wins, and a merge keeps what the database knew last. A
        ``missing`` row stays ``missing`` (with its error): only the portal can say an image is back.
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
        # A row the portal said is gone stays ``missing``: the object is its backup, not a sign it came back.
        updates = ", ".join(
            f"{c} = case when images.status = 'missing' then images.{c} else excluded.{c} end"
            if c in ("status", "error")
            else f"{c} = excluded.{c}"
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

    # --- retention ---
    # ``[storage] keep_events_days``: the runner prunes old events once a run is over (its lock still held).
    def prune_events(self, older_than_days: int) -> int:
        """Delete events recorded more than ``older_than_days`` days ago (0: keep all); return how many.

        Never raises: a failed prune (a full disk, say) is logged and left for the next run, which tries again.
        """
        if older_than_days <= 0 or self.readonly:
            return 0
        cutoff = (datetime.now(UTC) - timedelta(days=older_than_days)).replace(microsecond=0)
        at = cutoff.isoformat().replace("+00:00", "Z")  # the format of utcnow(): compares as text
        try:
            with self._writing() as conn:
                deleted = conn.execute("delete from events where at < ?", [at]).rowcount
        except LocalStorageError as exc:
            log.warning("old events were not pruned: %s", exc.message)
            return 0
        if deleted:
            log.info("pruned %d events older than %d days", deleted, older_than_days)
        return int(deleted)

    # --- status ---
    # ``imgsync status --failed``: one row at a time, never the whole table in memory.
    def iter_failed(self) -> Iterator[dict[str, Any]]:
        """Failed images, most recently checked first: ``product_id``, ``image_id``, ``reason``, ``at``."""
        with self._lock:
            cursor = self.db.execute(
                "select product_id, image_id, coalesce(error, ''), last_checked_at from images "
                "where status = 'failed' order by last_checked_at desc, product_id, image_id"
            )
            try:
                while batch := cursor.fetchmany(500):
                    for product_id, image_id, reason, at in batch:
                        yield {"product_id": product_id, "image_id": image_id, "reason": reason, "at": at}
            finally:
                cursor.close()

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
                item.xml_id,
                item.code,
                item.name,
            )
            for item in items
        ]
        # The keys (xml_id, code, name) are kept as listed; a listing that did not ask for them (None)
        # leaves what an earlier one recorded.
        with self._writing() as conn:
            conn.executemany(
                "insert into products (product_id, iblock_id, type, parent_id, picture_ids, status, "
                "first_listed_at, last_listed_at, xml_id, code, name) "
                "values (?, ?, ?, ?, ?, 'listed', ?, ?, ?, ?, ?) "
                "on conflict(product_id) do update set iblock_id = excluded.iblock_id, type = excluded.type, "
                "parent_id = excluded.parent_id, picture_ids = excluded.picture_ids, status = 'listed', "
                "last_listed_at = excluded.last_listed_at, gone_at = null, "
                "xml_id = coalesce(excluded.xml_id, xml_id), code = coalesce(excluded.code, code), "
                "name = coalesce(excluded.name, name)",
                rows,
            )
        return len(rows)

    def product_keys(self, product_ids: Sequence[int]) -> dict[int, ProductKeys]:
        """The listing's keys of these items (``restore --match`` on another portal); items the ``products``
        table does not hold are left out. A key is None when no listing recorded it (an older ``sync --all``)."""
        out: dict[int, ProductKeys] = {}
        ids = list(dict.fromkeys(product_ids))
        with self._lock:
            if "products" not in self.db.table_names():
                return out
            for at in range(0, len(ids), 500):
                chunk = ids[at : at + 500]
                for pid, xml_id, code, name, status in self.db.execute(
                    f"select product_id, xml_id, code, name, status from products where product_id in "
                    f"({', '.join('?' * len(chunk))})",
                    chunk,
                ):
                    out[int(pid)] = ProductKeys(int(pid), xml_id, code, name, str(status or ""))
        return out

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
        listed item it did not show. Never call it after an incomplete listing. Returns how many.

        Committed on its own, before the items' images are marked missing: :meth:`iter_gone_items` finds the
        gone items whose images a stopped run had not marked yet, so the next complete listing finishes them."""
        with self._writing() as conn:
            cursor = conn.execute(
                "update products set status = 'gone', gone_at = ? where status = 'listed' and last_listed_at < ?",
                [now, seen_since],
            )
        return cursor.rowcount

    def iter_gone_items(self, size: int = 500) -> Iterator[list[int]]:
        """The ids of ``gone`` items that still have an image not recorded ``missing``, ``size`` at a time:
        those marked by this listing, and any an earlier run marked gone but was stopped (killed) before
        it had marked their images. The lock is not held between chunks, so the caller may write meanwhile."""
        last = 0
        while True:
            with self._lock:
                rows = self.db.execute(
                    "select product_id from products p where status = 'gone' and product_id > ? and exists "
                    "(select 1 from images i where i.product_id = p.product_id and i.status != 'missing') "
                    "order by product_id limit ?",
                    [last, size],
                ).fetchall()
            if not rows:
                return
            last = rows[-1][0]
            yield [row[0] for row in rows]

    def listed_catalogs(self) -> dict[int, int]:
        """``{iblock_id: items}`` of the items the listings so far show as ``listed``: the catalogs a new
        listing must find again before it may call anything gone."""
        with self._lock:
            rows = self.db.execute(
                "select iblock_id, count(*) from products where status = 'listed' and iblock_id is not null "
                "group by iblock_id"
            ).fetchall()
        return {int(iblock): int(n) for iblock, n in rows}

    def listed_items(self) -> int:
        """Items the last complete listing showed (``status = 'listed'``); ``catalog_size`` counts gone ones too."""
        with self._lock:
            return int(self.db.execute("select count(*) from products where status = 'listed'").fetchone()[0])

    # --- restore ---
    # The journal of `imgsync restore` (imgsync/restore/ plans and sends; these are its only writes besides
    # save()). Each add is committed as ``sent`` before it leaves, so that no add is ever made twice.

    def missing_rows(self, since: str | None = None) -> list[StoredImage]:
        """Rows with status ``missing`` (that went missing at ``since`` or later), in id order."""
        query = "select * from images where status = 'missing'"
        params: list[Any] = []
        if since is not None:
            query += " and missing_since >= ?"
            params.append(since)
        with self._lock:
            return [_stored(r) for r in self.db.query(query + " order by product_id, image_id", params)]

    def journal_sent(
        self,
        run_id: int | None,
        source_db: str | None,
        ref: ImageRef,
        target_product_id: int,
        sha256: str,
        type_: str,
        name: str,
    ) -> int:
        """Record an add about to be sent (``state`` = sent), committed before it leaves; return its id."""
        with self._writing() as conn:
            cursor = conn.execute(
                "insert into restores (run_id, source_db, product_id, image_id, target_product_id, sha256, type, "
                "name, state, sent_at) values (?, ?, ?, ?, ?, ?, ?, ?, 'sent', ?)",
                [
                    run_id,
                    source_db,
                    ref.product_id,
                    ref.image_id,
                    target_product_id,
                    sha256,
                    type_,
                    name,
                    _now_precise(),
                ],
            )
            return int(cursor.lastrowid or 0)

    def journal_finish(
        self, entry_id: int, *, new_image_id: int | None = None, error: str | None = None
    ) -> None:
        """The answer to an add: ``done`` with the new image's id, or ``failed`` with the error."""
        state = "done" if new_image_id is not None else "failed"
        with self._writing() as conn:
            conn.execute(
                "update restores set state = ?, new_image_id = ?, error = ?, finished_at = ? where id = ?",
                [state, new_image_id, error, utcnow(), entry_id],
            )

    def journal_pending(self, source_db: str | None) -> list[RestoreEntry]:
        """Adds sent without a known outcome (a killed run, a lost answer), oldest first."""
        with self._lock:
            rows = self.db.execute(
                "select id, product_id, image_id, target_product_id, sha256, type, name, state, sent_at, "
                "new_image_id, error from restores where state = 'sent' and source_db is ? order by id",
                [source_db],
            ).fetchall()
        return [RestoreEntry(*row) for row in rows]

    def journal_claimed(self, target_product_id: int) -> set[int]:
        """Image ids of this product that earlier restores recorded as theirs."""
        with self._lock:
            rows = self.db.execute(
                "select new_image_id from restores where target_product_id = ? and state = 'done' "
                "and new_image_id is not null",
                [target_product_id],
            ).fetchall()
        return {int(r[0]) for r in rows}

    def refused_bytes(self, refs: Sequence[ImageRef], source_db: str | None) -> dict[ImageRef, str]:
        """Source images whose last restore ended with the portal storing other bytes: ``{ref: error}``."""
        out: dict[ImageRef, str] = {}
        with self._lock:
            for at in range(0, len(refs), 400):
                part = refs[at : at + 400]
                clause = " or ".join(["(product_id = ? and image_id = ?)"] * len(part))
                params: list[Any] = [n for ref in part for n in (ref.product_id, ref.image_id)]
                for pid, iid, error in self.db.execute(
                    f"select product_id, image_id, error from restores r where ({clause}) and source_db is ? "
                    "and error like ? and id = (select max(id) from restores q where q.product_id = r.product_id "
                    "and q.image_id = r.image_id and q.source_db is r.source_db)",
                    [*params, source_db, f"{OTHER_BYTES}%"],
                ):
                    out[ImageRef(pid, iid)] = str(error)
        return out

    def mark_restored(self, ref: ImageRef, new_image_id: int) -> None:
        """The old row of a restored image: where it went (``restored_as``) and when."""
        with self._writing() as conn:
            conn.execute(
                "update images set restored_as = ?, restored_at = ?, error = null "
                "where product_id = ? and image_id = ?",
                [new_image_id, utcnow(), ref.product_id, ref.image_id],
            )

    def note_error(self, ref: ImageRef, error: str) -> None:
        """Set a row's ``error`` and nothing else (its status and backup stay)."""
        with self._writing() as conn:
            conn.execute(
                "update images set error = ? where product_id = ? and image_id = ?",
                [error, ref.product_id, ref.image_id],
            )

    def restore_counts(self) -> dict[str, int]:
        """Images restored (rows with ``restored_as``) and adds by journal state, for ``status``."""
        with self._lock:
            out = {
                "restored_images": int(
                    self.db.execute("select count(*) from images where restored_as is not null").fetchone()[0]
                )
            }
            for state, n in self.db.execute("select state, count(*) from restores group by state"):
                out[f"adds_{state}"] = int(n)
        return out

    def restored_by_run(self, run_ids: Sequence[int]) -> dict[int, int]:
        """Images each of these runs put back: adds answered with a new image holding the backup's bytes
        (for this portal: the old row's ``restored_as`` names it, so an add whose check failed is not one)."""
        if not run_ids:
            return {}
        marks = ", ".join("?" * len(run_ids))
        with self._lock:
            rows = self.db.execute(
                f"select run_id, count(*) from restores r where run_id in ({marks}) and state = 'done' "
                "and error is null and (source_db is not null or exists (select 1 from images i where "
                "i.product_id = r.product_id and i.image_id = r.image_id and i.restored_as = r.new_image_id)) "
                "group by run_id",
                list(run_ids),
            ).fetchall()
        return {int(run_id): int(n) for run_id, n in rows}


#: The error of a restore whose add the portal stored with other bytes (never sent again without --force).
OTHER_BYTES = "the portal stored other bytes"


def _now_precise() -> str:
    """UTC to the microsecond: a journal row's age decides when its product may be looked at."""
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


#: A row that turns ``missing`` gets the time; one that already is keeps the time it went missing.
_KEEP_MISSING_SINCE = (
    "missing_since = case when images.status = 'missing' and excluded.missing_since is not null "
    "then coalesce(images.missing_since, excluded.missing_since) else excluded.missing_since end"
)

_REPLACING = "a newer version was being downloaded when the run stopped"


_UPSERTS: dict[tuple[str, ...], str] = {}


def _upsert(cols: tuple[str, ...]) -> str:
    """The ``insert ... on conflict do update`` of an ``images`` row setting ``cols`` (built once per column set)."""
    sql = _UPSERTS.get(cols)
    if sql is None:
        updates = ", ".join(
            f"{c} = coalesce(images.{c}, excluded.{c})"
            if c == "first_synced_at"
            else _KEEP_MISSING_SINCE
            if c == "missing_since"
            else f"{c} = excluded.{c}"
            for c in cols
            if c not in ("product_id", "image_id")
        )
        sql = _UPSERTS.setdefault(
            cols,
            f"insert into images ({', '.join(cols)}) values ({', '.join('?' * len(cols))}) "
            f"on conflict(product_id, image_id) do update set {updates}",
        )
    return sql


def _stored(row: dict[str, Any]) -> StoredImage:
    s3 = (
        S3Object(row["s3_key"], row.get("s3_etag"), row.get("s3_sha256") or "") if row.get("s3_key") else None
    )
    return StoredImage(
        product_id=row["product_id"],
        image_id=row["image_id"],
        name=row.get("name") or "",
        type=row.get("type") or "",
        create_time=row.get("create_time") or "",
        detail_url=row.get("detail_url") or "",
        sha256=row.get("sha256"),
        size=row.get("size"),
        content_type=row.get("content_type"),
        local_path=row.get("local_path"),
        s3=s3,
        status=row.get("status") or "",
        error=row.get("error"),
        first_synced_at=row.get("first_synced_at"),
        last_checked_at=row.get("last_checked_at"),
        last_changed_at=row.get("last_changed_at"),
    )


def _columns(outcome: Outcome, now: str) -> dict[str, Any] | None:
    """The ``images`` columns an outcome sets (None: it has no row, as a product that could not be listed)."""
    ref = outcome.ref
    row: dict[str, Any] = {"product_id": ref.product_id, "image_id": ref.image_id}
    if outcome.event in (Event.DOWNLOADED, Event.UNCHANGED):
        if outcome.event == Event.DOWNLOADED:
            image = outcome.image
            assert image is not None
            row.update(
                name=image.name,
                type=image.type,
                create_time=image.create_time,
                detail_url=image.detail_url,
                sha256=outcome.sha256,
                size=outcome.size,
                content_type=outcome.content_type or None,
                local_path=outcome.local_path,
            )
            if outcome.changed:
                row["last_changed_at"] = now
        elif outcome.clear_local:
            row["local_path"] = None
        if outcome.s3 is not None:
            row.update(s3_key=outcome.s3.key, s3_etag=outcome.s3.etag, s3_sha256=outcome.s3.sha256)
        if outcome.upload_error is not None:
            row.update(status="failed", error=outcome.reason)
        else:
            row.update(status="ok", error=None, first_synced_at=now, missing_since=None)
    elif outcome.event == Event.MISSING:
        row.update(status="missing", error=outcome.detail, missing_since=now)
    elif ref.image_id:
        row.update(status="failed", error=outcome.detail)
    else:
        return None
    row["last_checked_at"] = now
    return row


def _events(outcome: Outcome) -> list[tuple[Event, str]]:
    """The ``events`` rows of an outcome: its own, and an upload (or its failure) after it. An unchanged
    image writes none of its own (the run's counts hold it), so a nightly run over a million unchanged
    images does not grow the database."""
    out: list[tuple[Event, str]] = (
        [(outcome.event, outcome.detail)] if outcome.event != Event.UNCHANGED else []
    )
    if outcome.uploaded:
        out.append((Event.UPLOADED, outcome.detail))
    if outcome.upload_error is not None:
        failed = (Event.FAILED, outcome.reason)
        # An unchanged image whose upload failed is a failure of this run, not an unchanged one.
        out = [failed] if outcome.event == Event.UNCHANGED else [*out, failed]
    return out


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


def stored_tokens(db_path: Path, key: str) -> dict[str, Any] | None:
    """The OAuth pair the database holds now, read through a connection of its own: another process may have
    renewed it a moment ago (a dry run's own copy of the database would not show it). None when there is none."""
    if not db_path.exists():
        return None
    con: sqlite3.Connection | None = None
    try:
        con = sqlite3.connect(f"{db_path.resolve().as_uri()}?mode=ro", uri=True, timeout=30)
        con.row_factory = sqlite3.Row
        row = con.execute("select * from oauth_tokens where key = ?", [key]).fetchone()
    except sqlite3.Error:
        return None
    finally:
        if con is not None:
            con.close()
    return dict(row) if row else None
