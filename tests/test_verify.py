"""``imgsync verify``: re-hash the backup against the database; missing, changed, unrecorded; S3; samples."""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from imgsync.emulator import Portal
from imgsync.emulator.s3 import LocalS3Server
from imgsync.store import Store, run_lock
from imgsync.verify import verify

from .conftest import Env, all_pairs, file_sha256, invoke


@pytest.fixture
def synced(env: Env, portal: Portal) -> Env:
    """A finished sync of the portal's 30 images."""
    result = invoke(env.args(portal, *all_pairs(portal)))
    assert result.exit_code == 0, result.stderr
    return env


def verify_json(env: Env, *extra: str) -> tuple[int, dict[str, Any]]:
    result = invoke(["verify", "--db", str(env.db), "--dest", str(env.dest), "--json", *extra])
    return result.exit_code, json.loads(result.stdout)


REPAIR_HINT = (
    "run 'imgsync verify --repair' so that the next 'imgsync sync' fetches what is missing or changed again"
)


def paths(items: list[dict[str, Any]]) -> list[str]:
    return [item["path"] for item in items]


def test_a_fresh_backup_verifies_clean(synced: Env) -> None:
    result = invoke(["verify", "--db", str(synced.db), "--dest", str(synced.dest)])
    assert result.exit_code == 0, result.output
    assert result.stdout == (
        f"verified 30 of 30 files in {synced.dest}: 30 ok, 0 missing, 0 changed, 0 unrecorded, 0 temporary\n"
    )
    code, data = verify_json(synced)
    assert code == 0
    assert data["clean"] is True and (data["recorded"], data["checked"], data["ok"]) == (30, 30, 30)
    assert data["s3"] is None and data["sample_percent"] is None


def test_missing_changed_and_unrecorded_files_are_reported_with_exit_1(synced: Env) -> None:
    rows = sorted(synced.rows(), key=lambda r: (r["product_id"], r["image_id"]))
    gone, flipped, shortened = rows[0], rows[1], rows[2]
    (synced.dest / gone["local_path"]).unlink()
    flipped_path = synced.dest / flipped["local_path"]
    data = bytearray(flipped_path.read_bytes())
    data[10] ^= 0xFF  # same size, other bytes: only the hash can tell
    flipped_path.write_bytes(bytes(data))
    (synced.dest / shortened["local_path"]).write_bytes(b"short")
    (synced.dest / "999").mkdir()
    (synced.dest / "999" / "1-stray.jpg").write_bytes(b"not from the portal")
    (synced.dest / "999" / ".1-stray.jpg.k2j3h4.part").write_bytes(b"half a download")

    code, report = verify_json(synced)
    assert code == 1
    assert paths(report["missing"]) == [gone["local_path"]]
    assert paths(report["changed"]) == [flipped["local_path"], shortened["local_path"]]
    assert report["changed"][0]["detail"].startswith("sha256 ")
    assert report["changed"][1]["detail"] == f"5 bytes, recorded {shortened['size']}"
    assert report["missing"][0]["product_id"] == gone["product_id"]
    assert report["unrecorded"] == ["999/1-stray.jpg"]
    assert report["temp_files"] == ["999/.1-stray.jpg.k2j3h4.part"]
    assert (report["checked"], report["ok"], report["clean"]) == (30, 27, False)

    text = invoke(["verify", "--db", str(synced.db), "--dest", str(synced.dest)])
    assert text.exit_code == 1
    lines = text.stdout.splitlines()
    assert f"missing    {gone['local_path']}  ({gone['product_id']}:{gone['image_id']}: not there)" in lines
    assert "unrecorded 999/1-stray.jpg" in lines
    assert "temporary  999/.1-stray.jpg.k2j3h4.part  (left by an interrupted run; safe to delete)" in lines
    assert lines[-2:] == [
        f"verified 30 of 30 files in {synced.dest}: 27 ok, 1 missing, 2 changed, 1 unrecorded, 1 temporary",
        REPAIR_HINT,
    ]


def test_temporary_files_alone_are_not_a_difference(synced: Env) -> None:
    folder = synced.dest / synced.rows()[0]["local_path"].split("/")[0]
    (folder / ".1000-photo-1000.jpg.abc123.part").write_bytes(b"x")
    code, report = verify_json(synced)
    assert code == 0 and report["clean"] is True
    assert len(report["temp_files"]) == 1


def test_sample_checks_a_repeatable_part(synced: Env) -> None:
    for row in synced.rows():  # every file is gone: whatever is checked is missing
        (synced.dest / row["local_path"]).unlink()
    code, first = verify_json(synced, "--sample", "30", "--seed", "nightly")
    assert code == 1
    assert first["sample_percent"] == 30 and first["recorded"] == 30
    assert 0 < first["checked"] < 30
    assert len(first["missing"]) == first["checked"]
    assert verify_json(synced, "--sample", "30", "--seed", "nightly")[1] == first  # same seed, same part
    others = {tuple(paths(verify_json(synced, "--sample", "30", "--seed", s)[1]["missing"])) for s in "abcde"}
    assert len(others) > 1  # other seeds, other parts
    assert verify_json(synced, "--sample", "100")[1]["checked"] == 30
    text = invoke(
        ["verify", "--db", str(synced.db), "--dest", str(synced.dest), "--sample", "30", "--seed", "x"]
    )
    assert "(a 30% sample)" in text.stdout.splitlines()[-2]


def test_a_recorded_path_outside_dest_is_not_followed(synced: Env, tmp_path: Path) -> None:
    outside = tmp_path / "outside.jpg"
    outside.write_bytes(b"secret")
    con = sqlite3.connect(synced.db)
    with con:
        con.execute("update images set local_path = ? where rowid = 1", ["../../outside.jpg"])
    con.close()
    code, report = verify_json(synced)
    assert code == 1
    assert report["changed"][0]["detail"] == "the recorded path is outside the destination"


def test_verify_is_a_callable_core(synced: Env) -> None:
    with Store(synced.db) as store:
        report = verify(store, synced.dest)
    assert (report.clean, report.recorded, report.checked, report.ok) == (True, 30, 30, 30)
    row = synced.rows()[0]
    (synced.dest / row["local_path"]).write_bytes(b"damaged")
    with Store(synced.db) as store:
        report = verify(store, synced.dest)
    assert (report.clean, report.ok) == (False, 29)
    assert [(d.where, d.product_id, d.image_id) for d in report.changed] == [
        (row["local_path"], row["product_id"], row["image_id"])
    ]
    with Store(synced.db) as store, pytest.raises(ValueError):
        verify(store, synced.dest, sample=0)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--sample", "0"], "--sample"),
        (["--sample", "101"], "--sample"),
        (["--s3"], "--s3 needs a bucket"),
    ],
)
def test_usage_errors_exit_2(synced: Env, extra: list[str], message: str) -> None:
    result = invoke(["verify", "--db", str(synced.db), "--dest", str(synced.dest), *extra])
    assert result.exit_code == 2
    assert message in result.stderr


def test_no_database_exits_2(env: Env) -> None:
    result = invoke(["verify", "--db", str(env.db), "--dest", str(env.dest)])
    assert result.exit_code == 2
    assert "no state database yet" in result.stderr


def test_verify_does_not_change_the_database(synced: Env) -> None:
    before = synced.rows(), synced.rows("runs"), synced.rows("events")
    (synced.dest / synced.rows()[0]["local_path"]).unlink()
    assert verify_json(synced)[0] == 1
    assert (synced.rows(), synced.rows("runs"), synced.rows("events")) == before


# --- S3 --------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def s3_server() -> Iterator[LocalS3Server]:
    server = LocalS3Server().start()
    yield server
    server.stop()


def test_s3_objects_are_checked_with_s3(
    env: Env, portal: Portal, s3_server: LocalS3Server, aws: None
) -> None:
    bucket = "imgsync-verify-test"
    s3_server.create_bucket(bucket)
    s3_args = ["--s3", "--s3-bucket", bucket, "--s3-endpoint-url", s3_server.endpoint_url]
    result = invoke(env.args(portal, *s3_args, *all_pairs(portal)[:6]))
    assert result.exit_code == 0, result.stderr
    code, report = verify_json(env, *s3_args)
    assert code == 0
    assert report["s3"] == {"recorded": 6, "checked": 6, "ok": 6, "missing": [], "changed": []}

    rows = sorted(env.rows(), key=lambda r: r["image_id"])
    client = s3_server.client()
    client.delete_object(Bucket=bucket, Key=rows[0]["s3_key"])
    client.put_object(Bucket=bucket, Key=rows[1]["s3_key"], Body=b"someone else's bytes")
    code, report = verify_json(env, *s3_args)
    assert code == 1
    assert paths(report["s3"]["missing"]) == [rows[0]["s3_key"]]
    assert paths(report["s3"]["changed"]) == [rows[1]["s3_key"]]
    assert report["ok"] == 6  # the local files are fine
    code, report = verify_json(env)  # without --s3 only the local files are checked
    assert code == 0 and report["s3"] is None


# --- --repair --------------------------------------------------------------------------------------------------


def flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size: only the hash can tell
    path.write_bytes(bytes(data))


def verify_text(env: Env, *extra: str) -> tuple[int, list[str]]:
    result = invoke(["verify", "--db", str(env.db), "--dest", str(env.dest), *extra])
    return result.exit_code, result.stdout.splitlines()


def row_of(env: Env, product_id: int, image_id: int) -> dict[str, Any]:
    return next(r for r in env.rows() if (r["product_id"], r["image_id"]) == (product_id, image_id))


@pytest.mark.parametrize(
    ("damage", "error"), [("flip", "corrupt: sha256 differs"), ("delete", "missing file")]
)
def test_repair_makes_the_next_sync_fetch_a_bad_file_again(
    synced: Env, portal: Portal, damage: str, error: str
) -> None:
    img = portal.images()[7]
    before = row_of(synced, img.product_id, img.image_id)
    path = synced.dest / before["local_path"]
    flip_a_byte(path) if damage == "flip" else path.unlink()

    code, lines = verify_text(synced)
    assert code == 1
    assert lines[-1] == REPAIR_HINT
    sync_args = synced.args(portal, "--json", *all_pairs(portal))
    if damage == "flip":  # unrepaired, the sync trusts the row (name, size unchanged): the bad bytes stay
        result = invoke(sync_args)
        assert (result.exit_code, json.loads(result.stdout)["downloaded"]) == (0, 0)
        assert file_sha256(path) != img.sha256

    others = [r for r in synced.rows() if r["image_id"] != img.image_id]
    code, lines = verify_text(synced, "--repair")
    assert code == 1  # differences were found
    assert lines[-1] == "marked 1 image for repair: run 'imgsync sync' to fetch it again"
    after = row_of(synced, img.product_id, img.image_id)
    assert (after["status"], after["error"], after["local_path"]) == ("failed", error, None)
    for column in ("sha256", "size", "name", "type", "create_time", "detail_url"):
        assert after[column] == before[column]
    assert [r for r in synced.rows() if r["image_id"] != img.image_id] == others

    portal.reset_stats()
    result = invoke(sync_args)
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["downloaded"] == 1
    assert portal.stats.downloads_served == 1
    assert file_sha256(path) == img.sha256
    fixed = row_of(synced, img.product_id, img.image_id)
    assert (fixed["status"], fixed["error"], fixed["local_path"]) == ("ok", None, before["local_path"])
    assert verify_text(synced)[0] == 0


def test_repair_json_counts_the_rows_it_marked(synced: Env) -> None:
    rows = synced.rows()
    (synced.dest / rows[0]["local_path"]).unlink()
    flip_a_byte(synced.dest / rows[1]["local_path"])
    code, report = verify_json(synced)
    assert (code, report["repaired"]) == (1, 0)
    code, report = verify_json(synced, "--repair")
    assert (code, report["repaired"], report["clean"]) == (1, 2, False)
    assert sorted(r["error"] for r in synced.rows() if r["status"] == "failed") == [
        "corrupt: sha256 differs",
        "missing file",
    ]
    code, lines = verify_text(synced, "--repair")  # nothing claims the bad files any more
    assert lines[-1].startswith("verified 28 of 28 files")
    assert "unrecorded " + rows[1]["local_path"] in lines  # the bad bytes stay until the sync replaces them


def test_repair_with_sample_repairs_only_what_was_checked(synced: Env) -> None:
    for row in synced.rows():
        (synced.dest / row["local_path"]).unlink()
    code, report = verify_json(synced, "--sample", "30", "--seed", "nightly", "--repair")
    assert code == 1
    assert 0 < report["checked"] < 30
    assert report["repaired"] == report["checked"] == len(report["missing"])
    assert sum(r["status"] == "failed" for r in synced.rows()) == report["checked"]
    still = {(r["product_id"], r["image_id"]) for r in synced.rows() if r["local_path"] is not None}
    assert len(still) == 30 - report["checked"]
    assert not still & {(m["product_id"], m["image_id"]) for m in report["missing"]}


def test_repair_waits_for_no_sync_it_exits_75_while_one_runs(synced: Env) -> None:
    (synced.dest / synced.rows()[0]["local_path"]).unlink()
    before = synced.rows()
    with run_lock(synced.db):
        result = invoke(["verify", "--db", str(synced.db), "--dest", str(synced.dest), "--repair"])
        assert result.exit_code == 75
        assert "another imgsync sync is running" in result.stderr
        assert result.stdout == ""
        assert verify_json(synced)[0] == 1  # plain verify reads only: no lock needed
    assert synced.rows() == before
    assert verify_json(synced, "--repair")[1]["repaired"] == 1  # the lock released, it works


@pytest.mark.parametrize(
    ("damage", "error"), [("delete", "missing S3 object"), ("replace", "corrupt: S3 object differs")]
)
def test_s3_repair_makes_the_next_sync_put_the_object_again(
    env: Env, portal: Portal, s3_server: LocalS3Server, aws: None, damage: str, error: str
) -> None:
    bucket = f"imgsync-verify-repair-{damage}"
    s3_server.create_bucket(bucket)
    s3_args = ["--s3", "--s3-bucket", bucket, "--s3-endpoint-url", s3_server.endpoint_url]
    pairs = all_pairs(portal)[:6]
    assert invoke(env.args(portal, *s3_args, *pairs)).exit_code == 0
    img = portal.images()[2]
    before = row_of(env, img.product_id, img.image_id)
    client = s3_server.client()
    if damage == "delete":
        client.delete_object(Bucket=bucket, Key=before["s3_key"])
    else:
        client.put_object(Bucket=bucket, Key=before["s3_key"], Body=b"someone else's bytes")

    code, lines = verify_text(env, *s3_args)
    assert (code, lines[-1]) == (1, REPAIR_HINT)
    code, report = verify_json(env, *s3_args, "--repair")
    assert (code, report["repaired"]) == (1, 1)
    after = row_of(env, img.product_id, img.image_id)
    assert (after["status"], after["error"]) == ("failed", error)
    assert (after["s3_key"], after["s3_etag"], after["s3_sha256"]) == (None, None, None)
    assert (after["local_path"], after["sha256"], after["size"]) == (
        before["local_path"],
        before["sha256"],
        before["size"],
    )

    puts = s3_server.count("PUT", bucket)
    portal.reset_stats()
    result = invoke(env.args(portal, "--json", *s3_args, *pairs))
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["uploaded"] == 1
    assert s3_server.count("PUT", bucket) == puts + 1
    assert portal.stats.downloads_served == 0  # the local file was good: uploaded from it
    obj = client.get_object(Bucket=bucket, Key=before["s3_key"])
    assert hashlib.sha256(obj["Body"].read()).hexdigest() == img.sha256
    assert row_of(env, img.product_id, img.image_id)["status"] == "ok"
    assert verify_json(env, *s3_args)[0] == 0
