"""``imgsync verify``: re-hash the backup against the database; missing, changed, unrecorded; S3; samples."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from imgsync.emulator import Portal
from imgsync.s3 import LocalS3Server
from imgsync.store import Store
from imgsync.verify import VerifyReport, verify

from .conftest import Env, all_pairs, invoke


@pytest.fixture
def synced(env: Env, portal: Portal) -> Env:
    """A finished sync of the portal's 30 images."""
    result = invoke(env.args(portal, *all_pairs(portal)))
    assert result.exit_code == 0, result.stderr
    return env


def verify_json(env: Env, *extra: str) -> tuple[int, dict[str, Any]]:
    result = invoke(["verify", "--db", str(env.db), "--dest", str(env.dest), "--json", *extra])
    return result.exit_code, json.loads(result.stdout)


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
    assert lines[-1] == (
        f"verified 30 of 30 files in {synced.dest}: 27 ok, 1 missing, 2 changed, 1 unrecorded, 1 temporary"
    )


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
    assert "(a 30% sample)" in text.stdout.splitlines()[-1]


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
    assert isinstance(report, VerifyReport) and report.clean and report.ok == 30
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
