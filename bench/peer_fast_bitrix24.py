"""The best peer: fast-bitrix24 for the metadata, then one requests session for the downloads.

``python -m bench.peer_fast_bitrix24 --webhook URL --csv pairs.csv --dest DIR --rate-limit R --burst B``
prints one JSON line.

- Metadata: ``Bitrix.call("catalog.productImage.get", [...])`` packs the calls 50 to a ``batch``, sends up
  to ``request_pool_size`` of them at once and throttles with its own leaky bucket, configured here with
  the portal's numbers (``request_pool_size=burst``, ``requests_per_second=rate``, as its FAQ says for
  Enterprise). It returns the images in completion order, so they are matched back by ``productId``/``id``.
- When the job needs more batches than the bucket holds, the calls go inside ``bitrix.slow()``, the remedy
  its FAQ gives for server errors under load. Without it, at 80 batches against a bucket of 50, its
  throttle (which records a request when the answer arrives) let up to 50 more requests out while the
  first were in flight; the portal refused them with 503, and after ten failures in a row fast-bitrix24
  gave up ("All attempts to get data from server exhausted"). ``slow()`` sends one batch at a time.
- Downloads: one ``requests.Session``, one download after the other, paced by the same bucket model the
  naive script uses. fast-bitrix24's throttle only sees its own calls, so the pacer starts with one slot
  taken per batch it made (at most the bucket), which never under-counts what the portal holds.
- No state: a rerun downloads everything again. The links are used minutes after they were issued on a big
  catalog (all metadata first), which the docs warn against; the emulator's links live an hour, so it works.
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
import warnings

import requests
from fast_bitrix24 import Bitrix

from .baseline import Counters, arguments, download, download_headers, read_pairs, target_for
from .pacing import Pacer

BATCH = 50


def main(argv: list[str] | None = None) -> int:
    parser = arguments(__doc__ or "")
    parser.add_argument(
        "--download-workers", type=int, default=1, help="parallel downloads (default 1: one session)"
    )
    args = parser.parse_args(argv)
    counters = Counters()
    pairs = read_pairs(args.csv)
    bitrix = Bitrix(
        args.webhook,
        verbose=False,
        request_pool_size=int(args.burst),
        requests_per_second=args.rate_limit,
    )
    batches = math.ceil(len(pairs) / BATCH)
    with warnings.catch_warnings(), bitrix.slow() if batches > args.burst else contextlib.nullcontext():
        warnings.simplefilter("ignore", DeprecationWarning)  # its sync wrapper calls get_event_loop()
        found = bitrix.call("catalog.productImage.get", [{"productId": p, "id": i} for p, i in pairs])
    if isinstance(found, dict):  # one item comes back bare
        found = [found]
    images = {(int(img["productId"]), int(img["id"])): img for img in found}
    meta_s = time.perf_counter() - counters.started
    pacer = Pacer(args.rate_limit, args.burst, level=batches)
    headers = download_headers(args.webhook)
    todo = [images[pair] for pair in pairs]
    with requests.Session() as session:
        if args.download_workers <= 1:
            for image in todo:
                download(
                    session, pacer, counters, image["downloadUrl"], headers, target_for(args.dest, image)
                )
        else:
            from concurrent.futures import ThreadPoolExecutor

            adapter = requests.adapters.HTTPAdapter(pool_maxsize=args.download_workers)
            session.mount("http://", adapter)
            session.mount("https://", adapter)
            with ThreadPoolExecutor(args.download_workers) as pool:
                for fut in [
                    pool.submit(
                        download,
                        session,
                        pacer,
                        counters,
                        img["downloadUrl"],
                        headers,
                        target_for(args.dest, img),
                    )
                    for img in todo
                ]:
                    fut.result()
    counters.requests += batches
    print(counters.report(len(pairs), metadata_s=round(meta_s, 3)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
