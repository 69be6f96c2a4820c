"""S3 end to end: the CLI against the portal emulator and moto's S3 server, both over real HTTP on 127.0.0.1.

PUTs are counted on the server side (:attr:`LocalS3Server.requests` records every request that reached it),
so "no upload" means no PUT arrived, whatever the client believes it did.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import boto3
import pytest
from click.testing import Result

from imgsync.emulator import Portal, make_catalog
from imgsync.emulator.s3 import LocalS3Server
from imgsync.emulator.server import Reply, Request
from imgsync.errors import S3SetupError, UploadError
from imgsync.models import ImageRef, ObjectInfo, PortalImage
from imgsync.s3 import S3Uploader, decode_skip_fields, encode_skip_fields, object_metadata

from .conftest import Env, all_pairs, invoke, sha256, summary_of

_names = itertools.count(1)


@pytest.fixture(scope="module")
def s3() -> Iterator[LocalS3Server]:
    server = LocalS3Server().start()
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def aws_env(aws: None) -> None:
    """Every test here runs with the dummy credentials of ``conftest.aws``."""


@pytest.fixture
def bucket(s3: LocalS3Server) -> str:
    """A fresh bucket per test (moto's state is shared by the whole process)."""
    name = f"imgsync-test-{next(_names)}"
    s3.create_bucket(name)
    return name


def s3_args(server: LocalS3Server, bucket: str, *extra: str) -> list[str]:
    return ["--s3", "--s3-bucket", bucket, "--s3-endpoint-url", server.endpoint_url, *extra]


def objects(server: LocalS3Server, bucket: str) -> dict[str, dict[str, Any]]:
    """Every object of ``bucket``: its bytes' sha256, metadata, content type, ETag and LastModified."""
    client = server.client()
    out = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for item in page.get("Contents", []):
            obj = client.get_object(Bucket=bucket, Key=item["Key"])
            out[item["Key"]] = {
                "sha256": sha256(obj["Body"].read()),
                "metadata": obj["Metadata"],
                "content_type": obj["ContentType"],
                "etag": obj["ETag"].strip('"'),
                "last_modified": obj["LastModified"],
            }
    return out


def key_of(img: Any, prefix: str = "") -> str:
    return f"{prefix}{img.product_id}/{img.image_id}-{img.name}"


def in_s3(env: Env, server: LocalS3Server, bucket: str, portal: Portal, prefix: str = "") -> dict[str, Any]:
    """Every image of the portal is in the bucket with its bytes and metadata, and its row says so."""
    stored = objects(server, bucket)
    rows = {(r["product_id"], r["image_id"]): r for r in env.rows()}
    for img in portal.images():
        obj = stored[key_of(img, prefix)]
        assert obj["sha256"] == img.sha256
        assert obj["metadata"] == {
            "sha256": img.sha256,
            "product-id": str(img.product_id),
            "image-id": str(img.image_id),
            # what the skip rule compares, for `imgsync rebuild --from-s3`
            "name": quote(img.name, safe=""),
            "type": img.type,
            "create-time": quote(img.create_time, safe=""),
            "detail-url": quote(img.detail_url, safe=""),
        }
        assert obj["content_type"] == img.content_type
        row = rows[(img.product_id, img.image_id)]
        assert row["status"] == "ok", row
        assert (row["s3_key"], row["s3_etag"], row["s3_sha256"]) == (
            key_of(img, prefix),
            obj["etag"],
            img.sha256,
        )
    return stored


def assert_no_secret(result: Result, secret: str) -> None:
    assert secret not in result.stdout and secret not in result.stderr


# --- the happy path -------------------------------------------------------------------------------------------


def test_cold_sync_uploads_every_image_and_warm_rerun_puts_nothing(
    env: Env, portal: Portal, s3: LocalS3Server, bucket: str
) -> None:
    pairs = all_pairs(portal)
    args = s3_args(s3, bucket, "--s3-prefix", "bitrix24/images/", "--json", *pairs)

    result = invoke(env.args(portal, "--dry-run", *args))
    assert result.exit_code == 0, result.stderr
    assert s3.count("PUT", bucket) == 0 and objects(s3, bucket) == {}

    result = invoke(env.args(portal, *args))
    assert result.exit_code == 0, result.stderr
    summary = summary_of(result.stdout)
    assert (summary["downloaded"], summary["uploaded"], summary["failed"]) == (30, 30, 0)
    assert s3.count("PUT", bucket) == 30
    before = in_s3(env, s3, bucket, portal, "bitrix24/images/")
    assert len(before) == 30
    events = env.rows("events")
    assert sum(e["action"] == "uploaded" for e in events) == 30

    portal.reset_stats()
    result = invoke(env.args(portal, *args))
    assert result.exit_code == 0, result.stderr
    summary = summary_of(result.stdout)
    assert (summary["downloaded"], summary["unchanged"], summary["uploaded"]) == (0, 30, 0)
    assert portal.stats.downloads_served == 0
    assert s3.count("PUT", bucket) == 30  # not one more
    assert objects(s3, bucket) == before  # same ETags, same LastModified


def test_changed_image_is_uploaded_again_under_the_same_key(
    env: Env, portal: Portal, s3: LocalS3Server, bucket: str
) -> None:
    pairs = all_pairs(portal)
    assert invoke(env.args(portal, *s3_args(s3, bucket, *pairs))).exit_code == 0
    old = portal.images()[4]
    new = portal.replace_image(old.product_id, old.image_id, content=b"\x89PNG\r\n\x1a\nnew picture bytes")
    puts = s3.count("PUT", bucket)

    result = invoke(env.args(portal, *s3_args(s3, bucket, "--json", *pairs)))
    assert result.exit_code == 0, result.stderr
    summary = summary_of(result.stdout)
    assert (summary["downloaded"], summary["uploaded"]) == (1, 1)
    assert s3.count("PUT", bucket) == puts + 1
    stored = in_s3(env, s3, bucket, portal)
    assert stored[key_of(new)]["sha256"] == sha256(b"\x89PNG\r\n\x1a\nnew picture bytes") != old.sha256
    assert len(stored) == 30


def test_objects_already_in_place_are_recorded_not_sent_and_force_sends_them(
    env: Env, portal: Portal, s3: LocalS3Server, bucket: str
) -> None:
    pairs = all_pairs(portal)[:6]
    assert invoke(env.args(portal, *s3_args(s3, bucket, *pairs))).exit_code == 0
    puts = s3.count("PUT", bucket)
    for path in env.db.parent.glob(env.db.name + "*"):
        path.unlink()  # the database is lost; the bucket still holds everything

    result = invoke(env.args(portal, *s3_args(s3, bucket, "--json", *pairs)))
    assert result.exit_code == 0, result.stderr
    summary = summary_of(result.stdout)
    assert (summary["downloaded"], summary["uploaded"]) == (6, 0)
    assert s3.count("PUT", bucket) == puts
    rows = env.rows()
    assert all(r["s3_key"] and r["s3_etag"] and r["s3_sha256"] == r["sha256"] for r in rows)

    result = invoke(env.args(portal, *s3_args(s3, bucket, "--force", "--json", *pairs)))
    assert result.exit_code == 0, result.stderr
    assert summary_of(result.stdout)["uploaded"] == 6
    assert s3.count("PUT", bucket) == puts + 6


def test_keep_local_false_leaves_no_files_and_rerun_downloads_nothing(
    env: Env, portal: Portal, s3: LocalS3Server, bucket: str, tmp_path: Path
) -> None:
    config = tmp_path / "imgsync.toml"
    config.write_text(
        f'[storage]\nkeep_local = false\n[s3]\nenabled = true\nbucket = "{bucket}"\n'
        f'endpoint_url = "{s3.endpoint_url}"\n'
    )
    args = ["--config", str(config), *env.args(portal, "--json", *all_pairs(portal))]
    result = invoke(args)
    assert result.exit_code == 0, result.stderr
    assert summary_of(result.stdout)["uploaded"] == 30
    assert [p for p in env.dest.rglob("*") if p.is_file()] == []
    assert all(r["local_path"] is None for r in env.rows())
    in_s3(env, s3, bucket, portal)

    portal.reset_stats()
    puts = s3.count("PUT", bucket)
    result = invoke(args)
    assert result.exit_code == 0, result.stderr
    summary = summary_of(result.stdout)
    assert (summary["downloaded"], summary["unchanged"], summary["uploaded"]) == (0, 30, 0)
    assert portal.stats.downloads_served == 0
    assert s3.count("PUT", bucket) == puts


def test_multipart_upload_of_a_large_image_round_trips(env: Env, s3: LocalS3Server, bucket: str) -> None:
    # 12 MiB over the default 8 MiB threshold: two parts (moto, like S3, wants parts of 5 MiB or more).
    size = 12 * 1024 * 1024 + 123
    with Portal(make_catalog(1, 1, size, size, seed=4), rate_limit=1000.0, burst=1000) as portal:
        result = invoke(env.args(portal, *s3_args(s3, bucket, "--json", *all_pairs(portal))))
        assert result.exit_code == 0, result.stderr
        stored = in_s3(env, s3, bucket, portal)
    (key,) = stored
    assert stored[key]["etag"].endswith("-2")  # the ETag of a two-part upload
    parts = [r for r in s3.requests if r[0] == "PUT" and r[1] == f"/{bucket}/{key}"]
    assert sorted(q.split("partNumber=")[1].split("&")[0] for _, _, q in parts) == ["1", "2"]


# --- failures -------------------------------------------------------------------------------------------------


def test_s3_down_mid_run_fails_images_and_rerun_uploads_them_without_downloading(
    env: Env, bucket: str
) -> None:
    catalog = make_catalog(products=4, images_per_product=3, min_size=500, max_size=3000, seed=9)
    server = LocalS3Server().start()
    port = server.port
    server.create_bucket(bucket)
    portal = Portal(catalog, rate_limit=1000.0, burst=1000)
    served = itertools.count(1)
    handle = portal.handle

    def stop_s3_after_four_downloads(request: Request) -> Reply:
        if request.path.startswith("/rest/download") and next(served) == 5:
            server.stop()
        return handle(request)

    portal.handle = stop_s3_after_four_downloads  # type: ignore[method-assign]
    try:
        with portal:
            pairs = all_pairs(portal)
            result = invoke(env.args(portal, *s3_args(server, bucket, "--json", *pairs)))
            assert result.exit_code == 1, result.stderr
            summary = summary_of(result.stdout)
            assert summary["downloaded"] == 12 and summary["failed"] >= 8
            failed = [r for r in env.rows() if r["status"] == "failed"]
            assert len(failed) == summary["failed"]
            assert all(r["error"].startswith(f"upload failed: s3://{bucket}/") for r in failed)
            assert all(f"cannot reach S3 at {server.endpoint_url}" in r["error"] for r in failed)
            assert "cannot reach S3" in result.stderr

            server = LocalS3Server(port).start()  # back on the same port
            server.create_bucket(bucket)
            # moto keeps its objects in process memory: a PUT cut off by the stop may have landed. Such an
            # object is recorded on the rerun (HEAD shows the same sha256), not sent again.
            landed = objects(server, bucket)
            resend = [
                r
                for r in failed
                if landed.get(r["s3_key"] or r["local_path"], {}).get("sha256") != r["sha256"]
            ]
            portal.reset_stats()
            result = invoke(env.args(portal, *s3_args(server, bucket, "--json", *pairs)))
            assert result.exit_code == 0, result.stderr
            summary = summary_of(result.stdout)
            assert (summary["downloaded"], summary["uploaded"], summary["failed"]) == (0, len(resend), 0)
            assert server.count("PUT", bucket) == len(resend) > 0
            assert portal.stats.downloads_served == 0
            assert server.port == port
            in_s3(env, server, bucket, portal)
    finally:
        server.stop()


def test_missing_bucket_exits_2_before_any_download(env: Env, portal: Portal, s3: LocalS3Server) -> None:
    portal.reset_stats()
    result = invoke(env.args(portal, *s3_args(s3, "no-such-bucket", *all_pairs(portal))))
    assert result.exit_code == 2
    assert result.stderr == (
        f"imgsync: error: S3 bucket 'no-such-bucket' does not exist at {s3.endpoint_url}: create it, or fix "
        "s3.bucket (--s3-bucket, IMGSYNC_S3_BUCKET)\n"
    )
    assert portal.stats.requests == 0


def test_unreachable_endpoint_exits_2_before_any_download(env: Env, portal: Portal, bucket: str) -> None:
    gone = LocalS3Server().start()
    gone.stop()  # a port where nothing listens
    portal.reset_stats()
    result = invoke(env.args(portal, *s3_args(gone, bucket, *all_pairs(portal))))
    assert result.exit_code == 2
    assert result.stderr.startswith(
        f"imgsync: error: cannot reach S3 at {gone.endpoint_url} (bucket '{bucket}'): "
    )
    assert result.stderr.endswith("; check s3.endpoint_url and that the server is running\n")
    assert portal.stats.requests == 0


def test_no_credentials_exits_3_saying_what_to_set(
    env: Env, portal: Portal, s3: LocalS3Server, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    portal.reset_stats()
    result = invoke(env.args(portal, *s3_args(s3, bucket, *all_pairs(portal))))
    assert result.exit_code == 3
    assert result.stderr == (
        f"imgsync: error: no AWS credentials found for S3 bucket '{bucket}' at {s3.endpoint_url}: set "
        "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE (a profile in ~/.aws/credentials), or run "
        "with an instance or task role\n"
    )
    assert portal.stats.requests == 0


@pytest.fixture
def iam_enforced(s3: LocalS3Server, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """moto checks signatures and IAM policies from now on (it accepts anything by default); yields an IAM
    client for creating users. Restored after the test."""
    from moto import settings
    from moto.core.authorization import ActionAuthenticatorMixin

    client = boto3.session.Session().client(
        "iam",
        endpoint_url=s3.endpoint_url,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    monkeypatch.setattr(ActionAuthenticatorMixin, "request_count", 0)
    monkeypatch.setattr(settings, "INITIAL_NO_AUTH_ACTION_COUNT", 0)
    yield client


def _user(iam: Any, name: str, actions: list[str] | None) -> dict[str, str]:
    from moto import settings

    enforced, settings.INITIAL_NO_AUTH_ACTION_COUNT = settings.INITIAL_NO_AUTH_ACTION_COUNT, float("inf")
    try:
        iam.create_user(UserName=name)
        if actions:
            policy = {
                "Version": "2012-10-17",
                "Statement": [{"Effect": "Allow", "Action": actions, "Resource": "*"}],
            }
            iam.put_user_policy(UserName=name, PolicyName="imgsync", PolicyDocument=json.dumps(policy))
        key: dict[str, str] = iam.create_access_key(UserName=name)["AccessKey"]
    finally:
        settings.INITIAL_NO_AUTH_ACTION_COUNT = enforced
    return key


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("unknown key", "the access key id is not known to the server"),
        ("wrong secret", "the secret key does not match the access key id"),
        ("no permission", "access denied"),
    ],
)
def test_refused_credentials_exit_3_and_never_show_the_secret(
    env: Env,
    portal: Portal,
    s3: LocalS3Server,
    bucket: str,
    iam_enforced: Any,
    monkeypatch: pytest.MonkeyPatch,
    case: str,
    reason: str,
) -> None:
    key = _user(iam_enforced, f"nobody-{next(_names)}", None)
    key_id, secret = key["AccessKeyId"], key["SecretAccessKey"]
    if case == "unknown key":
        key_id = "AKIAIMGSYNCUNKNOWN00"
    elif case == "wrong secret":
        secret = "Wr0ngS3cretKeyWr0ngS3cretKey/imgsync+xyz"
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key_id)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    portal.reset_stats()
    result = invoke(["-vv", *env.args(portal, "--json", *s3_args(s3, bucket, *all_pairs(portal)))])
    assert result.exit_code == 3
    assert result.stderr.splitlines(keepends=True)[-1] == (
        f"imgsync: error: S3 refused access to bucket '{bucket}' at {s3.endpoint_url}: {reason}. Check the AWS "
        "credentials (from the environment: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY) and that they allow "
        "s3:ListBucket on the bucket\n"
    )
    assert_no_secret(result, secret)
    assert portal.stats.requests == 0


def test_upload_refused_fails_each_image_not_the_run(
    env: Env,
    portal: Portal,
    s3: LocalS3Server,
    bucket: str,
    iam_enforced: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # moto checks HeadBucket as "s3:HeadBucket" (AWS itself authorises it with s3:ListBucket).
    key = _user(iam_enforced, f"reader-{next(_names)}", ["s3:HeadBucket", "s3:ListBucket", "s3:GetObject"])
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key["AccessKeyId"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", key["SecretAccessKey"])
    pairs = all_pairs(portal)[:3]
    result = invoke(env.args(portal, "--json", *s3_args(s3, bucket, *pairs)))
    assert result.exit_code == 1
    summary = summary_of(result.stdout)
    assert (summary["downloaded"], summary["uploaded"], summary["failed"]) == (3, 0, 3)
    failures = {(f["product_id"], f["image_id"]): f["reason"] for f in summary["failures"]}
    rows = env.rows()
    assert len(rows) == 3
    for row in rows:
        assert row["status"] == "failed"
        # Ours: the image's object and the endpoint named, "refused access"; the parenthesis after it is the
        # store's own answer, which differs between servers and botocore versions.
        assert row["error"].startswith(
            f"upload failed: s3://{bucket}/{row['local_path']}: S3 at {s3.endpoint_url} refused access ("
        )
        assert failures[(row["product_id"], row["image_id"])] == row["error"]
    assert_no_secret(result, key["SecretAccessKey"])
    from moto import settings

    monkeypatch.setattr(settings, "INITIAL_NO_AUTH_ACTION_COUNT", float("inf"))  # to look inside
    assert objects(s3, bucket) == {}


# --- the pieces -----------------------------------------------------------------------------------------------


def test_uploader_head_put_and_verify(s3: LocalS3Server, bucket: str, tmp_path: Path) -> None:
    uploader = S3Uploader(bucket, "p/", s3.endpoint_url, checksums=True)
    uploader.check()
    assert uploader.key_for("12/345-a.png") == "p/12/345-a.png"
    assert uploader.head("p/none") is None
    foreign = s3.client().put_object(
        Bucket=bucket, Key="p/foreign", Body=b"not ours"
    )  # not written by imgsync
    assert uploader.head("p/foreign") == ObjectInfo(
        sha256=None,
        size=8,
        etag=foreign["ETag"].strip('"'),
        content_type="binary/octet-stream",
        metadata={},
        fingerprint=None,
    )
    path = tmp_path / "a.png"
    path.write_bytes(b"picture")
    etag = uploader.put(
        path,
        "p/12/345-a.png",
        sha256=sha256(b"picture"),
        size=7,
        content_type="image/png",
        ref=ImageRef(12, 345),
    )
    assert uploader.head("p/12/345-a.png") == ObjectInfo(
        sha256=sha256(b"picture"),
        size=7,
        etag=etag,
        content_type="image/png",
        metadata={"sha256": sha256(b"picture"), "product-id": "12", "image-id": "345"},
        fingerprint=None,  # put without the image: no skip-rule fields
        checksum_sha256=base64.b64encode(hashlib.sha256(b"picture").digest()).decode(),  # the store checked
    )
    with pytest.raises(UploadError, match=r"a.png has 7 bytes, the database says 8$"):
        uploader.put(path, "p/x", sha256="0" * 64, size=8, content_type="image/png", ref=ImageRef(1, 2))
    with pytest.raises(UploadError, match=r"^s3://.*/p/x: cannot read .*: No such file or directory$"):
        uploader.put(tmp_path / "gone", "p/x", sha256="0" * 64, size=8, content_type="", ref=ImageRef(1, 2))


def test_local_server_sets_dummy_credentials_only_while_running(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with LocalS3Server() as server:
        assert server.endpoint_url.startswith("http://127.0.0.1:")
        assert os.environ["AWS_ACCESS_KEY_ID"] == "testing"
        server.create_bucket("imgsync-demo")
        server.create_bucket("imgsync-demo")  # again: no error
        S3Uploader("imgsync-demo", endpoint_url=server.endpoint_url).check()
    assert "AWS_ACCESS_KEY_ID" not in os.environ


def test_local_server_on_a_taken_port_is_an_error() -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        port = holder.getsockname()[1]
        with pytest.raises(S3SetupError, match=f"^cannot start the local S3 server on 127.0.0.1:{port}: "):
            LocalS3Server(port).start()


def test_demo_with_s3_runs_offline_twice(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    result = invoke(["demo", "--s3", "--dir", str(tmp_path / "demo"), "--products", "2"])
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    first = next(line for line in lines if line.startswith("first run:"))
    second = next(line for line in lines if line.startswith("second run:"))
    assert "downloaded 6," in first and "uploaded 6," in first
    assert "downloaded 0," in second and "uploaded 0," in second
    assert "S3:       bucket imgsync-demo" in result.stdout


# --- the skip rule's fields in the metadata ---------------------------------------------------------------------

AWKWARD = [
    ("café crème.jpg", "MORE_PHOTO", "2024-10-17T10:48:05+02:00", "/upload/iblock/1a2/x/café crème.jpg"),
    ("🍕 pizza 🍕.png", "DETAIL_PICTURE", "", "/upload/🍕.png"),
    ('it\'s a "quote" & more.jpg', "t y p e", "2024-01-01T00:00:00+00:00", "/a?b=c&d=%41#frag"),
    ("100% cotton.jpg", "%", "%41", "%%"),
    ("", "", "", ""),
]


@pytest.mark.parametrize("fields", AWKWARD)
def test_skip_fields_round_trip_through_ascii_metadata(fields: tuple[str, str, str, str]) -> None:
    encoded = encode_skip_fields(*fields)
    assert set(encoded) == {"name", "type", "create-time", "detail-url"}
    for value in encoded.values():
        assert value.isascii() and " " not in value and '"' not in value
        value.encode("latin-1")  # what an HTTP header can carry
    assert decode_skip_fields(encoded) == fields


def test_skip_fields_are_percent_encoded_utf8() -> None:
    assert encode_skip_fields("é 1%.jpg", "A", "B", "/c d")["name"] == "%C3%A9%201%25.jpg"
    assert decode_skip_fields({"sha256": "x"}) is None  # an object uploaded before they were written


@pytest.mark.parametrize(
    ("metadata", "problem"),
    [
        ({"name": "a", "type": "b", "create-time": "c"}, "detail-url missing"),
        ({"name": "%C3", "type": "b", "create-time": "c", "detail-url": "d"}, "name is not percent-encoded"),
        ({"name": "a", "type": "b", "create-time": "c", "detail-url": "50%"}, "detail-url is not percent"),
        ({"name": "a b", "type": "b", "create-time": "c", "detail-url": "d"}, "name is not percent-encoded"),
    ],
)
def test_damaged_skip_fields_are_an_error_not_a_guess(metadata: dict[str, str], problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        decode_skip_fields(metadata)


def test_skip_fields_too_long_for_s3_are_left_out() -> None:
    image = PortalImage(1, 2, "é" * 400 + ".jpg", "MORE_PHOTO", "t", "/u/" + "é" * 400, "")
    metadata = object_metadata("0" * 64, ImageRef(1, 2), image)
    assert metadata == {"sha256": "0" * 64, "product-id": "1", "image-id": "2"}


def test_awkward_names_reach_s3_and_come_back(s3: LocalS3Server, bucket: str, tmp_path: Path) -> None:
    uploader = S3Uploader(bucket, "", s3.endpoint_url)
    path = tmp_path / "f"
    path.write_bytes(b"bytes")
    for n, fields in enumerate(AWKWARD, 1):
        image = PortalImage(7, n, *fields, download_url="")
        uploader.put(
            path,
            f"7/{n}",
            sha256=sha256(b"bytes"),
            size=5,
            content_type="image/jpeg",
            ref=image.ref,
            image=image,
        )
        found = uploader.head(f"7/{n}")
        assert found is not None and found.fingerprint == fields


def test_object_without_skip_fields_is_sent_again_with_them_when_the_database_is_lost(
    env: Env, portal: Portal, s3: LocalS3Server, bucket: str, tmp_path: Path
) -> None:
    # An object as imgsync uploaded it before the skip-rule fields were written: same bytes, old metadata.
    img = portal.images()[0]
    client = s3.client()
    legacy = {"sha256": img.sha256, "product-id": str(img.product_id), "image-id": str(img.image_id)}
    client.put_object(Bucket=bucket, Key=key_of(img), Body=img.content, Metadata=legacy)
    puts = s3.count("PUT", bucket)

    result = invoke(env.args(portal, *s3_args(s3, bucket, "--json", f"{img.product_id}:{img.image_id}")))
    assert result.exit_code == 0, result.stderr
    assert summary_of(result.stdout)["uploaded"] == 1
    assert s3.count("PUT", bucket) == puts + 1
    assert objects(s3, bucket)[key_of(img)]["metadata"]["name"] == quote(img.name, safe="")


def test_a_profile_that_is_not_there_exits_3_naming_it(
    env: Env, portal: Portal, s3: LocalS3Server, bucket: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    config = tmp_path / "aws-config"
    config.write_text("[profile other]\nregion = us-east-1\n")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    monkeypatch.setenv("AWS_PROFILE", "nightly")
    portal.reset_stats()
    result = invoke(env.args(portal, *s3_args(s3, bucket, *all_pairs(portal))))
    assert result.exit_code == 3
    # botocore words the first half ("The config profile (nightly) could not be found"); ours is the advice.
    assert result.stderr.startswith("imgsync: error: ")
    assert "(nightly)" in result.stderr
    assert result.stderr.endswith(": fix AWS_PROFILE or add the profile to ~/.aws/config\n")
    assert portal.stats.requests == 0


def test_a_failing_credential_source_exits_3_with_its_own_words(
    env: Env, portal: Portal, s3: LocalS3Server, bucket: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A ``credential_process`` (as SSO helpers and vaults use) that fails: exit 3 before any request."""
    helper = tmp_path / "vault-helper"
    helper.write_text("#!/bin/sh\necho 'vault sealed' >&2\nexit 1\n")
    helper.chmod(0o755)
    config = tmp_path / "aws-config"
    config.write_text(f"[profile nightly]\ncredential_process = {helper}\n")
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    monkeypatch.setenv("AWS_PROFILE", "nightly")
    portal.reset_stats()
    result = invoke(env.args(portal, *s3_args(s3, bucket, *all_pairs(portal))))
    assert result.exit_code == 3
    assert result.stderr.startswith(f"imgsync: error: cannot load AWS credentials for S3 bucket '{bucket}': ")
    assert "vault sealed" in result.stderr  # the helper's own words tell what to fix
    assert portal.stats.requests == 0


def _client_error(code: str, status: int, operation: str = "HeadObject") -> Exception:
    from botocore.exceptions import ClientError

    return ClientError(
        {
            "Error": {"Code": code, "Message": f"{code} message"},
            "ResponseMetadata": {"HTTPStatusCode": status},
        },
        operation,
    )


class _RefusingClient:
    """Answers the GET that asks why a HEAD was refused, as S3 does (the only call ``_translate`` makes)."""

    def list_objects_v2(self, **_: Any) -> None:
        raise _client_error("SignatureDoesNotMatch", 403, "ListObjectsV2")


#: In a message of the table below: the exception's own text, botocore's words (they change between versions).
EXC = "<str(exc)>"


def _translation_cases() -> list[Any]:
    from boto3.exceptions import S3UploadFailedError
    from botocore.exceptions import (
        CredentialRetrievalError,
        EndpointConnectionError,
        NoCredentialsError,
        ProfileNotFound,
        ReadTimeoutError,
    )
    from s3transfer.exceptions import RetriesExceededError

    wrapped = S3UploadFailedError("Failed to upload /x to b/k: An error occurred (AccessDenied)")
    wrapped.__cause__ = _client_error("AccessDenied", 403, "PutObject")
    where = "http://127.0.0.1:9"
    c = pytest.param
    return [
        # one object: UploadError (that image fails), never S3SetupError
        c(
            "key",
            _client_error("NoSuchBucket", 404),
            None,
            f"s3://b/k: bucket 'b' does not exist at {where}",
            id="object-no-bucket",
        ),
        c(
            "key",
            _client_error("AccessDenied", 403),
            None,
            f"s3://b/k: S3 at {where} refused access (access denied)",
            id="object-denied",
        ),
        c(
            "key",
            wrapped,
            None,
            f"s3://b/k: S3 at {where} refused access (access denied)",
            id="object-denied-wrapped",
        ),
        c(
            "key",
            EndpointConnectionError(endpoint_url=where),
            None,
            f"s3://b/k: cannot reach S3 at {where} (EndpointConnectionError)",
            id="object-unreachable",
        ),
        c(
            "key",
            ReadTimeoutError(endpoint_url=where),
            None,
            f"s3://b/k: cannot reach S3 at {where} (ReadTimeoutError)",
            id="object-timeout",
        ),
        c(
            "key",
            RetriesExceededError(ValueError("part 3")),
            None,
            f"s3://b/k: RetriesExceededError: {EXC}",
            id="object-transfer",
        ),
        c(
            "key",
            _client_error("InternalError", 500),
            None,
            "s3://b/k: InternalError: InternalError message",
            id="object-other",
        ),
        # the bucket check: S3SetupError, exit 3 for credentials, else 2
        c(
            "check",
            _client_error("404", 404, "HeadBucket"),
            2,
            f"S3 bucket 'b' does not exist at {where}: create it, or fix s3.bucket (--s3-bucket, IMGSYNC_S3_BUCKET)",
            id="check-no-bucket",
        ),
        c(
            "check",
            _client_error("403", 403, "HeadBucket"),
            3,
            f"S3 refused access to bucket 'b' at {where}: the secret key does not match the access key id. Check the AWS credentials (the credentials of the given client) and that they allow s3:ListBucket on the bucket",
            id="check-denied",
        ),
        c(
            "check",
            _client_error("301", 301, "HeadBucket"),
            2,
            f"S3 bucket 'b' is in another region than {where}: set AWS_DEFAULT_REGION (or the profile's region) to the bucket's region",
            id="check-region",
        ),
        c(
            "check",
            EndpointConnectionError(endpoint_url=where),
            2,
            f"cannot reach S3 at {where} (bucket 'b'): connection failed (EndpointConnectionError: {EXC}); check s3.endpoint_url and that the server is running",
            id="check-unreachable",
        ),
        c(
            "check",
            _client_error("InternalError", 500, "HeadBucket"),
            2,
            f"S3 bucket 'b' at {where} cannot be used: InternalError: InternalError message",
            id="check-other",
        ),
        c(
            "check",
            NoCredentialsError(),
            3,
            f"cannot load AWS credentials for S3 bucket 'b': {EXC}",
            id="check-no-credentials",
        ),
        c(
            "check",
            ProfileNotFound(profile="nightly"),
            3,
            f"{EXC}: fix AWS_PROFILE or add the profile to ~/.aws/config",
            id="profile",
        ),
        # loading credentials: whatever fails there is theirs (an expired SSO login is a plain BotoCoreError)
        c(
            "credentials",
            CredentialRetrievalError(provider="sso", error_msg="token expired"),
            3,
            f"cannot load AWS credentials for S3 bucket 'b': {EXC}",
            id="credentials",
        ),
        c(
            "credentials",
            ReadTimeoutError(endpoint_url="http://169.254.169.254"),
            3,
            f"cannot load AWS credentials for S3 bucket 'b': connection failed (ReadTimeoutError: {EXC})",
            id="credentials-role-endpoint-timeout",
        ),
        # a step named by its caller
        c(
            "list",
            _client_error("AccessDenied", 403, "ListObjectsV2"),
            3,
            f"cannot list s3://b/p/ at {where}: access denied",
            id="list-denied",
        ),
        c(
            "list",
            _client_error("SlowDown", 503, "ListObjectsV2"),
            2,
            f"cannot list s3://b/p/ at {where}: SlowDown: SlowDown message",
            id="list-other",
        ),
        c(
            "client",
            ValueError("Invalid endpoint: x"),
            2,
            f"S3 endpoint {where}: Invalid endpoint: x",
            id="client-endpoint",
        ),
    ]


@pytest.mark.parametrize(("step", "exc", "exit_code", "message"), _translation_cases())
def test_every_botocore_failure_is_translated_in_one_place(
    step: str, exc: Exception, exit_code: int | None, message: str
) -> None:
    """The table of ``S3Uploader._translate``: which error, which exit code, which words."""
    uploader = S3Uploader("b", endpoint_url="http://127.0.0.1:9", client=_RefusingClient())
    kwargs: dict[str, Any] = {
        "key": {"key": "k"},
        "check": {},
        "credentials": {"credentials": True},
        "list": {"doing": "cannot list s3://b/p/"},
        "client": {"doing": "cannot set up the S3 client"},
    }[step]
    error = uploader._translate(exc, **kwargs)
    if exit_code is None:
        assert type(error) is UploadError
    else:
        assert type(error) is S3SetupError
        assert error.exit_code == exit_code
    assert str(error) == message.replace(EXC, str(exc))
