"""``sync --all``, ``--deep``, ``--recorded`` and ``--products-file`` against the emulator's catalogs over real HTTP:
every image backed up once, a warm run at the cost of the listing alone, changes costing one image listing."""

from __future__ import annotations

import math
import time
from pathlib import Path

import pytest

from imgsync.emulator import Portal, make_store_catalog

from .conftest import Env, file_sha256, invoke, summary_of

IMAGE_METHODS = ("catalog.productImage.list", "catalog.productImage.get")


@pytest.fixture
def shop() -> Portal:
    items, images = make_store_catalog(
        40,
        sets=3,
        parents=4,
        variations_per_parent=2,
        services=5,
        images_per_item=3,
        min_size=200,
        max_size=1500,
    )
    return Portal(images, items=items, rate_limit=1000.0, burst=1000)


def image_calls(portal: Portal) -> int:
    return sum(
        portal.stats.batch_commands.get(m, 0) + portal.stats.by_method.get(m, 0) for m in IMAGE_METHODS
    )


def backed_up(env: Env, portal: Portal) -> None:
    rows = {(r["product_id"], r["image_id"]): r for r in env.rows()}
    for img in portal.images():
        row = rows[(img.product_id, img.image_id)]
        assert row["status"] == "ok", row
        assert file_sha256(env.dest / row["local_path"]) == img.sha256


def test_cold_then_warm_all(env: Env, shop: Portal) -> None:
    with shop as portal:
        n_items = len(portal.items())
        n_images = len(portal.images())
        assert {item.type for item in portal.items()} >= {1, 2, 3, 4, 7}  # every kind of item
        result = invoke(env.args(portal, "--json", "--all"))
        assert result.exit_code == 0, result.stderr
        summary = summary_of(result.stdout)
        assert summary["downloaded"] == n_images == portal.stats.downloads_served  # each exactly once
        backed_up(env, portal)
        assert len(env.rows("products")) == n_items
        status = invoke(["status", "--db", str(env.db)])
        assert f"catalog:  {n_items} items listed by the last sync --all" in status.stdout

        portal.reset_stats()
        result = invoke(env.args(portal, "--json", "--all"))
        assert result.exit_code == 0, result.stderr
        summary = summary_of(result.stdout)
        assert (summary["downloaded"], summary["unchanged"]) == (0, n_images)
        assert image_calls(portal) == 0  # nothing changed: no image call at all
        assert portal.stats.batch_commands["catalog.product.list"] <= math.ceil(n_items / 50) + 2
        assert portal.stats.requests <= math.ceil(n_items / 2500) + 4
        assert portal.stats.downloads_served == 0


def test_a_changed_item_costs_one_image_listing_and_only_the_new_download(env: Env, shop: Portal) -> None:
    with shop as portal:
        assert invoke(env.args(portal, "--all")).exit_code == 0
        items = [item.id for item in portal.items()]
        gained, replaced, lost = items[0], items[1], items[2]
        portal.add_picture(gained, "MORE_PHOTO", content=b"a new picture")
        old = next(i for i in portal.images() if i.product_id == replaced)
        portal.replace_picture(replaced, old.image_id, content=b"a replacing picture")
        dropped = next(i for i in portal.images() if i.product_id == lost)
        portal.delete_picture(lost, dropped.image_id)
        portal.reset_stats()
        result = invoke(env.args(portal, "--json", "--all"))
        assert result.exit_code == 0, result.stderr
        summary = summary_of(result.stdout)
        assert portal.stats.batch_commands["catalog.productImage.list"] == 3  # one per changed item
        assert summary["downloaded"] == 2 == portal.stats.downloads_served
        assert summary["missing"] == 2  # the replaced picture's old id, and the deleted one
        rows = {(r["product_id"], r["image_id"]): r for r in env.rows()}
        assert rows[(lost, dropped.image_id)]["status"] == "missing"
        assert (env.dest / rows[(lost, dropped.image_id)]["local_path"]).exists()  # the file is kept
        backed_up(env, portal)


def test_a_deleted_item_s_images_go_missing_with_files_kept(env: Env, shop: Portal) -> None:
    with shop as portal:
        assert invoke(env.args(portal, "--all")).exit_code == 0
        gone = portal.items()[5].id
        files = [r["local_path"] for r in env.rows() if r["product_id"] == gone]
        portal.delete_item(gone)
        portal.reset_stats()
        result = invoke(env.args(portal, "--json", "--all"))
        assert result.exit_code == 0, result.stderr
        assert summary_of(result.stdout)["missing"] == len(files) == 3
        assert image_calls(portal) == 0
        assert {r["status"] for r in env.rows() if r["product_id"] == gone} == {"missing"}
        assert all((env.dest / f).exists() for f in files)
        assert next(r for r in env.rows("products") if r["product_id"] == gone)["status"] == "gone"


def test_deep_asks_every_item(env: Env, shop: Portal) -> None:
    with shop as portal:
        assert invoke(env.args(portal, "--all")).exit_code == 0
        portal.reset_stats()
        result = invoke(env.args(portal, "--json", "--all", "--deep"))
        assert result.exit_code == 0, result.stderr
        assert portal.stats.batch_commands["catalog.productImage.list"] == len(portal.items())
        assert summary_of(result.stdout)["downloaded"] == 0


def test_a_listing_error_marks_nothing_missing(env: Env, shop: Portal) -> None:
    with shop as portal:
        assert invoke(env.args(portal, "--all")).exit_code == 0
        portal.delete_item(portal.items()[0].id)
        portal.admin = False  # the catalogs' listing is refused (it needs an administrator)
        result = invoke(env.args(portal, "--json", "--all"))
        assert result.exit_code == 3, result.stderr
        assert {r["status"] for r in env.rows()} == {"ok"}
        assert {r["status"] for r in env.rows("products")} == {"listed"}


def test_listing_ids_that_never_match_are_right_only_slower(env: Env) -> None:
    items, images = make_store_catalog(10, images_per_item=2, min_size=200, max_size=1500)
    with Portal(images, items=items, rate_limit=1000.0, burst=1000, listing_ids_match=False) as portal:
        assert invoke(env.args(portal, "--all")).exit_code == 0
        portal.reset_stats()
        result = invoke(["-v", *env.args(portal, "--json", "--all")])
        assert result.exit_code == 0, result.stderr
        assert summary_of(result.stdout)["downloaded"] == 0
        assert portal.stats.batch_commands["catalog.productImage.list"] == 10
        assert "never match the recorded image ids" in result.stderr
        backed_up(env, portal)


def test_recorded_and_products_file(env: Env, shop: Portal, tmp_path: Path) -> None:
    with shop as portal:
        ids = [item.id for item in portal.items()[:4]]
        listing = tmp_path / "ids.csv"
        listing.write_text("name;productId\n" + "".join(f"x;{i}\n" for i in ids))
        result = invoke(env.args(portal, "--json", "--products-file", str(listing)))
        assert result.exit_code == 0, result.stderr
        assert summary_of(result.stdout)["downloaded"] == 12
        portal.reset_stats()
        result = invoke(env.args(portal, "--json", "--recorded"))
        assert result.exit_code == 0, result.stderr
        summary = summary_of(result.stdout)
        assert (summary["requested"], summary["unchanged"]) == (12, 12)
        assert portal.stats.requests == 1  # one batch of get for the 12 recorded images


def test_a_bad_products_file_line_exits_2_before_any_request(env: Env, shop: Portal, tmp_path: Path) -> None:
    with shop as portal:
        listing = tmp_path / "ids.txt"
        listing.write_text("100\n101\nabc\n")
        result = invoke(env.args(portal, "--products-file", str(listing)))
        assert result.exit_code == 2
        assert f"{listing}:3: product id 'abc' is not a positive integer" in result.stderr
        assert portal.stats.requests == 0


def test_dry_run_all_changes_nothing(env: Env, shop: Portal) -> None:
    with shop as portal:
        result = invoke(env.args(portal, "--json", "--dry-run", "--all"))
        assert result.exit_code == 0, result.stderr
        summary = summary_of(result.stdout)
        assert len(summary["plan"]) == len(portal.images())
        assert {p["action"] for p in summary["plan"]} == {"download"}
        assert not env.db.exists() and not env.dest.exists()
        assert portal.stats.downloads_served == 0


def test_a_warm_all_stops_between_pages_at_max_duration(env: Env) -> None:
    """Listing pages are work: paced at one request every ~3 s, a warm --all capped at 7.5 s lists the catalogs
    and the first pages (t = 0, 3, 6 s), then its wait for the next chain ends at the cap. What it listed is
    recorded, nothing is marked gone or missing (the listing is not complete), exit 5."""
    items, images = make_store_catalog(
        120, parents=10, variations_per_parent=2, images_per_item=1, min_size=100, max_size=300, seed=5
    )
    with Portal(images, items=items, rate_limit=1000.0, burst=1000) as portal:
        assert invoke(env.args(portal, "--all")).exit_code == 0
        checked = {(r["product_id"], r["image_id"]): r["last_checked_at"] for r in env.rows()}
        began = time.monotonic()
        result = invoke(
            env.args(
                portal, "--json", "--all", "--rate-limit", "0.333", "--burst", "2", "--max-duration", "7.5s"
            )
        )
        elapsed = time.monotonic() - began
        assert result.exit_code == 5, result.stderr
        summary = summary_of(result.stdout)
        assert summary["complete"] is False and summary["failed"] == 0 and summary["missing"] == 0
        assert 0 < summary["unchanged"] < len(images)
        assert elapsed < 7.5 + 10
        rows = env.rows()
        assert {r["status"] for r in rows} == {"ok"}
        # Recorded as it went: exactly the images of the pages it listed were checked by this run.
        rechecked = [r for r in rows if r["last_checked_at"] != checked[(r["product_id"], r["image_id"])]]
        assert len(rechecked) == summary["unchanged"]
        assert {p["status"] for p in env.rows("products")} == {"listed"}
        assert [r["exit_code"] for r in env.rows("runs")] == [0, 5]
