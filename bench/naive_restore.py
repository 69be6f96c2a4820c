"""The naive restore: per image one ``catalog.productImage.add``, then a ``catalog.productImage.get`` of the new
image and its download, to check the bytes. No batch, one request at a time, no journal.

``python -m bench.naive_restore --webhook URL --csv images.csv --rate-limit R --burst B`` prints one JSON
line. The CSV (with a header) holds ``product_id,image_id,type,name,path,sha256``: the images to put back and
their backup files. It paces itself with the portal's bucket model (:mod:`bench.pacing`) so that it is the
naive approach at its best, not a script that hammers the portal into 503s. Written against the HTTP API
with ``requests`` alone: it shares no code with imgsync.
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
    parser.add_argument("--rate-limit", type=float, default=2.0)
    parser.add_argument("--burst", type=float, default=50)
    args = parser.parse_args(argv)
    with args.csv.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    webhook = args.webhook if args.webhook.endswith("/") else args.webhook + "/"
    headers = download_headers(webhook)
    pacer = Pacer(args.rate_limit, args.burst)
    counters = Counters()
    same = 0
    with requests.Session() as session, tempfile.TemporaryDirectory(prefix="naive-restore-") as tmp:
        for row in rows:
            content = Path(row["path"]).read_bytes()
            fields = {"productId": int(row["product_id"]), "type": row["type"]}
            added = call(
                session,
                pacer,
                counters,
                webhook + "catalog.productImage.add",
                {"fields": fields, "fileContent": [row["name"], base64.b64encode(content).decode()]},
            )
            new_id = added["result"]["productImage"]["id"]
            got = call(
                session,
                pacer,
                counters,
                webhook + "catalog.productImage.get",
                {"productId": int(row["product_id"]), "id": new_id},
            )
            target = Path(tmp) / f"{new_id}"
            download(session, pacer, counters, got["result"]["productImage"]["downloadUrl"], headers, target)
            same += hashlib.sha256(target.read_bytes()).hexdigest() == row["sha256"]
    print(counters.report(len(rows), same_bytes=same))
    return 0


if __name__ == "__main__":
    sys.exit(main())
