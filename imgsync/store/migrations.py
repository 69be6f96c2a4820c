"""The numbered migrations (after simonw/llm's): each a small function, recorded in ``_migrations`` when it
has run, each in one transaction of its own. A blank database gets them all, in order; an older one the ones
it lacks. The schema is theirs: a column is added here, never elsewhere."""

from __future__ import annotations

from collections.abc import Callable

import sqlite_utils

from .times import utcnow


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


def _m006_removals(db: sqlite_utils.Database) -> None:
    # Files a committed row no longer names, to be removed: written in the same transaction as the rows, so a
    # run killed between its commit and its unlinks leaves the intent, and the next run removes the file.
    db.table("removals").create({"path": str, "at": str}, pk="path")


MIGRATIONS: list[tuple[int, str, Callable[[sqlite_utils.Database], None]]] = [
    (1, "initial", _m001_initial),
    (2, "run_state", _m002_run_state),
    (3, "products", _m003_products),
    (4, "run_totals", _m004_run_totals),
    (5, "restores", _m005_restores),
    (6, "removals", _m006_removals),
]


def pending(db: sqlite_utils.Database) -> bool:
    """Does this database lack a migration (or the ``_migrations`` table itself)?"""
    if not db.table("_migrations").exists():
        return True
    done = {row["id"] for row in db.table("_migrations").rows}
    return any(number not in done for number, _name, _func in MIGRATIONS)


def migrate(db: sqlite_utils.Database) -> list[int]:
    """Apply the migrations not yet recorded; return their numbers."""
    if not db.table("_migrations").exists():
        db.table("_migrations").create({"id": int, "name": str, "applied_at": str}, pk="id")
    done = {row["id"] for row in db.table("_migrations").rows}
    applied = []
    for number, name, func in MIGRATIONS:
        if number in done:
            continue
        # One transaction per migration, DDL included: one that fails halfway leaves nothing behind.
        with db.atomic():
            func(db)
            db.table("_migrations").insert({"id": number, "name": name, "applied_at": utcnow()})
        applied.append(number)
    return applied
