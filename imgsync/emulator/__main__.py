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

from .catalog import make_catalog
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
    args = parser.parse_args(argv)

    catalog = make_catalog(args.products, args.images_per_product, args.min_size, args.max_size, args.seed)
    portal = Portal(
        catalog,
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
