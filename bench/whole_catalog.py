"""What a whole-catalog backup costs: requests of cold and warm runs as pairs (a CSV of every pair), ``--all`` and
``--all --deep``, over the same catalog, and their projection to a million images at the portal's 2 requests/s.

    python -m bench.whole_catalog [--items 2000 --images-per-item 5]

Each mode runs cold (empty state) then warm (nothing changed) against the emulator at a high rate limit, so the
wall time here is the machine's; the request counts are exact, and the projection is requests / 2 per second
(downloads count against the limit, as on a portal that counts them: the emulator's default). Prints a Markdown
table for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import csv
import tempfile
import time
from pathlib import Path

from imgsync.config import Settings
from imgsync.emulator import Portal, make_store_catalog
from imgsync.runner import Request, run_sync

RATE = 2.0  # the portal's requests per second (Enterprise: 5)


def run(portal: Portal, root: Path, request: Request) -> tuple[int, int, float]:
    settings = Settings(
        webhook_url=portal.webhook_url,
        dest=root / "images",
        db=root / "imgsync.db",
        rate_limit=1e5,
        burst=100000,
    )
    portal.reset_stats()
    started = time.monotonic()
    summary = run_sync(settings, request)
    assert summary.exit_code == 0, summary.error
    stats = portal.stats
    return stats.requests, stats.downloads_served, time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=2000)
    parser.add_argument("--images-per-item", type=int, default=5)
    args = parser.parse_args()
    items, images = make_store_catalog(
        args.items, images_per_item=args.images_per_item, min_size=100, max_size=300, seed=4
    )
    n_images = len(images)
    rows = []
    with (
        Portal(images, items=items, rate_limit=1e5, burst=100000) as portal,
        tempfile.TemporaryDirectory() as tmp,
    ):
        pairs = Path(tmp) / "pairs.csv"
        with pairs.open("w", newline="") as out:
            writer = csv.writer(out)
            writer.writerow(["productId", "id"])
            writer.writerows((img.product_id, img.image_id) for img in images)
        modes = {
            "pairs (CSV of every pair)": Request(csv_paths=[str(pairs)]),
            "--all": Request(all=True),
            "--all --deep": Request(all=True, deep=True),
        }
        for name, request in modes.items():
            root = Path(tmp) / name.replace(" ", "_").replace("-", "")
            root.mkdir()
            for phase in ("cold", "warm"):
                requests, downloads, seconds = run(portal, root, request)
                rows.append((name, phase, requests, downloads, seconds))
    scale = 1_000_000 / n_images
    print(f"{args.items} items, {n_images} images; projection to 1,000,000 images at {RATE:g} requests/s\n")
    print(
        "| mode | run | requests | of which downloads | seconds here | projected requests | projected time |"
    )
    print("|---|---|---:|---:|---:|---:|---:|")
    for name, phase, requests, downloads, seconds in rows:
        projected = requests * scale
        hours = projected / RATE / 3600
        print(
            f"| {name} | {phase} | {requests:,} | {downloads:,} | {seconds:.1f} | {projected:,.0f} | {hours:.1f} h |"
        )


if __name__ == "__main__":
    main()
