"""``imgsync demo``: a complete sync against the built-in demo portal, offline, twice, then a restore.

The demo portal is the project's emulator (:mod:`imgsync.emulator`) with a small catalog of real PNG
pictures, on 127.0.0.1. The first run downloads every image; the second downloads nothing, because
nothing changed. Then two pictures are deleted on the portal: a sync marks them missing, and
``restore --missing`` puts them back, checked byte for byte. The folder then holds the files, the database
and an HTML report to look at.
"""

from __future__ import annotations

import dataclasses
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

from .config import Settings
from .emulator import CatalogImage, Portal
from .report import build_report
from .restore import RestoreRequest, run_restore
from .restore.select import Selection
from .runner import Request, run_sync
from .store import Store
from .sync import Summary


def png(width: int, height: int, seed: int) -> bytes:
    """A small RGB PNG: a gradient whose colours depend on ``seed`` (stdlib only)."""
    r0, g0, b0 = (seed * 67) % 256, (seed * 131) % 256, (seed * 199) % 256
    rows = bytearray()
    for y in range(height):
        rows.append(0)  # filter: none
        for x in range(width):
            rows += bytes(((r0 + x * 2) % 256, (g0 + y * 2) % 256, (b0 + (x + y)) % 256))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(bytes(rows), 6))
        + chunk(b"IEND", b"")
    )


def demo_catalog(products: int = 8, images_per_product: int = 3) -> list[CatalogImage]:
    """Pictures for the demo portal: product ids from 101, image ids from 1001."""
    out = []
    image_id = 1000
    for p in range(products):
        for n in range(images_per_product):
            image_id += 1
            kind = "DETAIL_PICTURE" if n == 0 else "MORE_PHOTO"
            out.append(
                CatalogImage(
                    product_id=101 + p,
                    image_id=image_id,
                    name=f"product-{101 + p}-{n + 1}.png",
                    type=kind,
                    content=png(96, 64, image_id),
                )
            )
    return out


def _line(summary: Summary) -> str:
    return (
        f"requested {summary.requested}, downloaded {summary.downloaded}, unchanged {summary.unchanged}, "
        f"uploaded {summary.uploaded}, missing {summary.missing}, failed {summary.failed} "
        f"in {summary.duration_s:.2f} s"
    )


def _lose_and_restore(
    portal: Portal, settings: Settings, catalog: list[CatalogImage], echo: Callable[[str], None]
) -> None:
    """Two pictures lost on the portal: a sync marks them missing, ``restore --missing`` puts them back, and
    the portal's galleries are checked to hold their backed-up bytes again, once each."""
    lost = [catalog[-3], catalog[1]]  # a product's DETAIL_PICTURE and another's first MORE_PHOTO
    lost.sort(key=lambda img: (img.product_id, img.image_id))
    for img in lost:
        portal.delete_image(img.product_id, img.image_id)
    echo(f"deleted on the portal: {', '.join(f'{img.product_id}:{img.image_id}' for img in lost)}")
    synced = run_sync(settings, Request(recorded=True))
    with Store(settings.db, readonly=True) as store:
        missing = [str(row.ref) for row in store.missing_rows()]
    echo(f"sync run:   {_line(synced)}, exit {synced.exit_code}; marked missing: {', '.join(missing)}")
    restored = run_restore(settings, RestoreRequest(selection=Selection(missing=True)))
    echo(
        f"restore --missing: {restored.counts_line()} in {restored.duration_s:.2f} s, exit {restored.exit_code}"
    )
    for item in restored.restored_images:
        echo(
            f"  restored {item['product_id']}:{item['image_id']} as "
            f"{item['target_product_id']}:{item['new_image_id']}"
        )
    for img in lost:
        held = [image_id for image_id, _type, sha in portal.gallery(img.product_id) if sha == img.sha256]
        where = ", ".join(f"{img.product_id}:{image_id}" for image_id in held) or "nowhere"
        echo(
            f"check:      {img.product_id}:{img.image_id}'s bytes are on the portal "
            f"{'once' if len(held) == 1 else f'{len(held)} times'} ({where})"
        )


def run_demo(
    folder: Path, *, products: int = 8, with_s3: bool = False, echo: Callable[[str], None] = print
) -> tuple[Summary, Summary]:
    """Run the demo into ``folder``; return the two summaries."""
    folder = folder.resolve()
    folder.mkdir(parents=True, exist_ok=True)
    catalog = demo_catalog(products)
    pairs = [f"{img.product_id}:{img.image_id}" for img in catalog]
    s3_server = None
    with Portal(catalog, rate_limit=50.0, burst=100) as portal:
        settings = Settings(webhook_url=portal.webhook_url, dest=folder / "images", db=folder / "imgsync.db")
        if with_s3:
            from .emulator.s3 import LocalS3Server

            s3_server = LocalS3Server().start()
            s3_server.create_bucket("imgsync-demo")
            settings = dataclasses.replace(
                settings, s3_enabled=True, s3_bucket="imgsync-demo", s3_endpoint_url=s3_server.endpoint_url
            )
        try:
            echo(f"demo portal: {portal.url} ({len(catalog)} images in {products} products)")
            first = run_sync(settings, Request(pairs=pairs))
            echo(f"first run:  {_line(first)}")
            second = run_sync(settings, Request(pairs=pairs))
            echo(f"second run: {_line(second)}")
            echo(
                f"portal requests: {portal.stats.requests} in all, "
                f"{portal.stats.by_method.get('batch', 0)} batch calls, {portal.stats.downloads_served} downloads"
            )
            # The whole catalog, as a nightly cron line would back it up: the listing alone, nothing changed.
            portal.reset_stats()
            whole = run_sync(settings, Request(all=True))
            echo(
                f"--all run:  {_line(whole)}; {portal.stats.requests} portal requests (the catalog's listing)"
            )
            _lose_and_restore(portal, settings, catalog, echo)
        finally:
            if s3_server is not None:
                s3_server.stop()
    echo(f"files:    {settings.dest}")
    echo(f"database: {settings.db}   (try: imgsync status --db {settings.db})")
    if with_s3:
        echo(f"S3:       bucket {settings.s3_bucket} on a local server (stopped now)")
    report = build_report(settings.db, settings.dest, folder / "report.html")
    echo(f"report:   {report}   (open it in a browser)")
    return first, second
