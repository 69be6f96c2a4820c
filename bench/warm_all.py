"""A warm ``sync --all`` at scale: imgsync's peak RSS, CPU per 1,000 items and the database's growth, and how close
to ``--max-duration`` a capped run ends.

    python -m bench.warm_all                                    # 10^4 and 10^5 items, a cap at 10^5
    python -m bench.warm_all --sizes 10000,100000,1000000 --cap-size 1000000
    python -m bench.warm_all --sizes 10000 --before /tmp/main-src    # also the code in /tmp/main-src, side by side

Per size N: the emulator serves N simple products of one 16-byte picture each, in its own process
(``python -m imgsync.emulator --store``), so its CPU is not imgsync's, at a scaled-up rate limit (``--rate``,
``--burst``: the listing is bounded by the client's CPU, not by the bucket). The state database and dest are
pre-filled directly through ``Store`` (rows as a cold run records them, each file written under its final
name, the ``products`` rows of a listing), because a cold run of 10^6 downloads would take hours here; sizes up
to ``--cold-up-to`` are backed up by a real cold run instead. Then ``python -m imgsync sync --all`` runs warm as
a subprocess; ``wait4`` gives its peak RSS and CPU seconds. CPU per 1,000 items is the process's whole CPU
(interpreter start included) divided by N; the marginal cost is the slope between two sizes. DB growth is the
database file plus its WAL after the run minus before.

``--before DIR`` runs a second imgsync (the package under DIR, e.g. ``git archive main imgsync | tar -x -C DIR``)
on the same catalog and database right before this one, for before/after ratios from one run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.run import emulator_process
from imgsync.emulator import make_store_catalog
from imgsync.localfs import relative_path
from imgsync.models import Event, ImageRef, ListedItem, Outcome, PortalImage
from imgsync.store import Store

REPO = Path(__file__).resolve().parent.parent
SIZE = 16  # bytes of every picture: set-up stays fast, the listing is what is measured
SEED = 11


@dataclass
class Run:
    label: str
    n: int
    wall: float
    cpu: float
    rss_mib: float
    exit_code: int
    summary: dict[str, Any]
    db_growth: int
    requests: int = 0


def _env(pythonpath: Path | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("IMGSYNC_", "AWS_"))}
    env["PYTHONPATH"] = str(pythonpath or REPO)
    return env


@contextmanager
def emulator(n: int, rate: float, burst: int, stats: dict[str, Any]) -> Iterator[str]:
    """The emulator in its own process; yields the webhook URL, fills ``stats`` when it stops."""
    options = [
        "--store",
        "--products",
        str(n),
        "--images-per-product",
        "1",
        "--min-size",
        str(SIZE),
        "--max-size",
        str(SIZE),
        "--seed",
        str(SEED),
        "--rate-limit",
        str(rate),
        "--burst",
        str(burst),
    ]
    with emulator_process(options, stats) as url:
        yield url


def prefill(n: int, root: Path) -> None:
    """The state a cold ``--all`` leaves: an ``ok`` row and its file per picture, a ``products`` row per item."""
    items, images = make_store_catalog(n, images_per_item=1, min_size=SIZE, max_size=SIZE, seed=SEED)
    dest = root / "images"
    now = datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")
    with Store(root / "imgsync.db") as store:
        for at in range(0, len(images), 10_000):
            outcomes = []
            for img in images[at : at + 10_000]:
                ref = ImageRef(img.product_id, img.image_id)
                relative = relative_path(ref, img.name)
                path = dest / relative
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(img.content)
                image = PortalImage(
                    img.product_id, img.image_id, img.name, img.type, img.create_time, img.detail_url, ""
                )
                outcomes.append(
                    Outcome(
                        ref,
                        Event.DOWNLOADED,
                        "prefilled",
                        image=image,
                        sha256=img.sha256,
                        size=len(img.content),
                        content_type=img.content_type,
                        local_path=relative,
                        changed=True,
                    )
                )
            store.save(None, outcomes)
        by_item: dict[int, list[int]] = {}
        for img in images:
            by_item.setdefault(img.product_id, []).append(img.image_id)
        listed = [
            ListedItem(
                item.id, item.iblock_id, item.type, item.parent_id, tuple(sorted(by_item.get(item.id, [])))
            )
            for item in items
        ]
        for at in range(0, len(listed), 10_000):
            store.save_listed(listed[at : at + 10_000], now)


def db_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.glob("imgsync.db*") if p.is_file())


def sync(
    label: str, n: int, root: Path, webhook: str, rate: float, burst: int, extra: list[str], src: Path | None
) -> Run:
    """One ``imgsync sync --all`` as a subprocess; its CPU and peak RSS from ``wait4``."""
    args = [
        sys.executable,
        "-m",
        "imgsync",
        "sync",
        "--all",
        "--json",
        "--no-progress",
        "-q",
        "--webhook",
        webhook,
        "--dest",
        str(root / "images"),
        "--db",
        str(root / "imgsync.db"),
        "--rate-limit",
        str(rate),
        "--burst",
        str(burst),
        *extra,
    ]
    before = db_bytes(root)
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        began = time.perf_counter()
        proc = subprocess.Popen(args, stdout=out, stderr=err, env=_env(src), cwd=root)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - began
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        text = out.read().decode()
        lines = [ln for ln in text.splitlines() if ln.startswith("{")]
        if not lines:
            raise RuntimeError(
                f"{label}: no JSON summary (exit {proc.returncode}): {err.read().decode()[-2000:]}"
            )
        summary = json.loads(lines[-1])
    return Run(
        label,
        n,
        wall,
        usage.ru_utime + usage.ru_stime,
        usage.ru_maxrss / 1024,
        proc.returncode,
        summary,
        db_bytes(root) - before,
    )


def start_cpu(src: Path | None) -> float:
    """CPU seconds of ``python -m imgsync --version``: the interpreter start and imports alone (best of 3)."""
    best = float("inf")
    for _ in range(3):
        proc = subprocess.Popen(
            [sys.executable, "-m", "imgsync", "--version"], stdout=subprocess.DEVNULL, env=_env(src), cwd=REPO
        )
        _, _, usage = os.wait4(proc.pid, 0)
        best = min(best, usage.ru_utime + usage.ru_stime)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="10000,100000", help="items (one picture each), comma separated")
    parser.add_argument("--rate", type=float, default=1000.0, help="the portal's and client's requests/s")
    parser.add_argument("--burst", type=int, default=1000)
    parser.add_argument("--cap-size", type=int, default=100_000, help="the size of the capped run (0: none)")
    parser.add_argument(
        "--cap", type=float, default=0.0, help="its --max-duration (default: half the warm run)"
    )
    parser.add_argument("--cold-up-to", type=int, default=0, help="sizes up to this get a real cold run")
    parser.add_argument("--before", type=Path, default=None, help="a source tree with the imgsync to compare")
    parser.add_argument("--keep", type=Path, default=None, help="work here and keep it (default: a temp dir)")
    parser.add_argument("--prefill", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.prefill:
        prefill(args.prefill, args.keep)
        return
    sizes = [int(s) for s in args.sizes.split(",") if s]
    runs: list[Run] = []
    caps: list[tuple[int, float, Run]] = []
    base = args.keep or Path(tempfile.mkdtemp(prefix="warm-all-"))
    base.mkdir(parents=True, exist_ok=True)
    floors = {"after": start_cpu(None)}
    if args.before:
        floors["before"] = start_cpu(args.before)
    try:
        for n in sizes:
            root = base / f"n{n}"
            shutil.rmtree(root, ignore_errors=True)
            root.mkdir()
            stats: dict[str, Any] = {}
            began = time.perf_counter()
            with emulator(n, args.rate, args.burst, stats) as webhook:
                started = time.perf_counter() - began
                began = time.perf_counter()
                if n <= args.cold_up_to:
                    cold = sync("cold", n, root, webhook, args.rate, args.burst, [], None)
                    assert cold.exit_code == 0, cold.summary
                    how = f"cold run {cold.wall:.1f} s"
                else:
                    # In a process of its own: the catalog it builds must not swell this one, whose RSS at the
                    # time of a fork would be counted in the children's ru_maxrss.
                    subprocess.run(
                        [sys.executable, "-m", "bench.warm_all", "--prefill", str(n), "--keep", str(root)],
                        check=True,
                        env=_env(),
                        cwd=REPO,
                    )
                    how = f"pre-filled in {time.perf_counter() - began:.1f} s"
                print(f"N={n:,}: emulator up in {started:.1f} s, {how}", flush=True)
                trees = ([("before", args.before)] if args.before else []) + [("after", None)]
                for label, src in trees:
                    run = sync(label, n, root, webhook, args.rate, args.burst, [], src)
                    assert run.exit_code == 0 and run.summary["unchanged"] == n, (run.exit_code, run.summary)
                    runs.append(run)
                    print(
                        f"  {label}: {run.wall:.2f} s, CPU {run.cpu:.2f} s ({run.cpu / n * 1000:.3f} ms an item),"
                        f" peak RSS {run.rss_mib:.1f} MiB, DB +{run.db_growth:,} bytes,"
                        f" {run.summary['requests']} requests",
                        flush=True,
                    )
                if n == args.cap_size:
                    last = runs[-1]
                    cap = args.cap or round(last.wall / 2, 1)
                    run = sync(
                        "after", n, root, webhook, args.rate, args.burst, ["--max-duration", f"{cap}s"], None
                    )
                    caps.append((n, cap, run))
                    print(
                        f"  capped at {cap:g} s: exit {run.exit_code}, {run.wall:.2f} s ({run.wall - cap:+.2f} s), "
                        f"{run.summary['unchanged']:,} unchanged recorded, complete {run.summary['complete']}",
                        flush=True,
                    )
            print(
                f"  emulator: {stats.get('requests')} requests, {stats.get('rejected_503', 0)} 503s",
                flush=True,
            )
    finally:
        if args.keep is None:
            shutil.rmtree(base, ignore_errors=True)
    report(runs, caps, floors, args)


def report(runs: list[Run], caps: list[tuple[int, float, Run]], floors: dict[str, float], args: Any) -> None:
    print()
    print(
        f"Made by `python -m bench.warm_all {' '.join(sys.argv[1:])}` on "
        f"{datetime.now().strftime('%Y-%m-%d %H:%M')} ({os.uname().machine}, {os.cpu_count()} CPUs, "
        f"Python {sys.version.split()[0]}); start-up CPU (`imgsync --version`): "
        + ", ".join(f"{k} {v:.2f} s" for k, v in floors.items())
    )
    print()
    print(
        "| code | items | wall s | CPU s | ms CPU an item | ms an item past start-up | peak RSS MiB | DB growth bytes |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for run in runs:
        net = (run.cpu - floors[run.label]) / run.n * 1000
        print(
            f"| {run.label} | {run.n:,} | {run.wall:.2f} | {run.cpu:.2f} | {run.cpu / run.n * 1000:.3f} | "
            f"{net:.3f} | {run.rss_mib:.1f} | {run.db_growth:,} |"
        )
    for label in dict.fromkeys(r.label for r in runs):
        mine = sorted((r for r in runs if r.label == label), key=lambda r: r.n)
        if len(mine) >= 2:
            small, large = mine[0], mine[-1]
            slope = (large.cpu - small.cpu) / (large.n - small.n) * 1000
            print(
                f"\n{label}: marginal CPU {slope:.3f} ms an item ({small.n:,} to {large.n:,}); peak RSS at "
                f"{large.n:,} = {large.rss_mib / small.rss_mib:.2f}x that at {small.n:,}"
            )
    if args.before:
        for run in runs:
            if run.label != "after":
                continue
            old = next((r for r in runs if r.label == "before" and r.n == run.n), None)
            if old is not None:
                print(
                    f"\nN={run.n:,}: after/before CPU {run.cpu / old.cpu:.2f}, wall {run.wall / old.wall:.2f}, "
                    f"peak RSS {run.rss_mib / old.rss_mib:.2f}"
                )
    for n, cap, run in caps:
        print(
            f"\nCapped warm --all of {n:,} items, --max-duration {cap:g}s: exit {run.exit_code}, ended "
            f"{run.wall:.2f} s after start ({run.wall - cap:+.2f} s past the cap, interpreter start included), "
            f"{run.summary['unchanged']:,} unchanged recorded, complete {str(run.summary['complete']).lower()}"
        )


if __name__ == "__main__":
    main()
