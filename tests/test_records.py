"""The state tells the truth: what the database records after deletions, caps, stops, shrunken listings and
capped image lists is what is so, against the emulator over real HTTP."""

from __future__ import annotations

from pathlib import Path

import pytest

from imgsync.emulator import Portal, make_catalog, make_store_catalog

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
