"""The naive migration to another portal: per product one ``catalog.product.list`` filtered by the source
item's ``xmlId`` (its target item), then per image one ``catalog.productImage.add``, a
``catalog.productImage.get`` of the new image and its download, to check the bytes. No batch, one request at a
time, no journal.

``python -m bench.naive_migrate --webhook URL --csv images.csv --iblock ID --rate-limit R --burst B`` prints
one JSON line. The CSV (with a header) holds ``product_id,xml_id,type,name,path,sha256``: the source's images,
their source item's external code and their backup files. ``--iblock`` is the target's product catalog (the
script is told it; it does not ask ``catalog.catalog.list``). A product whose key finds no target item or
several is skipped and counted. Paced with the portal's bucket model (:mod:`bench.pacing`), like
:mod:`bench.naive_restore`; written against the HTTP API with ``requests`` alone.
"""

from __future__ import annotations

import argparse
import base64
import csv
import hashlib
import sys
import tempfile
from pathlib import Path

import requests

from .baseline import Counters, call, download, download_headers
from .pacing import Pacer


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--webhook", required=True)
    parser.add_argument("--csv", required=True, type=Path)
    parser.add_argument("--iblock", required=True, type=int, help="the target's product catalog")
    parser.add_argument("--rate-limit", type=float, default=2.0)
    parser.add_argument("--burst", type=float, default=50)
    args = parser.parse_args(argv)
    with args.csv.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    webhook = args.webhook if args.webhook.endswith("/") else args.webhook + "/"
    headers = download_headers(webhook)
    pacer = Pacer(args.rate_limit, args.burst)
    counters = Counters()
    targets: dict[str, int | None] = {}
    same = unmatched = 0
    with requests.Session() as session, tempfile.TemporaryDirectory(prefix="naive-migrate-") as tmp:
        for row in rows:
            pid = row["product_id"]
            if pid not in targets:
                found = call(
                    session,
                    pacer,
                    counters,
                    webhook + "catalog.product.list",
                    {
                        "select": ["id", "iblockId", "xmlId"],
                        "filter": {"iblockId": args.iblock, "xmlId": row["xml_id"]},
                    },
                )
                items = found["result"]["products"]
                targets[pid] = int(items[0]["id"]) if len(items) == 1 else None
            target_id = targets[pid]
            if target_id is None:
                unmatched += 1
                continue
            content = Path(row["path"]).read_bytes()
            added = call(
                session,
                pacer,
                counters,
                webhook + "catalog.productImage.add",
                {
                    "fields": {"productId": target_id, "type": row["type"]},
                    "fileContent": [row["name"], base64.b64encode(content).decode()],
                },
            )
            new_id = added["result"]["productImage"]["id"]
            got = call(
                session,
                pacer,
                counters,
                webhook + "catalog.productImage.get",
                {"productId": target_id, "id": new_id},
            )
            target = Path(tmp) / f"{new_id}"
            download(session, pacer, counters, got["result"]["productImage"]["downloadUrl"], headers, target)
            same += hashlib.sha256(target.read_bytes()).hexdigest() == row["sha256"]
    print(counters.report(len(rows), same_bytes=same, unmatched=unmatched))
    return 0


if __name__ == "__main__":
    sys.exit(main())
