"""An unreadable or corrupt state database: a clear error (exit 2), never a silent fresh start over a backup.

Each case starts from a real backup (a finished sync), damages the database, and checks that ``sync``,
``status`` and ``verify`` refuse it with a message naming it, that the file is left exactly as it was, that no
request reached the portal and that the backed-up files are untouched.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from imgsync.emulator import Portal

from .conftest import FaultEnv, catalog, final_files, pairs_of, sha256_of


def _overwrite_pages(db: Path) -> None:
    """Random bytes over the middle of the file: the b-trees of the tables no longer make sense."""
    data = bytearray(db.read_bytes())
    middle = len(data) // 2
    data[middle - 4096 : middle + 4096] = hashlib.sha256(b"noise").digest() * 256
    db.write_bytes(bytes(data))


def _truncate(db: Path) -> None:
    data = db.read_bytes()
    db.write_bytes(data[: len(data) // 3])


def _not_sqlite(db: Path) -> None:
    db.write_bytes(b"product_id,image_id\n1,2\n" * 100)


def _directory(db: Path) -> None:
    db.unlink()
    db.mkdir()
    (db / "something").write_text("not a database")


def _no_permission(db: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("root reads any file")
    db.chmod(0)


def _bad_header(db: Path) -> None:
    data = bytearray(db.read_bytes())
    data[:16] = b"SQLite format 2\x00"
    db.write_bytes(bytes(data))


# How each is refused: SQLite's own words for a damaged file, ours for one that is not SQLite at all.
DAMAGE = {
    # Which of the two SQLite notices first depends on which table's pages the middle of the file holds.
    "pages overwritten": (
        _overwrite_pages,
        (
            "the state database cannot be used (database disk image is malformed)",
            "the state database is corrupt (",
        ),
    ),
    "truncated": (_truncate, "the state database cannot be used (database disk image is malformed)"),
    "not sqlite": (_not_sqlite, "not an SQLite database; refusing to start afresh over it"),
    "bad header": (_bad_header, "not an SQLite database; refusing to start afresh over it"),
    "a directory": (_directory, "is a directory"),
    "no read permission": (_no_permission, "cannot read the state database (Permission denied)"),
}


def _fingerprint(path: Path) -> str:
    if path.is_dir():
        return "dir:" + ",".join(sorted(p.name for p in path.iterdir()))
    if not os.access(path, os.R_OK):
        stat = path.stat()
        return f"unreadable:{stat.st_size}:{stat.st_mtime_ns}"
    return sha256_of(path)


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damaged_database_is_refused_never_replaced(
    fenv: FaultEnv, make_portal: Callable[..., Portal], damage: str
) -> None:
    images = catalog(products=10, per=3, min_size=200, max_size=2000, seed=91)
    portal = make_portal(images)
    assert fenv.sync(portal, *pairs_of(portal)).returncode == 0
    for leftover in fenv.db.parent.glob("imgsync.db-*"):  # a clean close leaves none; be sure
        leftover.unlink()
    damage_db, expected = DAMAGE[damage]
    damage_db(fenv.db)
    before = _fingerprint(fenv.db)
    files = {rel: sha256_of(p) for rel, p in final_files(fenv.dest).items()}
    portal.reset_stats()

    run = fenv.sync(portal, *pairs_of(portal))
    assert run.returncode == 2, run
    assert str(fenv.db) in run.stderr, run.stderr
    assert any(text in run.stderr for text in ((expected,) if isinstance(expected, str) else expected)), (
        run.stderr
    )
    if damage not in ("a directory", "no read permission"):
        assert "restore it from a backup or move it aside" in run.stderr  # says what to do
    assert portal.stats.requests == 0

    for command in (
        ["status", "--db", str(fenv.db)],
        ["verify", "--db", str(fenv.db), "--dest", str(fenv.dest)],
    ):
        other = fenv.run(*command)
        assert other.returncode == 2, other
        assert str(fenv.db) in other.stderr

    assert _fingerprint(fenv.db) == before  # not repaired, not replaced, not started afresh
    assert {rel: sha256_of(p) for rel, p in final_files(fenv.dest).items()} == files
