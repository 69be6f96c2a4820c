"""``imgsync status`` after restores: the images put back, and each restore run shown as one."""

from __future__ import annotations

import json
import re

from imgsync.emulator import Portal

from .conftest import Env, invoke

LOST = ("100:1001", "101:1004")  # two MORE_PHOTO pictures of the test catalog


def lose_and_restore(env: Env, portal: Portal) -> int:
    """Back up everything, lose two pictures on the portal, sync (marks them missing), restore them."""
    pairs = [f"{i.product_id}:{i.image_id}" for i in portal.images()]
    assert invoke(env.args(portal, *pairs)).exit_code == 0
    for pair in LOST:
        pid, iid = pair.split(":")
        portal.delete_image(int(pid), int(iid))
    assert invoke(env.args(portal, "--recorded")).exit_code == 0
    where = ["--webhook", portal.webhook_url, "--dest", str(env.dest), "--db", str(env.db)]
    return invoke(["restore", "--missing", "--no-progress", *where]).exit_code


def run_lines(text: str) -> list[str]:
    """The ``last runs`` lines, their start times blanked."""
    lines = text.split("last runs:\n", 1)[1].splitlines()
    return [re.sub(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", "<time>", line) for line in lines]


def test_status_shows_restored_images_and_restore_runs(env: Env, portal: Portal) -> None:
    assert lose_and_restore(env, portal) == 0
    result = invoke(["status", "--db", str(env.db)])
    assert result.exit_code == 0
    assert "  missing  2\n  ok       30\n" in result.stdout  # the old rows stay missing; the new ones are ok
    assert "restored: 2 images put back by imgsync restore, under new ids (adds: 2 done)\n" in result.stdout
    assert run_lines(result.stdout) == [
        "  #3     <time>  exit 0  restore: selected 2, restored 2, failed 0, deferred 0",
        "  #2     <time>  exit 0  requested 30, downloaded 0, unchanged 28, uploaded 0, missing 2, failed 0",
        "  #1     <time>  exit 0  requested 30, downloaded 30, unchanged 0, uploaded 0, missing 0, failed 0",
    ]

    data = json.loads(invoke(["status", "--db", str(env.db), "--json"]).stdout)
    assert (data["restored"], data["restore_adds"]) == (2, {"done": 2})
    assert [(r["id"], r["command"]) for r in data["runs"]] == [(3, "restore"), (2, "sync"), (1, "sync")]
    assert (data["runs"][0]["restored"], data["runs"][0]["requested"], data["runs"][0]["exit_code"]) == (
        2,
        2,
        0,
    )
    assert "restored" not in data["runs"][1]


def test_a_restore_whose_bytes_came_back_different_is_not_counted_restored(env: Env, portal: Portal) -> None:
    portal.faults.add_other_bytes = 1  # the first add stores other bytes than were sent
    assert lose_and_restore(env, portal) == 1
    text = invoke(["status", "--db", str(env.db)]).stdout
    assert "restored: 1 image put back by imgsync restore, under new ids (adds: 2 done)\n" in text
    assert (
        run_lines(text)[0] == "  #3     <time>  exit 1  restore: selected 2, restored 1, failed 1, deferred 0"
    )
    data = json.loads(invoke(["status", "--db", str(env.db), "--json"]).stdout)
    assert (data["restored"], data["runs"][0]["restored"], data["runs"][0]["failed"]) == (1, 1, 1)


def test_without_restores_status_says_nothing_of_them(env: Env, portal: Portal) -> None:
    assert invoke(env.args(portal, "100:1000")).exit_code == 0
    text = invoke(["status", "--db", str(env.db)]).stdout
    assert "restored" not in text and "restore:" not in text
    data = json.loads(invoke(["status", "--db", str(env.db), "--json"]).stdout)
    assert (data["restored"], data["restore_adds"], data["runs"][0]["command"]) == (0, {}, "sync")
