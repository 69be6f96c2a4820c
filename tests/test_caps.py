"""Runs that fit a night: caps stop a run with exit 5, and repeated capped runs complete the catalog; a dry run's
JSON carries its plan."""

from __future__ import annotations

import hashlib
import sqlite3
import time

import pytest

from imgsync.emulator import Faults, Portal, make_catalog

from .conftest import Env, all_pairs, file_sha256, invoke, summary_of


def sha256_of_v2(row: dict[str, object]) -> str:
    return hashlib.sha256(f"v2 of {row['product_id']}:{row['image_id']}".encode()).hexdigest()


def consistent(env: Env, portal: Portal) -> list[dict[str, object]]:
    """Every ok row's file holds the portal's bytes; nothing half-written under any name."""
    by_ref = {(i.product_id, i.image_id): i for i in portal.images()}
    con = sqlite3.connect(env.db)
    con.row_factory = sqlite3.Row
    rows = [dict(r) for r in con.execute("select * from images")]
    con.close()
    for row in rows:
        if row["status"] == "ok":
            img = by_ref[(row["product_id"], row["image_id"])]
            assert file_sha256(env.dest / str(row["local_path"])) == img.sha256
    assert [p for p in env.dest.rglob("*") if p.name.endswith(".part")] == []
    return rows


def test_max_downloads_caps_a_cold_run_and_repeated_runs_complete_the_catalog(env: Env) -> None:
    catalog = make_catalog(products=20, images_per_product=6, min_size=200, max_size=2000, seed=31)
    with Portal(catalog, rate_limit=1000.0, burst=1000) as portal:
        pairs = all_pairs(portal)
        result = invoke(env.args(portal, "--json", "--max-downloads", "50", *pairs))
        assert result.exit_code == 5, result.stderr
        summary = summary_of(result.stdout)
        assert summary["complete"] is False and summary["exit_code"] == 5
        assert summary["downloaded"] == 50 == portal.stats.downloads_served
        assert summary["deferred"] == 120 - summary["requested"] > 0
        assert "--max-downloads 50 reached" in result.stderr
        assert len([r for r in consistent(env, portal) if r["status"] == "ok"]) == 50
        (run,) = env.rows("runs")
        assert run["exit_code"] == 5

        # The next runs go on where it stopped: each downloads only images not backed up yet.
        for expected_code, expected in ((5, 50), (0, 20)):
            portal.reset_stats()
            result = invoke(env.args(portal, "--json", "--max-downloads", "50", *pairs))
            assert result.exit_code == expected_code, result.stderr
            assert summary_of(result.stdout)["downloaded"] == expected == portal.stats.downloads_served
        assert len(consistent(env, portal)) == 120
        assert summary_of(result.stdout)["complete"] is True


def test_a_cap_met_by_the_last_download_is_no_stop(env: Env) -> None:
    catalog = make_catalog(products=2, images_per_product=5, min_size=200, max_size=2000, seed=32)
    with Portal(catalog, rate_limit=1000.0, burst=1000) as portal:
        result = invoke(env.args(portal, "--json", "--max-downloads", "10", *all_pairs(portal)))
        assert result.exit_code == 0, result.stderr
        summary = summary_of(result.stdout)
        assert summary["complete"] is True and summary["deferred"] == 0 and summary["downloaded"] == 10


def test_max_duration_stops_taking_work_and_exits_5(env: Env) -> None:
    catalog = make_catalog(products=30, images_per_product=4, min_size=200, max_size=2000, seed=33)
    with Portal(catalog, rate_limit=1000.0, burst=1000) as portal:
        portal.faults = Faults(slow_download=0.3)
        result = invoke(
            env.args(portal, "--json", "--workers", "2", "--max-duration", "2s", *all_pairs(portal))
        )
        assert result.exit_code == 5, result.stderr
        summary = summary_of(result.stdout)
        assert 0 < summary["downloaded"] < 120 and summary["complete"] is False
        assert summary["deferred"] == 120 - summary["requested"]
        assert summary["duration_s"] < 10
        consistent(env, portal)


def test_a_capped_run_with_a_failure_exits_1(env: Env) -> None:
    catalog = make_catalog(products=10, images_per_product=5, min_size=200, max_size=2000, seed=34)
    with Portal(catalog, rate_limit=1000.0, burst=1000) as portal:
        first = portal.images()[0]
        portal.fail_image(first.product_id, first.image_id)
        result = invoke(env.args(portal, "--json", "--max-downloads", "5", *all_pairs(portal)))
        assert result.exit_code == 1, result.stderr
        summary = summary_of(result.stdout)
        assert summary["failed"] == 1 and summary["complete"] is False


def test_dry_run_json_lists_every_image_with_its_action(env: Env) -> None:
    catalog = make_catalog(products=3, images_per_product=3, min_size=200, max_size=2000, seed=35)
    with Portal(catalog, rate_limit=1000.0, burst=1000) as portal:
        pairs = all_pairs(portal)
        assert invoke(env.args(portal, *pairs[:4])).exit_code == 0
        changed = portal.images()[0]
        portal.replace_image(changed.product_id, changed.image_id, content=b"other bytes")
        result = invoke(env.args(portal, "--json", "--dry-run", *pairs))
        assert result.exit_code == 0, result.stderr
        summary = summary_of(result.stdout)
        assert summary["dry_run"] is True
        plan = {(p["product_id"], p["image_id"]): p for p in summary["plan"]}
        assert set(plan) == {(i.product_id, i.image_id) for i in portal.images()}
        assert plan[(changed.product_id, changed.image_id)]["action"] == "download"
        assert plan[(changed.product_id, changed.image_id)]["reason"].startswith("changed:")
        assert [p["action"] for p in summary["plan"]].count("unchanged") == 3
        assert [p["reason"] for p in summary["plan"]].count("new") == 5
        assert all(p["name"] for p in summary["plan"])


@pytest.mark.parametrize("mode", ["pairs", "product", "recorded"])
def test_capped_runs_take_what_was_never_backed_up_first(env: Env, mode: str) -> None:
    """Work order: a run capped to 5 downloads spends them on images never backed up, though changed (and a
    failed) image come first in the input; the following capped runs finish the rest. (Removing the order
    fails the pairs and --product cases; --recorded takes its order from the store's query.)"""
    catalog = make_catalog(products=4, images_per_product=5, min_size=200, max_size=2000, seed=36)
    with Portal(catalog, rate_limit=1000.0, burst=1000) as portal:
        pairs = all_pairs(portal)
        done, first = pairs[:10], pairs[10:]  # the first half in argument order is backed up, the rest new
        assert invoke(env.args(portal, *done)).exit_code == 0
        for pair in done:  # all changed since: they need downloads too, but after the never backed up ones
            product, image = map(int, pair.split(":"))
            portal.replace_image(product, image, content=f"v2 of {pair}".encode())
        broken = done[0]
        con = sqlite3.connect(env.db)  # one of them failed since (say its upload did)
        product, image = map(int, broken.split(":"))
        con.execute(
            "update images set status = 'failed' where product_id = ? and image_id = ?", [product, image]
        )
        con.commit()
        con.close()
        if mode == "pairs":
            args = pairs
        elif mode == "product":
            args = [a for pid in sorted({p.split(":")[0] for p in pairs}) for a in ("--product", pid)]
        else:  # --recorded knows only what is recorded: record the first half as never backed up
            con = sqlite3.connect(env.db)
            con.executemany(
                "insert into images (product_id, image_id, status) values (?, ?, 'failed')",
                [tuple(map(int, p.split(":"))) for p in first],
            )
            con.execute("update images set sha256 = null where status = 'failed'")
            con.commit()
            con.close()
            args = ["--recorded"]
        portal.reset_stats()
        result = invoke(env.args(portal, "--json", "--max-downloads", "5", *args))
        assert result.exit_code == 5, result.stderr
        downloaded = {
            f"{r['product_id']}:{r['image_id']}"
            for r in env.rows()
            if r["status"] == "ok" and f"{r['product_id']}:{r['image_id']}" in first
        }
        assert len(downloaded) == 5 == portal.stats.downloads_served  # five never-backed-up images
        changed = [r for r in env.rows() if f"{r['product_id']}:{r['image_id']}" in done]
        assert all(r["sha256"] != sha256_of_v2(r) for r in changed)  # none of the changed ones yet
        # Capped runs go on until everything is current: 15 more downloads, 5 a night.
        codes = [invoke(env.args(portal, "--max-downloads", "5", *args)).exit_code for _ in range(3)]
        assert codes == [5, 5, 0]
        assert {r["status"] for r in env.rows()} == {"ok"}
        consistent(env, portal)


# -- caps end the night on time: every wait of the client ends at the deadline ------------------------------
# Upper bounds only, with a margin for a loaded 2-core machine: the old code overran each by tens of seconds.
MARGIN_S = 10.0


def test_a_run_paced_by_the_bucket_ends_at_max_duration(env: Env) -> None:
    """At 0.1 requests/s each download waits ~10 s more than the one before it in the client's bucket: those
    waits end at the cap, the requests are not sent, and their images are deferred."""
    catalog = make_catalog(products=4, images_per_product=5, min_size=200, max_size=2000, seed=37)
    with Portal(catalog, rate_limit=1000.0, burst=1000) as portal:
        pairs = all_pairs(portal)
        began = time.monotonic()
        result = invoke(
            env.args(
                portal,
                "--json",
                "--rate-limit",
                "0.1",
                "--burst",
                "2",
                "--workers",
                "4",
                "--max-duration",
                "3s",
                *pairs,
            )
        )
        elapsed = time.monotonic() - began
        assert result.exit_code == 5, result.stderr
        summary = summary_of(result.stdout)
        assert summary["complete"] is False and summary["failed"] == 0
        assert summary["deferred"] == len(pairs) - summary["requested"] > 0
        assert elapsed < 3 + MARGIN_S and summary["duration_s"] < 3 + MARGIN_S
        assert "--max-duration 3s reached" in result.stderr
        rows = consistent(env, portal)
        assert len([r for r in rows if r["status"] == "ok"]) == summary["downloaded"]
        assert not [r for r in rows if r["status"] == "failed"]  # deferred work is never marked failed


def test_an_operating_time_block_longer_than_the_cap_does_not_hold_the_run(env: Env) -> None:
    """The portal blocks catalog.productImage.get for 60 s (429 OPERATION_TIME_LIMIT with its reset time): the
    client waits for the reset only until the cap, then the run ends with exit 5, nothing failed."""
    catalog = make_catalog(products=3, images_per_product=4, min_size=200, max_size=2000, seed=38)
    with Portal(catalog, rate_limit=1000.0, burst=1000) as portal:
        pairs = all_pairs(portal)
        portal.operation_limit(60.0, "catalog.productImage.get")
        began = time.monotonic()
        result = invoke(env.args(portal, "--json", "--max-duration", "3s", *pairs))
        elapsed = time.monotonic() - began
        portal.operation_limit(0, "catalog.productImage.get")
        assert result.exit_code == 5, result.stderr
        summary = summary_of(result.stdout)
        assert summary["complete"] is False and summary["failed"] == 0 and summary["downloaded"] == 0
        assert summary["deferred"] == len(pairs)
        assert elapsed < 3 + MARGIN_S
        assert portal.stats.rejected_429 > 0
        assert env.rows() == []  # nothing recorded for work that never started
        (run,) = env.rows("runs")
        assert run["exit_code"] == 5

        # The next run (the block lifted) backs everything up.
        result = invoke(env.args(portal, "--json", *pairs))
        assert result.exit_code == 0, result.stderr
        assert summary_of(result.stdout)["downloaded"] == len(pairs)
