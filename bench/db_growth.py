"""Does the state database grow with nightly runs that change nothing? 1 cold + 10 warm runs over 20,000 images.

``python -m bench.db_growth`` (``--images 20000 --warm 10``). The emulator serves a catalog of tiny pictures at a
high rate limit; each run is one :func:`imgsync.runner.run_sync` call, as ``imgsync sync`` makes it. After each
run it prints the size of the database file plus its WAL, the rows of ``events`` and ``runs``, and what the old
rule (an ``unchanged`` event per image per run) would have held: the same rows plus one per unchanged image, and
the bytes of a copy of the database into which those rows are inserted (VACUUMed, like the measured one, so
the two figures compare).
"""

from __future__ import annotations

import argparse
import shutil
import sqlite3
import tempfile
import time
from pathlib import Path

from imgsync.config import Settings
from imgsync.emulator import Portal, make_catalog
from imgsync.runner import Request, run_sync


def db_bytes(db: Path) -> int:
    """The database file plus its WAL (what the disk holds for it right now)."""
    wal = db.with_name(db.name + "-wal")
    return db.stat().st_size + (wal.stat().st_size if wal.exists() else 0)


def compact_bytes(db: Path) -> int:
    """The file's size once checkpointed and VACUUMed: the data, without free pages or WAL."""
    copy = db.with_name("compact-" + db.name)
    shutil.copy(db, copy)
    wal = db.with_name(db.name + "-wal")
    if wal.exists():
        shutil.copy(wal, copy.with_name(copy.name + "-wal"))
    con = sqlite3.connect(copy)
    con.execute("pragma wal_checkpoint(truncate)")
    con.execute("vacuum")
    con.close()
    size = copy.stat().st_size
    for path in copy.parent.glob(copy.name + "*"):
        path.unlink()
    return size


def old_rule_bytes(db: Path, unchanged_by_run: dict[int, int], refs: list[tuple[int, int]]) -> int:
    """The compact size of a copy holding the ``unchanged`` events the old rule wrote (one per image per run)."""
    copy = db.with_name("old-" + db.name)
    shutil.copy(db, copy)
    wal = db.with_name(db.name + "-wal")
    if wal.exists():
        shutil.copy(wal, copy.with_name(copy.name + "-wal"))
    con = sqlite3.connect(copy)
    with con:
        for run_id, n in unchanged_by_run.items():
            at = con.execute("select finished_at from runs where id = ?", [run_id]).fetchone()[0]
            con.executemany(
                "insert into events (run_id, product_id, image_id, action, detail, at) "
                "values (?, ?, ?, 'unchanged', '', ?)",
                [(run_id, p, i, at) for p, i in refs[:n]],
            )
    con.execute("pragma wal_checkpoint(truncate)")
    con.execute("vacuum")
    con.close()
    size = copy.stat().st_size
    for path in copy.parent.glob(copy.name + "*"):
        path.unlink()
    return size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=20000)
    parser.add_argument("--warm", type=int, default=10)
    parser.add_argument("--workers", type=int, default=8)
    args = parser.parse_args()

    per_product = 4
    catalog = make_catalog(
        products=args.images // per_product, images_per_product=per_product, min_size=64, max_size=256, seed=5
    )
    refs = [(img.product_id, img.image_id) for img in catalog]
    pairs = [f"{p}:{i}" for p, i in refs]
    with (
        tempfile.TemporaryDirectory(prefix="imgsync-db-growth-") as tmp,
        Portal(catalog, rate_limit=100000.0, burst=100000) as portal,
    ):
        root = Path(tmp)
        settings = Settings(
            webhook_url=portal.webhook_url,
            dest=root / "images",
            db=root / "imgsync.db",
            rate_limit=100000.0,
            burst=100000,
            workers=args.workers,
        )
        print(
            f"{'run':<8} {'s':>6} {'down':>6} {'unch':>6} {'events':>8} {'db+wal bytes':>13} "
            f"{'compact':>10} {'old rule: events':>17} {'old compact':>12}"
        )
        unchanged_by_run: dict[int, int] = {}
        for n in range(args.warm + 1):
            started = time.monotonic()
            summary = run_sync(settings, Request(pairs=pairs))
            took = time.monotonic() - started
            assert summary.exit_code == 0, summary
            assert summary.run_id is not None
            unchanged_by_run[summary.run_id] = summary.unchanged
            con = sqlite3.connect(settings.db)
            events = con.execute("select count(*) from events").fetchone()[0]
            con.close()
            old_events = events + sum(unchanged_by_run.values())
            print(
                f"{'cold' if n == 0 else f'warm {n}':<8} {took:>6.1f} {summary.downloaded:>6} "
                f"{summary.unchanged:>6} {events:>8} {db_bytes(settings.db):>13} "
                f"{compact_bytes(settings.db):>10} {old_events:>17} "
                f"{old_rule_bytes(settings.db, unchanged_by_run, refs):>12}",
                flush=True,
            )


if __name__ == "__main__":
    main()
