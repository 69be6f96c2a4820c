"""``imgsync check`` against the emulator and moto's S3 server: one line per check, sync's exit codes, seconds."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import Result

from imgsync.emulator import Portal, make_catalog
from imgsync.emulator.s3 import LocalS3Server

from .conftest import Env, invoke


@pytest.fixture(scope="module")
def s3() -> Iterator[LocalS3Server]:
    server = LocalS3Server().start()
    yield server
    server.stop()


def check(env: Env, portal: Portal | None, *extra: str, webhook: str | None = None) -> tuple[Result, float]:
    url = webhook or (portal.webhook_url if portal else "")
    started = time.monotonic()
    result = invoke(["check", "--webhook", url, "--db", str(env.db), *extra])
    return result, time.monotonic() - started


def lines(result: Result) -> list[str]:
    return result.stdout.splitlines()


def test_a_good_setup_passes_every_check(env: Env, portal: Portal, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMGSYNC_DEST", str(env.dest))
    result, _ = check(env, portal)
    assert result.exit_code == 0, result.output
    host = portal.url.split("://")[1].rstrip("/")
    assert lines(result) == [
        f"ok    dest: {env.dest} is writable",
        f"ok    database: {env.db} is writable (0 images recorded)",
        f"ok    portal: {host} answers, catalog scope granted",
    ]
    assert env.dest.is_dir() and list(env.dest.iterdir()) == []  # the probe file is gone
    assert portal.stats.by_method["batch"] == 1
    assert portal.stats.batch_commands["scope"] == 1
    assert portal.stats.batch_commands["catalog.productImage.list"] == 1


def test_a_wrong_webhook_code_is_exit_3_in_seconds(env: Env, portal: Portal) -> None:
    wrong = portal.webhook_url.replace(portal.webhook_code, "wrongcode0000000")
    result, took = check(env, portal, webhook=wrong)
    assert result.exit_code == 3
    assert lines(result)[2] == (
        "FAIL  portal: wrong webhook code or access token: check bitrix24.webhook_url / the OAuth tokens "
        "(NO_AUTH_FOUND: Wrong authorization data)"
    )
    assert "wrongcode0000000" not in result.output
    assert took < 5


def test_no_catalog_scope_is_exit_3(env: Env) -> None:
    with Portal(make_catalog(products=1, seed=1), scopes=("crm",), rate_limit=500, burst=500) as portal:
        result, took = check(env, portal)
    assert result.exit_code == 3
    assert lines(result)[2] == (
        "FAIL  portal: the webhook or app lacks the 'catalog' scope: add it in the portal (insufficient_scope: "
        "The request requires higher privileges than provided by the webhook token)"
    )
    assert took < 5


def test_an_unreachable_portal_is_exit_4_in_seconds(env: Env) -> None:
    with Portal() as gone:
        url = gone.webhook_url
    result, took = check(env, None, webhook=url)
    assert result.exit_code == 4
    line = lines(result)[2]
    assert line.startswith(
        "FAIL  portal: the portal stayed unavailable after 2 attempts (batch: connection to 127.0.0.1:"
    )
    assert line.endswith(" refused)")
    assert took < 5


def test_an_unwritable_dest_fails_with_exit_2_and_the_others_still_run(
    env: Env, portal: Portal, monkeypatch: pytest.MonkeyPatch
) -> None:
    env.dest.write_text("a file where the folder should be")
    monkeypatch.setenv("IMGSYNC_DEST", str(env.dest))
    result, took = check(env, portal)
    assert result.exit_code == 2
    out = lines(result)
    assert out[0].startswith(f"FAIL  dest: storage.dest {env.dest}: cannot write there (")
    assert out[1].startswith("ok    database: ") and out[2].startswith("ok    portal: ")
    assert took < 5


def test_the_first_failed_check_gives_the_exit_code(env: Env, portal: Portal, monkeypatch) -> None:
    env.dest.write_text("not a folder")
    monkeypatch.setenv("IMGSYNC_DEST", str(env.dest))
    wrong = portal.webhook_url.replace(portal.webhook_code, "wrongcode0000000")
    result, _ = check(env, portal, webhook=wrong)
    assert [line.split()[0] for line in lines(result)] == ["FAIL", "ok", "FAIL"]
    assert result.exit_code == 2  # dest (2) came before the portal (3)


def test_a_database_that_is_not_sqlite_fails(env: Env, portal: Portal) -> None:
    env.db.parent.mkdir(parents=True)
    env.db.write_text("not a database")
    result, _ = check(env, portal)
    assert result.exit_code == 2
    assert lines(result)[1] == (
        f"FAIL  database: {env.db}: not an SQLite database; refusing to start afresh over it "
        "(restore it from a backup or move it aside)"
    )


def test_no_portal_configured(env: Env) -> None:
    result = invoke(["check", "--db", str(env.db)])
    assert result.exit_code == 2
    assert lines(result)[2] == (
        "FAIL  portal: no portal configured: set bitrix24.webhook_url in imgsync.toml, IMGSYNC_WEBHOOK_URL or --webhook"
    )


def test_with_s3_a_good_bucket_is_written_and_cleaned(
    env: Env, portal: Portal, s3: LocalS3Server, aws: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    s3.create_bucket("check-good")
    monkeypatch.setenv("IMGSYNC_DEST", str(env.dest))
    args = ["--s3", "--s3-bucket", "check-good", "--s3-prefix", "img/", "--s3-endpoint-url", s3.endpoint_url]
    result, _ = check(env, portal, *args)
    assert result.exit_code == 0, result.output
    assert lines(result)[3] == (
        f"ok    s3: bucket 'check-good' at {s3.endpoint_url} is reachable and writable "
        "(wrote and deleted img/.imgsync-check)"
    )
    assert s3.client().list_objects_v2(Bucket="check-good").get("KeyCount") == 0
    puts = [r for r in s3.requests if r[0] == "PUT" and ".imgsync-check" in r[1]]
    assert len(puts) == 1


def test_with_s3_a_missing_bucket_is_exit_2_in_seconds(
    env: Env, portal: Portal, s3: LocalS3Server, aws: None
) -> None:
    args = ["--s3", "--s3-bucket", "no-such-bucket", "--s3-endpoint-url", s3.endpoint_url]
    result, took = check(env, portal, *args)
    assert result.exit_code == 2
    assert lines(result)[3] == (
        f"FAIL  s3: S3 bucket 'no-such-bucket' does not exist at {s3.endpoint_url}: create it, or fix s3.bucket "
        "(--s3-bucket, IMGSYNC_S3_BUCKET)"
    )
    assert took < 5


def test_check_leaves_no_probe_files(env: Env, portal: Portal, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("IMGSYNC_DEST", str(env.dest))
    check(env, portal)
    check(env, portal)
    assert sorted(p.name for p in env.db.parent.iterdir() if not p.name.startswith("imgsync.db")) == []
    assert list(env.dest.iterdir()) == []


def test_a_user_denied_the_catalog_is_exit_3(env: Env, portal: Portal) -> None:
    portal.deny_product(1)  # what a webhook of a user who is not an administrator gets
    result, _ = check(env, portal)
    assert result.exit_code == 3
    assert lines(result)[2] == (
        f"FAIL  portal: {portal.url.split('://')[1].rstrip('/')}: catalog.productImage.list was refused: the "
        "webhook's user must be an administrator (access denied to this product (200040300010: Access Denied))"
    )
