"""``python -m imgsync.emulator``: run a portal until SIGTERM/SIGINT.

Prints one JSON line on stdout (``url``, ``webhook_url``, ``token_url``; with ``--oauth`` also an OAuth
pair and the client id/secret), serves, and on the signal prints the stats as JSON on stderr and exits 0.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from types import FrameType

from .catalog import make_catalog, make_store_catalog
from .portal import Portal


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m imgsync.emulator", description=__doc__)
    parser.add_argument("--products", type=int, default=10)
    parser.add_argument("--images-per-product", type=int, default=3)
    parser.add_argument("--min-size", type=int, default=1000)
    parser.add_argument("--max-size", type=int, default=20000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--rate-limit", type=float, default=2.0)
    parser.add_argument("--burst", type=float, default=50)
    parser.add_argument("--latency", type=float, default=0.0)
    parser.add_argument("--link-ttl", type=float, default=3600.0)
    parser.add_argument("--one-time-links", action="store_true")
    parser.add_argument("--no-count-downloads", action="store_true", help="downloads do not use the bucket")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--oauth", action="store_true", help="also print an OAuth token pair")
    store = parser.add_argument_group(
        "whole catalog",
        "with any of these, --products simple products and the items below, each with --images-per-product pictures",
    )
    store.add_argument("--sets", type=int, default=0)
    store.add_argument("--parents", type=int, default=0, help="parent products with variations")
    store.add_argument("--variations-per-parent", type=int, default=2)
    store.add_argument("--services", type=int, default=0)
    store.add_argument(
        "--store", action="store_true", help="a whole catalog even without sets/parents/services"
    )
    store.add_argument("--image-page-size", type=int, default=None, help="page catalog.productImage.list")
    store.add_argument("--operating-limit", type=float, default=None, help="seconds per method per window")
    store.add_argument("--cost-per-call", type=float, default=0.0, help="operating seconds per call")
    store.add_argument("--operating-window", type=float, default=600.0)
    args = parser.parse_args(argv)

    items = None
    if args.store or args.sets or args.parents or args.services:
        items, catalog = make_store_catalog(
            args.products,
            sets=args.sets,
            parents=args.parents,
            variations_per_parent=args.variations_per_parent,
            services=args.services,
            images_per_item=args.images_per_product,
            min_size=args.min_size,
            max_size=args.max_size,
            seed=args.seed,
        )
    else:
        catalog = make_catalog(
            args.products, args.images_per_product, args.min_size, args.max_size, args.seed
        )
    portal = Portal(
        catalog,
        items=items,
        image_page_size=args.image_page_size,
        operating_limit=args.operating_limit,
        cost_per_call=args.cost_per_call,
        operating_window=args.operating_window,
        rate_limit=args.rate_limit,
        burst=args.burst,
        latency=args.latency,
        link_ttl=args.link_ttl,
        one_time_links=args.one_time_links,
        count_downloads=not args.no_count_downloads,
        port=args.port,
    )
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    portal.start()
    info = {"url": portal.url, "webhook_url": portal.webhook_url, "token_url": portal.token_url}
    if args.oauth:
        access, refresh = portal.issue_tokens()
        info.update(
            access_token=access,
            refresh_token=refresh,
            client_id=portal.client_id,
            client_secret=portal.client_secret,
        )
    print(json.dumps(info), flush=True)
    while not stop.wait(1.0):
        pass
    portal.stop()
    print(json.dumps(portal.stats.as_dict()), file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
