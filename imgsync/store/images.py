"""The ``images`` table: one row per (product_id, image_id), what was last seen and where its backup is.

A run's :class:`~imgsync.models.Outcome` becomes a row and its ``events`` here (:meth:`Images.save`), and a
row comes back as a :class:`~imgsync.models.StoredImage` (:func:`stored_image`); the work order, the marks
of ``verify --repair`` and the rows ``rebuild`` restores from S3 are written here too."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from ..models import Event, ImageRef, Outcome, S3Backup, S3Object, StoredImage
from .db import StoreBase
from .times import utcnow


class Images(StoreBase):
    """Reads and writes of ``images`` rows (and the ``events`` a run's outcomes add)."""

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
            return {ImageRef(r["product_id"], r["image_id"]): stored_image(r) for r in rows}

    def rows_of_product(self, product_id: int) -> list[StoredImage]:
        with self._lock:
            rows = self.db.query("select * from images where product_id = ? order by image_id", [product_id])
            return [stored_image(r) for r in rows]

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
                    out.setdefault(r["product_id"], []).append(stored_image(r))
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

    def save(
        self,
        run_id: int | None,
        outcomes: Iterable[Outcome],
        *,
        durable: bool = False,
        removals: Sequence[str] = (),
    ) -> None:
        """Record what a run did, image rows and their events, in one transaction (one commit for many).

        ``removals``: files (relative to dest) these rows no longer name, which the caller removes once this
        returns; they are recorded in the same transaction (see :meth:`pending_removals`), so a run killed
        before its unlinks leaves the next run a note of them.

        ``durable=True`` when the caller deletes files once it returns (files the rows no longer name): in WAL
        mode with ``synchronous=NORMAL`` a commit may be lost on power loss, and rows naming deleted files
        would survive it. That commit is made with ``synchronous=FULL`` (the WAL is synced before it returns).
        """
        with self._lock:
            if not durable:
                self._save(run_id, outcomes, removals)
                return
            self.db.execute("PRAGMA synchronous=FULL")
            try:
                self._save(run_id, outcomes, removals)
            finally:
                self.db.execute("PRAGMA synchronous=NORMAL")

    def pending_removals(self) -> list[str]:
        """Files noted for removal that no row names now (a run stopped between its commit and its unlinks);
        the caller removes them and then calls :meth:`forget_removals`."""
        with self._lock:
            rows = self.db.execute(
                "select path from removals r where not exists "
                "(select 1 from images i where i.local_path = r.path) order by path"
            ).fetchall()
        return [str(r[0]) for r in rows]

    def forget_removals(self, paths: Sequence[str] | None = None) -> None:
        """Drop the notes of files removed (``None``: every note, those a row names again included)."""
        with self._writing() as conn:
            if paths is None:
                conn.execute("delete from removals")
            else:
                conn.executemany("delete from removals where path = ?", [(p,) for p in paths])

    def _save(self, run_id: int | None, outcomes: Iterable[Outcome], removals: Sequence[str] = ()) -> None:
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
            if removals:
                conn.executemany(
                    "insert or ignore into removals (path, at) values (?, ?)", [(p, now) for p in removals]
                )

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


def stored_image(row: dict[str, Any]) -> StoredImage:
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
