"""Does ``imgsync report`` stay flat in the catalog's size? Time and peak memory at 10^4 and 10^6 images.

``python -m bench.report_scale`` (``--sizes 10000,1000000``). For each size it builds a state database with
the Store's own migrations and fills it with direct SQLite inserts: 99% ``ok``, 0.5% ``failed``, 0.5%
``missing``, 200 runs, and real pictures on disk for the newest ``--recent`` images (the contact sheet's).
Then a child process runs :func:`imgsync.report.build_report` twice, cold (thumbnails made) and warm
(thumbnails reused), and reports its times and its peak RSS (``ru_maxrss``; psutil for the RSS after imports).

Memory stays flat. Time grows with the table where a query must scan it: ``sum(size)`` for the bytes backed
up, and the contact sheet's ``order by last_changed_at desc limit N``, which the schema has no index for yet.
``--index`` adds that index (as a store migration would) to show the difference.
"""

from __future__ import annotations

import argparse
import io
import json
import random
import resource
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any


def fill(
    db_path: Path, dest: Path, images: int, recent: int, runs: int = 200, seed: int = 1, index: bool = False
) -> None:
    """A state database of ``images`` rows; files on disk only for the ``recent`` newest.

    ``index``: add an index on ``images(last_changed_at)``, which the schema lacks so far: without it the
    contact sheet's query scans the table (see the module docstring).
    """
    from PIL import Image

    from imgsync.store import Store

    Store(db_path).close()  # the schema, by the migrations
    rng = random.Random(seed)
    base = datetime(2025, 1, 1, tzinfo=UTC)
    per_product = 4

    def stamp(seconds: float) -> str:
        return (base + timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%SZ")

    def rows() -> Iterator[tuple[Any, ...]]:
        for n in range(images):
            product_id, image_id = 1 + n // per_product, 100000 + n
            roll = rng.random()
            status, error = "ok", None
            if roll < 0.005:
                status, error = "failed", "0: Internal error"
            elif roll < 0.01:
                status, error = "missing", "gone upstream; the backup is kept"
            name = f"photo-{image_id}.jpg"
            # The newest images come last: their last_changed_at is the largest.
            changed = stamp(n * 180 * 86400 / images)
            yield (
                product_id,
                image_id,
                name,
                "MORE_PHOTO",
                "2024-10-17T10:48:05+03:00",
                f"/upload/iblock/abc/{image_id:032d}/{name}",
                f"{rng.getrandbits(256):064x}",
                rng.randint(20_000, 400_000),
                "image/jpeg",
                f"{product_id}/{image_id}-{name}",
                status,
                error,
                changed,
                changed,
                changed,
            )

    con = sqlite3.connect(db_path)
    with con:
        con.executemany(
            "insert into images (product_id, image_id, name, type, create_time, detail_url, sha256, size, "
            "content_type, local_path, status, error, first_synced_at, last_checked_at, last_changed_at) "
            "values (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            rows(),
        )
        con.executemany(
            "insert into runs (id, started_at, finished_at, exit_code, requested, downloaded, unchanged, "
            "uploaded, missing, failed, duration_s) values (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (
                    r + 1,
                    stamp(r * 86400),
                    stamp(r * 86400 + 600),
                    0 if r % 7 else 1,
                    images,
                    d := rng.randint(0, images // 100),
                    images - d,
                    0,
                    rng.randint(0, 5),
                    rng.randint(0, 5),
                    rng.uniform(300, 900),
                )
                for r in range(runs)
            ],
        )
    if index:
        with con:
            con.execute("create index idx_images_last_changed_at on images (last_changed_at)")
    newest = con.execute(
        "select local_path from images order by last_changed_at desc limit ?", [recent]
    ).fetchall()
    con.close()
    for i, (local_path,) in enumerate(newest):
        target = dest / local_path
        target.parent.mkdir(parents=True, exist_ok=True)
        out = io.BytesIO()
        Image.new("RGB", (800, 600), ((i * 37) % 256, (i * 91) % 256, 128)).save(out, "JPEG")
        target.write_bytes(out.getvalue())


def child(db: str, dest: str, out: str, recent: int) -> None:
    """Run in a fresh process: build the report cold and warm; print times and memory as JSON."""
    import psutil

    from imgsync.report import build_report

    rss_start = psutil.Process().memory_info().rss
    t0 = time.perf_counter()
    build_report(Path(db), Path(dest), Path(out), recent=recent)
    cold = time.perf_counter() - t0
    t0 = time.perf_counter()
    build_report(Path(db), Path(dest), Path(out), recent=recent)
    warm = time.perf_counter() - t0
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(
        json.dumps(
            {
                "cold_s": round(cold, 3),
                "warm_s": round(warm, 3),
                "rss_after_imports_mib": round(rss_start / 2**20, 1),
                "peak_rss_mib": round(peak_kib / 1024, 1),
                "html_kib": round(Path(out).stat().st_size / 1024, 1),
            }
        )
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="10000,1000000", help="image rows per database (comma separated)")
    parser.add_argument("--recent", type=int, default=200)
    parser.add_argument(
        "--index", action="store_true", help="add an index on images(last_changed_at), as a migration would"
    )
    parser.add_argument("--child", nargs=3, metavar=("DB", "DEST", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(*args.child, recent=args.recent)
        return 0
    results = []
    for size in [int(s) for s in args.sizes.split(",")]:
        with tempfile.TemporaryDirectory(prefix="imgsync-report-bench-") as tmp:
            root = Path(tmp)
            t0 = time.perf_counter()
            fill(root / "imgsync.db", root / "images", size, args.recent, index=args.index)
            filled = time.perf_counter() - t0
            db_mib = (root / "imgsync.db").stat().st_size / 2**20
            cmd = [sys.executable, "-m", "bench.report_scale", "--recent", str(args.recent), "--child"]
            cmd += [str(root / "imgsync.db"), str(root / "images"), str(root / "report.html")]
            done = subprocess.run(cmd, capture_output=True, text=True, check=True)
            result = {
                "images": size,
                "index": args.index,
                "db_mib": round(db_mib, 1),
                "fill_s": round(filled, 1),
            }
            result.update(json.loads(done.stdout))
            results.append(result)
            print(json.dumps(result), flush=True)
    if len(results) > 1:
        small, big = results[0], results[-1]
        print(
            f"x{big['images'] / small['images']:g} images: peak RSS x{big['peak_rss_mib'] / small['peak_rss_mib']:.2f}, "
            f"cold time x{big['cold_s'] / small['cold_s']:.2f}, warm time x{big['warm_s'] / small['warm_s']:.2f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
