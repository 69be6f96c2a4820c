"""Benchmark: ``imgsync restore --missing`` of N images against the bound the portal's limits set, and a naive
script doing the same job.

    .venv/bin/python -m bench.restore                      # 400 images of 20 KB, drain 20/s, bucket 50
    .venv/bin/python -m bench.restore --images 40 --json   # a smoke run

Set-up (untimed, the bucket opened wide): the emulator (in this process) serves N images in N/4 products;
``imgsync sync`` backs them up, every image is deleted on the portal (``Portal.delete_image``), and
``imgsync sync --recorded`` marks them ``missing``. Then the bucket is set to the profile (``--rate``,
``--burst``, ``--latency`` per answer), each add sleeps ``--slow-add`` seconds on the portal (a real add's
processing, scaled down) and costs ``--add-operating`` seconds of the add method's operating time on top of
it, within a budget of ``--operating-limit`` seconds per ``--operating-window`` (the docs' 480 s per 600 s,
scaled down ten times like the drain). Timed, each in its own process:

- ``imgsync restore --missing --json`` (wall time of the process, and the run's own ``duration_s``);
- ``bench/naive_restore.py``: per image one add, one ``get`` of the new image, one download.

Each run is checked: every product's gallery holds every backed-up picture exactly once, and nothing else.

The bound (:func:`bound`) counts the requests the job needs: one ``catalog.productImage.list`` batch per 50
products (a restore must look before it adds), one add request per 50 images (fewer when the base64 of 50 is
over ``[restore] max_request_bytes``) and a download per image (each new image is checked). The bucket lets
``burst`` requests go at once, then one per ``1/rate``; the operating budget lets ``limit`` seconds of add
time go in the first window, then ``limit`` per ``window``. The bound is the larger of the two, plus one
round trip.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import math
import os
import platform
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path

from imgsync.emulator import Portal, make_catalog
from imgsync.emulator.catalog import CatalogImage

REPO = Path(__file__).resolve().parent.parent
BATCH = 50
IMAGES_PER_PRODUCT = 4
SETUP_RATE = 10_000.0  # the bucket during the untimed set-up
ADD = "catalog.productImage.add"


@dataclass(frozen=True)
class Profile:
    images: int = 400
    size: int = 20_000
    rate: float = 20.0
    burst: int = 50
    latency: float = 0.02
    slow_add: float = 0.02
    add_operating: float = 0.02
    operating_limit: float = 48.0
    operating_window: float = 60.0
    max_request_bytes: int = 8 * 1024 * 1024


@dataclass
class Result:
    client: str
    wall_s: float
    inrun_s: float | None
    requests: int
    by_method: dict[str, int]
    downloads: int
    adds: int
    answers_503: int
    answers_429: int
    exit_code: int
    checked: bool
    bound_s: float
    operating_s: float

    @property
    def efficiency(self) -> float:
        return self.bound_s / self.wall_s if self.wall_s else 0.0


def must_requests(p: Profile) -> int:
    """The requests a restore of ``p.images`` cannot do without (see the module's docstring)."""
    products = math.ceil(p.images / IMAGES_PER_PRODUCT)
    per_request = max(1, min(BATCH, p.max_request_bytes // (4 * math.ceil(p.size / 3))))
    return math.ceil(products / BATCH) + math.ceil(p.images / per_request) + p.images


def bound(p: Profile, operating_s: float) -> float:
    """The least time the bucket and the add method's operating budget allow, with unlimited concurrency.

    ``operating_s`` is the add time the portal counted for the job (measured: the adds' processing plus
    ``add_operating``). Over the budget, each further ``limit`` seconds of it waits for a window."""
    bucket = max(0, must_requests(p) - p.burst) / p.rate
    budget = max(0.0, operating_s - p.operating_limit) / p.operating_limit * p.operating_window
    return max(bucket, budget) + p.latency


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("IMGSYNC_", "AWS_"))}
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def _run(args: list[str], cwd: Path) -> tuple[float, subprocess.CompletedProcess[str]]:
    started = time.perf_counter()
    done = subprocess.run(args, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=1800)
    return time.perf_counter() - started, done


def _imgsync(folder: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "imgsync", "--config", str(folder / "imgsync.toml"), *args]


def _open_bucket(portal: Portal, p: Profile | None) -> None:
    """The profile's bucket, latency and add costs (``None``: wide open for the set-up), empty and counted anew."""
    portal.rate_limit = p.rate if p else SETUP_RATE
    portal.burst = p.burst if p else int(SETUP_RATE)
    portal.latency = p.latency if p else 0.0
    portal.faults.slow_add = p.slow_add if p else 0.0
    portal.reset_bucket()
    portal.reset_stats()


def _add_operating(portal: Portal, *, clear: bool = False) -> float:
    """The add method's operating seconds in the portal's live baskets (``clear``: empty them first, a
    fresh window for the next client, as if it ran ten minutes later)."""
    with portal._lock:  # the benchmark reads the emulator's counter; no client does
        if clear:
            portal._operating.pop(ADD, None)
        return sum(b[1] for b in portal._operating.get(ADD, []))


def _check(portal: Portal, catalog: list[CatalogImage]) -> bool:
    """Every product holds each of its backed-up pictures exactly once, and nothing else."""
    want: dict[int, Counter[str]] = {}
    for img in catalog:
        want.setdefault(img.product_id, Counter())[img.sha256] += 1
    return all(Counter(sha for _id, _t, sha in portal.gallery(pid)) == c for pid, c in want.items())


def _delete_all(portal: Portal, catalog: list[CatalogImage]) -> None:
    for pid in sorted({img.product_id for img in catalog}):
        for image_id, _type, _sha in portal.gallery(pid):
            portal.delete_image(pid, image_id)


def _result(
    client: str,
    wall: float,
    inrun: float | None,
    code: int,
    portal: Portal,
    p: Profile,
    checked: bool,
    operating_before: float,
) -> Result:
    stats = portal.stats
    operating = _add_operating(portal) - operating_before
    return Result(
        client=client,
        wall_s=round(wall, 3),
        inrun_s=inrun,
        requests=stats.requests,
        by_method=dict(stats.by_method),
        downloads=stats.downloads_served,
        adds=stats.adds,
        answers_503=stats.rejected_503,
        answers_429=stats.rejected_429,
        exit_code=code,
        checked=checked,
        bound_s=round(bound(p, operating), 3),
        operating_s=round(operating, 3),
    )


def bench_catalog(p: Profile) -> list[CatalogImage]:
    """N images, four a product: the first its ``DETAIL_PICTURE``, the others ``MORE_PHOTO`` (a product has
    one detail slot; ``make_catalog`` alternates the types, which a restore would have fill one slot twice)."""
    catalog = make_catalog(
        math.ceil(p.images / IMAGES_PER_PRODUCT), IMAGES_PER_PRODUCT, p.size, p.size, seed=7
    )
    return [
        dataclasses.replace(img, type="DETAIL_PICTURE" if n % IMAGES_PER_PRODUCT == 0 else "MORE_PHOTO")
        for n, img in enumerate(catalog[: p.images])
    ]


def run(p: Profile, folder: Path, *, naive: bool = True) -> list[Result]:
    """Set up, then time imgsync's restore and (``naive``) the naive script; return their results."""
    catalog = bench_catalog(p)
    results: list[Result] = []
    with Portal(
        catalog,
        rate_limit=SETUP_RATE,
        burst=int(SETUP_RATE),
        operating_limit=p.operating_limit,
        operating_window=p.operating_window,
        add_operating_s=p.add_operating,
    ) as portal:
        (folder / "imgsync.toml").write_text(
            f'[bitrix24]\nwebhook_url = "{portal.webhook_url}"\nrate_limit = {p.rate}\nburst = {p.burst}\n'
            '[storage]\ndest = "images"\ndb = "imgsync.db"\n'
            f"[restore]\nmax_request_bytes = {p.max_request_bytes}\n"
        )
        pairs = folder / "pairs.csv"
        pairs.write_text("productId,id\n" + "".join(f"{i.product_id},{i.image_id}\n" for i in catalog))
        fast = ["--rate-limit", str(SETUP_RATE), "--burst", str(int(SETUP_RATE)), "--no-progress", "--json"]
        for args in (["sync", "--csv", str(pairs), *fast], None, ["sync", "--recorded", *fast]):
            if args is None:
                _delete_all(portal, catalog)
                continue
            _wall, done = _run(_imgsync(folder, *args), folder)
            if done.returncode != 0:
                raise SystemExit(f"set-up {args[0]} exited {done.returncode}: {done.stderr[-2000:]}")
        missing = json.loads(done.stdout)["missing"]
        if missing != p.images:
            raise SystemExit(f"set-up: {missing} images marked missing, not {p.images}")

        _open_bucket(portal, p)
        before = _add_operating(portal, clear=True)
        wall, done = _run(_imgsync(folder, "restore", "--missing", "--json", "--no-progress"), folder)
        summary = json.loads(done.stdout) if done.stdout.strip() else {}
        if summary.get("restored") != p.images:
            print(done.stderr[-3000:], file=sys.stderr)
        results.append(
            _result(
                "imgsync",
                wall,
                summary.get("duration_s"),
                done.returncode,
                portal,
                p,
                _check(portal, catalog),
                before,
            )
        )

        if naive:
            # The same job again for the naive script: the portal loses the pictures once more.
            _delete_all(portal, catalog)
            with sqlite3.connect(folder / "imgsync.db") as con:
                rows = con.execute(
                    "select product_id, image_id, type, name, local_path, sha256 from images "
                    "where status = 'missing' order by product_id, image_id"
                ).fetchall()
            images = folder / "naive.csv"
            with images.open("w", newline="") as fh:
                out = csv.writer(fh)
                out.writerow(["product_id", "image_id", "type", "name", "path", "sha256"])
                for pid, iid, kind, name, local, sha in rows:
                    out.writerow([pid, iid, kind, name, folder / "images" / local, sha])
            _open_bucket(portal, p)
            before = _add_operating(portal, clear=True)
            cmd = [sys.executable, "-m", "bench.naive_restore", "--webhook", portal.webhook_url]
            cmd += ["--csv", str(images), "--rate-limit", str(p.rate), "--burst", str(p.burst)]
            wall, done = _run(cmd, REPO)
            if done.returncode != 0:
                print(done.stderr[-3000:], file=sys.stderr)
            line = json.loads(done.stdout) if done.stdout.strip() else {}
            results.append(
                _result(
                    "naive",
                    wall,
                    line.get("duration_s"),
                    done.returncode,
                    portal,
                    p,
                    _check(portal, catalog),
                    before,
                )
            )
    return results


def report(p: Profile, results: list[Result]) -> str:
    """The Markdown lines for docs/benchmarks.md."""
    lines = [
        f"{p.images} images of {p.size:,} bytes in {math.ceil(p.images / IMAGES_PER_PRODUCT)} products; drain "
        f"{p.rate:g}/s, bucket {p.burst}, {p.latency * 1000:.0f} ms per answer; each add {p.slow_add * 1000:.0f} ms "
        f"on the portal and {p.add_operating:g} s of operating time on top, budget {p.operating_limit:g} s per "
        f"{p.operating_window:g} s. Requests the job needs: {must_requests(p)}.",
        "",
        "| client | time (s) | in-run (s) | bound (s) | efficiency | requests | per image | adds | downloads "
        "| 503 | 429 | add operating (s) | gallery right | exit |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|",
    ]
    for r in results:
        inrun = "" if r.inrun_s is None else f"{r.inrun_s:.2f}"
        lines.append(
            f"| {r.client} | {r.wall_s:.2f} | {inrun} | {r.bound_s:.2f} | {r.efficiency:.2f} | {r.requests} | "
            f"{r.requests / p.images:.3f} | {r.adds} | {r.downloads} | {r.answers_503} | {r.answers_429} | "
            f"{r.operating_s:.2f} | {'yes' if r.checked else '**no**'} | {r.exit_code} |"
        )
    by = {r.client: r for r in results}
    if "imgsync" in by and "naive" in by:
        lines += ["", f"imgsync/naive time ratio: {by['imgsync'].wall_s / by['naive'].wall_s:.2f}."]
    lines += [
        "",
        f"Made by `python -m bench.restore --images {p.images}` on {datetime.now():%Y-%m-%d %H:%M} "
        f"({platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}).",
    ]
    return "\n".join(lines)


def profile_parser(doc: str | None, defaults: Profile) -> argparse.ArgumentParser:
    """The options of a restore benchmark (this one and ``bench.migrate``): the profile, ``--no-naive``, ``--json``."""
    d = defaults
    parser = argparse.ArgumentParser(
        description=(doc or "").split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=d.images)
    parser.add_argument("--size", type=int, default=d.size, help="bytes per image")
    parser.add_argument("--rate", type=float, default=d.rate, help="bucket drain, requests per second")
    parser.add_argument("--burst", type=int, default=d.burst)
    parser.add_argument("--latency", type=float, default=d.latency, help="seconds before each answer")
    parser.add_argument("--slow-add", type=float, default=d.slow_add, help="seconds each add takes")
    parser.add_argument("--add-operating", type=float, default=d.add_operating)
    parser.add_argument("--operating-limit", type=float, default=d.operating_limit)
    parser.add_argument("--operating-window", type=float, default=d.operating_window)
    parser.add_argument("--max-request-bytes", type=int, default=d.max_request_bytes)
    parser.add_argument("--no-naive", action="store_true", help="time imgsync alone")
    parser.add_argument("--json", action="store_true", help="print the results as JSON, not Markdown")
    return parser


def profile_of(args: argparse.Namespace) -> Profile:
    return Profile(**{f.name: getattr(args, f.name) for f in dataclasses.fields(Profile)})


def main(argv: list[str] | None = None) -> int:
    parser = profile_parser(__doc__, Profile())
    args = parser.parse_args(argv)
    p = profile_of(args)
    with tempfile.TemporaryDirectory(prefix="imgsync-bench-restore-") as tmp:
        results = run(p, Path(tmp), naive=not args.no_naive)
    if args.json:
        out = {
            "profile": asdict(p),
            "must_requests": must_requests(p),
            "results": [{**asdict(r), "efficiency": round(r.efficiency, 3)} for r in results],
        }
        print(json.dumps(out))
    else:
        print(report(p, results))
    return 0 if all(r.checked and r.exit_code == 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
