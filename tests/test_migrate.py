"""``imgsync restore --from-db``: a catalog's images moved to another portal, between two emulator portals over
real HTTP on 127.0.0.1.

The source portal is backed up with ``sync --all`` (which records each item's xml_id, code and name); the target
portal holds the same products under other ids, imported with the source's external codes (and some symbolic
codes). Each test checks the bytes that landed (sha256 of ``target.gallery(pid)`` against the source's images),
the adds the target applied (``stats.adds``), and that the source database is not touched.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result

from imgsync.emulator import CatalogItem, Faults, Portal, make_catalog
from imgsync.emulator.s3 import LocalS3Server

from .conftest import FAST_CONFIG, REPO, invoke, summary_of

#: Source items (ids 100..105 of make_catalog) and their keys: (xml_id, code); None: the portal's default.
SOURCE_KEYS: dict[int, tuple[str | None, str | None]] = {
    100: ("SKU-A", "code-a"),
    101: ("SKU-B", "code-b"),
    102: ("SKU-C", ""),
    103: (None, None),  # default xml_id "103": its own id, no key
    104: ("SKU-NOWHERE", "code-nowhere"),
    105: ("SKU-TWICE", "code-twice"),
}
#: Target items: other ids, the imported keys. SKU-C has no code on the target either.
TARGET_ITEMS = [
    CatalogItem(500, xml_id="SKU-A", code="code-a"),
    CatalogItem(501, xml_id="SKU-B", code="code-b"),
    CatalogItem(502, xml_id="SKU-C", code=""),
    CatalogItem(503),  # xml_id "503", code "item-503": defaults
    CatalogItem(505, xml_id="SKU-TWICE", code="code-twice"),
    CatalogItem(506, xml_id="SKU-TWICE", code="code-twice"),
]
MATCHED = {100: 500, 101: 501, 102: 502}


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def source() -> Iterator[Portal]:
    # Two images a product, DETAIL_PICTURE and MORE_PHOTO (make_catalog's third would be a second DETAIL_PICTURE,
    # which no real product has: its add would replace the first).
    images = make_catalog(products=6, images_per_product=2, min_size=400, max_size=3000, seed=11)
    items = [CatalogItem(pid, xml_id=x, code=c) for pid, (x, c) in SOURCE_KEYS.items()]
    with Portal(images, items=items, rate_limit=1000.0, burst=1000) as portal:
        yield portal


@pytest.fixture
def target() -> Iterator[Portal]:
    with Portal([], items=TARGET_ITEMS, rate_limit=1000.0, burst=1000) as portal:
        yield portal


class Sides:
    """The two backups: the source's (synced with --all) and the target's (the config's)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.src_dest = root / "source" / "images"
        self.src_db = root / "source-db" / "imgsync.db"
        self.dest = root / "target" / "images"
        self.db = root / "target" / "imgsync.db"

    def sync_source(self, portal: Portal, *extra: str) -> None:
        result = invoke(
            [
                "sync",
                "--all",
                "--webhook",
                portal.webhook_url,
                "--dest",
                str(self.src_dest),
                "--db",
                str(self.src_db),
            ]
            + list(extra)
        )
        assert result.exit_code == 0, result.output

    def products_file(self, *pids: int) -> str:
        path = self.root / "products.txt"
        path.write_text("".join(f"{pid}\n" for pid in pids))
        return str(path)

    def restore_args(self, target: Portal, *extra: str) -> list[str]:
        return [
            "restore",
            "--webhook",
            target.webhook_url,
            "--dest",
            str(self.dest),
            "--db",
            str(self.db),
            "--from-db",
            str(self.src_db),
            *extra,
        ]

    def restore(self, target: Portal, *extra: str) -> tuple[Result, dict[str, Any]]:
        result = invoke(self.restore_args(target, "--json", *extra))
        return result, summary_of(result.stdout)

    def rows(self, db: Path, table: str) -> list[dict[str, Any]]:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        con.row_factory = sqlite3.Row
        try:
            return [dict(r) for r in con.execute(f"select * from {table}")]
        finally:
            con.close()


@pytest.fixture
def sides(tmp_path: Path, isolated: Path) -> Sides:
    (isolated / "imgsync.toml").write_text(FAST_CONFIG)
    return Sides(tmp_path)


def source_hashes(portal: Portal, pid: int) -> list[str]:
    return sorted(_sha(img.content) for img in portal.images() if img.product_id == pid)


def gallery_hashes(portal: Portal, pid: int) -> list[str]:
    return sorted(sha for _, _, sha in portal.gallery(pid))


def snapshot(folder: Path) -> dict[str, str]:
    """Every file of a folder with its sha256: the source's database folder must not change."""
    return {p.name: _sha(p.read_bytes()) for p in sorted(folder.iterdir())}


def failures_by_product(summary: dict[str, Any]) -> dict[int, set[str]]:
    out: dict[int, set[str]] = {}
    for failure in summary["failures"]:
        out.setdefault(failure["product_id"], set()).add(failure["reason"])
    return out


# ---------------------------------------------------------------------------------------------- --match xml_id


def test_match_xml_id_moves_the_right_bytes_and_a_second_run_adds_nothing(
    sides: Sides, source: Portal, target: Portal
) -> None:
    sides.sync_source(source)
    # sync --all keeps each listed item's keys (selected in the listing: no extra request).
    keys = {
        r["product_id"]: (r["xml_id"], r["code"], r["name"]) for r in sides.rows(sides.src_db, "products")
    }
    assert keys[100] == ("SKU-A", "code-a", "Product 100") and keys[103] == ("103", "item-103", "Product 103")
    assert keys[102] == ("SKU-C", "", "Product 102")
    before = snapshot(sides.src_db.parent)
    ids = sides.products_file(*SOURCE_KEYS)
    result, summary = sides.restore(
        target, "--from-dest", str(sides.src_dest), "--match", "xml_id", "--products-file", ids
    )
    assert result.exit_code == 1, result.output  # the unmatched products fail
    assert summary["restored"] == 6 and summary["present"] == 0 and summary["failed"] == 6
    for src, dst in MATCHED.items():
        assert gallery_hashes(target, dst) == source_hashes(source, src)
    assert target.stats.adds == 6
    assert gallery_hashes(target, 503) == gallery_hashes(target, 505) == gallery_hashes(target, 506) == []
    reasons = failures_by_product(summary)
    assert reasons[103] == {
        "unmatched: its xml_id '103' is its own id (the portal's default), not a key of the import"
    }
    assert reasons[104] == {"unmatched: no target item has xml_id 'SKU-NOWHERE'"}
    assert reasons[105] == {"unmatched: 2 target items have xml_id 'SKU-TWICE': 505, 506"}
    assert {m["product_id"]: m["target_product_id"] for m in summary["mapping"]} == {
        **MATCHED,
        103: None,
        104: None,
        105: None,
    }
    assert {(r["product_id"], r["target_product_id"]) for r in summary["restored_images"]} == {
        (src, dst) for src, dst in MATCHED.items()
    }
    # The target's database: the new images as ok rows with their files; the journal names the source.
    ok = [r for r in sides.rows(sides.db, "images") if r["status"] == "ok"]
    assert sorted(r["product_id"] for r in ok) == sorted([500, 501, 502] * 2)
    for row in ok:
        assert _sha((sides.dest / row["local_path"]).read_bytes()) == row["sha256"]
    journal = sides.rows(sides.db, "restores")
    assert len(journal) == 6 and {r["state"] for r in journal} == {"done"}
    assert {r["source_db"] for r in journal} == {str(sides.src_db.resolve())}
    # Nothing the lookups need beyond the list calls: one catalog.catalog.list, one batch of product lists.
    assert target.stats.by_method["catalog.catalog.list"] == 1
    assert target.stats.batch_commands["catalog.product.list"] == 2  # one command per trade catalog
    assert "catalog.product.list" not in target.stats.by_method  # in a batch, not alone

    again, summary = sides.restore(
        target, "--from-dest", str(sides.src_dest), "--match", "xml_id", "--products-file", ids
    )
    assert again.exit_code == 1
    assert summary["restored"] == 0 and summary["present"] == 6 and summary["failed"] == 6
    assert target.stats.adds == 6
    for src, dst in MATCHED.items():
        assert gallery_hashes(target, dst) == source_hashes(source, src)
    # Not a byte of the source database, and no -wal or -shm beside it.
    assert snapshot(sides.src_db.parent) == before
    # The source database records nothing of the restore.
    assert sides.rows(sides.src_db, "restores") == []


def test_match_code(sides: Sides, source: Portal, target: Portal) -> None:
    sides.sync_source(source)
    result, summary = sides.restore(
        target, "--from-dest", str(sides.src_dest), "--match", "code", "--product", "100", "--product", "101",
        "--product", "102", "--product", "105",
    )  # fmt: skip
    assert result.exit_code == 1, result.output
    assert summary["restored"] == 4
    for src in (100, 101):
        assert gallery_hashes(target, MATCHED[src]) == source_hashes(source, src)
    assert gallery_hashes(target, 502) == []
    reasons = failures_by_product(summary)
    assert reasons[102] == {"unmatched: its code is empty"}
    assert reasons[105] == {"unmatched: 2 target items have code 'code-twice': 505, 506"}
    assert target.stats.adds == 4


# ---------------------------------------------------------------------------------------------- --map


def test_map_csv(sides: Sides, source: Portal, target: Portal) -> None:
    sides.sync_source(source)
    mapping = sides.root / "map.csv"
    mapping.write_text("source_product_id,target_product_id\n100,501\n103,503\n")
    ids = sides.products_file(100, 103, 104)
    result, summary = sides.restore(
        target, "--from-dest", str(sides.src_dest), "--map", str(mapping), "--products-file", ids
    )
    assert result.exit_code == 1, result.output
    assert gallery_hashes(target, 501) == source_hashes(source, 100)
    assert gallery_hashes(target, 503) == source_hashes(source, 103)
    assert target.stats.adds == 4
    assert failures_by_product(summary) == {104: {f"unmatched: {mapping} names no target for product 104"}}
    # No lookup by key with a map: only the image lists of the target products and the adds.
    assert "catalog.product.list" not in target.stats.by_method
    assert "catalog.product.list" not in target.stats.batch_commands


def test_bad_map_is_an_input_error_before_any_request(sides: Sides, source: Portal, target: Portal) -> None:
    sides.sync_source(source)
    mapping = sides.root / "map.csv"
    mapping.write_text("100,500\n101,x\n")
    result = invoke(
        sides.restore_args(
            target, "--from-dest", str(sides.src_dest), "--map", str(mapping), "--product", "100"
        )
    )
    assert result.exit_code == 2
    assert f"{mapping}:2: target product id 'x' is not a positive integer" in result.stderr
    mapping.write_text("source_product_id;target_product_id\n100;500\n\n100;501\n")
    result = invoke(
        sides.restore_args(
            target, "--from-dest", str(sides.src_dest), "--map", str(mapping), "--product", "100"
        )
    )
    assert result.exit_code == 2
    assert f"{mapping}:4: source product 100 is mapped to 501 here and to 500 at {mapping}:2" in result.stderr
    assert target.stats.requests == 0


def test_match_without_the_listings_keys_is_an_input_error(
    sides: Sides, source: Portal, target: Portal
) -> None:
    # A backup by pairs: no `sync --all`, so no products rows with keys.
    result = invoke(
        ["sync", "--webhook", source.webhook_url, "--dest", str(sides.src_dest), "--db", str(sides.src_db),
         "--product", "100"]
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    result = invoke(
        sides.restore_args(
            target, "--from-dest", str(sides.src_dest), "--match", "xml_id", "--product", "100"
        )
    )
    assert result.exit_code == 2
    assert (
        "has no products row for product 100: run `imgsync sync --all` on the source first" in result.stderr
    )
    assert target.stats.requests == 0


def test_usage_errors(sides: Sides, target: Portal) -> None:
    for extra, message in [
        (["--match", "xml_id", "--product", "1"], "--match goes with --from-db"),
    ]:
        result = invoke(["restore", "--webhook", target.webhook_url, *extra])
        assert result.exit_code == 2 and message in result.stderr
    for extra, message in [
        (["--from-dest", "x", "--product", "1"], "--from-db needs one of --map CSV or --match xml_id|code"),
        (["--match", "code", "--product", "1"], "--from-db needs the source's backups: --from-dest DIR and/or --from-s3"),
    ]:  # fmt: skip
        result = invoke(sides.restore_args(target, *extra))
        assert result.exit_code == 2 and message in result.stderr, result.stderr
    assert target.stats.requests == 0


# ---------------------------------------------------------------------------------------------- the plan


def test_dry_run_shows_each_product_with_its_target_and_changes_nothing(
    sides: Sides, source: Portal, target: Portal
) -> None:
    sides.sync_source(source)
    before = snapshot(sides.src_db.parent)
    args = sides.restore_args(
        target, "--from-dest", str(sides.src_dest), "--match", "xml_id", "--product", "100", "--product", "104",
        "--dry-run",
    )  # fmt: skip
    result = invoke(args)
    assert result.exit_code == 1, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == "product      100 -> 500  xml_id 'SKU-A'"
    assert lines[1] == "product      104 -> none  no target item has xml_id 'SKU-NOWHERE'"
    restore_lines = [line for line in lines if line.startswith("restore ")]
    assert len(restore_lines) == 2 and all(" -> 500  " in line for line in restore_lines)
    assert sum(line.startswith("unmatched ") for line in lines) == 2
    data = summary_of(invoke([*args, "--json"]).stdout)
    assert data["dry_run"] is True and data["restored"] == 2 and data["failed"] == 2
    assert {(p["product_id"], p["target_product_id"], p["action"]) for p in data["plan"]} == {
        (100, 500, "restore"),
        (104, None, "unmatched"),
    }
    assert target.stats.adds == 0
    assert not sides.db.exists() and not sides.dest.exists()
    assert snapshot(sides.src_db.parent) == before


# ---------------------------------------------------------------------------------------------- from S3


@pytest.fixture
def s3(aws: None) -> Iterator[LocalS3Server]:
    server = LocalS3Server().start()
    yield server
    server.stop()


def test_from_s3_objects(sides: Sides, source: Portal, target: Portal, s3: LocalS3Server) -> None:
    s3.create_bucket("source-bucket")
    sides.sync_source(
        source,
        "--s3",
        "--s3-bucket",
        "source-bucket",
        "--s3-prefix",
        "old/",
        "--s3-endpoint-url",
        s3.endpoint_url,
    )
    # The source's files are gone; its objects were copied under another prefix.
    client = s3.client()
    for item in client.list_objects_v2(Bucket="source-bucket")["Contents"]:
        new_key = "moved/" + item["Key"].removeprefix("old/")
        client.copy_object(
            Bucket="source-bucket", Key=new_key, CopySource={"Bucket": "source-bucket", "Key": item["Key"]}
        )
        client.delete_object(Bucket="source-bucket", Key=item["Key"])
    ids = sides.products_file(100, 101, 102)
    result, summary = sides.restore(
        target, "--from-s3", "--from-s3-bucket", "source-bucket", "--from-s3-prefix", "moved/",
        "--s3-endpoint-url", s3.endpoint_url, "--match", "xml_id", "--products-file", ids,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert summary["restored"] == 6
    for src, dst in MATCHED.items():
        assert gallery_hashes(target, dst) == source_hashes(source, src)
    again, summary = sides.restore(
        target, "--from-s3", "--from-s3-bucket", "source-bucket", "--from-s3-prefix", "moved/",
        "--s3-endpoint-url", s3.endpoint_url, "--match", "xml_id", "--products-file", ids,
    )  # fmt: skip
    assert again.exit_code == 0 and summary["present"] == 6 and target.stats.adds == 6


# ---------------------------------------------------------------------------------------------- a kill mid-run


def test_sigkill_mid_migration_then_rerun_adds_each_image_once(
    sides: Sides, source: Portal, target: Portal
) -> None:
    sides.sync_source(source)
    config = sides.root / "imgsync.toml"
    config.write_text(
        FAST_CONFIG + 'timeout = 3\n\n[restore]\nrequest_limit = "2s"\nmax_request_bytes = 4096\n'
    )
    target.faults = Faults(slow_add=0.4)  # small requests (4 KiB), each add slow: a kill lands mid-run
    ids = sides.products_file(100, 101, 102)
    args = [
        sys.executable, "-m", "imgsync", "--config", str(config), *sides.restore_args(
            target, "--from-dest", str(sides.src_dest), "--match", "xml_id", "--products-file", ids, "--json"
        ),
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    spawned = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    deadline = time.monotonic() + 30
    while target.stats.adds < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    spawned.send_signal(signal.SIGKILL)
    spawned.communicate(timeout=30)
    assert spawned.returncode == -signal.SIGKILL
    killed_at = target.stats.adds
    assert 2 <= killed_at < 6
    time.sleep(0.5)  # an add in flight when the client died finishes on the portal
    target.faults = Faults()
    rerun = subprocess.run(args, capture_output=True, env=env, timeout=120, check=False)
    assert rerun.returncode == 0, rerun.stderr.decode()
    summary = json.loads(rerun.stdout)
    assert summary["restored"] + summary["present"] == 6
    for src, dst in MATCHED.items():
        hashes = gallery_hashes(target, dst)
        assert hashes == source_hashes(source, src)  # each image exactly once
    assert target.stats.adds == 6
    journal = sides.rows(sides.db, "restores")
    assert not [r for r in journal if r["state"] == "sent"]


def test_a_wal_beside_the_source_is_read_from_a_private_copy(
    sides: Sides, source: Portal, target: Portal
) -> None:
    """A source whose last sync was killed before its checkpoint: what its -wal holds counts, and neither file
    changes (immutable=1 alone would not read the -wal)."""
    sides.sync_source(source)
    killed = sides.root / "killed"
    killed.mkdir()
    con = sqlite3.connect(sides.src_db)
    con.execute("PRAGMA wal_autocheckpoint = 0")
    con.execute("update products set xml_id = 'SKU-B' where product_id = 104")
    con.commit()
    for name in ("imgsync.db", "imgsync.db-wal"):
        (killed / name).write_bytes((sides.src_db.parent / name).read_bytes())
    con.close()
    assert (killed / "imgsync.db-wal").stat().st_size > 0
    before = snapshot(killed)
    sides.src_db = killed / "imgsync.db"
    result, summary = sides.restore(
        target, "--from-dest", str(sides.src_dest), "--match", "xml_id", "--product", "104", "--dry-run"
    )
    assert result.exit_code == 0, result.output
    assert summary["mapping"] == [{"product_id": 104, "target_product_id": 501, "reason": "xml_id 'SKU-B'"}]
    assert snapshot(killed) == before
