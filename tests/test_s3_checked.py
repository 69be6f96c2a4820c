"""S3 holds only checked bytes: each upload is hashed as it is read and carries its SHA-256 checksum; metadata is
refreshed by a server-side copy; nothing is trusted, or deleted, on the strength of a database record alone.

Against moto's S3 server and the portal emulator over real HTTP, as ``test_s3.py``. moto keeps the checksum a
request carries (and returns it to a HEAD with ``ChecksumMode``) but does not check it against the body: what
these tests show is that imgsync sends it, and sends nothing that is not the recorded bytes.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import os
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest

from imgsync.emulator import Portal, make_catalog
from imgsync.emulator.s3 import LocalS3Server
from imgsync.emulator.server import Reply, Request
from imgsync.errors import LocalFileChanged
from imgsync.models import ImageRef
from imgsync.s3 import S3Uploader

from .conftest import Env, all_pairs, invoke, sha256, summary_of
from .test_s3 import in_s3, key_of, objects, s3_args

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
    return new_bucket(s3)


def b64_sha256(data: bytes) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


class WatchedS3(LocalS3Server):
    """moto's S3 that records each request's checksum headers, and can refuse them as some stores do.

    ``refuse``: None (accept), ``"r2"`` (a PUT or multipart upload carrying a checksum header: 501
    NotImplemented, as Cloudflare R2 answers for a SHA-256 of a whole object) or ``"b2"`` (any checksum header,
    ``x-amz-checksum-mode`` of a HEAD included: 400 InvalidArgument, as Backblaze B2 answered).
    """

    def __init__(self, refuse: str | None = None) -> None:
        super().__init__()
        self.refuse = refuse
        self.seen: list[dict[str, str]] = []
        self.refused: list[dict[str, str]] = []
        self._seen_lock = threading.Lock()

    def _recording(self, app: Callable[..., Iterable[bytes]]) -> Callable[..., Iterable[bytes]]:
        inner = super()._recording(app)

        def watched(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
            headers = {
                k[5:].lower().replace("_", "-"): str(v) for k, v in environ.items() if k.startswith("HTTP_")
            }
            if "CONTENT_MD5" in environ:
                headers["content-md5"] = environ["CONTENT_MD5"]
            entry = {"method": environ["REQUEST_METHOD"], "path": environ.get("PATH_INFO", ""), **headers}
            with self._seen_lock:
                self.seen.append(entry)
            checksum = [h for h in headers if h.startswith(("x-amz-checksum-", "x-amz-sdk-checksum"))]
            method = environ["REQUEST_METHOD"]
            refused = (self.refuse == "r2" and checksum and method in ("PUT", "POST")) or (
                self.refuse == "b2" and checksum
            )
            if refused and "x-amz-copy-source" not in headers:
                with self._seen_lock:
                    self.refused.append(entry)
                code, status = (
                    ("NotImplemented", "501 Not Implemented")
                    if self.refuse == "r2"
                    else ("InvalidArgument", "400 Bad Request")
                )
                body = (
                    f"<?xml version='1.0' encoding='UTF-8'?><Error><Code>{code}</Code>"
                    f"<Message>Header '{checksum[0]}' not implemented</Message></Error>"
                ).encode()
                start_response(
                    status, [("Content-Type", "application/xml"), ("Content-Length", str(len(body)))]
                )
                return [b"" if method == "HEAD" else body]
            return inner(environ, start_response)

        return watched

    def uploads(self, bucket: str) -> list[dict[str, str]]:
        """The requests that sent bytes to an object: PUTs without x-amz-copy-source."""
        with self._seen_lock:
            return [
                r
                for r in self.seen
                if r["method"] == "PUT"
                and r["path"].startswith(f"/{bucket}/")
                and "x-amz-copy-source" not in r
            ]

    def copies(self, bucket: str) -> list[dict[str, str]]:
        with self._seen_lock:
            return [r for r in self.seen if r["method"] == "PUT" and "x-amz-copy-source" in r]


@pytest.fixture
def watched() -> Iterator[WatchedS3]:
    server = WatchedS3().start()
    yield server
    server.stop()


def new_bucket(server: LocalS3Server) -> str:
    name = f"imgsync-checked-{next(_names)}"
    server.create_bucket(name)
    return name


def checksum_of(server: LocalS3Server, bucket: str, key: str) -> str | None:
    reply = server.client().head_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED")
    value: str | None = reply.get("ChecksumSHA256")
    return value


def damage(path: Path) -> None:
    """Same size, other bytes: what a stat cannot see."""
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


# --- item 7: every upload hashed as read, checked by the store --------------------------------------------------


def test_every_upload_carries_the_sha256_checksum_the_store_keeps(
    env: Env, portal: Portal, s3: LocalS3Server, bucket: str
) -> None:
    pairs = all_pairs(portal)[:6]
    result = invoke(env.args(portal, *s3_args(s3, bucket, "--json", *pairs)))
    assert result.exit_code == 0, result.stderr
    assert summary_of(result.stdout)["uploaded"] == 6
    client = s3.client()
    for row in env.rows():
        body = client.get_object(Bucket=bucket, Key=row["s3_key"])["Body"].read()
        assert sha256(body) == row["sha256"]
        assert checksum_of(s3, bucket, row["s3_key"]) == b64_sha256(body)


def test_switching_s3_on_over_a_damaged_local_file_downloads_it_again_and_uploads_the_right_bytes(
    env: Env, portal: Portal, s3: LocalS3Server, bucket: str
) -> None:
    pairs = all_pairs(portal)
    assert invoke(env.args(portal, *pairs)).exit_code == 0  # a local backup first, the usual migration
    victim = portal.images()[3]
    row = next(
        r for r in env.rows() if (r["product_id"], r["image_id"]) == (victim.product_id, victim.image_id)
    )
    local = env.dest / row["local_path"]
    damage(local)

    portal.reset_stats()
    result = invoke(env.args(portal, *s3_args(s3, bucket, "--json", *pairs)))
    assert result.exit_code == 0, result.stderr
    summary = summary_of(result.stdout)
    assert (summary["downloaded"], summary["uploaded"], summary["failed"]) == (1, 30, 0)
    assert portal.stats.downloads_served == 1
    stored = in_s3(env, s3, bucket, portal)  # every object holds the portal's bytes, the damaged one too
    assert stored[key_of(victim)]["sha256"] == victim.sha256
    assert sha256(local.read_bytes()) == victim.sha256


def test_a_damaged_local_file_that_cannot_be_downloaded_again_fails_and_is_no_longer_claimed(
    env: Env, s3: LocalS3Server, bucket: str
) -> None:
    portal = Portal(make_catalog(1, 1, 500, 3000, seed=3), rate_limit=1000.0, burst=1000)
    handle = portal.handle
    failing = threading.Event()

    def downloads_fail(request: Request) -> Reply:
        if failing.is_set() and request.path.startswith("/rest/download"):
            return Reply(status=404, body=b"{}")
        return handle(request)

    portal.handle = downloads_fail  # type: ignore[method-assign]
    with portal:
        (victim,) = portal.images()
        pair = f"{victim.product_id}:{victim.image_id}"
        assert invoke(env.args(portal, pair)).exit_code == 0
        (row,) = env.rows()
        local = env.dest / row["local_path"]
        damage(local)
        damaged = sha256(local.read_bytes())
        failing.set()
        result = invoke(env.args(portal, *s3_args(s3, bucket, "--json", pair)))
    assert result.exit_code == 1, result.stdout
    summary = summary_of(result.stdout)
    assert (summary["uploaded"], summary["failed"]) == (0, 1)
    (row,) = env.rows()
    assert row["status"] == "failed"
    assert row["local_path"] is None  # the row no longer claims a good local backup
    assert row["sha256"] == victim.sha256
    assert (
        f"{local} holds {victim.size} bytes with sha256 {damaged}, not the recorded {victim.size} bytes "
        f"with sha256 {victim.sha256}" in row["error"]
    )
    assert "downloading it again failed" in row["error"]
    assert objects(s3, bucket) == {}  # nothing reached S3


def test_a_multipart_upload_of_other_bytes_than_recorded_is_aborted_and_leaves_nothing(
    s3: LocalS3Server, bucket: str, tmp_path: Path
) -> None:
    mib = 1024 * 1024
    uploader = S3Uploader(
        bucket, "", s3.endpoint_url, multipart_threshold=5 * mib, multipart_chunksize=5 * mib
    )
    good = os.urandom(11 * mib)
    path = tmp_path / "big.jpg"
    path.write_bytes(good)
    etag = uploader.put(
        path, "big.jpg", sha256=sha256(good), size=len(good), content_type="image/jpeg", ref=ImageRef(1, 2)
    )
    assert etag.endswith("-3")
    client = s3.client()
    assert sha256(client.get_object(Bucket=bucket, Key="big.jpg")["Body"].read()) == sha256(good)
    parts = hashlib.sha256(
        b"".join(hashlib.sha256(good[i : i + 5 * mib]).digest() for i in range(0, 11 * mib, 5 * mib))
    )
    assert (checksum_of(s3, bucket, "big.jpg") or "").split("-")[0] == base64.b64encode(
        parts.digest()
    ).decode()

    damaged = bytearray(good)
    damaged[7 * mib] ^= 0xFF  # in the second part: the first one is already on its way
    path.write_bytes(bytes(damaged))
    with pytest.raises(
        LocalFileChanged, match=f"not the recorded {len(good)} bytes with sha256 {sha256(good)}$"
    ):
        uploader.put(
            path,
            "other.jpg",
            sha256=sha256(good),
            size=len(good),
            content_type="image/jpeg",
            ref=ImageRef(1, 3),
        )
    assert "other.jpg" not in objects(s3, bucket)
    assert client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


@pytest.mark.parametrize("store", ["r2", "b2"])
def test_a_store_that_refuses_checksums_gets_content_md5_after_one_refusal(
    env: Env, portal: Portal, store: str
) -> None:
    with WatchedS3(refuse=store) as server:
        bucket = new_bucket(server)
        pairs = all_pairs(portal)[:5]
        result = invoke(
            ["-v", *env.args(portal, "--workers", "1", "--json", *s3_args(server, bucket, *pairs))]
        )
        assert result.exit_code == 0, result.stderr
        assert summary_of(result.stdout)["uploaded"] == 5
        # Refused for the first object only (botocore itself may repeat a bare 400 once), then never asked again.
        assert server.refused and {r["path"] for r in server.refused} == {
            f"/{bucket}/{key_of(portal.images()[0])}"
        }
        assert result.stderr.count("refused the SHA-256 checksum header") == 1
        sent = [r for r in server.uploads(bucket) if not any(h.startswith("x-amz-checksum-") for h in r)]
        assert len(sent) == 5 and all("content-md5" in r for r in sent)
        server.refuse = None  # for our own reads, which botocore sends with x-amz-checksum-mode
        client = server.client()
        for row in env.rows():
            body = client.get_object(Bucket=bucket, Key=row["s3_key"])["Body"].read()
            assert sha256(body) == row["sha256"] and row["status"] == "ok"


# --- item 8: metadata refreshed by a server-side copy; nothing removed on a record alone ------------------------


def test_a_new_detail_url_with_the_same_bytes_is_copied_not_uploaded_and_rebuild_restores_it(
    env: Env, portal: Portal, watched: WatchedS3
) -> None:
    bucket = new_bucket(watched)
    pairs = all_pairs(portal)
    assert invoke(env.args(portal, *s3_args(watched, bucket, *pairs))).exit_code == 0
    old = portal.images()[4]
    new = portal.replace_image(old.product_id, old.image_id, content=old.content)  # new detailUrl only
    assert new.detail_url != old.detail_url and new.sha256 == old.sha256
    uploads = len(watched.uploads(bucket))

    result = invoke(env.args(portal, *s3_args(watched, bucket, "--json", *pairs)))
    assert result.exit_code == 0, result.stderr
    summary = summary_of(result.stdout)
    assert (summary["downloaded"], summary["uploaded"], summary["bytes_uploaded"]) == (1, 0, 0)
    assert len(watched.uploads(bucket)) == uploads  # no bytes sent again
    assert len(watched.copies(bucket)) == 1
    in_s3(env, watched, bucket, portal)  # its metadata holds the new detailUrl, content type and sha256 kept

    for path in env.db.parent.glob(env.db.name + "*"):
        path.unlink()
    rebuilt = invoke(
        ["rebuild", "--from-s3", "--db", str(env.db), "--dest", str(env.dest), *s3_args(watched, bucket)[1:]]
    )
    assert rebuilt.exit_code == 0, rebuilt.stderr
    portal.reset_stats()
    result = invoke(env.args(portal, *s3_args(watched, bucket, "--json", *pairs)))
    assert result.exit_code == 0, result.stderr
    assert summary_of(result.stdout)["downloaded"] == 0
    assert portal.stats.downloads_served == 0


def test_an_object_in_place_with_older_metadata_is_copied_not_uploaded(
    env: Env, portal: Portal, watched: WatchedS3
) -> None:
    bucket = new_bucket(watched)
    pairs = all_pairs(portal)[:6]
    assert invoke(env.args(portal, *s3_args(watched, bucket, *pairs))).exit_code == 0
    img = portal.images()[2]
    client = watched.client()
    head = client.head_object(Bucket=bucket, Key=key_of(img))
    older = {**head["Metadata"], "detail-url": "%2Fold%2Fdetail.jpg"}
    client.copy_object(
        Bucket=bucket,
        Key=key_of(img),
        CopySource={"Bucket": bucket, "Key": key_of(img)},
        MetadataDirective="REPLACE",
        Metadata=older,
        ContentType=head["ContentType"],
    )
    for path in env.db.parent.glob(env.db.name + "*"):
        path.unlink()  # the database is lost
    uploads = len(watched.uploads(bucket))

    result = invoke(env.args(portal, *s3_args(watched, bucket, "--json", *pairs)))
    assert result.exit_code == 0, result.stderr
    summary = summary_of(result.stdout)
    assert (summary["downloaded"], summary["uploaded"], summary["bytes_uploaded"]) == (6, 0, 0)
    assert len(watched.uploads(bucket)) == uploads
    stored = objects(watched, bucket)
    assert stored[key_of(img)]["metadata"]["detail-url"] != "%2Fold%2Fdetail.jpg"
    assert stored[key_of(img)]["sha256"] == img.sha256
    assert stored[key_of(img)]["content_type"] == img.content_type


@pytest.mark.parametrize("behind_our_back", ["deleted", "other bytes, same labels"])
def test_keep_local_false_removes_a_fresh_download_only_once_its_object_is_known(
    env: Env, portal: Portal, s3: LocalS3Server, bucket: str, tmp_path: Path, behind_our_back: str
) -> None:
    config = tmp_path / "imgsync.toml"
    config.write_text(
        f'[storage]\nkeep_local = false\n[s3]\nenabled = true\nbucket = "{bucket}"\n'
        f'endpoint_url = "{s3.endpoint_url}"\n'
    )
    pairs = all_pairs(portal)[:6]
    args = ["--config", str(config), *env.args(portal, "--json", *pairs)]
    assert invoke(args).exit_code == 0
    img = portal.images()[1]
    client = s3.client()
    if behind_our_back == "deleted":
        client.delete_object(Bucket=bucket, Key=key_of(img))
    else:  # as an upload that checked nothing could leave it: right size and labels, other bytes
        head = client.head_object(Bucket=bucket, Key=key_of(img))
        body = bytearray(client.get_object(Bucket=bucket, Key=key_of(img))["Body"].read())
        body[0] ^= 0xFF
        client.put_object(
            Bucket=bucket,
            Key=key_of(img),
            Body=bytes(body),
            Metadata=head["Metadata"],
            ContentType=head["ContentType"],
        )
    portal.replace_image(img.product_id, img.image_id, content=img.content)  # downloaded again, same bytes

    result = invoke(args)
    assert result.exit_code == 0, result.stderr
    assert summary_of(result.stdout)["downloaded"] == 1
    stored = objects(s3, bucket)
    assert (
        stored[key_of(img)]["sha256"] == img.sha256
    )  # the backup is there, with the bytes that were removed
    assert checksum_of(s3, bucket, key_of(img)) == b64_sha256(img.content)
    assert [p for p in env.dest.rglob("*") if p.is_file()] == []


def test_a_local_file_brought_back_after_verify_repair_replaces_an_unchecked_object(
    env: Env, portal: Portal, s3: LocalS3Server, bucket: str
) -> None:
    """The issue's case: a damaged object under right-looking labels (what unchecked uploads left), which
    ``verify --s3`` cannot see; once the local file is repaired, the next sync puts the right bytes there."""
    pairs = all_pairs(portal)[:6]
    assert invoke(env.args(portal, *s3_args(s3, bucket, *pairs))).exit_code == 0
    img = portal.images()[0]
    client = s3.client()
    head = client.head_object(Bucket=bucket, Key=key_of(img))
    body = bytearray(img.content)
    body[-1] ^= 0xFF
    client.put_object(
        Bucket=bucket,
        Key=key_of(img),
        Body=bytes(body),
        Metadata=head["Metadata"],
        ContentType=head["ContentType"],
    )
    row = next(r for r in env.rows() if (r["product_id"], r["image_id"]) == (img.product_id, img.image_id))
    damage(env.dest / row["local_path"])
    verify = ["verify", "--db", str(env.db), "--dest", str(env.dest), *s3_args(s3, bucket)[1:]]
    assert invoke([*verify, "--s3", "--repair"]).exit_code == 1  # the local file is found, not the object

    result = invoke(env.args(portal, *s3_args(s3, bucket, "--json", *pairs)))
    assert result.exit_code == 0, result.stderr
    assert summary_of(result.stdout)["uploaded"] == 1
    assert objects(s3, bucket)[key_of(img)]["sha256"] == img.sha256
