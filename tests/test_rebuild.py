"""``imgsync rebuild --from-s3``: the CLI against the portal emulator and moto's S3 server, over real HTTP.

The promise is the user's: after a lost database, rebuild and sync again, and nothing unchanged is downloaded
(the emulator counts downloads) or uploaded (the S3 server counts the PUTs that reached it).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from imgsync.emulator import Portal, make_catalog
from imgsync.emulator.s3 import LocalS3Server
from imgsync.localfs import safe_name
from imgsync.models import ObjectInfo
from imgsync.rebuild import rebuild_from_s3
from imgsync.s3 import S3Uploader, encode_skip_fields
from imgsync.store import Store

from .conftest import Env, all_pairs, count_images, invoke, summary_of

_names = itertools.count(1)
# What the skip rule and the backup's whereabouts depend on: a rebuilt row must hold the same.
COLUMNS = (
    "product_id",
    "image_id",
    "name",
    "type",
    "create_time",
    "detail_url",
    "sha256",
    "size",
    "content_type",
    "local_path",
    "s3_key",
    "s3_etag",
    "s3_sha256",
    "status",
)
AWKWARD_NAMES = [
    "café crème.jpg",
    "🍕 pizza.png",
    'it\'s a "quote".jpg',
    "100% cotton & more.jpg",
    "a  b.jpg",
]


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
    name = f"imgsync-rebuild-{next(_names)}"
    s3.create_bucket(name)
    return name


@pytest.fixture
def portal() -> Iterator[Portal]:
    """24 images, five of them with names that S3 metadata cannot hold as they are."""
    catalog = make_catalog(products=6, images_per_product=3, min_size=300, max_size=3000, seed=11)
    with Portal(catalog, rate_limit=1000.0, burst=1000) as p:
        for n, name in enumerate(AWKWARD_NAMES):
            p.add_image(product_id=200 + n % 2, image_id=5000 + n, name=name, content=os.urandom(700 + n))
        p.add_image(product_id=201, image_id=5009, name="../../escape.jpg", content=b"\xff\xd8" + b"x" * 900)
        yield p


def s3_args(server: LocalS3Server, bucket: str, *extra: str) -> list[str]:
    return ["--s3-bucket", bucket, "--s3-endpoint-url", server.endpoint_url, *extra]


def lose_database(env: Env) -> None:
    for path in env.db.parent.glob(env.db.name + "*"):
        path.unlink()
    assert not env.db.exists()


def rebuild(env: Env, server: LocalS3Server, bucket: str, *extra: str) -> tuple[int, dict[str, Any]]:
    args = ["rebuild", "--from-s3", "--db", str(env.db), "--dest", str(env.dest), "--json"]
    result = invoke([*args, *s3_args(server, bucket, *extra)])
    return result.exit_code, json.loads(result.stdout)


def table(env: Env) -> dict[tuple[int, int], tuple[Any, ...]]:
    return {(r["product_id"], r["image_id"]): tuple(r[c] for c in COLUMNS) for r in env.rows()}


def put_object(server: LocalS3Server, bucket: str, key: str, body: bytes, metadata: dict[str, str]) -> None:
    server.client().put_object(Bucket=bucket, Key=key, Body=body, Metadata=metadata)


def full_metadata(pid: int, iid: int, body: bytes, name: str) -> dict[str, str]:
    return {
        "sha256": hashlib.sha256(body).hexdigest(),
        "product-id": str(pid),
        "image-id": str(iid),
        **encode_skip_fields(name, "MORE_PHOTO", "2024-10-17T10:48:05+02:00", f"/upload/x/{name}"),
    }


# --- lost database, rebuilt, and the next sync does nothing -------------------------------------------------------


def test_rebuilt_database_makes_the_next_sync_download_and_upload_nothing(
    env: Env, portal: Portal, s3: LocalS3Server, bucket: str
) -> None:
    pairs = all_pairs(portal)
    assert len(pairs) == 24
    sync = env.args(portal, "--s3", *s3_args(s3, bucket, "--s3-prefix", "shop/", "--json", *pairs))
    result = invoke(sync)
    assert result.exit_code == 0, result.stderr
    assert summary_of(result.stdout)["uploaded"] == 24
    before = table(env)
    lose_database(env)

    code, summary = rebuild(env, s3, bucket, "--s3-prefix", "shop/")
    assert code == 0, summary
    assert (summary["listed"], summary["recorded"], summary["with_local_file"], summary["not_used"]) == (
        24,
        24,
        24,
        0,
    )
    assert table(env) == before  # names with é, emoji, quotes and % included

    portal.reset_stats()
    puts = s3.count("PUT", bucket)
    result = invoke(sync)
    assert result.exit_code == 0, result.stderr
    assert (summary_of(result.stdout)["downloaded"], summary_of(result.stdout)["uploaded"]) == (0, 0)
    assert portal.stats.downloads_served == 0
    assert s3.count("PUT", bucket) == puts
    verify = invoke(["verify", "--s3", "--db", str(env.db), "--dest", str(env.dest), *s3_args(s3, bucket)])
    assert verify.exit_code == 0, verify.stdout
    assert verify.stdout.splitlines()[-1].endswith("24 ok, 0 missing, 0 changed")


def test_rebuild_with_keep_local_false_needs_no_local_file(
    env: Env, portal: Portal, s3: LocalS3Server, bucket: str, tmp_path: Path
) -> None:
    config = tmp_path / "imgsync.toml"
    config.write_text(
        "[bitrix24]\nrate_limit = 1000.0\nburst = 1000\n[storage]\nkeep_local = false\n"
        f'[s3]\nenabled = true\nbucket = "{bucket}"\nendpoint_url = "{s3.endpoint_url}"\n'
    )
    sync = ["--config", str(config), *env.args(portal, "--json", *all_pairs(portal))]
    assert invoke(sync).exit_code == 0
    assert [p for p in env.dest.rglob("*") if p.is_file()] == []
    before = table(env)
    lose_database(env)

    result = invoke(
        ["--config", str(config), "rebuild", "--from-s3", "--db", str(env.db), "--dest", str(env.dest)]
    )
    assert result.exit_code == 0, result.stderr
    assert result.stderr.startswith(f"rebuilt 24 images in {env.db} from 24 objects in s3://{bucket}/ in ")
    assert table(env) == before  # local_path empty, as the sync left it

    portal.reset_stats()
    puts = s3.count("PUT", bucket)
    result = invoke(sync)
    assert result.exit_code == 0, result.stderr
    summary = summary_of(result.stdout)
    assert (summary["downloaded"], summary["unchanged"], summary["uploaded"]) == (0, 24, 0)
    assert portal.stats.downloads_served == 0
    assert s3.count("PUT", bucket) == puts
    verify = invoke(["--config", str(config), "verify", "--s3", "--db", str(env.db)])
    assert verify.exit_code == 0, verify.stdout


def test_changed_image_after_a_rebuild_is_downloaded_again(
    env: Env, portal: Portal, s3: LocalS3Server, bucket: str
) -> None:
    pairs = all_pairs(portal)
    sync = env.args(portal, "--s3", *s3_args(s3, bucket, "--json", *pairs))
    assert invoke(sync).exit_code == 0
    lose_database(env)
    old = portal.images()[3]
    portal.replace_image(old.product_id, old.image_id, content=b"\x89PNG\r\n\x1a\nanother picture")
    assert rebuild(env, s3, bucket)[0] == 0
    portal.reset_stats()
    result = invoke(sync)
    assert result.exit_code == 0, result.stderr
    assert (summary_of(result.stdout)["downloaded"], summary_of(result.stdout)["uploaded"]) == (1, 1)
    assert portal.stats.downloads_served == 1


# --- what it refuses ------------------------------------------------------------------------------------------


def test_database_with_images_is_refused_without_merge(
    env: Env, portal: Portal, s3: LocalS3Server, bucket: str
) -> None:
    assert invoke(env.args(portal, "--s3", *s3_args(s3, bucket, *all_pairs(portal)))).exit_code == 0
    rows = table(env)
    result = invoke(["rebuild", "--from-s3", "--db", str(env.db), *s3_args(s3, bucket)])
    assert result.exit_code == 2
    assert result.stderr == (
        f"imgsync: error: {env.db} already records 24 images: rebuild fills an empty database. Use --merge to "
        "add what the bucket holds to them (after an interrupted rebuild, for one), or move the database aside\n"
    )
    assert table(env) == rows

    code, summary = rebuild(env, s3, bucket, "--merge")
    assert code == 0
    assert (summary["already_recorded"], summary["recorded"]) == (24, 0)  # no HEAD for what is recorded
    assert table(env) == rows


def test_rebuild_needs_from_s3_and_a_bucket(env: Env) -> None:
    result = invoke(["rebuild", "--db", str(env.db)])
    assert result.exit_code == 2
    assert "say where to rebuild from: --from-s3" in result.stderr
    result = invoke(["rebuild", "--from-s3", "--db", str(env.db)])
    assert result.exit_code == 2
    assert result.stderr == (
        "imgsync: error: rebuild --from-s3 needs a bucket: --s3-bucket, IMGSYNC_S3_BUCKET or s3.bucket\n"
    )
    assert not env.db.exists()


def test_objects_that_cannot_be_trusted_are_reported_and_give_no_row(
    env: Env, s3: LocalS3Server, bucket: str
) -> None:
    good = b"\xff\xd8good"
    put_object(s3, bucket, "12/34-good.jpg", good, full_metadata(12, 34, good, "good.jpg"))
    # The portal's name is made safe in the key; the metadata keeps it as it was.
    put_object(s3, bucket, "12/35-escape.jpg", good, full_metadata(12, 35, good, "../../escape.jpg"))
    bad: dict[str, list[tuple[str, dict[str, str]]]] = {
        "outside_layout": [
            ("readme.txt", {}),
            ("12/abc-x.jpg", full_metadata(12, 1, good, "x.jpg")),
            ("0/5-x.jpg", full_metadata(0, 5, good, "x.jpg")),
            ("-3/5-x.jpg", full_metadata(-3, 5, good, "x.jpg")),
            ("12/99999999999999999999-x.jpg", full_metadata(12, 99999999999999999999, good, "x.jpg")),
            ("../12/36-x.jpg", full_metadata(12, 36, good, "x.jpg")),
            ("/12/37-x.jpg", full_metadata(12, 37, good, "x.jpg")),
            ("12/38-../../../etc/passwd", full_metadata(12, 38, good, "../../../etc/passwd")),
            ("12/39-a\x01b.jpg", full_metadata(12, 39, good, "a\x01b.jpg")),
        ],
        "no_metadata": [("12/40-x.jpg", {})],
        "no_skip_metadata": [
            (
                "12/41-x.jpg",
                {"sha256": hashlib.sha256(good).hexdigest(), "product-id": "12", "image-id": "41"},
            )
        ],
        "damaged_metadata": [
            ("12/42-x.jpg", full_metadata(13, 42, good, "x.jpg")),  # ids disagree with the key
            ("12/43-x.jpg", {**full_metadata(12, 43, good, "x.jpg"), "sha256": "abc"}),
            ("12/44-x.jpg", {**full_metadata(12, 44, good, "x.jpg"), "name": "%E9"}),  # not UTF-8
            ("12/45-x.jpg", {**full_metadata(12, 45, good, "x.jpg"), "detail-url": "50%"}),
            ("12/46-x.jpg", full_metadata(12, 46, good, "other.jpg")),  # key is not the one for that name
            ("12/47-x.jpg", {k: v for k, v in full_metadata(12, 47, good, "x.jpg").items() if k != "type"}),
        ],
    }
    for objects in bad.values():
        for key, metadata in objects:
            put_object(s3, bucket, key, good, metadata)

    code, summary = rebuild(env, s3, bucket)
    assert code == 0  # the listing was read to its end: a job that syncs next may go on
    assert summary["listed"] == 2 + sum(len(v) for v in bad.values())
    assert summary["recorded"] == 2
    assert {reason: v["count"] for reason, v in summary["unusable"].items()} == {
        reason: len(v) for reason, v in bad.items()
    }
    for reason, objects in bad.items():
        shown = summary["unusable"][reason]["examples"]
        assert sorted(shown) == sorted(key.replace("\x01", "\\x01") for key, _ in objects)
    rows = env.rows()
    assert sorted((r["product_id"], r["image_id"], r["s3_key"]) for r in rows) == [
        (12, 34, "12/34-good.jpg"),
        (12, 35, "12/35-escape.jpg"),
    ]
    assert {r["name"] for r in rows} == {"good.jpg", "../../escape.jpg"}
    assert all(r["local_path"] is None for r in rows)  # nothing in dest

    text = invoke(["rebuild", "--from-s3", "--merge", "--db", str(env.db), *s3_args(s3, bucket)])
    assert text.exit_code == 0
    assert "      e.g. 12/39-a\\x01b.jpg" in text.stderr  # no raw control character on the terminal
    assert "\x01" not in text.stderr
    assert (
        "       9  outside_layout: key outside the layout <prefix><product_id>/<image_id>-<name>"
        in text.stderr
    )


def test_hostile_names_never_give_a_local_path_outside_dest(env: Env, s3: LocalS3Server, bucket: str) -> None:
    body = b"\xff\xd8bytes"
    for iid, name in enumerate(
        ["../../escape.jpg", "/etc/passwd", "..", "a/../../b.jpg", "\x1b[31mred.jpg"], 1
    ):
        key = f"7/{iid}-{safe_name(name)}"
        put_object(s3, bucket, key, body, full_metadata(7, iid, body, name))
        (env.dest / "7").mkdir(parents=True, exist_ok=True)
        (env.dest / key).write_bytes(body)
    # Where a naive join of dest and the name would look: a file of the right size, outside dest.
    (env.root / "escape.jpg").write_bytes(body)
    code, summary = rebuild(env, s3, bucket)
    assert code == 0, summary
    rows = env.rows()
    assert len(rows) == 5
    dest = env.dest.resolve()
    for row in rows:
        assert row["local_path"] == row["s3_key"]
        assert dest in (dest / row["local_path"]).resolve().parents


# --- interrupted --------------------------------------------------------------------------------------------------


class _FailingAfter:
    """An uploader whose HEADs fail like a killed process after ``n`` of them."""

    def __init__(self, inner: S3Uploader, n: int) -> None:
        self.inner, self.n, self.bucket, self.prefix = inner, n, inner.bucket, inner.prefix
        self.lock = threading.Lock()

    def key_for(self, relative: str) -> str:
        return self.inner.key_for(relative)

    def list_pages(self) -> Iterator[list[dict[str, Any]]]:
        return self.inner.list_pages(page_size=10)

    def head(self, key: str) -> ObjectInfo | None:
        with self.lock:
            self.n -= 1
            if self.n < 0:
                raise KeyboardInterrupt
        return self.inner.head(key)


def test_rebuild_interrupted_halfway_then_merge_then_sync_does_nothing(
    env: Env, portal: Portal, s3: LocalS3Server, bucket: str
) -> None:
    pairs = all_pairs(portal)
    sync = env.args(portal, "--s3", *s3_args(s3, bucket, "--json", *pairs))
    assert invoke(sync).exit_code == 0
    before = table(env)
    lose_database(env)

    source = _FailingAfter(S3Uploader(bucket, "", s3.endpoint_url), 13)
    with Store(env.db) as store, pytest.raises(KeyboardInterrupt):
        rebuild_from_s3(store, source, env.dest, workers=2, batch_size=5)
    partial = table(env)
    assert 5 <= len(partial) <= 13
    assert all(before[ref] == row for ref, row in partial.items())  # each row whole
    con = sqlite3.connect(env.db)
    assert con.execute("pragma integrity_check").fetchone() == ("ok",)
    con.close()

    code, summary = rebuild(env, s3, bucket, "--merge")
    assert code == 0
    assert (summary["already_recorded"], summary["recorded"]) == (len(partial), 24 - len(partial))
    assert table(env) == before
    portal.reset_stats()
    puts = s3.count("PUT", bucket)
    result = invoke(sync)
    assert (summary_of(result.stdout)["downloaded"], summary_of(result.stdout)["uploaded"]) == (0, 0)
    assert portal.stats.downloads_served == 0 and s3.count("PUT", bucket) == puts


def test_rebuild_killed_then_sync_downloads_only_what_was_not_recorded(
    env: Env, portal: Portal, s3: LocalS3Server, bucket: str
) -> None:
    """A real process, SIGKILLed while it writes; the next sync works with what it committed."""
    pairs = all_pairs(portal)
    sync = env.args(portal, "--s3", *s3_args(s3, bucket, "--json", *pairs))
    assert invoke(sync).exit_code == 0
    # More objects, so that the kill lands in the middle (rows are committed 500 at a time; one HEAD at a
    # time takes a few seconds for these 900 on moto).
    client = s3.client()

    def put(n: int) -> None:
        body = n.to_bytes(4, "big") + b"x"
        client.put_object(
            Bucket=bucket, Key=f"9/{n}-f.jpg", Body=body, Metadata=full_metadata(9, n, body, "f.jpg")
        )

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(put, range(1, 877)))
    lose_database(env)
    args = ["rebuild", "--from-s3", "--db", str(env.db), "--dest", str(env.dest), "--workers", "1"]
    process = subprocess.Popen(
        [sys.executable, "-m", "imgsync", *args, *s3_args(s3, bucket)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and process.poll() is None:
            if env.db.exists() and count_images(env.db) >= 500:
                break
            time.sleep(0.01)
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait(timeout=10)
    assert process.returncode == -signal.SIGKILL, "the rebuild finished before it could be killed"
    recorded = count_images(env.db)
    assert 500 <= recorded < 900

    portal.reset_stats()
    puts = s3.count("PUT", bucket)
    result = invoke(sync)
    assert result.exit_code == 0, result.stderr
    summary = summary_of(result.stdout)
    synced = {(r["product_id"], r["image_id"]) for r in env.rows() if r["product_id"] != 9}
    assert len(synced) == 24
    # The portal's 24 objects sort before "9/..." and were in the first committed batch: nothing to download.
    assert (summary["downloaded"], summary["unchanged"], summary["uploaded"]) == (0, 24, 0)
    assert portal.stats.downloads_served == 0 and s3.count("PUT", bucket) == puts
    code, after = rebuild(env, s3, bucket, "--merge")
    assert code == 0 and after["listed"] == 900 and after["already_recorded"] + after["recorded"] == 900


# --- memory ----------------------------------------------------------------------------------------------------


class _Synthetic:
    """A bucket of ``n`` generated objects, listed in pages of 1000 as S3 does, never all held at once.

    Records how far the listing ran ahead of the HEADs and how many HEADs were in flight at most.
    """

    def __init__(self, n: int) -> None:
        self.n, self.bucket, self.prefix = n, "synthetic", ""
        self.listed = self.heads = self.in_flight = 0
        self.max_ahead = self.max_in_flight = 0
        self.lock = threading.Lock()
        self.body = b"x" * 10

    def key_for(self, relative: str) -> str:
        return relative

    def list_pages(self) -> Iterator[list[dict[str, Any]]]:
        for start in range(1, self.n + 1, 1000):
            page = [
                {"key": f"{i}/{i}-f.jpg", "size": 10, "etag": "e", "last_modified": "2024-01-01T00:00:00Z"}
                for i in range(start, min(start + 1000, self.n + 1))
            ]
            with self.lock:
                self.listed += len(page)
                self.max_ahead = max(self.max_ahead, self.listed - self.heads)
            yield page

    def head(self, key: str) -> ObjectInfo:
        with self.lock:
            self.heads += 1
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        i = int(key.split("/")[0])
        try:
            meta = _meta(i, self.body)
            return ObjectInfo(meta.get("sha256"), 10, "e", "image/jpeg", meta)
        finally:
            with self.lock:
                self.in_flight -= 1


def _meta(i: int, body: bytes) -> dict[str, str]:
    return full_metadata(i, i, body, "f.jpg")


def test_listing_is_read_a_page_at_a_time_with_bounded_heads(tmp_path: Path) -> None:
    source = _Synthetic(5_500)
    with Store(tmp_path / "x.db") as store:
        summary = rebuild_from_s3(store, source, tmp_path / "dest", workers=3)
        assert summary.recorded == store.image_count() == 5_500
    assert source.max_in_flight <= 3 * 4
    assert source.max_ahead <= 1000 + 3 * 4  # one page listed ahead of the HEADs, never the whole bucket


_RSS_CHILD = """
import resource, sys, tempfile
from pathlib import Path
from imgsync.rebuild import rebuild_from_s3
from imgsync.store import Store
from tests.test_rebuild import _Synthetic
folder = Path(tempfile.mkdtemp())
with Store(folder / "x.db") as store:
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    rebuild_from_s3(store, _Synthetic(int(sys.argv[1])), folder / "dest", workers=4)
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)
"""


def _rss_growth_kib(n: int) -> int:
    out = subprocess.run(
        [sys.executable, "-c", _RSS_CHILD, str(n)],
        cwd=Path(__file__).resolve().parent.parent,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return int(out.stdout.strip())


def test_memory_stays_flat_whatever_the_bucket_holds() -> None:
    # Holding 50,000 listed objects (or their rows) would take tens of MiB; flat means a few, as for 5,000.
    small, large = _rss_growth_kib(5_000), _rss_growth_kib(50_000)
    assert large < small + 8 * 1024, (small, large)


def test_merge_never_turns_a_missing_row_back_into_ok(
    env: Env, portal: Portal, s3: LocalS3Server, bucket: str
) -> None:
    pairs = all_pairs(portal)
    assert invoke(env.args(portal, "--s3", *s3_args(s3, bucket, *pairs))).exit_code == 0
    gone = portal.images()[0]
    portal.delete_image(gone.product_id, gone.image_id)
    assert invoke(env.args(portal, "--s3", *s3_args(s3, bucket, *pairs))).exit_code == 0
    con = sqlite3.connect(env.db)
    # The object is newer than the row's last change (a metadata copy renews an object's LastModified and
    # leaves the content, hence last_changed_at, as it was): the case where a merge replaces a row.
    con.execute(
        "update images set last_changed_at = '2000-01-01T00:00:00Z' where product_id = ? and image_id = ?",
        (gone.product_id, gone.image_id),
    )
    con.commit()
    con.close()
    code, _summary = rebuild(env, s3, bucket, "--merge")
    assert code == 0
    rows = {(r["product_id"], r["image_id"]): r for r in env.rows()}
    assert rows[(gone.product_id, gone.image_id)]["status"] == "missing"  # before: "ok" again
    assert sum(r["status"] == "ok" for r in rows.values()) == 23
