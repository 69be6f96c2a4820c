"""The ``restores`` table, the journal of ``imgsync restore`` (imgsync/restore/ plans and sends; these are its
only writes besides :meth:`~imgsync.store.images.Images.save`). Each add is committed as ``sent`` before it
leaves, so that no add is ever made twice; the old ``images`` row records where its image went."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..models import ImageRef, RestoreEntry, StoredImage
from .db import StoreBase
from .images import stored_image
from .times import now_precise, utcnow


class Restores(StoreBase):
    """The restore journal, and the marks a restore leaves on ``images`` rows."""

    def missing_rows(self, since: str | None = None) -> list[StoredImage]:
        """Rows with status ``missing`` (that went missing at ``since`` or later), in id order."""
        query = "select * from images where status = 'missing'"
        params: list[Any] = []
        if since is not None:
            query += " and missing_since >= ?"
            params.append(since)
        with self._lock:
            return [stored_image(r) for r in self.db.query(query + " order by product_id, image_id", params)]

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
                    now_precise(),
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
