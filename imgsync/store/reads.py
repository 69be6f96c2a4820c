"""The read models of ``status``, ``report`` and ``verify`` over ``images``: counts and sums aggregated in
SQL, and rows streamed a batch at a time, so that memory does not grow with the catalog
(imgsync/report.py, imgsync/verify.py and the CLI hold no SQL)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from ..models import BackupTotals, ImageState, StoredImage
from .db import StoreBase
from .images import stored_image


class Reads(StoreBase):
    """Read-only queries: none of them writes."""

    _IMAGE_STATE = (
        "product_id, image_id, name, status, error, size, sha256, local_path, s3_key, "
        "last_checked_at, last_changed_at, restored_as, restored_at"
    )

    def counts_by_status(self) -> dict[str, int]:
        with self._lock:
            return {
                r["status"]: r["n"]
                for r in self.db.query(
                    "select status, count(*) as n from images group by status order by status"
                )
            }

    def totals(self) -> tuple[int, int]:
        """(images backed up, their bytes): the rows with status ``ok``."""
        with self._lock:
            row = self.db.execute(
                "select count(*), coalesce(sum(size), 0) from images where status = 'ok'"
            ).fetchone()
            return int(row[0]), int(row[1])

    def backup_bytes(self) -> BackupTotals:
        """Files recorded on local disk and objects recorded in S3, each with the sum of their sizes."""
        with self._lock:
            row = self.db.execute(
                "select count(local_path), coalesce(sum(case when local_path is not null then size end), 0), "
                "count(s3_key), coalesce(sum(case when s3_key is not null then size end), 0) from images"
            ).fetchone()
        return BackupTotals(*(int(v) for v in row))

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

    def iter_backups(self) -> Iterator[StoredImage]:
        """Rows that record a backup (a local file or an S3 object), in id order, streamed."""
        cursor = self.db.execute(
            "select * from images where sha256 is not null and (local_path is not null or s3_key is not null) "
            "order by product_id, image_id"
        )
        columns = [d[0] for d in cursor.description]
        while batch := cursor.fetchmany(1000):
            for values in batch:
                yield stored_image(dict(zip(columns, values, strict=True)))
