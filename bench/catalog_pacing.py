"""How close the whole-catalog listing runs to the bound the portal's operating-time budget sets.

The portal lets each method use ``operating_limit`` seconds of execution time per ``operating_window``
(limits.md: 480 s per 10 minutes in the docs' example). A listing whose commands cost C seconds in all
cannot take less than about ``C / limit * window`` (the first window's worth can go at once, so a little
less is possible); this prints the listing's time against that bound, and the 429s the portal answered.
Scaled down so that it runs in seconds: a window of a few seconds, each ``catalog.product.list`` costing
``--cost`` seconds on top of its real processing.

    .venv/bin/python -m bench.catalog_pacing                     # 3000 items, 0.1 s a page, 3 s per 2 s
    .venv/bin/python -m bench.catalog_pacing --items 5000 --cost 0.2 --limit 4 --window 2

Also, with ``--products-file-lines N``: the peak RSS growth of reading an N-line ``--products-file``
(``collect_products``), to show that it stays flat.
"""

from __future__ import annotations

import argparse
import gc
import resource
import tempfile
import time
from pathlib import Path

from imgsync.bitrix import Client, RetryPolicy, WebhookAuth
from imgsync.bitrix.catalog import CatalogListing
from imgsync.emulator import Portal, make_store_catalog
from imgsync.inputs import collect_products


def pacing(items: int, cost: float, limit: float, window: float, threshold: float) -> float:
    catalog, images = make_store_catalog(items, images_per_item=0)
    with Portal(
        images,
        items=catalog,
        rate_limit=1000.0,
        burst=10_000,
        operating_limit=limit,
        method_cost={"catalog.product.list": cost},
        operating_window=window,
    ) as portal:
        client = Client(
            WebhookAuth(portal.webhook_url),
            rate_limit=1000.0,
            burst=10_000,
            retry=RetryPolicy(attempts=8, base=0.05, cap=0.5),
            operating_budget=limit,
            operating_threshold=threshold,
            operating_window=window,
        )
        began = time.monotonic()
        listing = CatalogListing(client)
        listed = sum(len(page) for page in listing.pages())
        elapsed = time.monotonic() - began
        spent = client.operating.spent.get("catalog.product.list", 0.0)
        bound = spent / limit * window
        stats = portal.stats
        print(
            f"items {listed} (complete: {listing.complete}), catalog.product.list commands "
            f"{stats.batch_commands['catalog.product.list']} in {stats.by_method['batch']} batches, "
            f"{stats.requests} requests"
        )
        print(
            f"operating time spent {spent:.2f} s; budget {limit:g} s per {window:g} s; "
            f"bound {bound:.2f} s; listing took {elapsed:.2f} s (waited {client.operating.waited:.2f} s)"
        )
        print(f"ratio {elapsed / bound:.2f}x the bound; 429s: {stats.rejected_429}")
        return elapsed / bound


def products_file_rss(lines: int) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "ids.txt"
        with path.open("w") as handle:
            handle.write("productId,name\n")
            for n in range(1, lines + 1):
                handle.write(f"{n},item {n}\n")
        gc.collect()
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        began = time.monotonic()
        with collect_products([str(path)]) as found:
            count = len(found)
            chunks = sum(1 for _ in found.chunks(50))
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(
            f"--products-file of {lines:,} lines: {count:,} ids, {chunks:,} chunks of 50 in "
            f"{time.monotonic() - began:.1f} s; peak RSS grew {(after - before) / 1024:.1f} MiB "
            f"(from {before / 1024:.1f} MiB)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--items", type=int, default=3000)
    parser.add_argument("--cost", type=float, default=0.1, help="seconds of operating time per list page")
    parser.add_argument("--limit", type=float, default=3.0, help="the portal's budget per window (seconds)")
    parser.add_argument("--window", type=float, default=2.0, help="the budget's window (seconds)")
    parser.add_argument("--threshold", type=float, default=0.9, help="the client's share of the budget")
    parser.add_argument("--products-file-lines", type=int, default=0)
    args = parser.parse_args()
    if args.products_file_lines:
        products_file_rss(args.products_file_lines)
    pacing(args.items, args.cost, args.limit, args.window, args.threshold)


if __name__ == "__main__":
    main()
