"""The naive client: per image one ``catalog.productImage.get``, then its download. No batch, one at a time.

``python -m bench.naive --webhook URL --csv pairs.csv --dest DIR --rate-limit R --burst B`` prints one JSON
line. It paces itself with the portal's own bucket model (see :mod:`bench.pacing`), so it is the naive
approach at its best, not a script that hammers the portal into 503s.
"""

from __future__ import annotations

import sys

import requests

from .baseline import Counters, arguments, call, download, download_headers, read_pairs, target_for
from .pacing import Pacer


def main(argv: list[str] | None = None) -> int:
    args = arguments(__doc__ or "").parse_args(argv)
    counters = Counters()
    pairs = read_pairs(args.csv)
    webhook = args.webhook if args.webhook.endswith("/") else args.webhook + "/"
    headers = download_headers(webhook)
    pacer = Pacer(args.rate_limit, args.burst)
    with requests.Session() as session:
        for product_id, image_id in pairs:
            data = call(
                session,
                pacer,
                counters,
                webhook + "catalog.productImage.get",
                {"productId": product_id, "id": image_id},
            )
            image = data["result"]["productImage"]
            download(session, pacer, counters, image["downloadUrl"], headers, target_for(args.dest, image))
    print(counters.report(len(pairs)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
