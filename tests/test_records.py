"""The state tells the truth: what the database records after deletions, caps, stops, shrunken listings and
capped image lists is what is so, against the emulator over real HTTP."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

import pytest

from imgsync.config import Settings
from imgsync.emulator import Faults, Portal, make_catalog, make_store_catalog
from imgsync.runner import Request, run_sync
from imgsync.sync import Summary

from .conftest import Env, invoke, summary_of


def rows_by_ref(env: Env) -> dict[tuple[int, int], dict[str, object]]:
    return {(int(r["product_id"]), int(r["image_id"])): r for r in env.rows()}


# -- 1. a deleted product is missing, not failed ---------------------------------------------------------


@pytest.mark.parametrize("mode", ["product", "products-file", "recorded", "all"])
def test_a_deleted_product_s_images_go_missing_with_files_kept_and_exit_0(
    env: Env, tmp_path: Path, mode: str
) -> None:
    items, images = make_store_catalog(6, images_per_item=3, min_size=200, max_size=1500)
    with Portal(images, items=items, rate_limit=1000.0, burst=1000) as portal:
        ids = [item.id for item in portal.items()]
        gone, kept = ids[2], ids[3]
        if mode == "product":
            args = ["--product", str(gone), "--product", str(kept)]
        elif mode == "products-file":
            listing = tmp_path / "ids.txt"
            listing.write_text(f"{gone}\n{kept}\n")
            args = ["--products-file", str(listing)]
        elif mode == "recorded":
            args = ["--recorded"]
        else:
            args = ["--all"]
        first = invoke(env.args(portal, *(args if mode != "recorded" else ["--all"])))
        assert first.exit_code == 0, first.stderr
        files = {ref: row["local_path"] for ref, row in rows_by_ref(env).items() if ref[0] == gone}
        assert len(files) == 3
        if mode == "all":
            # Deleted between the catalog's listing and its image list: the listing shows a new picture
            # (so the item needs catalog.productImage.list), and the item is gone when that call comes.
            portal.add_picture(gone, "MORE_PHOTO", content=b"a picture added just before the deletion")
            portal.delete_once_listed.add(gone)
        else:
            portal.delete_item(gone)
        portal.reset_stats()
        result = invoke(["-v", *env.args(portal, "--json", *args)])
        assert result.exit_code == 0, result.stderr
        summary = summary_of(result.stdout)
        assert summary["failed"] == 0 and summary["failures"] == []
        assert summary["missing"] == 3
        rows = rows_by_ref(env)
        assert {rows[ref]["status"] for ref in files} == {"missing"}
        assert all((env.dest / str(path)).exists() for path in files.values())  # the files are kept
        assert {row["status"] for ref, row in rows.items() if ref[0] != gone} == {"ok"}
        assert summary_of(result.stdout)["exit_code"] == 0
        (last, *_) = sorted(env.rows("runs"), key=lambda r: -int(r["id"]))
        assert last["exit_code"] == 0 and last["missing"] == 3 and last["failed"] == 0


def test_a_product_not_found_with_nothing_recorded_is_no_failure(env: Env) -> None:
    catalog = make_catalog(products=2, images_per_product=2, min_size=200, max_size=1500, seed=41)
    with Portal(catalog, rate_limit=1000.0, burst=1000) as portal:
        result = invoke(["-v", *env.args(portal, "--json", "--product", "424242")])
        assert result.exit_code == 0, result.stderr
        summary = summary_of(result.stdout)
        assert (summary["failed"], summary["missing"], summary["requested"]) == (0, 0, 0)
        assert "product 424242 is not found on the portal; nothing is recorded for it" in result.stderr
        assert env.rows() == []


# -- 2. a capped or stopped night marks nothing it did not touch -----------------------------------------


@pytest.mark.parametrize("cap", [("--max-downloads", "2"), ("--max-bytes", "1")])
def test_a_capped_night_leaves_the_rows_it_deferred_as_they_were(env: Env, cap: tuple[str, str]) -> None:
    catalog = make_catalog(products=2, images_per_product=6, min_size=200, max_size=1500, seed=42)
    with Portal(catalog, rate_limit=1000.0, burst=1000) as portal:
        pairs = [f"{i.product_id}:{i.image_id}" for i in portal.images()]
        assert invoke(env.args(portal, *pairs)).exit_code == 0
        before = rows_by_ref(env)
        for img in portal.images():  # every image changed since: each needs a download over its backup
            portal.replace_image(img.product_id, img.image_id, content=f"v2 of {img.image_id}".encode())
        new_sha = {(i.product_id, i.image_id): i.sha256 for i in portal.images()}
        result = invoke(env.args(portal, "--json", "--workers", "1", *cap, *pairs))
        assert result.exit_code == 5, result.stderr
        summary = summary_of(result.stdout)
        assert summary["failed"] == 0 and summary["deferred"] > 0
        rows = rows_by_ref(env)
        downloaded = [ref for ref, row in rows.items() if row["sha256"] == new_sha[ref]]
        untouched = [ref for ref in rows if ref not in downloaded]
        assert len(downloaded) == summary["downloaded"] and len(untouched) >= summary["deferred"]
        for ref in untouched:  # the status, the error and the backup it had
            row, old = rows[ref], before[ref]
            assert (row["status"], row["error"], row["sha256"]) == ("ok", None, old["sha256"]), row
            assert (env.dest / str(row["local_path"])).read_bytes() != f"v2 of {ref[1]}".encode()
        assert {row["status"] for row in rows.values()} == {"ok"}
        status = invoke(["status", "--db", str(env.db), "--failed"])
        assert "a newer version was being downloaded" not in status.stdout


def test_a_row_stops_claiming_its_backup_once_its_own_replacement_starts(env: Env) -> None:
    """The other half: a download going over a backup marks that row first (a kill before its row's commit
    must not leave an ok row describing bytes that are gone), and only that row."""
    catalog = make_catalog(products=1, images_per_product=4, min_size=2000, max_size=3000, seed=43)
    with Portal(catalog, rate_limit=1000.0, burst=1000) as portal:
        pairs = [f"{i.product_id}:{i.image_id}" for i in portal.images()]
        assert invoke(env.args(portal, *pairs)).exit_code == 0
        changed = portal.images()[0]
        portal.replace_image(changed.product_id, changed.image_id, content=b"v2" * 1500)
        portal.faults = Faults(slow_download=1.5)  # the body trickles in over 1.5 s
        settings = Settings(
            webhook_url=portal.webhook_url, dest=env.dest, db=env.db, rate_limit=1000.0, burst=1000
        )
        done: list[Summary] = []
        run = threading.Thread(target=lambda: done.append(run_sync(settings, Request(pairs=pairs))))
        run.start()
        seen: set[tuple[str, str | None]] = set()
        while run.is_alive():
            if env.db.exists():
                rows = rows_by_ref(env)
                seen |= {(str(r["status"]), r["error"]) for r in rows.values()}  # type: ignore[misc]
                others = [r for ref, r in rows.items() if ref != (changed.product_id, changed.image_id)]
                assert {r["status"] for r in others} == {"ok"}
            time.sleep(0.05)
        run.join()
        assert done and done[0].exit_code == 0 and done[0].downloaded == 1
        assert ("failed", "a newer version was being downloaded when the run stopped") in seen
        assert {r["status"] for r in env.rows()} == {"ok"}


# -- 3. an empty or shrunken catalog list is not a complete listing --------------------------------------


@pytest.fixture
def shop() -> Portal:
    items, images = make_store_catalog(
        8, parents=2, variations_per_parent=2, images_per_item=2, min_size=200, max_size=1500
    )
    return Portal(images, items=items, rate_limit=1000.0, burst=1000)


@pytest.mark.parametrize(
    ("hidden", "empty", "named"),
    [
        ({23, 25}, set(), "catalog 23"),  # catalog.catalog.list answers []
        ({25}, set(), "catalog 25"),  # the variation catalog vanished
        (set(), {25}, "catalog 25"),  # the catalog is there, its item listing answers []
    ],
)
def test_a_listing_that_lost_a_catalog_fails_and_marks_nothing(
    env: Env, shop: Portal, hidden: set[int], empty: set[int], named: str
) -> None:
    with shop as portal:
        assert {item.iblock_id for item in portal.items()} == {23, 25}
        assert invoke(env.args(portal, "--all")).exit_code == 0
        portal.hidden_catalogs = hidden
        portal.empty_catalogs = empty
        result = invoke(env.args(portal, "--json", "--all"))
        assert result.exit_code == 1, result.stderr
        summary = summary_of(result.stdout)
        assert summary["missing"] == 0 and summary["failed"] == 1
        assert named in summary["failures"][0]["reason"] and named in result.stderr
        assert {r["status"] for r in env.rows()} == {"ok"}
        assert {r["status"] for r in env.rows("products")} == {"listed"}
        # Once the catalog is back, the next listing is complete and the run is clean.
        portal.hidden_catalogs, portal.empty_catalogs = set(), set()
        assert invoke(env.args(portal, "--all")).exit_code == 0
        assert {r["status"] for r in env.rows()} == {"ok"}


def test_an_empty_catalog_list_on_a_first_run_is_no_failure(env: Env, shop: Portal) -> None:
    """Nothing was listed before: an empty answer has nothing to contradict (and marks nothing)."""
    with shop as portal:
        portal.hidden_catalogs = {23, 25}
        result = invoke(env.args(portal, "--json", "--all"))
        assert result.exit_code == 0, result.stderr
        assert summary_of(result.stdout)["requested"] == 0


# -- 4. gone marking survives a kill ---------------------------------------------------------------------


def test_gone_items_whose_images_were_not_marked_yet_are_finished_by_the_next_run(
    env: Env, shop: Portal, monkeypatch: pytest.MonkeyPatch
) -> None:
    from imgsync.store import Store

    with shop as portal:
        assert invoke(env.args(portal, "--all")).exit_code == 0
        gone = portal.items()[1].id
        files = [str(r["local_path"]) for r in env.rows() if r["product_id"] == gone]
        portal.delete_item(gone)

        # The process dies right after the items' gone mark is committed, before their images are marked.
        mark = Store.mark_gone_items

        def mark_then_die(self: Store, seen_since: str, now: str) -> int:
            mark(self, seen_since, now)
            raise RuntimeError("killed between the two writes")

        monkeypatch.setattr(Store, "mark_gone_items", mark_then_die)
        assert invoke(env.args(portal, "--all")).exit_code == 70
        monkeypatch.undo()
        products = {r["product_id"]: r["status"] for r in env.rows("products")}
        assert products[gone] == "gone"  # the premise: the item is gone, its images still ok
        assert {r["status"] for r in env.rows() if r["product_id"] == gone} == {"ok"}

        result = invoke(env.args(portal, "--json", "--all"))
        assert result.exit_code == 0, result.stderr
        assert summary_of(result.stdout)["missing"] == len(files) == 2
        assert {r["status"] for r in env.rows() if r["product_id"] == gone} == {"missing"}
        assert all((env.dest / f).exists() for f in files)
        assert {r["status"] for r in env.rows() if r["product_id"] != gone} == {"ok"}
        # And once finished, a further run has nothing more to mark.
        again = invoke(env.args(portal, "--json", "--all"))
        assert again.exit_code == 0 and summary_of(again.stdout)["missing"] == 0


# -- 5. listed ids against image lists --------------------------------------------------------------------


def test_pictures_the_listing_shows_but_the_image_list_left_out_mark_nothing_missing(
    env: Env, shop: Portal
) -> None:
    with shop as portal:
        assert invoke(env.args(portal, "--all")).exit_code == 0
        item = portal.items()[0].id
        recorded = {ref: row for ref, row in rows_by_ref(env).items() if ref[0] == item}
        assert len(recorded) == 2
        portal.add_picture(item, "MORE_PHOTO", content=b"a third picture")  # the item needs an image list
        portal.image_list_cap = 1  # ... which answers one image of three, without next
        portal.reset_stats()
        result = invoke(["-v", *env.args(portal, "--json", "--all")])
        assert result.exit_code == 0, result.stderr
        assert portal.stats.batch_commands["catalog.productImage.list"] == 1
        summary = summary_of(result.stdout)
        assert (summary["missing"], summary["downloaded"]) == (0, 1)  # the new picture, whatever the list hid
        rows = rows_by_ref(env)
        assert {rows[ref]["status"] for ref in recorded} == {"ok"}
        assert [r["status"] for ref, r in rows.items() if ref[0] == item] == ["ok"] * 3
        assert f"item {item}: the catalog listing shows pictures" in result.stderr
        assert "they are asked for one by one" in result.stderr
        # A picture really deleted is still found missing once the image list is whole again.
        portal.image_list_cap = None
        dropped = min(recorded)
        portal.delete_picture(*dropped)
        result = invoke(env.args(portal, "--json", "--all"))
        assert result.exit_code == 0, result.stderr
        assert summary_of(result.stdout)["missing"] == 1
        assert rows_by_ref(env)[dropped]["status"] == "missing"


def test_a_next_that_repeats_the_page_stops_the_paging(env: Env) -> None:
    catalog = make_catalog(products=1, images_per_product=5, min_size=200, max_size=1500, seed=44)
    with Portal(catalog, rate_limit=1000.0, burst=1000, image_page_size=2) as portal:
        product = portal.images()[0].product_id
        assert invoke(env.args(portal, "--product", str(product))).exit_code == 0
        assert len(env.rows()) == 5
        portal.image_list_ignore_start = True
        portal.reset_stats()
        result = invoke(["-v", *env.args(portal, "--json", "--product", str(product))])
        assert result.exit_code == 0, result.stderr
        assert portal.stats.batch_commands["catalog.productImage.list"] == 2  # the first page, and its repeat
        assert summary_of(result.stdout)["missing"] == 0
        assert {r["status"] for r in env.rows()} == {"ok"}
        assert f"product {product}: catalog.productImage.list answered the same page again" in result.stderr


# -- 6. --product X --all does X once ----------------------------------------------------------------------


@pytest.mark.parametrize("warm", [False, True])
def test_a_product_named_and_in_the_catalog_is_done_once(env: Env, shop: Portal, warm: bool) -> None:
    with shop as portal:
        if warm:
            assert invoke(env.args(portal, "--all")).exit_code == 0
        n_items, n_images = len(portal.items()), len(portal.images())
        named = portal.items()[3].id
        portal.reset_stats()
        result = invoke(env.args(portal, "--json", "--product", str(named), "--all"))
        assert result.exit_code == 0, result.stderr
        summary = summary_of(result.stdout)
        assert summary["requested"] == n_images  # each image counted once
        lists = portal.stats.batch_commands.get("catalog.productImage.list", 0)
        if warm:
            assert (summary["downloaded"], summary["unchanged"]) == (0, n_images)
            assert lists == 1  # the named product; the rest unchanged as listed
        else:
            assert summary["downloaded"] == n_images == portal.stats.downloads_served
            assert lists == n_items
        assert len(env.rows()) == n_images and {r["status"] for r in env.rows()} == {"ok"}
        assert {r["status"] for r in env.rows("products")} == {"listed"}


# -- 7. work order across inputs -----------------------------------------------------------------------------


def test_recorded_and_all_take_the_never_backed_up_and_the_failed_before_the_re_checks(
    env: Env, shop: Portal
) -> None:
    """A night capped to 4 downloads: a failed image and the 3 images of a new item come before the re-checks
    of the images --recorded names, though every one of those changed too."""
    with shop as portal:
        assert invoke(env.args(portal, "--all")).exit_code == 0
        recorded = sorted(rows_by_ref(env))
        for product, image in recorded:  # every recorded image changed: each re-check is a download
            portal.replace_image(product, image, content=f"v2 of {image}".encode())
        broken = recorded[-1]  # the last in every order but the work order
        con = sqlite3.connect(env.db)
        con.execute("update images set status = 'failed' where product_id = ? and image_id = ?", broken)
        con.commit()
        con.close()
        new = portal.add_item(type=1)
        for n in range(3):
            portal.add_picture(new.id, "MORE_PHOTO", content=f"new picture {n}".encode())
        result = invoke(
            env.args(portal, "--json", "--workers", "1", "--max-downloads", "4", "--recorded", "--all")
        )
        assert result.exit_code == 5, result.stderr
        assert summary_of(result.stdout)["downloaded"] == 4
        rows = rows_by_ref(env)
        fresh = {ref for ref, row in rows.items() if row["last_changed_at"] and ref[0] == new.id}
        assert len(fresh) == 3 and {rows[ref]["status"] for ref in fresh} == {"ok"}
        assert rows[broken]["status"] == "ok" and rows[broken]["sha256"] == portal.image(*broken).sha256
        # Nothing else was downloaded: the other re-checks wait for the next night.
        assert [
            ref for ref in recorded if ref != broken and rows[ref]["sha256"] == portal.image(*ref).sha256
        ] == []
