"""Benchmark: a catalog's images moved to another portal (``imgsync restore --from-db ... --match xml_id``) against
the bound the target portal's limits set, and a naive script doing the same job.

    .venv/bin/python -m bench.migrate                      # 2,000 images of 20 KB, drain 20/s, bucket 50
    .venv/bin/python -m bench.migrate --images 8 --json    # a smoke run

Set-up (untimed, the buckets opened wide): two emulator portals in this process. The source serves N images in
N/4 products (the first of each its ``DETAIL_PICTURE``, as in :mod:`bench.restore`), each item with the external
code ``SKU-<id>``; ``imgsync sync --all`` backs it up (recording each item's xml_id). The target holds the same
items under other ids (source id + 100,000), imported with the same external codes, and no image. Then the
target is set to the profile of :mod:`bench.restore` (bucket, latency, each add's time on the portal and its
operating time, the add budget) and, each in its own process, timed:

- ``imgsync restore --from-db SRC_DB --from-dest SRC_DEST --match xml_id --products-file ALL_IDS --json``
  against the target (its config: the target's webhook, database and dest);
- ``bench/naive_migrate.py``: per product one ``catalog.product.list`` filtered by the xmlId, then per image
  one add, one ``get`` of the new image and one download.

Each run is checked: every target item's gallery holds every picture of its source item exactly once, and
nothing else. Between the two the target's galleries are emptied.

The bound (:func:`bound`) counts the requests the job needs (:func:`must_requests`): one
``catalog.catalog.list`` (which catalogs to look in) and one ``batch`` of up to 50 ``catalog.product.list``
commands, each one page (50 items) of keys in one catalog; one ``catalog.productImage.list`` batch per 50
target products (a restore must look before it adds); one add request per 50 images (fewer when the base64 of
50 is over ``[restore] max_request_bytes``); a download per image (each new image is checked). Then as
:func:`bench.restore.bound`: the bucket, or the add budget, whichever is longer, plus one round trip.
"""

from __future__ import annotations

import csv
import json
import math
import os
import platform
import sqlite3
import sys
import tempfile
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from imgsync.emulator import CatalogItem, Portal
from imgsync.emulator.catalog import PRODUCT_IBLOCK_ID, CatalogImage

from .restore import (
    ADD,
    BATCH,
    IMAGES_PER_PRODUCT,
    SETUP_RATE,
    Profile,
    _add_operating,
    _imgsync,
    _open_bucket,
    _run,
    bench_catalog,
    profile_of,
    profile_parser,
)

REPO = Path(__file__).resolve().parent.parent
IMAGES = 2000
TARGET_OFFSET = 100_000  # a target item's id: the source item's + this
CATALOGS = 2  # the emulator's trade catalogs (products, variations): a key is looked for in each
#: What a request is for, by the method it (or its batch's commands) calls.
KINDS = {
    "catalog.catalog.list": "lookups",
    "catalog.product.list": "lookups",
    "catalog.productimage.list": "lists",
    "catalog.productimage.add": "adds",
    "catalog.productimage.get": "gets",
    "download": "downloads",
}
SPLIT = ("lookups", "lists", "adds", "gets", "downloads")


def xml_id(pid: int) -> str:
    return f"SKU-{pid}"


def must_split(p: Profile) -> dict[str, int]:
    """The requests a migration of ``p.images`` cannot do without, by kind (see the module's docstring)."""
    products = math.ceil(p.images / IMAGES_PER_PRODUCT)
    per_request = max(1, min(BATCH, p.max_request_bytes // (4 * math.ceil(p.size / 3))))
    return {
        "lookups": 1 + math.ceil(CATALOGS * math.ceil(products / BATCH) / BATCH),
        "lists": math.ceil(products / BATCH),
        "adds": math.ceil(p.images / per_request),
        "gets": 0,
        "downloads": p.images,
    }


def must_requests(p: Profile) -> int:
    return sum(must_split(p).values())


def bound(p: Profile, operating_s: float) -> float:
    """As :func:`bench.restore.bound`, with the migration's requests."""
    bucket = max(0, must_requests(p) - p.burst) / p.rate
    budget = max(0.0, operating_s - p.operating_limit) / p.operating_limit * p.operating_window
    return max(bucket, budget) + p.latency


@dataclass
class Result:
    client: str
    wall_s: float
    inrun_s: float | None
    requests: int
    split: dict[str, int]
    by_method: dict[str, int]
    batch_commands: dict[str, int]
    adds: int
    answers_503: int
    answers_429: int
    exit_code: int
    checked: bool
    bound_s: float
    operating_s: float
    other: dict[str, Any] = field(default_factory=dict)

    @property
    def efficiency(self) -> float:
        return self.bound_s / self.wall_s if self.wall_s else 0.0


def _kind(method: str) -> str:
    return KINDS.get(method.strip().lower(), "other")


def count_batches(portal: Portal) -> Counter[str]:
    """Count each ``batch`` request the portal runs by the kind of its commands (``lookups``, ``lists``,
    ``adds``, ...; ``a+b`` when it mixes them). The emulator counts batch commands, not what each batch was
    for; the benchmark wraps its batch handler (in this process) to tell."""
    kinds: Counter[str] = Counter()
    inner: Callable[..., dict[str, Any]] = portal._batch

    def batch(params: dict[str, Any], cred: Any, start: float) -> dict[str, Any]:
        cmd = params.get("cmd") or {}
        commands = cmd.values() if isinstance(cmd, dict) else cmd if isinstance(cmd, list) else []
        names = sorted({_kind(str(c).partition("?")[0]) for c in commands})
        kinds["+".join(names) or "empty"] += 1
        return inner(params, cred, start)

    setattr(portal, "_batch", batch)  # noqa: B010 - an instance attribute over the method
    return kinds


def count_operating(portal: Portal) -> Counter[str]:
    """Each method's operating seconds the portal counts, over the whole run (its live baskets, which
    :func:`bench.restore._add_operating` reads, keep only the last window: a run here is longer)."""
    spent: Counter[str] = Counter()
    inner: Callable[..., tuple[float, int]] = portal._account

    def account(name: str, seconds: float, now: float, related: Any = ()) -> tuple[float, int]:
        spent[name] += seconds
        return inner(name, seconds, now, related)

    setattr(portal, "_account", account)  # noqa: B010 - an instance attribute over the method
    return spent


def split_of(by_method: Counter[str] | dict[str, int], batches: Counter[str]) -> dict[str, int]:
    """Requests by kind: the plain calls by their method, the batches by their commands'."""
    out: Counter[str] = Counter()
    for method, n in by_method.items():
        if method != "batch":
            out[_kind(method)] += n
    for kind, n in batches.items():
        out[kind] += n
    return {k: out.get(k, 0) for k in SPLIT} | {k: n for k, n in out.items() if k not in SPLIT}


def _check(target: Portal, catalog: list[CatalogImage]) -> bool:
    """Every target item holds each picture of its source item exactly once, and nothing else."""
    want: dict[int, Counter[str]] = {}
    for img in catalog:
        want.setdefault(img.product_id + TARGET_OFFSET, Counter())[img.sha256] += 1
    return all(Counter(sha for _id, _t, sha in target.gallery(pid)) == c for pid, c in want.items())


def _empty(target: Portal, catalog: list[CatalogImage]) -> None:
    for pid in sorted({img.product_id + TARGET_OFFSET for img in catalog}):
        for image_id, _type, _sha in target.gallery(pid):
            target.delete_image(pid, image_id)


def _result(
    client: str,
    wall: float,
    inrun: float | None,
    code: int,
    target: Portal,
    batches: Counter[str],
    p: Profile,
    checked: bool,
    operating: float,
    **other: Any,
) -> Result:
    stats = target.stats
    return Result(
        client=client,
        wall_s=round(wall, 3),
        inrun_s=inrun,
        requests=stats.requests,
        split=split_of(stats.by_method, batches),
        by_method=dict(stats.by_method),
        batch_commands=dict(stats.batch_commands),
        adds=stats.adds,
        answers_503=stats.rejected_503,
        answers_429=stats.rejected_429,
        exit_code=code,
        checked=checked,
        bound_s=round(bound(p, operating), 3),
        operating_s=round(operating, 3),
        other=other,
    )


def _config(path: Path, webhook: str, p: Profile) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        f'[bitrix24]\nwebhook_url = "{webhook}"\nrate_limit = {p.rate}\nburst = {p.burst}\n'
        '[storage]\ndest = "images"\ndb = "imgsync.db"\n'
        f"[restore]\nmax_request_bytes = {p.max_request_bytes}\n"
    )


def run(p: Profile, folder: Path, *, naive: bool = True) -> list[Result]:
    """Set up both portals, then time imgsync's migration and (``naive``) the naive script."""
    catalog = bench_catalog(p)
    pids = sorted({img.product_id for img in catalog})
    results: list[Result] = []
    src_items = [CatalogItem(pid, xml_id=xml_id(pid)) for pid in pids]
    dst_items = [CatalogItem(pid + TARGET_OFFSET, xml_id=xml_id(pid)) for pid in pids]
    with (
        Portal(catalog, items=src_items, rate_limit=SETUP_RATE, burst=int(SETUP_RATE)) as source,
        Portal(
            [],
            items=dst_items,
            rate_limit=SETUP_RATE,
            burst=int(SETUP_RATE),
            operating_limit=p.operating_limit,
            operating_window=p.operating_window,
            add_operating_s=p.add_operating,
        ) as target,
    ):
        src, dst = folder / "source", folder / "target"
        _config(src / "imgsync.toml", source.webhook_url, p)
        _config(dst / "imgsync.toml", target.webhook_url, p)
        fast = ["--rate-limit", str(SETUP_RATE), "--burst", str(int(SETUP_RATE)), "--no-progress", "--json"]
        _wall, done = _run(_imgsync(src, "sync", "--all", *fast), src)
        if done.returncode != 0:
            raise SystemExit(f"set-up sync --all exited {done.returncode}: {done.stderr[-2000:]}")
        with sqlite3.connect(src / "imgsync.db") as con:
            backed_up = con.execute("select count(*) from images where sha256 is not null").fetchone()[0]
        if backed_up != p.images:
            raise SystemExit(f"set-up: the source backed up {backed_up} images, not {p.images}")
        ids = folder / "products.txt"
        ids.write_text("".join(f"{pid}\n" for pid in pids))
        batches = count_batches(target)
        spent = count_operating(target)

        _open_bucket(target, p)
        batches.clear()
        spent.clear()
        _add_operating(target, clear=True)  # a fresh window
        args = ["restore", "--from-db", str(src / "imgsync.db"), "--from-dest", str(src / "images")]
        args += ["--match", "xml_id", "--products-file", str(ids), "--json", "--no-progress"]
        wall, done = _run(_imgsync(dst, *args), dst)
        (folder / "imgsync.err").write_text(done.stderr)
        summary = json.loads(done.stdout) if done.stdout.strip() else {}
        if summary.get("restored") != p.images:
            print(done.stderr[-3000:], file=sys.stderr)
        results.append(
            _result(
                "imgsync",
                wall,
                summary.get("duration_s"),
                done.returncode,
                target,
                batches,
                p,
                _check(target, catalog),
                spent[ADD],
                restored=summary.get("restored"),
                client_requests=summary.get("requests"),
                retries=summary.get("retries"),
            )
        )

        if naive:
            _empty(target, catalog)
            with sqlite3.connect(src / "imgsync.db") as con:
                rows = con.execute(
                    "select i.product_id, p.xml_id, i.type, i.name, i.local_path, i.sha256 from images i "
                    "join products p on p.product_id = i.product_id where i.sha256 is not null "
                    "order by i.product_id, i.image_id"
                ).fetchall()
            images = folder / "naive.csv"
            with images.open("w", newline="") as fh:
                out = csv.writer(fh)
                out.writerow(["product_id", "xml_id", "type", "name", "path", "sha256"])
                for pid, key, kind, name, local, sha in rows:
                    out.writerow([pid, key, kind, name, src / "images" / local, sha])
            _open_bucket(target, p)
            batches.clear()
            spent.clear()
            _add_operating(target, clear=True)  # a fresh window, as if ten minutes later
            cmd = [sys.executable, "-m", "bench.naive_migrate", "--webhook", target.webhook_url]
            cmd += ["--csv", str(images), "--iblock", str(PRODUCT_IBLOCK_ID)]
            cmd += ["--rate-limit", str(p.rate), "--burst", str(p.burst)]
            wall, done = _run(cmd, REPO)
            (folder / "naive.err").write_text(done.stderr)
            if done.returncode != 0:
                print(done.stderr[-3000:], file=sys.stderr)
            line = json.loads(done.stdout) if done.stdout.strip() else {}
            results.append(
                _result(
                    "naive",
                    wall,
                    line.get("duration_s"),
                    done.returncode,
                    target,
                    batches,
                    p,
                    _check(target, catalog),
                    spent[ADD],
                    unmatched=line.get("unmatched"),
                )
            )
    return results


def report(p: Profile, results: list[Result], options: str = "") -> str:
    """The Markdown lines for docs/benchmarks.md (``options``: the command line's, for the last line)."""
    must = must_split(p)
    lines = [
        f"{p.images} images of {p.size:,} bytes in {math.ceil(p.images / IMAGES_PER_PRODUCT)} products, matched "
        f"by xml_id; target: drain {p.rate:g}/s, bucket {p.burst}, {p.latency * 1000:.0f} ms per answer; each "
        f"add {p.slow_add * 1000:.0f} ms on the portal and {p.add_operating:g} s of operating time on top, budget "
        f"{p.operating_limit:g} s per {p.operating_window:g} s. Requests the job needs: {must_requests(p)} "
        f"({must['lookups']} lookups, {must['lists']} lists, {must['adds']} adds, {must['downloads']} downloads).",
        "",
        "| client | time (s) | in-run (s) | bound (s) | efficiency | requests | per image | lookups | lists "
        "| adds | gets | downloads | 503 | 429 | add operating (s) | galleries right | exit |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|",
    ]
    for r in results:
        inrun = "" if r.inrun_s is None else f"{r.inrun_s:.2f}"
        s = r.split
        lines.append(
            f"| {r.client} | {r.wall_s:.2f} | {inrun} | {r.bound_s:.2f} | {r.efficiency:.2f} | {r.requests} | "
            f"{r.requests / p.images:.4f} | {s['lookups']} | {s['lists']} | {s['adds']} | {s['gets']} | "
            f"{s['downloads']} | {r.answers_503} | {r.answers_429} | {r.operating_s:.2f} | "
            f"{'yes' if r.checked else '**no**'} | {r.exit_code} |"
        )
    by = {r.client: r for r in results}
    if "imgsync" in by and "naive" in by:
        lines += ["", f"imgsync/naive time ratio: {by['imgsync'].wall_s / by['naive'].wall_s:.2f}."]
    lines += [
        "",
        f"Made by `python -m bench.migrate {options or f'--images {p.images}'}` on {datetime.now():%Y-%m-%d %H:%M} "
        f"({platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}).",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = profile_parser(__doc__, Profile(images=IMAGES))
    parser.add_argument(
        "--keep",
        type=Path,
        help="work in this (new) folder and keep it: databases, files, each client's stderr",
    )
    args = parser.parse_args(argv)
    p = profile_of(args)
    if args.keep is not None:
        args.keep.mkdir(parents=True)
        results = run(p, args.keep, naive=not args.no_naive)
    else:
        with tempfile.TemporaryDirectory(prefix="imgsync-bench-migrate-") as tmp:
            results = run(p, Path(tmp), naive=not args.no_naive)
    if args.json:
        out = {
            "profile": asdict(p),
            "must_requests": must_requests(p),
            "must_split": must_split(p),
            "results": [{**asdict(r), "efficiency": round(r.efficiency, 3)} for r in results],
        }
        print(json.dumps(out))
    else:
        print(report(p, results, " ".join(sys.argv[1:] if argv is None else argv)))
    return 0 if all(r.checked and r.exit_code == 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
