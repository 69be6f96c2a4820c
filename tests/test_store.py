"""The state database: migrations, schema, the lock."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from imgsync.errors import AlreadyRunning
from imgsync.models import Event, ImageRef, ListedItem, Outcome, PortalImage
from imgsync.store import MIGRATIONS, RUN_TOTALS, Store, run_lock


def test_blank_database_gets_the_final_schema(tmp_path: Path) -> None:
    db_path = tmp_path / "state.db"
    with Store(db_path) as store:
        assert store.migrate() == []  # already applied on open
    con = sqlite3.connect(db_path)
    assert con.execute("pragma journal_mode").fetchone()[0] == "wal"
    applied = [r[0] for r in con.execute("select id from _migrations order by id")]
    assert applied == [number for number, _, _ in MIGRATIONS]
    columns = {row[1] for row in con.execute("pragma table_info(images)")}
    assert {
        "product_id",
        "image_id",
        "name",
        "type",
        "create_time",
        "detail_url",
        "sha256",
        "size",
        "content_type",
        "local_path",
        "s3_key",
        "s3_etag",
        "status",
        "error",
        "first_synced_at",
        "last_checked_at",
        "last_changed_at",
    } <= columns
    pk = [row[1] for row in sorted(con.execute("pragma table_info(images)"), key=lambda r: r[5]) if row[5]]
    assert pk == ["product_id", "image_id"]
    assert {
        "id",
        "started_at",
        "finished_at",
        "exit_code",
        "requested",
        "downloaded",
        "unchanged",
        "uploaded",
        "missing",
        "failed",
        "duration_s",
    } <= {row[1] for row in con.execute("pragma table_info(runs)")}
    assert {"run_id", "product_id", "image_id", "action", "detail", "at"} <= {
        row[1] for row in con.execute("pragma table_info(events)")
    }


def test_save_upserts_and_keeps_first_synced_at(tmp_path: Path) -> None:
    with Store(tmp_path / "s.db") as store:
        run = store.start_run()
        ref = ImageRef(1, 2)
        image = PortalImage(1, 2, "a.jpg", "MORE_PHOTO", "2024-10-17T10:48:05+02:00", "/upload/a.jpg", "")
        downloaded = Outcome(
            ref,
            Event.DOWNLOADED,
            "3 bytes",
            image=image,
            sha256="aa",
            size=3,
            local_path="1/2-a.jpg",
            changed=True,
        )
        store.save(run, [downloaded])
        first = store.rows_for([ref])[ref]
        store.db.execute("update images set first_synced_at = '2020-01-01T00:00:00Z'")  # an older first sync
        store.save(run, [Outcome(ref, Event.MISSING, "gone")])
        row = store.rows_for([ref])[ref]
        assert row.status == "missing" and row.sha256 == "aa" and row.local_path == "1/2-a.jpg"
        assert first.first_synced_at is not None and first.last_changed_at is not None
        store.save(run, [downloaded])  # back: still first synced when it was first
        row = store.rows_for([ref])[ref]
        assert row.first_synced_at == "2020-01-01T00:00:00Z" and row.status == "ok"
        assert [e["action"] for e in store.db["events"].rows] == ["downloaded", "missing", "downloaded"]


def test_lock_is_exclusive_and_released(tmp_path: Path) -> None:
    db_path = tmp_path / "s.db"
    with (
        run_lock(db_path),
        pytest.raises(AlreadyRunning, match="another imgsync sync is running"),
        run_lock(db_path),
    ):
        pass
    with run_lock(db_path):
        pass


def test_a_migration_that_fails_halfway_leaves_nothing_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each migration is one transaction, DDL included: before, the table it had created stayed, and every
    later run failed with "table already exists"."""
    import imgsync.store.migrations as store_module

    def broken(db: object) -> None:
        store_module.sqlite_utils.Database.execute(db, "create table half_done (x integer)")  # type: ignore[arg-type]
        raise RuntimeError("the disk went away")

    def fixed(db: object) -> None:
        store_module.sqlite_utils.Database.execute(db, "create table half_done (x integer)")  # type: ignore[arg-type]

    db_path = tmp_path / "state.db"
    monkeypatch.setattr(store_module, "MIGRATIONS", [*MIGRATIONS, (99, "broken", broken)])
    with pytest.raises(RuntimeError):
        Store(db_path)
    con = sqlite3.connect(db_path)
    assert "half_done" not in {r[0] for r in con.execute("select name from sqlite_master")}
    assert 99 not in {r[0] for r in con.execute("select id from _migrations")}
    con.close()
    monkeypatch.setattr(store_module, "MIGRATIONS", [*MIGRATIONS, (99, "fixed", fixed)])
    with Store(db_path) as store:
        assert store.migrate() == []
    con = sqlite3.connect(db_path)
    assert 99 in {r[0] for r in con.execute("select id from _migrations")}
    con.close()


# --- catalog ---


def test_the_products_table_of_migration_3(tmp_path: Path) -> None:
    with Store(tmp_path / "s.db"):
        pass
    con = sqlite3.connect(tmp_path / "s.db")
    info = list(con.execute("pragma table_info(products)"))
    assert [r[1] for r in info] == [
        "product_id",
        "iblock_id",
        "type",
        "parent_id",
        "picture_ids",
        "status",
        "first_listed_at",
        "last_listed_at",
        "gone_at",
        "xml_id",  # migration 5: the listing's keys
        "code",
        "name",
    ]
    assert [r[1] for r in info if r[5]] == ["product_id"]
    con.close()


def products_rows(store: Store) -> list[tuple]:
    return store.db.execute(
        "select product_id, iblock_id, type, parent_id, picture_ids, status, first_listed_at, last_listed_at, "
        "gone_at from products order by product_id"
    ).fetchall()


def test_listed_items_are_upserted_and_unlisted_ones_marked_gone(tmp_path: Path) -> None:
    t1, t2, t3 = "2024-10-17T10:00:00Z", "2024-10-18T10:00:00Z", "2024-10-18T10:05:00Z"
    with Store(tmp_path / "s.db") as store:
        assert store.catalog_size() is None and store.listed_items() == 0
        first = [ListedItem(1, 23, 1, None, (6, 5)), ListedItem(2, 23, 3), ListedItem(3, 25, 4, 2, (9,))]
        assert store.save_listed(first, t1) == 3
        # The next complete listing: 1 changed its pictures, 2 is not listed any more, 4 is new.
        store.save_listed([ListedItem(1, 23, 1, None, (7,)), ListedItem(3, 25, 4, 2, (9,))], t2)
        store.save_listed([ListedItem(4, 23, 7)], t2)
        assert store.mark_gone_items(t2, t3) == 1
        assert products_rows(store) == [
            (1, 23, 1, None, "7", "listed", t1, t2, None),
            (2, 23, 3, None, "", "gone", t1, t1, t3),
            (3, 25, 4, 2, "9", "listed", t1, t2, None),
            (4, 23, 7, None, "", "listed", t2, t2, None),
        ]
        # Gone items whose images are not all missing yet are the ones to finish (an item without images
        # has nothing to finish; one whose images are all missing is done).
        assert list(store.iter_gone_items()) == []
        with store.db.conn:
            store.db.execute("insert into images (product_id, image_id, status) values (2, 10, 'ok')")
            store.db.execute("insert into images (product_id, image_id, status) values (3, 9, 'ok')")
        assert list(store.iter_gone_items()) == [[2]]
        with store.db.conn:
            store.db.execute("update images set status = 'missing' where product_id = 2")
        assert list(store.iter_gone_items()) == []
        assert store.mark_gone_items(t2, t3) == 0  # gone once
        assert store.catalog_size() == 4 and store.listed_items() == 3
        # Listed again: back, and no longer gone.
        store.save_listed([ListedItem(2, 23, 3, None, (11, 10))], t3)
        assert products_rows(store)[1] == (2, 23, 3, None, "10,11", "listed", t1, t3, None)


def test_recorded_pictures_are_the_ok_images_per_item(tmp_path: Path) -> None:
    with Store(tmp_path / "s.db") as store:
        image = PortalImage(0, 0, "a.jpg", "MORE_PHOTO", "", "", "")

        def outcome(p: int, i: int, status: str) -> Outcome:
            if status == "ok":
                return Outcome(ImageRef(p, i), Event.DOWNLOADED, image=image, sha256="aa", size=1)
            return Outcome(ImageRef(p, i), Event.MISSING if status == "missing" else Event.FAILED, "x")

        outcomes = [
            outcome(p, i, status)
            for p, i, status in [
                (1, 10, "ok"),
                (1, 11, "ok"),
                (1, 12, "failed"),
                (2, 20, "missing"),
                (3, 30, "ok"),
            ]
        ]
        outcomes += [outcome(5000 + n, 1, "ok") for n in range(1200)]
        store.save(None, outcomes)
        assert store.recorded_pictures([1, 2, 3, 4, 1]) == {1: {10, 11}, 3: {30}}
        many = store.recorded_pictures(list(range(5000, 6200)))  # more ids than one query takes
        assert len(many) == 1200 and many[6199] == {1}
        assert store.recorded_pictures([]) == {}


def test_a_fresh_database_has_exactly_this_schema(tmp_path: Path) -> None:
    """Every table, column, type and primary key of a freshly migrated database (as simonw/llm's
    test_migrate does): a migration that adds, drops or retypes a column must change this test too."""
    Store(tmp_path / "fresh.db").close()
    con = sqlite3.connect(tmp_path / "fresh.db")
    tables = {
        name: [(r[1], r[2], r[5]) for r in con.execute(f"pragma table_info({name})")]
        for (name,) in con.execute("select name from sqlite_master where type = 'table' order by name")
    }
    indexes = {r[0] for r in con.execute("select name from sqlite_master where type = 'index'")}
    con.close()
    text, integer = "TEXT", "INTEGER"
    assert tables == {
        "_migrations": [("id", integer, 1), ("name", text, 0), ("applied_at", text, 0)],
        "images": [
            ("product_id", integer, 1),
            ("image_id", integer, 2),
            *((c, text, 0) for c in ("name", "type", "create_time", "detail_url", "sha256")),
            ("size", integer, 0),
            *(
                (c, text, 0)
                for c in (
                    "content_type",
                    "local_path",
                    "s3_key",
                    "s3_etag",
                    "s3_sha256",
                    "status",
                    "error",
                    "first_synced_at",
                    "last_checked_at",
                    "last_changed_at",
                    "missing_since",
                    "restored_at",
                )
            ),
            ("restored_as", integer, 0),
        ],
        "restores": [
            ("id", integer, 1),
            ("run_id", integer, 0),
            ("source_db", text, 0),
            *((c, integer, 0) for c in ("product_id", "image_id", "target_product_id")),
            *((c, text, 0) for c in ("sha256", "type", "name", "state")),
            ("new_image_id", integer, 0),
            *((c, text, 0) for c in ("error", "sent_at", "finished_at")),
        ],
        "removals": [("path", "TEXT", 1), ("at", "TEXT", 0)],
        "runs": [
            ("id", integer, 1),
            ("started_at", text, 0),
            ("finished_at", text, 0),
            *((c, integer, 0) for c in ("exit_code", "requested", "downloaded", "unchanged", "uploaded")),
            *((c, integer, 0) for c in ("missing", "failed")),
            ("duration_s", "REAL", 0),
            ("error", text, 0),
            ("state", text, 0),
            *((c, integer, 0) for c in RUN_TOTALS),
            ("command", text, 0),
        ],
        "events": [
            ("id", integer, 1),
            ("run_id", integer, 0),
            ("product_id", integer, 0),
            ("image_id", integer, 0),
            ("action", text, 0),
            ("detail", text, 0),
            ("at", text, 0),
        ],
        "oauth_tokens": [("key", text, 1), *((c, text, 0) for c in ("access_token", "refresh_token", "seed"))]
        + [("updated_at", text, 0)],
        "products": [
            ("product_id", integer, 1),
            ("iblock_id", integer, 0),
            ("type", integer, 0),
            ("parent_id", integer, 0),
            *(
                (c, text, 0)
                for c in (
                    "picture_ids",
                    "status",
                    "first_listed_at",
                    "last_listed_at",
                    "gone_at",
                    "xml_id",
                    "code",
                    "name",
                )
            ),
        ],
    }
    assert indexes >= {
        "idx_images_status",
        "idx_images_last_changed_at",
        "idx_events_run_id",
        "idx_events_product_id_image_id",
        "idx_images_status_missing_since",
        "idx_restores_state",
    }


def test_migration_5_dates_missing_rows_by_their_last_missing_event(tmp_path: Path) -> None:
    """Rows already ``missing`` before ``missing_since`` existed get the time of their last ``missing``
    event (else the migration's), so ``restore --missing --since`` selects them truly; earlier runs are
    syncs."""
    path = tmp_path / "old.db"
    with Store(path) as store:
        store.db.execute("delete from _migrations where id = 5")
    con = sqlite3.connect(path)
    con.execute("drop index idx_images_status_missing_since")
    for table, column in (
        ("images", "missing_since"),
        ("images", "restored_at"),
        ("images", "restored_as"),
        ("runs", "command"),
        ("products", "xml_id"),
        ("products", "code"),
        ("products", "name"),
    ):
        con.execute(f"alter table {table} drop column {column}")
    con.execute("drop table restores")
    con.execute("insert into runs (id, started_at, state) values (1, '2026-01-01T00:00:00Z', 'finished')")
    con.executemany(
        "insert into images (product_id, image_id, status) values (?, ?, ?)",
        [(1, 10, "missing"), (1, 11, "missing"), (1, 12, "ok")],
    )
    con.executemany(
        "insert into events (run_id, product_id, image_id, action, detail, at) values (1, ?, ?, ?, '', ?)",
        [
            (1, 10, "missing", "2026-03-01T00:00:00Z"),
            (1, 10, "missing", "2026-03-05T00:00:00Z"),
            (1, 12, "missing", "2026-03-02T00:00:00Z"),
        ],
    )
    con.commit()
    con.close()
    with Store(path) as store:
        rows = {r["image_id"]: r for r in store.db.query("select * from images")}
        commands = [r["command"] for r in store.db.query("select command from runs")]
    assert rows[10]["missing_since"] == "2026-03-05T00:00:00Z"
    assert rows[11]["missing_since"] is not None and rows[11]["missing_since"] > "2026-03-05"
    assert rows[12]["missing_since"] is None  # ok now: not missing since anything
    assert commands == ["sync"]
