"""Run the benchmark: imgsync cold and warm, the naive script and the fast-bitrix24 peer, on one catalog.

``python -m bench.run`` (see ``--help`` and ``bench/README.md``). Every run gets a fresh emulator process
(``python -m imgsync.emulator``: an empty bucket, the same catalog, since the catalog is a function of
its seed) and is its own subprocess, timed from start to exit; its peak RSS comes from ``wait4``. The
emulator's stats, printed when it is stopped, give the requests the run made and the 503s it provoked.

The bound is the same for every client and counts the requests the *job* needs, not the ones a client
chooses to make (see :func:`bound`).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
BATCH = 50
IMAGES_PER_PRODUCT = 4
FIRST_PRODUCT_ID, FIRST_IMAGE_ID = 100, 1000  # make_catalog's defaults
BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"
CLIENTS = ("imgsync", "peer", "peer-threads", "naive")


@dataclass(frozen=True)
class Profile:
    name: str
    latency: float  # seconds the emulator waits before each answer
    rate: float  # bucket drain, requests per second
    burst: int  # bucket size
    note: str


PROFILES = {
    "near": Profile(
        "near", 0.020, 20.0, 50, "20 ms per request, drain 20/s, bucket 50 (the 2/s, 50 plans x10)"
    ),
    "far": Profile(
        "far", 0.150, 25.0, 250, "150 ms per request, drain 25/s, bucket 250 (Enterprise 5/s, 250 x5)"
    ),
}


def must_requests(n: int, phase: str) -> int:
    """The requests the job cannot do without: one batch per 50 images, plus a download per image if cold."""
    batches = math.ceil(n / BATCH)
    return batches + n if phase == "cold" else batches


def bound(profile: Profile, n: int, phase: str) -> float:
    """The least time the bucket model and one round trip allow, with unlimited concurrency.

    The bucket admits ``burst`` requests at once, then one per ``1/rate``: the last of ``R`` requests
    cannot arrive before ``(R - burst)/rate`` and is answered ``latency`` later. Cold, a download needs its
    batch's answer first, so no download arrives before ``latency``: from then on at most ``burst`` go at
    once, and the last of ``N`` cannot arrive before ``latency + (N - burst)/rate``. Transfer time, CPU and
    process start are not in it.
    """
    r, b, lat = profile.rate, profile.burst, profile.latency
    bucket = max(0, must_requests(n, phase) - b) / r
    if phase == "cold":
        bucket = max(bucket, lat + max(0, n - b) / r)
    return bucket + lat


@dataclass
class Run:
    profile: str
    n: int
    client: str
    phase: str  # cold, warm; the baselines keep no state, so every run of theirs is "cold"
    wall_s: float = 0.0
    inrun_s: float | None = None
    peak_rss_mb: float = 0.0
    requests: int = 0
    rejected_503: int = 0
    downloads: int = 0
    ok: bool = False
    bound_s: float = 0.0
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def efficiency(self) -> float:
        return self.bound_s / self.wall_s if self.wall_s else 0.0


# -- processes ------------------------------------------------------------------------------------------------


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("IMGSYNC_", "AWS_"))}
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


@contextmanager
def emulator(
    profile: Profile,
    products: int,
    *,
    min_size: int,
    max_size: int,
    stats: dict[str, Any],
    images_per_product: int = IMAGES_PER_PRODUCT,
) -> Iterator[str]:
    """A fresh emulator process; yields its webhook URL and fills ``stats`` when it has stopped."""
    options = [
        "--products",
        str(products),
        "--images-per-product",
        str(images_per_product),
        "--rate-limit",
        str(profile.rate),
        "--burst",
        str(profile.burst),
        "--latency",
        str(profile.latency),
        "--min-size",
        str(min_size),
        "--max-size",
        str(max_size),
    ]
    with emulator_process(options, stats) as url:
        yield url


@contextmanager
def emulator_process(options: Sequence[str], stats: dict[str, Any], timeout: float = 120) -> Iterator[str]:
    """``python -m imgsync.emulator OPTIONS`` in its own process (its CPU is not the client's); yields its
    webhook URL and, once it has stopped, fills ``stats`` with the counters it printed."""
    args = [sys.executable, "-m", "imgsync.emulator", *options]
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=err, env=_env(), cwd=REPO)
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            if not line:
                raise RuntimeError("the emulator did not start")
            yield json.loads(line)["webhook_url"]
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=timeout)
            err.seek(0)
            lines = [ln for ln in err.read().decode().splitlines() if ln.startswith("{")]
            if lines:
                stats.clear()
                stats.update(json.loads(lines[-1]))


def run_client(args: Sequence[str], cwd: Path) -> tuple[float, float, int, str, str]:
    """Run one client; return (wall seconds, peak RSS in MB, exit code, stdout, stderr)."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started = time.perf_counter()
        proc = subprocess.Popen(list(args), stdout=out, stderr=err, env=_env(), cwd=cwd)
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        wall = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        # ru_maxrss is in KiB on Linux (bytes on macOS).
        rss = usage.ru_maxrss / (1024 * 1024 if sys.platform == "darwin" else 1024)
        return wall, rss, proc.returncode, out.read().decode(), err.read().decode()


def write_pairs(path: Path, n: int) -> None:
    lines = ["productId,id"]
    for i in range(n):
        lines.append(f"{FIRST_PRODUCT_ID + i // IMAGES_PER_PRODUCT},{FIRST_IMAGE_ID + i}")
    path.write_text("\n".join(lines) + "\n")


def imgsync_config(path: Path, webhook: str, profile: Profile, workers: str) -> None:
    value = workers if workers.isdigit() else '"auto"'
    path.write_text(
        "[bitrix24]\n"
        f'webhook_url = "{webhook}"\n'
        f"rate_limit = {profile.rate}\n"
        f"burst = {profile.burst}\n"
        "[storage]\n"
        'dest = "images"\n'
        'db = "imgsync.db"\n'
        "[sync]\n"
        f"workers = {value}\n"
    )


def _last_json(text: str) -> dict[str, Any]:
    for line in reversed(text.strip().splitlines()):
        if line.startswith("{"):
            data: dict[str, Any] = json.loads(line)
            return data
    return {}


# -- one client ----------------------------------------------------------------------------------------------


def bench_imgsync(
    profile: Profile, n: int, work: Path, opts: argparse.Namespace, phases: Sequence[str] = ("cold", "warm")
) -> list[Run]:
    """imgsync cold (empty state), then warm (the same state, nothing changed)."""
    work.mkdir(parents=True, exist_ok=True)
    pairs = work / "pairs.csv"
    write_pairs(pairs, n)
    config = work / "imgsync.toml"
    runs = []
    for phase in phases:
        stats: dict[str, Any] = {}
        with emulator(
            profile, _products(n), min_size=opts.min_size, max_size=opts.max_size, stats=stats
        ) as url:
            imgsync_config(config, url, profile, opts.workers)
            cmd = [sys.executable, "-m", "imgsync", "--config", str(config), "-q", "sync"]
            cmd += ["--csv", str(pairs), "--json", "--no-progress"]
            wall, rss, code, out, err = run_client(cmd, work)
        summary = _last_json(out)
        expect = ("downloaded", n) if phase == "cold" else ("unchanged", n)
        ok = code == 0 and summary.get(expect[0]) == expect[1]
        runs.append(
            _run(profile, n, "imgsync", phase, wall, rss, stats, ok, summary.get("duration_s"), err, code)
        )
    return runs


def bench_baseline(profile: Profile, n: int, work: Path, client: str, opts: argparse.Namespace) -> Run:
    """The naive script or the peer: no state, so one run stands for every run."""
    work.mkdir(parents=True, exist_ok=True)
    pairs = work / "pairs.csv"
    write_pairs(pairs, n)
    module = {
        "naive": "bench.naive",
        "peer": "bench.peer_fast_bitrix24",
        "peer-threads": "bench.peer_fast_bitrix24",
    }
    stats: dict[str, Any] = {}
    with emulator(profile, _products(n), min_size=opts.min_size, max_size=opts.max_size, stats=stats) as url:
        cmd = [sys.executable, "-m", module[client], "--webhook", url, "--csv", str(pairs)]
        cmd += [
            "--dest",
            str(work / "images"),
            "--rate-limit",
            str(profile.rate),
            "--burst",
            str(profile.burst),
        ]
        if client == "peer-threads":
            cmd += ["--download-workers", opts.workers if opts.workers.isdigit() else "16"]
        wall, rss, code, out, err = run_client(cmd, work)
    report = _last_json(out)
    ok = code == 0 and report.get("downloaded") == n
    return _run(profile, n, client, "cold", wall, rss, stats, ok, report.get("duration_s"), err, code)


def _products(n: int) -> int:
    return math.ceil(n / IMAGES_PER_PRODUCT)


def _run(
    profile: Profile,
    n: int,
    client: str,
    phase: str,
    wall: float,
    rss: float,
    stats: dict[str, Any],
    ok: bool,
    inrun: float | None,
    err: str,
    code: int,
) -> Run:
    by_method = stats.get("by_method", {})
    run = Run(
        profile.name,
        n,
        client,
        phase,
        wall_s=wall,
        inrun_s=inrun,
        peak_rss_mb=rss,
        requests=int(stats.get("requests", 0)),
        rejected_503=int(stats.get("rejected_503", 0)),
        downloads=int(by_method.get("download", 0)),
        ok=ok,
        bound_s=bound(profile, n, phase),
        extra={"by_method": by_method, "max_bucket_level": stats.get("max_bucket_level")},
    )
    if not ok:
        run.note = f"exit {code}: {err.strip()[-300:]}"
    return run


# -- the report ----------------------------------------------------------------------------------------------

LABEL = {
    ("imgsync", "cold"): "imgsync cold",
    ("imgsync", "warm"): "imgsync warm",
    ("peer", "cold"): "fast-bitrix24 peer",
    ("peer-threads", "cold"): "peer, threaded downloads",
    ("naive", "cold"): "naive",
}


def _find(runs: Sequence[Run], profile: str, n: int, client: str) -> Run | None:
    return next((r for r in runs if (r.profile, r.n, r.client) == (profile, n, client) and r.ok), None)


def _fmt_s(x: float) -> str:
    return f"{x:.3f}" if x < 1 else f"{x:.2f}" if x < 100 else f"{x:.1f}"


def table(runs: Sequence[Run]) -> str:
    head = (
        "| profile | N | client | requests | req/image | 503s | time s | in-run s | bound s | efficiency "
        "| imgsync/peer | imgsync/naive | peak RSS MiB |\n"
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n"
    )
    rows = []
    for r in runs:
        ratios = ["", ""]
        if r.client == "imgsync":
            for i, other in enumerate(("peer", "naive")):
                base = _find(runs, r.profile, r.n, other)
                if base is not None:
                    ratios[i] = f"{r.wall_s / base.wall_s:.3f}"
        inrun = "" if r.inrun_s is None else _fmt_s(r.inrun_s)
        label = LABEL.get((r.client, r.phase), f"{r.client} {r.phase}") + ("" if r.ok else " **FAILED**")
        rows.append(
            f"| {r.profile} | {r.n} | {label} | {r.requests} | {r.requests / r.n:.3f} | {r.rejected_503} "
            f"| {_fmt_s(r.wall_s)} | {inrun} | {_fmt_s(r.bound_s)} | {r.efficiency:.2f} | {ratios[0]} "
            f"| {ratios[1]} | {r.peak_rss_mb:.0f} |"
        )
    return head + "\n".join(rows) + "\n"


def targets(runs: Sequence[Run]) -> str:
    """The issue's targets, per profile and N, checked on these figures."""
    lines = [
        "| profile | N | cold eff >= 0.9 | warm eff >= 0.8 | cold vs peer | warm >= 10x faster than peer "
        "| 503s provoked by imgsync |",
        "|---|---:|---|---|---|---|---:|",
    ]

    def mark(ok: bool) -> str:
        return "yes" if ok else "**no**"

    for profile in dict.fromkeys(r.profile for r in runs):
        for n in sorted({r.n for r in runs if r.profile == profile}):
            cold = next(
                (r for r in runs if (r.profile, r.n, r.client, r.phase) == (profile, n, "imgsync", "cold")),
                None,
            )
            warm = next(
                (r for r in runs if (r.profile, r.n, r.client, r.phase) == (profile, n, "imgsync", "warm")),
                None,
            )
            peer = _find(runs, profile, n, "peer")
            if cold is None or warm is None:
                continue
            vs = ""
            speed = ""
            if peer is not None:
                vs = f"{peer.wall_s / cold.wall_s:.2f}x the peer's speed"
                speed = f"{mark(peer.wall_s / warm.wall_s >= 10)} ({peer.wall_s / warm.wall_s:.0f}x)"
            lines.append(
                f"| {profile} | {n} | {mark(cold.efficiency >= 0.9)} ({cold.efficiency:.2f}) "
                f"| {mark(warm.efficiency >= 0.8)} ({warm.efficiency:.2f}) | {vs} | {speed} "
                f"| {cold.rejected_503 + warm.rejected_503} |"
            )
    return "\n".join(lines) + "\n"


def memory_lines(runs: Sequence[Run], memcheck: dict[str, Any] | None) -> str:
    out = []
    for profile in dict.fromkeys(r.profile for r in runs):
        warm = sorted(
            (r for r in runs if r.profile == profile and r.client == "imgsync" and r.phase == "warm"),
            key=lambda r: r.n,
        )
        if len(warm) >= 2:
            small, big = warm[0], warm[-1]
            ratio = big.peak_rss_mb / small.peak_rss_mb
            out.append(
                f"- {profile}: peak RSS of a warm run, N={big.n}: {big.peak_rss_mb:.1f} MiB; N={small.n}: "
                f"{small.peak_rss_mb:.1f} MiB; ratio {ratio:.2f} (target <= 1.5: {'met' if ratio <= 1.5 else 'MISSED'})."
            )
    if memcheck:
        out.append(
            f"- One {memcheck['size_mb']:.0f} MiB image, imgsync cold: peak RSS {memcheck['peak_rss_mb']:.1f} MiB "
            f"({memcheck['peak_rss_mb'] / memcheck['size_mb']:.2f} of the file's size), {memcheck['wall_s']:.2f} s, "
            f"{'the file complete' if memcheck.get('ok') else 'the file NOT complete'}."
        )
    return "\n".join(out) + "\n" if out else ""


def chart(runs: Sequence[Run], path: Path) -> None:
    """Time per run (log scale) with its bound as a black tick, one panel per profile."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    profiles = list(dict.fromkeys(r.profile for r in runs))
    series = [k for k in LABEL if any((r.client, r.phase) == k for r in runs)]
    colors = {
        ("imgsync", "cold"): "#1f77b4",
        ("imgsync", "warm"): "#6baed6",
        ("peer", "cold"): "#ff7f0e",
        ("peer-threads", "cold"): "#fdae6b",
        ("naive", "cold"): "#d62728",
    }
    fig, axes = plt.subplots(1, len(profiles), figsize=(6.5 * len(profiles), 5.2), squeeze=False)
    for ax, profile in zip(axes[0], profiles, strict=True):
        sizes = sorted({r.n for r in runs if r.profile == profile})
        width = 0.8 / max(1, len(series))
        for i, key in enumerate(series):
            for j, n in enumerate(sizes):
                run = next(
                    (r for r in runs if (r.profile, r.n, r.client, r.phase) == (profile, n, *key)), None
                )
                if run is None:
                    continue
                x = j + (i - (len(series) - 1) / 2) * width
                ax.bar(
                    x,
                    run.wall_s,
                    width * 0.9,
                    color=colors.get(key, "grey"),
                    label=LABEL[key] if j == 0 else None,
                )
                ax.plot([x - width * 0.45, x + width * 0.45], [run.bound_s] * 2, color="black", lw=2)
                ax.annotate(
                    _fmt_s(run.wall_s),
                    (x, max(run.wall_s, run.bound_s)),
                    ha="center",
                    va="bottom",
                    fontsize=7,
                    rotation=90,
                    xytext=(0, 4),
                    textcoords="offset points",
                )
        if ax is axes[0][0]:
            ax.plot([], [], color="black", lw=2, label="bound (bucket model + latency)")
        ax.set_yscale("log")
        ax.set_xticks(range(len(sizes)), [f"N={n}" for n in sizes])
        ax.set_ylabel("wall time, s (log)")
        p = PROFILES[profile]
        ax.set_title(
            f"{profile}: {p.latency * 1000:.0f} ms/request, drain {p.rate:g}/s, bucket {p.burst}", fontsize=10
        )
        low, high = ax.get_ylim()
        ax.set_ylim(low, high * 4)
        ax.grid(axis="y", which="both", alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def process_floor() -> dict[str, float]:
    """How long an interpreter takes to start and import each client (the floor under any warm run)."""
    probes = {
        "imgsync": [sys.executable, "-m", "imgsync", "--version"],
        "fast-bitrix24 + requests": [sys.executable, "-c", "import fast_bitrix24, requests"],
    }
    out = {}
    for name, cmd in probes.items():
        times = []
        for _ in range(3):
            wall, *_rest = run_client(cmd, REPO)
            times.append(wall)
        out[name] = min(times)
    return out


def report(
    runs: Sequence[Run],
    opts: argparse.Namespace,
    memcheck: dict[str, Any] | None,
    floor: dict[str, float],
    made: dict[str, Any],
) -> str:
    command = made["command"]
    used = list(dict.fromkeys(r.profile for r in runs))
    lines = [
        BEGIN,
        f"Made by `{command}` on {made['date']} ({made['machine']}), imgsync `--workers {made['workers']}`, "
        f"images {made['sizes']} bytes.",
        "",
        "Profiles (emulator per run, downloads counted in the bucket):",
        "",
    ]
    lines += [f"- **{p}**: {PROFILES[p].note}." for p in used]
    lines += [
        "",
        "Bound, the same for every client: `R` = requests the job needs (`ceil(N/50)` batches, plus `N` downloads "
        "when cold); `T = max((R - burst)/rate, [cold] latency + (N - burst)/rate) + latency`, floored at one "
        "round trip. `efficiency = T / time`; `time` is the client process from start to exit. "
        "`imgsync/peer` < 1 means imgsync took less time. `requests` and `503s` are the emulator's counts.",
        "",
        table(runs),
        "Targets on these figures:",
        "",
        targets(runs),
    ]
    mem = memory_lines(runs, memcheck)
    if mem:
        lines += ["Memory:", "", mem]
    if floor:
        lines += [
            "Process floor (start an interpreter and import, best of 3): "
            + ", ".join(f"{k} {v:.3f} s" for k, v in floor.items())
            + ".",
            "",
        ]
    if not opts.no_chart:
        png = os.path.relpath(opts.png.resolve(), opts.md.resolve().parent)
        lines += [f"![time per run against the bound]({png})", ""]
    lines.append(END)
    return "\n".join(lines)


def write_markdown(path: Path, section: str) -> None:
    """Replace the generated section of ``path``, keeping what is around it (the notes)."""
    if path.exists():
        text = path.read_text()
        if BEGIN in text and END in text:
            before, rest = text.split(BEGIN, 1)
            after = rest.split(END, 1)[1]
            path.write_text(before + section + after)
            return
        path.write_text(text.rstrip() + "\n\n" + section + "\n")
        return
    path.write_text("# Benchmarks\n\n" + section + "\n")


def memcheck_run(size_mb: int, opts: argparse.Namespace) -> dict[str, Any]:
    """imgsync downloads one image of ``size_mb`` MiB: peak RSS against the file's size."""
    size = size_mb * 1024 * 1024
    profile = Profile("mem", 0.0, 1000.0, 1000, "no latency, a bucket that never fills")
    with tempfile.TemporaryDirectory(prefix="imgsync-bench-mem-") as tmp:
        work = Path(tmp)
        pairs = work / "pairs.csv"
        write_pairs(pairs, 1)
        stats: dict[str, Any] = {}
        with emulator(profile, 1, min_size=size, max_size=size, stats=stats, images_per_product=1) as url:
            imgsync_config(work / "imgsync.toml", url, profile, opts.workers)
            cmd = [sys.executable, "-m", "imgsync", "--config", str(work / "imgsync.toml"), "-q", "sync"]
            cmd += ["--csv", str(pairs), "--json", "--no-progress"]
            wall, rss, code, out, err = run_client(cmd, work)
        summary = _last_json(out)
        files = [p for p in (work / "images").rglob("*") if p.is_file()]
        got = files[0].stat().st_size if files else 0
    return {
        "size_mb": float(size_mb),
        "peak_rss_mb": rss,
        "wall_s": wall,
        "ok": code == 0 and summary.get("downloaded") == 1 and got == size,
    }


def parse(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--sizes", default="400,4000", help="image counts, comma-separated (default 400,4000)"
    )
    parser.add_argument("--profiles", default="near,far", help="near, far (default both)")
    parser.add_argument(
        "--clients",
        default=",".join(CLIENTS),
        help=f"from {', '.join(CLIENTS)} (default all)",
    )
    parser.add_argument(
        "--baseline-max-n",
        type=int,
        default=0,
        help="run peer and naive only up to this N (default: all sizes)",
    )
    parser.add_argument(
        "--workers", default="auto", help='imgsync workers: a number, or "auto" (the default configuration)'
    )
    parser.add_argument("--min-size", type=int, default=1000, help="smallest image, bytes (default 1000)")
    parser.add_argument("--max-size", type=int, default=20000, help="largest image, bytes (default 20000)")
    parser.add_argument(
        "--memcheck-mb",
        type=int,
        default=200,
        help="also sync one image of this many MiB (0: skip; default 200)",
    )
    parser.add_argument("--md", type=Path, default=REPO / "docs" / "benchmarks.md", help="Markdown to update")
    parser.add_argument("--png", type=Path, default=REPO / "docs" / "benchmarks.png", help="chart to write")
    parser.add_argument("--json", type=Path, default=None, help="also write the raw runs as JSON")
    parser.add_argument("--no-floor", action="store_true", help="skip timing the interpreter start")
    parser.add_argument("--no-chart", action="store_true", help="write no PNG (no matplotlib needed)")
    parser.add_argument(
        "--replot", type=Path, default=None, metavar="JSON", help="run nothing: render a --json file again"
    )
    opts = parser.parse_args(argv)
    opts.argv = list(argv)
    opts.size_list = [int(s) for s in opts.sizes.split(",") if s.strip()]
    opts.profile_list = [p.strip() for p in opts.profiles.split(",") if p.strip()]
    opts.client_list = [c.strip() for c in opts.clients.split(",") if c.strip()]
    for p in opts.profile_list:
        if p not in PROFILES:
            parser.error(f"unknown profile {p!r}; choose from {', '.join(PROFILES)}")
    for c in opts.client_list:
        if c not in CLIENTS:
            parser.error(f"unknown client {c!r}; choose from {', '.join(CLIENTS)}")
    return opts


def main(argv: Sequence[str] | None = None) -> int:
    opts = parse(sys.argv[1:] if argv is None else argv)
    # Stopped, stop the emulator and the client too (the finally clauses run on SystemExit).
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    runs: list[Run] = []

    def log(run: Run) -> None:
        runs.append(run)
        print(
            f"[{run.profile} N={run.n}] {LABEL.get((run.client, run.phase), run.client)}: {run.wall_s:.2f} s "
            f"(bound {run.bound_s:.2f} s, efficiency {run.efficiency:.2f}), {run.requests} requests, "
            f"{run.rejected_503} 503s, RSS {run.peak_rss_mb:.0f} MB{'' if run.ok else ' FAILED ' + run.note}",
            file=sys.stderr,
            flush=True,
        )

    if opts.replot:
        data = json.loads(opts.replot.read_text())
        fields = {f for f in Run.__dataclass_fields__}
        runs = [Run(**{k: v for k, v in r.items() if k in fields}) for r in data["runs"]]
        memcheck, floor, made = data["memcheck"], data["floor"], data["made"]
    else:
        made = {
            "command": "python -m bench.run " + " ".join(shlex.quote(a) for a in opts.argv),
            "date": time.strftime("%Y-%m-%d %H:%M"),
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
            "workers": opts.workers,
            "sizes": f"{opts.min_size}-{opts.max_size}",
        }
        with tempfile.TemporaryDirectory(prefix="imgsync-bench-") as tmp:
            for profile_name in opts.profile_list:
                profile = PROFILES[profile_name]
                for n in opts.size_list:
                    for client in opts.client_list:
                        work = Path(tmp) / f"{profile_name}-{n}-{client}"
                        if client == "imgsync":
                            for run in bench_imgsync(profile, n, work, opts):
                                log(run)
                        elif not opts.baseline_max_n or n <= opts.baseline_max_n:
                            log(bench_baseline(profile, n, work, client, opts))
        memcheck = memcheck_run(opts.memcheck_mb, opts) if opts.memcheck_mb else None
        if memcheck:
            print(f"[memory] {memcheck}", file=sys.stderr)
        floor = {} if opts.no_floor else process_floor()
        if opts.json:
            runs_json = [asdict(r) | {"efficiency": r.efficiency} for r in runs]
            payload = {"made": made, "runs": runs_json, "memcheck": memcheck, "floor": floor}
            opts.json.write_text(json.dumps(payload, indent=1))
    section = report(runs, opts, memcheck, floor, made)
    print(section)
    opts.md.parent.mkdir(parents=True, exist_ok=True)
    write_markdown(opts.md, section)
    if not opts.no_chart:
        chart(runs, opts.png)
    return 0 if all(r.ok for r in runs) and (memcheck is None or memcheck["ok"]) else 1


if __name__ == "__main__":
    sys.exit(main())
