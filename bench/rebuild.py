"""Benchmark: ``imgsync rebuild --from-s3`` of N objects on moto, then the warm sync after it.

    python -m bench.rebuild --objects 20000 [--workers 8]

The objects are put straight into moto with boto3 (the metadata an imgsync upload writes), for the images of an
emulated catalog; the database is then rebuilt by ``imgsync rebuild`` in a subprocess (time, peak RSS), and
``imgsync sync`` of every pair runs against the emulator with ``keep_local = false`` (no local file at all):
its requests, downloads and the PUTs that reached the S3 server are the figures.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path

import psutil

from imgsync.emulator import Portal, make_catalog
from imgsync.emulator.catalog import CatalogImage
from imgsync.emulator.s3 import LocalS3Server
from imgsync.localfs import relative_path
from imgsync.models import ImageRef, PortalImage
from imgsync.s3 import object_metadata


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--objects", type=int, default=20_000)
    parser.add_argument("--workers", type=int, default=8)
    args = parser.parse_args(argv)
    n = args.objects
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    catalog = make_catalog(products=n // 4, images_per_product=4, min_size=200, max_size=400, seed=3)
    folder = Path(tempfile.mkdtemp(prefix="imgsync-bench-rebuild-"))
    with LocalS3Server() as s3, Portal(catalog, rate_limit=10_000.0, burst=10_000) as portal:
        s3.create_bucket("bench-rebuild")
        client = s3.client()

        def put(img: CatalogImage) -> None:
            image = PortalImage(
                img.product_id,
                img.image_id,
                img.name,
                img.type,
                img.create_time,
                img.detail_url,
                "",
            )
            client.put_object(
                Bucket="bench-rebuild",
                Key="shop/" + relative_path(image.ref, image.name),
                Body=img.content,
                ContentType=img.content_type,
                Metadata=object_metadata(img.sha256, ImageRef(image.product_id, image.image_id), image),
            )

        started = time.monotonic()
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(put, catalog))
        print(f"put {n} objects in {time.monotonic() - started:.1f} s", file=sys.stderr)
        config = folder / "imgsync.toml"
        config.write_text(
            "[bitrix24]\nrate_limit = 10000.0\nburst = 10000\n[storage]\nkeep_local = false\n"
            f'[s3]\nenabled = true\nbucket = "bench-rebuild"\nprefix = "shop/"\nendpoint_url = "{s3.endpoint_url}"\n'
        )
        base = [sys.executable, "-m", "imgsync", "--config", str(config)]
        where = ["--db", str(folder / "imgsync.db"), "--dest", str(folder / "images")]
        heads = s3.count("HEAD")
        started = time.monotonic()
        # The child's own peak, polled: ru_maxrss of children would count this process (moto's objects)
        # that the child was forked from.
        child = subprocess.Popen(
            [*base, "rebuild", "--from-s3", "--json", "--workers", str(args.workers), *where],
            stdout=subprocess.PIPE,
            text=True,
        )
        watched = psutil.Process(child.pid)
        peak = 0
        while child.poll() is None:
            with contextlib.suppress(psutil.Error):
                peak = max(peak, watched.memory_info().rss)
            time.sleep(0.05)
        out = child.stdout.read() if child.stdout else ""
        rebuild_s = time.monotonic() - started
        if child.returncode != 0:
            raise SystemExit(f"rebuild exited {child.returncode}")
        peak_mib = peak / 2**20
        summary = json.loads(out)
        heads = s3.count("HEAD") - heads
        lists = sum(1 for m, _, q in s3.requests if m == "GET" and "list-type=2" in q)

        pairs = folder / "pairs.csv"
        pairs.write_text("productId,id\n" + "".join(f"{i.product_id},{i.image_id}\n" for i in catalog))
        portal.reset_stats()
        puts = s3.count("PUT")
        started = time.monotonic()
        synced = subprocess.run(
            [
                *base,
                "sync",
                "--webhook",
                portal.webhook_url,
                "--csv",
                str(pairs),
                "--json",
                "--no-progress",
                *where,
            ],
            capture_output=True,
            text=True,
        )
        sync_s = time.monotonic() - started
        if synced.returncode not in (0, 1):
            print(synced.stderr[-2000:], file=sys.stderr)
        warm = json.loads(synced.stdout)
        stats = portal.stats
        line = (
            f"- rebuild of {n:,} objects on moto ({summary['recorded']:,} rows, `--workers {args.workers}`): "
            f"{rebuild_s:.1f} s, peak RSS {peak_mib:.0f} MiB, {lists} LIST + {heads:,} HEAD requests; "
            f"the warm sync after it (`keep_local = false`, no local file): {stats.requests} portal requests "
            f"({stats.by_method.get('batch', 0)} batch calls), {stats.downloads_served} downloads, "
            f"{s3.count('PUT') - puts} PUTs, {warm['unchanged']:,} unchanged, exit {synced.returncode}, "
            f"{sync_s:.1f} s. Made by `python -m bench.rebuild --objects {n}` on "
            f"{datetime.now():%Y-%m-%d %H:%M} ({platform.machine()}, {os.cpu_count()} CPUs, "
            f"Python {platform.python_version()})."
        )
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
