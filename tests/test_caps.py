"""Runs that fit a night: caps stop a run with exit 5, and repeated capped runs complete the catalog; a dry run's
JSON carries its plan."""

from __future__ import annotations

import sqlite3

from imgsync.emulator import Faults, Portal, make_catalog

from .conftest import Env, all_pairs, file_sha256, invoke, summary_of


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
